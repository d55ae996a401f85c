"""`auditor check`, `auditor report` and `auditor rules validate` exit codes and outputs on the fake run."""

from __future__ import annotations

import json
import re
import shutil
import xml.etree.ElementTree as ET
from datetime import date, timedelta
from pathlib import Path
from typing import Any

import pytest
from gate_fake_run import HOSTILE, base_metrics, rule, write_gate_run, write_pack

from auditor.cli import main
from auditor.gate.spec import SHIPPED_PACKS, shipped_pack_path
from auditor.store import RunStore

REPO_RULES = Path(__file__).resolve().parents[2] / "rules"
LEAK = rule("no-leakage", "leakage.cross_split_pairs", "eq", 0, owner="data", description=HOSTILE)
RATE_OK = rule("label-rate", "issues.label_issue.rate", "lte", 0.2)
CLASS_GAP = rule("class-gap", "accuracy_gap", "lte", 0.5, "warning", for_each="class")


def _check(capsys: pytest.CaptureFixture[str], run: RunStore, pack: Path, *extra: str) -> tuple[int, str, str]:
    code = main(["-q", "check", str(run.root), "--rules", str(pack), *extra])
    out, err = capsys.readouterr()
    return code, out, err


def _waiver(expires: date) -> dict[str, Any]:
    return {"rule": "no-leakage", "reason": "pair fixed upstream", "approved_by": "lead", "expires": expires}


def test_passing_gate_exits_0(tmp_path: Path, gate_run: RunStore, capsys: pytest.CaptureFixture[str]) -> None:
    code, out, _ = _check(capsys, gate_run, write_pack(tmp_path / "p.yaml", [RATE_OK]))
    assert code == 0
    assert out.strip() == "gate pass (fails on critical): 1 rules: 1 pass"
    assert gate_run.read_json("audit.json")["verdict"] == "pass"


def test_failing_gate_exits_1_and_writes_every_output(
    tmp_path: Path, gate_run: RunStore, capsys: pytest.CaptureFixture[str]
) -> None:
    code, out, _ = _check(capsys, gate_run, write_pack(tmp_path / "p.yaml", [LEAK, RATE_OK, CLASS_GAP]))
    assert code == 1
    assert "FAIL     critical no-leakage: leakage.cross_split_pairs = 1, required == 0" in out
    assert "gate fail (fails on critical): 3 rules: 1 pass, 2 fail" in out
    audit = gate_run.read_json("audit.json")
    assert set(audit) == {"verdict", "statistics", "results", "metrics", "manifest"}
    assert audit["verdict"] == "fail"
    assert [r["rule_id"] for r in audit["results"]] == ["no-leakage", "label-rate", "class-gap"]
    assert audit["results"][0]["evidence_sample_ids"] == ["s001", "s003"]
    assert audit["statistics"]["n_rules"] == 3
    assert audit["statistics"]["rules_by_status"] == {"pass": 1, "fail": 2, "error": 0, "waived": 0, "skipped": 0}
    assert audit["metrics"] == base_metrics()
    junit = ET.parse(gate_run.path("audit.junit.xml")).getroot()
    assert [c.get("name") for c in junit.iter("testcase")] == ["no-leakage", "label-rate", "class-gap"]
    gate = gate_run.read_json("gate.json")
    assert gate["verdict"] == "fail"
    assert gate["rules_sha256"]
    summary = gate_run.path("summary.md").read_text(encoding="utf-8")
    assert "**Verdict: Fail**" in summary
    assert "**no-leakage** (critical)" in summary
    html = gate_run.path("index.html").read_text(encoding="utf-8")
    assert 'id="gate-results"' in html
    assert 'data-verdict="fail"' in html
    assert HOSTILE not in html  # the rule description is escaped


def test_warning_failures_exit_0_unless_fail_on_warning(
    tmp_path: Path, gate_run: RunStore, capsys: pytest.CaptureFixture[str]
) -> None:
    pack = write_pack(tmp_path / "p.yaml", [RATE_OK, CLASS_GAP])
    code, out, _ = _check(capsys, gate_run, pack)
    assert code == 0
    assert "gate warn" in out
    assert gate_run.read_json("audit.json")["verdict"] == "warn"
    code, out, _ = _check(capsys, gate_run, pack, "--fail-on", "warning")
    assert code == 1
    assert "gate fail (fails on warning)" in out


def test_live_waiver_exits_0(
    tmp_path: Path, gate_run: RunStore, capsys: pytest.CaptureFixture[str], today: date
) -> None:
    pack = write_pack(tmp_path / "p.yaml", [LEAK, RATE_OK], [_waiver(today + timedelta(days=7))])
    code, out, _ = _check(capsys, gate_run, pack)
    assert code == 0
    assert "WAIVED" in out
    result = gate_run.read_json("audit.json")["results"][0]
    assert (result["status"], result["expired_waiver"]) == ("waived", False)


def test_expired_waiver_exits_1_and_says_so(
    tmp_path: Path, gate_run: RunStore, capsys: pytest.CaptureFixture[str], today: date
) -> None:
    pack = write_pack(tmp_path / "p.yaml", [LEAK, RATE_OK], [_waiver(today - timedelta(days=1))])
    code, out, _ = _check(capsys, gate_run, pack)
    assert code == 1
    assert "expired on" in out
    result = gate_run.read_json("audit.json")["results"][0]
    assert (result["status"], result["expired_waiver"], result["waiver"]["expired"]) == ("fail", True, True)
    html = gate_run.path("index.html").read_text(encoding="utf-8")
    assert ">expired</span>" in html
    junit = gate_run.path("audit.junit.xml").read_text(encoding="utf-8")
    assert "waiver (EXPIRED)" in junit


def test_baseline_regression_exits_1(tmp_path: Path, gate_run: RunStore, capsys: pytest.CaptureFixture[str]) -> None:
    older = base_metrics()
    older["issues"]["label_issue"]["rate"] = 0.10
    baseline = tmp_path / "old-audit.json"
    baseline.write_text(json.dumps({"verdict": "pass", "metrics": older}), encoding="utf-8")
    trend = rule("no-regression", "issues.label_issue.rate", "lte", 0.01, baseline={"change": "absolute"})
    pack = write_pack(tmp_path / "p.yaml", [RATE_OK, trend])
    code, out, _ = _check(capsys, gate_run, pack)
    assert code == 0, "without --baseline the regression rule is skipped"
    assert "SKIPPED" in out
    code, out, _ = _check(capsys, gate_run, pack, "--baseline", str(baseline))
    assert code == 1
    assert "no-regression: issues.label_issue.rate 0.1 -> 0.15: change 0.05, required <= 0.01" in out
    assert gate_run.read_json("gate.json")["baseline_file"] == str(baseline.resolve())
    older["issues"]["label_issue"]["rate"] = 0.145
    baseline.write_text(json.dumps({"metrics": older}), encoding="utf-8")
    assert _check(capsys, gate_run, pack, "--baseline", str(baseline))[0] == 0


def test_baseline_may_be_an_earlier_run_directory(
    tmp_path: Path, gate_run: RunStore, capsys: pytest.CaptureFixture[str]
) -> None:
    older = write_gate_run(tmp_path / "older")
    trend = rule("no-regression", "issues.label_issue.rate", "lte", 0, baseline={"change": "relative"})
    code, _, _ = _check(capsys, gate_run, write_pack(tmp_path / "p.yaml", [trend]), "--baseline", str(older.root))
    assert code == 0  # metrics.json of an unrendered run is accepted; no change


def test_bad_rule_file_exits_2_naming_file_rule_and_field(
    tmp_path: Path, gate_run: RunStore, capsys: pytest.CaptureFixture[str]
) -> None:
    pack = write_pack(tmp_path / "bad.yaml", [RATE_OK, rule("no-leakage", "leakage.cross_split_pairs", "approx", 0)])
    code, out, err = _check(capsys, gate_run, pack)
    assert code == 2
    assert out == ""
    assert err.strip() == (
        f"auditor: error: {pack}: rule 'no-leakage' field 'condition': must be one of eq, ne, gt, gte, lt, lte, "
        "between, in; got 'approx'"
    )
    assert "Traceback" not in err
    assert not gate_run.has("gate.json")


@pytest.mark.parametrize(
    ("args", "expected"),
    [
        (["--baseline", "{tmp}/missing.json"], "--baseline"),
        (["--baseline", "{tmp}/p.yaml"], "cannot read it as JSON"),
    ],
)
def test_bad_baseline_exits_2(
    tmp_path: Path, gate_run: RunStore, capsys: pytest.CaptureFixture[str], args: list[str], expected: str
) -> None:
    pack = write_pack(tmp_path / "p.yaml", [RATE_OK])
    code, _, err = _check(capsys, gate_run, pack, *[a.format(tmp=tmp_path) for a in args])
    assert code == 2
    assert expected in err


def test_check_of_a_folder_that_is_no_run_exits_2(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    pack = write_pack(tmp_path / "p.yaml", [RATE_OK])
    assert main(["-q", "check", str(tmp_path), "--rules", str(pack)]) == 2
    assert "not an auditor run directory" in capsys.readouterr().err


def test_missing_metric_fails_a_critical_rule(
    tmp_path: Path, gate_run: RunStore, capsys: pytest.CaptureFixture[str]
) -> None:
    code, out, _ = _check(
        capsys, gate_run, write_pack(tmp_path / "p.yaml", [rule("typo", "issues.label_isue.rate", "lte", 1)])
    )
    assert code == 1
    assert "ERROR    critical typo: metric 'issues.label_isue.rate' not found" in out


@pytest.mark.parametrize("name", SHIPPED_PACKS)
def test_rules_validate_accepts_every_shipped_pack(name: str, capsys: pytest.CaptureFixture[str]) -> None:
    for path in (REPO_RULES / f"{name}.yaml", shipped_pack_path(name)):
        assert main(["rules", "validate", str(path)]) == 0
        out = capsys.readouterr().out
        assert out.startswith("ok: ")
        assert out.strip().endswith(" waivers")


def test_rules_validate_counts_rules_and_waivers(
    tmp_path: Path, capsys: pytest.CaptureFixture[str], today: date
) -> None:
    pack = write_pack(tmp_path / "p.yaml", [LEAK, RATE_OK], [_waiver(today + timedelta(days=3))])
    assert main(["rules", "validate", str(pack)]) == 0
    assert capsys.readouterr().out == "ok: 2 rules, 1 waivers\n"


def test_rules_validate_rejects_a_bad_pack(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    pack = tmp_path / "bad.yaml"
    pack.write_text("version: 1\nrules:\n  - id: x\n    metric: a.b\n    condition: lte\n", encoding="utf-8")
    assert main(["rules", "validate", str(pack)]) == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1
    assert f"{pack}: rule 'x' field 'threshold': is required but missing" in err


def test_report_rerenders_with_the_stored_gate(
    tmp_path: Path, gate_run: RunStore, capsys: pytest.CaptureFixture[str]
) -> None:
    _check(capsys, gate_run, write_pack(tmp_path / "p.yaml", [LEAK]))
    before = gate_run.path("audit.json").read_bytes()
    gate_run.path("audit.json").unlink()
    assert main(["-q", "report", str(gate_run.root)]) == 0
    assert gate_run.path("audit.json").read_bytes() == before
    assert gate_run.has("audit.junit.xml")


def test_same_run_gives_byte_identical_outputs(
    tmp_path: Path, gate_run: RunStore, capsys: pytest.CaptureFixture[str]
) -> None:
    pack = write_pack(tmp_path / "p.yaml", [LEAK, RATE_OK, CLASS_GAP])
    _check(capsys, gate_run, pack)
    first = {name: gate_run.path(name).read_bytes() for name in ("audit.json", "audit.junit.xml", "summary.md")}
    _check(capsys, gate_run, pack)
    assert {name: gate_run.path(name).read_bytes() for name in first} == first
    shutil.rmtree(gate_run.root)
    rebuilt = write_gate_run(gate_run.root)  # the same run made again: only manifest.created may differ
    _check(capsys, rebuilt, pack)
    assert rebuilt.path("audit.junit.xml").read_bytes() == first["audit.junit.xml"]
    created = re.compile(rb'"created": "[^"]*"')
    assert created.sub(b"", rebuilt.path("audit.json").read_bytes()) == created.sub(b"", first["audit.json"])
    assert created.search(first["audit.json"]), "the timestamp pattern no longer matches: update this test"
