"""auditor: dataset auditing and bias detection for image classification data.

Public API: `audit()`, `AuditConfig`, `AuditResult`, `__version__`. Never imports fiftyone.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

from auditor.config import AuditConfig

if TYPE_CHECKING:
    from auditor.pipeline import AuditResult

__version__ = "0.1.0"
__all__ = ["AuditConfig", "AuditResult", "__version__", "audit"]


def audit(data: str, **options: Any) -> AuditResult:
    """Audit the image dataset at `data`; options are AuditConfig fields (format, epochs, seed, out, ...).

    Runs the same code path as `auditor audit` and returns the samples table, findings, metrics and
    output paths. Progress bars are off by default here.
    """
    from auditor.pipeline import run_audit

    options.setdefault("progress", False)
    return run_audit(AuditConfig(data=str(data), **options))


def __getattr__(name: str) -> Any:
    if name == "AuditResult":
        from auditor.pipeline import AuditResult

        return AuditResult
    raise AttributeError(name)
