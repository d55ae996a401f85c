"""The eight rule conditions: how an observed metric value is compared with a rule's threshold.

Pure functions over plain values; the rule-pack loader uses `threshold_problem` to check thresholds up front.
"""

from __future__ import annotations

import math
from collections.abc import Callable
from typing import Any, TypeGuard

CONDITIONS = ("eq", "ne", "gt", "gte", "lt", "lte", "between", "in")
"""Every condition a rule may name, in documentation order."""

_SYMBOLS = {"eq": "==", "ne": "!=", "gt": ">", "gte": ">=", "lt": "<", "lte": "<="}
_ORDERED = ("gt", "gte", "lt", "lte", "between")


class ConditionError(ValueError):
    """The observed value cannot be compared (e.g. text under an ordering condition)."""


def is_number(value: Any) -> TypeGuard[int | float]:
    """True for int and float (finite or not) but not bool."""
    return isinstance(value, int | float) and not isinstance(value, bool)


def is_scalar(value: Any) -> bool:
    """A value a metric may hold and eq/ne/in may compare: number, string or boolean."""
    return is_number(value) or isinstance(value, str | bool)


def values_equal(a: Any, b: Any) -> bool:
    """Equality for thresholds: numbers within 1e-9 relative (1e-12 absolute), text and booleans exactly."""
    if isinstance(a, bool) or isinstance(b, bool):
        return isinstance(a, bool) and isinstance(b, bool) and a == b
    if is_number(a) and is_number(b):
        return math.isclose(float(a), float(b), rel_tol=1e-9, abs_tol=1e-12)
    return bool(a == b)


def threshold_problem(condition: str, threshold: Any) -> str | None:
    """Why `threshold` does not suit `condition` (and what would), or None when it does."""
    if condition in ("gt", "gte", "lt", "lte"):
        if not is_number(threshold):
            return f"'{condition}' needs a number threshold, got {threshold!r}"
    elif condition in ("eq", "ne"):
        if not is_scalar(threshold):
            return f"'{condition}' needs a number, string or boolean threshold, got {threshold!r}"
    elif condition == "between":
        if not (isinstance(threshold, list) and len(threshold) == 2 and all(is_number(v) for v in threshold)):
            return f"'between' needs a threshold [lo, hi] of two numbers, got {threshold!r}"
        if threshold[0] > threshold[1]:
            return f"'between' needs lo <= hi, got [{threshold[0]}, {threshold[1]}]; swap them"
    elif condition == "in":
        if not (isinstance(threshold, list) and threshold and all(is_scalar(v) for v in threshold)):
            return f"'in' needs a non-empty list of allowed values, got {threshold!r}"
    else:
        return f"unknown condition {condition!r}; use one of {', '.join(CONDITIONS)}"
    return None


def check_condition(condition: str, observed: Any, threshold: Any) -> bool:
    """True when `observed` satisfies `condition` against `threshold`; ConditionError if it cannot be compared."""
    if condition in _ORDERED:
        if not is_number(observed):
            raise ConditionError(f"'{condition}' compares numbers, but the observed value is {observed!r}")
        if math.isnan(float(observed)):
            raise ConditionError("the observed value is NaN")
    if condition == "in":
        return any(values_equal(observed, allowed) for allowed in threshold)
    if condition == "between":
        low, high = threshold
        return _at_least(observed, low) and _at_least(high, observed)
    return _COMPARE[condition](observed, threshold)


def describe_condition(condition: str, threshold: Any) -> str:
    """Short text such as '<= 0.05', 'between 0.1 and 0.2' or 'in [a, b]'."""
    if condition == "between":
        return f"between {format_value(threshold[0])} and {format_value(threshold[1])}"
    if condition == "in":
        return "in [" + ", ".join(format_value(v) for v in threshold) + "]"
    return f"{_SYMBOLS[condition]} {format_value(threshold)}"


def format_value(value: Any) -> str:
    """A value for messages: floats to 4 significant digits, None as 'n/a'."""
    if value is None:
        return "n/a"
    if isinstance(value, bool):
        return str(value).lower()
    if isinstance(value, float):
        return f"{value:.4g}"
    return str(value)


def _at_least(a: Any, b: Any) -> bool:
    """a >= b, counting values equal within the `values_equal` tolerance as equal."""
    return bool(a >= b) or values_equal(a, b)


_COMPARE: dict[str, Callable[[Any, Any], bool]] = {
    "eq": values_equal,
    "ne": lambda observed, threshold: not values_equal(observed, threshold),
    "gt": lambda observed, threshold: not _at_least(threshold, observed),
    "gte": _at_least,
    "lt": lambda observed, threshold: not _at_least(observed, threshold),
    "lte": lambda observed, threshold: _at_least(threshold, observed),
}
