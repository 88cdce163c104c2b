"""Classical baseline: gradient boosting on the morphology table (scikit-learn).

The model folder stores the training feature matrix and targets as safetensors
tensors, not a pickled estimator: loading re-fits the (deterministic, seeded)
``HistGradientBoosting*`` estimator on them, so a model folder from an untrusted
source can never run code, and save → load gives identical predictions.
"""

from __future__ import annotations

import numpy as np
import pandas as pd

from mechanoscope.errors import MechanoscopeError

__all__ = ["FeatureModel", "feature_columns", "FEATURE_PREFERENCE"]

#: Morphology and texture columns used when present (shape, size, intensity statistics).
FEATURE_PREFERENCE = (
    "area_um2", "perimeter_um", "circularity", "aspect_ratio", "solidity", "eccentricity",
    "major_axis_um", "minor_axis_um", "equivalent_diameter_um",
    "intensity_std_rel", "intensity_min_rel", "intensity_max_rel",
    "texture_gradient_mean_per_um", "texture_neighbour_contrast", "texture_smoothness_geary",
)


def _with_relative(table: pd.DataFrame) -> pd.DataFrame:
    """Add exposure-independent intensity features (divided by the image background)."""
    t = table.copy()
    bg = t["crop_pad_value"] if "crop_pad_value" in t.columns else t.get("intensity_mean")
    if bg is not None:
        bg = pd.to_numeric(bg, errors="coerce").replace(0, np.nan)
        for c in ("intensity_std", "intensity_min", "intensity_max"):
            if c in t.columns:
                t[c + "_rel"] = t[c] / bg
    return t


def feature_columns(table: pd.DataFrame) -> list[str]:
    """The feature columns of :data:`FEATURE_PREFERENCE` available in ``table``."""
    t = _with_relative(table)
    cols = [c for c in FEATURE_PREFERENCE if c in t.columns]
    if not cols:
        raise MechanoscopeError(
            "the cell table has no morphology columns (area_um2, solidity, ...); run "
            "`mechanoscope extract` to measure them"
        )
    return cols


class FeatureModel:
    """Seeded gradient boosting on morphology columns; ``raw_outputs`` gives probabilities
    (classification, ``(1, N, K)``) or standardised predictions (regression, ``(1, N, 1)``)."""

    def __init__(self, task: str, columns: list[str], seed: int = 0, n_classes: int = 0) -> None:
        self.task, self.columns, self.seed, self.n_classes = task, list(columns), seed, n_classes
        self._x: np.ndarray | None = None
        self._y: np.ndarray | None = None
        self.estimator = None

    def _matrix(self, table: pd.DataFrame) -> np.ndarray:
        t = _with_relative(table)
        missing = [c for c in self.columns if c not in t.columns]
        if missing:
            raise MechanoscopeError(f"the cell table lacks the feature column(s) {missing} this model was trained on; run `mechanoscope extract` with the same version")
        return t[self.columns].to_numpy(dtype=np.float64)

    def fit(self, table: pd.DataFrame, y: np.ndarray) -> "FeatureModel":
        return self._fit_matrix(self._matrix(table), np.asarray(y))

    def _fit_matrix(self, x: np.ndarray, y: np.ndarray) -> "FeatureModel":
        from sklearn.ensemble import HistGradientBoostingClassifier, HistGradientBoostingRegressor

        self._x, self._y = x, y
        if self.task == "classification":
            self.estimator = HistGradientBoostingClassifier(max_iter=300, learning_rate=0.05, early_stopping=False, class_weight="balanced", random_state=self.seed)
            self.estimator.fit(x, y.astype(int))
        else:
            self.estimator = HistGradientBoostingRegressor(max_iter=300, learning_rate=0.05, early_stopping=False, random_state=self.seed)
            self.estimator.fit(x, y.astype(float))
        return self

    def raw_outputs(self, table: pd.DataFrame) -> np.ndarray:
        x = self._matrix(table)
        if len(x) == 0:
            return np.zeros((1, 0, max(self.n_classes, 1)))
        if self.task == "classification":
            p = np.zeros((len(x), self.n_classes))
            p[:, self.estimator.classes_.astype(int)] = self.estimator.predict_proba(x)
            return p[None]
        return self.estimator.predict(x)[None, :, None]

    def state_tensors(self) -> dict:
        import torch

        return {"features.x_train": torch.from_numpy(self._x.astype(np.float64)), "features.y_train": torch.from_numpy(np.asarray(self._y, dtype=np.float64))}

    @classmethod
    def from_state(cls, state: dict, task: str, columns: list[str], seed: int, n_classes: int) -> "FeatureModel":
        m = cls(task, columns, seed, n_classes)
        x = state["features.x_train"].numpy()
        y = state["features.y_train"].numpy()
        return m._fit_matrix(x, y.astype(int) if task == "classification" else y)
