"""TracIn self-influence wall time over K checkpoints: ours vs Captum TracInCP vs TRAK vs a forward+backward bound.

One Conv-4 (BatchNorm, 136 classes) is trained briefly on Omniglot small1 (28x28 greyscale, label =
`<alphabet>/<character>`) with the project's training code, keeping K checkpoints; every method then scores
the same rows from the same checkpoint files, each in its own child process (so that peak RSS, VmHWM from
/proc/self/status, is per method):

- ours: `auditor.influence.tracin.compute_tracin` (hook-path per-sample gradients, as the `score` stage);
- captum_fastest: `captum.influence.TracInCP(sample_wise_grads_per_batch=True)` with
  CrossEntropyLoss(reduction="sum"), `self_influence(outer_loop_by_checkpoints=True)`;
- captum_default: `TracInCP` defaults (one backward per sample, reduction="none"), `self_influence()`;
- traker: TRAK 0.3.2 on CPU (featurize + finalize_features + score + finalize_scores, train set scored
  against itself; self-score = diagonal);
- forward_backward: K plain passes of batch forward + `loss.backward()` (eval mode): the lower bound.

Captum's checkpoint loader returns each checkpoint's learning rate, so Captum computes the same
sum_k lr_k |g_k(z)|^2 as ours (captum_fastest skips BatchNorm weights: its sample-wise trick only knows
Conv2d and Linear). Writes benchmarks/results/tracin_speed.json. Only run the full benchmark on an
otherwise idle machine; `--limit 256` is a quick check.

    OMP_NUM_THREADS=1 .venv/bin/python benchmarks/tracin_speed.py [--limit N] [--checkpoints 5] [--batch-size 64]
        [--skip traker,captum_default] [--repeats 1]
"""

from __future__ import annotations

import argparse
import importlib.metadata
import json
import logging
import os
import platform
import resource
import shutil
import subprocess
import sys
import tempfile
import time
import traceback
import warnings
from collections.abc import Callable
from functools import partial
from pathlib import Path
from typing import Any

import numpy as np
import torch
from scipy.stats import spearmanr
from torch import nn
from torch.utils.data import TensorDataset

from auditor.influence.tracin import compute_tracin
from auditor.models.architectures import Conv4
from auditor.models.train import Checkpoint, TrainSettings, to_float, train_model

logger = logging.getLogger("benchmarks.tracin_speed")
REPO = Path(__file__).resolve().parents[1]
SHARED_DATA = Path(os.environ.get("AUDITOR_SHARED_DATA", REPO.parent / "shared" / "data"))
ZIP = SHARED_DATA / "omniglot" / "images_background_small1.zip"
METHODS = ("ours", "captum_fastest", "captum_default", "traker", "forward_backward")
PEERS = {"captum_fastest": "captum", "captum_default": "captum", "traker": "traker"}
DESCRIPTIONS = {
    "ours": "auditor.influence.tracin.compute_tracin (per-sample gradients by layer hooks, all parameters)",
    "captum_fastest": "captum TracInCP, sample_wise_grads_per_batch=True, CrossEntropyLoss(reduction='sum'), "
    "layers=None, self_influence(outer_loop_by_checkpoints=True); Conv2d + Linear parameters only "
    "(Captum's sample-wise trick silently skips BatchNorm weights)",
    "captum_default": "captum TracInCP defaults: sample_wise_grads_per_batch=False (one autograd.grad per sample), "
    "CrossEntropyLoss(reduction='none'), layers=None, self_influence() (outer loop over batches); all parameters",
    "traker": "traker 0.3.2 TRAKer(task='image_classification', device='cpu'), BasicProjector (normal), "
    "float32; featurize + finalize_features + score + finalize_scores; diagonal of the train x train scores",
    "forward_backward": "K x (eval-mode forward + mean cross-entropy backward per batch): the lower bound",
}


def _peak_rss_mb() -> float:
    """Peak resident set size of this process so far, in MiB.

    VmHWM (the high-water mark of this process's own memory map) where /proc exists: `ru_maxrss` keeps the
    parent's peak across fork + exec on Linux, so in a child it would report at least the parent's peak.
    """
    try:
        for line in Path("/proc/self/status").read_text(encoding="utf-8").splitlines():
            if line.startswith("VmHWM:"):
                return int(line.split()[1]) / 1024
    except OSError:
        pass
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024  # KiB on Linux


def _version(package: str) -> str | None:
    try:
        return importlib.metadata.version(package)
    except importlib.metadata.PackageNotFoundError:
        return None


# --- data, model and checkpoints (parent process) -------------------------------------------------------------


def prepare(workdir: Path, args: argparse.Namespace) -> dict[str, Any]:
    """Load Omniglot, train Conv-4 with K checkpoints, save data and checkpoint files into `workdir`."""
    sys.path.insert(0, str(Path(__file__).resolve().parent))
    from fewshot_omniglot import load_omniglot  # a sibling script, not a package

    start = time.perf_counter()
    images, labels = load_omniglot(ZIP, 28)
    classes = sorted(set(labels))  # class indices over all 136 characters, before --limit
    index = {name: i for i, name in enumerate(classes)}
    targets = torch.tensor([index[name] for name in labels], dtype=torch.long)
    # The project's pixel convention: uint8, converted by `to_float` (strokes = 255 -> +1).
    pixels = torch.from_numpy(np.rint(images * 255.0).astype(np.uint8))
    if args.limit is not None:
        pixels, targets = pixels[: args.limit], targets[: args.limit]
    load_s = time.perf_counter() - start
    logger.info("loaded %d images (%d classes in the model) in %.1fs", len(targets), len(classes), load_s)

    torch.manual_seed(args.seed)
    model = Conv4(1, len(classes), image_size=28)
    settings = TrainSettings(
        epochs=args.epochs,
        batch_size=args.batch_size,
        learning_rate=args.learning_rate,
        checkpoints=args.checkpoints,
        seed=args.seed,
    )
    start = time.perf_counter()
    trained = train_model(model, pixels, targets, settings, desc="train conv4", progress=False)
    train_s = time.perf_counter() - start
    torch.save({"pixels": pixels, "targets": targets, "n_classes": len(classes)}, workdir / "data.pt")
    for k, checkpoint in enumerate(trained.checkpoints):
        torch.save(
            {"state": checkpoint.state, "learning_rate": checkpoint.learning_rate, "epoch": checkpoint.epoch},
            workdir / f"ckpt_{k:02d}.pt",
        )
    return {
        "n_samples": len(targets),
        "n_classes_model": len(classes),
        "n_classes_present": len(set(targets.tolist())),
        "n_parameters": sum(p.numel() for p in model.parameters()),
        "load_seconds": load_s,
        "train_seconds": train_s,
        "train_settings": vars(settings),
        "train_log_last_epoch": trained.log[-1],
        "checkpoints": [{"epoch": c.epoch, "learning_rate": c.learning_rate} for c in trained.checkpoints],
    }


# --- methods (child processes) --------------------------------------------------------------------------------

Runner = Callable[[nn.Module, torch.Tensor, torch.Tensor, list[Path], argparse.Namespace, Path], dict[str, Any]]


def _load_checkpoint(path: Path) -> Checkpoint:
    saved = torch.load(path, weights_only=True)
    return Checkpoint(epoch=int(saved["epoch"]), learning_rate=float(saved["learning_rate"]), state=saved["state"])


def run_ours(
    model: nn.Module,
    pixels: torch.Tensor,
    targets: torch.Tensor,
    paths: list[Path],
    args: argparse.Namespace,
    scratch: Path,
) -> dict[str, Any]:
    checkpoints = [_load_checkpoint(path) for path in paths]
    scored = compute_tracin(model, checkpoints, pixels, targets, batch_size=args.batch_size, progress=False)
    return {"scores": scored.self_influence}


def run_captum(
    model: nn.Module,
    pixels: torch.Tensor,
    targets: torch.Tensor,
    paths: list[Path],
    args: argparse.Namespace,
    scratch: Path,
    *,
    fastest: bool,
) -> dict[str, Any]:
    from captum.influence import TracInCP

    def load(network: nn.Module, path: str) -> float:
        saved = torch.load(path, weights_only=True)
        network.load_state_dict(saved["state"])
        network.eval()  # BatchNorm on running statistics, as ours and the `score` stage
        return float(saved["learning_rate"])

    dataset = TensorDataset(to_float(pixels), targets)
    tracin = TracInCP(
        model,
        dataset,
        [str(path) for path in paths],
        checkpoints_load_func=load,
        layers=None,
        loss_fn=nn.CrossEntropyLoss(reduction="sum" if fastest else "none"),
        batch_size=args.batch_size,
        sample_wise_grads_per_batch=fastest,
    )
    # The default outer loop is over batches (every checkpoint reloaded per batch); by checkpoints loads each once.
    scores = tracin.self_influence(outer_loop_by_checkpoints=fastest)
    return {"scores": scores.detach().double().numpy()}


def run_traker(
    model: nn.Module,
    pixels: torch.Tensor,
    targets: torch.Tensor,
    paths: list[Path],
    args: argparse.Namespace,
    scratch: Path,
) -> dict[str, Any]:
    """TRAK on CPU with two workarounds for 0.3.2 (see module notes in the JSON's `traker_workarounds`)."""
    from trak import TRAKer
    from trak.projectors import BasicProjector, ProjectionType

    n = len(targets)
    n_params = sum(p.numel() for p in model.parameters())
    projector = BasicProjector(
        grad_dim=n_params,
        proj_dim=args.proj_dim,
        seed=args.seed,
        proj_type=ProjectionType.normal,  # TRAKer's own CPU choice (no float16/bernoulli on CPU)
        device="cpu",
        block_size=args.trak_block_size,
        dtype=torch.float32,
    )
    traker = TRAKer(
        model=model,
        task="image_classification",
        train_set_size=n,
        save_dir=str(scratch),  # fresh folder: load_from_save_dir=True finds nothing old, and creates experiments.json
        load_from_save_dir=True,
        device="cpu",
        projector=projector,
        use_half_precision=False,
        lambda_reg=args.trak_lambda,
        logging_level=logging.WARNING,
    )
    x = to_float(pixels)
    states = [torch.load(path, weights_only=True)["state"] for path in paths]
    batches = [(x[s : s + args.batch_size], targets[s : s + args.batch_size]) for s in range(0, n, args.batch_size)]
    phases: dict[str, float] = {}
    start = time.perf_counter()
    for model_id, state in enumerate(states):
        traker.load_checkpoint(state, model_id=model_id)
        for batch in batches:
            traker.featurize(batch=batch, num_samples=len(batch[1]))
    phases["featurize"] = time.perf_counter() - start
    start = time.perf_counter()
    traker.finalize_features()
    phases["finalize_features"] = time.perf_counter() - start
    start = time.perf_counter()
    for model_id, state in enumerate(states):
        traker.start_scoring_checkpoint(exp_name="self", checkpoint=state, model_id=model_id, num_targets=n)
        # finalize_features() freed the projection matrix; with one block and an unchanged model id,
        # project() would use it without regenerating it (AttributeError). Regenerate it once here.
        if projector.num_blocks == 1 and not projector.proj_matrix_available and projector.model_id == model_id:
            projector.generate_sketch_matrix(projector.generator_states[0])
        for batch in batches:
            traker.score(batch=batch, num_samples=len(batch[1]))
    phases["score"] = time.perf_counter() - start
    start = time.perf_counter()
    scores = np.asarray(traker.finalize_scores(exp_name="self"), dtype=np.float64)
    phases["finalize_scores"] = time.perf_counter() - start
    return {"scores": np.diagonal(scores).copy(), "phases_seconds": phases}


def run_forward_backward(
    model: nn.Module,
    pixels: torch.Tensor,
    targets: torch.Tensor,
    paths: list[Path],
    args: argparse.Namespace,
    scratch: Path,
) -> dict[str, Any]:
    for path in paths:
        model.load_state_dict(torch.load(path, weights_only=True)["state"])
        model.eval()
        for start in range(0, len(targets), args.batch_size):
            model.zero_grad(set_to_none=True)
            logits = model(to_float(pixels[start : start + args.batch_size]))
            nn.functional.cross_entropy(logits, targets[start : start + args.batch_size]).backward()
    return {}


RUNNERS: dict[str, Runner] = {
    "ours": run_ours,
    "captum_fastest": partial(run_captum, fastest=True),
    "captum_default": partial(run_captum, fastest=False),
    "traker": run_traker,
    "forward_backward": run_forward_backward,
}


def worker(method: str, workdir: Path, args: argparse.Namespace) -> None:
    """Time one method `args.repeats` times in this process; write result_<method>.json (+ scores .npy)."""
    result: dict[str, Any] = {"method": method, "torch_threads": torch.get_num_threads()}
    warnings.filterwarnings("ignore", message="Input Tensor 0 did not already require gradients")  # Captum, benign
    try:
        if method in PEERS:  # import before timing, so that the import is not counted
            __import__("captum.influence" if PEERS[method] == "captum" else "trak")
        data = torch.load(workdir / "data.pt", weights_only=True)
        pixels, targets = data["pixels"], data["targets"]
        paths = sorted(workdir.glob("ckpt_*.pt"))
        seconds: list[float] = []
        result["rss_before_mb"] = _peak_rss_mb()
        out: dict[str, Any] = {}
        for repeat in range(args.repeats):
            torch.manual_seed(args.seed)
            model = Conv4(1, int(data["n_classes"]), image_size=28)
            scratch = workdir / f"scratch_{method}_{repeat}"
            scratch.mkdir()
            start = time.perf_counter()
            out = RUNNERS[method](model, pixels, targets, paths, args, scratch)
            seconds.append(time.perf_counter() - start)
            logger.info("%s repeat %d/%d: %.2fs", method, repeat + 1, args.repeats, seconds[-1])
        result.update(status="ok", seconds=min(seconds), seconds_each_repeat=seconds)
        if "phases_seconds" in out:
            result["phases_seconds_last_repeat"] = out["phases_seconds"]
        if "scores" in out:
            np.save(workdir / f"scores_{method}.npy", np.asarray(out["scores"], dtype=np.float64))
    except Exception as error:  # recorded in the JSON; the other methods still run
        logger.exception("%s failed", method)
        result.update(status="failed", error=f"{type(error).__name__}: {error}", traceback=traceback.format_exc())
    result["peak_rss_mb"] = _peak_rss_mb()
    (workdir / f"result_{method}.json").write_text(json.dumps(result), encoding="utf-8")


def run_method(method: str, workdir: Path, args: argparse.Namespace) -> dict[str, Any]:
    """Run `worker` for one method in a fresh Python process and read back its result."""
    peer = PEERS.get(method)
    if peer is not None and _version(peer) is None:
        return {"status": "failed", "error": f"{peer} is not installed (pip install it into .venv)"}
    command = [
        sys.executable,
        str(Path(__file__).resolve()),
        "--worker",
        method,
        "--workdir",
        str(workdir),
        "--batch-size",
        str(args.batch_size),
        "--repeats",
        str(args.repeats),
        "--seed",
        str(args.seed),
        "--proj-dim",
        str(args.proj_dim),
        "--trak-block-size",
        str(args.trak_block_size),
        "--trak-lambda",
        str(args.trak_lambda),
    ]
    logger.info("running %s in a child process", method)
    completed = subprocess.run(command, check=False, cwd=REPO)
    path = workdir / f"result_{method}.json"
    if not path.exists():
        return {"status": "failed", "error": f"worker exited with code {completed.returncode} and no result"}
    result: dict[str, Any] = json.loads(path.read_text(encoding="utf-8"))
    logger.info("%s: %s", method, {k: v for k, v in result.items() if k != "traceback"})
    return result


def compare(workdir: Path) -> dict[str, Any]:
    """Spearman (and relative differences) of each peer's self-influence against ours, when both ran."""
    path = workdir / "scores_ours.npy"
    if not path.exists():
        return {}
    ours = np.load(path)
    out: dict[str, Any] = {}
    for method in ("captum_fastest", "captum_default", "traker"):
        other_path = workdir / f"scores_{method}.npy"
        if not other_path.exists():
            continue
        other = np.load(other_path)
        entry: dict[str, Any] = {"spearman": float(spearmanr(ours, other).statistic)}
        if method.startswith("captum"):
            entry["max_relative_difference"] = float(np.max(np.abs(ours - other) / np.maximum(np.abs(ours), 1e-30)))
        out[f"ours_vs_{method}"] = entry
    return out


def _ratio(results: dict[str, dict[str, Any]], numerator: str, denominator: str) -> float | None:
    a, b = results.get(numerator, {}).get("seconds"), results.get(denominator, {}).get("seconds")
    return round(a / b, 3) if a is not None and b else None


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--limit", type=int, default=None, help="only the first N images (quick check)")
    parser.add_argument("--checkpoints", type=int, default=5, help="K checkpoints (one per epoch by default)")
    parser.add_argument("--epochs", type=int, default=5, help="training epochs; must be >= --checkpoints")
    parser.add_argument("--batch-size", type=int, default=64, help="training and scoring batch size, all methods")
    parser.add_argument("--learning-rate", type=float, default=0.01, help="peak SGD learning rate (project default)")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--skip", default="", help=f"comma-separated methods to skip, of {','.join(METHODS)}")
    parser.add_argument("--repeats", type=int, default=1, help="timed runs per method (best kept), same process")
    parser.add_argument("--proj-dim", type=int, default=2048, help="TRAK projection dimension")
    parser.add_argument(
        "--trak-block-size",
        type=int,
        default=None,
        help="TRAK BasicProjector block size; default = --proj-dim (one P x proj_dim matrix per checkpoint, "
        "its fastest CPU setting); TRAKer's own default, 100, regenerates the matrix block by block every batch",
    )
    parser.add_argument("--trak-lambda", type=float, default=0.0, help="TRAK ridge on X^T X (TRAKer default 0)")
    parser.add_argument("--out", default=str(REPO / "benchmarks" / "results" / "tracin_speed.json"))
    parser.add_argument("--keep-workdir", action="store_true", help="keep checkpoints, scores and TRAK files")
    parser.add_argument("--worker", choices=METHODS, help=argparse.SUPPRESS)
    parser.add_argument("--workdir", help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.trak_block_size is None:
        args.trak_block_size = args.proj_dim
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(name)s: %(message)s")
    if args.worker is not None:
        worker(args.worker, Path(args.workdir), args)
        return
    skip = {name.strip() for name in args.skip.split(",") if name.strip()}
    if unknown := skip - set(METHODS):
        parser.error(f"--skip: unknown method(s) {sorted(unknown)}; choose from {','.join(METHODS)}")
    if args.epochs < args.checkpoints:
        parser.error("--epochs must be >= --checkpoints (one checkpoint per epoch at most)")

    load_before = os.getloadavg()
    with tempfile.TemporaryDirectory(prefix="tracin_speed_") as tmp:
        workdir = Path(tmp)
        setup = prepare(workdir, args)
        results: dict[str, dict[str, Any]] = {}
        for method in METHODS:
            if method in skip:
                results[method] = {"status": "skipped (--skip)"}
                continue
            results[method] = run_method(method, workdir, args)
            results[method]["description"] = DESCRIPTIONS[method]
        if setup["n_samples"] <= args.proj_dim and args.trak_lambda == 0 and "seconds" in results["traker"]:
            results["traker"]["warning"] = (
                f"n = {setup['n_samples']} <= proj_dim = {args.proj_dim}: X^T X is singular and --trak-lambda is 0, "
                "so TRAK's scores are not meaningful here (its timing is)"
            )
        agreement = compare(workdir)
        if args.keep_workdir:
            kept = Path(tempfile.mkdtemp(prefix="tracin_speed_kept_"))
            shutil.copytree(workdir, kept, dirs_exist_ok=True)
            logger.info("kept the work folder in %s", kept)

    ratios = {
        "captum_fastest_over_ours": _ratio(results, "captum_fastest", "ours"),
        "captum_default_over_ours": _ratio(results, "captum_default", "ours"),
        "traker_over_ours": _ratio(results, "traker", "ours"),
        "ours_over_forward_backward_bound": _ratio(results, "ours", "forward_backward"),
    }
    threads_env = os.environ.get("OMP_NUM_THREADS")
    summary = {
        "what": "wall seconds of TracIn self-influence over K checkpoints, same data, model and checkpoint files; "
        "each method in its own child process (checkpoint loading from file included, imports excluded)",
        "command": (f"OMP_NUM_THREADS={threads_env} " if threads_env else "")
        + ".venv/bin/python benchmarks/tracin_speed.py "
        + " ".join(sys.argv[1:]),
        "dataset": f"omniglot images_background_small1 ({ZIP.name}), 28x28 greyscale, first "
        f"{setup['n_samples']} images, label = <alphabet>/<character>",
        "model": "auditor.models.architectures.Conv4(1, 136, image_size=28) (BatchNorm), trained with "
        "auditor.models.train.train_model; scored in eval mode",
        "setup": setup,
        "settings": {k: v for k, v in vars(args).items() if k not in ("worker", "workdir")},
        "machine": {
            "cpu_count": os.cpu_count(),
            "cpus_available": len(os.sched_getaffinity(0)),
            "OMP_NUM_THREADS": threads_env,
            "torch_threads_parent": torch.get_num_threads(),
            "processor": platform.processor() or platform.machine(),
            "python": platform.python_version(),
            "load_average_1m_before_after": [round(load_before[0], 2), round(os.getloadavg()[0], 2)],
        },
        "versions": {name: _version(name) for name in ("torch", "captum", "traker", "numpy")},
        "results": results,
        "ratios": ratios,
        "agreement_with_ours": agreement,
        "notes": {
            "same_quantity": "ours = sum_k lr_k |grad_k loss(z)|^2 with lr_k the mean learning rate since the "
            "previous checkpoint; Captum's checkpoints_load_func returns the same lr_k, so captum_default computes "
            "exactly this quantity (float32 vs float64 accumulation) and captum_fastest the same without the "
            "BatchNorm weight/bias terms. With a loader returning 1.0 (Captum's default when the file has no "
            "'learning_rate'), Captum would sum unweighted |g_k|^2: equal up to that per-checkpoint weighting.",
            "traker_quantity": "TRAK's diagonal is a different quantity (projected margin gradients, "
            "(Phi^T Phi)^-1 metric, out-to-loss reweighting); its Spearman with ours is context, not a check",
            "traker_workarounds": [
                "load_from_save_dir=True with a fresh save_dir (False crashes: experiments.json is never created)",
                "finalize_features() frees the projection matrix; with one block and an unchanged model id, "
                "score() uses it without regenerating: regenerated before scoring when needed",
                "use_half_precision=False: float16 matmuls are slow on CPU",
            ],
            "peak_rss_mb": "peak RSS (VmHWM) of the method's child process: imports, data, model and the method; "
            "rss_before_mb = the same peak just before the timed part",
        },
    }
    Path(args.out).parent.mkdir(parents=True, exist_ok=True)
    Path(args.out).write_text(json.dumps(summary, indent=2, sort_keys=True) + "\n", encoding="utf-8")
    logger.info("ratios: %s; agreement: %s", ratios, agreement)
    logger.info("wrote %s", args.out)


if __name__ == "__main__":
    main()
