"""Report evidence beyond the galleries: label-issue neighbours, helpful samples, per-target rankings, slice
intervals and links to FiftyOne saved views."""

from __future__ import annotations

from html.parser import HTMLParser
from typing import Any

import numpy as np
import pytest
from report_fake_run import FakeRun

from auditor.report.render import render_html
from auditor.report.sections import build_sections, wilson_interval
from auditor.report.tables import load_audit_tables


def _sections(run: FakeRun) -> dict[str, dict[str, Any]]:
    return {s["name"]: s["context"] for s in build_sections(load_audit_tables(run.store))}


class _SectionLinks(HTMLParser):
    """The href of every link, per section id."""

    def __init__(self) -> None:
        super().__init__()
        self.links: dict[str, list[str]] = {}
        self._section = ""

    def handle_starttag(self, tag: str, attrs: list[tuple[str, str | None]]) -> None:
        values = {k: v or "" for k, v in attrs}
        if tag == "section" and "section" in values.get("class", "").split():
            self._section = values["id"]
        if tag == "a" and self._section:
            self.links.setdefault(self._section, []).append(values.get("href", ""))


def test_label_issue_cards_show_their_neighbours_marked_by_label(fake_run: FakeRun) -> None:
    store = fake_run.store
    samples = store.read_table("samples").set_index("sample_id")
    flagged = fake_run.label_issue_order[0]
    given, suggested = samples.at[flagged, "label"], samples.at[flagged, "suggested_label"]
    by_label = {label: sorted(samples.index[samples["label"] == label]) for label in samples["label"].unique()}
    neighbour_ids = [by_label[suggested][0], by_label[suggested][1], by_label[given][-1], "gone"]
    store.write_json(
        "analysis.json",
        {"label_neighbours": {flagged: [{"sample_id": s, "label": "?", "similarity": 0.9} for s in neighbour_ids]}},
    )
    cards = {c["sample_id"]: c for c in _sections(fake_run)["label_issues"]["cards"]}
    card = cards[flagged]
    assert [n["sample_id"] for n in card["neighbours"]] == neighbour_ids[:3]  # an unknown id is left out
    assert [n["agrees"] for n in card["neighbours"]] == ["suggested", "suggested", "given"]
    assert (card["n_neighbours_suggested"], card["n_neighbours_given"]) == (2, 1)
    assert all(n["thumbnail"]["src"].startswith("data:image/png;base64,") for n in card["neighbours"])
    assert all(not c["neighbours"] for s, c in cards.items() if s != flagged)
    html = render_html(store)
    assert html.count("data-neighbour-id=") == 3
    assert "look-alikes: 2 of 3 labelled" in html


def test_helpful_samples_are_the_most_negative_harm_scores(fake_run: FakeRun) -> None:
    samples = fake_run.store.read_table("samples")
    train = samples[(samples["split"] == "train") & (samples["harm_score"] < 0)]
    expected = train.sort_values(["harm_score", "sample_id"])["sample_id"].head(12)
    helpful = _sections(fake_run)["harmful"]["helpful"]
    assert [c["sample_id"] for c in helpful] == expected.tolist()
    assert len(helpful) == 12
    assert {c["split"] for c in helpful} == {"train"}  # held-out samples are not candidates for removal
    assert helpful[0]["score"] == pytest.approx(train["harm_score"].min())
    assert not set(fake_run.harmful_order) & {c["sample_id"] for c in helpful}
    assert "Most helpful samples" in render_html(fake_run.store)


def test_each_target_gets_its_own_harmful_and_helpful_ranking(fake_run: FakeRun) -> None:
    store = fake_run.store
    samples = store.read_table("samples")
    # target "night": s010 is the most harmful, then s020; s015 the most helpful; all else neutral
    # except the test sample s030, which would rank first both ways but is not a training sample
    night = np.zeros(len(samples))
    position = {s: i for i, s in enumerate(samples["sample_id"])}
    night[position["s010"]], night[position["s020"]], night[position["s015"]] = 0.9, 0.4, -0.7
    night[position["s030"]] = 5.0
    night[position["s031"]] = -5.0
    store.write_table("samples", samples.assign(harm_night=night))
    store.write_json("analysis.json", {"targets": {"targets": {"val": "harm_score", "night": "harm_night"}}})
    rankings = {r["name"]: r for r in _sections(fake_run)["targets"]["rankings"]}
    assert list(rankings) == ["night"]  # the validation target is the Harmful samples section
    assert [c["sample_id"] for c in rankings["night"]["harmful"]] == ["s010", "s020"]
    assert [c["sample_id"] for c in rankings["night"]["helpful"]] == ["s015"]
    assert rankings["night"]["harmful"][0]["score"] == pytest.approx(0.9)


@pytest.mark.parametrize(
    ("successes", "n", "low", "high"),
    [(4, 10, 0.16818, 0.68732), (0, 10, 0.0, 0.27753), (10, 10, 0.72247, 1.0), (50, 100, 0.40383, 0.59617)],
)
def test_wilson_interval_matches_published_values(successes: int, n: int, low: float, high: float) -> None:
    assert wilson_interval(successes, n) == pytest.approx([low, high], abs=1e-5)


def test_wilson_interval_is_empty_when_not_computable() -> None:
    assert wilson_interval(None, 10) == [None, None]
    assert wilson_interval(3, 0) == [None, None]
    assert wilson_interval(11, 10) == [None, None]


def test_slice_rows_carry_the_interval_of_their_rate(fake_run: FakeRun) -> None:
    row = _sections(fake_run)["slices"]["slices"][0]
    assert (row["n"], row["n_flagged"]) == (10, 4)
    assert row["rate_ci"] == pytest.approx([0.16818, 0.68732], abs=1e-5)


def test_finding_views_link_to_the_local_app_from_their_sections(fake_run: FakeRun) -> None:
    view_url = "http://localhost:5151/datasets/auditor-run?view=audit-label-issues"
    without_app = _sections(fake_run)["label_issues"]
    assert (without_app["fiftyone_view"], without_app["fiftyone_url"]) == ("audit-label-issues", None)
    fake_run.store.update_manifest(fiftyone={"app_url": "http://localhost:5151/datasets/auditor-run"})
    assert _sections(fake_run)["label_issues"]["fiftyone_url"] == view_url
    links = _SectionLinks()
    links.feed(render_html(fake_run.store))
    assert links.links["label_issues"] == [view_url]
    assert view_url in links.links["findings"]
    fake_run.store.update_manifest(fiftyone={"app_url": "https://example.com/datasets/auditor-run"})
    assert _sections(fake_run)["label_issues"]["fiftyone_url"] is None  # only the local App is linked
