"""Durations as operators write them (``30s``, ``5m``, ``1h``, ``2d``) and as drctl prints them.

Plain functions, no dependencies: cheap to import from anywhere, including the CLI's start-up.
Every duration is a finite number of seconds between 0 and an upper bound (365 days unless the
field asks for less): NaN, infinities and overflowing numbers are refused, never passed on.
"""

from __future__ import annotations

import math
import re
import reprlib
from typing import Any

_DURATION = re.compile(r"^\s*([0-9]{1,30}(?:\.[0-9]{1,30})?)\s*(ms|s|m|h|d|w)?\s*$")
_UNIT = {"ms": 0.001, "s": 1, None: 1, "m": 60, "h": 3600, "d": 86400, "w": 604800}
_EXPECTED = "expected a duration such as 30s, 5m, 1h or 2d"
_REPR = reprlib.Repr()
_REPR.maxstring, _REPR.maxother, _REPR.maxlist, _REPR.maxdict, _REPR.maxlevel = 60, 60, 4, 4, 2

DAY = 86400.0
#: the longest duration any field accepts
MAX_DURATION = 365 * DAY
#: the longest timeout of a step or a command
MAX_TIMEOUT = 30 * DAY
#: the longest timeout (or pause between tries) of one network exchange
MAX_NET_TIMEOUT = 3600.0


def parse_duration(value: Any, *, maximum: float = MAX_DURATION, positive: bool = False) -> float:
    """``30`` / ``"30s"`` / ``"5m"`` / ``"1h"`` / ``"2d"`` -> seconds (float), at most ``maximum``
    (and above 0 when ``positive``). ValueError saying what is expected otherwise."""
    seconds = _seconds(value)
    if math.isnan(seconds) or math.isinf(seconds):
        raise ValueError(f"{_EXPECTED}, got {_short(value)} (not a finite number)")
    if seconds < 0:
        raise ValueError(f"a duration cannot be negative, got {_short(value)}")
    if positive and seconds == 0:
        raise ValueError(f"must be longer than 0, got {_short(value)}")
    if seconds > maximum:
        raise ValueError(f"{_short(value)} is too long: at most {format_duration(maximum)}")
    return seconds


def _seconds(value: Any) -> float:
    """The number a duration value stands for, possibly NaN or infinite; ValueError if it is none."""
    if isinstance(value, bool):
        raise ValueError(f"{_EXPECTED}, got {value!r}")
    if isinstance(value, int):
        return float(max(-(10**300), min(value, 10**300)))  # too long, not an OverflowError
    if isinstance(value, float):
        return value
    if isinstance(value, str):
        m = _DURATION.match(value)
        if m:
            return float(m.group(1)) * _UNIT[m.group(2)]
    raise ValueError(f"{_EXPECTED}, got {_short(value)}")


def _short(value: Any) -> str:
    """``repr`` cut to a readable length, cheap for huge lists and safe for integers of any size."""
    if isinstance(value, int) and not isinstance(value, bool) and abs(value) >= 10**20:
        return "a number of more than 20 digits"
    return _REPR.repr(value)


def format_duration(seconds: float) -> str:
    if seconds < 1:
        return f"{seconds * 1000:.0f}ms"
    if seconds < 120:
        return f"{seconds:.1f}s".replace(".0s", "s")
    if seconds < 7200:
        return f"{seconds / 60:.1f}m".replace(".0m", "m")
    if seconds < 172800:
        return f"{seconds / 3600:.1f}h".replace(".0h", "h")
    return f"{seconds / 86400:.1f}d".replace(".0d", "d")
