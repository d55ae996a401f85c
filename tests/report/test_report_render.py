"""Tests of the report writers: files, audit.json contract, gallery order, escaping, offline-ness, determinism."""

from __future__ import annotations

import json
from html.parser import HTMLParser
from pathlib import Path

import pytest
from jinja2.exceptions import UndefinedError
from report_fake_run import HOSTILE, HOSTILE_ESCAPED, QUOTED, FakeRun

from auditor.errors import DataError
from auditor.report.render import (
    build_audit_json,
    escape_markdown,
    make_environment,
    render_html,
    render_markdown,
    run_reports,
)
from auditor.report.sections import SECTIONS, build_sections
from auditor.report.summary import compute_key_numbers
from auditor.report.tables import load_audit_tables
from auditor.report.thumbnails import _cached_thumbnail
from auditor.store import RunStore


class _ReportParser(HTMLParser):
    """Collects attributes of interest and the sample ids of each gallery, in document order."""

    def __init__(self) -> None:
        super().__init__()
        self.urls: list[str] = []
        self.galleries: dict[str, list[str]] = {}
        self.section_ids: list[str] = []
        self.tags: list[str] = []
        self._gallery: str | None = None

    def handle_starttag(self, tag: str, attrs: list[tuple[str, str | None]]) -> None:
        values = {k: v or "" for k, v in attrs}
        self.tags.append(tag)
        self.urls += [values[k] for k in ("src", "href", "action", "data", "poster") if k in values]
        if tag == "section" and "section" in values.get("class", "").split():
            self.section_ids.append(values["id"])
        if tag == "ol" and values.get("id", "").endswith("-gallery"):
            self._gallery = values["id"]
            self.galleries[self._gallery] = []
        if tag == "li" and self._gallery and "data-sample-id" in values:
            self.galleries[self._gallery].append(values["data-sample-id"])

    def handle_endtag(self, tag: str) -> None:
        if tag == "ol":
            self._gallery = None


def _parse(html: str) -> _ReportParser:
    parser = _ReportParser()
    parser.feed(html)
    return parser


def test_run_reports_writes_the_three_files(fake_run: FakeRun) -> None:
    paths = run_reports(fake_run.store)
    assert set(paths) == {"html", "markdown", "json"}
    assert [p.name for p in paths.values()] == ["index.html", "summary.md", "audit.json"]
    for path in paths.values():
        assert path.parent == fake_run.store.root
        assert path.stat().st_size > 0
    assert paths["html"].read_text(encoding="utf-8").startswith("<!DOCTYPE html>")


def test_audit_json_has_contract_keys_and_no_verdict_before_the_gate(fake_run: FakeRun) -> None:
    run_reports(fake_run.store)
    audit = fake_run.store.read_json("audit.json")
    assert set(audit) == {"verdict", "statistics", "results", "metrics", "manifest"}
    assert audit["verdict"] == "not_evaluated"
    assert audit["results"] == []
    assert audit["metrics"] == fake_run.store.read_json("metrics.json")
    assert audit["manifest"]["data_fingerprint"] == "sha256:0123456789abcdef0123456789abcdef"
    stats = audit["statistics"]
    assert stats["n_samples"] == 40
    assert stats["samples_by_split"] == {"test": 8, "train": 24, "val": 8}
    assert stats["findings_by_severity"] == {"critical": 2, "warning": 3, "info": 1}
    assert stats["n_label_issues"] == len(fake_run.label_issue_order)


def test_gate_verdict_and_results_pass_through(fake_run: FakeRun) -> None:
    results = [{"rule_id": "max-label-issue-rate", "status": "fail", "message": f"rate 0.2 > 0.05 {HOSTILE}"}]
    audit = build_audit_json(fake_run.store, verdict="fail", results=results)
    assert audit["verdict"] == "fail"
    assert audit["results"] == results
    html = render_html(fake_run.store, verdict="fail", results=results)
    assert 'data-verdict="fail"' in html
    assert "verdict-bad" in html
    assert "max-label-issue-rate" in html
    assert _parse(html).section_ids[0] == "gate"
    markdown = render_markdown(fake_run.store, verdict="fail", results=results)
    assert "**Verdict: Fail**" in markdown
    assert "max-label-issue-rate" in markdown


def test_label_issue_gallery_lists_flagged_samples_by_score(fake_run: FakeRun) -> None:
    galleries = _parse(render_html(fake_run.store)).galleries
    assert galleries["label-issue-gallery"] == fake_run.label_issue_order
    assert galleries["harmful-gallery"] == fake_run.harmful_order


def test_sections_appear_in_declared_order(fake_run: FakeRun) -> None:
    declared = [s.name for s in SECTIONS if s.name not in ("gate", "fewshot")]  # fewshot: few-shot runs only
    assert _parse(render_html(fake_run.store)).section_ids == declared


def test_section_data_is_plain_json(fake_run: FakeRun) -> None:
    for section in build_sections(load_audit_tables(fake_run.store)):
        text = json.dumps(section["context"], allow_nan=False)
        assert json.loads(text) == section["context"], section["name"]


def test_hostile_strings_are_escaped_everywhere(fake_run: FakeRun) -> None:
    paths = run_reports(fake_run.store)
    html = paths["html"].read_text(encoding="utf-8")
    assert HOSTILE not in html
    assert HOSTILE_ESCAPED in html
    assert "<b>bold</b>" not in html
    assert "&#34;quoted&#34; &amp; &#39;single&#39; &lt;b&gt;bold&lt;/b&gt; — ünïcødé 漢字" in html
    assert "ünïcødé &#34;q&#34; &#39;x&#39; &lt;b&gt;.png" in html  # the odd filename, in a title attribute
    assert {"script", "style"} & set(_parse(html).tags) == {"script", "style"}
    assert html.count("<script") == 1  # only our own sorting script
    markdown = paths["markdown"].read_text(encoding="utf-8")
    assert HOSTILE not in markdown
    assert "&lt;script&gt;" in markdown
    assert escape_markdown("a|b*c_[d]<e>") == "a\\|b\\*c\\_\\[d\\]&lt;e&gt;"


def test_no_network_references(fake_run: FakeRun) -> None:
    html = render_html(fake_run.store)
    parsed = _parse(html)
    assert parsed.urls, "expected images and table-of-contents links"
    for url in parsed.urls:
        assert url.startswith(("data:image/png;base64,", "#")), url
    assert "http://" not in html
    assert "https://" not in html
    assert "<link" not in html
    assert "@import" not in html
    assert "url(" not in html
    assert "default-src 'none'" in html


def test_render_is_deterministic(fake_run: FakeRun) -> None:
    first = render_html(fake_run.store)
    _cached_thumbnail.cache_clear()  # decode the images again, not just replay the cache
    second = render_html(fake_run.store)
    assert first == second
    assert render_markdown(fake_run.store) == render_markdown(fake_run.store)


def test_markdown_summary_is_short_and_leads_with_the_verdict(fake_run: FakeRun) -> None:
    markdown = render_markdown(fake_run.store)
    lines = markdown.splitlines()
    assert lines[0] == "## Dataset audit: run"
    assert "**Verdict: Not evaluated**" in markdown
    assert "| Label issues | 8 | 20.0% of samples |" in lines
    findings = [line for line in lines if line.startswith("- **")]
    assert [f.split("**")[1] for f in findings] == ["critical", "critical", "warning", "warning", "warning", "info"]
    assert len(markdown) < 4000
    assert len(lines) < 40


def test_missing_image_gets_placeholder_and_report_still_renders(fake_run: FakeRun) -> None:
    sections = {s["name"]: s["context"] for s in build_sections(load_audit_tables(fake_run.store))}
    cards = {c["sample_id"]: c for c in sections["label_issues"]["cards"]}
    assert cards[fake_run.missing_image_id]["thumbnail"]["readable"] is False
    assert all(c["thumbnail"]["readable"] for s, c in cards.items() if s != fake_run.missing_image_id)
    assert sections["unreadable"]["n_errors"] == 2
    assert sections["demo_check"]["rows"][0]["name"] == "label_flips"
    leak_first = sections["duplicates"]["groups"]
    assert [g["kind"] for g in leak_first] == ["duplicate", "leakage"]  # both cross splits; conflict first
    assert [m["sample_id"] for m in leak_first[0]["members"]] == ["s000", "s001", "s025"]


def test_findings_table_summarises_evidence(fake_run: FakeRun) -> None:
    sections = {s["name"]: s["context"] for s in build_sections(load_audit_tables(fake_run.store))}
    rows = sections["findings"]["rows"]
    assert [r["severity"] for r in rows] == ["critical", "critical", "warning", "warning", "warning", "info"]
    slice_row = next(r for r in rows if r["kind"] == "slice")
    assert [e["key"] for e in slice_row["evidence"]] == ["column", "value", "n", "n_flagged", "lift", "p_value"]
    assert slice_row["evidence"][1]["value"] == QUOTED


def test_run_without_scores_renders_not_computed(bare_run: FakeRun) -> None:
    paths = run_reports(bare_run.store)
    html = paths["html"].read_text(encoding="utf-8")
    assert "Label-issue scores were not computed for this run." in html
    assert "Harm scores were not computed for this run." in html
    assert "The analysis produced no findings." in html
    assert 'id="demo_check"' not in html
    audit = bare_run.store.read_json("audit.json")
    assert audit["statistics"]["n_label_issues"] is None
    assert audit["metrics"] == {}


def test_user_template_folder_overrides_packaged_templates(fake_run: FakeRun, tmp_path: Path) -> None:
    user = tmp_path / "my_templates" / "sections"
    user.mkdir(parents=True)
    (user / "methodology.html.j2").write_text("<p>Our own methodology, seed {{ ctx.seed }}.</p>", encoding="utf-8")
    html = render_html(fake_run.store, template_dir=tmp_path / "my_templates")
    assert "<p>Our own methodology, seed 3.</p>" in html
    assert "Harm and self-influence (TracIn)" not in html
    assert "Suspected label errors" in html  # the other sections still come from the package


def test_environment_is_strict_and_autoescaping() -> None:
    env = make_environment()
    assert env.autoescape is True
    assert env.from_string("{{ x }}").render(x=HOSTILE) == HOSTILE_ESCAPED
    with pytest.raises(UndefinedError):
        env.from_string("{{ missing }}").render()


def test_not_a_run_raises_data_error(tmp_path: Path) -> None:
    with pytest.raises(DataError, match="not an auditor run"):
        run_reports(RunStore(tmp_path / "nothing"))
    store = RunStore(tmp_path / "empty")
    store.prepare({}, overwrite=False, tool_version="0.1.0")
    with pytest.raises(DataError, match=r"samples\.parquet"):
        render_html(store)


def test_key_numbers_show_near_identical_images_beside_exact_ones(fake_run: FakeRun) -> None:
    metrics = fake_run.store.read_json("metrics.json")
    metrics["issues"]["duplicate"]["count"] = 0
    metrics["issues"]["near_duplicate"] = {"count": 4}
    metrics["leakage"] = {"cross_split_pairs": 0, "near_cross_split_pairs": 2}
    fake_run.store.write_json("metrics.json", metrics)
    cards = {c["key"]: c for c in compute_key_numbers(load_audit_tables(fake_run.store))}
    assert cards["n_duplicates"]["display"] == "0"
    assert cards["n_duplicates"]["detail"] == "exact; +4 near-identical"
    assert cards["cross_split_pairs"]["detail"] == "exact, across splits; +2 near-identical"
    assert cards["n_duplicates"]["tone"] == cards["cross_split_pairs"]["tone"] == "warn"
