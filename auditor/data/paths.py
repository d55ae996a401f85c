"""Normalising paths read from manifests and archives, and keeping them inside their data root.

Untrusted paths (CSV rows, zip members) must pass through here before any file is opened.
"""

from __future__ import annotations

import os
from pathlib import Path, PurePosixPath


class PathEscapeError(ValueError):
    """A path from a manifest or archive points outside its root (e.g. '../x.png')."""


def to_posix(path: str) -> str:
    """`path` with backslashes turned into slashes and '.' segments and duplicate slashes removed."""
    text = path.strip().replace("\\", "/")
    parts = [p for p in text.split("/") if p not in ("", ".")]
    prefix = "/" if text.startswith("/") else ""
    return prefix + "/".join(parts)


def resolve_leniently(path: Path) -> Path:
    """`path` made absolute with every link followed, if that leads to something; else the absolute link itself.

    Never raises: `Path.resolve()` raises RuntimeError on a symlink loop, and listing a folder must not crash on
    one bad link. A loop or a broken link keeps the name the user sees, so reading it later reports that name.
    """
    real = os.path.realpath(path)
    return Path(real) if os.path.exists(real) else Path(os.path.abspath(path))


def resolve_inside(root: Path, path: str) -> tuple[str, Path]:
    """Return (relpath, absolute path) of `path` (relative to `root`, or absolute) if it lies inside `root`.

    `root` must already be resolved. Both the lexical path and the symlink-resolved path must stay inside
    `root`; otherwise PathEscapeError is raised.
    """
    posix = to_posix(path)
    if not posix:
        raise PathEscapeError("empty path")
    joined = Path(os.path.normpath(root / posix))
    if joined != root and root not in joined.parents:
        raise PathEscapeError(f"{path!r} lies outside {root}")
    real = Path(os.path.realpath(joined))  # where a link really points, even a broken one
    if real != root and root not in real.parents:
        raise PathEscapeError(f"{path!r} resolves (through a link) outside {root}")
    relpath = PurePosixPath(joined.relative_to(root).as_posix()).as_posix()
    if relpath == ".":
        raise PathEscapeError(f"{path!r} names the root folder itself, not a file")
    return relpath, resolve_leniently(joined)


def is_hidden(relpath: str) -> bool:
    """True if any segment of a POSIX relpath is hidden (starts with '.') or is macOS archive debris."""
    return any(part.startswith(".") or part == "__MACOSX" for part in relpath.split("/"))
