"""The one progress-bar helper: a tqdm bar on stderr, off when stderr is not a TTY or progress is disabled."""

from __future__ import annotations

import sys
from collections.abc import Iterable, Iterator
from typing import TypeVar

from tqdm import tqdm

T = TypeVar("T")


def track(iterable: Iterable[T], *, total: int | None = None, desc: str = "", enabled: bool = True) -> Iterator[T]:
    """Iterate over `iterable`, drawing a progress bar when enabled and stderr is interactive."""
    show = enabled and sys.stderr.isatty()
    yield from tqdm(iterable, total=total, desc=desc, disable=not show, leave=False, file=sys.stderr)
