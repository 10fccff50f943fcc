"""The retry policy (pure logic: no servers)."""

from __future__ import annotations

from collections.abc import Callable

import pytest

from drctl.drivers.retry import call_with_retry


class Flaky(Exception):
    pass


def failing(times: int, exc: type[Exception] = Flaky) -> tuple[list[int], Callable[[], str]]:
    calls: list[int] = []

    def fn() -> str:
        calls.append(1)
        if len(calls) <= times:
            raise exc("boom")
        return "done"

    return calls, fn


def test_transient_errors_are_retried_up_to_the_attempts() -> None:
    calls, fn = failing(2)
    assert call_with_retry(fn, retry_on=(Flaky,), what="t") == "done"
    assert len(calls) == 3
    calls, fn = failing(5)
    with pytest.raises(Flaky):
        call_with_retry(fn, retry_on=(Flaky,), what="t")
    assert len(calls) == 3


def test_other_errors_are_not_retried() -> None:
    calls, fn = failing(1, KeyError)
    with pytest.raises(KeyError):
        call_with_retry(fn, retry_on=(Flaky,), what="t")
    assert len(calls) == 1


def test_should_retry_filters_and_budget_stops_early() -> None:
    calls, fn = failing(5)
    with pytest.raises(Flaky):
        call_with_retry(fn, retry_on=(Flaky,), what="t", should_retry=lambda e: False)
    assert len(calls) == 1
    calls, fn = failing(5)
    with pytest.raises(Flaky):
        call_with_retry(fn, retry_on=(Flaky,), what="t", budget=0.05)
    assert len(calls) == 1  # the first backoff (0.1 s) would overrun the budget
