"""RunStore: the only code that reads or writes a run directory (parquet, npy, json, text, model states).

Every write is atomic (temporary file + rename), so a killed run never leaves a half-written table.
"""

from __future__ import annotations

import json
import logging
import os
import shutil
import tempfile
from collections.abc import Iterator
from contextlib import contextmanager
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd

from auditor.errors import RunMismatchError
from auditor.schema import MANIFEST_FILE

logger = logging.getLogger(__name__)

_RUN_MARKER = MANIFEST_FILE
_UMASK = os.umask(0)
os.umask(_UMASK)


@contextmanager
def _atomic_path(target: Path) -> Iterator[Path]:
    """Yield a temporary path beside `target`; move it over `target` only if the block succeeds."""
    target.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp_name = tempfile.mkstemp(prefix=f".{target.name}.", suffix=".tmp", dir=target.parent)
    os.close(fd)
    tmp = Path(tmp_name)
    try:
        yield tmp
        os.chmod(tmp, 0o666 & ~_UMASK)  # mkstemp makes 0600 files; outputs are meant to be shared
        os.replace(tmp, target)
    finally:
        if tmp.exists():
            tmp.unlink()


def _json_default(value: Any) -> Any:
    """Make numpy scalars and arrays, paths and timestamps JSON-serialisable."""
    if isinstance(value, np.generic):
        return value.item()
    if isinstance(value, np.ndarray):
        return value.tolist()
    if isinstance(value, Path):
        return str(value)
    if isinstance(value, datetime):
        return value.isoformat()
    raise TypeError(f"not JSON serialisable: {type(value).__name__}")


def dumps_json(obj: Any) -> str:
    """Deterministic JSON text (sorted keys, NaN written as null) used for every JSON output."""
    return json.dumps(_nan_to_none(obj), indent=2, sort_keys=True, default=_json_default, allow_nan=False)


def _nan_to_none(obj: Any) -> Any:
    if isinstance(obj, float) and not np.isfinite(obj):
        return None
    if isinstance(obj, np.floating) and not np.isfinite(obj):
        return None
    if isinstance(obj, dict):
        return {str(k): _nan_to_none(v) for k, v in obj.items()}
    if isinstance(obj, list | tuple):
        return [_nan_to_none(v) for v in obj]
    return obj


class RunStore:
    """A run directory `reports/<name>/`: tables, arrays, JSON documents, model states, rendered files."""

    def __init__(self, root: str | Path) -> None:
        self.root = Path(root).resolve()

    # -- lifecycle -------------------------------------------------------------------------------

    def exists(self) -> bool:
        """True if the directory holds a run (has a manifest)."""
        return (self.root / _RUN_MARKER).is_file()

    def prepare(self, settings: dict[str, Any], *, overwrite: bool, tool_version: str) -> dict[str, Any]:
        """Create the run or reopen it for resumption; refuse a run made with other settings.

        Returns the manifest. With `overwrite` an existing directory is deleted first.
        """
        if overwrite and self.root.exists():
            if not self.exists() and any(self.root.iterdir()):
                raise RunMismatchError(
                    f"{self.root} exists and is not an auditor run; refusing to delete it with --overwrite. "
                    "Choose another --out or --name."
                )
            logger.info("Removing existing run directory %s (--overwrite)", self.root)
            shutil.rmtree(self.root)
        if self.exists():
            manifest = self.read_manifest()
            if manifest.get("settings") != settings:
                diff = sorted(
                    k
                    for k in set(settings) | set(manifest.get("settings", {}))
                    if settings.get(k) != manifest.get("settings", {}).get(k)
                )
                raise RunMismatchError(
                    f"run directory {self.root} was made with other settings (differs in: {', '.join(diff)}); "
                    "pass --overwrite to start over or choose another --name/--out"
                )
            logger.info("Resuming run in %s (stages done: %s)", self.root, ", ".join(manifest["stages_done"]) or "none")
            self.remove_stale_temporaries()
            return manifest
        if self.root.exists() and any(self.root.iterdir()):
            raise RunMismatchError(
                f"{self.root} exists, is not empty and is not an auditor run; choose another --out or --name"
            )
        self.root.mkdir(parents=True, exist_ok=True)
        manifest = {
            "run_name": self.root.name,
            "tool_version": tool_version,
            "settings": settings,
            "stages_done": [],
            "created": datetime.now(UTC).isoformat(timespec="seconds"),
        }
        self.write_manifest(manifest)
        return manifest

    def remove_stale_temporaries(self) -> int:
        """Delete the temporary files of writes a killed process never finished; returns how many.

        Only called when a run is reopened by one process, so no live write can own them. They were never
        renamed over their target, so nothing reads them; removing them just keeps the directory clean.
        """
        stale = [p for p in self.root.rglob(".*.tmp") if p.is_file()]
        for path in stale:
            path.unlink()
        if stale:
            logger.info("Removed %d temporary file(s) left by an interrupted write", len(stale))
        return len(stale)

    # -- manifest --------------------------------------------------------------------------------

    def read_manifest(self) -> dict[str, Any]:
        """The run's manifest.json."""
        data: dict[str, Any] = self.read_json(MANIFEST_FILE)
        return data

    def write_manifest(self, manifest: dict[str, Any]) -> None:
        """Replace manifest.json atomically."""
        self.write_json(MANIFEST_FILE, manifest)

    def update_manifest(self, **fields: Any) -> dict[str, Any]:
        """Merge `fields` into the manifest and write it back."""
        manifest = self.read_manifest()
        manifest.update(fields)
        self.write_manifest(manifest)
        return manifest

    def stage_done(self, stage: str) -> bool:
        """True if `stage` completed in an earlier invocation."""
        return self.exists() and stage in self.read_manifest().get("stages_done", [])

    def mark_stage_done(self, stage: str) -> None:
        """Record `stage` as complete (after all its outputs were written)."""
        manifest = self.read_manifest()
        if stage not in manifest["stages_done"]:
            manifest["stages_done"].append(stage)
        self.write_manifest(manifest)

    def clear_stages_from(self, stages: list[str]) -> None:
        """Forget completion of `stages` (used when an upstream stage is re-run)."""
        manifest = self.read_manifest()
        manifest["stages_done"] = [s for s in manifest["stages_done"] if s not in stages]
        self.write_manifest(manifest)

    # -- files -----------------------------------------------------------------------------------

    def path(self, relative: str) -> Path:
        """Absolute path of `relative` inside the run directory (for read-only use by callers)."""
        resolved = (self.root / relative).resolve()
        if self.root not in resolved.parents and resolved != self.root:
            raise ValueError(f"{relative!r} escapes the run directory")
        return resolved

    def has(self, relative: str) -> bool:
        """True if a file `relative` exists in the run directory."""
        return self.path(relative).exists()

    def remove(self, relative: str) -> bool:
        """Delete the file `relative` if present (an output that no longer holds); True if it existed."""
        target = self.path(relative)
        if not target.is_file():
            return False
        target.unlink()
        return True

    def write_table(self, name: str, frame: pd.DataFrame) -> Path:
        """Write `name`.parquet atomically."""
        target = self.path(f"{name}.parquet")
        with _atomic_path(target) as tmp:
            frame.to_parquet(tmp, index=False)
        return target

    def read_table(self, name: str) -> pd.DataFrame:
        """Read `name`.parquet."""
        return pd.read_parquet(self.path(f"{name}.parquet"))

    def has_table(self, name: str) -> bool:
        """True if `name`.parquet exists."""
        return self.has(f"{name}.parquet")

    def write_json(self, name: str, obj: Any) -> Path:
        """Write `obj` as deterministic JSON to `name` atomically."""
        return self.write_text(name, dumps_json(obj) + "\n")

    def read_json(self, name: str) -> Any:
        """Parse the JSON file `name`."""
        return json.loads(self.path(name).read_text(encoding="utf-8"))

    def write_text(self, name: str, text: str) -> Path:
        """Write UTF-8 text to `name` atomically."""
        target = self.path(name)
        with _atomic_path(target) as tmp:
            tmp.write_text(text, encoding="utf-8")
        return target

    def write_array(self, name: str, array: np.ndarray) -> Path:
        """Write `name`.npy atomically."""
        target = self.path(f"{name}.npy")
        with _atomic_path(target) as tmp, tmp.open("wb") as handle:
            np.save(handle, array)
        return target

    def read_array(self, name: str, *, mmap: bool = False) -> np.ndarray:
        """Read `name`.npy, memory-mapped if `mmap`."""
        return np.load(self.path(f"{name}.npy"), mmap_mode="r" if mmap else None, allow_pickle=False)

    def save_state(self, name: str, state: dict[str, Any]) -> Path:
        """Save a torch state dict (tensors and plain values only) to `name` atomically."""
        import torch

        target = self.path(name)
        with _atomic_path(target) as tmp:
            torch.save(state, tmp)
        return target

    def load_state(self, name: str) -> dict[str, Any]:
        """Load a state saved by `save_state`; `weights_only=True` so no code runs from the file."""
        import torch

        loaded: dict[str, Any] = torch.load(self.path(name), map_location="cpu", weights_only=True)
        return loaded

    def scratch_dir(self, name: str) -> Path:
        """A folder inside the run for derived files (e.g. an extracted zip); created if absent."""
        folder = self.path(name)
        folder.mkdir(parents=True, exist_ok=True)
        return folder
