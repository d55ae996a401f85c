"""A small JSON Schema (draft 2020-12) checker for the subset of keywords rules/schema.json uses.

Used instead of the `jsonschema` package so that rule packs validate with the standard dependencies only.
It refuses schema keywords it does not implement, so the schema cannot silently outgrow it.
"""

from __future__ import annotations

import difflib
import re
from collections.abc import Iterator, Mapping
from dataclasses import dataclass
from typing import Any

SUPPORTED_KEYWORDS = frozenset(
    {
        "$schema",
        "$id",
        "$defs",
        "$ref",
        "$comment",
        "title",
        "description",
        "default",
        "examples",
        "type",
        "enum",
        "const",
        "properties",
        "required",
        "additionalProperties",
        "items",
        "minItems",
        "maxItems",
        "uniqueItems",
        "minimum",
        "maximum",
        "exclusiveMinimum",
        "exclusiveMaximum",
        "minLength",
        "pattern",
        "anyOf",
    }
)
_ANNOTATIONS = frozenset({"$schema", "$id", "$defs", "$comment", "title", "description", "default", "examples"})


@dataclass(frozen=True)
class SchemaViolation:
    """One place where an instance breaks the schema: `path` is the list of keys/indices down to it."""

    path: tuple[str | int, ...]
    message: str


def check_schema_keywords(schema: Any, where: str = "#") -> None:
    """Raise ValueError naming the location if `schema` uses a keyword this checker does not implement."""
    if not isinstance(schema, Mapping):
        return
    unknown = sorted(set(schema) - SUPPORTED_KEYWORDS)
    if unknown:
        raise ValueError(f"schema keyword(s) {unknown} at {where} are not supported by auditor's schema checker")
    for key in ("properties", "$defs"):
        for name, sub in (schema.get(key) or {}).items():
            check_schema_keywords(sub, f"{where}/{key}/{name}")
    for key in ("items", "additionalProperties"):
        if isinstance(schema.get(key), Mapping):
            check_schema_keywords(schema[key], f"{where}/{key}")
    for position, sub in enumerate(schema.get("anyOf") or []):
        check_schema_keywords(sub, f"{where}/anyOf/{position}")


def iter_violations(
    instance: Any, schema: Mapping[str, Any], root: Mapping[str, Any] | None = None
) -> Iterator[SchemaViolation]:
    """Yield every violation of `schema` by `instance`, outermost first (deterministic order)."""
    yield from _check(instance, schema, root if root is not None else schema, ())


def _check(
    instance: Any, schema: Mapping[str, Any], root: Mapping[str, Any], path: tuple[str | int, ...]
) -> Iterator[SchemaViolation]:
    if "$ref" in schema:
        yield from _check(instance, _resolve(schema["$ref"], root), root, path)
    if "type" in schema and not _has_type(instance, schema["type"]):
        expected = schema["type"] if isinstance(schema["type"], str) else " or ".join(schema["type"])
        yield SchemaViolation(path, f"expected {expected}, got {_type_name(instance)} {_short(instance)}")
        return
    if "const" in schema and instance != schema["const"]:
        yield SchemaViolation(path, f"must be {schema['const']!r}, got {_short(instance)}")
    if "enum" in schema and not any(_same(instance, option) for option in schema["enum"]):
        options = ", ".join(str(o) for o in schema["enum"])
        yield SchemaViolation(path, f"must be one of {options}; got {_short(instance)}")
    if "anyOf" in schema:
        branches = [list(_check(instance, sub, root, path)) for sub in schema["anyOf"]]
        if all(branches):
            described = "; or ".join(b[0].message for b in branches)
            yield SchemaViolation(path, f"matches none of the allowed forms ({described})")
    if isinstance(instance, str):
        yield from _check_string(instance, schema, path)
    if _is_number(instance):
        yield from _check_number(instance, schema, path)
    if isinstance(instance, list):
        yield from _check_array(instance, schema, root, path)
    if isinstance(instance, dict):
        yield from _check_object(instance, schema, root, path)


def _check_string(instance: str, schema: Mapping[str, Any], path: tuple[str | int, ...]) -> Iterator[SchemaViolation]:
    if "minLength" in schema and len(instance) < schema["minLength"]:
        yield SchemaViolation(path, f"must have at least {schema['minLength']} character(s)")
    if "pattern" in schema and not re.search(schema["pattern"], instance):
        yield SchemaViolation(path, f"{instance!r} does not match the pattern {schema['pattern']}")


def _check_number(instance: float, schema: Mapping[str, Any], path: tuple[str | int, ...]) -> Iterator[SchemaViolation]:
    if "minimum" in schema and instance < schema["minimum"]:
        yield SchemaViolation(path, f"must be at least {schema['minimum']}, got {instance}")
    if "maximum" in schema and instance > schema["maximum"]:
        yield SchemaViolation(path, f"must be at most {schema['maximum']}, got {instance}")
    if "exclusiveMinimum" in schema and instance <= schema["exclusiveMinimum"]:
        yield SchemaViolation(path, f"must be greater than {schema['exclusiveMinimum']}, got {instance}")
    if "exclusiveMaximum" in schema and instance >= schema["exclusiveMaximum"]:
        yield SchemaViolation(path, f"must be less than {schema['exclusiveMaximum']}, got {instance}")


def _check_array(
    instance: list[Any], schema: Mapping[str, Any], root: Mapping[str, Any], path: tuple[str | int, ...]
) -> Iterator[SchemaViolation]:
    if "minItems" in schema and len(instance) < schema["minItems"]:
        yield SchemaViolation(path, f"must have at least {schema['minItems']} item(s), got {len(instance)}")
    if "maxItems" in schema and len(instance) > schema["maxItems"]:
        yield SchemaViolation(path, f"must have at most {schema['maxItems']} item(s), got {len(instance)}")
    if schema.get("uniqueItems"):
        seen: list[Any] = []
        for item in instance:
            if any(_same(item, other) for other in seen):
                yield SchemaViolation(path, f"items must be unique; {_short(item)} appears twice")
                break
            seen.append(item)
    if isinstance(schema.get("items"), Mapping):
        for index, item in enumerate(instance):
            yield from _check(item, schema["items"], root, (*path, index))


def _check_object(
    instance: dict[Any, Any], schema: Mapping[str, Any], root: Mapping[str, Any], path: tuple[str | int, ...]
) -> Iterator[SchemaViolation]:
    properties: Mapping[str, Any] = schema.get("properties") or {}
    for name in schema.get("required") or []:
        if name not in instance:
            yield SchemaViolation((*path, name), "is required but missing")
    extra = schema.get("additionalProperties", True)
    for key in instance:
        if key in properties:
            yield from _check(instance[key], properties[key], root, (*path, str(key)))
        elif extra is False:
            close = difflib.get_close_matches(str(key), list(properties), n=1)
            hint = f" (did you mean {close[0]!r}?)" if close else ""
            yield SchemaViolation(
                (*path, str(key)), f"is not a known field{hint}; known fields: {', '.join(properties)}"
            )
        elif isinstance(extra, Mapping):
            yield from _check(instance[key], extra, root, (*path, str(key)))


def _resolve(ref: str, root: Mapping[str, Any]) -> Mapping[str, Any]:
    if not ref.startswith("#/"):
        raise ValueError(f"only local $ref values ('#/...') are supported, got {ref!r}")
    node: Any = root
    for part in ref[2:].split("/"):
        node = node[part]
    if not isinstance(node, Mapping):
        raise ValueError(f"$ref {ref!r} does not point to a schema object")
    return node


def _is_number(value: Any) -> bool:
    return isinstance(value, int | float) and not isinstance(value, bool)


def _has_type(value: Any, expected: str | list[str]) -> bool:
    names = [expected] if isinstance(expected, str) else expected
    checks = {
        "object": lambda v: isinstance(v, dict),
        "array": lambda v: isinstance(v, list),
        "string": lambda v: isinstance(v, str),
        "number": _is_number,
        "integer": lambda v: _is_number(v) and float(v).is_integer(),
        "boolean": lambda v: isinstance(v, bool),
        "null": lambda v: v is None,
    }
    return any(checks[name](value) for name in names)


def _same(a: Any, b: Any) -> bool:
    """JSON equality: 1 == 1.0, but True is not 1."""
    if isinstance(a, bool) or isinstance(b, bool):
        return isinstance(a, bool) and isinstance(b, bool) and a == b
    return bool(a == b)


def _type_name(value: Any) -> str:
    if value is None:
        return "null"
    if isinstance(value, bool):
        return "boolean"
    if _is_number(value):
        return "number"
    if isinstance(value, str):
        return "string"
    if isinstance(value, list):
        return "array"
    if isinstance(value, dict):
        return "object"
    return type(value).__name__


def _short(value: Any, limit: int = 60) -> str:
    text = repr(value)
    return text if len(text) <= limit else text[: limit - 1] + "…"
