"""Linear datamodeling score (LDS) of influence methods on scikit-learn's digits, against real retraining.

Data: the 1,797 8x8 digit scans (bundled with scikit-learn, no download), split (stratified, seeded) into
train rows and target rows. Features: penultimate embeddings (64 dims) of a Conv-4 proxy trained briefly
(`--epochs`) on the train rows with the project's training loop, standardised with the train mean/std
(`--features pixels`: the 64 raw pixel values, standardised, instead). Convex head: float64 multinomial
logistic regression, L2 penalty `--l2` on all weights and biases, fitted by Newton's method
(auditor/influence/evaluate.py); every influence method uses damping = l2, the exact Hessian of the penalty.

Ground truth: the head retrained (warm-started Newton) on `--subsets` random subsets of `--fraction` of the
train rows, removed rows weighted 0 under the full data's 1/n. LDS (Park et al. 2023) = Spearman between
each subset's predicted target loss (sum of `harm` over its kept rows) and its actual one, reported two ways:
  lds_mean_target   on the mean loss over all target rows (the `harm` the engine writes), and
  lds_per_target    for each target row's own loss, then averaged over target rows (Park et al.'s LDS).
Also Spearman of each method's harm with leave-one-out retraining on `--loo-rows` random train rows.

Methods: influence functions with the exact / cg / lissa / ekfac inverse Hessian, `identity` (gradient dot
products, i.e. one-checkpoint TracIn on the head), kNN-Shapley (k=`--knn-k`, harm = -value, on the same
features) and the loss baseline (harm = the row's training loss). One full run per seed (split, proxy,
subsets); the summary gives the mean and the minimum over seeds. Writes benchmarks/results/lds_digits.json.
One thread: with two BLAS threads on a loaded 2-core machine the Newton fits ran 20-50x slower.

    OMP_NUM_THREADS=1 .venv/bin/python benchmarks/lds_digits.py [--subsets 50] [--l2 0.01] [--seeds 0 1 2]
"""

from __future__ import annotations

import argparse
import json
import logging
import os
import platform
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np
import scipy.stats
import torch
from sklearn.datasets import load_digits
from sklearn.model_selection import train_test_split

from auditor.influence.evaluate import ConvexProblem, linear_datamodeling_score, random_subsets
from auditor.influence.ihvp import IHVPSettings, fit_inverse_hvp
from auditor.influence.influence_functions import compute_harm_matrix, compute_influence
from auditor.influence.knn_shapley import compute_knn_shapley
from auditor.influence.objective import Objective
from auditor.models.architectures import Conv4
from auditor.models.train import TrainSettings, predict, train_model

logger = logging.getLogger("benchmarks.lds_digits")
REPO = Path(__file__).resolve().parents[1]
INFLUENCE_METHODS = ("exact", "cg", "lissa", "ekfac", "identity")


def load_features(args: argparse.Namespace) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray, dict[str, Any]]:
    """(train features, train labels, target features, target labels, info), standardised with train statistics."""
    digits = load_digits()
    pixels = np.round(digits.images * (255.0 / 16.0)).astype(np.uint8)[:, None]
    labels = digits.target.astype(np.int64)
    train_rows, target_rows = train_test_split(
        np.arange(len(labels)), train_size=args.train_size, stratify=labels, random_state=args.seed
    )
    target_rows = target_rows[: args.target_size]
    info: dict[str, Any] = {"features": args.features, "n_train": len(train_rows), "n_target": len(target_rows)}
    if args.features == "pixels":
        features = pixels.reshape(len(pixels), -1).astype(np.float64)
    else:
        torch.manual_seed(args.seed)
        model = Conv4(1, 10, image_size=8, width=64)
        settings = TrainSettings(epochs=args.epochs, batch_size=64, learning_rate=0.05, checkpoints=1, seed=args.seed)
        result = train_model(
            model,
            torch.from_numpy(pixels[train_rows]),
            torch.from_numpy(labels[train_rows]),
            settings,
            desc="proxy",
            progress=False,
        )
        probs, embeddings = predict(model, torch.from_numpy(pixels))
        info["proxy"] = {
            "epochs": args.epochs,
            "train_accuracy": float((probs[train_rows].argmax(1) == labels[train_rows]).mean()),
            "target_accuracy": float((probs[target_rows].argmax(1) == labels[target_rows]).mean()),
            "final_train_loss": result.log[-1]["loss"],
        }
        features = embeddings.astype(np.float64)
    mean, std = features[train_rows].mean(0), features[train_rows].std(0) + 1e-8
    features = (features - mean) / std
    return features[train_rows], labels[train_rows], features[target_rows], labels[target_rows], info


def score_methods(problem: ConvexProblem, args: argparse.Namespace) -> dict[str, dict[str, Any]]:
    """Every method's harm [N] on the mean target loss, harm matrix [N, T] per target row, and seconds taken."""
    head = problem.fit().to_linear()
    train = (torch.from_numpy(problem.train_features), torch.from_numpy(problem.train_labels))
    target = (torch.from_numpy(problem.target_features), torch.from_numpy(problem.target_labels))
    objective = Objective(head, *train, batch_size=256)
    scored: dict[str, dict[str, Any]] = {}
    for method in INFLUENCE_METHODS:
        start = time.perf_counter()
        settings = IHVPSettings(method=method, damping=problem.l2, seed=args.seed)  # type: ignore[arg-type]
        solver = fit_inverse_hvp(objective, settings)
        scores = compute_influence(objective, solver, target=target, self_influence=False, batch_size=256)
        seconds = time.perf_counter() - start
        matrix = compute_harm_matrix(objective, solver, target, batch_size=256)
        scored[method] = {
            "harm": scores.harm,
            "matrix": matrix,
            "seconds": seconds,
            "seconds_with_matrix": time.perf_counter() - start,
        }
        logger.info("%s: %.1f s (%.1f s with the per-target matrix)", method, seconds, time.perf_counter() - start)
    start = time.perf_counter()
    values = compute_knn_shapley(
        problem.train_features,
        problem.train_labels,
        problem.target_features,
        problem.target_labels,
        k=args.knn_k,
        per_target=True,
    )
    seconds = time.perf_counter() - start
    scored["knn_shapley"] = {"harm": -values.mean(0), "matrix": -values.T, "seconds": seconds}
    losses = problem.fit().losses(problem.train_features, problem.train_labels)
    scored["loss"] = {
        "harm": losses,
        "matrix": np.repeat(losses[:, None], len(problem.target_labels), 1),
        "seconds": 0.0,
    }
    return scored


def timed(label: str, work: Callable[[], np.ndarray]) -> np.ndarray:
    start = time.perf_counter()
    result = work()
    logger.info("%s: %.1f s", label, time.perf_counter() - start)
    return result


def run_seed(args: argparse.Namespace, seed: int) -> dict[str, Any]:
    """One complete run (split, proxy, head, ground truth, every method) with `seed`."""
    args = argparse.Namespace(**{**vars(args), "seed": seed})
    train_x, train_y, target_x, target_y, info = load_features(args)
    problem = ConvexProblem(train_x, train_y, target_x, target_y, n_classes=10, l2=args.l2)
    full = problem.fit()
    info["head"] = {
        "l2": args.l2,
        "n_params": int(full.weight.size + full.bias.size),
        "train_accuracy": float(((train_x @ full.weight.T + full.bias).argmax(1) == train_y).mean()),
        "target_accuracy": float(((target_x @ full.weight.T + full.bias).argmax(1) == target_y).mean()),
        "target_loss": float(problem.target_losses(full).mean()),
    }
    logger.info("seed %d: features %s, head %s", seed, info.get("proxy"), info["head"])

    keep = random_subsets(len(train_y), args.subsets, args.fraction, seed=seed)
    actual = timed("subset retraining", lambda: problem.retrain_target_losses(keep, init=full))
    loo_rows = np.random.default_rng(seed).choice(len(train_y), size=args.loo_rows, replace=False)
    loo = timed("leave-one-out retraining", lambda: problem.leave_one_out_harm(loo_rows))
    scored = score_methods(problem, args)

    methods: dict[str, dict[str, float]] = {}
    for name, entry in scored.items():
        methods[name] = {
            "lds_mean_target": linear_datamodeling_score(entry["harm"], keep, actual.mean(1)),
            "lds_per_target": linear_datamodeling_score(entry["matrix"], keep, actual),
            "spearman_vs_loo": float(scipy.stats.spearmanr(entry["harm"][loo_rows], loo).statistic),
            "seconds": round(float(entry["seconds"]), 3),
        }
        logger.info("seed %d %-12s %s", seed, name, methods[name])
    mean_losses = actual.mean(1)
    info["subset_target_loss_range"] = [float(mean_losses.min()), float(mean_losses.max())]
    return {"data": info, "methods": methods}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--features", choices=("proxy", "pixels"), default="proxy")
    parser.add_argument("--epochs", type=int, default=6, help="proxy training epochs (brief on purpose)")
    parser.add_argument("--train-size", type=int, default=900)
    parser.add_argument("--target-size", type=int, default=300)
    parser.add_argument("--l2", type=float, default=0.01)
    parser.add_argument("--subsets", type=int, default=50)
    parser.add_argument("--fraction", type=float, default=0.5)
    parser.add_argument("--loo-rows", type=int, default=100)
    parser.add_argument("--knn-k", type=int, default=10)
    parser.add_argument("--seeds", type=int, nargs="+", default=[0, 1, 2], help="one full run per seed")
    parser.add_argument("--out", default=str(REPO / "benchmarks" / "results" / "lds_digits.json"))
    args = parser.parse_args()
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(name)s: %(message)s")
    started = time.perf_counter()
    runs = {str(seed): run_seed(args, seed) for seed in args.seeds}
    summary_rows: dict[str, dict[str, float]] = {}
    for name in runs[str(args.seeds[0])]["methods"]:
        row: dict[str, float] = {}
        for metric in ("lds_mean_target", "lds_per_target", "spearman_vs_loo"):
            values = [run["methods"][name][metric] for run in runs.values()]
            row[f"{metric}_mean"] = round(float(np.mean(values)), 4)
            row[f"{metric}_min"] = round(float(np.min(values)), 4)
        summary_rows[name] = row
        logger.info("%-12s %s", name, row)
    summary = {
        "settings": {k: v for k, v in vars(args).items() if k != "out"},
        "lds_definition": "Spearman over subsets of (sum of harm over kept rows) vs retrained target loss; "
        "lds_mean_target on the mean target loss, lds_per_target averaged over target rows (Park et al.)",
        "methods": summary_rows,
        "runs": runs,
        "meta": {
            "seconds_total": round(time.perf_counter() - started, 1),
            "torch": torch.__version__,
            "python": platform.python_version(),
            "threads": torch.get_num_threads(),
            "omp_num_threads": os.environ.get("OMP_NUM_THREADS"),
        },
    }
    Path(args.out).parent.mkdir(parents=True, exist_ok=True)
    Path(args.out).write_text(json.dumps(summary, indent=2, sort_keys=True) + "\n", encoding="utf-8")
    logger.info("wrote %s in %.0f s", args.out, time.perf_counter() - started)


if __name__ == "__main__":
    main()
