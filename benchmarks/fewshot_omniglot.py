"""Few-shot task influence on Omniglot small1 (28x28) or the Mini-ImageNet subset (5-way 1-shot, Conv-4): ProtoNet
and MAML (second order by default, `--maml-first-order` for FOMAML).

For each seed and learner: meta-train on a fixed task set in which 20% of tasks have shuffled labels, score every
task by task-level influence on validation tasks (held-out classes), averaged over the meta-training checkpoints
(`--checkpoints`, evenly spaced, the last = final; see auditor.fewshot.influence), report the planted-noise recall
in the top 40% (also for the final parameters alone), then remove the 40% most harmful tasks by the closed-form
edit and by retraining (same initialisation and schedule), and do the same for a random 40% and for the 40% a
TracIn-style score (gradient dot product with the validation gradient, final checkpoint) calls most harmful
(TracIn summed over the same checkpoints is reported too). Accuracy is measured on test tasks over a third class
pool. A task-level LDS (Spearman correlation of predicted and actual validation loss over retrainings on random
halves of the tasks) is reported for task-IF and TracIn. Separately, 10% of images are moved to another character
and the few-shot audit's instance-level `label_issue_score` is scored by AUROC / AP against them. Runs on one CPU
thread (the machine is shared); writes benchmarks/results/fewshot_<dataset>.json with per-seed figures and their
mean and minimum over seeds under "summary".

    OMP_NUM_THREADS=1 .venv/bin/python benchmarks/fewshot_omniglot.py [--learners protonet,maml] [--seeds 0,1,2]
    OMP_NUM_THREADS=1 .venv/bin/python benchmarks/fewshot_omniglot.py --dataset mini-imagenet --size 42
"""

from __future__ import annotations

import argparse
import io
import json
import logging
import os
import sys
import time
import zipfile
from dataclasses import replace
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
import torch
from PIL import Image
from scipy.stats import spearmanr
from sklearn.metrics import average_precision_score, roc_auc_score

from auditor.fewshot.backbones import Conv4Backbone
from auditor.fewshot.episodes import build_episode_splits, plant_task_noise
from auditor.fewshot.influence import (
    InfluenceSettings,
    compute_task_influence,
    edit_without_tasks,
    mean_gradient,
    task_gradient,
)
from auditor.fewshot.learners import MAML, MetaLearner, ProtoNet, TaskBatch, materialize_tasks
from auditor.fewshot.run import FewShotOptions, run_fewshot_audit
from auditor.fewshot.stage import label_issue_flags
from auditor.fewshot.training import MetaTrainSettings, evaluate_accuracy, evaluate_loss, train_meta

logger = logging.getLogger("benchmarks.fewshot_omniglot")
REPO = Path(__file__).resolve().parents[1]
SHARED_DATA = Path(os.environ.get("AUDITOR_SHARED_DATA", REPO.parent / "shared" / "data"))
ZIP = SHARED_DATA / "omniglot" / "images_background_small1.zip"
MINI_IMAGENET = SHARED_DATA / "mini_imagenet"


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


def load_mini_imagenet(root: Path, size: int) -> tuple[np.ndarray, np.ndarray]:
    """Pixels [n, 3, size, size] in [0, 1] and wnid labels; the train/val/test CSVs pooled (their classes are
    disjoint; the benchmark splits classes itself, as for Omniglot)."""
    images, labels = [], []
    for split in ("train", "val", "test"):
        table = pd.read_csv(root / f"{split}.csv")
        for filename, label in zip(table["filename"], table["label"], strict=True):
            with Image.open(root / "images" / filename) as image:
                small = image.convert("RGB").resize((size, size), Image.Resampling.BILINEAR)
            images.append(np.asarray(small, dtype=np.float32).transpose(2, 0, 1) / 255.0)
            labels.append(label)
    return np.stack(images), np.asarray(labels, dtype=object)


def make_learner(name: str, args: argparse.Namespace, channels: int = 1, size: int = 28) -> MetaLearner:
    if name == "protonet":
        return ProtoNet(Conv4Backbone(channels, image_size=size, out_features=None, width=args.width))
    return MAML(
        Conv4Backbone(channels, image_size=size, out_features=5, width=args.width),
        inner_lr=args.maml_inner_lr,
        inner_steps=args.maml_inner_steps,
        second_order=not args.maml_first_order,
        zero_head=True,
    )


def learner_label(name: str, args: argparse.Namespace) -> str:
    if name == "protonet":
        return name
    return "maml_first_order" if args.maml_first_order else "maml_second_order"


def train_settings(args: argparse.Namespace, name: str = "protonet") -> MetaTrainSettings:
    """Adam meta-training as set on the command line (both benchmark parts use it); MAML has its own steps and
    meta learning rate."""
    maml = name == "maml"
    return MetaTrainSettings(
        steps=args.maml_steps if maml else args.steps,
        meta_batch=args.meta_batch,
        learning_rate=args.maml_lr if maml else 1e-3,
        weight_decay=args.weight_decay,
        checkpoints=args.checkpoints,
        seed=args.seed,
    )


def influence_settings_of(args: argparse.Namespace) -> InfluenceSettings:
    """The damped task-influence solve as set on the command line."""
    return InfluenceSettings(
        relative_damping=args.relative_damping,
        curvature=args.curvature,
        max_iter=args.cg_iters,
        tolerance=1e-3,
        hessian_tasks=args.hessian_tasks,
        seed=args.seed,
    )


def timed_train(
    learner: MetaLearner, initial: torch.Tensor, tasks: list[TaskBatch], settings: MetaTrainSettings
) -> tuple[torch.Tensor, float]:
    params, _, seconds = timed_train_with_checkpoints(learner, initial, tasks, settings)
    return params, seconds


def timed_train_with_checkpoints(
    learner: MetaLearner, initial: torch.Tensor, tasks: list[TaskBatch], settings: MetaTrainSettings
) -> tuple[torch.Tensor, list[torch.Tensor], float]:
    start = time.perf_counter()
    result = train_meta(learner, initial, tasks, settings)
    return result.params, [point for _, point in result.checkpoints], time.perf_counter() - start


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
    learner = make_learner(name, args, channels=pixels.shape[1], size=pixels.shape[-1])
    initial = learner.init_params(args.seed)
    settings = train_settings(args, name)
    influence_settings = influence_settings_of(args)
    params, checkpoints, train_s = timed_train_with_checkpoints(learner, initial, train, settings)
    accuracy = evaluate_accuracy(learner, params, test)
    logger.info("%s: trained in %.0fs on noisy tasks, test accuracy %.3f", name, train_s, accuracy)

    start = time.perf_counter()
    influence = compute_task_influence(
        learner,
        params,
        train,
        val,
        weight_decay=settings.weight_decay,
        settings=influence_settings,
        trajectory=checkpoints,
    )
    scoring_s = time.perf_counter() - start
    n_removed = round(0.4 * len(train))
    harmful = np.argsort(-influence.scores, kind="stable")[:n_removed]
    recall_per_checkpoint = [
        float(noisy[np.argsort(-row, kind="stable")[:n_removed]].sum() / noisy.sum())
        for row in influence.checkpoint_scores
    ]
    losses = np.array([float(learner.task_loss(params, task).detach()) for task in train])
    by_loss = np.argsort(-losses, kind="stable")[:n_removed]
    recall = float(noisy[harmful].sum() / noisy.sum())
    logger.info(
        "%s: scored %d tasks in %.0fs; planted-noise recall in top 40%% = %.3f", name, len(train), scoring_s, recall
    )

    # TracIn with one checkpoint: a step on task t changes the validation loss by -lr * g_val . g_t, so the
    # most harmful tasks have the most negative dot product.
    val_gradient = mean_gradient(learner, params, val)
    tracin_harm = np.array([-float(task_gradient(learner, params, task) @ val_gradient) for task in train])
    by_tracin = np.argsort(-tracin_harm, kind="stable")[:n_removed]
    tracin_checkpoints = tracin_harm.copy()
    for point in checkpoints[:-1]:
        point_val = mean_gradient(learner, point, val)
        tracin_checkpoints -= np.array([float(task_gradient(learner, point, task) @ point_val) for task in train])
    by_tracin_checkpoints = np.argsort(-tracin_checkpoints, kind="stable")[:n_removed]

    rng = np.random.default_rng(args.seed + 100)
    random = np.sort(rng.choice(len(train), size=n_removed, replace=False))
    removals: dict[str, Any] = {}
    for label, removed in (("harmful", harmful), ("tracin", by_tracin), ("random", random)):
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
    lds: dict[str, Any] = {"n_subsets": 0, "skipped": "--lds-subsets below 3"}
    if args.lds_subsets >= 3:
        lds = task_lds(learner, initial, train, val, settings, influence.scores, tracin_harm, args)
    return {
        "learner": learner_label(name, args),
        "seed": args.seed,
        "meta_train": {
            "steps": settings.steps,
            "learning_rate": settings.learning_rate,
            "checkpoints": len(checkpoints),
        },
        "planted_noise_recall_top40_final_params_only": recall_per_checkpoint[-1],
        "planted_noise_recall_top40_per_checkpoint": recall_per_checkpoint,
        "task_lds": lds,
        "planted_noise_recall_top40_by_tracin": float(noisy[by_tracin].sum() / noisy.sum()),
        "planted_noise_recall_top40_by_tracin_checkpoints": float(noisy[by_tracin_checkpoints].sum() / noisy.sum()),
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


def task_lds(
    learner: MetaLearner,
    initial: torch.Tensor,
    train: list[TaskBatch],
    val: list[TaskBatch],
    settings: MetaTrainSettings,
    scores: np.ndarray,
    tracin_harm: np.ndarray,
    args: argparse.Namespace,
) -> dict[str, Any]:
    """Retrain on `args.lds_subsets` random halves of the tasks; Spearman of each method's predicted validation
    loss (minus the summed harm of the removed tasks: removing harmful tasks lowers it) against the actual one."""
    rng = np.random.default_rng(args.seed + 200)
    actual, predicted_if, predicted_tracin = [], [], []
    for _ in range(args.lds_subsets):
        removed = rng.choice(len(train), size=len(train) // 2, replace=False)
        kept = [task for i, task in enumerate(train) if i not in set(removed.tolist())]
        retrained, _ = timed_train(learner, initial, kept, settings)
        actual.append(evaluate_loss(learner, retrained, val))
        predicted_if.append(-float(scores[removed].sum()))
        predicted_tracin.append(-float(tracin_harm[removed].sum()))
    result = {
        "n_subsets": args.lds_subsets,
        "subset_fraction": 0.5,
        "task_if": float(spearmanr(predicted_if, actual).statistic),
        "tracin": float(spearmanr(predicted_tracin, actual).statistic),
        "actual_val_loss": actual,
    }
    logger.info("task-level LDS: %s", result)
    return result


def run_label_noise(name: str, images: np.ndarray, labels: np.ndarray, args: argparse.Namespace) -> dict[str, Any]:
    """10% of images moved to another character; the few-shot audit's label_issue_score against them."""
    rng = np.random.default_rng(args.seed + 300)
    classes = np.unique(labels)
    moved = rng.random(len(labels)) < 0.1
    noisy = labels.copy()
    for i in np.flatnonzero(moved):
        noisy[i] = rng.choice(classes[classes != labels[i]])
    samples = pd.DataFrame({"sample_id": [f"s{i:05d}" for i in range(len(labels))], "label": noisy})
    options = FewShotOptions(
        n_train_tasks=args.tasks,
        n_val_tasks=args.val_tasks,
        n_test_tasks=args.test_tasks,
        train=train_settings(args, name),
        # Label-issue scores do not use the task scores: the final point alone saves the per-checkpoint solves.
        influence=replace(influence_settings_of(args), average_checkpoints=False),
        width=args.width,
        inner_lr=args.maml_inner_lr,
        inner_steps=args.maml_inner_steps,
        second_order=not args.maml_first_order,
    )
    start = time.perf_counter()
    result = run_fewshot_audit(
        samples, images, ways=5, shots=1, queries=args.queries, learner=name, seed=args.seed, options=options
    )
    seconds = time.perf_counter() - start
    scores = result.sample_scores
    flags, _ = label_issue_flags(scores)
    label_score = scores["label_issue_score"].to_numpy(dtype=float)
    in_tasks = (scores["n_support"] + scores["n_query"]).to_numpy() > 0
    per_appearance = scores["harm_score"].to_numpy(dtype=float) / np.maximum(
        (scores["n_support"] + scores["n_query"]).to_numpy(), 1
    )
    out = {
        "n_moved": int(moved.sum()),
        "test_accuracy": result.metrics["fewshot.accuracy"],
        "label_issue_auroc": float(roc_auc_score(moved, label_score)),
        "label_issue_ap": float(average_precision_score(moved, label_score)),
        "suggested_label_correct": float((scores["suggested_label"].to_numpy() == labels)[moved].mean()),
        "instance_if_harm_per_appearance_auroc": float(roc_auc_score(moved[in_tasks], per_appearance[in_tasks])),
        "loo_prototype_accuracy": float((scores["suggested_label"] == scores["label"]).mean()),
        "n_flagged": int(flags.sum()),
        "n_flagged_moved": int((flags & moved).sum()),
        "seconds": seconds,
    }
    logger.info("%s label noise: %s", name, out)
    return out


SUMMARY_KEYS = (
    "test_accuracy_noisy_training",
    "planted_noise_recall_top40",
    "planted_noise_recall_top40_final_params_only",
    "planted_noise_recall_top40_by_tracin",
    "planted_noise_recall_top40_by_tracin_checkpoints",
    "planted_noise_recall_top40_by_task_loss",
    "removal.harmful.edit_accuracy",
    "removal.harmful.retrain_accuracy",
    "removal.harmful.accuracy_gap",
    "removal.harmful.speedup",
    "removal.random.retrain_accuracy",
    "task_lds.task_if",
    "label_noise_10pct_images.label_issue_auroc",
    "train_seconds",
    "task_if_seconds",
)


def _lookup(result: dict[str, Any], dotted: str) -> float | None:
    value: Any = result
    for key in dotted.split("."):
        if not isinstance(value, dict) or key not in value:
            return None
        value = value[key]
    return float(value)


def summarise(results: list[dict[str, Any]]) -> dict[str, Any]:
    """Per learner: each key's value per seed, and the mean and minimum over seeds."""
    summary: dict[str, Any] = {}
    for label in dict.fromkeys(r["learner"] for r in results):
        mine = [r for r in results if r["learner"] == label]
        rows: dict[str, Any] = {"seeds": [r["seed"] for r in mine]}
        for key in SUMMARY_KEYS:
            values = [_lookup(r, key) for r in mine]
            present = [v for v in values if v is not None]
            if present:
                rows[key] = {"per_seed": values, "mean": float(np.mean(present)), "min": float(np.min(present))}
        summary[label] = rows
    return summary


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--learners", default="protonet,maml")
    parser.add_argument("--seeds", default="0", help="comma-separated seeds; each runs the whole protocol")
    parser.add_argument(
        "--maml-seeds", default=None, help="seeds for MAML if different (e.g. fewer: it is the slow learner)"
    )
    parser.add_argument("--tasks", type=int, default=200)
    parser.add_argument("--val-tasks", type=int, default=50)
    parser.add_argument("--test-tasks", type=int, default=200)
    parser.add_argument("--queries", type=int, default=5)
    parser.add_argument("--steps", type=int, default=400)
    parser.add_argument("--meta-batch", type=int, default=4)
    parser.add_argument("--checkpoints", type=int, default=4, help="meta-training checkpoints task-IF averages over")
    parser.add_argument("--maml-steps", type=int, default=400)
    parser.add_argument("--maml-lr", type=float, default=1e-3, help="MAML's Adam meta learning rate")
    parser.add_argument("--maml-inner-lr", type=float, default=0.4)
    parser.add_argument("--maml-inner-steps", type=int, default=1)
    parser.add_argument("--maml-first-order", action="store_true", help="first-order MAML instead of second order")
    parser.add_argument("--width", type=int, default=32)
    parser.add_argument("--weight-decay", type=float, default=5e-4)
    parser.add_argument("--relative-damping", type=float, default=0.1, help="damping / top curvature eigenvalue")
    parser.add_argument("--curvature", default="gauss_newton", choices=["gauss_newton", "hessian"])
    parser.add_argument("--cg-iters", type=int, default=10)
    parser.add_argument("--hessian-tasks", type=int, default=8)
    parser.add_argument("--lds-subsets", type=int, default=8, help="retrainings on random halves for task LDS")
    parser.add_argument("--no-label-noise", action="store_true", help="skip the 10%% moved-images run")
    parser.add_argument("--label-noise-learners", default="protonet,maml", help="learners the moved-images run is for")
    parser.add_argument("--dataset", default="omniglot", choices=["omniglot", "mini-imagenet"])
    parser.add_argument("--size", type=int, default=42, help="mini-ImageNet image side (Omniglot is always 28)")
    parser.add_argument("--note", default="", help="free text stored in the json (e.g. what was left out and why)")
    parser.add_argument("--out", default=None, help="default: benchmarks/results/fewshot_<dataset>.json")
    args = parser.parse_args()
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(name)s %(message)s")
    torch.set_num_threads(1)
    start = time.perf_counter()
    if args.dataset == "omniglot":
        images, labels = load_omniglot(ZIP, 28)
        description = "omniglot images_background_small1 (136 characters x 20), 28x28, classes split 60/20/20"
    else:
        images, labels = load_mini_imagenet(MINI_IMAGENET, args.size)
        description = (
            f"mini-ImageNet subset ({len(set(labels))} classes, {len(labels)} images), {args.size}x{args.size} RGB, "
            "train/val/test CSVs pooled, classes split 60/20/20"
        )
    logger.info("loaded %d images of %d classes (%s)", len(images), len(set(labels)), args.dataset)
    pixels = torch.from_numpy(images)
    seeds = [int(seed) for seed in args.seeds.split(",")]
    maml_seeds = [int(seed) for seed in args.maml_seeds.split(",")] if args.maml_seeds else seeds
    out = Path(args.out or REPO / "benchmarks" / "results" / f"fewshot_{args.dataset.replace('-', '_')}.json")
    results: list[dict[str, Any]] = []
    for name in args.learners.split(","):
        for seed in maml_seeds if name == "maml" else seeds:
            seeded = argparse.Namespace(**{**vars(args), "seed": seed})
            result = run_learner(name, pixels, labels, seeded)
            if not args.no_label_noise and name in args.label_noise_learners.split(","):
                result["label_noise_10pct_images"] = run_label_noise(name, images, labels, seeded)
            results.append(result)
            # Written after every learner and seed, so a long run that stops keeps what it finished.
            summary = {
                "dataset": description,
                "command": "OMP_NUM_THREADS=1 .venv/bin/python benchmarks/fewshot_omniglot.py "
                + " ".join(sys.argv[1:]),
                "protocol": "5-way 1-shot, fixed meta-training task set, 20% of tasks with shuffled labels",
                "note": args.note,
                "settings": vars(args),
                "torch_threads": torch.get_num_threads(),
                "summary": summarise(results),
                "results": results,
                "total_seconds": time.perf_counter() - start,
            }
            out.write_text(json.dumps(summary, indent=2, sort_keys=True) + "\n", encoding="utf-8")
            logger.info("wrote %s (%d runs)", out, len(results))


if __name__ == "__main__":
    main()
