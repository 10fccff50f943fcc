"""The one retry policy of the drivers (tenacity): bounded retries of transient network errors.

Only idempotent work goes through here: reads, connection set-up before anything is sent, and
compare-and-set writes that cannot apply twice. The caller names the exception types that count
as transient; anything else propagates at once. Backoff is exponential (0.1 s, 0.2 s, 0.4 s, ...,
capped at 1 s); at most ``attempts`` calls are made and, given ``budget``, no new attempt starts
once that many seconds have passed (so a connect timeout is not multiplied by the retries).
The last exception is re-raised as it is, for the driver to translate. tenacity is imported on
first use, so importing a driver stays cheap.
"""

from __future__ import annotations

import logging
from collections.abc import Callable
from typing import TYPE_CHECKING, TypeVar

if TYPE_CHECKING:
    import tenacity

T = TypeVar("T")

ATTEMPTS = 3
FIRST_WAIT = 0.1
MAX_WAIT = 1.0

log = logging.getLogger("drctl.drivers.retry")


def _log_retry(what: str) -> Callable[[tenacity.RetryCallState], None]:
    def before_sleep(state: tenacity.RetryCallState) -> None:
        exc = state.outcome.exception() if state.outcome is not None else None
        wait = state.next_action.sleep if state.next_action is not None else 0.0
        log.info("%s: attempt %d failed (%s); retrying in %.1fs", what, state.attempt_number, exc, wait)

    return before_sleep


def call_with_retry(
    fn: Callable[[], T],
    *,
    retry_on: tuple[type[BaseException], ...],
    what: str,
    attempts: int = ATTEMPTS,
    budget: float | None = None,
    should_retry: Callable[[BaseException], bool] | None = None,
) -> T:
    """Call ``fn()``; on an exception of ``retry_on`` (and, if given, ``should_retry(exc)`` true)
    call it again after a backoff, at most ``attempts`` times in all and within ``budget`` seconds.
    ``what`` names the operation in the log line of each retry."""
    import tenacity

    def transient(exc: BaseException) -> bool:
        return isinstance(exc, retry_on) and (should_retry is None or should_retry(exc))

    stop: tenacity.stop.stop_base = tenacity.stop_after_attempt(max(1, attempts))
    if budget is not None:
        stop = stop | tenacity.stop_before_delay(budget)
    retrying = tenacity.Retrying(
        stop=stop,
        wait=tenacity.wait_exponential(multiplier=FIRST_WAIT, min=FIRST_WAIT, max=MAX_WAIT),
        retry=tenacity.retry_if_exception(transient),
        reraise=True,
        before_sleep=_log_retry(what),
    )
    return retrying(fn)
