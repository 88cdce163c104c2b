"""Tracking a label-image series end to end and writing the results.

``track_label_series`` measures every frame, links, relabels and computes the per-track
series; ``write_track_outputs`` writes them into a folder::

    OUT/cells.parquet         one row per cell and frame with track_id, parent_track_id, lineage_id
    OUT/lineage.parquet       one row per track (parent, children, division frame, generation)
    OUT/trajectories.parquet  one row per track and frame (speed, smoothed stiffness)
    OUT/tracks.parquet        one row per track (speed, persistence, MSD exponent, stiffness trend)
    OUT/stiffness_over_time.parquet  median stiffness per frame and condition with its IQR band
    OUT/labels/frame000.tif   relabelled series: one cell keeps one id (= track_id) in every frame
    OUT/ctc/mask000.tif, res_track.txt   the same tracks in Cell Tracking Challenge format
    OUT/track.json            parameters (with derived distances), counts, timing
"""

from __future__ import annotations

import os
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import pandas as pd

from mechanoscope.errors import TrackingError
from mechanoscope.track.config import TrackConfig
from mechanoscope.track.labels import as_series, check_ids_unique, measure_series, overlap_table, relabel_series
from mechanoscope.track.link import lineage_table, link_cells
from mechanoscope.track.series import stiffness_over_time, track_summary, trajectories

__all__ = ["TrackResult", "cells_of_frames", "track_label_series", "write_track_outputs"]

_OWN_COLUMNS = ("track_id", "parent_track_id", "lineage_id")  # a table's old tracks are replaced


@dataclass
class TrackResult:
    """Everything tracking produces (see the module docstring for each table)."""

    cells: pd.DataFrame
    lineage: pd.DataFrame
    trajectories: pd.DataFrame
    tracks: pd.DataFrame
    labels: np.ndarray
    pixel_size_um: float
    config: TrackConfig
    timing_s: dict = field(default_factory=dict)
    division_repairs: dict = field(default_factory=dict)

    def ctc(self) -> tuple[np.ndarray, pd.DataFrame]:
        """The result as a CTC label series and ``L B E P`` table (gaps split into child tracks)."""
        from mechanoscope.io.ctc import ctc_tracks_from_labels

        parents = dict(zip(self.lineage["track_id"], self.lineage["parent_track_id"]))
        return ctc_tracks_from_labels(self.labels, {k: v for k, v in parents.items() if v})


def track_label_series(
    series: np.ndarray,
    pixel_size_um: float,
    config: TrackConfig | None = None,
    *,
    cells: pd.DataFrame | None = None,
    intensity: np.ndarray | None = None,
    frame_interval_min: float | None = None,
    window_frames: int = 5,
    progress: Callable[[str, int, int], None] | None = None,
    frame_names: list[str] | None = None,
) -> TrackResult:
    """Track the cells of a ``(T, Y, X)`` label series (ids unique within each frame).

    Parameters
    ----------
    series
        Label images, frame by frame.
    pixel_size_um
        Pixel size (µm) of the label images.
    config
        Tracking parameters.
    cells
        Optional cell table of the same series (``frame``, ``cell_id`` = label in that
        frame, e.g. a run's ``cells.parquet``): its columns (morphology, ``pred_stiffness_pa``,
        ``pred_lo_pa``, ``condition``, …) are carried onto the tracked cells; centroid and
        area are measured from the labels.
    intensity
        Optional ``(T, Y, X)`` intensity images of the series: ``mean_intensity`` per cell,
        used by ``config.intensity_weight``.
    frame_interval_min, window_frames
        See :func:`mechanoscope.track.series.trajectories`.
    progress
        Called as ``progress(stage, done, total)``: per frame while checking ids
        (``"checking ids"``), measuring (``"measuring cells"``) and relabelling
        (``"relabelling"``); ``"linking"`` (laptrack's one global assignment) and
        ``"per-track series"`` report 0 of 1 when they start and 1 of 1 when done.
    frame_names
        Name of each frame (e.g. its file) used in error messages instead of "frame t".
    """
    config = config or TrackConfig()
    series = as_series(series)
    say = progress or (lambda stage, done, total: None)

    def per_frame(stage: str):
        return lambda done, total: say(stage, done, total)

    t0 = time.perf_counter()
    series, original_ids = _compact_ids(series)
    say("checking ids", 0, series.shape[0])
    names = frame_names if frame_names and len(frame_names) == series.shape[0] else None
    check_ids_unique(series, names=names, progress=per_frame("checking ids"))
    say("measuring cells", 0, series.shape[0])
    table = measure_series(series, pixel_size_um, intensity, progress=per_frame("measuring cells"))
    if original_ids is not None:  # back to the ids of the files for joins and outputs
        table["cell_id"] = [int(original_ids[f][i]) for f, i in zip(table["frame"], table["cell_id"])]
    if cells is not None:
        missing = [c for c in ("frame", "cell_id") if c not in cells.columns]
        if missing:
            raise TrackingError(f"the cell table lacks column(s) {missing} needed to join it to the label series")
        # every column of the table the measurement does not make (morphology, predictions, truth…)
        extra = [c for c in cells.columns if c not in table.columns and c not in _OWN_COLUMNS]
        if cells.duplicated(subset=["frame", "cell_id"]).any():
            first = cells.loc[cells.duplicated(subset=["frame", "cell_id"])]
            raise TrackingError(
                f"cell table: cell_id {first['cell_id'].iloc[0]} is used twice in frame {first['frame'].iloc[0]}"
            )
        table = table.merge(cells[["frame", "cell_id", *extra]], on=["frame", "cell_id"], how="left")
    overlap = overlap_table(series) if config.overlap_weight > 0 else None
    t1 = time.perf_counter()
    say("linking", 0, 1)
    tracked = link_cells(table, config, overlap=overlap, n_frames=series.shape[0])
    say("linking", 1, 1)
    t2 = time.perf_counter()
    lineage = lineage_table(tracked)
    say("relabelling", 0, series.shape[0])
    if original_ids is not None:
        compact = tracked.copy()
        compact["cell_id"] = [int(np.searchsorted(original_ids[f], i)) for f, i in zip(tracked["frame"], tracked["cell_id"])]
        labels = relabel_series(series, compact, progress=per_frame("relabelling"))
    else:
        labels = relabel_series(series, tracked, progress=per_frame("relabelling"))
    say("per-track series", 0, 1)
    traj = trajectories(tracked, window_frames=window_frames, frame_interval_min=frame_interval_min)
    summary = track_summary(traj, lineage)
    say("per-track series", 1, 1)
    t3 = time.perf_counter()
    return TrackResult(
        cells=tracked, lineage=lineage, trajectories=traj, tracks=summary, labels=labels,
        pixel_size_um=float(pixel_size_um), config=config,
        timing_s={"measure": t1 - t0, "link": t2 - t1, "series": t3 - t2, "total": t3 - t0},
        division_repairs=dict(tracked.attrs.get("division_repairs", {})),
    )


def cells_of_frames(cells: pd.DataFrame, frame_names: list[str]) -> pd.DataFrame:
    """A run's cell table re-indexed by frame of a series whose frames are separate images.

    A run folder (``segment``/``extract``/``predict``) holds one label image per input image
    (``labels/<image_id>.tif``) and a cell table keyed by ``image_id``; when every image is
    one time point, frame ``t`` of the series is the ``t``-th label file in name order.
    Returns the rows of those images with ``frame`` set accordingly; a table without
    ``image_id`` (or a single image) is returned unchanged.
    """
    if "image_id" not in cells.columns or len(frame_names) < 2:
        return cells
    stems = [_image_id(n) for n in frame_names]
    if len(set(stems)) != len(stems):  # frames of one stack: the table's own frame column holds
        return cells
    index = {s: t for t, s in enumerate(stems)}
    ids = cells["image_id"].astype(str)
    if not ids.isin(index).any():
        raise TrackingError(
            f"the cell table's image_id values ({', '.join(sorted(ids.unique())[:3])}, …) name none of the label files "
            f"({', '.join(stems[:3])}, …); pass the matching table with --cells"
        )
    if "frame" in cells.columns and (pd.to_numeric(cells["frame"], errors="coerce").fillna(0) != 0).any():
        raise TrackingError("the cell table has several frames per image and one label file per image; "
                            "give the label images as one stack per time series")
    out = cells.loc[ids.isin(index).to_numpy()].copy()
    out["frame"] = ids[ids.isin(index)].map(index).to_numpy()
    return out


def _image_id(name: str) -> str:
    n = Path(str(name)).name
    for suffix in (".ome.tiff", ".ome.tif", ".ome.zarr"):
        if n.lower().endswith(suffix):
            return n[: -len(suffix)]
    return Path(n).stem


def _compact_ids(series: np.ndarray) -> tuple[np.ndarray, list[np.ndarray] | None]:
    """Ids far above the pixel count (e.g. 3e9) are made consecutive per frame; returns the old ids."""
    if not series.size or int(series.max()) <= 4 * series[0].size:
        return series, None
    out = np.zeros(series.shape, dtype=np.uint32)
    ids = []
    for t in range(series.shape[0]):
        u, inv = np.unique(series[t], return_inverse=True)
        if u[0] != 0:
            u, inv = np.concatenate([[0], u]), inv + 1
        out[t] = inv.reshape(series.shape[1:])
        ids.append(u)
    return out, ids


def write_track_outputs(result: TrackResult, out: str | os.PathLike[str], *, source: str | None = None,
                        progress: Callable[[int, int], None] | None = None) -> Path:
    """Write a :class:`TrackResult` into ``out`` (layout in the module docstring), each file atomically.

    ``progress(done, total)`` is called after each relabelled frame written.
    """
    from mechanoscope.io.atomic import make_output_folder, write_json
    from mechanoscope.io.ctc import write_ctc_folder
    from mechanoscope.io.images import write_label_image
    from mechanoscope.io.tables import write_table

    folder = make_output_folder(out)
    n = result.labels.shape[0]
    for sub, pattern in (("labels", "frame*.tif"), ("ctc", "mask*.tif")):  # a longer earlier series
        for old in sorted((folder / sub).glob(pattern)) if (folder / sub).is_dir() else []:
            digits = old.stem.lstrip("framesk")
            if digits.isdigit() and int(digits) >= n:
                old.unlink()
    write_table(result.cells, folder / "cells.parquet")
    write_table(result.lineage, folder / "lineage.parquet")
    write_table(result.trajectories, folder / "trajectories.parquet")
    write_table(result.tracks, folder / "tracks.parquet")
    write_table(stiffness_over_time(result.trajectories), folder / "stiffness_over_time.parquet")
    digits = 3 if result.labels.shape[0] <= 1000 else 4
    for t in range(result.labels.shape[0]):
        write_label_image(folder / "labels" / f"frame{t:0{digits}d}.tif", result.labels[t], pixel_size_um=result.pixel_size_um)
        if progress is not None:
            progress(t + 1, n)
    ctc_labels, ctc_tracks = result.ctc()
    write_ctc_folder(folder / "ctc", ctc_labels, ctc_tracks, kind="res")
    lin = result.lineage
    write_json({
        "source": source,
        "parameters": result.config.resolved(),
        "pixel_size_um": result.pixel_size_um,
        "n_frames": int(result.labels.shape[0]),
        "n_cells": int(len(result.cells)),
        "n_tracks": int(len(lin)),
        "n_lineages": int(lin["lineage_id"].nunique()),
        "n_divisions": int(lin["divides"].sum()),
        "n_closed_gaps": int((lin["n_missed_frames"] > 0).sum()),
        "n_divisions_across_gaps": int(result.division_repairs.get("gap_divisions", 0)),
        "n_splits_undone_by_area": int(result.division_repairs.get("splits_undone", 0)),
        "timing_s": result.timing_s,
    }, folder / "track.json")
    return folder
