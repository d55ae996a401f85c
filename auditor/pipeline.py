"""The audit as a sequence of resumable stages over one run directory: ingest, train, score, analyze, report,
then (unless --no-fiftyone) fiftyone. With --few-shot, one `fewshot` stage (auditor.fewshot.stage) replaces
train, score and analyze.

Each stage reads what earlier stages wrote through the RunStore and records its completion in the
manifest, so a rerun resumes at the first unfinished stage. Composition, not inheritance.
"""

from __future__ import annotations

import hashlib
import logging
import platform
import shutil
from dataclasses import dataclass, replace
from datetime import timedelta
from importlib import metadata as importlib_metadata
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
import torch

from auditor.config import AuditConfig
from auditor.data.paths import resolve_leniently
from auditor.errors import AuditorError
from auditor.schema import (
    CONTENT_HASH,
    ERRORS_TABLE,
    FINDINGS_FILE,
    HEIGHT,
    LABEL,
    METRICS_FILE,
    RELPATH,
    SAMPLE_ID,
    SAMPLES_TABLE,
    SPLIT,
    WIDTH,
)
from auditor.store import RunStore

logger = logging.getLogger(__name__)

STAGES = ("ingest", "train", "score", "analyze", "report", "fiftyone")
FEWSHOT_STAGES = ("ingest", "fewshot", "report", "fiftyone")
INGEST_TABLE = "ingest_samples"
PIXELS_ARRAY = "pixels"
CLASSES_FILE = "classes.json"
DEMO_CHECK_FILE = "demo_check.json"
# Under torchrun, ranks > 0 wait while rank 0 ingests and trains: the collective timeout must outlast training.
DISTRIBUTED_TIMEOUT = timedelta(hours=24)
_VERSIONED_PACKAGES = (
    "torch",
    "torchvision",
    "numpy",
    "pandas",
    "scikit-learn",
    "scipy",
    "pyarrow",
    "jinja2",
    "fiftyone",
)


@dataclass
class AuditResult:
    """What an audit returns to Python callers: the tables and where the outputs are."""

    run_dir: Path
    samples: pd.DataFrame
    findings: list[dict[str, Any]]
    metrics: dict[str, Any]
    paths: dict[str, Path]


def package_versions() -> dict[str, str]:
    """Versions of Python and of the packages that shape the results (for the reproducibility appendix)."""
    versions = {"python": platform.python_version()}
    for name in _VERSIONED_PACKAGES:
        try:
            versions[name] = importlib_metadata.version(name)
        except importlib_metadata.PackageNotFoundError:
            continue
    return versions


def data_fingerprint(samples: pd.DataFrame) -> str:
    """sha256 over every sample's relative path, content hash, label and split, in sorted order."""
    digest = hashlib.sha256()
    for row in sorted(zip(samples[RELPATH], samples[CONTENT_HASH], samples[LABEL], samples[SPLIT], strict=True)):
        digest.update("\x1f".join(map(str, row)).encode())
        digest.update(b"\n")
    return digest.hexdigest()


def resolve_config(config: AuditConfig) -> AuditConfig:
    """Make paths absolute (so a resumed run compares equal) and fill demo defaults."""
    if config.fiftyone_dataset is not None:  # DATA is the dataset's name, not a path
        return config
    data = str(resolve_leniently(Path(config.data).expanduser()))  # a link loop is reported by ingest, not raised
    metadata = str(resolve_leniently(Path(config.metadata).expanduser())) if config.metadata else None
    if config.format == "demo" and metadata is None:
        metadata = str(Path(data) / "metadata.csv")
    return replace(config, data=data, metadata=metadata)


class Auditor:
    """Runs the stages of one audit over a RunStore."""

    def __init__(self, config: AuditConfig) -> None:
        self.config = resolve_config(config)
        self.store = RunStore(self.config.run_dir)

    def run(self) -> AuditResult:
        """Run every unfinished stage and return the result (under torchrun: see _run_distributed)."""
        from auditor.influence.distributed import launched_distributed

        if launched_distributed():
            return self._run_distributed()
        self._prepared(self._all_stages)
        self._push_fiftyone()
        return load_result(self.store)

    def _all_stages(self) -> None:
        self._front_stages()
        if self.config.few_shot:  # episodic meta-training and task influence replace train/score/analyze
            self._stage("fewshot", self._fewshot)
        else:
            self._stage("score", self._score)
            self._stage("analyze", self._analyze)
            self._verify_stage()
        self._report_stages()

    def _run_distributed(self) -> AuditResult:
        """`torchrun ... -m auditor audit`: rank 0 ingests and trains while the others wait, every rank scores
        its block of rows, rank 0 analyzes, reports and pushes to FiftyOne. Rank 0's errors reach every rank."""
        from auditor.influence.distributed import barrier, broadcast_from_primary, process_group

        if self.config.few_shot:
            raise AuditorError("--few-shot meta-trains and scores in one process; run it without torchrun")
        with process_group(timeout=DISTRIBUTED_TIMEOUT) as world:
            error = self._primary_only(world.primary, lambda: self._prepared(self._front_stages))
            error, score_done = broadcast_from_primary((error, world.primary and self.store.stage_done("score")))
            self._raise_if(error)
            if not score_done:
                logger.info("Stage score (%d processes)", world.size)
                self._score()  # collective: each rank its block of rows, gathered on every rank
                if world.primary:
                    self.store.mark_stage_done("score")
            error = self._primary_only(world.primary, self._back_stages)
            error = broadcast_from_primary(error)
            barrier()
        self._raise_if(error)
        return load_result(self.store)

    def _primary_only(self, primary: bool, work: Any) -> str | None:
        """Run `work` on rank 0 and return its error message (None if it worked), for rank 0 to broadcast so
        that no rank waits for it forever; rank 0 re-raises the error itself in _raise_if."""
        self._primary_error: Exception | None = None
        if not primary:
            return None
        try:
            work()
        except Exception as exc:
            self._primary_error = exc
            return str(exc) if isinstance(exc, AuditorError) else f"rank 0 failed: {type(exc).__name__}: {exc}"
        return None

    def _raise_if(self, error: str | None) -> None:
        if error is None:
            return
        if self._primary_error is not None:
            raise self._primary_error
        raise AuditorError(error)

    def _prepared(self, work: Any) -> None:
        """Run `work` in a prepared run directory; bad input never leaves a half-made run directory behind."""
        from auditor import __version__

        if self.config.weights is not None:  # an unsafe or corrupt file fails before the run directory exists
            from auditor.models.user_model import load_weights_file

            load_weights_file(self.config.weights)
        created = self.config.overwrite or not self.store.exists()
        self.store.prepare(self.config.result_settings(), overwrite=self.config.overwrite, tool_version=__version__)
        try:
            work()
        except AuditorError:
            # A run that existed before keeps what it had, so it still resumes.
            if created:
                shutil.rmtree(self.store.root, ignore_errors=True)
            raise

    def _front_stages(self) -> None:
        """What one process does before scoring: ingest, and train unless the audit is few-shot."""
        self._stage("ingest", self._ingest)
        if not self.config.few_shot:
            self._stage("train", self._train)

    def _back_stages(self) -> None:
        """Rank 0's share after a sharded score: analyze, verify (if asked), report, FiftyOne."""
        self._stage("analyze", self._analyze)
        self._verify_stage()
        self._report_stages()
        self._push_fiftyone()

    def _report_stages(self) -> None:
        """Report, always again when a rule pack judges the run."""
        if self.config.rules is not None:  # a rule pack judges the run even when resuming a finished one
            self.store.clear_stages_from(["report"])
        self._stage("report", self._report)

    def _push_fiftyone(self) -> None:
        if self.config.fiftyone:
            # Always pushed again: the FiftyOne database is outside the run directory, and a push is idempotent.
            logger.info("Stage fiftyone")
            self._fiftyone()
            self.store.mark_stage_done("fiftyone")

    def _stage(self, name: str, work: Any) -> None:
        if self.store.stage_done(name):
            logger.info("Stage %s already done; skipping", name)
            return
        logger.info("Stage %s", name)
        work()
        self.store.mark_stage_done(name)

    # -- stages ----------------------------------------------------------------------------------

    def _ingest(self) -> None:
        from auditor.data.sources import load_samples

        config = self.config
        if config.format == "demo":
            from auditor.data.demo import build_demo_dataset

            build_demo_dataset(Path(config.data), seed=config.seed)
            config = replace(config, format="imagefolder")
        if config.fiftyone_dataset is not None:
            samples, errors = self._ingest_fiftyone(config.fiftyone_dataset)
        else:
            samples, errors = load_samples(config, self.store)
        self.store.write_table(ERRORS_TABLE, errors)
        self.store.write_table(INGEST_TABLE, samples)
        self.store.update_manifest(
            data_fingerprint=data_fingerprint(samples),
            n_samples=len(samples),
            n_errors=len(errors),
            versions=package_versions(),
        )
        logger.info("Ingested %d samples (%d unreadable files recorded)", len(samples), len(errors))

    def _ingest_fiftyone(self, dataset_name: str) -> tuple[pd.DataFrame, pd.DataFrame]:
        from auditor.integrations.fiftyone import EMBEDDINGS_ARRAY, load_fiftyone_embeddings, load_fiftyone_samples

        config = self.config
        samples, errors = load_fiftyone_samples(
            dataset_name,
            label_field=config.label_field,
            split_field=config.split_field,
            embeddings_field=config.embeddings_field,
            seed=config.seed,
            val_fraction=config.val_fraction,
        )
        if config.embeddings_field is not None:
            embeddings = load_fiftyone_embeddings(dataset_name, config.embeddings_field, samples[SAMPLE_ID].tolist())
            self.store.write_array(EMBEDDINGS_ARRAY, embeddings)
        return samples, errors

    def _inputs(self) -> tuple[pd.DataFrame, torch.Tensor, torch.Tensor, list[str]]:
        samples = self.store.read_table(INGEST_TABLE)
        classes: list[str] = self.store.read_json(CLASSES_FILE)
        pixels = torch.from_numpy(np.ascontiguousarray(self.store.read_array(PIXELS_ARRAY)))
        index = {c: i for i, c in enumerate(classes)}
        targets = torch.tensor(samples[LABEL].map(index).to_numpy(dtype=np.int64), dtype=torch.long)
        return samples, pixels, targets, classes

    def _train(self) -> None:
        from auditor.data.images import default_image_size, infer_channels, load_pixels
        from auditor.models.fitting import class_index, resolve_model_spec, run_training

        samples = self.store.read_table(INGEST_TABLE)
        # Both files, not just pixels: a kill between the two writes must not leave classes.json missing.
        if not (self.store.has(f"{PIXELS_ARRAY}.npy") and self.store.has(CLASSES_FILE)):
            channels = infer_channels(samples)
            size = self.config.image_size or default_image_size(samples, channels)
            self.store.write_array(PIXELS_ARRAY, load_pixels(samples, size, channels))
            self.store.write_json(CLASSES_FILE, class_index(samples))
        samples, pixels, targets, classes = self._inputs()
        native = int(np.median(np.minimum(samples[WIDTH], samples[HEIGHT])))
        spec = resolve_model_spec(
            self.config,
            native_size=native,
            channels=pixels.shape[1],
            image_size=pixels.shape[2],
            n_classes=len(classes),
        )
        run_training(self.store, self.config, spec, pixels, targets, samples)

    def _score(self) -> None:
        from auditor.influence.engine import run_scoring
        from auditor.models.fitting import load_trained

        samples, pixels, targets, _ = self._inputs()
        spec, trained = load_trained(self.store)
        run_scoring(
            self.store,
            samples,
            pixels,
            targets,
            spec,
            trained,
            batch_size=self.config.batch_size,
            progress=self.config.progress,
            target_specs=self.config.targets,
            method=self.config.method,
            seed=self.config.seed,
        )

    def _fewshot(self) -> None:
        from auditor.fewshot.stage import run_fewshot_stage

        run_fewshot_stage(self.store, self.config)

    def _analyze(self) -> None:
        from auditor.analysis.run import run_analysis

        classes: list[str] = self.store.read_json(CLASSES_FILE)
        table = run_analysis(self.store, classes)
        if self.config.format == "demo":
            from auditor.analysis.planted import score_planted

            planted = Path(self.config.data) / "planted.json"
            findings = self.store.read_json(FINDINGS_FILE)
            self.store.write_json(DEMO_CHECK_FILE, score_planted(planted, table, findings))

    def _verify_stage(self) -> None:
        """`--verify`: check the scores by retraining (auditor.runcheck) before the report shows them."""
        if self.config.verify:
            self._stage("verify", self._verify)

    def _verify(self) -> None:
        from auditor.influence.evaluate import RetrainCheckSettings
        from auditor.runcheck import check_run

        check_run(self.store, self.config, RetrainCheckSettings(seed=self.config.seed), progress=self.config.progress)

    def _report(self) -> None:
        from auditor.report.render import run_reports

        if self.config.rules is not None:
            from auditor.gate import run_gate

            run_gate(self.store, self.config.rules)  # writes gate.json, which every report then renders
        run_reports(self.store)

    def _fiftyone(self) -> None:
        from auditor.integrations.fiftyone import push_audit
        from auditor.report.render import run_reports

        push_audit(self.store, dataset_name=self.config.fiftyone_dataset)
        run_reports(self.store)  # again, so each finding links to its saved view


def load_result(store: RunStore) -> AuditResult:
    """Read an existing run directory's outputs into an AuditResult."""
    names = ("index.html", "audit.json", "summary.md", "fiftyone.json")
    paths = {name: store.path(name) for name in names if store.has(name)}
    paths["samples"] = store.path(f"{SAMPLES_TABLE}.parquet")
    return AuditResult(
        run_dir=store.root,
        samples=store.read_table(SAMPLES_TABLE),
        findings=store.read_json(FINDINGS_FILE),
        metrics=store.read_json(METRICS_FILE),
        paths=paths,
    )


def run_audit(config: AuditConfig) -> AuditResult:
    """Run (or resume) the audit described by `config`."""
    return Auditor(config).run()
