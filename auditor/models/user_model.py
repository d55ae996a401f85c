"""Loading a user's architecture ("pkg.module:factory") and, optionally, its weights (weights_only=True)."""

from __future__ import annotations

import importlib
import inspect
import logging
import warnings
from pathlib import Path

import torch
from torch import nn

from auditor.errors import ModelError

logger = logging.getLogger(__name__)


class _LastLinearAdapter(nn.Module):
    """Gives a plain classifier the `embed`/`head` interface by splitting off its last nn.Linear."""

    def __init__(self, model: nn.Module) -> None:
        super().__init__()
        linears = [(name, m) for name, m in model.named_modules() if isinstance(m, nn.Linear)]
        if not linears:
            raise ModelError("the user model has no nn.Linear layer to use as the classification head")
        self.model = model
        self._head_name = linears[-1][0]
        self._captured: torch.Tensor | None = None
        linears[-1][1].register_forward_pre_hook(self._capture)

    def _capture(self, module: nn.Module, inputs: tuple[torch.Tensor, ...]) -> None:
        self._captured = inputs[0]

    @property
    def head(self) -> nn.Module:
        return self.model.get_submodule(self._head_name)

    def embed(self, x: torch.Tensor) -> torch.Tensor:
        self.model(x)
        assert self._captured is not None
        return self._captured.flatten(1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        out: torch.Tensor = self.model(x)
        return out


def build_user_model(spec: str, *, n_classes: int) -> nn.Module:
    """Import `pkg.module:factory` and call it (with `num_classes=n_classes` if it takes that argument)."""
    module_name, _, attr = spec.partition(":")
    try:
        module = importlib.import_module(module_name)
    except ImportError as exc:
        raise ModelError(f"--model {spec}: cannot import module {module_name!r} ({exc}); is it on PYTHONPATH?") from exc
    factory = getattr(module, attr, None)
    if factory is None or not callable(factory):
        raise ModelError(f"--model {spec}: module {module_name!r} has no callable {attr!r}")
    takes_classes = "num_classes" in inspect.signature(factory).parameters
    model = factory(num_classes=n_classes) if takes_classes else factory()
    if not isinstance(model, nn.Module):
        raise ModelError(f"--model {spec}: the factory returned {type(model).__name__}, not a torch.nn.Module")
    if hasattr(model, "embed") and hasattr(model, "head"):
        return model
    return _LastLinearAdapter(model)


def load_weights_file(weights: str | Path) -> dict[str, torch.Tensor]:
    """The state dict in `weights`, read with `torch.load(weights_only=True)` so a pickled object that would
    run code is refused; ModelError naming the file and the fix for a missing, unsafe, corrupt or non-dict file.
    """
    path = Path(weights)
    if not path.is_file():
        raise ModelError(f"--weights {path}: no such file; pass the path of a torch.save(model.state_dict()) file")
    try:
        with warnings.catch_warnings():  # torch warns about the pickle protocol before refusing: one line is enough
            warnings.filterwarnings("ignore", message="Detected pickle protocol", category=UserWarning)
            state = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as exc:  # torch raises several types for unsafe or corrupt files
        raise ModelError(
            f"--weights {path}: not a safe state dict ({type(exc).__name__}); "
            "save it with torch.save(model.state_dict())"
        ) from exc
    if not isinstance(state, dict):
        raise ModelError(
            f"--weights {path}: expected a state dict, got {type(state).__name__}; "
            "save it with torch.save(model.state_dict())"
        )
    return state


def load_user_weights(model: nn.Module, weights: str | Path) -> None:
    """Load the state dict of `weights` (see `load_weights_file`) into `model`; ModelError if it does not fit."""
    path = Path(weights)
    state = load_weights_file(path)
    target = model.model if isinstance(model, _LastLinearAdapter) else model
    try:
        target.load_state_dict(state)
    except RuntimeError as exc:
        first = str(exc).splitlines()[0]
        raise ModelError(f"--weights {path}: does not match the architecture ({first})") from exc
