"""Command-line interface: subcommands, logging set-up and exit codes (0 ok, 2 user error, 3 internal error).

The only module that configures logging or writes to the terminal directly.
"""

from __future__ import annotations

import argparse
import logging
import sys
import traceback
from collections.abc import Sequence
from pathlib import Path

from auditor import __version__
from auditor.config import FORMATS, AuditConfig
from auditor.errors import AuditorError

logger = logging.getLogger("auditor.cli")

EXIT_OK, EXIT_USER_ERROR, EXIT_INTERNAL_ERROR = 0, 2, 3


def _add_training_options(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--epochs", type=int, default=20, help="training epochs of each proxy model (default 20)")
    parser.add_argument("--seed", type=int, default=0, help="seed of every random choice (default 0)")
    parser.add_argument("--folds", type=int, default=2, help="cross-fitting folds over all samples; 0 = off (default 2)")
    parser.add_argument("--checkpoints", type=int, default=5, help="checkpoints kept per training (default 5)")
    parser.add_argument("--batch-size", type=int, default=64, help="batch size (default 64)")
    parser.add_argument("--image-size", type=int, default=None, help="proxy input size in pixels (default: by data)")
    parser.add_argument("--name", default=None, help="run name (default: the data folder's name)")
    parser.add_argument("--out", default=None, help="run directory (default: reports/<name>)")
    parser.add_argument("--overwrite", action="store_true", help="delete an existing run directory first")
    parser.add_argument("--no-fiftyone", action="store_true", help="do not write the FiftyOne dataset")


def build_parser() -> argparse.ArgumentParser:
    """The argparse parser of every subcommand."""
    parser = argparse.ArgumentParser(prog="auditor", description="Audit an image classification dataset.")
    parser.add_argument("--version", action="version", version=f"auditor {__version__}")
    parser.add_argument("-v", "--verbose", action="store_true", help="debug logging")
    parser.add_argument("-q", "--quiet", action="store_true", help="warnings and errors only")
    sub = parser.add_subparsers(dest="command", required=True)

    audit = sub.add_parser("audit", help="audit a dataset and write reports/<name>/")
    audit.add_argument("data", help="dataset folder, CSV manifest, or Omniglot zip")
    audit.add_argument("--format", default="auto", choices=[f for f in FORMATS if f != "demo"], help="layout of DATA")
    audit.add_argument("--metadata", default=None, help="CSV with a filepath column (relative to DATA) to join")
    audit.add_argument("--model", default="auto", help="'auto' (proxy CNN) or 'pkg.module:factory'")
    audit.add_argument("--weights", default=None, help="state dict for --model (loaded with weights_only=True)")
    _add_training_options(audit)

    demo = sub.add_parser("demo", help="build the planted-problem digits demo and audit it")
    demo.add_argument("--data-dir", default="reports/demo-data", help="where to write the demo images")
    _add_training_options(demo)

    report = sub.add_parser("report", help="re-render the reports of an existing run")
    report.add_argument("run", help="run directory (reports/<name>)")
    return parser


def _configure_logging(verbose: bool, quiet: bool) -> None:
    level = logging.DEBUG if verbose else logging.WARNING if quiet else logging.INFO
    logging.basicConfig(level=level, format="%(asctime)s %(levelname)s %(name)s: %(message)s", stream=sys.stderr)


def _config_from_args(args: argparse.Namespace, *, data: str, data_format: str) -> AuditConfig:
    return AuditConfig(
        data=data,
        format=data_format,
        metadata=getattr(args, "metadata", None),
        name=args.name,
        out=args.out,
        model=getattr(args, "model", "auto"),
        weights=getattr(args, "weights", None),
        epochs=args.epochs,
        seed=args.seed,
        folds=args.folds,
        checkpoints=args.checkpoints,
        batch_size=args.batch_size,
        image_size=args.image_size,
        overwrite=args.overwrite,
        fiftyone=not args.no_fiftyone,
    )


def _run(args: argparse.Namespace) -> int:
    from auditor.pipeline import run_audit

    if args.command == "audit":
        result = run_audit(_config_from_args(args, data=args.data, data_format=args.format))
    elif args.command == "demo":
        if args.name is None:
            args.name = "demo"
        result = run_audit(_config_from_args(args, data=args.data_dir, data_format="demo"))
    elif args.command == "report":
        from auditor.report.render import run_reports
        from auditor.store import RunStore

        store = RunStore(args.run)
        if not store.exists():
            raise AuditorError(f"{Path(args.run)} is not an auditor run directory (no manifest.json)")
        for path in run_reports(store).values():
            logger.info("Wrote %s", path)
        return EXIT_OK
    else:  # argparse guarantees one of the above
        raise AssertionError(args.command)
    issues = result.metrics["issues"]
    logger.info(
        "Audit done: %d samples, %d likely mislabels, %d harmful, %d findings. Report: %s",
        result.metrics["dataset"]["n_samples"],
        issues["label_issue"]["count"],
        issues["harmful"]["count"],
        len(result.findings),
        result.paths.get("index.html", result.run_dir),
    )
    return EXIT_OK


def main(argv: Sequence[str] | None = None) -> int:
    """Entry point of the `auditor` console script; returns the exit code."""
    args = build_parser().parse_args(argv)
    _configure_logging(args.verbose, args.quiet)
    try:
        return _run(args)
    except AuditorError as exc:
        print(f"auditor: error: {exc}", file=sys.stderr)
        return EXIT_USER_ERROR
    except KeyboardInterrupt:
        print("auditor: interrupted; rerun the same command to resume", file=sys.stderr)
        return 130
    except Exception:  # an internal error: show the traceback so it can be reported
        traceback.print_exc()
        print("auditor: internal error (exit 3); please report it with the traceback above", file=sys.stderr)
        return EXIT_INTERNAL_ERROR
