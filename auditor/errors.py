"""The AuditorError tree: every error a user can cause, each with a message naming the file/row/field and the fix.

The CLI turns any AuditorError into one line on stderr and exit code 2; nothing else may.
"""

from __future__ import annotations

import unicodedata

# Characters that would split one message over several lines, or reorder it on screen (bidi overrides: a label
# such as '\u202egnp.exe' displays reversed). Other C0/C1 controls are caught by their Unicode category.
_LINE_AND_BIDI_CONTROLS = frozenset(
    "\u2028\u2029"  # line and paragraph separators
    "\u061c\u200e\u200f\u202a\u202b\u202c\u202d\u202e\u2066\u2067\u2068\u2069"  # bidi marks and overrides
)


def has_control_characters(text: str) -> bool:
    """True if `text` holds a control, line-separator or bidi-override character (see `one_line`)."""
    return any(ch in _LINE_AND_BIDI_CONTROLS or unicodedata.category(ch) == "Cc" for ch in text)


def one_line(text: str) -> str:
    """`text` safe to show as one terminal line: those characters written as Python escapes (a newline as \\n)."""
    return "".join(
        ascii(ch)[1:-1] if ch in _LINE_AND_BIDI_CONTROLS or unicodedata.category(ch) == "Cc" else ch for ch in text
    )


class AuditorError(Exception):
    """Base class for errors caused by the user's input, configuration or environment."""

    exit_code: int = 2


class DataError(AuditorError):
    """The dataset cannot be read: missing path, unknown layout, bad manifest, too few images."""


class ConfigError(AuditorError):
    """An option value is invalid or inconsistent with another option."""


class RunMismatchError(AuditorError):
    """An existing run directory was made with other settings or other data."""


class ModelError(AuditorError):
    """A user model cannot be imported, built or loaded."""


class RuleSpecError(AuditorError):
    """A rule pack is malformed: the message names the file, rule id and field."""


class RegistryError(AuditorError):
    """A plugin name is unknown or registered twice."""


class FiftyOneError(AuditorError):
    """FiftyOne cannot be used: its database does not start, or a dataset, field or run it needs is missing."""
