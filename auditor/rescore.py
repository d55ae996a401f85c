"""`auditor score RUN`: score an audited run again with its stored models, then analyze and report it again.

Under torchrun (`torchrun --nproc_per_node N -m auditor score RUN`) every rank loads the models and
scores its block of rows (see auditor.influence.distributed); rank 0 alone writes the tables, the
manifest and runs analyze and report, so the run directory ends exactly as after a one-process score.
"""

from __future__ import annotations

import dataclasses
import logging
from pathlib import Path

from auditor.config import AuditConfig
from auditor.errors import AuditorError
from auditor.influence.distributed import barrier, process_group
from auditor.models.fitting import MODEL_INFO_FILE
from auditor.runcheck import CHECK_FILE
from auditor.schema import GATE_FILE
from auditor.store import RunStore

logger = logging.getLogger(__name__)

RESCORED_STAGES = ["score", "analyze", "verify", "report", "fiftyone"]


def config_of_run(store: RunStore, *, progress: bool) -> AuditConfig:
    """The AuditConfig a run was made with, from its manifest (FiftyOne push off: `score` never pushes)."""
    settings = store.read_manifest().get("settings", {})
    known = {f.name for f in dataclasses.fields(AuditConfig)}
    # A manifest may carry settings this version no longer knows; they cannot change how it scores.
    kept = {k: v for k, v in settings.items() if k in known}
    kept["targets"] = tuple(kept.get("targets", ()))
    return AuditConfig(**kept, out=str(store.root), fiftyone=False, progress=progress)


def check_scorable(store: RunStore, *, overwrite: bool) -> None:
    """Raise AuditorError (one line, exit 2) unless `store` is a run with trained models that may be scored."""
    if not store.exists():
        raise AuditorError(f"{store.root} is not an auditor run directory (no manifest.json)")
    if not store.stage_done("train") or not store.has(MODEL_INFO_FILE):
        raise AuditorError(f"{store.root} has no trained models; run `auditor audit` on it first")
    if store.stage_done("score") and not overwrite:
        raise AuditorError(f"{store.root} is already scored; pass --overwrite to score it again")


def rescore_run(run_dir: str | Path, *, overwrite: bool, progress: bool = True) -> Path:
    """Run the score, analyze and report stages of `run_dir` again; returns the run directory.

    Checks come first and only read, so every torchrun rank fails the same way before any joins the job.
    """
    from auditor.pipeline import Auditor

    store = RunStore(run_dir)
    check_scorable(store, overwrite=overwrite)
    auditor = Auditor(config_of_run(store, progress=progress))
    with process_group() as world:
        if world.primary:
            store.clear_stages_from(RESCORED_STAGES)
            if store.has(CHECK_FILE):  # it checked the old scores
                store.path(CHECK_FILE).unlink()
            if store.has(GATE_FILE):
                logger.warning(
                    "%s judged the earlier scores; run `auditor check %s --rules ...` to gate the new ones",
                    GATE_FILE,
                    store.root,
                )
        logger.info("Scoring %s with its stored models (%d process(es))", store.root, world.size)
        # The Auditor's own stage bodies, so `score` and `audit` cannot drift apart; _score is collective.
        auditor._score()
        if world.primary:
            store.mark_stage_done("score")
            auditor._back_stages()  # analyze and report, as after a sharded audit (FiftyOne is off here)
        barrier()  # no rank leaves (and tears the group down) while rank 0 still writes
    return store.root
