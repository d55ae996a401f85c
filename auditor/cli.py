"""Command-line interface: subcommands, logging set-up and exit codes (0 ok, 1 gate failed, 2 user error, 3 internal).

The only module that configures logging or writes to the terminal directly.
"""

from __future__ import annotations

import argparse
import logging
import os
import sys
import traceback
from collections.abc import Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Any

from auditor import __version__
from auditor.config import DEFAULT_HARM_METHOD, FORMATS, HARM_METHODS, LEARNERS, AuditConfig
from auditor.errors import AuditorError, one_line

if TYPE_CHECKING:
    from datetime import date

    from auditor.gate import GateOutcome

logger = logging.getLogger("auditor.cli")

EXIT_OK, EXIT_USER_ERROR, EXIT_INTERNAL_ERROR = 0, 2, 3
EXIT_GATE_FAILED = 1
FAIL_ON_CHOICES = ("critical", "warning", "info")


def _add_training_options(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--epochs", type=int, default=20, help="training epochs of each proxy model (default 20)")
    parser.add_argument("--seed", type=int, default=0, help="seed of every random choice (default 0)")
    parser.add_argument(
        "--folds", type=int, default=2, help="cross-fitting folds over all samples; 0 = off (default 2)"
    )
    parser.add_argument("--checkpoints", type=int, default=5, help="checkpoints kept per training (default 5)")
    parser.add_argument("--batch-size", type=int, default=64, help="batch size (default 64)")
    parser.add_argument("--image-size", type=int, default=None, help="proxy input size in pixels (default: by data)")
    parser.add_argument(
        "--method",
        default=DEFAULT_HARM_METHOD,
        choices=HARM_METHODS,
        help=f"estimator of harm_score and the --target-* columns (default {DEFAULT_HARM_METHOD}; README: "
        "Choosing --method)",
    )
    parser.add_argument("--name", default=None, help="run name (default: the data folder's name)")
    parser.add_argument("--out", default=None, help="run directory (default: reports/<name>)")
    parser.add_argument("--overwrite", action="store_true", help="delete an existing run directory first")
    parser.add_argument("--no-fiftyone", action="store_true", help="do not write the FiftyOne dataset")
    targets = parser.add_argument_group("influence targets (besides the validation loss; repeatable)")
    targets.add_argument("--target-group", action="append", default=[], metavar="NAME=CLS,CLS", help="class group")
    targets.add_argument("--target-class", action="append", default=[], metavar="CLS", help="one class")
    targets.add_argument("--target-meta", action="append", default=[], metavar="COLUMN=VALUE", help="metadata group")
    targets.add_argument("--target-sample", action="append", default=[], metavar="ID|RELPATH", help="one image")


def _add_few_shot_options(parser: argparse.ArgumentParser) -> None:
    group = parser.add_argument_group("few-shot mode (episodic tasks; task and image influence)")
    group.add_argument("--few-shot", action="store_true", help="meta-train on N-way K-shot tasks and score them")
    group.add_argument("--ways", type=int, default=5, help="classes per task (default 5)")
    group.add_argument("--shots", type=int, default=1, help="support images per class (default 1)")
    group.add_argument("--queries", type=int, default=5, help="query images per class (default 5)")
    group.add_argument("--learner", default="protonet", choices=LEARNERS, help="meta-learner (default protonet)")
    group.add_argument(
        "--verify",
        action="store_true",
        help="check the scores by retraining (few-shot: the removal edit; else as `auditor eval`)",
    )
    group.add_argument("--tasks", type=int, default=200, help="meta-training tasks (default 200)")
    group.add_argument("--meta-steps", type=int, default=500, help="meta-training steps (default 500)")


def _target_specs(args: argparse.Namespace) -> tuple[str, ...]:
    """The --target-* options as spec strings (see auditor.influence.targets)."""
    return (
        *(f"group:{v}" for v in args.target_group),
        *(f"class:{v}" for v in args.target_class),
        *(f"meta:{v}" for v in args.target_meta),
        *(f"sample:{v}" for v in args.target_sample),
    )


def build_parser() -> argparse.ArgumentParser:
    """The argparse parser of every subcommand."""
    parser = argparse.ArgumentParser(prog="auditor", description="Audit an image classification dataset.")
    parser.add_argument("--version", action="version", version=f"auditor {__version__}")
    parser.add_argument("-v", "--verbose", action="store_true", help="debug logging")
    parser.add_argument("-q", "--quiet", action="store_true", help="warnings and errors only")
    sub = parser.add_subparsers(dest="command", required=True)

    audit = sub.add_parser("audit", help="audit a dataset and write reports/<name>/")
    audit.add_argument("data", nargs="?", help="dataset folder, CSV manifest, or Omniglot zip (omit with --fiftyone)")
    audit.add_argument("--format", default="auto", choices=[f for f in FORMATS if f != "demo"], help="layout of DATA")
    audit.add_argument("--metadata", default=None, help="CSV with a filepath column (relative to DATA) to join")
    audit.add_argument("--model", default="auto", help="'auto' (proxy CNN) or 'pkg.module:factory'")
    audit.add_argument("--weights", default=None, help="state dict for --model (loaded with weights_only=True)")
    audit.add_argument("--fiftyone", metavar="DATASET", default=None, help="audit a FiftyOne dataset, not DATA")
    audit.add_argument("--label-field", default="ground_truth", help="its Classification field (default ground_truth)")
    audit.add_argument("--split-field", default=None, help="its string field naming splits (default: split tags)")
    audit.add_argument("--embeddings-field", default=None, help="its vector field of embeddings for clusters and plot")
    _add_training_options(audit)
    _add_few_shot_options(audit)

    demo = sub.add_parser("demo", help="build the planted-problem digits demo and audit it")
    demo.add_argument("--data-dir", default="reports/demo-data", help="where to write the demo images")
    _add_training_options(demo)

    report = sub.add_parser("report", help="re-render the reports of an existing run")
    report.add_argument("run", help="run directory (reports/<name>)")
    score = sub.add_parser("score", help="score a run again with its trained models (torchrun: sharded)")
    score.add_argument("run", help="run directory (reports/<name>)")
    score.add_argument("--overwrite", action="store_true", help="replace the run's existing scores")
    evaluate = sub.add_parser("eval", help="check a run's influence scores by retraining its proxy model")
    evaluate.add_argument("run", help="run directory (reports/<name>)")
    evaluate.add_argument("--subsets", type=int, default=8, help="random-half retrainings for the LDS (default 8)")
    evaluate.add_argument("--remove", type=float, default=0.05, help="share of training rows removed (default 0.05)")
    evaluate.add_argument("--random-removals", type=int, default=2, help="random removals averaged (default 2)")
    _add_gate_commands(sub, audit, demo)
    _add_fiftyone_commands(sub)
    return parser


def _add_fiftyone_commands(sub: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    app = sub.add_parser("app", help="open the FiftyOne App on a run's dataset (Ctrl-C stops it)")
    app.add_argument("run", help="run directory (reports/<name>)")
    app.add_argument("--remote", action="store_true", help="serve only; open http://localhost:PORT yourself")
    app.add_argument("--port", type=int, default=5151, help="App port (default 5151, the port report links use)")
    fiftyone = sub.add_parser("fiftyone", help="manage what a run wrote to FiftyOne")
    actions = fiftyone.add_subparsers(dest="fiftyone_command", required=True)
    remove = actions.add_parser("remove", help="remove a run's fields, tags, saved views and runs from FiftyOne")
    remove.add_argument("run", help="run directory (reports/<name>)")


def _add_gate_commands(
    sub: argparse._SubParsersAction[argparse.ArgumentParser], *audits: argparse.ArgumentParser
) -> None:
    for parser in audits:
        parser.add_argument("--rules", default=None, help="rule pack to gate the run with; exit 1 if it fails")
    check = sub.add_parser("check", help="gate an existing run with a rule pack (exit 1 if the gate fails)")
    check.add_argument("run", help="run directory (reports/<name>)")
    check.add_argument("--rules", required=True, help="rule pack: a YAML file, or default/release/fairness")
    check.add_argument("--baseline", default=None, help="audit.json of an earlier run, for baseline rules")
    check.add_argument(
        "--fail-on", default="critical", choices=FAIL_ON_CHOICES, help="least severity that fails (default critical)"
    )
    rules = sub.add_parser("rules", help="work with rule packs")
    actions = rules.add_subparsers(dest="rules_command", required=True)
    validate = actions.add_parser("validate", help="check a rule pack against the schema (exit 2 if invalid)")
    validate.add_argument("file", help="rule pack YAML file")


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
        method=args.method,
        targets=_target_specs(args),
        overwrite=args.overwrite,
        fiftyone=not args.no_fiftyone,
        rules=getattr(args, "rules", None),
        fiftyone_dataset=getattr(args, "fiftyone", None),
        label_field=getattr(args, "label_field", "ground_truth"),
        split_field=getattr(args, "split_field", None),
        embeddings_field=getattr(args, "embeddings_field", None),
        **_few_shot_settings(args),
    )


def _few_shot_settings(args: argparse.Namespace) -> dict[str, Any]:
    """The few-shot options of `audit` (absent on `demo`, which keeps the config defaults)."""
    names = ("few_shot", "ways", "shots", "queries", "learner", "verify", "tasks", "meta_steps")
    return {name: getattr(args, name) for name in names if hasattr(args, name)}


def _run(args: argparse.Namespace) -> int:
    if _distributed_launch() and args.command not in ("audit", "score"):
        raise AuditorError(
            f"only `auditor audit` and `auditor score` run under torchrun; run `auditor {args.command}` as one process"
        )
    if args.command in ("check", "rules"):
        return _run_gate_command(args)
    if args.command in ("app", "fiftyone"):
        return _run_fiftyone_command(args)
    if getattr(args, "rules", None) is not None:  # a bad rule file fails before any training
        from auditor.gate import load_rule_pack

        load_rule_pack(args.rules)
    if args.command == "report":
        return _run_report_command(args)
    if args.command == "eval":
        return _run_eval_command(args)
    if args.command == "score":
        from auditor.rescore import rescore_run

        run_dir = rescore_run(args.run, overwrite=args.overwrite)
        logger.info("Scored again: %s", run_dir)
        return EXIT_OK
    # imported here, not at the top: it loads torch (seconds), which re-rendering a report never needs
    from auditor.pipeline import run_audit

    if args.command == "audit":
        if args.data is None and args.fiftyone is None:
            raise AuditorError("audit needs DATA (a dataset folder, CSV manifest or zip) or --fiftyone DATASET")
        result = run_audit(_config_from_args(args, data=args.data or args.fiftyone, data_format=args.format))
    elif args.command == "demo":
        if args.name is None:
            args.name = "demo"
        result = run_audit(_config_from_args(args, data=args.data_dir, data_format="demo"))
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
    if getattr(args, "rules", None) is None:
        return EXIT_OK
    from auditor.gate import load_gate_outcome
    from auditor.store import RunStore

    outcome = load_gate_outcome(RunStore(result.run_dir))
    if outcome is None:
        raise AssertionError(f"the report stage wrote no gate outcome in {result.run_dir}")
    return _print_gate(outcome)


def _run_eval_command(args: argparse.Namespace) -> int:
    from auditor.influence.evaluate import RetrainCheckSettings
    from auditor.runcheck import check_summary, eval_run

    try:
        settings = RetrainCheckSettings(
            subsets=args.subsets, removal_fraction=args.remove, random_removals=args.random_removals
        )
    except ValueError as error:
        raise AuditorError(f"auditor eval: {error}") from error
    summary = check_summary(eval_run(args.run, settings))
    random_drop = summary["random_loss_drop"]
    for name, drop in summary["loss_drop"].items():
        lds = summary.get("lds", {}).get(name)
        print(
            f"{name}: removing the top {summary['n_removed']} lowers the validation loss by {drop:+.4f} "
            f"(random: {random_drop:+.4f})" + (f", LDS {lds:.3f}" if lds is not None else "")
        )
    return EXIT_OK


def _run_report_command(args: argparse.Namespace) -> int:
    from auditor.report.render import run_reports
    from auditor.store import RunStore

    store = RunStore(args.run)
    if not store.exists():
        raise AuditorError(f"{Path(args.run)} is not an auditor run directory (no manifest.json)")
    for path in run_reports(store).values():
        logger.info("Wrote %s", path)
    return EXIT_OK


def _run_gate_command(args: argparse.Namespace) -> int:
    from auditor.gate import load_rule_pack, run_gate

    if args.command == "rules":  # rules validate FILE
        pack = load_rule_pack(args.file)
        for waiver in pack.waivers.values():
            if not waiver.is_live(_today()):
                logger.warning("waiver of rule %r expired on %s; it no longer applies", waiver.rule, waiver.expires)
        print(f"ok: {len(pack.rules)} rules, {len(pack.waivers)} waivers")
        return EXIT_OK
    from auditor.report.render import run_reports
    from auditor.store import RunStore

    store = RunStore(args.run)
    if not store.exists():
        raise AuditorError(f"{Path(args.run)} is not an auditor run directory (no manifest.json)")
    outcome = run_gate(store, load_rule_pack(args.rules), baseline=args.baseline, fail_on=args.fail_on)
    for path in run_reports(store).values():
        logger.info("Wrote %s", path)
    return _print_gate(outcome)


def _today() -> date:
    from auditor.gate.waivers import today_utc

    return today_utc()


def _print_gate(outcome: GateOutcome) -> int:
    """Print every rule that did not pass and the verdict; return exit code 1 if the gate failed, else 0.
    Under torchrun only rank 0 prints (every rank returns the code)."""
    if _secondary_rank():
        return EXIT_GATE_FAILED if outcome.failed else EXIT_OK
    for result in outcome.results:
        if result["status"] != "pass" or result["expired_waiver"]:
            print(f"{result['status'].upper():8} {result['severity']:8} {result['rule_id']}: {result['message']}")
    counts = ", ".join(f"{n} {status}" for status, n in outcome.to_dict()["counts"].items() if n)
    print(f"gate {outcome.verdict} (fails on {outcome.fail_on}): {len(outcome.results)} rules: {counts}")
    return EXIT_GATE_FAILED if outcome.failed else EXIT_OK


def _run_fiftyone_command(args: argparse.Namespace) -> int:
    from auditor.integrations.fiftyone import launch_app, remove_audit
    from auditor.store import RunStore

    store = RunStore(args.run)
    if not store.exists():
        raise AuditorError(f"{Path(args.run)} is not an auditor run directory (no manifest.json)")
    if args.command == "app":
        launch_app(store, remote=args.remote, port=args.port)
        return EXIT_OK
    from auditor.report.render import run_reports

    record = remove_audit(store)
    run_reports(store)
    logger.info("Removed run %s from FiftyOne dataset %r", record["run_key"], record["dataset"])
    return EXIT_OK


def _distributed_launch() -> bool:
    """True when torchrun started this process as one of several (WORLD_SIZE > 1)."""
    return os.environ.get("WORLD_SIZE", "1") not in ("", "1")


def _secondary_rank() -> bool:
    """True in a torchrun worker of rank > 0 (read from the env, so the CLI need not import torch)."""
    return os.environ.get("RANK", "0") not in ("", "0")


def main(argv: Sequence[str] | None = None) -> int:
    """Entry point of the `auditor` console script; returns the exit code."""
    args = build_parser().parse_args(argv)
    # torchrun ranks other than 0 repeat rank 0's log lines; only their warnings and errors are worth showing
    _configure_logging(args.verbose, args.quiet or _secondary_rank())
    try:
        return _run(args)
    except AuditorError as exc:
        # one_line: a message may quote a label or path holding a newline or a bidi override from the data
        print(f"auditor: error: {one_line(str(exc))}", file=sys.stderr)
        return EXIT_USER_ERROR
    except KeyboardInterrupt:
        print("auditor: interrupted; rerun the same command to resume", file=sys.stderr)
        return 130
    except Exception:  # an internal error: show the traceback so it can be reported
        traceback.print_exc()
        print("auditor: internal error (exit 3); please report it with the traceback above", file=sys.stderr)
        return EXIT_INTERNAL_ERROR
