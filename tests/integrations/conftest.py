"""Fixtures of the FiftyOne tests: the planted images and one FiftyOne dataset audited through the CLI."""

from __future__ import annotations

import pytest
from fo_helpers import (
    AUDIT_ARGS,
    AuditedDataset,
    PlantedImages,
    build_planted_images,
    create_fiftyone_dataset,
    fiftyone_env,
    run_cli,
    snapshot_dataset,
)

DATASET = "planted"


@pytest.fixture(scope="session")
def planted_images(tmp_path_factory: pytest.TempPathFactory) -> PlantedImages:
    return build_planted_images(tmp_path_factory.mktemp("planted-images"))


@pytest.fixture(scope="module")
def audited_dataset(planted_images: PlantedImages, tmp_path_factory: pytest.TempPathFactory) -> AuditedDataset:
    """The planted images as a FiftyOne dataset (split field, scanner metadata, `emb` vectors), audited by the CLI."""
    root = tmp_path_factory.mktemp("fiftyone")
    env = fiftyone_env(root / "db")
    ids = create_fiftyone_dataset(DATASET, planted_images, env)
    run_dir = root / "reports" / "planted-audit"
    argv = [
        "audit",
        "--fiftyone",
        DATASET,
        "--label-field",
        "ground_truth",
        "--split-field",
        "split",
        "--embeddings-field",
        "emb",
        "--out",
        str(run_dir),
        *AUDIT_ARGS,
    ]
    result = run_cli(argv, env)
    assert result.returncode == 0, result.stderr
    return AuditedDataset(
        name=DATASET,
        images=planted_images,
        env=env,
        run_dir=run_dir,
        ids=ids,
        audit_argv=argv,
        snapshot=snapshot_dataset(DATASET, env),
    )
