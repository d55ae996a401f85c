"""Frozen, keyword-only configuration of an audit, validated on creation and written to manifest.json.

Only options that change results take part in the run-compatibility check (`result_settings`).
"""

from __future__ import annotations

import json
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

from auditor.errors import ConfigError

FORMATS = ("auto", "imagefolder", "csv", "omniglot", "mini-imagenet", "demo")

# Options that do not change the tables: they may differ between a run and its resumption.
_NON_RESULT_FIELDS = frozenset({"overwrite", "fiftyone", "progress", "name", "out", "rules"})


@dataclass(frozen=True, kw_only=True)
class AuditConfig:
    """Every parameter of an audit. Written verbatim into manifest.json."""

    data: str = field(metadata={"help": "Dataset folder, CSV manifest, or Omniglot zip."})
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
    overwrite: bool = field(default=False, metadata={"help": "Delete an existing run directory first."})
    fiftyone: bool = field(default=True, metadata={"help": "Write the FiftyOne dataset."})
    progress: bool = field(default=True, metadata={"help": "Show progress bars on a TTY."})
    rules: str | None = field(default=None, metadata={"help": "Rule pack (YAML) the report stage gates the run with."})

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

    @property
    def run_name(self) -> str:
        """The run's name: `name` if given, else the data folder's name without extension."""
        if self.name:
            return self.name
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
        return {k: v for k, v in self.to_dict().items() if k not in _NON_RESULT_FIELDS}
