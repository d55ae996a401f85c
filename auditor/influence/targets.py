"""Influence targets: which held-out samples' mean loss a training sample's influence is measured on.

Spec strings (CLI `--target-*` options, stored in the config):
  `val`                           the validation split (the default target; always scored)
  `group:NAME=cls1,cls2,...`      validation samples of a named group of classes
  `class:CLS`                     validation samples of one class
  `meta:COLUMN=VALUE`             validation samples whose metadata column has that value
  `sample:ID_OR_RELPATH`          one image ("which training images made this prediction?")
"""

from __future__ import annotations

import re
from dataclasses import dataclass

import numpy as np
import pandas as pd

from auditor.errors import ConfigError, DataError
from auditor.schema import LABEL, META_PREFIX, RELPATH, SAMPLE_ID, SPLIT

VALIDATION_TARGET = "val"
_KINDS = ("group", "class", "meta", "sample")


@dataclass(frozen=True)
class Target:
    """A parsed target: its name (used in column names), kind and argument."""

    name: str
    kind: str
    argument: str

    @property
    def column(self) -> str:
        """The samples-table column holding harm on this target."""
        return f"harm_{slugify(self.name)}"


def slugify(text: str) -> str:
    """Lower-case ASCII slug safe for column names, file names and FiftyOne views."""
    slug = re.sub(r"[^a-z0-9]+", "_", text.lower()).strip("_")
    return slug[:60] or "target"


def parse_target(spec: str) -> Target:
    """Parse one spec string; raise ConfigError naming the spec and the accepted forms."""
    if spec == VALIDATION_TARGET:
        return Target(name="val", kind="val", argument="")
    kind, sep, rest = spec.partition(":")
    if not sep or kind not in _KINDS or not rest:
        raise ConfigError(
            f"target {spec!r} is not understood; use group:NAME=cls1,cls2 | class:CLS | meta:COLUMN=VALUE | sample:ID"
        )
    if kind == "group":
        name, eq, classes = rest.partition("=")
        if not eq or not name or not classes.strip(","):
            raise ConfigError(f"--target-group {rest!r}: expected NAME=cls1,cls2,... (e.g. animals=cat,dog,bird)")
        return Target(name=name, kind=kind, argument=classes)
    if kind == "meta":
        column, eq, value = rest.partition("=")
        if not eq or not column:
            raise ConfigError(f"--target-meta {rest!r}: expected COLUMN=VALUE (e.g. scanner=b)")
        return Target(name=f"{column}={value}", kind=kind, argument=rest)
    return Target(name=f"{kind}_{rest}", kind=kind, argument=rest)


def target_rows(target: Target, samples: pd.DataFrame) -> np.ndarray:
    """Row indices of the samples whose mean loss is the target; DataError if the spec matches nothing."""
    is_val = samples[SPLIT].to_numpy() == "val"
    labels = samples[LABEL].astype(str)
    known = sorted(labels.unique())
    if target.kind == "val":
        mask = is_val
    elif target.kind in ("group", "class"):
        classes = [c.strip() for c in target.argument.split(",")] if target.kind == "group" else [target.argument]
        unknown = [c for c in classes if c not in set(known)]
        if unknown:
            preview = ", ".join(known[:10]) + (" ..." if len(known) > 10 else "")
            raise DataError(f"target {target.name!r}: unknown class(es) {unknown}; known classes: {preview}")
        mask = is_val & labels.isin(classes).to_numpy()
    elif target.kind == "meta":
        column, _, value = target.argument.partition("=")
        name = column if column.startswith(META_PREFIX) else f"{META_PREFIX}{column}"
        if name not in samples.columns:
            metas = [c for c in samples.columns if c.startswith(META_PREFIX)]
            raise DataError(f"target {target.name!r}: no metadata column {name!r}; available: {metas or 'none'}")
        mask = is_val & (samples[name].astype(str) == value).to_numpy()
    else:
        mask = ((samples[SAMPLE_ID] == target.argument) | (samples[RELPATH] == target.argument)).to_numpy()
        if not mask.any():
            raise DataError(f"target {target.name!r}: no sample with id or relative path {target.argument!r}")
    rows = np.flatnonzero(mask)
    if len(rows) == 0:
        raise DataError(f"target {target.name!r} matches no validation sample; choose classes/values present in val")
    return rows
