"""Stage `train`: build the proxy (or user) model and train the main model plus the cross-fitting folds.

Main model: trained on the train split; its held-out loss on the val split is the default influence
target. Fold models: a seeded stratified K-fold over ALL samples, so every sample of every split is
in the training set of exactly one fold model (training dynamics, self-influence) and held out from the
others (out-of-fold probabilities). Each trained model is stored before the next starts (resumable).
"""

from __future__ import annotations

import logging
from dataclasses import dataclass

import numpy as np
import pandas as pd
import torch
from sklearn.model_selection import StratifiedKFold
from torch import nn

from auditor.config import AuditConfig
from auditor.models.architectures import build_proxy, choose_architecture
from auditor.models.train import Checkpoint, TrainSettings, train_model
from auditor.models.user_model import build_user_model, load_user_weights
from auditor.schema import LABEL, SPLIT
from auditor.store import RunStore

logger = logging.getLogger(__name__)

MAIN_MODEL = "main"
MODEL_INFO_FILE = "model/models.json"


@dataclass(frozen=True)
class ModelSpec:
    """How to rebuild a network: architecture name or user spec, input geometry and class count."""

    architecture: str
    in_channels: int
    image_size: int
    n_classes: int

    def build(self) -> nn.Module:
        """A freshly initialised network of this spec."""
        if self.architecture.startswith("user:"):
            return build_user_model(self.architecture.removeprefix("user:"), n_classes=self.n_classes)
        return build_proxy(
            self.architecture, in_channels=self.in_channels, n_classes=self.n_classes, image_size=self.image_size
        )


@dataclass
class TrainedModel:
    """One trained model: its name, the sample rows it was trained on, and its checkpoints."""

    name: str
    train_rows: np.ndarray
    checkpoints: list[Checkpoint]


def fold_assignment(labels: np.ndarray, folds: int, seed: int) -> np.ndarray:
    """Seeded stratified fold index (0..folds-1) of every row."""
    assignment = np.zeros(len(labels), dtype=np.int64)
    splitter = StratifiedKFold(n_splits=folds, shuffle=True, random_state=seed)
    for fold, (_, held_out) in enumerate(splitter.split(np.zeros(len(labels)), labels)):
        assignment[held_out] = fold
    return assignment


def model_plan(samples: pd.DataFrame, targets: np.ndarray, config: AuditConfig) -> dict[str, np.ndarray]:
    """Name -> training rows of every model to train: `main` plus `fold<k>` for the cross-fitting folds."""
    plan = {MAIN_MODEL: np.flatnonzero(samples[SPLIT].to_numpy() == "train")}
    if config.folds >= 2 and config.weights is None:
        assignment = fold_assignment(targets, config.folds, config.seed)
        for fold in range(config.folds):
            plan[f"fold{fold}"] = np.flatnonzero(assignment != fold)
    return plan


def resolve_model_spec(
    config: AuditConfig, *, native_size: int, channels: int, image_size: int, n_classes: int
) -> ModelSpec:
    """The architecture `--model` asks for: the auto-chosen proxy or the user's factory."""
    architecture = choose_architecture(native_size, channels) if config.model == "auto" else f"user:{config.model}"
    return ModelSpec(architecture=architecture, in_channels=channels, image_size=image_size, n_classes=n_classes)


def run_training(
    store: RunStore,
    config: AuditConfig,
    spec: ModelSpec,
    pixels: torch.Tensor,
    targets: torch.Tensor,
    samples: pd.DataFrame,
) -> None:
    """Train (or load, for user weights) every planned model, storing checkpoints as each finishes."""
    plan = model_plan(samples, targets.numpy(), config)
    info: dict[str, object] = {"spec": spec.__dict__, "models": {}}
    if store.has(MODEL_INFO_FILE):
        info = store.read_json(MODEL_INFO_FILE)
    models: dict[str, object] = info["models"]  # type: ignore[assignment]
    for index, (name, rows) in enumerate(plan.items()):
        if name in models:
            logger.info("Model %s already trained; skipping (resume)", name)
            continue
        torch.manual_seed(config.seed + index)
        model = spec.build()
        if config.weights is not None:
            load_user_weights(model, config.weights)
            checkpoints = [Checkpoint(epoch=0, learning_rate=1.0, state=model.state_dict())]
            log: list[dict[str, float]] = []
        else:
            settings = TrainSettings(
                epochs=config.epochs,
                batch_size=config.batch_size,
                learning_rate=config.learning_rate,
                checkpoints=config.checkpoints,
                seed=config.seed + index,
            )
            logger.info("Training %s on %d samples (%s, %d epochs)", name, len(rows), spec.architecture, config.epochs)
            trained = train_model(
                model, pixels[rows], targets[rows], settings, desc=f"train {name}", progress=config.progress
            )
            checkpoints, log = trained.checkpoints, trained.log
        files = []
        for checkpoint in checkpoints:
            file = f"model/{name}/epoch{checkpoint.epoch:03d}.pt"
            store.save_state(file, checkpoint.state)
            files.append({"file": file, "epoch": checkpoint.epoch, "learning_rate": checkpoint.learning_rate})
        store.write_array(f"model/{name}/train_rows", rows)
        models[name] = {"checkpoints": files, "log": log, "n_train": len(rows)}
        store.write_json(MODEL_INFO_FILE, info)


def load_trained(store: RunStore) -> tuple[ModelSpec, list[TrainedModel]]:
    """Read back the spec and every trained model (checkpoints loaded with weights_only=True)."""
    info = store.read_json(MODEL_INFO_FILE)
    spec = ModelSpec(**info["spec"])
    trained = []
    for name, entry in info["models"].items():
        checkpoints = [
            Checkpoint(epoch=c["epoch"], learning_rate=c["learning_rate"], state=store.load_state(c["file"]))
            for c in entry["checkpoints"]
        ]
        trained.append(
            TrainedModel(name=name, train_rows=store.read_array(f"model/{name}/train_rows"), checkpoints=checkpoints)
        )
    return spec, trained


def class_index(samples: pd.DataFrame) -> list[str]:
    """Sorted class names; a label's position is its class index in every model."""
    return sorted(samples[LABEL].astype(str).unique().tolist())
