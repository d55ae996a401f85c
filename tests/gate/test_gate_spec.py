"""Rule-pack loading: shipped packs validate; every malformed pack raises RuleSpecError naming file, rule, field."""

from __future__ import annotations

from datetime import date
from pathlib import Path

import pytest
from gate_fake_run import rule, write_pack

from auditor.errors import RuleSpecError
from auditor.gate.spec import SHIPPED_PACKS, load_rule_pack, resolve_pack_path, schema_document, shipped_pack_path

REPO_RULES = Path(__file__).resolve().parents[2] / "rules"


@pytest.mark.parametrize("name", SHIPPED_PACKS)
def test_shipped_packs_validate(name: str) -> None:
    pack = load_rule_pack(shipped_pack_path(name))
    assert pack.rules
    assert len({r.id for r in pack.rules}) == len(pack.rules)
    assert len(pack.sha256) == 64


def test_repository_rules_folder_is_the_packaged_one() -> None:
    assert REPO_RULES.is_dir(), "the top-level rules/ link to auditor/rules is missing"
    assert sorted(p.name for p in REPO_RULES.glob("*.yaml")) == sorted(f"{n}.yaml" for n in SHIPPED_PACKS)
    assert (REPO_RULES / "schema.json").is_file()


def test_shipped_pack_names_resolve_when_no_such_file(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.chdir(tmp_path)
    assert resolve_pack_path("default") == shipped_pack_path("default")
    assert resolve_pack_path("release.yaml") == shipped_pack_path("release")
    with pytest.raises(RuleSpecError, match="rule file not found"):
        resolve_pack_path("nonexistent.yaml")


def test_shipped_packs_also_validate_with_jsonschema() -> None:
    jsonschema = pytest.importorskip("jsonschema", reason="jsonschema is not installed; the built-in checker ran above")
    import yaml

    for name in SHIPPED_PACKS:
        document = yaml.safe_load(shipped_pack_path(name).read_text(encoding="utf-8"))
        jsonschema.Draft202012Validator(schema_document()).validate(document)


def test_full_rule_is_parsed(tmp_path: Path) -> None:
    path = write_pack(
        tmp_path / "p.yaml",
        [
            rule(
                "gap",
                "accuracy_gap",
                "lte",
                0.1,
                "warning",
                for_each="class",
                mostly=0.8,
                min_support=5,
                description="d",
                owner="o",
            ),
            rule("trend", "issues.label_issue.rate", "lte", 0.01, baseline={"change": "relative"}),
        ],
        [{"rule": "gap", "reason": "known", "approved_by": "me", "expires": date(2030, 1, 2)}],
    )
    pack = load_rule_pack(path)
    gap, trend = pack.rules
    assert (gap.for_each, gap.mostly, gap.min_support, gap.owner) == ("class", 0.8, 5, "o")
    assert trend.baseline_change == "relative"
    assert pack.waivers["gap"].expires == date(2030, 1, 2)


def test_waiver_date_may_be_quoted_text(tmp_path: Path) -> None:
    path = write_pack(
        tmp_path / "p.yaml",
        [rule("r", "leakage.cross_split_pairs", "eq", 0)],
        [{"rule": "r", "reason": "x", "approved_by": "y", "expires": "2031-05-06"}],
    )
    assert load_rule_pack(path).waivers["r"].expires == date(2031, 5, 6)


def _error(tmp_path: Path, text: str) -> str:
    path = tmp_path / "bad.yaml"
    path.write_text(text, encoding="utf-8")
    with pytest.raises(RuleSpecError) as info:
        load_rule_pack(path)
    message = str(info.value)
    assert message.startswith(f"{path}: "), message
    return message


GOOD_RULE = (
    "  - id: r1\n    metric: leakage.cross_split_pairs\n    condition: eq\n    threshold: 0\n    severity: critical\n"
)


def test_malformed_yaml_names_the_line(tmp_path: Path) -> None:
    message = _error(tmp_path, "version: 1\nrules:\n  - id: [unclosed\n")
    assert "malformed YAML at line" in message


@pytest.mark.parametrize(
    ("body", "expected"),
    [
        (
            "version: 1\nrules:\n" + GOOD_RULE.replace("condition: eq", "condition: approx"),
            "rule 'r1' field 'condition': must be one of eq, ne, gt, gte, lt, lte, between, in; got 'approx'",
        ),
        (
            "version: 1\nrules:\n" + GOOD_RULE.replace("    severity: critical\n", ""),
            "rule 'r1' field 'severity': is required but missing; add it",
        ),
        (
            "version: 1\nrules:\n" + GOOD_RULE.replace("threshold: 0", "threshold: {a: 1}"),
            "rule 'r1' field 'threshold': expected number or string or boolean or array",
        ),
        (
            "version: 1\nrules:\n" + GOOD_RULE.replace("severity: critical", "severity: blocker"),
            "rule 'r1' field 'severity': must be one of critical, warning, info",
        ),
        ("version: 1\nrules:\n" + GOOD_RULE + GOOD_RULE, "rule 'r1' field 'id': duplicate rule id (rules #1 and #2)"),
        (
            "version: 1\nrules:\n" + GOOD_RULE.replace("severity:", "severty: x\n    severity:"),
            "rule 'r1' field 'severty': is not a known field (did you mean 'severity'?)",
        ),
        (
            "version: 1\nrules:\n" + GOOD_RULE.replace("threshold: 0", "threshold: '0'").replace("eq", "lte"),
            "rule 'r1' field 'threshold': 'lte' needs a number threshold",
        ),
        (
            "version: 1\nrules:\n" + GOOD_RULE.replace("threshold: 0", "threshold: [2, 1]").replace("eq", "between"),
            "rule 'r1' field 'threshold': 'between' needs lo <= hi",
        ),
        (
            "version: 1\nrules:\n" + GOOD_RULE + "    mostly: 0.5\n",
            "rule 'r1' field 'mostly': only applies with for_each",
        ),
        (
            "version: 1\nrules:\n" + GOOD_RULE + "    for_each: class\n",
            "rule 'r1' field 'metric': 'leakage.cross_split_pairs' is not a per-group metric for for_each 'class'",
        ),
        (
            "version: 1\nrules:\n" + GOOD_RULE + "    for_each: species\n",
            "rule 'r1' field 'for_each': 'species' does not match the pattern",
        ),
        (
            "version: 1\nrules:\n"
            + GOOD_RULE.replace("metric: leakage.cross_split_pairs", "metric: accuracy")
            + "    for_each: class\n    baseline: {change: absolute}\n",
            "rule 'r1' field 'baseline': cannot be combined with for_each",
        ),
        (
            "version: 1\nrules:\n" + GOOD_RULE + "    baseline: {change: percent}\n",
            "rule 'r1' field 'baseline.change': must be one of absolute, relative",
        ),
        (
            "version: 1\nrules:\n  - metric: x\n    condition: eq\n    threshold: 0\n    severity: info\n",
            "rule #1 (no valid id) field 'id': is required but missing",
        ),
        (
            "version: 1\nrules:\n" + GOOD_RULE.replace("id: r1", "id: 'bad id!'"),
            "rule 'bad id!' field 'id': 'bad id!' does not match the pattern",
        ),
        ("version: 2\nrules:\n" + GOOD_RULE, "field 'version': must be 1"),
        ("version: 1\nrules: []\n", "field 'rules': must have at least 1 item(s)"),
        ("rules:\n" + GOOD_RULE, "field 'version': is required but missing"),
        (
            "version: 1\nrules:\n" + GOOD_RULE + "waivers:\n  - rule: r11\n    reason: x\n    approved_by: y\n"
            "    expires: 2030-01-01\n",
            "waiver #1 field 'rule': no rule has id 'r11' (did you mean 'r1'?)",
        ),
        (
            "version: 1\nrules:\n" + GOOD_RULE + "waivers:\n  - rule: r1\n    reason: x\n    expires: 2030-01-01\n",
            "waiver #1 (rule 'r1') field 'approved_by': is required but missing",
        ),
        (
            "version: 1\nrules:\n" + GOOD_RULE + "waivers:\n  - rule: r1\n    reason: x\n    approved_by: y\n"
            "    expires: '2030-13-01'\n",
            "waiver #1 (rule 'r1') field 'expires': '2030-13-01' is not a valid date",
        ),
        (
            "version: 1\nrules:\n" + GOOD_RULE + "waivers:\n  - rule: r1\n    reason: x\n    approved_by: y\n"
            "    expires: next year\n",
            "waiver #1 (rule 'r1') field 'expires': 'next year' does not match the pattern",
        ),
        (
            "version: 1\nrules:\n" + GOOD_RULE + "waivers:\n" + "  - {rule: r1, reason: x, approved_by: y, "
            "expires: 2030-01-01}\n" * 2,
            "waiver #2 field 'rule': rule 'r1' already has a waiver",
        ),
        ("- just\n- a list\n", "the rule file is a list; it must be a mapping"),
        ("", "the rule file is empty"),
    ],
)
def test_bad_rule_files_name_file_rule_and_field(tmp_path: Path, body: str, expected: str) -> None:
    assert expected in _error(tmp_path, body)


def test_impossible_yaml_date_is_a_rule_spec_error(tmp_path: Path) -> None:
    body = (
        "version: 1\nrules:\n"
        + GOOD_RULE
        + "waivers:\n  - {rule: r1, reason: x, approved_by: y, expires: 2030-02-30}\n"
    )
    assert "YYYY-MM-DD" in _error(tmp_path, body)


def test_missing_file_is_a_rule_spec_error(tmp_path: Path) -> None:
    with pytest.raises(RuleSpecError, match="rule file not found"):
        load_rule_pack(tmp_path / "nope.yaml")
