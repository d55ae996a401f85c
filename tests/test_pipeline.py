"""End-to-end audits on a tiny planted dataset: outputs, contract columns, resumption, determinism, refusals."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
import pytest
from PIL import Image

import auditor
from auditor.cli import main
from auditor.errors import RunMismatchError
from auditor.pipeline import Auditor, run_audit
from tests.class_patterns import class_pattern

FAST: dict[str, Any] = {"epochs": 8, "checkpoints": 2, "batch_size": 16, "progress": False, "fiftyone": False}
CONTRACT = [
    "sample_id",
    "filepath",
    "split",
    "label",
    "loss",
    "self_influence",
    "label_issue_score",
    "is_label_issue",
    "suggested_label",
    "harm_score",
]


@pytest.fixture(scope="module")
def planted_folder(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, set[str]]:
    """3 classes x 16 images; two images of class 'a' are filed under 'b' and 'c' (planted flips)."""
    root = tmp_path_factory.mktemp("planted")
    flipped = set()
    names = ["a", "b", "c"]
    for label in range(3):
        for i in range(16):
            folder = names[label]
            if label == 0 and i in (3, 9):
                folder = names[1 + (i == 9)]
                flipped.add(f"{folder}/x{label}_{i:02d}.png")
            path = root / folder / f"x{label}_{i:02d}.png"
            path.parent.mkdir(parents=True, exist_ok=True)
            Image.fromarray(class_pattern(label, i), mode="L").save(path)
    return root, flipped


def test_audit_writes_outputs_and_contract(planted_folder: tuple[Path, set[str]], tmp_path: Path) -> None:
    root, flipped = planted_folder
    result = auditor.audit(str(root), out=str(tmp_path / "run"), **FAST)
    for name in ("index.html", "audit.json", "summary.md", "manifest.json", "findings.json", "errors.parquet"):
        assert (tmp_path / "run" / name).is_file(), name
    samples = result.samples
    assert list(samples.columns[:4]) == ["sample_id", "filepath", "relpath", "split"]
    assert set(CONTRACT) <= set(samples.columns)
    assert len(samples) == 48
    assert samples["sample_id"].is_unique
    assert set(samples["split"]) == {"train", "val"}
    assert samples[["loss", "self_influence", "label_issue_score", "harm_score"]].notna().all().all()
    ranked = samples.sort_values("label_issue_score", ascending=False)["relpath"].head(4).tolist()
    assert flipped <= set(ranked), ranked
    # second opinions on harm (last-layer influence functions, kNN-Shapley): the main model's training rows
    train = (samples["split"] == "train").to_numpy()
    for column in ("if_harm", "if_self_influence", "knn_harm"):
        assert samples.loc[train, column].notna().all(), column
        assert samples.loc[~train, column].isna().all(), column
    assert (samples.loc[train, "if_self_influence"] > 0).all()
    audit_json = json.loads((tmp_path / "run" / "audit.json").read_text())
    assert {"verdict", "statistics", "results", "metrics", "manifest"} <= set(audit_json)
    assert audit_json["metrics"]["dataset"]["n_samples"] == 48


def test_same_seed_gives_identical_scores(planted_folder: tuple[Path, set[str]], tmp_path: Path) -> None:
    root, _ = planted_folder
    a = auditor.audit(str(root), out=str(tmp_path / "a"), **FAST).samples
    b = auditor.audit(str(root), out=str(tmp_path / "b"), **FAST).samples
    columns = ["sample_id", "loss", "self_influence", "label_issue_score", "harm_score", "suggested_label"]
    pd.testing.assert_frame_equal(a[columns], b[columns])
    c = auditor.audit(str(root), out=str(tmp_path / "c"), seed=1, **FAST).samples
    assert not np.array_equal(a["self_influence"].to_numpy(), c["self_influence"].to_numpy())


def test_interrupted_run_resumes_to_the_same_tables(
    planted_folder: tuple[Path, set[str]], tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    root, _ = planted_folder
    reference = auditor.audit(str(root), out=str(tmp_path / "ref"), **FAST).samples

    def killed(self: Auditor) -> None:
        raise KeyboardInterrupt

    monkeypatch.setattr(Auditor, "_analyze", killed)
    with pytest.raises(KeyboardInterrupt):
        auditor.audit(str(root), out=str(tmp_path / "run"), **FAST)
    manifest = json.loads((tmp_path / "run" / "manifest.json").read_text())
    assert manifest["stages_done"] == ["ingest", "train", "score"]
    checkpoint = next((tmp_path / "run" / "model" / "main").glob("*.pt"))
    mtime = checkpoint.stat().st_mtime_ns
    monkeypatch.undo()
    resumed = auditor.audit(str(root), out=str(tmp_path / "run"), **FAST).samples
    assert checkpoint.stat().st_mtime_ns == mtime  # training was not redone
    pd.testing.assert_frame_equal(
        reference.drop(columns=["filepath"]).reset_index(drop=True),
        resumed.drop(columns=["filepath"]).reset_index(drop=True),
    )


def test_other_settings_into_same_run_are_refused_unless_overwrite(
    planted_folder: tuple[Path, set[str]], tmp_path: Path
) -> None:
    root, _ = planted_folder
    out = str(tmp_path / "run")
    auditor.audit(str(root), out=out, **FAST)
    with pytest.raises(RunMismatchError, match="epochs"):
        auditor.audit(str(root), out=out, **{**FAST, "epochs": 9})
    result = auditor.audit(str(root), out=out, overwrite=True, **{**FAST, "epochs": 9})
    assert result.run_dir == Path(out).resolve()


def test_cli_audit_and_report_exit_zero(planted_folder: tuple[Path, set[str]], tmp_path: Path) -> None:
    root, _ = planted_folder
    out = tmp_path / "cli"
    argv = ["audit", str(root), "--out", str(out), "--epochs", "3", "--checkpoints", "2", "--no-fiftyone"]
    assert main(argv) == 0
    (out / "index.html").unlink()
    assert main(["report", str(out)]) == 0
    assert (out / "index.html").is_file()


@pytest.mark.parametrize(
    ("make_input", "expected"),
    [
        (lambda tmp: tmp / "does-not-exist", "does-not-exist"),
        (lambda tmp: (tmp / "empty").mkdir() or tmp / "empty", "empty"),
    ],
)
def test_cli_bad_input_is_one_line_exit_2(
    make_input: object, expected: str, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    data = make_input(tmp_path)  # type: ignore[operator]
    out = tmp_path / "out"
    assert main(["-q", "audit", str(data), "--out", str(out), "--no-fiftyone"]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1
    assert err[0].startswith("auditor: error:")
    assert expected in err[0]
    assert "Traceback" not in "\n".join(err)
    assert not out.exists()  # no half-made run directory


def test_cli_single_image_class_and_unknown_format(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    root = tmp_path / "data"
    for label, n in (("a", 4), ("b", 1)):
        for i in range(n):
            path = root / label / f"{i}.png"
            path.parent.mkdir(parents=True, exist_ok=True)
            Image.fromarray(class_pattern(0, i + (label == "b") * 10), mode="L").save(path)
    assert main(["-q", "audit", str(root), "--out", str(tmp_path / "o"), "--no-fiftyone"]) == 2
    err = capsys.readouterr().err
    assert ("b" in err and "single" in err.lower()) or "1 image" in err
    with pytest.raises(SystemExit) as exit_info:
        main(["audit", str(root), "--format", "nonsense"])
    assert exit_info.value.code == 2


def test_corrupt_image_is_recorded_and_audit_goes_on(planted_folder: tuple[Path, set[str]], tmp_path: Path) -> None:
    root, _ = planted_folder
    data = tmp_path / "data"
    import shutil

    shutil.copytree(root, data)
    (data / "a" / "broken.png").write_bytes(b"\x89PNG\r\n\x1a\n not really")
    result = run_audit(auditor.AuditConfig(data=str(data), out=str(tmp_path / "run"), **FAST))
    errors = pd.read_parquet(tmp_path / "run" / "errors.parquet")
    assert errors["filepath"].str.endswith("broken.png").tolist() == [True]
    assert len(result.samples) == 48
    assert any(f["kind"] == "image_issue" for f in result.findings)
    assert "broken.png" in (tmp_path / "run" / "index.html").read_text()


def test_target_groups_add_per_target_harm_columns(planted_folder: tuple[Path, set[str]], tmp_path: Path) -> None:
    root, _ = planted_folder
    out = tmp_path / "run"
    code = main(
        ["-q", "audit", str(root), "--out", str(out), "--epochs", "3", "--checkpoints", "2", "--no-fiftyone",
         "--target-group", "bars=a,b", "--target-class", "c"]
    )  # fmt: skip
    assert code == 0
    samples = pd.read_parquet(out / "samples.parquet")
    train = samples["split"] == "train"
    for column in ("harm_bars", "harm_class_c"):
        assert samples.loc[train, column].notna().all()
        assert samples.loc[~train, column].isna().all()
    influence = pd.read_parquet(out / "influence.parquet")
    assert set(influence["target"]) == {"self", "val", "bars", "class_c"}
    # influence depends on the target: the two rankings are not the same
    assert not np.array_equal(
        samples.loc[train, "harm_bars"].rank().to_numpy(), samples.loc[train, "harm_class_c"].rank().to_numpy()
    )
    assert main(["-q", "audit", str(root), "--target-group", "bad"]) == 2


def test_method_option_chooses_the_harm_estimator(planted_folder: tuple[Path, set[str]], tmp_path: Path) -> None:
    root, _ = planted_folder
    out = tmp_path / "run"
    code = main(
        ["-q", "audit", str(root), "--out", str(out), "--epochs", "3", "--checkpoints", "2", "--no-fiftyone",
         "--method", "knn-shapley", "--target-class", "c"]
    )  # fmt: skip
    assert code == 0
    samples = pd.read_parquet(out / "samples.parquet")
    train = samples["split"] == "train"
    # harm_score is now the kNN-Shapley harm, which every audit also writes as the `knn_harm` second opinion
    np.testing.assert_allclose(samples.loc[train, "harm_score"], samples.loc[train, "knn_harm"])
    influence = pd.read_parquet(out / "influence.parquet")
    assert dict(influence.groupby("target")["method"].first()) == {
        "self": "tracin",
        "val": "knn-shapley",
        "class_c": "knn-shapley",
    }
    manifest = json.loads((out / "manifest.json").read_text())
    assert manifest["settings"]["method"] == "knn-shapley"
    with pytest.raises(SystemExit) as exit_info:  # argparse names the choices and exits 2
        main(["-q", "audit", str(root), "--method", "nope"])
    assert exit_info.value.code == 2


def test_eval_and_verify_check_the_scores_by_retraining(
    planted_folder: tuple[Path, set[str]], tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    root, _ = planted_folder
    out = tmp_path / "run"
    base = ["-q", "audit", str(root), "--out", str(out), "--epochs", "3", "--checkpoints", "2", "--no-fiftyone"]
    assert main(["-q", "eval", str(out)]) == 2  # not a run yet: one line, exit 2
    assert main(base) == 0
    assert main(["-q", "eval", str(out), "--subsets", "2", "--random-removals", "1"]) == 0
    printed = capsys.readouterr().out
    assert "harm_score: removing the top 2 lowers the validation loss by" in printed
    check = json.loads((out / "influence_check.json").read_text())
    assert set(check["removal"]) == {"harm_score", "if_harm", "knn_harm", "label_issue_score", "random"}
    assert check["trainings"] == 1 + 4 + 1 + 2
    audit_json = json.loads((out / "audit.json").read_text())
    summary = audit_json["metrics"]["influence_check"]
    assert summary["n_removed"] == 2
    assert summary["method"] == "if-cg"
    assert isinstance(summary["harm_beats_random"], bool)
    assert 'id="influence-check"' in (out / "index.html").read_text()
    assert "**Influence check:** retraining without the 2 most harmful" in (out / "summary.md").read_text()
    # `audit --verify` runs the same check as a stage of the audit (here resuming the finished run)
    (out / "influence_check.json").unlink()
    assert main([*base, "--verify"]) == 0
    assert json.loads((out / "influence_check.json").read_text())["subsets"] == 8


def test_unknown_target_class_is_exit_2(
    planted_folder: tuple[Path, set[str]], tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    root, _ = planted_folder
    code = main(["-q", "audit", str(root), "--out", str(tmp_path / "r"), "--epochs", "1", "--no-fiftyone",
                 "--target-group", "pets=a,horse"])  # fmt: skip
    assert code == 2
    assert "horse" in capsys.readouterr().err
