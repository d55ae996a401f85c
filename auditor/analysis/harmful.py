"""Harmful samples: robust outliers of the harm score (predicted rise of the validation loss they cause).

A sample is flagged when its harm is positive and its modified z-score (median/MAD, Iglewicz & Hoaglin)
exceeds 3.5: an outlier rule that adapts to the score's scale instead of a fixed top-k.
"""

from __future__ import annotations

import numpy as np


class HarmfulDetector:
    """Flags samples whose harm score is a high robust outlier."""

    def __init__(self, z_threshold: float = 3.5) -> None:
        self.z_threshold = z_threshold

    def fit(self, harm: np.ndarray) -> HarmfulDetector:
        """Compute `is_harmful_` and `robust_z_` for `harm` (NaN = not scored, never flagged)."""
        finite = np.isfinite(harm)
        z = np.full(harm.shape, np.nan)
        if finite.sum() >= 3:
            median = float(np.median(harm[finite]))
            mad = float(np.median(np.abs(harm[finite] - median)))
            scale = 1.4826 * mad if mad > 0 else float(np.std(harm[finite])) or 1.0
            z[finite] = (harm[finite] - median) / scale
        self.robust_z_ = z
        self.is_harmful_ = np.nan_to_num(z, nan=-np.inf) > self.z_threshold
        self.is_harmful_ &= np.nan_to_num(harm, nan=-np.inf) > 0
        return self
