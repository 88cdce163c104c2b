"""Training data: cell table + crop store, target checks, grouped splits, normalisation."""

from __future__ import annotations

import os
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pandas as pd

from mechanoscope.errors import MechanoscopeError

__all__ = [
    "TrainingData",
    "load_run",
    "resolve_task",
    "check_target",
    "group_split",
    "normalise_crops",
    "crop_background",
]


@dataclass
class TrainingData:
    """A cell table and its crops, row-aligned.

    Attributes
    ----------
    table
        Cell table (one row per crop).
    crops
        ``(N, C, H, W)`` float32 crops (all channels of the store).
    channels
        Names of the crop channels.
    attrs
        Crop-store attributes (``crop_size_um``, ``crop_pixels``, ...).
    path
        Run folder.
    """

    table: pd.DataFrame
    crops: np.ndarray
    channels: list[str]
    attrs: dict
    path: Path | None = None


def load_run(run_dir: str | os.PathLike[str], *, with_crops: bool = True) -> TrainingData:
    """Read ``RUN/cells.parquet`` and ``RUN/crops.zarr`` and check they belong together."""
    from mechanoscope.io.crop_store import check_crops_match_table, read_crop_store
    from mechanoscope.io import read_table

    run = Path(run_dir)
    table_path = run / "cells.parquet"
    if not table_path.exists():
        raise MechanoscopeError(
            f"{run}: no cells.parquet; run `mechanoscope extract IMAGES LABELS --out {run}` first "
            "(or pass a run folder that holds a cell table and crops)"
        )
    table = read_table(table_path)
    if not with_crops:
        return TrainingData(table, np.zeros((len(table), 0, 0, 0), np.float32), [], {}, run)
    store = read_crop_store(run / "crops.zarr")
    check_crops_match_table(table, store)
    crops = np.asarray(store.crops[:], dtype=np.float32)
    return TrainingData(table, crops, store.channels, dict(store.attrs), run)


def resolve_task(table: pd.DataFrame, target: str, task: str = "auto") -> str:
    """Decide classification or regression for ``target``."""
    if target not in table.columns:
        raise MechanoscopeError(
            f"target column {target!r} is not in the cell table; available columns: "
            f"{', '.join(map(str, table.columns))}"
        )
    if task != "auto":
        return task
    col = table[target]
    if pd.api.types.is_numeric_dtype(col) and not pd.api.types.is_bool_dtype(col):
        if target.endswith("_pa") or col.dropna().nunique() > 10:
            return "regression"
    return "classification"


def check_target(table: pd.DataFrame, target: str, task: str, *, min_cells_per_class: int = 10) -> tuple[np.ndarray, list[str] | None]:
    """Rows usable for training and, for classification, the sorted class names.

    Raises
    ------
    MechanoscopeError
        Missing or constant target, too few cells in a class, non-positive values of
        a stiffness target, nothing left after dropping NaN.
    """
    col = table[target]
    usable = col.notna().to_numpy().copy()
    if usable.sum() == 0:
        raise MechanoscopeError(f"target column {target!r} holds no values (all missing)")
    if task == "classification":
        values = col[usable].astype(str)
        counts = values.value_counts()
        if len(counts) < 2:
            raise MechanoscopeError(
                f"target column {target!r} is constant ({counts.index[0]!r} for all "
                f"{int(counts.iloc[0])} cells); a classifier needs at least two classes"
            )
        small = counts[counts < min_cells_per_class]
        if len(small):
            desc = ", ".join(f"{k!r}: {v}" for k, v in small.items())
            raise MechanoscopeError(
                f"too few cells in class(es) {desc} of {target!r} (need at least "
                f"{min_cells_per_class} each; lower min_cells_per_class or label more cells)"
            )
        return usable, sorted(counts.index)
    values = pd.to_numeric(col, errors="coerce").to_numpy(dtype=float)
    if np.isnan(values[usable]).any():
        raise MechanoscopeError(f"target column {target!r} holds values that are not numbers")
    finite = np.isfinite(values)
    usable &= finite
    if target.endswith("_pa") or "stiff" in target or "modulus" in target:
        bad = usable & (values <= 0)
        if bad.any():
            raise MechanoscopeError(
                f"target column {target!r} holds {int(bad.sum())} non-positive stiffness "
                "values; a Young's modulus is > 0 Pa — fix or remove those cells"
            )
    if usable.sum() < 2 * min_cells_per_class:
        raise MechanoscopeError(
            f"only {int(usable.sum())} cells have a value of {target!r}; need at least "
            f"{2 * min_cells_per_class}"
        )
    if np.nanstd(values[usable]) == 0:
        raise MechanoscopeError(f"target column {target!r} is constant; nothing to learn")
    return usable, None


def group_split(groups: np.ndarray, *, val_fraction: float, calibration_fraction: float, test_fraction: float, seed: int, stratify: np.ndarray | None = None) -> np.ndarray:
    """Assign every row to ``train``/``val``/``calibration``/``test`` by group.

    All rows of one group (image, well, experiment) land in the same split, so no
    split sees cells of an image that another split trained on. With ``stratify``
    (one class per row) groups are dealt per majority class, so each split gets
    groups of every class when there are enough.

    Returns
    -------
    (N,) array of str
    """
    groups = np.asarray(groups).astype(str)
    uniq = np.unique(groups)
    rng = np.random.default_rng(seed)
    if stratify is not None:
        df = pd.DataFrame({"g": groups, "y": np.asarray(stratify).astype(str)})
        major = df.groupby("g")["y"].agg(lambda s: s.value_counts().index[0])
        strata = [rng.permutation(major.index[major == c].to_numpy()) for c in sorted(major.unique())]
    else:
        strata = [rng.permutation(uniq)]
    assign: dict[str, str] = {}
    fracs = [("test", test_fraction), ("calibration", calibration_fraction), ("val", val_fraction)]
    for stratum in strata:
        n = len(stratum)
        start = 0
        for name, frac in fracs:
            k = int(round(frac * n))
            if frac > 0 and k == 0 and n - start > 1:
                k = 1
            for g in stratum[start : start + k]:
                assign[g] = name
            start += k
        for g in stratum[start:]:
            assign[g] = "train"
    split = np.array([assign[g] for g in groups], dtype=object)
    if not (split == "train").any():
        raise MechanoscopeError(
            f"only {len(uniq)} groups: too few to split into train/val/calibration/test by "
            "group; add images or lower the split fractions"
        )
    return split


def crop_background(crops: np.ndarray) -> np.ndarray:
    """Background level per crop: median of the intensity channel's border pixels.

    Dividing by it turns raw intensities into relative contrast ``I/I₀ − 1``, which
    does not depend on exposure, lamp power or illumination unevenness.
    """
    x = crops[:, 0]
    border = np.concatenate([x[:, 0, :], x[:, -1, :], x[:, :, 0], x[:, :, -1]], axis=1)
    bg = np.median(border, axis=1)
    return np.where(np.abs(bg) > 1e-12, bg, 1.0).astype(np.float32)


def normalise_crops(crops: np.ndarray, channels: list[str], use: list[str], contrast_scale: float) -> np.ndarray:
    """Select channels ``use`` and normalise: intensity → (I/I₀ − 1)/scale, masks as 0/1.

    Parameters
    ----------
    crops : (N, C, H, W) raw crops from the crop store
    channels : names of the C channels
    use : channels to keep, in order
    contrast_scale : std of the relative contrast on the training set (normalization.json)
    """
    missing = [c for c in use if c not in channels]
    if missing:
        raise MechanoscopeError(
            f"crop channel(s) {missing} needed by the model are not in the crop store "
            f"(it has {channels}); re-extract with the matching options (e.g. --mask-channel)"
        )
    out = np.empty((crops.shape[0], len(use)) + crops.shape[2:], dtype=np.float32)
    bg = crop_background(crops) if "intensity" in use else None
    for k, name in enumerate(use):
        ch = crops[:, channels.index(name)]
        if name == "intensity":
            out[:, k] = (ch / bg[:, None, None] - 1.0) / contrast_scale
        else:
            out[:, k] = ch
    return out
