"""The eight conditions, their threshold checks and the float tolerance."""

from __future__ import annotations

import math
from typing import Any

import pytest

from auditor.gate.conditions import (
    CONDITIONS,
    ConditionError,
    check_condition,
    describe_condition,
    threshold_problem,
)


@pytest.mark.parametrize(
    ("condition", "threshold", "passing", "failing"),
    [
        ("eq", 0, [0, 0.0, 1e-15], [1, -0.001]),
        ("ne", 0, [1, -0.5], [0, 0.0]),
        ("gt", 0.5, [0.51, math.inf], [0.5, 0.4]),
        ("gte", 0.5, [0.5, 0.9], [0.49]),
        ("lt", 0.5, [0.49, -math.inf], [0.5, 0.6]),
        ("lte", 0.5, [0.5, 0.1], [0.51]),
        ("between", [0.1, 0.2], [0.1, 0.15, 0.2], [0.09, 0.21]),
        ("in", [1, 2, "x"], [1, 2.0, "x"], [3, "y"]),
    ],
)
def test_each_condition_passes_and_fails(condition: str, threshold: Any, passing: list, failing: list) -> None:
    assert threshold_problem(condition, threshold) is None
    for value in passing:
        assert check_condition(condition, value, threshold), (condition, value)
    for value in failing:
        assert not check_condition(condition, value, threshold), (condition, value)


def test_all_eight_conditions_are_covered() -> None:
    assert CONDITIONS == ("eq", "ne", "gt", "gte", "lt", "lte", "between", "in")


def test_float_noise_counts_as_equal_consistently() -> None:
    observed = 0.1 + 0.2  # 0.30000000000000004
    assert check_condition("eq", observed, 0.3)
    assert check_condition("lte", observed, 0.3)
    assert not check_condition("gt", observed, 0.3)
    assert check_condition("between", observed, [0.0, 0.3])


def test_text_and_booleans_compare_exactly() -> None:
    assert check_condition("eq", "ok", "ok")
    assert not check_condition("eq", True, 1)
    assert check_condition("ne", True, 1)
    assert check_condition("in", True, [True])


@pytest.mark.parametrize("observed", ["0.1", True, math.nan])
def test_ordering_conditions_refuse_non_numbers(observed: Any) -> None:
    with pytest.raises(ConditionError):
        check_condition("lte", observed, 0.5)


@pytest.mark.parametrize(
    ("condition", "threshold", "expected"),
    [
        ("lte", "0.1", "needs a number"),
        ("gt", True, "needs a number"),
        ("eq", [1], "number, string or boolean"),
        ("between", [0.2, 0.1], "lo <= hi"),
        ("between", [0.1], "[lo, hi]"),
        ("between", 0.1, "[lo, hi]"),
        ("in", [], "non-empty list"),
        ("in", 3, "non-empty list"),
        ("approx", 1, "unknown condition"),
    ],
)
def test_threshold_problems_say_what_is_needed(condition: str, threshold: Any, expected: str) -> None:
    problem = threshold_problem(condition, threshold)
    assert problem is not None
    assert expected in problem


def test_descriptions() -> None:
    assert describe_condition("lte", 0.05) == "<= 0.05"
    assert describe_condition("between", [0.1, 0.25]) == "between 0.1 and 0.25"
    assert describe_condition("in", ["a", 2]) == "in [a, 2]"
