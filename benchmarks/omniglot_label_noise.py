"""Mislabel detection with 10% of images moved to another class: auditor (one audit) vs cleanlab (5 trainings).

Datasets: Omniglot small1 (`--dataset omniglot`, 2,720 images, 136 characters; the default), scikit-learn's
digits (`digits`, 1,797 8x8 images written as PNGs) and the shared mini-ImageNet subset (`mini-imagenet`, 2,016
84x84 colour images, 100 classes, written as class folders). Both tools get the same images (auditor's
preprocessed pixels), the same proxy architecture (the run's own: Conv-4 with BatchNorm for grey/small images,
the small ResNet for colour) and the same training settings; cleanlab gets 5-fold out-of-fold probabilities
(5 trainings), auditor runs its normal audit. Baselines from inside our run: TracIn self-influence over the
checkpoints (equal to Captum TracInCP's, benchmarks/tracin_speed.py), loss over checkpoints, out-of-fold loss,
final loss. Writes benchmarks/results/omniglot_label_noise.json (or mislabels_<dataset>.json).

    .venv/bin/python benchmarks/omniglot_label_noise.py [--dataset omniglot] [--seeds 0 1 2] [--epochs 20]
"""

from __future__ import annotations

import argparse
import json
import logging
import os
import tempfile
import time
import zipfile
from pathlib import Path

import numpy as np
import torch
from sklearn.metrics import average_precision_score, roc_auc_score
from sklearn.model_selection import StratifiedKFold

import auditor
from auditor.data.planting import plant_label_noise_in_folder
from auditor.models.fitting import ModelSpec
from auditor.models.train import TrainSettings, predict, train_model

logger = logging.getLogger("benchmarks.omniglot_label_noise")
REPO = Path(__file__).resolve().parents[1]
SHARED_DATA = Path(os.environ.get("AUDITOR_SHARED_DATA", REPO.parent / "shared" / "data"))
ZIP = SHARED_DATA / "omniglot" / "images_background_small1.zip"
MINI_IMAGENET = SHARED_DATA / "mini_imagenet"
DATASETS = ("omniglot", "digits", "mini-imagenet")


def _quality(truth: np.ndarray, score: np.ndarray, flags: np.ndarray | None = None) -> dict[str, float]:
    out = {"auroc": float(roc_auc_score(truth, score)), "ap": float(average_precision_score(truth, score))}
    if flags is not None:
        out["n_flagged"] = int(flags.sum())
        out["precision"] = float((flags & truth).sum() / max(flags.sum(), 1))
        out["recall"] = float((flags & truth).sum() / truth.sum())
    return out


def run_cleanlab(run_dir: Path, labels: np.ndarray, truth: np.ndarray, *, epochs: int, seed: int) -> dict[str, object]:
    """5-fold out-of-fold probabilities from Conv-4 on auditor's pixels, then cleanlab's scores and filter."""
    from cleanlab.filter import find_label_issues
    from cleanlab.rank import get_label_quality_scores

    pixels = torch.from_numpy(np.load(run_dir / "pixels.npy"))
    targets = torch.from_numpy(labels)
    spec = ModelSpec(**json.loads((run_dir / "model" / "models.json").read_text())["spec"])
    probs = np.zeros((len(labels), spec.n_classes))
    start = time.perf_counter()
    folds = StratifiedKFold(n_splits=5, shuffle=True, random_state=seed).split(np.zeros(len(labels)), labels)
    for k, (train_rows, held_out) in enumerate(folds):
        torch.manual_seed(seed + k)
        model = spec.build()
        settings = TrainSettings(epochs=epochs, batch_size=64, learning_rate=0.01, checkpoints=1, seed=seed + k)
        train_model(model, pixels[train_rows], targets[train_rows], settings, progress=False)
        probs[held_out], _ = predict(model, pixels[held_out])
    scores = get_label_quality_scores(labels, probs)
    issues = find_label_issues(labels, probs)
    seconds = time.perf_counter() - start
    return {"wall_s": seconds, "trainings": 5, **_quality(truth, 1 - scores, issues)}


def write_dataset(dataset: str, root: Path) -> tuple[Path, str, int]:
    """Write `dataset` under `root` as folders; returns (data folder, auditor --format, class folder depth)."""
    if dataset == "omniglot":
        with zipfile.ZipFile(ZIP) as archive:
            archive.extractall(root)
        return root / "images_background_small1", "omniglot", 2
    data = root / dataset
    if dataset == "digits":
        from PIL import Image
        from sklearn.datasets import load_digits

        digits = load_digits()
        for index, (image, label) in enumerate(zip(digits.images, digits.target, strict=True)):
            path = data / str(label) / f"{index:04d}.png"
            path.parent.mkdir(parents=True, exist_ok=True)
            Image.fromarray((image * 255 / 16).astype(np.uint8), mode="L").save(path)
        return data, "imagefolder", 1
    import pandas as pd

    for split in ("train", "val", "test"):
        for row in pd.read_csv(MINI_IMAGENET / f"{split}.csv").itertuples():
            path = data / str(row.label) / str(row.filename)
            path.parent.mkdir(parents=True, exist_ok=True)
            os.symlink(MINI_IMAGENET / "images" / str(row.filename), path)
    return data, "imagefolder", 1


def run_seed(dataset: str, seed: int, epochs: int, workdir: Path) -> dict[str, object]:
    """Plant noise with `seed`, audit it, run cleanlab on the same data; return all figures."""
    data, data_format, depth = write_dataset(dataset, workdir / f"{dataset}-noisy-{seed}")
    moves = plant_label_noise_in_folder(data, rate=0.10, seed=seed, class_depth=depth)
    moved = {m["relpath"] for m in moves}
    start = time.perf_counter()
    result = auditor.audit(
        str(data), format=data_format, out=str(workdir / f"run-{seed}"), epochs=epochs, seed=seed, fiftyone=False
    )
    audit_s = time.perf_counter() - start
    samples = result.samples
    truth = samples["relpath"].isin(moved).to_numpy()
    suggested = dict(zip(samples["relpath"], samples["suggested_label"], strict=True))
    ours = {
        "wall_s": audit_s,
        "trainings": 3,
        **_quality(truth, samples["label_issue_score"].to_numpy(), samples["is_label_issue"].to_numpy(bool)),
        "suggested_label_correct": float(np.mean([suggested[m["relpath"]] == m["true_label"] for m in moves])),
    }
    baselines = {
        name: _quality(truth, samples[name].to_numpy())
        for name in ("self_influence", "dynamics_loss", "oof_loss", "loss")
    }
    classes = json.loads((workdir / f"run-{seed}" / "classes.json").read_text())
    labels = samples["label"].map({c: i for i, c in enumerate(classes)}).to_numpy(np.int64)
    cleanlab = run_cleanlab(workdir / f"run-{seed}", labels, truth, epochs=epochs, seed=seed)
    logger.info("seed %d: auditor %s | cleanlab %s", seed, ours, cleanlab)
    return {
        "seed": seed,
        "n_samples": len(samples),
        "n_moved": len(moves),
        "auditor": ours,
        "auditor_baselines": baselines,
        "cleanlab": cleanlab,
    }


DESCRIPTIONS = {
    "omniglot": "omniglot images_background_small1, 10% of images moved to another character",
    "digits": "scikit-learn digits (1,797 8x8), 10% of images moved to another digit",
    "mini-imagenet": "mini-ImageNet subset (2,016 84x84, 100 classes), 10% of images moved to another class",
}


def write_summary(args: argparse.Namespace, runs: list[dict[str, object]], *, complete: bool) -> None:
    summary = {
        "dataset": DESCRIPTIONS[args.dataset],
        "model": f"the run's proxy (models.json spec), {args.epochs} epochs, same settings for both tools",
        "command": f"OMP_NUM_THREADS=1 .venv/bin/python benchmarks/omniglot_label_noise.py --dataset {args.dataset} "
        "--seeds " + " ".join(str(s) for s in args.seeds),
        "complete": complete,
        "mean": {
            tool: {
                key: float(np.mean([run[tool][key] for run in runs]))  # type: ignore[index]
                for key in ("auroc", "ap", "precision", "recall", "wall_s")
            }
            for tool in ("auditor", "cleanlab")
        },
        "runs": runs,
    }
    Path(args.out).write_text(json.dumps(summary, indent=2, sort_keys=True) + "\n", encoding="utf-8")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--dataset", choices=DATASETS, default="omniglot")
    parser.add_argument("--seeds", type=int, nargs="+", default=[0])
    parser.add_argument("--epochs", type=int, default=20)
    parser.add_argument("--out", default=None, help="default: omniglot_label_noise.json / mislabels_<dataset>.json")
    args = parser.parse_args()
    if args.out is None:
        name = "omniglot_label_noise" if args.dataset == "omniglot" else f"mislabels_{args.dataset}"
        args.out = str(REPO / "benchmarks" / "results" / f"{name}.json")
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(name)s: %(message)s")
    runs: list[dict[str, object]] = []
    with tempfile.TemporaryDirectory() as tmp:
        for seed in args.seeds:
            runs.append(run_seed(args.dataset, seed, args.epochs, Path(tmp)))
            write_summary(args, runs, complete=len(runs) == len(args.seeds))  # a killed run keeps its seeds
    logger.info("Wrote %s", args.out)


if __name__ == "__main__":
    main()
