"""Render a run directory as index.html, summary.md and audit.json, and write them through the RunStore.

Markup lives only in templates (auditor/templates/, optionally overridden by a user folder); this module
gathers data, picks templates and writes files.
"""

from __future__ import annotations

import base64
import hashlib
import logging
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

from jinja2 import ChoiceLoader, Environment, FileSystemLoader, PackageLoader, StrictUndefined

from auditor.report.junit import JUNIT_XML, render_junit
from auditor.report.sections import build_sections, sort_findings
from auditor.report.summary import compute_key_numbers, compute_statistics, describe_verdict
from auditor.report.tables import NOT_EVALUATED, AuditTables, load_audit_tables, to_plain
from auditor.store import RunStore

logger = logging.getLogger(__name__)

INDEX_HTML = "index.html"
SUMMARY_MD = "summary.md"
AUDIT_JSON = "audit.json"

HTML_TEMPLATE = "report.html.j2"
MARKDOWN_TEMPLATE = "summary.md.j2"
SCRIPT_TEMPLATE = "partials/sort_tables.js.j2"
MARKDOWN_TOP_FINDINGS = 10

_MARKDOWN_ESCAPES = {
    "\\": "\\\\",
    "`": "\\`",
    "*": "\\*",
    "_": "\\_",
    "[": "\\[",
    "]": "\\]",
    "|": "\\|",
    "#": "\\#",
    "<": "&lt;",
    ">": "&gt;",
    "&": "&amp;",
    "\r": " ",
    "\n": " ",
}


def make_environment(template_dir: str | Path | None = None) -> Environment:
    """The HTML template environment: a user folder first (when given), then the packaged templates."""
    env = Environment(loader=_loader(template_dir), autoescape=True, undefined=StrictUndefined)
    env.filters.update(num=format_number, pct=format_percent)
    return env


def make_markdown_environment(template_dir: str | Path | None = None) -> Environment:
    """Environment for Markdown: every `{{ value }}` is Markdown-escaped (the Markdown analogue of autoescape)."""
    env = Environment(
        loader=_loader(template_dir),
        autoescape=False,
        undefined=StrictUndefined,
        finalize=escape_markdown,
        keep_trailing_newline=True,
        trim_blocks=True,
        lstrip_blocks=True,
    )
    env.filters.update(num=format_number, pct=format_percent)
    return env


def format_number(value: Any, digits: int | None = None) -> str:
    """Plain text for a number: thousands separators for ints, `digits` decimals (or 3 significant) for floats."""
    if value is None:
        return "—"
    if isinstance(value, bool):
        return "yes" if value else "no"
    if isinstance(value, int):
        return f"{value:,}"
    if isinstance(value, float):
        return f"{value:.{digits}f}" if digits is not None else f"{value:,.3g}"
    return str(value)


def format_percent(value: Any, digits: int = 1) -> str:
    """A fraction in [0, 1] as a percentage; '—' when absent."""
    if value is None or isinstance(value, bool) or not isinstance(value, int | float):
        return "—"
    return f"{value:.{digits}%}"


def escape_markdown(value: Any) -> str:
    """`value` as inline Markdown text: markup characters backslash-escaped, `<>&` as entities, one line."""
    if value is None:
        return ""
    return "".join(_MARKDOWN_ESCAPES.get(char, char) for char in str(value))


def render_html(
    store: RunStore,
    *,
    verdict: str = NOT_EVALUATED,
    results: Sequence[Mapping[str, Any]] | None = None,
    template_dir: str | Path | None = None,
) -> str:
    """The self-contained HTML report of the run in `store` (inline CSS, images as data URIs)."""
    return render_html_tables(load_audit_tables(store, verdict=verdict, results=results), template_dir=template_dir)


def render_markdown(
    store: RunStore,
    *,
    verdict: str = NOT_EVALUATED,
    results: Sequence[Mapping[str, Any]] | None = None,
    template_dir: str | Path | None = None,
) -> str:
    """A short Markdown summary (verdict, key numbers, top findings) sized for a review comment."""
    tables = load_audit_tables(store, verdict=verdict, results=results)
    return render_markdown_tables(tables, template_dir=template_dir)


def build_audit_json(
    store: RunStore,
    *,
    verdict: str = NOT_EVALUATED,
    results: Sequence[Mapping[str, Any]] | None = None,
) -> dict[str, Any]:
    """`{verdict, statistics, results, metrics, manifest}` for CI; verdict/results come from the rule gate."""
    return build_audit_json_tables(load_audit_tables(store, verdict=verdict, results=results))


def run_reports(
    store: RunStore,
    *,
    verdict: str = NOT_EVALUATED,
    results: Sequence[Mapping[str, Any]] | None = None,
    template_dir: str | Path | None = None,
) -> dict[str, Path]:
    """Write index.html, summary.md and audit.json into the run; return `{"html", "markdown", "json"}` paths.

    When the rule gate has results, audit.junit.xml is written too (`"junit"`).
    """
    tables = load_audit_tables(store, verdict=verdict, results=results)
    paths = {
        "html": store.write_text(INDEX_HTML, render_html_tables(tables, template_dir=template_dir)),
        "markdown": store.write_text(SUMMARY_MD, render_markdown_tables(tables, template_dir=template_dir)),
        "json": store.write_json(AUDIT_JSON, build_audit_json_tables(tables)),
    }
    if tables.results:
        paths["junit"] = store.write_text(JUNIT_XML, render_junit(tables.results, verdict=tables.verdict))
    logger.info("Wrote reports %s", ", ".join(str(p) for p in paths.values()))
    return paths


def render_html_tables(tables: AuditTables, *, template_dir: str | Path | None = None) -> str:
    """`render_html` for tables already loaded (lets `run_reports` read the run once)."""
    env = make_environment(template_dir)
    script = env.get_template(SCRIPT_TEMPLATE).render()
    sections = build_sections(tables)
    return env.get_template(HTML_TEMPLATE).render(
        run=_run_header(tables),
        verdict=describe_verdict(tables.verdict),
        key_numbers=compute_key_numbers(tables),
        sections=sections,
        script_template=SCRIPT_TEMPLATE,
        script_hash="sha256-" + base64.b64encode(hashlib.sha256(script.encode("utf-8")).digest()).decode("ascii"),
    )


def render_markdown_tables(tables: AuditTables, *, template_dir: str | Path | None = None) -> str:
    """`render_markdown` for tables already loaded."""
    findings = sort_findings(tables.findings)
    top = _collapse_findings(findings)[:MARKDOWN_TOP_FINDINGS]
    failed = [
        {
            "rule": str(r.get("rule_id") or r.get("id") or ""),
            "severity": str(r.get("severity") or ""),
            "message": str(r.get("message") or ""),
        }
        for r in tables.results
        if str(r.get("status", "")).lower() in ("fail", "failed", "error")
    ]
    return (
        make_markdown_environment(template_dir)
        .get_template(MARKDOWN_TEMPLATE)
        .render(
            run=_run_header(tables),
            verdict=describe_verdict(tables.verdict),
            key_numbers=compute_key_numbers(tables),
            top_findings=top,
            n_findings=len(findings),
            failed_rules=failed,
            n_results=len(tables.results),
            report_file=INDEX_HTML,
            check=_influence_check_line(tables),
        )
    )


def _influence_check_line(tables: AuditTables) -> str | None:
    """One sentence on the retraining check of `harm_score` (`--verify` / `auditor eval`), if the run has one."""
    node = tables.metric("influence_check")
    drop = tables.metric("influence_check.loss_drop.harm_score")
    if not isinstance(node, dict) or drop is None:
        return None
    line = (
        f"retraining without the {node.get('n_removed')} most harmful training images by harm_score "
        f"(--method {node.get('method')}) changed the validation loss by {-float(drop):+.4f} "
        f"(random images: {-float(node.get('random_loss_drop', 0.0)):+.4f})"
    )
    lds = tables.metric("influence_check.lds.harm_score")
    return line + (f"; LDS {float(lds):.2f} over {node.get('subsets')} random halves" if lds is not None else "")


def build_audit_json_tables(tables: AuditTables) -> dict[str, Any]:
    """`build_audit_json` for tables already loaded."""
    return {
        "verdict": tables.verdict,
        "statistics": compute_statistics(tables),
        "results": to_plain(tables.results),
        "metrics": to_plain(tables.metrics),
        "manifest": to_plain(tables.manifest),
    }


def _collapse_findings(findings: Sequence[Mapping[str, Any]]) -> list[dict[str, Any]]:
    """One entry per (severity, kind, title), in first-seen order: six identical leakage pairs become one line."""
    entries: dict[tuple[str, str, str], dict[str, Any]] = {}
    for finding in findings:
        key = (finding["severity"], finding["kind"], finding["title"])
        entry = entries.setdefault(
            key, {"severity": key[0], "kind": key[1], "title": key[2], "n_findings": 0, "n_samples": 0}
        )
        entry["n_findings"] += 1
        entry["n_samples"] += len(finding["sample_ids"])
    return list(entries.values())


def _loader(template_dir: str | Path | None) -> ChoiceLoader:
    loaders: list[Any] = [FileSystemLoader(str(template_dir))] if template_dir is not None else []
    loaders.append(PackageLoader("auditor", "templates"))
    return ChoiceLoader(loaders)


def _run_header(tables: AuditTables) -> dict[str, Any]:
    manifest = tables.manifest
    return to_plain(
        {
            "name": str(manifest.get("run_name") or "unnamed run"),
            "tool_version": str(manifest.get("tool_version") or ""),
            "created": str(manifest.get("created") or ""),
            "data_fingerprint": str(manifest.get("data_fingerprint") or ""),
        }
    )
