"""Time-lapse of adherent cells with known tracks, lineages and stiffness.

Cells are ellipses that move by a persistent random walk (velocity an AR(1) process with
correlation ``persistence`` per frame and root-mean-square speed ``speed_um_per_frame``),
push each other apart so that masks never overlap, divide (the mother's track ends; two
daughters of half its area start next to it, inherit its stiffness times log-normal noise
and grow back), enter through the borders and leave when they drift out. A cell may be
missed by the "segmentation" in a frame (``miss_probability``): it is absent from that
frame's labels, and its reference track has a gap (CTC: a new track whose parent is the
track before the gap). From ``treatment_frame`` on, a fraction of the cells (and their
descendants) stiffens by ``treatment_fold`` over ``treatment_ramp_frames`` frames.

Written by :func:`simulate_timelapse`::

    OUT/images/t000.tif          simple intensity images (uint16; bright cells on a dark background)
    OUT/labels/frame000.tif      label images, ids shuffled per frame (no track information)
    OUT/gt/TRA/man_track000.tif, man_track.txt   reference tracks in CTC format
    OUT/cells.parquet            one row per cell and frame: frame, cell_id (label in labels/),
                                 true_track_id, ctc_label, centroid and area, stiffness_pa (truth),
                                 pred_stiffness_pa (truth x log-normal noise), condition
    OUT/lineage.parquet          one row per true track: parent, begin/end frame, divides
    OUT/simulation.json          configuration, seed, counts
"""

from __future__ import annotations

import os
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pandas as pd
from pydantic import Field, model_validator

from mechanoscope import __version__
from mechanoscope.config import StrictConfig
from mechanoscope.errors import ConfigError

__all__ = ["SimulatedTimelapse", "TimelapseConfig", "render_timelapse", "simulate_timelapse"]


class TimelapseConfig(StrictConfig):
    """Parameters of a simulated time-lapse (distances in µm, times in frames)."""

    n_frames: int = Field(40, ge=2, le=2000, description="Number of frames.")
    image_shape_px: tuple[int, int] = Field((256, 256), description="Frame size (rows, columns) in pixels.")
    pixel_size_um: float = Field(1.0, gt=0, description="Pixel size in µm.")
    n_cells: int = Field(20, ge=0, le=5000, description="Cells in the first frame.")
    cell_radius_um: float = Field(7.0, gt=0, description="Mean radius (µm) of a grown cell (equal-area circle).")
    radius_cv: float = Field(0.15, ge=0, le=0.5, description="Cell-to-cell variation of the radius (coefficient of variation).")
    aspect_ratio: float = Field(1.3, ge=1, le=4, description="Mean ratio of long to short axis of the ellipses.")
    speed_um_per_frame: float = Field(3.0, ge=0, description="Root-mean-square speed (µm per frame).")
    persistence: float = Field(0.7, ge=0, lt=1, description="Correlation of the velocity from one frame to the next (0 = random walk).")
    division_probability: float = Field(0.015, ge=0, le=1, description="Probability per cell and frame of dividing (after min_frames_between_divisions).")
    min_frames_between_divisions: int = Field(8, ge=1, description="Frames after its birth before a cell may divide.")
    regrowth_frames: int = Field(8, ge=1, description="Frames a daughter takes to grow back to full size.")
    enter_rate_per_frame: float = Field(0.3, ge=0, description="Mean number of cells entering through the borders per frame (Poisson).")
    miss_probability: float = Field(0.01, ge=0, lt=1, description="Probability that a cell is missing from a frame's labels (a missed detection).")
    division_miss_probability: float = Field(
        0.0, ge=0, lt=1,
        description="Probability that each detection of a division (the mother's last, each daughter's first) is missed as "
        "well, so that daughters first appear one or two frames after the mother was last seen (0 = off).",
    )
    position_noise_um: float = Field(0.3, ge=0, description="Per-frame jitter (µm) of the rendered outline position around the cell's path.")
    stiffness_median_pa: float = Field(1000.0, gt=0, description="Median Young's modulus (Pa) of the first cells.")
    stiffness_sigma_log: float = Field(0.35, ge=0, description="Standard deviation of ln(E) between the first cells.")
    daughter_stiffness_cv: float = Field(0.1, ge=0, description="Log-normal noise of a daughter's E around its mother's.")
    prediction_cv: float = Field(0.25, ge=0, description="Log-normal noise of the simulated prediction pred_stiffness_pa around the true E.")
    treatment_frame: int | None = Field(None, ge=0, description="Frame from which treated cells stiffen; None = no treatment.")
    treated_fraction: float = Field(0.5, ge=0, le=1, description="Fraction of cells (and their descendants) that are treated.")
    treatment_fold: float = Field(2.0, gt=0, description="Factor on E of treated cells once the treatment is complete.")
    treatment_ramp_frames: int = Field(5, ge=1, description="Frames over which the stiffening ramps up linearly.")

    @model_validator(mode="after")
    def _check_shape(self) -> "TimelapseConfig":
        if min(self.image_shape_px) < 16:
            raise ValueError(f"image_shape_px must be at least 16 x 16, got {self.image_shape_px}")
        return self


@dataclass
class SimulatedTimelapse:
    """A simulated series: labels (shuffled ids), reference CTC labels/tracks, truth tables, images."""

    labels: np.ndarray          # (T, Y, X) ids unique per frame, shuffled
    ctc_labels: np.ndarray      # (T, Y, X) reference CTC labels
    ctc_tracks: pd.DataFrame    # label, begin_frame, end_frame, parent_label
    cells: pd.DataFrame         # one row per cell and frame
    lineage: pd.DataFrame       # one row per true track
    images: np.ndarray          # (T, Y, X) uint16
    config: TimelapseConfig


class _Cell:
    __slots__ = ("tid", "y", "x", "vy", "vx", "r_full", "grow", "ar", "theta", "e_base", "treated", "born")

    def __init__(self, tid, y, x, vy, vx, r_full, ar, theta, e_base, treated, born, grow=1.0):
        self.tid, self.y, self.x, self.vy, self.vx = tid, y, x, vy, vx
        self.r_full, self.grow, self.ar, self.theta = r_full, grow, ar, theta
        self.e_base, self.treated, self.born = e_base, treated, born

    def radius(self) -> float:
        return self.r_full * np.sqrt(self.grow)  # area grows linearly from half to full

    def extent(self) -> float:
        return self.radius() * np.sqrt(self.ar)  # long semi-axis


def _stiffness_factor(cfg: TimelapseConfig, cell: _Cell, frame: int) -> float:
    if cfg.treatment_frame is None or not cell.treated or frame < cfg.treatment_frame:
        return 1.0
    ramp = min(1.0, (frame - cfg.treatment_frame + 1) / cfg.treatment_ramp_frames)
    return 1.0 + (cfg.treatment_fold - 1.0) * ramp


def _separate(cells: list[_Cell], n_iter: int = 8) -> None:
    """Push overlapping cells apart (bounding circles of the long axis plus a 1.5 µm margin)."""
    if len(cells) < 2:
        return
    for _ in range(n_iter):
        pos = np.array([[c.y, c.x] for c in cells])
        ext = np.array([c.extent() for c in cells])
        d = pos[:, None, :] - pos[None, :, :]
        dist = np.hypot(d[..., 0], d[..., 1]) + np.eye(len(cells)) * 1e9
        need = ext[:, None] + ext[None, :] + 1.5
        over = np.clip(need - dist, 0, None)
        if not over.any():
            return
        push = (d / np.maximum(dist, 1e-6)[..., None] * (0.5 * over)[..., None]).sum(axis=1)
        for c, (py, px) in zip(cells, push):
            c.y += py
            c.x += px


def _new_velocity(cfg: TimelapseConfig, rng: np.random.Generator) -> tuple[float, float]:
    s = cfg.speed_um_per_frame / np.sqrt(2)
    return float(rng.normal(0, s)), float(rng.normal(0, s))


def _spawn(cfg, rng, tid, y, x, frame, grow=1.0, vel=None, e_base=None, treated=None) -> _Cell:
    r = cfg.cell_radius_um * float(np.exp(rng.normal(0, cfg.radius_cv))) if cfg.radius_cv else cfg.cell_radius_um
    ar = max(1.0, cfg.aspect_ratio * float(np.exp(rng.normal(0, 0.1))))
    vy, vx = vel if vel is not None else _new_velocity(cfg, rng)
    if e_base is None:
        e_base = cfg.stiffness_median_pa * float(np.exp(rng.normal(0, cfg.stiffness_sigma_log)))
    if treated is None:
        treated = bool(rng.random() < cfg.treated_fraction)
    return _Cell(tid, y, x, vy, vx, r, ar, float(rng.uniform(0, np.pi)), e_base, treated, frame, grow)


def _paint(shape, cell: _Cell, px_um: float, jitter: tuple[float, float]) -> tuple[slice, slice, np.ndarray] | None:
    """Pixel mask of one ellipse, clipped to the field; None if nothing is visible."""
    r = cell.radius()
    a, b = r * np.sqrt(cell.ar), r / np.sqrt(cell.ar)  # semi-axes (µm), area = pi r^2
    cy, cx = (cell.y + jitter[0]) / px_um, (cell.x + jitter[1]) / px_um
    ext = a / px_um + 1
    y0, y1 = max(0, int(np.floor(cy - ext))), min(shape[0], int(np.ceil(cy + ext)) + 1)
    x0, x1 = max(0, int(np.floor(cx - ext))), min(shape[1], int(np.ceil(cx + ext)) + 1)
    if y0 >= y1 or x0 >= x1:
        return None
    yy, xx = np.mgrid[y0:y1, x0:x1]
    dy, dx = (yy - cy) * px_um, (xx - cx) * px_um
    c, s = np.cos(cell.theta), np.sin(cell.theta)
    u, v = c * dx + s * dy, -s * dx + c * dy
    mask = (u / a) ** 2 + (v / b) ** 2 <= 1.0
    if not mask.any():
        return None
    return slice(y0, y1), slice(x0, x1), mask


def render_timelapse(config: TimelapseConfig | None = None, seed: int = 0) -> SimulatedTimelapse:
    """Simulate a time-lapse in memory (see the module docstring); same seed → same series."""
    from mechanoscope.io.ctc import ctc_tracks_from_labels

    cfg = config or TimelapseConfig()
    rng = np.random.default_rng(seed)
    H, W = cfg.image_shape_px
    px = cfg.pixel_size_um
    h_um, w_um = H * px, W * px
    next_tid = 1
    alive: list[_Cell] = []
    for _ in range(cfg.n_cells):
        alive.append(_spawn(cfg, rng, next_tid, rng.uniform(0, h_um), rng.uniform(0, w_um), 0,
                            grow=float(rng.uniform(0.5, 1.0))))
        alive[-1].born = -int(rng.integers(0, cfg.min_frames_between_divisions + 10))
        next_tid += 1
    _separate(alive, 30)
    by_true = np.zeros((cfg.n_frames, H, W), dtype=np.uint32)
    shuffled = np.zeros((cfg.n_frames, H, W), dtype=np.uint16 if 2 * len(alive) + 1000 < 2**16 else np.uint32)
    rows, parents, lineage = [], {}, {}
    for c in alive:
        lineage[c.tid] = {"true_track_id": c.tid, "parent_track_id": 0, "treated": c.treated}
    for t in range(cfg.n_frames):
        # --- render frame t: painted in random order, ids shuffled ------------------
        frame_true = by_true[t]
        seen = []
        for cell in alive:
            if rng.random() < cfg.miss_probability:
                continue
            jit = tuple(rng.normal(0, cfg.position_noise_um, 2)) if cfg.position_noise_um else (0.0, 0.0)
            painted = _paint((H, W), cell, px, jit)
            if painted is None:
                continue
            sy, sx, mask = painted
            region = frame_true[sy, sx]
            region[mask & (region == 0)] = cell.tid
            seen.append(cell)
        ids = rng.permutation(len(seen)) + 1
        for cell, cid in zip(seen, ids):
            m = frame_true == cell.tid
            n = int(m.sum())
            if n == 0:
                frame_true[m] = 0
                continue
            shuffled[t][m] = cid
            yy, xx = np.nonzero(m)
            e_true = cell.e_base * _stiffness_factor(cfg, cell, t)
            rows.append({
                "frame": t, "cell_id": int(cid), "true_track_id": cell.tid,
                "centroid_y_um": float(yy.mean() * px), "centroid_x_um": float(xx.mean() * px),
                "area_um2": n * px * px, "stiffness_pa": e_true,
                "pred_stiffness_pa": e_true * float(np.exp(rng.normal(0, cfg.prediction_cv))),
                "condition": "treated" if cell.treated and cfg.treatment_frame is not None else "control",
            })
        if t == cfg.n_frames - 1:
            break
        # --- move to frame t + 1: divisions, motion, leaving, entering ---------------
        nxt: list[_Cell] = []
        for cell in alive:
            if t + 1 - cell.born > cfg.min_frames_between_divisions and rng.random() < cfg.division_probability:
                axis = rng.uniform(0, np.pi)
                for sign in (-1, 1):
                    d = _spawn(cfg, rng, next_tid, cell.y, cell.x, t + 1, grow=0.5,
                               vel=(cell.vy * 0.5, cell.vx * 0.5),
                               e_base=cell.e_base * float(np.exp(rng.normal(0, cfg.daughter_stiffness_cv))),
                               treated=cell.treated)
                    d.r_full = cell.r_full
                    off = d.extent() + 0.75
                    d.y += sign * off * np.sin(axis)
                    d.x += sign * off * np.cos(axis)
                    d.theta = axis
                    parents[d.tid] = cell.tid
                    lineage[d.tid] = {"true_track_id": d.tid, "parent_track_id": cell.tid, "treated": d.treated}
                    next_tid += 1
                    nxt.append(d)
                continue
            p = cfg.persistence
            ny, nx = _new_velocity(cfg, rng)
            q = np.sqrt(1 - p * p)
            cell.vy, cell.vx = p * cell.vy + q * ny, p * cell.vx + q * nx
            cell.y += cell.vy
            cell.x += cell.vx
            cell.theta += float(rng.normal(0, 0.05))
            cell.grow = min(1.0, cell.grow + 0.5 / cfg.regrowth_frames)
            nxt.append(cell)
        for _ in range(int(rng.poisson(cfg.enter_rate_per_frame))):
            side = int(rng.integers(4))
            s = cfg.speed_um_per_frame
            if side == 0:
                y, x, v = 0.0, rng.uniform(0, w_um), (s, 0.0)
            elif side == 1:
                y, x, v = h_um, rng.uniform(0, w_um), (-s, 0.0)
            elif side == 2:
                y, x, v = rng.uniform(0, h_um), 0.0, (0.0, s)
            else:
                y, x, v = rng.uniform(0, h_um), w_um, (0.0, -s)
            c = _spawn(cfg, rng, next_tid, y, x, t + 1, vel=v)
            lineage[c.tid] = {"true_track_id": c.tid, "parent_track_id": 0, "treated": c.treated}
            next_tid += 1
            nxt.append(c)
        _separate(nxt)
        # a cell whose centre has left the field has left for good
        alive = [c for c in nxt if 0 <= c.y < h_um and 0 <= c.x < w_um]
    if cfg.division_miss_probability > 0 and rows:
        rows = _miss_around_divisions(rows, parents, by_true, shuffled, cfg.division_miss_probability, seed)
    ctc_labels, ctc_tracks = ctc_tracks_from_labels(by_true, parents)
    cells = pd.DataFrame(rows)
    # the CTC label of each detection (gaps split a true track into several CTC tracks)
    flat = ctc_labels.reshape(cfg.n_frames, -1)
    first_px = {}
    for t in range(cfg.n_frames):
        lab = by_true[t].ravel()
        nz = np.flatnonzero(lab)
        uniq, idx = np.unique(lab[nz], return_index=True)
        for u, i in zip(uniq, idx):
            first_px[(t, int(u))] = int(flat[t, nz[i]])
    cells["ctc_label"] = [first_px[(int(f), int(k))] for f, k in zip(cells["frame"], cells["true_track_id"])] if len(cells) else []
    lin = pd.DataFrame(list(lineage.values()))
    if len(cells):
        g = cells.groupby("true_track_id")["frame"]
        lin = lin[lin["true_track_id"].isin(g.groups)].copy()
        lin["begin_frame"] = lin["true_track_id"].map(g.min())
        lin["end_frame"] = lin["true_track_id"].map(g.max())
        kids = lin.loc[lin["parent_track_id"] > 0].groupby("parent_track_id").size()
        lin["divides"] = lin["true_track_id"].map(lambda k: int(kids.get(k, 0)) >= 2)
    images = _intensity(shuffled, rng)
    return SimulatedTimelapse(shuffled, ctc_labels, ctc_tracks, cells, lin.reset_index(drop=True), images, cfg)


def _miss_around_divisions(rows: list[dict], parents: dict[int, int], by_true: np.ndarray, shuffled: np.ndarray,
                           probability: float, seed: int) -> list[dict]:
    """Drop, each with ``probability``, the mother's last and each daughter's first detection of every division.

    A detection is kept when it is its track's only one (the track would vanish). Uses its
    own random stream, so the rest of the simulation is the same as without these misses.
    """
    rng = np.random.default_rng([seed, 18])
    frames_of: dict[int, list[int]] = {}
    for i, r in enumerate(rows):
        frames_of.setdefault(r["true_track_id"], []).append(i)
    children: dict[int, list[int]] = {}
    for d, m in sorted(parents.items()):
        children.setdefault(m, []).append(d)
    drop: set[int] = set()
    for mother, kids in sorted(children.items()):
        if len(kids) < 2 or mother not in frames_of:
            continue
        for tid, pick in ((mother, -1), *((k, 0) for k in kids)):
            idx = frames_of.get(tid, [])
            if len(idx) > 1 and rng.random() < probability:
                drop.add(idx[pick])
    for i in drop:
        r = rows[i]
        t = r["frame"]
        shuffled[t][by_true[t] == r["true_track_id"]] = 0
        by_true[t][by_true[t] == r["true_track_id"]] = 0
    return [r for i, r in enumerate(rows) if i not in drop]


def _intensity(labels: np.ndarray, rng: np.random.Generator) -> np.ndarray:
    """Bright cells (blurred masks) on a dark, noisy background; uint16."""
    from scipy import ndimage as ndi

    out = np.empty(labels.shape, dtype=np.uint16)
    for t in range(labels.shape[0]):
        img = 200.0 + 800.0 * ndi.gaussian_filter((labels[t] > 0).astype(float), 1.5)
        out[t] = np.clip(rng.poisson(img), 0, 65535).astype(np.uint16)
    return out


def simulate_timelapse(
    out: str | os.PathLike[str], config: TimelapseConfig | None = None, *, seed: int = 0, overwrite: bool = False
) -> SimulatedTimelapse:
    """Simulate a time-lapse and write it to ``out`` (layout in the module docstring)."""
    from mechanoscope.io.atomic import make_output_folder, write_json
    from mechanoscope.io.ctc import write_ctc_folder
    from mechanoscope.io.images import write_image, write_label_image
    from mechanoscope.io.tables import write_table

    cfg = config or TimelapseConfig()
    folder = Path(out)
    record = folder / "simulation.json"
    if folder.is_dir() and any(folder.iterdir()) and not overwrite:
        if not record.is_file():
            raise ConfigError(f"{folder}: folder is not empty and holds no simulation; choose an empty folder or pass --overwrite")
        import json

        old = json.loads(record.read_text())
        if old.get("config") != cfg.model_dump(mode="json") or old.get("seed") != seed:
            raise ConfigError(f"{folder}: holds a different simulation; choose another folder or pass --overwrite")
    sim = render_timelapse(cfg, seed)
    folder = make_output_folder(folder)
    digits = 3 if cfg.n_frames <= 1000 else 4
    for t in range(cfg.n_frames):
        write_image(folder / "images" / f"t{t:0{digits}d}.tif", sim.images[t], pixel_size_um=cfg.pixel_size_um)
        write_label_image(folder / "labels" / f"frame{t:0{digits}d}.tif", sim.labels[t], pixel_size_um=cfg.pixel_size_um)
    write_ctc_folder(folder / "gt" / "TRA", sim.ctc_labels, sim.ctc_tracks, kind="man")
    write_table(sim.cells, folder / "cells.parquet")
    write_table(sim.lineage, folder / "lineage.parquet")
    write_json({
        "mechanoscope_version": __version__, "seed": seed, "config": cfg.model_dump(mode="json"),
        "n_frames": cfg.n_frames, "n_cells": int(len(sim.cells)), "n_true_tracks": int(len(sim.lineage)),
        "n_divisions": int(sim.lineage["divides"].sum()) if len(sim.lineage) else 0,
        "n_ctc_tracks": int(len(sim.ctc_tracks)),
    }, record)
    return sim
