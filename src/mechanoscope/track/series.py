"""Per-track series: position, speed, persistence (MSD) and stiffness over time.

``trajectories`` is the long table (one row per track and frame) with speed and a
smoothed stiffness with its uncertainty; ``track_summary`` has one row per track with
speed, persistence and stiffness trend.
"""

from __future__ import annotations

import numpy as np
import pandas as pd

__all__ = ["msd_curve", "stiffness_over_time", "track_summary", "trajectories"]


def trajectories(tracked: pd.DataFrame, *, window_frames: int = 5, frame_interval_min: float | None = None) -> pd.DataFrame:
    """One row per track and frame, sorted by track and frame.

    Parameters
    ----------
    tracked
        Output of :func:`mechanoscope.track.link_cells` (``track_id``, ``frame``,
        centroid in µm; optionally ``pred_stiffness_pa`` and ``pred_lo_pa``/``pred_hi_pa``).
    window_frames
        Width of the centred running smoother of stiffness, in detections of the track
        (equal to frames where the track has no closed gap).
    frame_interval_min
        If given, a ``time_min`` column and speed in µm/min are added.

    Returns
    -------
    DataFrame
        ``track_id``, ``parent_track_id``, ``lineage_id``, ``frame``, ``cell_id``,
        ``centroid_y_um``, ``centroid_x_um``, ``step_um`` (displacement from the track's
        previous detection), ``speed_um_per_frame`` (step over frames elapsed), and with
        stiffness: ``stiffness_pa`` (per frame), ``stiffness_smooth_pa`` (geometric running
        mean over ``window_frames`` detections), ``stiffness_smooth_lo_pa``/``_hi_pa`` (95 % interval
        of that mean from the spread of log-stiffness in the window; from the mean of the
        per-cell interval where the window holds a single value).
    """
    if window_frames < 1:
        raise ValueError(f"window_frames must be >= 1, got {window_frames}")
    keep = [c for c in ("track_id", "parent_track_id", "lineage_id", "frame", "cell_id", "image_id",
                        "centroid_y_um", "centroid_x_um", "area_um2", "condition",
                        "pred_stiffness_pa", "pred_lo_pa", "pred_hi_pa", "stiffness_pa") if c in tracked.columns]
    tr = tracked[keep].sort_values(["track_id", "frame"]).reset_index(drop=True)
    if "stiffness_pa" in tr.columns:
        tr = tr.rename(columns={"stiffness_pa": "true_stiffness_pa"})
    g = tr.groupby("track_id", sort=False)
    dy = g["centroid_y_um"].diff()
    dx = g["centroid_x_um"].diff()
    dt = g["frame"].diff()
    tr["step_um"] = np.hypot(dy, dx)
    tr["speed_um_per_frame"] = tr["step_um"] / dt
    if frame_interval_min is not None:
        tr["time_min"] = tr["frame"] * frame_interval_min
        tr["speed_um_per_min"] = tr["speed_um_per_frame"] / frame_interval_min
    if "pred_stiffness_pa" in tr.columns:
        e = tr["pred_stiffness_pa"].astype(float)
        loge = np.log(e.where(e > 0))
        tr["stiffness_pa"] = e
        roll = loge.groupby(tr["track_id"], sort=False).rolling(window_frames, center=True, min_periods=1)
        mean = roll.mean().reset_index(level=0, drop=True).sort_index()
        sd = roll.std().reset_index(level=0, drop=True).sort_index()
        n = roll.count().reset_index(level=0, drop=True).sort_index()
        half = 1.96 * sd / np.sqrt(n)
        if {"pred_lo_pa", "pred_hi_pa"} <= set(tr.columns):
            lo_i = np.log(tr["pred_lo_pa"].astype(float).where(tr["pred_lo_pa"] > 0))
            hi_i = np.log(tr["pred_hi_pa"].astype(float).where(tr["pred_hi_pa"] > 0))
            half_i = ((hi_i - lo_i) / 2).groupby(tr["track_id"], sort=False).rolling(window_frames, center=True, min_periods=1).mean()
            half_i = half_i.reset_index(level=0, drop=True).sort_index() / np.sqrt(n)
            half = half.where(n > 1, half_i)
        tr["stiffness_smooth_pa"] = np.exp(mean)
        tr["stiffness_smooth_lo_pa"] = np.exp(mean - half)
        tr["stiffness_smooth_hi_pa"] = np.exp(mean + half)
    return tr


def msd_curve(frames: np.ndarray, y_um: np.ndarray, x_um: np.ndarray, max_lag_frames: int) -> tuple[np.ndarray, np.ndarray]:
    """Mean squared displacement (µm²) of one track at lags 1..``max_lag_frames`` (frames).

    Uses every pair of detections exactly ``lag`` frames apart (gaps are skipped, not
    interpolated). Returns the lags that have at least one pair and their MSD.
    """
    pos = {int(f): (y, x) for f, y, x in zip(frames, y_um, x_um)}
    lags, msd = [], []
    for lag in range(1, max_lag_frames + 1):
        d2 = [(pos[f][0] - pos[f + lag][0]) ** 2 + (pos[f][1] - pos[f + lag][1]) ** 2 for f in pos if f + lag in pos]
        if d2:
            lags.append(lag)
            msd.append(float(np.mean(d2)))
    return np.array(lags, dtype=float), np.array(msd, dtype=float)


def track_summary(traj: pd.DataFrame, lineage: pd.DataFrame | None = None, *, max_lag_frames: int = 10) -> pd.DataFrame:
    """One row per track: motion, persistence and stiffness.

    Columns: ``track_id``, ``n_detections``, ``mean_speed_um_per_frame``, ``path_length_um``,
    ``net_displacement_um``, ``straightness`` (net / path, 1 = straight), ``turn_cosine``
    (mean cosine between successive steps: 1 persistent, 0 random), ``msd_alpha`` (slope of
    log MSD against log lag: 1 diffusive, 2 ballistic; needs ≥ 3 lags),
    ``diffusion_um2_per_frame`` (MSD(lag)/4 at lag 1 from the fit); with stiffness
    ``stiffness_median_pa`` and ``stiffness_log10_slope_per_frame`` (least-squares slope of
    log10 stiffness against frame). Lineage columns (parent, division) are joined when
    ``lineage`` is given.
    """
    rows = []
    for tid, t in traj.groupby("track_id", sort=True):
        f = t["frame"].to_numpy()
        y, x = t["centroid_y_um"].to_numpy(float), t["centroid_x_um"].to_numpy(float)
        steps = np.column_stack([np.diff(y), np.diff(x)])
        path = float(np.hypot(steps[:, 0], steps[:, 1]).sum()) if len(steps) else 0.0
        net = float(np.hypot(y[-1] - y[0], x[-1] - x[0]))
        norms = np.hypot(steps[:, 0], steps[:, 1])
        ok = (norms[:-1] > 0) & (norms[1:] > 0)
        cos = (steps[:-1] * steps[1:]).sum(axis=1)[ok] / (norms[:-1] * norms[1:])[ok] if len(steps) > 1 else np.array([])
        lags, msd = msd_curve(f, y, x, max_lag_frames)
        good = msd > 0
        alpha = d = np.nan
        if good.sum() >= 3:
            alpha, intercept = np.polyfit(np.log(lags[good]), np.log(msd[good]), 1)
            d = float(np.exp(intercept) / 4.0)
        row = {
            "track_id": int(tid), "n_detections": len(t),
            "mean_speed_um_per_frame": float(t["speed_um_per_frame"].mean()) if len(t) > 1 else np.nan,
            "path_length_um": path, "net_displacement_um": net,
            "straightness": net / path if path > 0 else np.nan,
            "turn_cosine": float(cos.mean()) if len(cos) else np.nan,
            "msd_alpha": float(alpha), "diffusion_um2_per_frame": d,
        }
        if "stiffness_pa" in t.columns:
            e = t["stiffness_pa"].to_numpy(float)
            ok_e = np.isfinite(e) & (e > 0)
            row["stiffness_median_pa"] = float(np.median(e[ok_e])) if ok_e.any() else np.nan
            row["stiffness_log10_slope_per_frame"] = (
                float(np.polyfit(f[ok_e], np.log10(e[ok_e]), 1)[0]) if ok_e.sum() >= 3 and np.ptp(f[ok_e]) > 0 else np.nan
            )
        if "condition" in t.columns:
            row["condition"] = t["condition"].iloc[0]
        rows.append(row)
    out = pd.DataFrame(rows)
    if lineage is not None and len(out):
        cols = [c for c in lineage.columns if c not in ("n_detections",)]
        out = lineage[cols].merge(out, on="track_id", how="right")
    return out


def stiffness_over_time(traj: pd.DataFrame, *, value: str = "stiffness_pa", by: str = "condition") -> pd.DataFrame:
    """Median stiffness of the tracked cells per frame and condition, with the interquartile band.

    Parameters
    ----------
    traj
        Output of :func:`trajectories` (``frame`` and ``value``; ``by`` and ``time_min``
        when present).
    value
        Column summarised (Pa): ``stiffness_pa`` (each cell's prediction in that frame) or
        ``stiffness_smooth_pa`` (its track's running mean).
    by
        Grouping column; without it every cell is in one group named ``"all cells"``.

    Returns
    -------
    DataFrame
        One row per group and frame, sorted: ``condition`` (the group), ``frame``,
        ``time_min`` (if known), ``n_cells`` (cells with a positive finite value),
        ``median_pa``, ``q25_pa``, ``q75_pa``. Empty (same columns) without ``value``.
    """
    cols = ["condition", "frame", *(["time_min"] if "time_min" in traj.columns else []), "n_cells", "median_pa", "q25_pa", "q75_pa"]
    if value not in traj.columns:
        return pd.DataFrame(columns=cols)
    e = pd.to_numeric(traj[value], errors="coerce")
    ok = np.isfinite(e) & (e > 0)
    groups = traj[by].astype(str) if by in traj.columns else pd.Series("all cells", index=traj.index)
    d = pd.DataFrame({"condition": groups[ok], "frame": traj.loc[ok, "frame"].astype(np.int64), "e": e[ok]})
    if "time_min" in traj.columns:
        d["time_min"] = traj.loc[ok, "time_min"]
    g = d.groupby(["condition", "frame"], sort=True)
    out = pd.DataFrame({
        "n_cells": g["e"].size().astype(np.int64),
        "median_pa": g["e"].median(),
        "q25_pa": g["e"].quantile(0.25),
        "q75_pa": g["e"].quantile(0.75),
    })
    if "time_min" in d.columns:
        out["time_min"] = g["time_min"].first()
    return out.reset_index()[cols]
