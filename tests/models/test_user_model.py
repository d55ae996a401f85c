"""`--model pkg.module:factory [--weights FILE]`: the user's architecture, trained or as given; unsafe files refused."""

from __future__ import annotations

import pickle
import sys
from collections.abc import Iterator
from pathlib import Path

import pytest
import torch
from PIL import Image

import auditor
from auditor.cli import main
from auditor.errors import ModelError
from auditor.models.user_model import build_user_model, load_user_weights

MODULE = """
import torch
from torch import nn

def tiny(num_classes):
    return nn.Sequential(nn.Flatten(), nn.Linear(64, 16), nn.ReLU(), nn.Linear(16, num_classes))

def not_a_model():
    return 42
"""


@pytest.fixture
def user_module(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Iterator[str]:
    package = tmp_path / "usermodels"
    package.mkdir()
    (package / "__init__.py").write_text("")
    (package / "nets.py").write_text(MODULE)
    monkeypatch.syspath_prepend(str(tmp_path))
    yield "usermodels.nets"
    for name in [m for m in sys.modules if m.startswith("usermodels")]:
        del sys.modules[name]


@pytest.fixture
def tiny_data(tmp_path: Path) -> Path:
    root = tmp_path / "data"
    for label in ("a", "b"):
        for i in range(10):
            path = root / label / f"{i}.png"
            path.parent.mkdir(parents=True, exist_ok=True)
            value = 30 + 7 * i if label == "a" else 200 - 7 * i
            Image.new("L", (8, 8), value).save(path)
    return root


def test_user_model_gets_embed_and_head(user_module: str) -> None:
    model = build_user_model(f"{user_module}:tiny", n_classes=3)
    x = torch.zeros(2, 1, 8, 8)
    assert model(x).shape == (2, 3)
    assert model.embed(x).shape == (2, 16)  # type: ignore[operator]  # input of the last Linear layer


def test_bad_factories_are_model_errors(user_module: str) -> None:
    with pytest.raises(ModelError, match="cannot import"):
        build_user_model("no_such_pkg.mod:f", n_classes=2)
    with pytest.raises(ModelError, match="no callable"):
        build_user_model(f"{user_module}:missing", n_classes=2)
    with pytest.raises(ModelError, match=r"not a torch\.nn\.Module"):
        build_user_model(f"{user_module}:not_a_model", n_classes=2)


def test_pickled_object_weights_are_refused(user_module: str, tmp_path: Path) -> None:
    evil = tmp_path / "evil.pt"
    evil.write_bytes(pickle.dumps({"weight": object()}))
    model = build_user_model(f"{user_module}:tiny", n_classes=2)
    with pytest.raises(ModelError, match="not a safe state dict"):
        load_user_weights(model, evil)


def test_audit_with_user_architecture_and_weights(user_module: str, tiny_data: Path, tmp_path: Path) -> None:
    trained = auditor.audit(
        str(tiny_data),
        model=f"{user_module}:tiny",
        out=str(tmp_path / "trained"),
        epochs=3,
        checkpoints=2,
        fiftyone=False,
    )
    assert trained.samples["self_influence"].notna().all()
    model = build_user_model(f"{user_module}:tiny", n_classes=2)
    weights = tmp_path / "weights.pt"
    torch.save(model.model.state_dict(), weights)  # type: ignore[union-attr]
    given = auditor.audit(
        str(tiny_data), model=f"{user_module}:tiny", weights=str(weights), out=str(tmp_path / "given"), fiftyone=False
    )
    assert len(given.samples) == 20
    assert not (tmp_path / "given" / "model" / "fold0").exists()  # given weights: nothing is retrained
    assert given.samples["label_issue_score"].between(0, 1).all()


def test_cli_unsafe_weights_exit_2(
    user_module: str, tiny_data: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    evil = tmp_path / "evil.pt"
    evil.write_bytes(pickle.dumps(object()))
    code = main(
        [
            "-q",
            "audit",
            str(tiny_data),
            "--model",
            f"{user_module}:tiny",
            "--weights",
            str(evil),
            "--out",
            str(tmp_path / "run"),
            "--no-fiftyone",
        ]
    )
    assert code == 2
    assert "not a safe state dict" in capsys.readouterr().err
