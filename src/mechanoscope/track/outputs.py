"""Reading what tracking wrote, for the report: per-track series, stiffness over time, a frame.

:func:`find_track_outputs` looks in a run folder for the output of ``mechanoscope track``
(the folder itself, or ``RUN/track``) or, failing that, for a cell table that already
carries ``track_id``; it returns a :class:`TrackOutputs` with everything the report's
tracking section shows, computing the per-track series here (not in the report) when
only the tracked cell table is there.
"""

from __future__ import annotations

import json
import os
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pandas as pd

from mechanoscope.track.series import stiffness_over_time, trajectories

__all__ = ["TrackOutputs", "find_track_outputs", "read_track_outputs"]

_NEEDED = ("track_id", "frame", "centroid_y_um", "centroid_x_um")


@dataclass
class TrackOutputs:
    """Tracking results of one series, as shown by the report.

    ``trajectories``: one row per track and frame (:func:`mechanoscope.track.trajectories`);
    ``over_time``: :func:`mechanoscope.track.stiffness_over_time` of it; ``lineage``: one
    row per track (or None); ``background``: a ``(Y, X)`` label image of frame
    ``background_frame`` drawn under the tracks (or None); ``pixel_size_um`` of it;
    ``summary``: counts from ``track.json`` (may be empty).
    """

    folder: Path
    trajectories: pd.DataFrame
    over_time: pd.DataFrame
    lineage: pd.DataFrame | None = None
    background: np.ndarray | None = None
    background_frame: int | None = None
    pixel_size_um: float | None = None
    summary: dict | None = None


def read_track_outputs(folder: str | os.PathLike[str]) -> TrackOutputs:
    """Read a folder written by :func:`mechanoscope.track.write_track_outputs`."""
    from mechanoscope.io.images import read_label_image
    from mechanoscope.io.tables import read_table

    f = Path(folder)
    traj = read_table(f / "trajectories.parquet")
    over = f / "stiffness_over_time.parquet"
    over_time = read_table(over) if over.is_file() else stiffness_over_time(traj)
    lineage = read_table(f / "lineage.parquet") if (f / "lineage.parquet").is_file() else None
    summary = json.loads((f / "track.json").read_text(encoding="utf-8")) if (f / "track.json").is_file() else {}
    frames = sorted((f / "labels").glob("frame*.tif")) if (f / "labels").is_dir() else []
    background = frame = px = None
    if frames:
        img = read_label_image(frames[-1], pixel_size_um=summary.get("pixel_size_um"))
        background, frame, px = np.asarray(img.data), len(frames) - 1, img.pixel_size_um
    return TrackOutputs(f, traj, over_time, lineage, background, frame, px, summary)


def find_track_outputs(run: str | os.PathLike[str]) -> TrackOutputs | None:
    """Tracking results of a run folder, or None when it has none.

    Tried in order: ``RUN/trajectories.parquet`` (RUN is a ``track`` output folder),
    ``RUN/track/trajectories.parquet``, and ``RUN/cells.parquet`` with ``track_id``,
    ``frame`` and centroids in µm (the per-track series are then computed from it).
    """
    from mechanoscope.io.tables import read_table

    r = Path(run)
    for f in (r, r / "track"):
        if (f / "trajectories.parquet").is_file():
            return read_track_outputs(f)
    cells_path = r / "cells.parquet"
    if not cells_path.is_file():
        return None
    cells = read_table(cells_path)
    if not all(c in cells.columns for c in _NEEDED):
        return None
    traj = trajectories(cells)
    return TrackOutputs(r, traj, stiffness_over_time(traj))
