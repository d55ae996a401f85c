"""Every `--method`, TRAK (`traker`) and the label-issue score on Omniglot small1 with 10% of images moved, checked
by retraining: removal of the top 5% vs a random 5% (every seed) and the LDS over random halves (--lds-seeds).

Per seed: move 10% of the images to another character (as omniglot_label_noise.py), run the audit (Conv-4 with
BatchNorm, --epochs, 5 checkpoints, default --method tracin); from the main model's stored checkpoints compute
the harm of every training image on the validation loss with each auditor method (auditor.influence.methods),
timed, and with traker 0.3.2 (proj 2048, the same 5 checkpoints; harm = minus the mean TRAK score over the
validation images) on --traker-seeds. Then `check_by_retraining` (the code behind `auditor eval`) retrains the
same architecture, seed and schedule without each column's top 5%, without 2 random 5%s, and on --subsets random
halves for the LDS. Kronfluence 1.0.1 (EK-FAC, final checkpoint) runs beside traker. Also reports each
column's AUROC / AP for the moved images among the training rows.
One CPU thread is enough; writes benchmarks/results/influence_eval.json.

    OMP_NUM_THREADS=1 .venv/bin/python benchmarks/influence_eval.py --seeds 0 1 2 --lds-seeds 0 --traker-seeds 0
"""

from __future__ import annotations

import argparse
import json
import logging
import os
import sys
import tempfile
import time
import zipfile
from pathlib import Path
from typing import Any

import numpy as np
import torch
from sklearn.metrics import average_precision_score, roc_auc_score

import auditor
from auditor.data.planting import plant_label_noise_in_folder
from auditor.influence.evaluate import RetrainCheckSettings, check_by_retraining
from auditor.influence.methods import HarmInputs, compute_harm
from auditor.models.fitting import MAIN_MODEL, load_trained
from auditor.models.train import TrainSettings, to_float
from auditor.pipeline import Auditor
from auditor.schema import LABEL_ISSUE_SCORE, SPLIT
from auditor.store import RunStore

logger = logging.getLogger("benchmarks.influence_eval")
REPO = Path(__file__).resolve().parents[1]
# Kronfluence's wheel ships a top-level `tests` package that would shadow this repository's tests in the venv,
# so it is installed apart: `pip install --no-deps --target .peers kronfluence==1.0.1` (README "Benchmarks").
PEERS = REPO / ".peers"
if PEERS.is_dir():
    sys.path.append(str(PEERS))
SHARED_DATA = Path(os.environ.get("AUDITOR_SHARED_DATA", REPO.parent / "shared" / "data"))
ZIP = SHARED_DATA / "omniglot" / "images_background_small1.zip"
# if-exact: the head of Conv-4 on Omniglot small1 has 64 x ~300 + ~300 parameters (a 20k x 20k Hessian);
# if-lissa: its recursion depth grows as 1 / damping (minutes here); both are covered by the oracle tests.
METHODS = ("tracin", "tracin-normalized", "trak", "if-cg", "if-ekfac", "knn-shapley", "loss", "grad-norm")


def _quality(truth: np.ndarray, score: np.ndarray) -> dict[str, float]:
    score = np.nan_to_num(score, nan=-np.inf)
    return {"auroc": float(roc_auc_score(truth, score)), "ap": float(average_precision_score(truth, score))}


def run_traker(
    model: torch.nn.Module,
    checkpoints: list[dict[str, torch.Tensor]],
    train: tuple[torch.Tensor, torch.Tensor],
    val: tuple[torch.Tensor, torch.Tensor],
    *,
    proj_dim: int,
    seed: int,
    scratch: Path,
    batch_size: int = 64,
) -> np.ndarray:
    """traker 0.3.2 on CPU: train x validation TRAK scores; returns minus their mean over validation (harm).

    Same workarounds as benchmarks/tracin_speed.py: a fresh save_dir with load_from_save_dir=True, the projection
    matrix regenerated before scoring when finalize_features() freed it, float32 (no half precision on CPU).
    """
    from trak import TRAKer
    from trak.projectors import BasicProjector, ProjectionType

    n_params = sum(p.numel() for p in model.parameters())
    projector = BasicProjector(
        grad_dim=n_params,
        proj_dim=proj_dim,
        seed=seed,
        proj_type=ProjectionType.normal,
        device="cpu",
        block_size=proj_dim,
        dtype=torch.float32,
    )
    traker = TRAKer(
        model=model,
        task="image_classification",
        train_set_size=len(train[1]),
        save_dir=str(scratch),
        load_from_save_dir=True,
        device="cpu",
        projector=projector,
        use_half_precision=False,
        logging_level=logging.WARNING,
    )

    def batches(pixels: torch.Tensor, targets: torch.Tensor) -> list[tuple[torch.Tensor, torch.Tensor]]:
        x = to_float(pixels)
        return [(x[s : s + batch_size], targets[s : s + batch_size]) for s in range(0, len(targets), batch_size)]

    for model_id, state in enumerate(checkpoints):
        traker.load_checkpoint(state, model_id=model_id)
        for batch in batches(*train):
            traker.featurize(batch=batch, num_samples=len(batch[1]))
    traker.finalize_features()
    for model_id, state in enumerate(checkpoints):
        traker.start_scoring_checkpoint(exp_name="val", checkpoint=state, model_id=model_id, num_targets=len(val[1]))
        if projector.num_blocks == 1 and not projector.proj_matrix_available and projector.model_id == model_id:
            projector.generate_sketch_matrix(projector.generator_states[0])
        for batch in batches(*val):
            traker.score(batch=batch, num_samples=len(batch[1]))
    scores = np.asarray(traker.finalize_scores(exp_name="val"), dtype=np.float64)  # [n_train, n_val]
    return -scores.mean(axis=1)


def run_kronfluence(
    model: torch.nn.Module,
    state: dict[str, torch.Tensor],
    train: tuple[torch.Tensor, torch.Tensor],
    val: tuple[torch.Tensor, torch.Tensor],
    *,
    scratch: Path,
    batch_size: int = 64,
) -> np.ndarray:
    """Kronfluence 1.0.1 EK-FAC influence of every training image on the validation loss, final checkpoint.

    Kronfluence's pairwise score is g_val^T (G + damping)^-1 g_train: positive = up-weighting the training image
    lowers that validation loss (helpful), so harm = minus its mean over the validation images. Its own defaults
    (sampled-label Fisher, heuristic damping); Conv2d and Linear modules (BatchNorm is not tracked).
    """
    from kronfluence.analyzer import Analyzer, prepare_model
    from kronfluence.arguments import FactorArguments
    from kronfluence.task import Task
    from torch.utils.data import TensorDataset

    class ClassificationTask(Task):  # type: ignore[misc]
        def compute_train_loss(self, batch: Any, model: torch.nn.Module, sample: bool = False) -> torch.Tensor:
            inputs, labels = batch
            logits = model(inputs)
            if sample:
                with torch.no_grad():
                    labels = torch.multinomial(torch.softmax(logits.detach(), dim=-1), 1).flatten()
            return torch.nn.functional.cross_entropy(logits, labels, reduction="sum")

        def compute_measurement(self, batch: Any, model: torch.nn.Module) -> torch.Tensor:
            inputs, labels = batch
            return torch.nn.functional.cross_entropy(model(inputs), labels, reduction="sum")

    model.load_state_dict(state)
    model.eval()
    task = ClassificationTask()
    model = prepare_model(model, task)
    analyzer = Analyzer(
        analysis_name="bench", model=model, task=task, cpu=True, disable_tqdm=True, output_dir=str(scratch)
    )
    train_set = TensorDataset(to_float(train[0]), train[1])
    val_set = TensorDataset(to_float(val[0]), val[1])
    analyzer.fit_all_factors(
        "ekfac", dataset=train_set, per_device_batch_size=batch_size, factor_args=FactorArguments(strategy="ekfac")
    )
    analyzer.compute_pairwise_scores(
        "val",
        factors_name="ekfac",
        query_dataset=val_set,
        train_dataset=train_set,
        per_device_query_batch_size=batch_size,
        per_device_train_batch_size=batch_size,
    )
    scores = analyzer.load_pairwise_scores("val")["all_modules"]  # [n_val, n_train]
    return np.asarray(-scores.double().mean(0).numpy())


def run_seed(seed: int, args: argparse.Namespace, workdir: Path) -> dict[str, Any]:
    root = workdir / f"omniglot-noisy-{seed}"
    with zipfile.ZipFile(ZIP) as archive:
        archive.extractall(root)
    data = root / "images_background_small1"
    moves = plant_label_noise_in_folder(data, rate=0.10, seed=seed, class_depth=2)
    moved = {m["relpath"] for m in moves}
    start = time.perf_counter()
    run_dir = workdir / f"run-{seed}"
    result = auditor.audit(
        str(data), format="omniglot", out=str(run_dir), epochs=args.epochs, seed=seed, fiftyone=False, progress=False
    )
    audit_s = time.perf_counter() - start
    config = Auditor(auditor.AuditConfig(data=str(data), format="omniglot", out=str(run_dir))).config
    samples, pixels, targets, _ = Auditor(config)._inputs()
    spec, trained = load_trained(RunStore(run_dir))
    main = next(t for t in trained if t.name == MAIN_MODEL)
    train_rows = main.train_rows
    val_rows = np.flatnonzero(samples[SPLIT].to_numpy() == "val")
    truth = samples["relpath"].isin(moved).to_numpy()[train_rows]
    inputs = HarmInputs(
        network=spec.build(),
        main=main,
        pixels=pixels[train_rows],
        targets=targets[train_rows],
        target_sets={"val": (pixels[val_rows], targets[val_rows])},
        batch_size=64,
        seed=seed,
    )
    columns: dict[str, np.ndarray] = {}
    seconds: dict[str, float] = {}
    for method in METHODS:
        start = time.perf_counter()
        columns[method] = compute_harm(method, inputs)["val"]
        seconds[method] = time.perf_counter() - start
        logger.info("seed %d: %s in %.1f s", seed, method, seconds[method])
    stored = result.samples.set_index("sample_id")
    harm_score = stored["harm_score"].reindex(samples["sample_id"]).to_numpy()[train_rows]
    same = float(np.max(np.abs(harm_score - columns["tracin"])) / max(np.max(np.abs(harm_score)), 1e-30))
    columns[LABEL_ISSUE_SCORE] = stored[LABEL_ISSUE_SCORE].reindex(samples["sample_id"]).to_numpy()[train_rows]
    if seed in args.traker_seeds:
        start = time.perf_counter()
        with tempfile.TemporaryDirectory(dir=workdir) as scratch:
            columns["traker"] = run_traker(
                spec.build(),
                [c.state for c in main.checkpoints],
                (pixels[train_rows], targets[train_rows]),
                (pixels[val_rows], targets[val_rows]),
                proj_dim=args.proj_dim,
                seed=seed,
                scratch=Path(scratch) / "trak",
            )
        seconds["traker"] = time.perf_counter() - start
        logger.info("seed %d: traker in %.1f s", seed, seconds["traker"])
        start = time.perf_counter()
        with tempfile.TemporaryDirectory(dir=workdir) as scratch:
            columns["kronfluence"] = run_kronfluence(
                spec.build(),
                main.checkpoints[-1].state,
                (pixels[train_rows], targets[train_rows]),
                (pixels[val_rows], targets[val_rows]),
                scratch=Path(scratch),
            )
        seconds["kronfluence"] = time.perf_counter() - start
        logger.info("seed %d: kronfluence in %.1f s", seed, seconds["kronfluence"])
    detection = {name: _quality(truth, values) for name, values in columns.items()}
    check = check_by_retraining(
        spec.build,
        TrainSettings(epochs=args.epochs, batch_size=64, learning_rate=0.01, checkpoints=1, seed=seed),
        pixels,
        targets,
        train_rows,
        val_rows,
        columns,
        RetrainCheckSettings(subsets=args.subsets if seed in args.lds_seeds else 0, seed=seed),
    )
    logger.info("seed %d: removal %s; lds %s", seed, check["removal"], check.get("lds"))
    return {
        "seed": seed,
        "n_train": len(train_rows),
        "n_val": len(val_rows),
        "n_moved_in_train": int(truth.sum()),
        "audit_s": audit_s,
        "seconds": seconds,
        "tracin_equals_harm_score_max_rel_diff": same,
        "mislabel_detection_on_train_rows": detection,
        "check": check,
    }


def summarize(runs: list[dict[str, Any]]) -> dict[str, Any]:
    names = list(runs[0]["check"]["removal"])
    removal = {
        name: {
            "loss_drop_mean": float(np.mean([r["check"]["removal"][name]["loss_drop"] for r in runs])),
            "loss_drop_per_seed": [r["check"]["removal"][name]["loss_drop"] for r in runs],
            "beats_random_seeds": sum(
                r["check"]["removal"][name]["loss_drop"] > r["check"]["removal"]["random"]["loss_drop"] for r in runs
            ),
        }
        for name in names
        if all(name in r["check"]["removal"] for r in runs)
    }
    lds = {r["seed"]: r["check"]["lds"] for r in runs if "lds" in r["check"]}
    seconds = {
        name: float(np.mean([r["seconds"][name] for r in runs if name in r["seconds"]])) for name in runs[0]["seconds"]
    }
    return {"removal": removal, "lds_by_seed": lds, "mean_seconds": seconds, "n_seeds": len(runs)}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--seeds", type=int, nargs="+", default=[0, 1, 2])
    parser.add_argument("--lds-seeds", type=int, nargs="*", default=[0])
    parser.add_argument("--traker-seeds", "--peer-seeds", type=int, nargs="*", default=[0])
    parser.add_argument("--subsets", type=int, default=16)
    parser.add_argument("--epochs", type=int, default=20)
    parser.add_argument("--proj-dim", type=int, default=2048)
    parser.add_argument("--out", default=str(REPO / "benchmarks" / "results" / "influence_eval.json"))
    parser.add_argument("--keep", default=None, help="keep the data and run directories here (default: deleted)")
    args = parser.parse_args()
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(name)s: %(message)s")
    runs = []
    with tempfile.TemporaryDirectory() as tmp:
        workdir = Path(args.keep) if args.keep else Path(tmp)
        workdir.mkdir(parents=True, exist_ok=True)
        for seed in args.seeds:
            runs.append(run_seed(seed, args, workdir))
            partial = {"runs": runs, "summary": summarize(runs), "complete": False}
            Path(args.out).write_text(json.dumps(partial, indent=2, sort_keys=True) + "\n", encoding="utf-8")
    out = {
        "command": "OMP_NUM_THREADS=1 .venv/bin/python benchmarks/influence_eval.py --seeds "
        + " ".join(map(str, args.seeds))
        + " --lds-seeds "
        + " ".join(map(str, args.lds_seeds))
        + " --traker-seeds "
        + " ".join(map(str, args.traker_seeds)),
        "dataset": "omniglot images_background_small1, 10% of images moved to another character",
        "model": f"Conv-4 with BatchNorm, {args.epochs} epochs, 5 checkpoints; retrained with the same seed "
        "and schedule for every removal / subset",
        "threads": torch.get_num_threads(),
        "complete": True,
        "summary": summarize(runs),
        "runs": runs,
    }
    Path(args.out).write_text(json.dumps(out, indent=2, sort_keys=True) + "\n", encoding="utf-8")
    logger.info("Wrote %s", args.out)


if __name__ == "__main__":
    main()
