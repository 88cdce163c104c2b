"""AFM measurements → the cells of a run folder.

A fitted AFM table (:func:`mechanoscope.mechanics.afm_fit.fit_afm_files`) gives each
curve's stage position (``x_um``, ``y_um``) and Young's modulus. The stage frame is
mapped into the image frame (µm from the image's top-left pixel centre, x to the right,
y down) by a similarity transform, given as options or fitted to landmark pairs::

    [x_img]         [cos θ  −sin θ] [x_stage]   [offset_x_um]
    [y_img] = scale [sin θ   cos θ] [y'_stage] + [offset_y_um],   y' = −y if flip_y else y

Each measurement is then assigned to the segmented cell under it with
:func:`mechanoscope.mechanics.afm_match.match_afm_to_cells` (inside a label, else the
nearest centroid within ``max_distance_um``); the run's ``cells.parquet`` gains
``afm_stiffness_pa`` (geometric mean per cell) and ``afm_n_measurements``, written
atomically, and ``afm_matches.parquet`` lists every measurement with its cell or why
it has none.
"""

from __future__ import annotations

import json
import math
import os
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Optional

import numpy as np
import pandas as pd
from pydantic import Field

from mechanoscope.config import StrictConfig
from mechanoscope.errors import MechanoscopeError
from mechanoscope.io.tables import read_table, write_table
from mechanoscope.mechanics.afm_match import match_afm_to_cells

__all__ = ["AFMMatchResult", "StageTransform", "afm_points_in_image", "match_afm_to_run", "transform_from_landmarks"]


class StageTransform(StrictConfig):
    """Stage (µm) → image (µm) similarity transform: flip, scale, rotation, offset."""

    offset_x_um: float = Field(0.0, description="Image x (µm) of the stage origin.")
    offset_y_um: float = Field(0.0, description="Image y (µm) of the stage origin.")
    scale: float = Field(1.0, gt=0, description="Image µm per stage µm (1 when both are calibrated).")
    rotation_deg: float = Field(0.0, description="Rotation of the stage axes in the image (degrees, counter-clockwise from +x toward +y).")
    flip_y: bool = Field(False, description="Negate stage y first (stage y up, image y down).")

    def apply(self, x_um: np.ndarray, y_um: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        """Map stage positions (µm) to image positions (µm)."""
        x = np.asarray(x_um, dtype=float)
        y = np.asarray(y_um, dtype=float) * (-1.0 if self.flip_y else 1.0)
        c, s = math.cos(math.radians(self.rotation_deg)), math.sin(math.radians(self.rotation_deg))
        return self.scale * (c * x - s * y) + self.offset_x_um, self.scale * (s * x + c * y) + self.offset_y_um


def transform_from_landmarks(landmarks: pd.DataFrame, *, flip_y: bool = False) -> tuple[StageTransform, float]:
    """Least-squares similarity transform from landmark pairs (Umeyama, no reflection).

    Parameters
    ----------
    landmarks
        Table with ``stage_x_um``, ``stage_y_um``, ``image_x_um``, ``image_y_um`` (≥ 2 rows).
    flip_y
        Negate stage y before fitting.

    Returns
    -------
    transform, rms_um
        The transform and the RMS distance (µm, image frame) of the mapped landmarks.
    """
    need = ["stage_x_um", "stage_y_um", "image_x_um", "image_y_um"]
    missing = [c for c in need if c not in landmarks.columns]
    if missing:
        raise MechanoscopeError(f"landmark table lacks column(s) {missing}; it needs {need}")
    if len(landmarks) < 2:
        raise MechanoscopeError(f"landmarks: {len(landmarks)} pair(s) given; at least 2 are needed for offset, scale and rotation")
    src = landmarks[["stage_x_um", "stage_y_um"]].to_numpy(float) * np.array([1.0, -1.0 if flip_y else 1.0])
    dst = landmarks[["image_x_um", "image_y_um"]].to_numpy(float)
    if not (np.isfinite(src).all() and np.isfinite(dst).all()):
        raise MechanoscopeError("landmarks hold missing or non-finite coordinates")
    ms, md = src.mean(0), dst.mean(0)
    a, b = src - ms, dst - md
    var = (a**2).sum() / len(a)
    if var <= 0:
        raise MechanoscopeError("landmarks: all stage positions coincide; give pairs at different positions")
    cov = b.T @ a / len(a)
    u, d, vt = np.linalg.svd(cov)
    sign = np.diag([1.0, 1.0 if np.linalg.det(u) * np.linalg.det(vt) > 0 else -1.0])
    rot = u @ sign @ vt
    scale = float(np.trace(np.diag(d) @ sign) / var)
    t = md - scale * rot @ ms
    tr = StageTransform(offset_x_um=float(t[0]), offset_y_um=float(t[1]), scale=scale,
                        rotation_deg=math.degrees(math.atan2(rot[1, 0], rot[0, 0])), flip_y=flip_y)
    mx, my = tr.apply(landmarks["stage_x_um"].to_numpy(float), landmarks["stage_y_um"].to_numpy(float))
    rms = float(np.sqrt(np.mean((mx - dst[:, 0]) ** 2 + (my - dst[:, 1]) ** 2)))
    return tr, rms


def afm_points_in_image(afm: pd.DataFrame, transform: StageTransform | None = None, *, image_id: Optional[str] = None) -> tuple[pd.DataFrame, int]:
    """Fitted curves → points for :func:`match_afm_to_cells` (image frame, µm).

    Failed curves (``status`` other than ``ok``, or no finite modulus) are dropped and
    counted. The image of each point is ``image_id`` if given, else the table's
    ``image_id`` column, else the stem of the curve's file.

    Returns
    -------
    points : DataFrame
        ``image_id``, ``position_y_um``, ``position_x_um``, ``measured_stiffness_pa``,
        ``file``, ``curve_index``, ``stage_x_um``, ``stage_y_um``.
    n_dropped : int
        Failed curves left out.
    """
    need = ["youngs_modulus_pa", "x_um", "y_um"]
    missing = [c for c in need if c not in afm.columns]
    if missing:
        raise MechanoscopeError(f"AFM table lacks column(s) {missing}; write it with 'mechanoscope afm fit'")
    ok = afm["youngs_modulus_pa"].to_numpy(float)
    keep = np.isfinite(ok) & (ok > 0)
    if "status" in afm.columns:
        keep &= (afm["status"].astype(str) == "ok").to_numpy()
    sel = afm[keep]
    nopos = ~(np.isfinite(sel["x_um"].to_numpy(float)) & np.isfinite(sel["y_um"].to_numpy(float)))
    if nopos.any():
        first = sel[nopos].iloc[0]
        raise MechanoscopeError(
            f"{int(nopos.sum())} fitted curve(s) have no stage position (e.g. {first.get('file', '?')}[{first.get('curve_index', '?')}]); "
            "their files record none — add x_um/y_um to the AFM table or drop those rows"
        )
    tr = transform or StageTransform()
    xi, yi = tr.apply(sel["x_um"].to_numpy(float), sel["y_um"].to_numpy(float))
    if image_id is not None:
        ids = np.full(len(sel), str(image_id), dtype=object)
    elif "image_id" in sel.columns:
        ids = sel["image_id"].astype(str).to_numpy(dtype=object)
    elif "file" in sel.columns:
        ids = np.array([Path(str(f)).stem for f in sel["file"]], dtype=object)
    else:
        raise MechanoscopeError("AFM table has neither image_id nor file; pass image_id (CLI --image-id)")
    pts = pd.DataFrame({
        "image_id": ids, "position_y_um": yi, "position_x_um": xi,
        "measured_stiffness_pa": sel["youngs_modulus_pa"].to_numpy(float),
        "file": sel["file"].astype(str).to_numpy() if "file" in sel.columns else "",
        "curve_index": sel["curve_index"].to_numpy() if "curve_index" in sel.columns else np.arange(len(sel)),
        "stage_x_um": sel["x_um"].to_numpy(float), "stage_y_um": sel["y_um"].to_numpy(float),
    })
    return pts, int((~keep).sum())


@dataclass
class AFMMatchResult:
    """Result of :func:`match_afm_to_run`: the updated cell table and one row per measurement."""

    cells: pd.DataFrame
    matches: pd.DataFrame
    n_inside: int
    n_nearest: int
    n_outside: int
    n_failed_curves: int
    n_cells_measured: int

    @property
    def outside(self) -> pd.DataFrame:
        """Measurements outside every cell (``how`` = ``unmatched``)."""
        return self.matches[self.matches["how"] == "unmatched"]


def _run_images(run: Path) -> dict[str, dict[str, Any]]:
    """image_id → {labels path, pixel size} from extract.json, else RUN/labels/<id>.tif."""
    out: dict[str, dict[str, Any]] = {}
    summary = run / "extract.json"
    if summary.is_file():
        try:
            for item in json.loads(summary.read_text()).get("inputs", []):
                out[str(item["image_id"])] = {"labels": Path(item["labels"]), "pixel_size_um": item.get("pixel_size_um")}
        except (ValueError, KeyError, TypeError) as exc:
            raise MechanoscopeError(f"{summary}: not a readable extract.json ({exc})") from None
    for p in sorted((run / "labels").glob("*.tif")) if (run / "labels").is_dir() else []:
        out.setdefault(p.stem, {"labels": p, "pixel_size_um": None})
    return out


def match_afm_to_run(
    afm: pd.DataFrame,
    run_dir: str | os.PathLike[str],
    *,
    transform: StageTransform | None = None,
    image_id: Optional[str] = None,
    max_distance_um: float = 5.0,
    write: bool = True,
) -> AFMMatchResult:
    """Assign fitted AFM measurements to the segmented cells of a run folder.

    Parameters
    ----------
    afm
        Table of :func:`fit_afm_files` (``youngs_modulus_pa``, ``x_um``, ``y_um``, ``file``,
        ``curve_index``, ``status``; optional ``image_id``).
    run_dir
        Run folder with ``cells.parquet`` and the label images (``extract.json``'s inputs
        or ``labels/<image_id>.tif``).
    transform
        Stage → image transform (default identity).
    image_id
        Image every measurement belongs to (default: table column, else file stem).
    max_distance_um
        A measurement on background goes to the nearest cell centroid within this
        distance (µm); 0 = only measurements inside a cell.
    write
        Write ``cells.parquet`` (atomically) and ``afm_matches.parquet``.
    """
    from mechanoscope.io.images import read_label_image

    run = Path(run_dir)
    table_path = run / "cells.parquet"
    if not table_path.is_file():
        raise MechanoscopeError(f"{run}: no cells.parquet; run 'mechanoscope extract IMAGES LABELS --out {run}' first")
    cells = read_table(table_path)
    pts, n_failed = afm_points_in_image(afm, transform, image_id=image_id)
    if pts.empty:
        raise MechanoscopeError(f"the AFM table holds no successfully fitted curve ({n_failed} failed); nothing to match")
    images = _run_images(run)
    labels: dict[str, np.ndarray] = {}
    px: dict[str, float] = {}
    for iid in pd.unique(pts["image_id"]):
        if iid not in images:
            known = ", ".join(sorted(images)[:10]) or "none"
            raise MechanoscopeError(
                f"AFM measurements refer to image {iid!r}, which has no label image in {run} (images: {known}); "
                "pass the image with --image-id or add an image_id column to the AFM table"
            )
        lab = read_label_image(images[iid]["labels"])
        labels[iid] = np.asarray(lab.data)
        rows = cells[cells["image_id"].astype(str) == iid]
        size = (float(rows["pixel_size_um"].iloc[0]) if "pixel_size_um" in rows and len(rows) else None) or images[iid]["pixel_size_um"] or lab.pixel_size_um
        if not size:
            raise MechanoscopeError(f"{images[iid]['labels']}: no pixel size for image {iid!r}; the run's cells.parquet and label image record none")
        px[iid] = float(size)
    # match_afm_to_cells returns one row per point grouped by image in order of appearance
    order = np.concatenate([np.flatnonzero((pts["image_id"] == i).to_numpy()) for i in pd.unique(pts["image_id"])])
    pts = pts.iloc[order].reset_index(drop=True)
    out, m = match_afm_to_cells(cells, pts, labels, pixel_size_um=px, max_distance_um=max_distance_um)
    m = pd.concat([m.reset_index(drop=True), pts[["file", "curve_index", "position_x_um", "position_y_um", "stage_x_um", "stage_y_um"]]], axis=1)
    shape = np.array([labels[i].shape for i in m["image_id"]], dtype=float).reshape(-1, 2)
    scale = m["image_id"].map(px).to_numpy(float)
    yy, xx = m["position_y_um"].to_numpy() / scale, m["position_x_um"].to_numpy() / scale
    off = (np.rint(yy) < 0) | (np.rint(yy) >= shape[:, 0]) | (np.rint(xx) < 0) | (np.rint(xx) >= shape[:, 1])
    m["reason"] = np.where(m["how"] != "unmatched", "", np.where(off, "outside the image", "on background, no cell within max_distance_um"))
    if write:
        write_table(out, table_path)
        write_table(m, run / "afm_matches.parquet")
    counts = m["how"].value_counts()
    return AFMMatchResult(out, m, int(counts.get("inside", 0)), int(counts.get("nearest", 0)), int(counts.get("unmatched", 0)),
                          n_failed, int((out["afm_n_measurements"] > 0).sum()))
