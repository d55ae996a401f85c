"""Frozen, keyword-only configuration of an audit, validated on creation and written to manifest.json.

Only options that change results take part in the run-compatibility check (`result_settings`).
"""

from __future__ import annotations

import json
import re
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

from auditor.errors import ConfigError

LEARNERS = ("protonet", "maml")
# Harm estimators of `--method` (auditor.influence.methods.METHODS has one function per name).
DEFAULT_HARM_METHOD = "if-cg"
HARM_METHODS = (
    "tracin",
    "tracin-normalized",
    "trak",
    "if-exact",
    "if-cg",
    "if-lissa",
    "if-ekfac",
    "knn-shapley",
    "loss",
    "grad-norm",
)
FORMATS = ("auto", "imagefolder", "csv", "omniglot", "mini-imagenet", "demo")
_FIELD_NAME = re.compile(r"[A-Za-z_][A-Za-z0-9_]*(\.[A-Za-z_][A-Za-z0-9_]*)*")

# Options that do not change the tables: they may differ between a run and its resumption.
_NON_RESULT_FIELDS = frozenset({"overwrite", "fiftyone", "progress", "name", "out", "rules"})
# Options that only mean something for a FiftyOne source; left out of `result_settings` otherwise, so runs made
# before they existed still resume.
_FIFTYONE_SOURCE_FIELDS = frozenset({"fiftyone_dataset", "label_field", "split_field", "embeddings_field"})
# Few-shot options: left out of `result_settings` for ordinary runs, so runs made before they existed still resume.
_FEWSHOT_FIELDS = frozenset({"few_shot", "ways", "shots", "queries", "learner", "verify", "tasks", "meta_steps"})


@dataclass(frozen=True, kw_only=True)
class AuditConfig:
    """Every parameter of an audit. Written verbatim into manifest.json."""

    data: str = field(metadata={"help": "Dataset folder, CSV manifest, Omniglot zip, or the FiftyOne dataset's name."})
    format: str = field(default="auto", metadata={"help": f"Layout of DATA: one of {FORMATS}."})
    metadata: str | None = field(default=None, metadata={"help": "CSV with a filepath column to join."})
    name: str | None = field(default=None, metadata={"help": "Run name; default: DATA's folder name."})
    out: str | None = field(default=None, metadata={"help": "Run directory; default reports/<name>."})
    model: str = field(default="auto", metadata={"help": "'auto' or 'pkg.module:factory'."})
    weights: str | None = field(default=None, metadata={"help": "State dict for a user model."})
    epochs: int = field(default=20, metadata={"help": "Training epochs of each proxy model."})
    seed: int = field(default=0, metadata={"help": "Seed of every random choice."})
    val_fraction: float = field(default=0.2, metadata={"help": "Validation share when DATA has no splits."})
    folds: int = field(default=2, metadata={"help": "Cross-fitting folds over all samples (0: off)."})
    checkpoints: int = field(default=5, metadata={"help": "Checkpoints kept per training (TracIn)."})
    batch_size: int = field(default=64, metadata={"help": "Samples per training / scoring batch."})
    learning_rate: float = field(default=0.01, metadata={"help": "Peak SGD learning rate."})
    image_size: int | None = field(default=None, metadata={"help": "Proxy input size; default by data."})
    targets: tuple[str, ...] = field(
        default=(), metadata={"help": "Extra influence targets (auditor.influence.targets spec strings)."}
    )
    method: str = field(default=DEFAULT_HARM_METHOD, metadata={"help": f"Harm estimator: one of {HARM_METHODS}."})
    overwrite: bool = field(default=False, metadata={"help": "Delete an existing run directory first."})
    fiftyone: bool = field(default=True, metadata={"help": "Write the FiftyOne dataset."})
    fiftyone_dataset: str | None = field(default=None, metadata={"help": "FiftyOne dataset to audit (not DATA)."})
    label_field: str = field(default="ground_truth", metadata={"help": "Classification field of the FiftyOne labels."})
    split_field: str | None = field(default=None, metadata={"help": "FiftyOne string field naming each split."})
    embeddings_field: str | None = field(default=None, metadata={"help": "FiftyOne vector field of embeddings."})
    progress: bool = field(default=True, metadata={"help": "Show progress bars on a TTY."})
    rules: str | None = field(default=None, metadata={"help": "Rule pack (YAML) the report stage gates the run with."})
    few_shot: bool = field(
        default=False, metadata={"help": "Episodic few-shot audit (auditor.fewshot) instead of a proxy."}
    )
    ways: int = field(default=5, metadata={"help": "Few-shot classes per task."})
    shots: int = field(default=1, metadata={"help": "Few-shot support images per class."})
    queries: int = field(default=5, metadata={"help": "Few-shot query images per class."})
    learner: str = field(default="protonet", metadata={"help": f"Few-shot meta-learner: one of {LEARNERS}."})
    verify: bool = field(
        default=False, metadata={"help": "Check the scores by retraining (few-shot: the removal edit)."}
    )
    tasks: int = field(default=200, metadata={"help": "Few-shot meta-training tasks (scored, removable)."})
    meta_steps: int = field(default=500, metadata={"help": "Few-shot meta-training (Adam) steps."})

    def __post_init__(self) -> None:
        if self.format not in FORMATS:
            raise ConfigError(f"--format must be one of {', '.join(FORMATS)}; got {self.format!r}")
        if self.epochs < 1:
            raise ConfigError(f"--epochs must be at least 1; got {self.epochs}")
        if not 0.0 < self.val_fraction < 1.0:
            raise ConfigError(f"val_fraction must be in (0, 1); got {self.val_fraction}")
        if self.folds == 1 or self.folds < 0:
            raise ConfigError(f"--folds must be 0 (off) or at least 2; got {self.folds}")
        if self.checkpoints < 1:
            raise ConfigError(f"--checkpoints must be at least 1; got {self.checkpoints}")
        if self.batch_size < 1:
            raise ConfigError(f"--batch-size must be positive; got {self.batch_size}")
        if self.learning_rate <= 0:
            raise ConfigError(f"--learning-rate must be positive; got {self.learning_rate}")
        if self.image_size is not None and not 8 <= self.image_size <= 512:
            raise ConfigError(f"--image-size must be between 8 and 512; got {self.image_size}")
        if self.model != "auto" and ":" not in self.model:
            raise ConfigError(f"--model must be 'auto' or 'pkg.module:factory'; got {self.model!r}")
        if self.weights is not None and self.model == "auto":
            raise ConfigError("--weights needs --model pkg.module:factory naming the architecture")
        self._validate_fiftyone_source()
        self._validate_few_shot()
        from auditor.influence.targets import parse_target

        if self.method not in HARM_METHODS:
            raise ConfigError(f"--method must be one of {', '.join(HARM_METHODS)}; got {self.method!r}")

        names = [parse_target(spec).column for spec in self.targets]
        if len(set(names)) != len(names):
            raise ConfigError(f"two --target-* options share a name: {sorted(names)}; name each group differently")

    def _validate_fiftyone_source(self) -> None:
        for option, value in (
            ("--label-field", self.label_field),
            ("--split-field", self.split_field),
            ("--embeddings-field", self.embeddings_field),
        ):
            if value is not None and not _FIELD_NAME.fullmatch(value):
                raise ConfigError(f"{option} must be a FiftyOne field name (letters, digits, _ and .); got {value!r}")
        if self.fiftyone_dataset is None:
            if self.split_field is not None or self.embeddings_field is not None:
                raise ConfigError("--split-field and --embeddings-field need --fiftyone DATASET")
            return
        if not self.fiftyone_dataset.strip():
            raise ConfigError("--fiftyone needs the name of a FiftyOne dataset; got an empty name")
        if self.format != "auto":
            raise ConfigError(f"--format {self.format} cannot be combined with --fiftyone (the dataset is the layout)")
        if self.metadata is not None:
            raise ConfigError("--metadata cannot be combined with --fiftyone; store the metadata as sample fields")
        if self.data != self.fiftyone_dataset:
            raise ConfigError(
                f"with --fiftyone, DATA must be omitted or equal the dataset name; got {self.data!r} and "
                f"{self.fiftyone_dataset!r}"
            )

    def _validate_few_shot(self) -> None:
        if self.ways < 2:
            raise ConfigError(f"--ways must be at least 2 (a task tells classes apart); got {self.ways}")
        if self.shots < 1:
            raise ConfigError(f"--shots must be at least 1; got {self.shots}")
        if self.queries < 1:
            raise ConfigError(f"--queries must be at least 1; got {self.queries}")
        if self.learner not in LEARNERS:
            raise ConfigError(f"--learner must be one of {', '.join(LEARNERS)}; got {self.learner!r}")
        if self.tasks < 2:
            raise ConfigError(f"--tasks must be at least 2; got {self.tasks}")
        if self.meta_steps < 1:
            raise ConfigError(f"--meta-steps must be at least 1; got {self.meta_steps}")
        if self.few_shot and self.fiftyone_dataset is not None:
            raise ConfigError("--few-shot reads images from DATA; it cannot be combined with --fiftyone DATASET")
        if self.few_shot and (self.model != "auto" or self.targets or self.method != DEFAULT_HARM_METHOD):
            raise ConfigError("--few-shot meta-trains its own Conv-4; --model, --method and --target-* do not apply")

    @property
    def run_name(self) -> str:
        """The run's name: `name` if given, else the FiftyOne dataset's or the data folder's name without extension."""
        if self.name:
            return self.name
        if self.fiftyone_dataset is not None:
            return self.fiftyone_dataset
        stem = Path(self.data).name
        return Path(stem).stem if stem.endswith((".zip", ".csv")) else stem

    @property
    def run_dir(self) -> Path:
        """Absolute run directory: `out`, else reports/<run name> below the working directory."""
        return Path(self.out).resolve() if self.out else (Path("reports") / self.run_name).resolve()

    def to_dict(self) -> dict[str, Any]:
        """JSON round-tripped dict of every field (tuples become lists, as they will on reload)."""
        loaded: dict[str, Any] = json.loads(json.dumps(asdict(self)))
        return loaded

    def result_settings(self) -> dict[str, Any]:
        """The fields that change results; a run directory may only be resumed with equal ones."""
        skipped = _NON_RESULT_FIELDS if self.fiftyone_dataset else _NON_RESULT_FIELDS | _FIFTYONE_SOURCE_FIELDS
        if not self.few_shot:
            skipped = skipped | _FEWSHOT_FIELDS
        if self.method == DEFAULT_HARM_METHOD:  # runs made before --method existed still resume
            skipped = skipped | {"method"}
        return {k: v for k, v in self.to_dict().items() if k not in skipped}
