"""The adapter's names, links and options, checked without a database (the adapter imports fiftyone lazily)."""

from __future__ import annotations

import re

import pytest

from auditor.config import AuditConfig
from auditor.errors import ConfigError
from auditor.integrations.fiftyone import (
    app_url,
    compute_dataset_name,
    compute_finding_tag,
    compute_run_key,
    compute_view_name,
)


@pytest.mark.parametrize(
    ("run_name", "key"),
    [
        ("demo", "auditor_demo"),
        ("My Run-2", "auditor_my_run_2"),
        ("ünï code!", "auditor_n_code"),
        ("2024", "auditor_2024"),
    ],
)
def test_run_key_is_a_valid_identifier(run_name: str, key: str) -> None:
    assert compute_run_key(run_name) == key
    assert key.isidentifier()


@pytest.mark.parametrize("finding_id", ["label-issues", "dup-exact-1e049d8f08dc", "slice-ab12", "harmful"])
def test_view_names_are_their_own_slugs(finding_id: str) -> None:
    name = compute_view_name(compute_run_key("My Run"), finding_id)
    assert re.fullmatch(r"[a-z0-9]+(-[a-z0-9]+)*", name), name
    assert name == f"auditor-my-run-{finding_id}"


def test_finding_tags_are_namespaced() -> None:
    assert compute_finding_tag({"kind": "label_issue", "finding_id": "label-issues"}) == "audit:label_issue"
    assert compute_finding_tag({"kind": "leakage", "finding_id": "dup-exact-1"}) == "audit:leakage"
    assert compute_finding_tag({"kind": "slice", "finding_id": "slice-0a1b2c"}) == "audit:slice:0a1b2c"


def test_app_links_quote_names() -> None:
    assert compute_dataset_name("demo") == "auditor-demo"
    assert app_url("auditor-demo", view_slug="auditor-demo-harmful") == (
        "http://localhost:5151/datasets/auditor-demo?view=auditor-demo-harmful"
    )
    assert app_url("my data/set", port=5252) == "http://localhost:5252/datasets/my%20data%2Fset"


def test_fiftyone_source_options() -> None:
    config = AuditConfig(data="ds", fiftyone_dataset="ds", split_field="split", embeddings_field="emb")
    assert config.run_name == "ds"
    assert config.result_settings()["fiftyone_dataset"] == "ds"
    plain = AuditConfig(data="/tmp/images")
    assert "fiftyone_dataset" not in plain.result_settings(), "runs made before these options still resume"
    with pytest.raises(ConfigError, match="--split-field and --embeddings-field need --fiftyone"):
        AuditConfig(data="/tmp/images", split_field="split")
    with pytest.raises(ConfigError, match="cannot be combined with --fiftyone"):
        AuditConfig(data="ds", fiftyone_dataset="ds", format="csv")
    with pytest.raises(ConfigError, match="DATA must be omitted or equal"):
        AuditConfig(data="other", fiftyone_dataset="ds")
    with pytest.raises(ConfigError, match="--label-field must be a FiftyOne field name"):
        AuditConfig(data="ds", fiftyone_dataset="ds", label_field="bad name")
