"""The AuditorError tree: every error a user can cause, each with a message naming the file/row/field and the fix.

The CLI turns any AuditorError into one line on stderr and exit code 2; nothing else may.
"""

from __future__ import annotations


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
