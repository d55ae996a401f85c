"""Target specs: parsing, row selection and the errors a user can cause."""

from __future__ import annotations

import pandas as pd
import pytest

from auditor.errors import ConfigError, DataError
from auditor.influence.targets import parse_target, slugify, target_rows


@pytest.fixture
def samples() -> pd.DataFrame:
    return pd.DataFrame(
        {
            "sample_id": [f"s{i}" for i in range(8)],
            "relpath": [f"x/{i}.png" for i in range(8)],
            "split": ["train", "val", "val", "val", "train", "val", "val", "test"],
            "label": ["cat", "cat", "dog", "car", "car", "bus", "dog", "cat"],
            "meta_scanner": ["a", "a", "b", "b", "a", "b", "a", "b"],
        }
    )


def test_parse_forms() -> None:
    assert parse_target("val").kind == "val"
    group = parse_target("group:animals=cat,dog")
    assert (group.name, group.kind, group.argument, group.column) == ("animals", "group", "cat,dog", "harm_animals")
    assert parse_target("meta:scanner=b").column == "harm_scanner_b"
    assert parse_target("class:cat").column == "harm_class_cat"
    for bad in ("group:animals", "colour:red", "meta:=x", "nonsense"):
        with pytest.raises(ConfigError):
            parse_target(bad)


def test_rows_are_validation_members(samples: pd.DataFrame) -> None:
    assert target_rows(parse_target("group:animals=cat,dog"), samples).tolist() == [1, 2, 6]
    assert target_rows(parse_target("group:vehicles=car,bus"), samples).tolist() == [3, 5]
    assert target_rows(parse_target("meta:scanner=b"), samples).tolist() == [2, 3, 5]
    assert target_rows(parse_target("meta:meta_scanner=a"), samples).tolist() == [1, 6]
    assert target_rows(parse_target("sample:x/7.png"), samples).tolist() == [7]
    assert target_rows(parse_target("val"), samples).tolist() == [1, 2, 3, 5, 6]


def test_unknown_names_are_data_errors(samples: pd.DataFrame) -> None:
    with pytest.raises(DataError, match=r"unknown class.*'horse'.*known classes: bus, car, cat, dog"):
        target_rows(parse_target("group:animals=cat,horse"), samples)
    with pytest.raises(DataError, match="no metadata column 'meta_site'"):
        target_rows(parse_target("meta:site=x"), samples)
    with pytest.raises(DataError, match="no sample"):
        target_rows(parse_target("sample:nope.png"), samples)


def test_slugify_is_safe() -> None:
    assert slugify("<script>alert(1)</script>") == "script_alert_1_script"
    assert slugify("Ünïcode/names") == "n_code_names"
