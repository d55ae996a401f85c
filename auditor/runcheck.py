"""`auditor eval RUN` and `auditor audit --verify`: check a run's influence scores by retraining its proxy model.

Removes the top 5% of the main model's training rows by each harm column (`harm_score` from `--method`,
the `if_harm` and `knn_harm` second opinions, and `label_issue_score`) and retrains, against removing a
random 5%; retrains on random halves for each column's LDS on the validation loss. Writes
`influence_check.json` and its summary into metrics.json under `influence_check` (so rules can gate on
it and audit.json carries it); the report's "Influence check" section shows it.
"""

from __future__ import annotations

import logging
from pathlib import Path
from typing import Any

import numpy as np

from auditor.config import AuditConfig
from auditor.errors import AuditorError
from auditor.influence.engine import IF_HARM, KNN_HARM, SCORES_TABLE
from auditor.influence.evaluate import RetrainCheckSettings, check_by_retraining
from auditor.models.fitting import MAIN_MODEL, MODEL_INFO_FILE, load_trained
from auditor.models.train import TrainSettings
from auditor.schema import HARM_SCORE, LABEL_ISSUE_SCORE, METRICS_FILE, SAMPLE_ID, SAMPLES_TABLE, SPLIT
from auditor.store import RunStore

logger = logging.getLogger(__name__)

CHECK_FILE = "influence_check.json"
METRICS_KEY = "influence_check"
CHECKED_COLUMNS = (HARM_SCORE, IF_HARM, KNN_HARM, LABEL_ISSUE_SCORE)


def check_run(
    store: RunStore, config: AuditConfig, settings: RetrainCheckSettings, *, progress: bool
) -> dict[str, Any]:
    """Retrain the run's main model on subsets of its training rows; write and return the check."""
    from auditor.pipeline import Auditor

    samples, pixels, targets, _ = Auditor(config)._inputs()
    spec, trained = load_trained(store)
    main = next(t for t in trained if t.name == MAIN_MODEL)
    scores = store.read_table(SCORES_TABLE)
    if store.has(f"{SAMPLES_TABLE}.parquet"):
        analysed = store.read_table(SAMPLES_TABLE).set_index(SAMPLE_ID)
        if LABEL_ISSUE_SCORE in analysed:
            scores[LABEL_ISSUE_SCORE] = analysed[LABEL_ISSUE_SCORE].reindex(scores[SAMPLE_ID]).to_numpy()
    train_rows = main.train_rows
    columns = {c: scores[c].to_numpy(dtype=np.float64)[train_rows] for c in CHECKED_COLUMNS if c in scores}
    val_rows = np.flatnonzero(samples[SPLIT].to_numpy() == "val")
    if not len(val_rows):
        raise AuditorError(f"{store.root} has no validation split; the check measures the validation loss")
    train = TrainSettings(
        epochs=config.epochs,
        batch_size=config.batch_size,
        learning_rate=config.learning_rate,
        checkpoints=1,
        seed=config.seed,  # the main model is the plan's first model: seed + 0
    )
    logger.info(
        "Checking %s by retraining: %d trainings of %d epochs",
        ", ".join(columns),
        1 + len(columns) + settings.random_removals + (settings.subsets if settings.subsets >= 2 else 0),
        config.epochs,
    )
    result = check_by_retraining(
        spec.build, train, pixels, targets, train_rows, val_rows, columns, settings, progress=progress
    )
    result["method"] = config.method
    store.write_json(CHECK_FILE, result)
    if store.has(METRICS_FILE):
        metrics = store.read_json(METRICS_FILE)
        metrics[METRICS_KEY] = check_summary(result)
        store.write_json(METRICS_FILE, metrics)
    return result


def check_summary(result: dict[str, Any]) -> dict[str, Any]:
    """The metrics.json / audit.json view of a check: what a rule pack may gate on."""
    removal = result["removal"]
    random_drop = removal["random"]["loss_drop"]
    summary: dict[str, Any] = {
        "method": result.get("method"),
        "n_removed": result["n_removed"],
        "full_loss": result["full"]["loss"],
        "random_loss_drop": random_drop,
        "loss_drop": {name: entry["loss_drop"] for name, entry in removal.items() if name != "random"},
        "seconds": result["seconds"],
    }
    if HARM_SCORE in removal:
        summary["harm_beats_random"] = bool(removal[HARM_SCORE]["loss_drop"] > random_drop)
    if "lds" in result:
        summary["lds"] = result["lds"]
        summary["subsets"] = result["subsets"]
    return summary


def eval_run(run_dir: str | Path, settings: RetrainCheckSettings, *, progress: bool = True) -> dict[str, Any]:
    """`auditor eval RUN`: check an analysed run, then render its reports again with the check in them."""
    from auditor.report.render import run_reports
    from auditor.rescore import config_of_run

    store = RunStore(run_dir)
    if not store.exists():
        raise AuditorError(f"{store.root} is not an auditor run directory (no manifest.json)")
    config = config_of_run(store, progress=progress)
    if config.few_shot:
        raise AuditorError(f"{store.root} is a few-shot run; its check is `auditor audit ... --few-shot --verify`")
    if not store.stage_done("analyze") or not store.has(MODEL_INFO_FILE):
        raise AuditorError(f"{store.root} is not analysed yet; finish `auditor audit` on it first")
    result = check_run(store, config, settings, progress=progress)
    run_reports(store)
    return result
