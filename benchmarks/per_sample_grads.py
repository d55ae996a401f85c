"""Per-sample gradient throughput: layer-hook path vs torch.func vmap path vs a plain training step.

Same random uint8 inputs for all three, interleaved within each repeat so that they share whatever load
the machine has; ratios from the same run are the numbers to compare. Also times TracIn's per-batch
float64 reductions, whole-matrix (before) vs blockwise (now). Writes benchmarks/results/per_sample_grads.json.

    .venv/bin/python benchmarks/per_sample_grads.py [--samples 2048] [--repeats 3] [--batch-size 64]
"""

from __future__ import annotations

import argparse
import json
import logging
import os
import platform
import statistics
import time
from collections.abc import Callable
from pathlib import Path

import torch
from torch import nn

from auditor.influence.gradients import GradientMethod, find_hook_path_blocker, iter_per_sample_grads
from auditor.influence.tracin import _squared_norms_and_dots
from auditor.models.architectures import Conv4, SmallResNet
from auditor.models.train import to_float

logger = logging.getLogger("benchmarks.per_sample_grads")
REPO = Path(__file__).resolve().parents[1]

MODELS: dict[str, tuple[Callable[[], nn.Module], tuple[int, int, int], int]] = {
    "conv4_1x28x28_136cls": (lambda: Conv4(1, 136, image_size=28), (1, 28, 28), 136),
    "small_resnet_3x32x32_100cls": (lambda: SmallResNet(3, 100, image_size=32), (3, 32, 32), 100),
}


def _time_gradients(
    model: nn.Module, pixels: torch.Tensor, targets: torch.Tensor, method: GradientMethod, batch_size: int
) -> tuple[float, float]:
    """(wall seconds, process CPU seconds) to produce every batch of per-sample gradients."""
    wall, cpu = time.perf_counter(), time.process_time()
    for _ in iter_per_sample_grads(model, pixels, targets, batch_size=batch_size, method=method):
        pass
    return time.perf_counter() - wall, time.process_time() - cpu


def _time_train_steps(
    model: nn.Module, pixels: torch.Tensor, targets: torch.Tensor, batch_size: int
) -> tuple[float, float]:
    """(wall, CPU) seconds of forward + backward of the mean loss per batch in train mode (an epoch less the step)."""
    model.train()
    wall, cpu = time.perf_counter(), time.process_time()
    for first in range(0, len(targets), batch_size):
        model.zero_grad(set_to_none=True)
        loss = nn.functional.cross_entropy(
            model(to_float(pixels[first : first + batch_size])), targets[first : first + batch_size]
        )
        loss.backward()
    elapsed = time.perf_counter() - wall, time.process_time() - cpu
    model.eval()
    return elapsed


def _time_reductions(flat: torch.Tensor, repeats: int) -> dict[str, float]:
    """Milliseconds per batch for TracIn's |g|^2 and g . target in float64: whole-matrix copy vs blockwise."""
    direction = torch.randn(flat.shape[1], dtype=torch.float64)
    best = {"whole_matrix": float("inf"), "blockwise": float("inf")}
    for _ in range(repeats):
        start = time.perf_counter()
        _ = flat.double().pow(2).sum(1), flat.double() @ direction
        best["whole_matrix"] = min(best["whole_matrix"], time.perf_counter() - start)
        start = time.perf_counter()
        _squared_norms_and_dots(flat, direction)
        best["blockwise"] = min(best["blockwise"], time.perf_counter() - start)
    return {f"tracin_reduction_{name}_ms_per_batch": round(1000 * seconds, 2) for name, seconds in best.items()}


def run_model(name: str, *, n_samples: int, repeats: int, batch_size: int, seed: int) -> dict[str, object]:
    """Time the three paths `repeats` times (interleaved) on one model; check hooks == vmap on one batch."""
    build, shape, n_classes = MODELS[name]
    torch.manual_seed(seed)
    model = build()
    generator = torch.Generator().manual_seed(seed)
    pixels = torch.randint(0, 256, (n_samples, *shape), dtype=torch.uint8, generator=generator)
    targets = torch.randint(0, n_classes, (n_samples,), generator=generator)
    with torch.no_grad():  # non-trivial BatchNorm running statistics, as after training
        model.train()
        model(to_float(pixels[:256]))
    model.eval()
    assert find_hook_path_blocker(model) is None, f"{name} should take the hook path"

    first = slice(0, batch_size)
    _, hooks_flat, hooks_losses = next(
        iter_per_sample_grads(model, pixels[first], targets[first], batch_size=batch_size, method="hooks")
    )
    _, vmap_flat, vmap_losses = next(
        iter_per_sample_grads(model, pixels[first], targets[first], batch_size=batch_size, method="vmap")
    )
    scale = float(vmap_flat.abs().max())
    max_abs_diff = float((hooks_flat - vmap_flat).abs().max())
    torch.testing.assert_close(hooks_flat, vmap_flat, rtol=1e-4, atol=1e-5 * scale)
    torch.testing.assert_close(hooks_losses, vmap_losses)

    rates: dict[str, list[float]] = {"vmap": [], "hooks": [], "train_step": []}
    cpu_rates: dict[str, list[float]] = {"vmap": [], "hooks": [], "train_step": []}
    for repeat in range(repeats):
        timings = {
            "vmap": _time_gradients(model, pixels, targets, "vmap", batch_size),
            "hooks": _time_gradients(model, pixels, targets, "hooks", batch_size),
            "train_step": _time_train_steps(model, pixels, targets, batch_size),
        }
        for method, (wall, cpu) in timings.items():
            rates[method].append(n_samples / wall)
            cpu_rates[method].append(n_samples / cpu)
        logger.info("%s repeat %d/%d: %s", name, repeat + 1, repeats, {k: round(v[-1], 1) for k, v in rates.items()})

    best = {method: max(values) for method, values in rates.items()}
    per_repeat_speedup = [h / v for h, v in zip(rates["hooks"], rates["vmap"], strict=True)]
    return {
        "input_shape": list(shape),
        "n_parameters": sum(p.numel() for p in model.parameters()),
        "vmap_samples_per_s": round(best["vmap"], 1),
        "hooks_samples_per_s": round(best["hooks"], 1),
        "train_step_samples_per_s": round(best["train_step"], 1),
        "speedup": round(best["hooks"] / best["vmap"], 2),
        "speedup_median_of_repeats": round(statistics.median(per_repeat_speedup), 2),
        "hooks_vs_train_step": round(best["hooks"] / best["train_step"], 2),
        "samples_per_s_each_repeat": {k: [round(v, 1) for v in values] for k, values in rates.items()},
        "samples_per_cpu_s_best": {k: round(max(values), 1) for k, values in cpu_rates.items()},
        "hooks_vs_vmap_max_abs_diff": max_abs_diff,
        "gradient_max_abs": scale,
        **_time_reductions(hooks_flat, repeats=5),
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--samples", type=int, default=2048)
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--batch-size", type=int, default=64)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--models", nargs="+", choices=sorted(MODELS), default=list(MODELS))
    parser.add_argument("--out", default=str(REPO / "benchmarks" / "results" / "per_sample_grads.json"))
    args = parser.parse_args()
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(name)s: %(message)s")
    load_before = os.getloadavg()
    results = {
        name: run_model(name, n_samples=args.samples, repeats=args.repeats, batch_size=args.batch_size, seed=args.seed)
        for name in args.models
    }
    meta = {
        "what": "per-sample gradients of the eval-mode cross-entropy, flat [B, P] per batch, CPU",
        "samples_per_s": "best of the repeats; speedup = hooks / vmap of those; each repeat runs vmap, hooks, train",
        "samples_per_cpu_s_best": "per second of process CPU time (all threads): less sensitive to other load",
        "command": f"python benchmarks/per_sample_grads.py --samples {args.samples} --repeats {args.repeats}"
        f" --batch-size {args.batch_size}",
        "torch": torch.__version__,
        "torch_threads": torch.get_num_threads(),
        "cpu_count": os.cpu_count(),
        "processor": platform.processor() or platform.machine(),
        "load_average_1m_before_after": [round(load_before[0], 2), round(os.getloadavg()[0], 2)],
    }
    summary = {**results, "meta": meta}
    Path(args.out).write_text(json.dumps(summary, indent=2, sort_keys=True) + "\n", encoding="utf-8")
    logger.info("Wrote %s", args.out)


if __name__ == "__main__":
    main()
