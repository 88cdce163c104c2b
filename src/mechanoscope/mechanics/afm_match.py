"""Matching AFM measurement positions to segmented cells.

An AFM table gives, per indentation, the image it belongs to, the position of the
tip in µm (image frame) and the fitted Young's modulus. Each position is assigned to
the cell whose label covers it; a position on background is assigned to the nearest
cell centroid within ``max_distance_um`` (the tip may sit just past a thin lamella),
else it stays unmatched and is reported. Several indentations of one cell are
combined by their geometric mean (moduli are log-normally scattered).
"""

from __future__ import annotations

from collections.abc import Mapping

import numpy as np
import pandas as pd

from mechanoscope.errors import MechanoscopeError

__all__ = ["match_afm_to_cells"]

_REQUIRED = ("image_id", "position_y_um", "position_x_um", "measured_stiffness_pa")


def match_afm_to_cells(
    cells: pd.DataFrame,
    afm: pd.DataFrame,
    labels_by_image: Mapping[str, np.ndarray],
    *,
    pixel_size_um: float | Mapping[str, float],
    max_distance_um: float = 5.0,
    column: str = "afm_stiffness_pa",
) -> tuple[pd.DataFrame, pd.DataFrame]:
    """Add the AFM modulus of each cell to the cell table.

    Parameters
    ----------
    cells
        Cell table with ``image_id``, ``cell_id``, ``centroid_y_um``, ``centroid_x_um``.
    afm
        AFM table with ``image_id``, ``position_y_um``, ``position_x_um``,
        ``measured_stiffness_pa`` (Pa, > 0).
    labels_by_image
        Label image (Y, X) of every image id that has AFM points.
    pixel_size_um
        Pixel size in µm (one value, or per image id).
    max_distance_um
        Largest distance from a background position to a cell centroid.
    column
        Name of the new column (Pa); cells without a measurement get NaN.

    Returns
    -------
    cells_out : DataFrame
        Copy of ``cells`` with ``column`` and ``afm_n_measurements``.
    matches : DataFrame
        One row per AFM point with ``cell_id`` (−1 if unmatched) and ``how``
        (``"inside"``, ``"nearest"``, ``"unmatched"``).
    """
    missing = [c for c in _REQUIRED if c not in afm.columns]
    if missing:
        raise MechanoscopeError(f"AFM table lacks column(s) {missing}; it needs {list(_REQUIRED)}")
    vals = afm["measured_stiffness_pa"].to_numpy(dtype=float)
    if (~np.isfinite(vals)).any() or (vals <= 0).any():
        raise MechanoscopeError("AFM table holds non-positive or missing moduli; a Young's modulus is > 0 Pa — remove failed fits first")
    rows = []
    for image_id, pts in afm.groupby("image_id", sort=False):
        image_id = str(image_id)
        if image_id not in labels_by_image:
            raise MechanoscopeError(f"AFM points refer to image {image_id!r}, which has no label image; segment it first or drop those points")
        lab = labels_by_image[image_id]
        px = pixel_size_um[image_id] if isinstance(pixel_size_um, Mapping) else pixel_size_um
        yy = np.rint(pts["position_y_um"].to_numpy() / px).astype(int)
        xx = np.rint(pts["position_x_um"].to_numpy() / px).astype(int)
        inside_img = (yy >= 0) & (yy < lab.shape[0]) & (xx >= 0) & (xx < lab.shape[1])
        ids = np.zeros(len(pts), dtype=np.int64)
        ids[inside_img] = lab[yy[inside_img], xx[inside_img]]
        how = np.where(ids > 0, "inside", "unmatched").astype(object)
        cc = cells[cells["image_id"].astype(str) == image_id]
        if (ids == 0).any() and len(cc):
            cy, cx = cc["centroid_y_um"].to_numpy(), cc["centroid_x_um"].to_numpy()
            for k in np.flatnonzero(ids == 0):
                d = np.hypot(cy - pts["position_y_um"].iloc[k], cx - pts["position_x_um"].iloc[k])
                j = int(np.argmin(d))
                if d[j] <= max_distance_um:
                    ids[k], how[k] = int(cc["cell_id"].iloc[j]), "nearest"
        rows.append(pd.DataFrame({"image_id": image_id, "cell_id": np.where(ids > 0, ids, -1), "how": how, "measured_stiffness_pa": pts["measured_stiffness_pa"].to_numpy()}))
    matches = pd.concat(rows, ignore_index=True) if rows else pd.DataFrame(columns=["image_id", "cell_id", "how", "measured_stiffness_pa"])
    ok = matches[matches["cell_id"] > 0].copy()
    ok["log_e"] = np.log(ok["measured_stiffness_pa"].astype(float))
    agg = ok.groupby(["image_id", "cell_id"]).agg(log_e=("log_e", "mean"), n=("log_e", "size")).reset_index()
    agg[column] = np.exp(agg["log_e"])
    out = cells.copy()
    key = out["image_id"].astype(str)
    merged = pd.DataFrame({"image_id": key, "cell_id": out["cell_id"].astype(np.int64)}).merge(
        agg[["image_id", "cell_id", column, "n"]].astype({"cell_id": np.int64}), on=["image_id", "cell_id"], how="left")
    out[column] = merged[column].to_numpy()
    out["afm_n_measurements"] = merged["n"].fillna(0).astype(int).to_numpy()
    return out, matches
