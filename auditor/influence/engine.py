"""Stage `score`: run TracIn and predictions with every trained model and write the score tables.

Owns I/O for scoring: methods (tracin, gradients) are pure; this module decides rows, targets and storage.
Outputs: `scores.parquet` (per sample), `probs_in.npy` (in-sample class probabilities averaged over
checkpoints), `probs_oof.npy` (out-of-fold probabilities; NaN without folds), `knn_oof.npy` (out-of-fold kNN label
posterior in each fold model's embedding; NaN without folds), `probs_main.npy`,
`embeddings.npy` (main model's penultimate features), all in samples-table row order.
"""

from __future__ import annotations

import logging

import numpy as np
import pandas as pd
import torch

from auditor.analysis.mislabels import KNN_OOF_NEIGHBOURS, knn_label_posterior
from auditor.influence.distributed import current_world
from auditor.influence.ihvp import IHVPSettings
from auditor.influence.influence_functions import compute_head_influence
from auditor.influence.knn_shapley import compute_knn_shapley
from auditor.influence.methods import DEFAULT_METHOD, HarmInputs, compute_harm
from auditor.influence.targets import parse_target, target_rows
from auditor.influence.tracin import compute_tracin
from auditor.models.fitting import MAIN_MODEL, ModelSpec, TrainedModel
from auditor.models.train import predict
from auditor.schema import HARM_SCORE, LOSS, SAMPLE_ID, SELF_INFLUENCE, SPLIT
from auditor.store import RunStore

logger = logging.getLogger(__name__)

SCORES_TABLE = "scores"
INFLUENCE_TABLE = "influence"
DYNAMICS_LOSS = "dynamics_loss"
OOF_LOSS = "oof_loss"
KNN_OOF_ARRAY = "knn_oof"  # out-of-fold kNN label posterior [N, C] (NaN rows without a fold that held them out)
_VAL_KEY = "\0val"  # target-set key of the validation loss (cannot clash with a harm_<name> column)


def _mean_probs_over_checkpoints(model: torch.nn.Module, trained: TrainedModel, pixels: torch.Tensor) -> np.ndarray:
    total: np.ndarray | None = None
    for checkpoint in trained.checkpoints:
        model.load_state_dict(checkpoint.state)
        probs, _ = predict(model, pixels)
        total = probs if total is None else total + probs
    assert total is not None
    return total / len(trained.checkpoints)


def run_scoring(
    store: RunStore,
    samples: pd.DataFrame,
    pixels: torch.Tensor,
    targets: torch.Tensor,
    spec: ModelSpec,
    trained: list[TrainedModel],
    *,
    batch_size: int,
    progress: bool,
    target_specs: tuple[str, ...] = (),
    method: str = DEFAULT_METHOD,
    seed: int = 0,
) -> pd.DataFrame:
    """Score every sample with every model and write the score tables; returns the scores frame.

    `target_specs` are extra influence targets (spec strings); each adds a `harm_<name>` column, filled for
    the main model's training rows, and rows in the long `influence` table. Under torchrun every rank
    must call this (TracIn rows are sharded over ranks); only rank 0 writes. `method` (one of
    auditor.influence.methods.METHODS) computes `harm_score` and the `harm_<name>` columns; self-influence,
    training dynamics and probabilities always come from TracIn's pass, which label_issue_score is tuned on.
    Rows outside the main model's training set (validation, test) get TracIn harm from the cross-fit model
    that trained them, whatever the method: `method` applies to the main model's training rows.
    """
    n, n_classes = len(samples), spec.n_classes
    splits = samples[SPLIT].to_numpy()
    models = {t.name: t for t in trained}
    main = models[MAIN_MODEL]
    folds = [t for t in trained if t.name != MAIN_MODEL]
    network = spec.build()
    val_rows = np.flatnonzero(splits == "val")

    network.load_state_dict(main.checkpoints[-1].state)
    probs_main, embeddings = predict(network, pixels)
    loss_main = -np.log(np.clip(probs_main[np.arange(n), targets.numpy()], 1e-12, None))

    self_sum = np.zeros(n)
    self_count = np.zeros(n)
    dyn_sum = np.zeros(n)
    probs_in_sum = np.zeros((n, n_classes))
    probs_oof = np.full((n, n_classes), np.nan)
    knn_oof = np.full((n, n_classes), np.nan)
    labels = targets.numpy()
    harm = np.full(n, np.nan)

    # Main model: harm on the validation loss (and on each extra target) for the rows it trained on, by `method`.
    train_rows = main.train_rows
    target_sets: dict[str, tuple[torch.Tensor, torch.Tensor]] = {}
    if len(val_rows):
        target_sets[_VAL_KEY] = (pixels[val_rows], targets[val_rows])
    for target_spec in target_specs:
        target = parse_target(target_spec)
        rows = target_rows(target, samples)
        target_sets[target.column] = (pixels[rows], targets[rows])
    if method.startswith("if-") and not isinstance(getattr(network, "head", None), torch.nn.Linear):
        logger.warning("--method %s needs a final nn.Linear named `head`; this model has none: harm by tracin", method)
        method = "tracin"
    harms = compute_harm(
        method,
        HarmInputs(
            network=network,
            main=main,
            pixels=pixels[train_rows],
            targets=targets[train_rows],
            target_sets=target_sets,
            batch_size=batch_size,
            progress=progress,
            seed=seed,
            workdir=store.root,
        ),
    )
    if _VAL_KEY in harms:
        harm[train_rows] = harms.pop(_VAL_KEY)
    target_columns = {}
    for column, values in harms.items():
        target_columns[column] = np.full(n, np.nan)
        target_columns[column][train_rows] = values
    if not folds:
        # No cross-fitting: the main model supplies dynamics for every row (in-sample only for train rows).
        full = compute_tracin(
            network, main.checkpoints, pixels, targets, batch_size=batch_size, progress=progress, desc="tracin all"
        )
        self_sum += full.self_influence
        self_count += 1
        dyn_sum += full.losses.mean(0)
        probs_in_sum += _mean_probs_over_checkpoints(network, main, pixels)
    for fold in folds:
        rows = fold.train_rows
        held_out = np.setdiff1d(np.arange(n), rows)
        fold_val = held_out[splits[held_out] == "val"]
        scored = compute_tracin(
            network,
            fold.checkpoints,
            pixels[rows],
            targets[rows],
            target_pixels=pixels[fold_val] if len(fold_val) else None,
            target_targets=targets[fold_val] if len(fold_val) else None,
            batch_size=batch_size,
            progress=progress,
            desc=f"tracin {fold.name}",
        )
        self_sum[rows] += scored.self_influence
        self_count[rows] += 1
        dyn_sum[rows] += scored.losses.mean(0)
        if scored.harm is not None:
            # Rows outside the main model's training set get their harm from the fold model that trained them.
            not_main = rows[splits[rows] != "train"]
            harm[not_main] = scored.harm[np.isin(rows, not_main)]
        probs_in_sum[rows] += _mean_probs_over_checkpoints(network, fold, pixels[rows])
        network.load_state_dict(fold.checkpoints[-1].state)
        fold_probs, fold_embeddings = predict(network, pixels)
        probs_oof[held_out] = fold_probs[held_out]
        # An out-of-fold kNN classifier: held-out rows against the fold's training rows, in the fold's embedding.
        knn_oof[held_out] = knn_label_posterior(
            fold_embeddings[held_out], fold_embeddings[rows], labels[rows], n_classes, k=KNN_OOF_NEIGHBOURS
        )

    extra_columns = _second_opinions(network, main, embeddings, targets, train_rows, val_rows, n)

    count = np.maximum(self_count, 1)
    probs_in = probs_in_sum / count[:, None]
    oof_loss = -np.log(np.clip(probs_oof[np.arange(n), targets.numpy()], 1e-12, None))
    scores = pd.DataFrame(
        {
            SAMPLE_ID: samples[SAMPLE_ID].to_numpy(),
            LOSS: loss_main,
            SELF_INFLUENCE: self_sum / count,
            DYNAMICS_LOSS: dyn_sum / count,
            OOF_LOSS: oof_loss,
            HARM_SCORE: harm,
            **extra_columns,
            **target_columns,
        }
    )
    if not current_world().primary:  # under torchrun every rank holds the same gathered scores; one writes them
        return scores
    store.write_array("probs_main", probs_main.astype(np.float32))
    store.write_array("probs_in", probs_in.astype(np.float32))
    store.write_array("probs_oof", probs_oof.astype(np.float32))
    store.write_array(KNN_OOF_ARRAY, knn_oof.astype(np.float32))
    store.write_array("embeddings", embeddings.astype(np.float32))
    store.write_table(SCORES_TABLE, scores)
    store.write_table(INFLUENCE_TABLE, long_influence_table(scores, list(target_columns), method=method))
    logger.info("Scored %d samples with %d model(s)", n, len(trained))
    return scores


# Head influence: the dense Hessian of a (features+1) x classes head costs P^2 doubles; above this EK-FAC.
_EXACT_HEAD_MAX_PARAMS = 3_000
IF_HARM = "if_harm"
IF_SELF_INFLUENCE = "if_self_influence"
KNN_HARM = "knn_harm"


def _second_opinions(
    network: torch.nn.Module,
    main: TrainedModel,
    embeddings: np.ndarray,
    targets: torch.Tensor,
    train_rows: np.ndarray,
    val_rows: np.ndarray,
    n: int,
) -> dict[str, np.ndarray]:
    """Two cheaper views of harm on the validation loss for the main model's training rows, beside TracIn.

    `if_harm` / `if_self_influence`: Koh & Liang influence functions on the final linear layer (convex
    there; exact inverse Hessian for small heads, EK-FAC above _EXACT_HEAD_MAX_PARAMS; LDS on digits 0.96
    exact, 0.87 EK-FAC, benchmarks/lds_digits.py). `knn_harm`: minus the kNN-Shapley value (Jia et al.
    2019) of each training row for the validation rows in embedding space. Higher = more harmful, as
    `harm_score`. Empty when there is no validation split or the model has no `head` Linear layer.
    """
    head = getattr(network, "head", None)
    if not len(val_rows) or not isinstance(head, torch.nn.Linear):
        return {}
    network.load_state_dict(main.checkpoints[-1].state)
    n_params = head.weight.numel() + (head.bias.numel() if head.bias is not None else 0)
    settings = IHVPSettings(method="exact" if n_params <= _EXACT_HEAD_MAX_PARAMS else "ekfac", damping=0.01)
    features = torch.from_numpy(embeddings.astype(np.float64))
    scores = compute_head_influence(
        head,
        features[train_rows],
        targets[train_rows],
        settings,
        target=(features[val_rows], targets[val_rows]),
    )
    labels = targets.numpy()
    values = compute_knn_shapley(embeddings[train_rows], labels[train_rows], embeddings[val_rows], labels[val_rows])
    columns = {IF_HARM: np.full(n, np.nan), IF_SELF_INFLUENCE: np.full(n, np.nan), KNN_HARM: np.full(n, np.nan)}
    if scores.harm is not None:
        columns[IF_HARM][train_rows] = scores.harm
    if scores.self_influence is not None:
        columns[IF_SELF_INFLUENCE][train_rows] = scores.self_influence
    columns[KNN_HARM][train_rows] = -values
    return columns


def long_influence_table(
    scores: pd.DataFrame, target_columns: list[str], *, method: str = DEFAULT_METHOD
) -> pd.DataFrame:
    """The `influence` table of ARCHITECTURE section 3: (sample_id, method, target, score), NaNs dropped.

    Targets: `self` (self-influence, always TracIn), `val` (harm on the validation loss) and each extra
    target's name, the harms by `method`.
    """
    parts = [("tracin", "self", SELF_INFLUENCE), (method, "val", HARM_SCORE)] + [
        (method, c.removeprefix("harm_"), c) for c in target_columns
    ]
    frames = [
        pd.DataFrame({SAMPLE_ID: scores[SAMPLE_ID], "method": by, "target": name, "score": scores[column]})
        for by, name, column in parts
    ]
    return pd.concat(frames, ignore_index=True).dropna(subset=["score"]).reset_index(drop=True)
