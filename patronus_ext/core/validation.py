"""Argument checks shared by every configuration dataclass.

One set of checks, one wording: a bad value raises ``ValueError`` naming the
field, the allowed range and the value given (the CLI turns that into one
line and exit status 2).
"""

from __future__ import annotations

import math
from typing import Any


def check_int(name: str, value: Any, minimum: int = 1, *, optional: bool = False) -> None:
    """An ``int`` (not a bool) ``>= minimum``; ``None`` passes when ``optional``."""
    if optional and value is None:
        return
    if isinstance(value, bool) or not isinstance(value, int) or value < minimum:
        allowed = f"None or an int >= {minimum}" if optional else f"an int >= {minimum}"
        raise ValueError(f"{name} must be {allowed}, got {value!r}")


def check_range(name: str, value: Any, low: float, high: float, *, low_open: bool = False,
                high_open: bool = False, optional: bool = False) -> None:
    """A finite number in ``[low, high]`` (either end open on request); ``None`` passes when ``optional``."""
    if optional and value is None:
        return
    ok = isinstance(value, (int, float)) and not isinstance(value, bool) and math.isfinite(value)
    ok = ok and (value > low if low_open else value >= low) and (value < high if high_open else value <= high)
    if not ok:
        span = f"{'(' if low_open else '['}{low}, {high}{')' if high_open else ']'}"
        raise ValueError(f"{name} must lie in {span}, got {value!r}")


def check_choice(name: str, value: Any, choices) -> None:
    if value not in tuple(choices):
        raise ValueError(f"{name} must be one of {', '.join(map(str, choices))}; got {value!r}")
