"""The small JSON Schema checker used for rule packs (auditor/gate/schema_check.py)."""

from __future__ import annotations

from typing import Any

import pytest

from auditor.gate.schema_check import check_schema_keywords, iter_violations
from auditor.gate.spec import schema_document

SCHEMA: dict[str, Any] = {
    "type": "object",
    "required": ["n", "items"],
    "additionalProperties": False,
    "properties": {
        "n": {"type": "integer", "minimum": 1},
        "rate": {"type": "number", "exclusiveMinimum": 0, "maximum": 1},
        "name": {"type": "string", "pattern": "^[a-z]+$"},
        "mode": {"enum": ["x", "y"]},
        "items": {"type": "array", "minItems": 1, "items": {"$ref": "#/$defs/item"}},
    },
    "$defs": {"item": {"type": ["string", "number"]}},
}


def _messages(instance: Any) -> list[tuple[tuple[Any, ...], str]]:
    return [(v.path, v.message) for v in iter_violations(instance, SCHEMA)]


def test_valid_instance_has_no_violations() -> None:
    assert _messages({"n": 2, "rate": 0.5, "name": "abc", "mode": "x", "items": ["a", 1]}) == []


def test_each_keyword_reports_its_path() -> None:
    found = dict(_messages({"n": 0, "rate": 0, "name": "A", "mode": "z", "items": [None], "extra": 1}))
    assert "at least 1" in found[("n",)]
    assert "greater than 0" in found[("rate",)]
    assert "pattern" in found[("name",)]
    assert "one of x, y" in found[("mode",)]
    assert "expected string or number" in found[("items", 0)]
    assert "not a known field" in found[("extra",)]


def test_required_and_booleans_are_not_numbers() -> None:
    found = dict(_messages({"n": True}))
    assert "expected integer" in found[("n",)]
    assert found[("items",)] == "is required but missing"


def test_misspelt_field_gets_a_suggestion() -> None:
    found = dict(_messages({"n": 1, "items": [1], "rat": 0.2}))
    assert "did you mean 'rate'" in found[("rat",)]


def test_unsupported_keywords_are_refused() -> None:
    with pytest.raises(ValueError, match="oneOf"):
        check_schema_keywords({"properties": {"x": {"oneOf": [{"type": "string"}]}}})


def test_shipped_schema_uses_only_supported_keywords() -> None:
    schema = schema_document()  # raises if the schema outgrew the checker
    assert schema["$schema"].endswith("2020-12/schema")
