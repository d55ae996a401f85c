"""Report sections: each turns AuditTables into JSON-able data for one template; `SECTIONS` fixes their order.

Sections never produce markup: templates under auditor/templates/sections/ render what `build` returns.
"""

from __future__ import annotations

import math
from abc import ABC, abstractmethod
from collections.abc import Iterable, Mapping
from typing import Any, ClassVar
from urllib.parse import quote

import pandas as pd

from auditor.gate.conditions import CONDITIONS, describe_condition
from auditor.report.tables import SEVERITIES, AuditTables, to_plain
from auditor.report.thumbnails import load_thumbnail
from auditor.schema import (
    BRIGHTNESS,
    DUPLICATE_GROUP,
    FILEPATH,
    GIVEN_LABEL_PROB,
    HARM_SCORE,
    HEIGHT,
    IS_HARMFUL,
    IS_LABEL_ISSUE,
    LABEL,
    LABEL_ISSUE_SCORE,
    LOSS,
    MODE,
    PREDICTED_LABEL,
    RELPATH,
    SAMPLE_ID,
    SELF_INFLUENCE,
    SPLIT,
    SPLITS,
    SUGGESTED_LABEL,
    WIDTH,
    meta_columns,
)

GALLERY_THUMBNAIL_SIZE = 96
STRIP_THUMBNAIL_SIZE = 64
NEIGHBOUR_THUMBNAIL_SIZE = 24
MAX_NEIGHBOURS = 5
MAX_HELPFUL = 12
MAX_LABEL_ISSUES = 60
MAX_HARMFUL = 30
MAX_CLASS_ROWS = 40
MAX_FINDINGS = 500
MAX_DUPLICATE_GROUPS = 40
MAX_GROUP_MEMBERS = 12
MAX_ERROR_ROWS = 200
MAX_EVIDENCE_ITEMS = 6
MAX_TEXT = 160

_SEVERITY_RANK = {severity: rank for rank, severity in enumerate(SEVERITIES)}
_EVIDENCE_PRIORITY = (
    "slice",
    "column",
    "value",
    "match",
    "cross_split",
    "conflicting_labels",
    "n",
    "n_flagged",
    "rate",
    "lift",
    "accuracy_gap",
    "p_value",
    "q_value",
)


class Section(ABC):
    """One part of the report. `build` returns plain JSON-able data; `template` renders it as `ctx`."""

    name: ClassVar[str]
    title: ClassVar[str]
    template: ClassVar[str]

    def applies(self, tables: AuditTables) -> bool:
        """False when the section has nothing to say for this run and is left out entirely."""
        del tables
        return True

    @abstractmethod
    def build(self, tables: AuditTables) -> dict[str, Any]:
        """The data the template needs: only dicts, lists, str, int, float, bool and None."""


class GateSection(Section):
    """Per-rule results of the rule gate, once a gate has judged the run."""

    name: ClassVar[str] = "gate"
    title: ClassVar[str] = "Rule gate"
    template: ClassVar[str] = "sections/gate.html.j2"

    def applies(self, tables: AuditTables) -> bool:
        return bool(tables.results)

    def build(self, tables: AuditTables) -> dict[str, Any]:
        rows = [_gate_row(result) for result in tables.results]
        statuses = [row["status"] for row in rows]
        counts = [{"status": s, "count": statuses.count(s)} for s in dict.fromkeys(sorted(statuses))]
        return {"verdict": tables.verdict, "rows": rows, "counts": counts}


def _gate_row(result: Mapping[str, Any]) -> dict[str, Any]:
    """One rule result as table text: observed vs required, severity, status and waiver state."""
    condition, threshold = result.get("condition"), result.get("threshold")
    required = describe_condition(condition, threshold) if condition in CONDITIONS and threshold is not None else ""
    observed = result.get("observed")
    for_each = result.get("for_each")
    if for_each:
        required = f"each {for_each}: {required}; ≥ {_format_value(result.get('mostly'))} of groups"
        observed_text = "—" if observed is None else f"{observed:.0%} of groups pass"
    else:
        observed_text = _format_value(observed)
    if isinstance(result.get("baseline"), Mapping):
        required = f"change vs baseline ({_text(result['baseline'].get('change'))}) {required}"
    waiver = result.get("waiver")
    waiver_text = ""
    if isinstance(waiver, Mapping):
        state = "ended" if waiver.get("expired") else "until"
        waiver_text = f"{state} {_text(waiver.get('expires'))}, approved by {_text(waiver.get('approved_by'))}: "
        waiver_text += _text(waiver.get("reason"))
    severity = _text(result.get("severity"))
    return {
        "rule": _text(result.get("rule_id") or result.get("id") or result.get("name") or ""),
        "description": _text(result.get("description")),
        "metric": _text(result.get("metric")),
        "observed": observed_text,
        "required": _text(required),
        "severity": severity,
        "severity_rank": _SEVERITY_RANK.get(severity, len(SEVERITIES)),
        "status": _text(result.get("status") or result.get("outcome") or ""),
        "waiver": waiver_text,
        "waiver_expired": bool(isinstance(waiver, Mapping) and waiver.get("expired")),
        "message": _text(result.get("message") or result.get("description") or "", limit=400),
        "n_evidence": len(result.get("evidence_sample_ids") or []),
    }


class OverviewSection(Section):
    """Counts per split and class, metadata coverage, image sizes, proxy-model accuracy and error counts."""

    name: ClassVar[str] = "overview"
    title: ClassVar[str] = "Dataset overview"
    template: ClassVar[str] = "sections/overview.html.j2"

    def build(self, tables: AuditTables) -> dict[str, Any]:
        samples = tables.samples
        splits = _ordered_splits(samples[SPLIT])
        counts = pd.crosstab(samples[LABEL].astype(str), samples[SPLIT].astype(str))
        counts = counts.reindex(columns=splits, fill_value=0)
        per_label = {
            str(label): [int(n) for n in row] for label, row in zip(counts.index, counts.to_numpy(), strict=True)
        }
        totals = {label: sum(row) for label, row in per_label.items()}
        order = sorted(totals, key=lambda label: (-totals[label], label))
        class_rows = [
            {"label": label, "counts": per_label[label], "total": totals[label]} for label in order[:MAX_CLASS_ROWS]
        ]
        split_rows = [
            {
                "split": split,
                "n_samples": int((samples[SPLIT] == split).sum()),
                "n_classes": int(samples.loc[samples[SPLIT] == split, LABEL].nunique()),
                "accuracy": to_plain(tables.metric(f"model.accuracy.{split}")),
            }
            for split in splits
        ]
        class_sizes = pd.Series(list(totals.values()), dtype="int64")
        return {
            "n_samples": len(samples),
            "n_classes": int(samples[LABEL].nunique()),
            "splits": splits,
            "split_rows": split_rows,
            "class_rows": class_rows,
            "n_classes_hidden": max(len(order) - MAX_CLASS_ROWS, 0),
            "class_size": {
                "min": int(class_sizes.min()) if len(class_sizes) else 0,
                "median": float(class_sizes.median()) if len(class_sizes) else 0.0,
                "max": int(class_sizes.max()) if len(class_sizes) else 0,
            },
            "metadata": _metadata_coverage(samples),
            "images": _image_summary(samples),
            "errors_by_stage": _counts(tables.errors["stage"]) if "stage" in tables.errors else [],
            "n_errors": len(tables.errors),
        }


class DemoCheckSection(Section):
    """How many of the problems planted in the built-in demo the audit recovered."""

    name: ClassVar[str] = "demo_check"
    title: ClassVar[str] = "Demo self-check"
    template: ClassVar[str] = "sections/demo_check.html.j2"

    def applies(self, tables: AuditTables) -> bool:
        return tables.demo_check is not None

    def build(self, tables: AuditTables) -> dict[str, Any]:
        problems = (tables.demo_check or {}).get("problems") or []
        rows = [
            {
                "name": _text(p.get("name", "")),
                "planted": to_plain(p.get("planted")),
                "found": to_plain(p.get("found")),
                "recall": to_plain(p.get("recall")),
                "precision": to_plain(p.get("precision")),
                "how": _text(p.get("how", "")),
            }
            for p in problems
            if isinstance(p, Mapping)
        ]
        return {"rows": rows}


class InfluenceCheckSection(Section):
    """`--verify` / `auditor eval`: the run's own check of its scores by retraining (auditor.runcheck)."""

    name: ClassVar[str] = "influence_check"
    title: ClassVar[str] = "Influence check by retraining"
    template: ClassVar[str] = "sections/influence_check.html.j2"

    def applies(self, tables: AuditTables) -> bool:
        return isinstance(tables.metric("influence_check"), Mapping)

    def build(self, tables: AuditTables) -> dict[str, Any]:
        node = tables.metric("influence_check")
        drops = node.get("loss_drop") or {}
        lds = node.get("lds") or {}
        random_drop = to_plain(node.get("random_loss_drop"))
        rows = [
            {
                "name": _text(name),
                "drop": to_plain(drop),
                "lds": to_plain(lds.get(name)),
                "beats_random": random_drop is not None and to_plain(drop) > random_drop,
            }
            for name, drop in drops.items()
        ]
        return {
            "method": _text(node.get("method") or ""),
            "n_removed": to_plain(node.get("n_removed")),
            "full_loss": to_plain(node.get("full_loss")),
            "random_drop": random_drop,
            "rows": rows,
            "has_lds": bool(lds),
            "subsets": to_plain(node.get("subsets")),
            "seconds": to_plain(node.get("seconds")),
        }


class LabelIssuesSection(Section):
    """Gallery of the samples most likely to be mislabeled, highest `label_issue_score` first, with look-alikes.

    The look-alikes are the analysis stage's `label_neighbours` (analysis.json): pixel-space neighbours,
    each marked by whether it carries the suggested label, the given one, or another.
    """

    name: ClassVar[str] = "label_issues"
    title: ClassVar[str] = "Suspected label errors"
    template: ClassVar[str] = "sections/label_issues.html.j2"

    def build(self, tables: AuditTables) -> dict[str, Any]:
        samples = tables.samples
        if LABEL_ISSUE_SCORE not in samples:
            return {"computed": False, "n_flagged": 0, "rate": None, "cards": [], "n_hidden": 0}
        flagged = samples[samples[IS_LABEL_ISSUE].fillna(False).astype(bool)] if IS_LABEL_ISSUE in samples else samples
        shown = _records(_rank(flagged, LABEL_ISSUE_SCORE).head(MAX_LABEL_ISSUES))
        neighbours = tables.analysis.get("label_neighbours") or {}
        wanted = {
            str(n.get("sample_id"))
            for row in shown
            for n in (neighbours.get(str(row[SAMPLE_ID])) or [])[:MAX_NEIGHBOURS]
            if isinstance(n, Mapping)
        }
        neighbour_cards = _cards_by_id(tables, wanted, NEIGHBOUR_THUMBNAIL_SIZE)
        cards = []
        for row in shown:
            card = {
                **_sample_card(row, GALLERY_THUMBNAIL_SIZE),
                "suggested_label": _text(row.get(SUGGESTED_LABEL)),
                "predicted_label": _text(row.get(PREDICTED_LABEL)),
                "score": to_plain(row[LABEL_ISSUE_SCORE]),
                "given_label_prob": to_plain(row.get(GIVEN_LABEL_PROB)),
            }
            near = _neighbour_cards(neighbours.get(card["sample_id"]) or [], neighbour_cards, card)
            card["neighbours"] = near
            card["n_neighbours_suggested"] = sum(n["agrees"] == "suggested" for n in near)
            card["n_neighbours_given"] = sum(n["agrees"] == "given" for n in near)
            cards.append(card)
        rate = tables.metric("issues.label_issue.rate")
        return {
            "computed": True,
            "n_flagged": len(flagged),
            "rate": to_plain(rate if rate is not None else len(flagged) / max(len(samples), 1)),
            "cards": cards,
            "n_hidden": max(len(flagged) - MAX_LABEL_ISSUES, 0),
            "held_back": to_plain(tables.metric("issues.label_issue.held_back_unreliable")),
            "oof_accuracy": to_plain(tables.metric("model.oof_accuracy")),
            "has_neighbours": any(card["neighbours"] for card in cards),
            "few_shot": isinstance(tables.metric("fewshot"), Mapping),
            **_finding_link(tables, _first_finding(tables, "label_issue")),
        }


def _neighbour_cards(
    neighbours: list[Any], cards: Mapping[str, dict[str, Any]], flagged: Mapping[str, Any]
) -> list[dict[str, Any]]:
    """Thumbnails of a flagged sample's nearest neighbours, each marked by whose label it carries."""
    out = []
    for neighbour in neighbours[:MAX_NEIGHBOURS]:
        if not isinstance(neighbour, Mapping) or str(neighbour.get("sample_id")) not in cards:
            continue
        card = cards[str(neighbour.get("sample_id"))]
        agrees = (
            "suggested"
            if flagged["suggested_label"] and card["label"] == flagged["suggested_label"]
            else "given"
            if card["label"] == flagged["label"]
            else "other"
        )
        out.append({**card, "similarity": to_plain(neighbour.get("similarity")), "agrees": agrees})
    return out


class HarmfulSection(Section):
    """Samples whose removal is predicted to lower the validation loss most, highest `harm_score` first."""

    name: ClassVar[str] = "harmful"
    title: ClassVar[str] = "Harmful samples"
    template: ClassVar[str] = "sections/harmful.html.j2"

    def build(self, tables: AuditTables) -> dict[str, Any]:
        samples = tables.samples
        if HARM_SCORE not in samples:
            return {"computed": False, "n_flagged": 0, "cards": [], "n_hidden": 0}
        if IS_HARMFUL in samples:
            candidates = samples[samples[IS_HARMFUL].fillna(False).astype(bool)]
        else:
            candidates = samples[samples[HARM_SCORE] > 0]
        ranked = _rank(candidates, HARM_SCORE)
        cards = [
            {
                **_sample_card(row, GALLERY_THUMBNAIL_SIZE),
                "harm_score": to_plain(row[HARM_SCORE]),
                "self_influence": to_plain(row.get(SELF_INFLUENCE)),
                "loss": to_plain(row.get(LOSS)),
            }
            for row in _records(ranked.head(MAX_HARMFUL))
        ]
        helpful = [
            {**_sample_card(row, STRIP_THUMBNAIL_SIZE), "score": to_plain(row[HARM_SCORE])}
            for row in _records(_rank_helpful(_training_samples(samples), HARM_SCORE).head(MAX_HELPFUL))
        ]
        finding = next((f for f in tables.findings if f["kind"] == "harmful" and f["finding_id"] == "harmful"), None)
        return {
            "computed": True,
            "n_flagged": len(candidates),
            "cards": cards,
            "n_hidden": max(len(candidates) - MAX_HARMFUL, 0),
            "helpful": helpful,
            **_finding_link(tables, finding or _first_finding(tables, "harmful")),
        }


def _training_samples(samples: pd.DataFrame) -> pd.DataFrame:
    """The train split (all rows when there is none).

    Held-out samples get harm scores too, but "removing" one changes no training run, and a validation
    sample's gradient is part of the validation loss it is scored against: it always looks helpful.
    """
    train = samples[samples[SPLIT].astype(str) == "train"]
    return train if len(train) else samples


def _rank_helpful(frame: pd.DataFrame, score: str) -> pd.DataFrame:
    """Rows with a negative `score`, lowest (most helpful: removing it is predicted to hurt most) first."""
    values = pd.to_numeric(frame[score], errors="coerce")
    helpful = frame[values < 0]
    return helpful.sort_values([score, SAMPLE_ID], ascending=[True, True], kind="mergesort")


class FindingsSection(Section):
    """Every finding, most severe first: kind, severity, title, number of samples and key evidence."""

    name: ClassVar[str] = "findings"
    title: ClassVar[str] = "All findings"
    template: ClassVar[str] = "sections/findings.html.j2"

    def build(self, tables: AuditTables) -> dict[str, Any]:
        ordered = sort_findings(tables.findings)
        rows = [
            {
                "finding_id": _text(f["finding_id"]),
                "kind": f["kind"],
                "severity": f["severity"],
                "severity_rank": _SEVERITY_RANK[f["severity"]],
                "title": _text(f["title"]),
                "n_samples": len(f["sample_ids"]),
                "evidence": format_evidence(f["evidence"]),
                **_finding_link(tables, f),
            }
            for f in ordered[:MAX_FINDINGS]
        ]
        by_severity = [{"severity": s, "count": sum(f["severity"] == s for f in tables.findings)} for s in SEVERITIES]
        return {
            "rows": rows,
            "n_findings": len(tables.findings),
            "n_hidden": max(len(ordered) - MAX_FINDINGS, 0),
            "by_severity": by_severity,
            "by_kind": _counts(pd.Series([f["kind"] for f in tables.findings], dtype=object)),
        }


def _first_finding(tables: AuditTables, kind: str) -> dict[str, Any] | None:
    return next((f for f in tables.findings if f["kind"] == kind), None)


def _finding_link(tables: AuditTables, finding: Mapping[str, Any] | None) -> dict[str, str | None]:
    """`{fiftyone_view, fiftyone_url}` of a finding the FiftyOne push saved a view for (None when there is none).

    The URL is only given for an App on localhost (the address `auditor app` serves): a report must not
    link to hosts it names itself.
    """
    view = finding.get("fiftyone_view") if finding else None
    if not view:
        return {"fiftyone_view": None, "fiftyone_url": None}
    app_url = str((tables.manifest.get("fiftyone") or {}).get("app_url") or "")  # written by the FiftyOne push
    url = f"{app_url}?view={quote(str(view), safe='')}" if app_url.startswith("http://localhost:") else None
    return {"fiftyone_view": _text(view), "fiftyone_url": url}


class DuplicatesSection(Section):
    """Thumbnail strips of duplicate and cross-split leakage groups; leakage and label conflicts first."""

    name: ClassVar[str] = "duplicates"
    title: ClassVar[str] = "Duplicates and leakage"
    template: ClassVar[str] = "sections/duplicates.html.j2"

    def build(self, tables: AuditTables) -> dict[str, Any]:
        groups = _duplicate_groups(tables)
        groups.sort(key=lambda g: (not g["cross_split"], not g["conflicting_labels"], -g["n_members"], g["key"]))
        wanted = {m for g in groups[:MAX_DUPLICATE_GROUPS] for m in g["sample_ids"][:MAX_GROUP_MEMBERS]}
        samples = tables.samples
        by_id = {str(r[SAMPLE_ID]): r for r in _records(samples[samples[SAMPLE_ID].astype(str).isin(wanted)])}
        shown = []
        for group in groups[:MAX_DUPLICATE_GROUPS]:
            members = [m for m in group["sample_ids"][:MAX_GROUP_MEMBERS] if m in by_id]
            cards = [_sample_card(by_id[m], STRIP_THUMBNAIL_SIZE) for m in members]
            shown.append(
                {
                    "kind": group["kind"],
                    "title": group["title"],
                    "match": group["match"],
                    "cross_split": group["cross_split"],
                    "conflicting_labels": group["conflicting_labels"],
                    "n_members": group["n_members"],
                    "members": cards,
                    "n_hidden": max(group["n_members"] - len(cards), 0),
                    "fiftyone_view": group["fiftyone_view"],
                    "fiftyone_url": group["fiftyone_url"],
                }
            )
        return {
            "groups": shown,
            "n_groups": len(groups),
            "n_leakage_groups": sum(g["cross_split"] for g in groups),
            "n_hidden": max(len(groups) - MAX_DUPLICATE_GROUPS, 0),
            "cross_split_pairs": to_plain(tables.metric("leakage.cross_split_pairs")),
        }


class UnreadableSection(Section):
    """Files that could not be read or were invalid, with the stage that hit them and the error."""

    name: ClassVar[str] = "unreadable"
    title: ClassVar[str] = "Unreadable files"
    template: ClassVar[str] = "sections/unreadable.html.j2"

    def build(self, tables: AuditTables) -> dict[str, Any]:
        errors = tables.errors
        if len(errors):
            errors = errors.sort_values([c for c in ("stage", FILEPATH, SAMPLE_ID) if c in errors], kind="mergesort")
        rows = [
            {
                "sample_id": _text(row.get(SAMPLE_ID)),
                "filepath": _text(row.get(FILEPATH), limit=400),
                "stage": _text(row.get("stage")),
                "error": _text(row.get("error"), limit=400),
            }
            for row in _records(errors.head(MAX_ERROR_ROWS))
        ]
        return {"rows": rows, "n_errors": len(errors), "n_hidden": max(len(errors) - MAX_ERROR_ROWS, 0)}


class MethodologySection(Section):
    """How the scores were computed and what they cannot tell; the text lives in the template."""

    name: ClassVar[str] = "methodology"
    title: ClassVar[str] = "Methodology and limitations"
    template: ClassVar[str] = "sections/methodology.html.j2"

    def build(self, tables: AuditTables) -> dict[str, Any]:
        settings = tables.manifest.get("settings") or {}
        return {
            "model": _text(settings.get("model", "auto")),
            "folds": to_plain(settings.get("folds")),
            "epochs": to_plain(settings.get("epochs")),
            "checkpoints": to_plain(settings.get("checkpoints")),
            "seed": to_plain(settings.get("seed")),
        }


class ReproducibilitySection(Section):
    """Everything needed to re-run the audit: versions, settings, data fingerprint, seed, stages."""

    name: ClassVar[str] = "reproducibility"
    title: ClassVar[str] = "Reproducibility"
    template: ClassVar[str] = "sections/reproducibility.html.j2"

    def build(self, tables: AuditTables) -> dict[str, Any]:
        manifest = tables.manifest
        settings = manifest.get("settings") or {}
        versions = manifest.get("versions") or {}
        return {
            "run_name": _text(manifest.get("run_name", "")),
            "tool_version": _text(manifest.get("tool_version", "")),
            "created": _text(manifest.get("created", "")),
            "data_fingerprint": _text(manifest.get("data_fingerprint", ""), limit=200),
            "seed": to_plain(settings.get("seed")),
            "stages_done": [_text(s) for s in manifest.get("stages_done") or []],
            "settings": [{"key": _text(k), "value": _format_value(settings[k])} for k in sorted(settings)],
            "versions": [{"package": _text(k), "version": _text(versions[k])} for k in sorted(versions)],
        }


MAX_SLICE_ROWS = 30
MAX_GROUP_ROWS = 40
MAX_CLUSTER_CARDS = 15
MAX_EXEMPLARS = 7
MAX_ISSUE_THUMBNAILS = 12
MAX_TARGET_EXAMPLES = 8
_FLAG_NAMES = {"label_issue": "likely mislabels", "misclassified": "out-of-fold errors", "harmful": "harmful"}


class TargetsSection(Section):
    """Harm rankings of several influence targets side by side: rank correlations and target-specific samples."""

    name: ClassVar[str] = "targets"
    title: ClassVar[str] = "Influence by target"
    template: ClassVar[str] = "sections/targets.html.j2"

    def build(self, tables: AuditTables) -> dict[str, Any]:
        details = tables.analysis.get("targets") or {}
        # JSON sorts object keys: put the validation target first again, the others by name
        targets = dict(sorted((details.get("targets") or {}).items(), key=lambda kv: (kv[0] != "val", kv[0])))
        harmful = tables.metric("targets.by_target", {}) or {}
        target_rows = [
            {
                "name": _text(name),
                "column": _text(column),
                "n_harmful": to_plain((harmful.get(name) or {}).get("harmful", {}).get("count")),
            }
            for name, column in targets.items()
        ]
        pairs = [
            {
                "first": _text(row.get("first")),
                "second": _text(row.get("second")),
                "n": to_plain(row.get("n")),
                "spearman": to_plain(row.get("spearman")),
                "ci_low": to_plain(row.get("ci_low")),
                "ci_high": to_plain(row.get("ci_high")),
                "top_k": to_plain(row.get("top_k")),
                "top_overlap": to_plain(row.get("top_overlap")),
            }
            for row in details.get("correlations") or []
        ]
        wanted = {
            str(s) for row in details.get("specific") or [] for s in (row.get("sample_ids") or [])[:MAX_TARGET_EXAMPLES]
        }
        cards = _cards_by_id(tables, wanted, STRIP_THUMBNAIL_SIZE)
        divergence = {f["finding_id"]: f for f in tables.findings if f["kind"] == "target_divergence"}
        specific = [
            {
                "target": _text(row.get("target")),
                "other": _text(row.get("other")),
                "top_k": to_plain(row.get("top_k")),
                "n": len(row.get("sample_ids") or []),
                "members": [cards[s] for s in (row.get("sample_ids") or [])[:MAX_TARGET_EXAMPLES] if s in cards],
                **_finding_link(tables, divergence.get(f"target-specific-{row.get('target')}-vs-{row.get('other')}")),
            }
            for row in details.get("specific") or []
            if row.get("sample_ids")
        ]
        return {
            "targets": target_rows,
            "pairs": pairs,
            "specific": specific,
            "rankings": self._rankings(tables, targets) if len(targets) > 1 else [],
        }

    @staticmethod
    def _rankings(tables: AuditTables, targets: Mapping[str, Any]) -> list[dict[str, Any]]:
        """Per extra target: the most harmful and the most helpful training samples by its harm column."""
        samples = _training_samples(tables.samples)
        harmful_findings = {f["finding_id"]: f for f in tables.findings if f["kind"] == "harmful"}
        rankings = []
        for name, column in targets.items():
            if name == "val" or str(column) not in samples:  # the validation target has its own section
                continue
            column = str(column)
            positive = samples[pd.to_numeric(samples[column], errors="coerce") > 0]
            top = _records(_rank(positive, column).head(MAX_TARGET_EXAMPLES))
            bottom = _records(_rank_helpful(samples, column).head(MAX_TARGET_EXAMPLES))
            rankings.append(
                {
                    "name": _text(name),
                    "column": _text(column),
                    "harmful": [
                        {**_sample_card(row, STRIP_THUMBNAIL_SIZE), "score": to_plain(row[column])} for row in top
                    ],
                    "helpful": [
                        {**_sample_card(row, STRIP_THUMBNAIL_SIZE), "score": to_plain(row[column])} for row in bottom
                    ],
                    **_finding_link(tables, harmful_findings.get("harmful" if name == "val" else f"harmful-{name}")),
                }
            )
        return rankings


class SlicesSection(Section):
    """Significant slices, accuracy and loss of every metadata group with intervals, and label-dependent metadata."""

    name: ClassVar[str] = "slices"
    title: ClassVar[str] = "Slices and groups"
    template: ClassVar[str] = "sections/slices.html.j2"

    def build(self, tables: AuditTables) -> dict[str, Any]:
        slices = [f for f in tables.findings if f["kind"] == "slice"]
        slice_rows = [
            {
                "finding_id": _text(f["finding_id"]),
                "slice": _text(
                    f["evidence"].get("slice") or f"{f['evidence'].get('column')}={f['evidence'].get('value')}"
                ),
                "kind": _text(f["evidence"].get("slice_kind") or "value"),
                "flag": _text(_FLAG_NAMES.get(str(f["evidence"].get("flag")), f["evidence"].get("flag"))),
                "n": to_plain(f["evidence"].get("n")),
                "n_flagged": to_plain(f["evidence"].get("n_flagged")),
                "rate": to_plain(f["evidence"].get("rate")),
                "rate_ci": wilson_interval(f["evidence"].get("n_flagged"), f["evidence"].get("n")),
                "reference_rate": to_plain(f["evidence"].get("reference_rate", f["evidence"].get("rest_rate"))),
                "lift": to_plain(f["evidence"].get("lift")),
                "q_value": to_plain(f["evidence"].get("q_value")),
                **_finding_link(tables, f),
            }
            for f in slices[:MAX_SLICE_ROWS]
        ]
        groups = [
            {
                "column": _text(g.get("column")),
                "value": _text(g.get("value")),
                "n": to_plain(g.get("n")),
                "accuracy": to_plain(g.get("accuracy")),
                "accuracy_ci": [to_plain(g.get("accuracy_ci_low")), to_plain(g.get("accuracy_ci_high"))],
                "accuracy_gap": to_plain(g.get("accuracy_gap")),
                "gap_ci": [to_plain(g.get("accuracy_gap_ci_low")), to_plain(g.get("accuracy_gap_ci_high"))],
                "loss": to_plain(g.get("loss")),
                "loss_ci": [to_plain(g.get("loss_ci_low")), to_plain(g.get("loss_ci_high"))],
                "worse": _is_number(g.get("accuracy_gap_ci_low")) and float(g["accuracy_gap_ci_low"]) > 0,
            }
            for g in (tables.analysis.get("groups") or [])[:MAX_GROUP_ROWS]
        ]
        spurious = [
            {
                "column": _text(c.get("column")),
                "cramers_v": to_plain(c.get("cramers_v")),
                "p_value": to_plain(c.get("p_value")),
                "significant": bool(c.get("significant")),
                "cells": [
                    f"{_text(cell.get('value'), limit=40)} ↔ {_text(cell.get('label'), limit=40)}"
                    for cell in (c.get("over_represented") or [])[:3]
                ],
            }
            for c in tables.analysis.get("spurious_correlations") or []
        ]
        return {
            "slices": slice_rows,
            "n_slices": len(slices),
            "n_tested": to_plain((tables.analysis.get("slices") or {}).get("tested")),
            "groups": groups,
            "n_groups": len(tables.analysis.get("groups") or []),
            "spurious": spurious,
        }


def wilson_interval(successes: Any, n: Any, z: float = 1.959964) -> list[float | None]:
    """95% Wilson score interval of the proportion `successes / n`; `[None, None]` when not computable.

    Wilson rather than the normal approximation: slices are often small and their rates near 0 or 1.
    """
    if not (_is_number(successes) and _is_number(n)) or float(n) <= 0 or not 0 <= float(successes) <= float(n):
        return [None, None]
    k, total = float(successes), float(n)
    p = k / total
    centre = (p + z * z / (2 * total)) / (1 + z * z / total)
    half = z * math.sqrt(p * (1 - p) / total + z * z / (4 * total * total)) / (1 + z * z / total)
    return [max(centre - half, 0.0), min(centre + half, 1.0)]


class ClustersSection(Section):
    """Clusters the model underperforms on, and clusters of flagged samples, with exemplar thumbnails."""

    name: ClassVar[str] = "clusters"
    title: ClassVar[str] = "Clusters"
    template: ClassVar[str] = "sections/clusters.html.j2"

    def build(self, tables: AuditTables) -> dict[str, Any]:
        clusters = [f for f in tables.findings if f["kind"] == "cluster"][:MAX_CLUSTER_CARDS]
        wanted = {str(s) for f in clusters for s in (f["evidence"].get("exemplars") or [])[:MAX_EXEMPLARS]}
        cards = _cards_by_id(tables, wanted, STRIP_THUMBNAIL_SIZE)
        shown = []
        for finding in clusters:
            evidence = finding["evidence"]
            metadata = [
                {
                    "text": f"{_text(m.get('column'))}={_text(m.get('value'), limit=40)}",
                    "share": to_plain(m.get("share")),
                    "overall_share": to_plain(m.get("overall_share")),
                }
                for m in (evidence.get("metadata") or [])[:4]
            ]
            shown.append(
                {
                    "finding_id": _text(finding["finding_id"]),
                    "title": _text(finding["title"], limit=300),
                    "severity": finding["severity"],
                    "space": _text(evidence.get("space")),
                    "n": to_plain(evidence.get("n")),
                    "error_rate": to_plain(evidence.get("error_rate")),
                    "rest_error_rate": to_plain(evidence.get("rest_error_rate")),
                    "q_value": to_plain(evidence.get("q_value")),
                    "underperforming": bool(evidence.get("underperforming")),
                    "classes": [
                        {"label": _text(c.get("label"), limit=40), "share": to_plain(c.get("share"))}
                        for c in evidence.get("classes") or []
                    ],
                    "predicted": [
                        {"label": _text(c.get("label"), limit=40), "share": to_plain(c.get("share"))}
                        for c in evidence.get("predicted") or []
                    ],
                    "metadata": metadata,
                    "exemplars": [cards[s] for s in (evidence.get("exemplars") or [])[:MAX_EXEMPLARS] if s in cards],
                    **_finding_link(tables, finding),
                }
            )
        spaces = tables.analysis.get("clusters") or {}
        return {
            "clusters": shown,
            "n_clusters": {str(space): len(rows or []) for space, rows in spaces.items()},
            "n_underperforming": to_plain(tables.metric("clusters.underperforming.count")),
        }


class DriversSection(Section):
    """Rank correlations of influence with image properties (with intervals), and the effect of the class."""

    name: ClassVar[str] = "drivers"
    title: ClassVar[str] = "What drives influence"
    template: ClassVar[str] = "sections/drivers.html.j2"

    def build(self, tables: AuditTables) -> dict[str, Any]:
        rows = []
        for row in tables.analysis.get("drivers") or []:
            rho, low, high = (to_plain(row.get(k)) for k in ("spearman", "ci_low", "ci_high"))
            if rho is None:
                continue
            low = rho if low is None else low
            high = rho if high is None else high
            rows.append(
                {
                    "score": _text(row.get("score")),
                    "property": _text(row.get("property")),
                    "n": to_plain(row.get("n")),
                    "spearman": rho,
                    "ci_low": low,
                    "ci_high": high,
                    "within_class": to_plain(row.get("within_class_spearman")),
                    "within_class_ci": [
                        to_plain(row.get("within_class_ci_low")),
                        to_plain(row.get("within_class_ci_high")),
                    ],
                    "significant": bool(row.get("significant")),
                    # positions on a -1..+1 axis, in percent of the bar's width
                    "bar": {
                        "left": round((low + 1) * 50, 2),
                        "width": round(max(high - low, 0.0) * 50, 2),
                        "point": round((rho + 1) * 50, 2),
                    },
                }
            )
        effects = [
            {
                "score": _text(e.get("score")),
                "eta_squared": to_plain(e.get("eta_squared")),
                "p_value": to_plain(e.get("p_value")),
                "n_classes": to_plain(e.get("n_classes")),
                "top_classes": [
                    f"{_text(c.get('label'), limit=40)} ({_format_value(c.get('median'))})"
                    for c in e.get("top_classes") or []
                ],
            }
            for e in tables.analysis.get("class_effects") or []
        ]
        return {"rows": rows, "class_effects": effects}


class ImageIssuesSection(Section):
    """Blank, dark, light, oddly sized and grey-in-colour images, with the rule that flagged them."""

    name: ClassVar[str] = "image_issues"
    title: ClassVar[str] = "Image properties"
    template: ClassVar[str] = "sections/image_issues.html.j2"

    def build(self, tables: AuditTables) -> dict[str, Any]:
        summary = tables.analysis.get("image_issues") or {}
        findings = {
            str(f["evidence"].get("issue")): f
            for f in tables.findings
            if f["kind"] == "image_issue" and f["evidence"].get("issue")
        }
        wanted = {s for f in findings.values() for s in f["sample_ids"][:MAX_ISSUE_THUMBNAILS]}
        cards = _cards_by_id(tables, wanted, STRIP_THUMBNAIL_SIZE)
        rows = []
        for issue, info in summary.items():
            finding = findings.get(str(issue))
            members = finding["sample_ids"] if finding else []
            rows.append(
                {
                    "issue": _text(issue),
                    "title": _text(finding["title"]) if finding else "",
                    "count": to_plain(info.get("count")) if isinstance(info, Mapping) else None,
                    "active": bool(info.get("active", True)) if isinstance(info, Mapping) else True,
                    "rule": _text(info.get("rule"), limit=300) if isinstance(info, Mapping) else "",
                    "members": [cards[s] for s in members[:MAX_ISSUE_THUMBNAILS] if s in cards],
                    "n_hidden": max(len(members) - MAX_ISSUE_THUMBNAILS, 0),
                    **_finding_link(tables, finding),
                }
            )
        return {"rows": rows, "n_flagged": to_plain(tables.metric("issues.image_issue.flagged"))}


def _cards_by_id(tables: AuditTables, sample_ids: set[str], thumbnail_size: int) -> dict[str, dict[str, Any]]:
    """Sample cards (identity and thumbnail) of `sample_ids` that are in the samples table."""
    samples = tables.samples
    chosen = samples[samples[SAMPLE_ID].astype(str).isin(sample_ids)]
    return {str(row[SAMPLE_ID]): _sample_card(row, thumbnail_size) for row in _records(chosen)}


def _is_number(value: Any) -> bool:
    value = to_plain(value)
    return isinstance(value, int | float) and not isinstance(value, bool)


MAX_FEWSHOT_TASKS = 5
MAX_FEWSHOT_IMAGES = 24


class FewShotSection(Section):
    """Few-shot runs only: the most harmful meta-training tasks as support/query strips, the most harmful images,
    and the closed-form removal edit against retraining when the run was verified."""

    name: ClassVar[str] = "fewshot"
    title: ClassVar[str] = "Few-shot tasks"
    template: ClassVar[str] = "sections/fewshot.html.j2"

    def applies(self, tables: AuditTables) -> bool:
        return isinstance(tables.metric("fewshot"), Mapping)

    def build(self, tables: AuditTables) -> dict[str, Any]:
        details = tables.analysis.get("fewshot") or {}
        raw_tasks = list(details.get("top_tasks") or [])[:MAX_FEWSHOT_TASKS]
        wanted = {str(s) for task in raw_tasks for s in [*task["support_ids"], *task["query_ids"]]}
        cards = _cards_by_id(tables, wanted, STRIP_THUMBNAIL_SIZE)
        tasks = [
            {
                "task_id": _text(task["task_id"]),
                "score": to_plain(task["score"]),
                "classes": [_text(c) for c in task["classes"]],
                "support": [cards[str(s)] for s in task["support_ids"] if str(s) in cards],
                "query": [cards[str(s)] for s in task["query_ids"] if str(s) in cards],
            }
            for task in raw_tasks
        ]
        samples = tables.samples
        images: list[dict[str, Any]] = []
        if HARM_SCORE in samples:
            ranked = _rank(samples[samples[HARM_SCORE] > 0], HARM_SCORE).head(MAX_FEWSHOT_IMAGES)
            images = [
                {**_sample_card(row, STRIP_THUMBNAIL_SIZE), "score": to_plain(row[HARM_SCORE])}
                for row in _records(ranked)
            ]
        return {
            "learner": _text(details.get("learner", "")),
            "ways": to_plain(tables.metric("fewshot.ways")),
            "shots": to_plain(tables.metric("fewshot.shots")),
            "queries": to_plain(tables.metric("fewshot.queries")),
            "accuracy": to_plain(tables.metric("fewshot.accuracy")),
            "n_tasks": to_plain(tables.metric("fewshot.n_train_tasks")),
            "tasks": tasks,
            "images": images,
            "verify": _edit_vs_retrain(tables),
        }


def _edit_vs_retrain(tables: AuditTables) -> dict[str, Any] | None:
    """Accuracy and seconds of the edit and of retraining, with bar widths relative to the larger of each pair."""
    node = tables.metric("fewshot.edit_vs_retrain")
    if not isinstance(node, Mapping):
        return None
    values = {key: to_plain(node.get(key)) for key in node}
    longest = max(values.get("edit_seconds") or 0.0, values.get("retrain_seconds") or 0.0) or 1.0
    rows = [
        {
            "name": name,
            "accuracy": values.get(f"{key}_accuracy"),
            "seconds": values.get(f"{key}_seconds"),
            "width": round(100 * (values.get(f"{key}_seconds") or 0.0) / longest, 1),
        }
        for name, key in (("closed-form edit", "edit"), ("retraining", "retrain"))
    ]
    return {
        "rows": rows,
        "accuracy_gap": values.get("accuracy_gap"),
        "speedup": values.get("speedup"),
        "n_removed": to_plain(tables.metric("fewshot.removed.n_tasks")),
        "original_accuracy": to_plain(tables.metric("fewshot.accuracy")),
    }


SECTIONS: tuple[type[Section], ...] = (
    GateSection,
    OverviewSection,
    DemoCheckSection,
    LabelIssuesSection,
    HarmfulSection,
    InfluenceCheckSection,
    FewShotSection,
    TargetsSection,
    SlicesSection,
    ClustersSection,
    DriversSection,
    FindingsSection,
    DuplicatesSection,
    ImageIssuesSection,
    UnreadableSection,
    MethodologySection,
    ReproducibilitySection,
)
"""Every section in report order. Add a section by writing its class and template and listing it here."""


def build_sections(tables: AuditTables, sections: Iterable[type[Section]] = SECTIONS) -> list[dict[str, Any]]:
    """`[{name, title, template, context}]` for each applicable section, in order."""
    built = []
    for section_cls in sections:
        section = section_cls()
        if section.applies(tables):
            built.append(
                {
                    "name": section.name,
                    "title": section.title,
                    "template": section.template,
                    "context": section.build(tables),
                }
            )
    return built


def sort_findings(findings: list[dict[str, Any]]) -> list[dict[str, Any]]:
    """Findings most severe first; within a severity, the analysis stage's own order is kept."""
    return sorted(findings, key=lambda f: _SEVERITY_RANK.get(f["severity"], len(SEVERITIES)))


def format_evidence(evidence: Mapping[str, Any]) -> list[dict[str, str]]:
    """The few most telling flat `evidence` entries as `{key, value}` text pairs (long lists summarised)."""
    shown = {k: v for k, v in evidence.items() if not _is_nested(v)}
    keys = [k for k in _EVIDENCE_PRIORITY if k in shown]
    keys += sorted((k for k in shown if k not in _EVIDENCE_PRIORITY), key=lambda k: (k == "method", k))
    return [{"key": _text(k), "value": _format_value(evidence[k])} for k in keys[:MAX_EVIDENCE_ITEMS]]


def _is_nested(value: Any) -> bool:
    """Mappings and lists of mappings: per-sample detail that belongs in findings.json, not in a table cell."""
    return isinstance(value, Mapping) or (
        isinstance(value, list | tuple) and any(isinstance(v, Mapping) for v in value)
    )


def _format_value(value: Any) -> str:
    """Short human text for one value: 3 significant digits for floats, lists and dicts shortened."""
    value = to_plain(value)
    if value is None:
        return "—"
    if isinstance(value, bool):
        return "yes" if value else "no"
    if isinstance(value, float):
        return f"{value:.3g}"
    if isinstance(value, list):
        if len(value) > 4 or any(isinstance(v, list | dict) for v in value):
            return f"[{len(value)} items]"
        return ", ".join(_format_value(v) for v in value)
    if isinstance(value, dict):
        return f"{{{len(value)} entries}}"
    return _text(value)


def _text(value: Any, *, limit: int = MAX_TEXT) -> str:
    """`value` as text, shortened to `limit` characters with an ellipsis; None and NaN become ''."""
    value = to_plain(value)
    if value is None:
        return ""
    text = str(value)
    return text if len(text) <= limit else text[: limit - 1] + "…"


def _ordered_splits(column: pd.Series) -> list[str]:
    """Known splits in train/val/test order, then any others alphabetically."""
    present = {str(s) for s in column.dropna().unique()}
    return [s for s in SPLITS if s in present] + sorted(present - set(SPLITS))


def _rank(frame: pd.DataFrame, score: str) -> pd.DataFrame:
    """Rows with a finite `score`, highest first; ties broken by sample_id so the order is stable."""
    finite = frame[pd.to_numeric(frame[score], errors="coerce").notna()]
    return finite.sort_values([score, SAMPLE_ID], ascending=[False, True], kind="mergesort")


def _records(frame: pd.DataFrame) -> list[dict[str, Any]]:
    return [{str(key): value for key, value in row.items()} for row in frame.to_dict(orient="records")]


def _sample_card(row: Mapping[str, Any], thumbnail_size: int) -> dict[str, Any]:
    """Identity of one sample as shown under a thumbnail."""
    relpath = row.get(RELPATH)
    filepath = _text(row.get(FILEPATH), limit=400)
    return {
        "sample_id": _text(row.get(SAMPLE_ID)),
        "label": _text(row.get(LABEL)),
        "split": _text(row.get(SPLIT)),
        "relpath": _text(relpath if isinstance(relpath, str) and relpath else filepath, limit=400),
        "thumbnail": load_thumbnail(str(row.get(FILEPATH)), size=thumbnail_size),
    }


def _counts(column: pd.Series) -> list[dict[str, Any]]:
    """`[{value, count}]`, most frequent first, ties alphabetical."""
    counts = column.dropna().astype(str).value_counts()
    return [{"value": _text(v), "count": int(counts[v])} for v in sorted(counts.index, key=lambda v: (-counts[v], v))]


def _metadata_coverage(samples: pd.DataFrame) -> list[dict[str, Any]]:
    """Per `meta_*` column: share of samples with a value, number of distinct values, most common values."""
    rows = []
    for column in meta_columns(samples):
        values = samples[column]
        present = values.dropna()
        if present.dtype == object or pd.api.types.is_string_dtype(present):
            present = present[present.astype(str).str.len() > 0]
        top = _counts(present)[:5]
        rows.append(
            {
                "column": _text(column),
                "coverage": len(present) / max(len(samples), 1),
                "n_values": int(present.astype(str).nunique()),
                "top": [{"value": _text(t["value"], limit=60), "count": t["count"]} for t in top],
            }
        )
    return rows


def _image_summary(samples: pd.DataFrame) -> dict[str, Any]:
    """Width/height range, the most common sizes, colour modes and mean brightness."""
    if WIDTH not in samples or HEIGHT not in samples:
        return {"available": False, "sizes": [], "modes": [], "width": None, "height": None, "brightness": None}
    sized = samples[[WIDTH, HEIGHT]].dropna()
    sizes = (sized[WIDTH].astype(int).astype(str) + " × " + sized[HEIGHT].astype(int).astype(str)).astype(object)
    brightness = samples[BRIGHTNESS].dropna() if BRIGHTNESS in samples else pd.Series(dtype=float)
    return {
        "available": len(sized) > 0,
        "sizes": _counts(sizes)[:8],
        "n_sizes": int(sizes.nunique()),
        "modes": _counts(samples[MODE])[:6] if MODE in samples else [],
        "width": _range(sized[WIDTH]),
        "height": _range(sized[HEIGHT]),
        "brightness": _range(brightness),
    }


def _range(values: pd.Series) -> dict[str, float | None] | None:
    if not len(values):
        return None
    numbers = pd.to_numeric(values, errors="coerce").dropna()
    if not len(numbers):
        return None
    mean = float(numbers.mean())
    return {
        "min": to_plain(float(numbers.min())),
        "mean": mean if math.isfinite(mean) else None,
        "max": to_plain(float(numbers.max())),
    }


def _duplicate_groups(tables: AuditTables) -> list[dict[str, Any]]:
    """Groups from duplicate/leakage findings; from the `duplicate_group` column when no such finding exists."""
    groups = []
    for finding in tables.findings:
        if finding["kind"] not in ("duplicate", "leakage"):
            continue
        evidence = finding["evidence"]
        groups.append(
            {
                "key": finding["finding_id"],
                "kind": finding["kind"],
                "title": _text(finding["title"]),
                "match": _text(evidence.get("match", "")),
                "cross_split": bool(evidence.get("cross_split", finding["kind"] == "leakage")),
                "conflicting_labels": bool(evidence.get("conflicting_labels", False)),
                "sample_ids": finding["sample_ids"],
                "n_members": len(finding["sample_ids"]),
                **_finding_link(tables, finding),
            }
        )
    if groups or DUPLICATE_GROUP not in tables.samples:
        return groups
    samples = tables.samples[tables.samples[DUPLICATE_GROUP].notna()]
    for key, members in samples.groupby(samples[DUPLICATE_GROUP].astype(str), sort=True):
        if len(members) < 2:
            continue
        groups.append(
            {
                "key": str(key),
                "kind": "duplicate",
                "title": f"Duplicate group {key}",
                "match": "",
                "cross_split": members[SPLIT].nunique() > 1,
                "conflicting_labels": members[LABEL].nunique() > 1,
                "sample_ids": sorted(members[SAMPLE_ID].astype(str)),
                "n_members": len(members),
                **_finding_link(tables, None),
            }
        )
    return groups
