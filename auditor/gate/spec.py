"""Rule packs: load a YAML file safely, check it against rules/schema.json and semantic rules, return a RulePack.

Every problem raises RuleSpecError naming the file, the rule id (or waiver) and the field, with the fix.
Evaluation lives in evaluate.py; this module never reads a run directory.
"""

from __future__ import annotations

import difflib
import hashlib
import json
from collections.abc import Mapping
from dataclasses import dataclass, field
from datetime import date
from importlib import resources
from pathlib import Path
from typing import Any

import yaml

from auditor.errors import RuleSpecError
from auditor.gate.conditions import threshold_problem
from auditor.gate.schema_check import SchemaViolation, check_schema_keywords, iter_violations

SEVERITIES = ("critical", "warning", "info")
"""Rule severities, most serious first."""

FOR_EACH_CLASS = "class"
FOR_EACH_SLICES = "slices"
FOR_EACH_METADATA = "metadata"

GROUP_METRICS = (
    "n",
    "label_issue.count",
    "label_issue.rate",
    "harmful.count",
    "harmful.rate",
    "accuracy",
    "accuracy_gap",
    "oof_accuracy",
    "oof_accuracy_gap",
)
"""Metrics computed per class or per metadata value from samples.parquet (see rules/README.md)."""

SLICE_METRICS = (
    "n",
    "n_flagged",
    "rate",
    "rest_rate",
    "rate_gap",
    "lift",
    "p_value",
    "q_value",
    "accuracy_gap",
    "label_issue_gap",
)
"""Metrics of each discovered slice finding (findings.json, kind 'slice')."""

SHIPPED_PACKS = ("default", "release", "fairness")
"""Rule packs shipped in auditor/rules/; `--rules default` finds them when no such file exists."""


@dataclass(frozen=True, kw_only=True)
class Rule:
    """One threshold over a metric. `threshold` is a number, text/boolean (eq/ne), [lo, hi] or a list (in)."""

    id: str
    metric: str
    condition: str
    threshold: Any
    severity: str
    for_each: str | None = None
    mostly: float = 1.0
    min_support: int = 1
    baseline_change: str | None = None
    description: str = ""
    owner: str = ""


@dataclass(frozen=True, kw_only=True)
class Waiver:
    """A signed, dated exception for one rule; from `expires` on it no longer applies."""

    rule: str
    reason: str
    approved_by: str
    expires: date

    def is_live(self, today: date) -> bool:
        """True before the expiry date."""
        return today < self.expires

    def to_dict(self, today: date) -> dict[str, Any]:
        """Plain form for results: the four fields plus `expired`."""
        return {
            "rule": self.rule,
            "reason": self.reason,
            "approved_by": self.approved_by,
            "expires": self.expires.isoformat(),
            "expired": not self.is_live(today),
        }


@dataclass(frozen=True, kw_only=True)
class RulePack:
    """A validated rule pack: rules in file order, waivers keyed by rule id."""

    path: Path
    sha256: str
    rules: tuple[Rule, ...]
    waivers: dict[str, Waiver] = field(default_factory=dict)
    description: str = ""


def schema_document() -> dict[str, Any]:
    """The JSON Schema of rule packs (auditor/rules/schema.json)."""
    text = resources.files("auditor").joinpath("rules/schema.json").read_text(encoding="utf-8")
    schema: dict[str, Any] = json.loads(text)
    check_schema_keywords(schema)
    return schema


def shipped_pack_path(name: str) -> Path:
    """Path of a rule pack shipped with auditor, e.g. 'default' -> .../auditor/rules/default.yaml."""
    return Path(str(resources.files("auditor").joinpath(f"rules/{name}.yaml")))


def resolve_pack_path(value: str | Path) -> Path:
    """`value` if it is a file; else a shipped pack when `value` names one ('default', 'release.yaml')."""
    path = Path(value)
    if path.exists():
        return path
    stem = path.name.removesuffix(".yaml")
    if path.parent == Path(".") and stem in SHIPPED_PACKS:
        return shipped_pack_path(stem)
    raise RuleSpecError(
        f"{path}: rule file not found; pass the path of a YAML rule pack or one of the shipped packs "
        f"({', '.join(SHIPPED_PACKS)})"
    )


def load_rule_pack(value: str | Path) -> RulePack:
    """Read, validate and return the rule pack at `value` (a path or a shipped pack name)."""
    path = resolve_pack_path(value)
    try:
        raw = path.read_bytes()
    except OSError as exc:
        raise RuleSpecError(f"{path}: cannot read the rule file ({exc.strerror or exc})") from exc
    try:
        document = yaml.safe_load(raw.decode("utf-8"))
    except UnicodeDecodeError as exc:
        raise RuleSpecError(f"{path}: not UTF-8 text ({exc.reason} at byte {exc.start}); save it as UTF-8") from exc
    except yaml.YAMLError as exc:
        where = getattr(exc, "problem_mark", None)
        line = f" at line {where.line + 1}, column {where.column + 1}" if where is not None else ""
        problem = getattr(exc, "problem", None) or str(exc).splitlines()[0]
        raise RuleSpecError(f"{path}: malformed YAML{line}: {problem}; fix the syntax") from exc
    except ValueError as exc:  # PyYAML raises ValueError for impossible dates such as 2027-02-30
        raise RuleSpecError(f"{path}: invalid value in YAML: {exc}; dates are written YYYY-MM-DD") from exc
    return parse_rule_pack(document, path=path, sha256=hashlib.sha256(raw).hexdigest())


def parse_rule_pack(document: Any, *, path: Path, sha256: str = "") -> RulePack:
    """Validate an already-parsed document (schema, then semantics) and build the RulePack."""
    if not isinstance(document, dict):
        kind = "empty" if document is None else f"a {type(document).__name__}"
        raise RuleSpecError(
            f"{path}: the rule file is {kind}; it must be a mapping with 'version: 1' and a 'rules:' list"
        )
    document = _dates_to_text(document)
    for violation in iter_violations(document, schema_document()):
        raise RuleSpecError(_describe_violation(path, document, violation))
    rules = tuple(_build_rule(path, raw) for raw in document["rules"])
    seen: dict[str, int] = {}
    for position, rule in enumerate(rules):
        if rule.id in seen:
            raise RuleSpecError(
                f"{path}: rule {rule.id!r} field 'id': duplicate rule id (rules #{seen[rule.id] + 1} and "
                f"#{position + 1}); give each rule a unique id"
            )
        seen[rule.id] = position
    waivers: dict[str, Waiver] = {}
    for position, raw in enumerate(document.get("waivers") or []):
        waiver = _build_waiver(path, raw, position)
        if waiver.rule not in seen:
            hint = _did_you_mean(waiver.rule, seen)
            raise RuleSpecError(
                f"{path}: waiver #{position + 1} field 'rule': no rule has id {waiver.rule!r}{hint}; "
                "name a rule of this pack"
            )
        if waiver.rule in waivers:
            raise RuleSpecError(
                f"{path}: waiver #{position + 1} field 'rule': rule {waiver.rule!r} already has a waiver; "
                "keep one waiver per rule (edit its reason/expires instead)"
            )
        waivers[waiver.rule] = waiver
    return RulePack(
        path=path, sha256=sha256, rules=rules, waivers=waivers, description=str(document.get("description", ""))
    )


def _build_rule(path: Path, raw: dict[str, Any]) -> Rule:
    rule_id = raw["id"]

    def problem(field_name: str, message: str) -> RuleSpecError:
        return RuleSpecError(f"{path}: rule {rule_id!r} field {field_name!r}: {message}")

    why = threshold_problem(raw["condition"], raw["threshold"])
    if why is not None:
        raise problem("threshold", why)
    for_each = raw.get("for_each")
    if for_each is None:
        for name in ("mostly", "min_support"):
            if name in raw:
                raise problem(
                    name, "only applies with for_each (class, metadata, meta_<name> or slices); add for_each or drop it"
                )
    else:
        if "baseline" in raw:
            raise problem("baseline", "cannot be combined with for_each; compare a global metric instead")
        allowed = SLICE_METRICS if for_each == FOR_EACH_SLICES else GROUP_METRICS
        if raw["metric"] not in allowed:
            hint = _did_you_mean(raw["metric"], allowed)
            raise problem(
                "metric",
                f"{raw['metric']!r} is not a per-group metric for for_each {for_each!r}{hint}; "
                f"use one of {', '.join(allowed)}",
            )
    baseline = raw.get("baseline")
    if baseline is not None and (raw["condition"] == "in" or not _numeric(raw["threshold"])):
        raise problem("threshold", "a baseline rule compares a numeric change; use a number (or [lo, hi]) threshold")
    return Rule(
        id=rule_id,
        metric=raw["metric"],
        condition=raw["condition"],
        threshold=raw["threshold"],
        severity=raw["severity"],
        for_each=for_each,
        mostly=float(raw.get("mostly", 1.0)),
        min_support=int(raw.get("min_support", 1)),
        baseline_change=baseline["change"] if baseline is not None else None,
        description=str(raw.get("description", "")),
        owner=str(raw.get("owner", "")),
    )


def _numeric(threshold: Any) -> bool:
    values = threshold if isinstance(threshold, list) else [threshold]
    return all(isinstance(v, int | float) and not isinstance(v, bool) for v in values)


def _build_waiver(path: Path, raw: dict[str, Any], position: int) -> Waiver:
    try:
        expires = date.fromisoformat(raw["expires"])
    except ValueError as exc:
        raise RuleSpecError(
            f"{path}: waiver #{position + 1} (rule {raw['rule']!r}) field 'expires': {raw['expires']!r} is not a "
            "valid date; write YYYY-MM-DD"
        ) from exc
    return Waiver(rule=raw["rule"], reason=raw["reason"], approved_by=raw["approved_by"], expires=expires)


def _dates_to_text(document: dict[str, Any]) -> dict[str, Any]:
    """YAML reads `expires: 2027-01-01` as a date; the schema (JSON) knows only strings."""
    waivers = document.get("waivers")
    if not isinstance(waivers, list):
        return document
    converted = [
        {k: (v.isoformat() if isinstance(v, date) else v) for k, v in w.items()} if isinstance(w, dict) else w
        for w in waivers
    ]
    return {**document, "waivers": converted}


def _describe_violation(path: Path, document: Mapping[str, Any], violation: SchemaViolation) -> str:
    """'<file>: rule 'x' field 'condition': <problem>' for a schema violation, naming the rule or waiver."""
    location = violation.path
    if len(location) >= 2 and location[0] in ("rules", "waivers") and isinstance(location[1], int):
        section, index = location[0], location[1]
        entry = document[section][index]
        field_path = ".".join(str(p) for p in location[2:])
        if section == "rules":
            rule_id = entry.get("id") if isinstance(entry, dict) else None
            owner = f"rule {rule_id!r}" if isinstance(rule_id, str) else f"rule #{index + 1} (no valid id)"
        else:
            rule_id = entry.get("rule") if isinstance(entry, dict) else None
            owner = f"waiver #{index + 1}" + (f" (rule {rule_id!r})" if isinstance(rule_id, str) else "")
        if not field_path:
            return f"{path}: {owner}: {violation.message}; each entry is a mapping of fields"
        return f"{path}: {owner} field {field_path!r}: {_with_fix(violation)}"
    field_path = ".".join(str(p) for p in location) or "(top level)"
    return f"{path}: field {field_path!r}: {_with_fix(violation)}"


def _with_fix(violation: SchemaViolation) -> str:
    """The violation message, plus the fix where the message alone does not say it."""
    if violation.message.endswith("is required but missing"):
        return violation.message + "; add it"
    return violation.message


def _did_you_mean(word: str, options: Any) -> str:
    close = difflib.get_close_matches(word, list(options), n=1)
    return f" (did you mean {close[0]!r}?)" if close else ""
