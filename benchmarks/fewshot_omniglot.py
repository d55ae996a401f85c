"""Few-shot task influence on Omniglot small1 (28x28, 5-way 1-shot, Conv-4): ProtoNet and first-order MAML.

For each learner: meta-train on a fixed task set in which 20% of tasks have shuffled labels, score every task by
task-level influence on validation tasks (held-out classes), report the planted-noise recall in the top 40%, then
remove the 40% most harmful tasks by the closed-form edit and by retraining (same initialisation and schedule),
and do the same for a random 40%. Accuracy is measured on test tasks over a third class pool. Runs on one CPU
thread (the machine is shared); writes benchmarks/results/fewshot_omniglot.json.

    OMP_NUM_THREADS=1 .venv/bin/python benchmarks/fewshot_omniglot.py [--learners protonet,maml] [--steps 400]
"""

from __future__ import annotations

import argparse
import io
import json
import logging
import os
import time
import zipfile
from dataclasses import replace
from pathlib import Path
from typing import Any

import numpy as np
import torch
from PIL import Image

from auditor.fewshot.backbones import Conv4Backbone
from auditor.fewshot.episodes import build_episode_splits, plant_task_noise
from auditor.fewshot.influence import InfluenceSettings, compute_task_influence, edit_without_tasks
from auditor.fewshot.learners import MAML, MetaLearner, ProtoNet, TaskBatch, materialize_tasks
from auditor.fewshot.training import MetaTrainSettings, evaluate_accuracy, train_meta

logger = logging.getLogger("benchmarks.fewshot_omniglot")
REPO = Path(__file__).resolve().parents[1]
SHARED_DATA = Path(os.environ.get("AUDITOR_SHARED_DATA", REPO.parent / "shared" / "data"))
ZIP = SHARED_DATA / "omniglot" / "images_background_small1.zip"


def load_omniglot(path: Path, size: int) -> tuple[np.ndarray, np.ndarray]:
    """Pixels [n, 1, size, size] in [0, 1] with strokes = 1, and labels `<Alphabet>/characterNN`, read from the zip."""
    images, labels = [], []
    with zipfile.ZipFile(path) as archive:
        for name in sorted(n for n in archive.namelist() if n.lower().endswith(".png")):
            parts = name.split("/")
            with Image.open(io.BytesIO(archive.read(name))) as image:
                small = image.convert("L").resize((size, size), Image.Resampling.LANCZOS)
            images.append(1.0 - np.asarray(small, dtype=np.float32) / 255.0)
            labels.append(f"{parts[-3]}/{parts[-2]}")
    return np.stack(images)[:, None], np.asarray(labels, dtype=object)


def make_learner(name: str, width: int) -> MetaLearner:
    if name == "protonet":
        return ProtoNet(Conv4Backbone(1, image_size=28, out_features=None, width=width))
    return MAML(
        Conv4Backbone(1, image_size=28, out_features=5, width=width), inner_lr=0.4, inner_steps=1, second_order=False
    )


def timed_train(
    learner: MetaLearner, initial: torch.Tensor, tasks: list[TaskBatch], settings: MetaTrainSettings
) -> tuple[torch.Tensor, float]:
    start = time.perf_counter()
    params = train_meta(learner, initial, tasks, settings).params
    return params, time.perf_counter() - start


def run_learner(name: str, pixels: torch.Tensor, labels: np.ndarray, args: argparse.Namespace) -> dict[str, Any]:
    splits = build_episode_splits(
        labels,
        ways=5,
        shots=1,
        queries=args.queries,
        n_train_tasks=args.tasks,
        n_val_tasks=args.val_tasks,
        n_test_tasks=args.test_tasks,
        class_fractions=(0.6, 0.2, 0.2),
        seed=args.seed,
    )
    noisy_tasks, noisy = plant_task_noise(splits.train, fraction=0.2, seed=args.seed)
    train, val, test = (materialize_tasks(s, pixels) for s in (noisy_tasks, splits.val, splits.test))
    learner = make_learner(name, args.width)
    initial = learner.backbone.init_params(args.seed)
    settings = MetaTrainSettings(
        steps=args.steps, meta_batch=args.meta_batch, learning_rate=1e-3, weight_decay=args.weight_decay, seed=args.seed
    )
    influence_settings = InfluenceSettings(
        relative_damping=args.relative_damping,
        curvature=args.curvature,
        max_iter=args.cg_iters,
        tolerance=1e-3,
        hessian_tasks=args.hessian_tasks,
        seed=args.seed,
    )
    params, train_s = timed_train(learner, initial, train, settings)
    accuracy = evaluate_accuracy(learner, params, test)
    logger.info("%s: trained in %.0fs on noisy tasks, test accuracy %.3f", name, train_s, accuracy)

    start = time.perf_counter()
    influence = compute_task_influence(
        learner, params, train, val, weight_decay=settings.weight_decay, settings=influence_settings
    )
    scoring_s = time.perf_counter() - start
    n_removed = round(0.4 * len(train))
    harmful = np.argsort(-influence.scores, kind="stable")[:n_removed]
    losses = np.array([float(learner.task_loss(params, task).detach()) for task in train])
    by_loss = np.argsort(-losses, kind="stable")[:n_removed]
    recall = float(noisy[harmful].sum() / noisy.sum())
    logger.info(
        "%s: scored %d tasks in %.0fs; planted-noise recall in top 40%% = %.3f", name, len(train), scoring_s, recall
    )

    rng = np.random.default_rng(args.seed + 100)
    random = np.sort(rng.choice(len(train), size=n_removed, replace=False))
    removals: dict[str, Any] = {}
    for label, removed in (("harmful", harmful), ("random", random)):
        start = time.perf_counter()
        edited, info = edit_without_tasks(
            learner,
            params,
            train,
            removed,
            weight_decay=settings.weight_decay,
            settings=replace(influence_settings, damping=influence.solve.damping, relative_damping=None),
            mean_grad=influence.mean_gradient,
        )
        edit_s = time.perf_counter() - start
        kept = [task for i, task in enumerate(train) if i not in set(removed.tolist())]
        retrained, retrain_s = timed_train(learner, initial, kept, settings)
        removals[label] = {
            "n_removed": int(n_removed),
            "n_noisy_removed": int(noisy[removed].sum()),
            "edit_accuracy": evaluate_accuracy(learner, edited, test),
            "retrain_accuracy": evaluate_accuracy(learner, retrained, test),
            "edit_seconds": edit_s,
            "retrain_seconds": retrain_s,
            "speedup": retrain_s / edit_s,
            "edit_solve_iterations": info.iterations,
            "edit_solve_residual": info.residual,
        }
        removals[label]["accuracy_gap"] = abs(removals[label]["edit_accuracy"] - removals[label]["retrain_accuracy"])
        logger.info("%s: remove %s 40%%: %s", name, label, removals[label])
    return {
        "learner": name if name == "protonet" else "maml_first_order",
        "test_accuracy_noisy_training": accuracy,
        "train_seconds": train_s,
        "task_if_seconds": scoring_s,
        "task_if_solve_iterations": influence.solve.iterations,
        "task_if_solve_residual": influence.solve.residual,
        "damping": influence.solve.damping,
        "planted_noise_recall_top40": recall,
        "planted_noise_recall_top40_by_task_loss": float(noisy[by_loss].sum() / noisy.sum()),
        "removal": removals,
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--learners", default="protonet,maml")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--tasks", type=int, default=200)
    parser.add_argument("--val-tasks", type=int, default=50)
    parser.add_argument("--test-tasks", type=int, default=200)
    parser.add_argument("--queries", type=int, default=5)
    parser.add_argument("--steps", type=int, default=400)
    parser.add_argument("--meta-batch", type=int, default=4)
    parser.add_argument("--width", type=int, default=32)
    parser.add_argument("--weight-decay", type=float, default=5e-4)
    parser.add_argument("--relative-damping", type=float, default=0.1, help="damping / top curvature eigenvalue")
    parser.add_argument("--curvature", default="gauss_newton", choices=["gauss_newton", "hessian"])
    parser.add_argument("--cg-iters", type=int, default=10)
    parser.add_argument("--hessian-tasks", type=int, default=8)
    parser.add_argument("--out", default=str(REPO / "benchmarks" / "results" / "fewshot_omniglot.json"))
    args = parser.parse_args()
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(name)s %(message)s")
    torch.set_num_threads(1)
    start = time.perf_counter()
    images, labels = load_omniglot(ZIP, 28)
    logger.info("loaded %d images of %d characters from %s", len(images), len(set(labels)), ZIP.name)
    pixels = torch.from_numpy(images)
    results = [run_learner(name, pixels, labels, args) for name in args.learners.split(",")]
    summary = {
        "dataset": "omniglot images_background_small1 (136 characters x 20), 28x28, classes split 60/20/20",
        "protocol": "5-way 1-shot, fixed meta-training task set, 20% of tasks with shuffled labels",
        "settings": vars(args),
        "torch_threads": torch.get_num_threads(),
        "results": results,
        "total_seconds": time.perf_counter() - start,
    }
    Path(args.out).write_text(json.dumps(summary, indent=2, sort_keys=True) + "\n", encoding="utf-8")
    logger.info("wrote %s", args.out)


if __name__ == "__main__":
    main()
