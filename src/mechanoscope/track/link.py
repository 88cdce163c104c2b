"""Linking cells across frames: a cell table in, the same table with track ids out (laptrack).

Linking is the linear-assignment tracker of Jaqaman et al. (Nat. Methods 5, 695, 2008)
as implemented by laptrack (Fukai & Kawaguchi, Bioinformatics 39, btac799, 2023):
frame-to-frame links, then gap closing (a cell missed for up to ``max_gap_frames``
frames) and splitting (divisions) in one global assignment. Costs are squared
distances in µm², optionally scaled by area change and mask overlap. With cell areas,
divisions whose daughters first appear after a missed detection are then added, and
splits whose daughters are not smaller than the mother undone
(:mod:`mechanoscope.track.divisions`).
"""

from __future__ import annotations

from collections.abc import Callable

import numpy as np
import pandas as pd

from mechanoscope.errors import TrackingError
from mechanoscope.track.config import TrackConfig
from mechanoscope.track.divisions import repair_divisions

__all__ = ["COORDINATE_COLUMNS", "link_cells", "lineage_table", "check_cell_table"]

COORDINATE_COLUMNS = ("centroid_y_um", "centroid_x_um")


def check_cell_table(table: pd.DataFrame, config: TrackConfig, n_frames: int | None = None) -> None:
    """Reject a table that cannot be tracked, with a message that says why.

    Checks: ``frame`` and centroid columns present and finite, frames non-negative
    integers, at least two frames, no ``cell_id`` used twice in one frame, and no run of
    frames without cells longer than ``config.max_gap_frames``.
    """
    missing = [c for c in ("frame", *COORDINATE_COLUMNS) if c not in table.columns]
    if missing:
        raise TrackingError(
            f"cell table lacks column(s) {missing}; tracking needs 'frame' and the centroid in µm "
            f"({', '.join(COORDINATE_COLUMNS)})"
        )
    frames = pd.to_numeric(table["frame"], errors="coerce").to_numpy(dtype=float)
    if len(frames) and (not np.all(np.isfinite(frames)) or np.any(frames < 0) or np.any(frames != np.round(frames))):
        raise TrackingError("column 'frame' must hold non-negative integer frame indices")
    coords = table[list(COORDINATE_COLUMNS)].to_numpy(dtype=float)
    if not np.all(np.isfinite(coords)):
        bad = int(np.flatnonzero(~np.isfinite(coords).all(axis=1))[0])
        raise TrackingError(f"cell table row {bad}: centroid is not a finite number")
    present = np.unique(frames.astype(np.int64))
    total = n_frames if n_frames is not None else (int(present.max()) + 1 if len(present) else 0)
    if total < 2:
        raise TrackingError(
            f"tracking needs a time series of at least 2 frames, got {total}; if the frames are stacked in one "
            "file, give its time axis (e.g. --axes TYX)"
        )
    if "cell_id" in table.columns:
        dup = table.duplicated(subset=["frame", "cell_id"], keep="first")
        if dup.any():
            first = table.loc[dup.to_numpy()]
            raise TrackingError(
                f"cell_id {first['cell_id'].iloc[0]} is used twice in frame {int(first['frame'].iloc[0])}; "
                "ids must be unique within a frame"
            )
    if "area_um2" not in table.columns and config.area_weight > 0:
        raise TrackingError("area_weight > 0 needs an 'area_um2' column in the cell table")
    if config.intensity_weight > 0:
        if "mean_intensity" not in table.columns:
            raise TrackingError("intensity_weight > 0 needs a 'mean_intensity' column (give intensity images: --images)")
        if not (pd.to_numeric(table["mean_intensity"], errors="coerce") > 0).all():
            raise TrackingError("intensity_weight > 0 needs mean_intensity > 0 for every cell")
    # longest run of frames without any cell (inside the series, and at its ends)
    edges = np.concatenate([[-1], present, [total]])
    empty_runs = np.diff(edges) - 1
    worst = int(empty_runs.max()) if len(empty_runs) else 0
    if worst > config.max_gap_frames:
        k = int(np.argmax(empty_runs))
        first, last = int(edges[k] + 1), int(edges[k + 1] - 1)
        raise TrackingError(
            f"frames {first}..{last} hold no cells ({worst} frame(s)), more than the allowed gap of "
            f"{config.max_gap_frames} frame(s); raise max_gap_frames (--max-gap-frames) or drop those frames"
        )


def _metric(area_weight: float, intensity_weight: float, overlap: dict | None, overlap_weight: float) -> Callable | str:
    """Cost of linking two cells: squared distance (µm²) times the feature factors.

    Feature vectors are ``[y_um, x_um, ln area, ln intensity, frame, cell_id]``.
    """
    use_overlap = overlap is not None and overlap_weight > 0
    if area_weight == 0 and intensity_weight == 0 and not use_overlap:
        return "sqeuclidean"

    def cost(a: np.ndarray, b: np.ndarray) -> float:
        d2 = (a[0] - b[0]) ** 2 + (a[1] - b[1]) ** 2
        if area_weight:
            d2 *= 1.0 + area_weight * abs(a[2] - b[2])
        if intensity_weight:
            d2 *= 1.0 + intensity_weight * abs(a[3] - b[3])
        if use_overlap:
            iou = overlap.get((int(a[4]), int(a[5]), int(b[4]), int(b[5])), 0.0)
            d2 *= 1.0 + overlap_weight * (1.0 - iou)
        return d2

    return cost


def _laptrack(config: TrackConfig, overlap: dict | None):
    from laptrack import LapTrack

    link_metric = _metric(config.area_weight, config.intensity_weight, overlap, config.overlap_weight)
    plain = _metric(config.area_weight, config.intensity_weight, None, 0.0)  # no overlap across a gap
    return LapTrack(
        metric=link_metric,
        cutoff=config.max_distance_um_used() ** 2,
        gap_closing_metric=plain,
        gap_closing_cutoff=config.gap_max_distance_um_used() ** 2 if config.max_gap_frames > 0 else False,
        gap_closing_max_frame_count=config.max_gap_frames + 1,
        splitting_metric="sqeuclidean",
        splitting_cutoff=config.division_max_distance_um_used() ** 2 if config.divisions else False,
        merging_cutoff=False,
        # alternative costs in the same µm² as the cutoffs (laptrack's automatic percentile
        # estimate depends on how many cells a field happens to hold)
        track_start_cost=config.alternative_cost_factor * config.max_distance_um_used() ** 2,
        track_end_cost=config.alternative_cost_factor * config.max_distance_um_used() ** 2,
        segment_start_cost=config.alternative_cost_factor * config.gap_max_distance_um_used() ** 2,
        segment_end_cost=config.alternative_cost_factor * config.gap_max_distance_um_used() ** 2,
        no_splitting_cost=config.alternative_cost_factor * config.division_max_distance_um_used() ** 2,
        no_merging_cost=config.alternative_cost_factor * config.division_max_distance_um_used() ** 2,
        alternative_cost_factor=config.alternative_cost_factor,
    )


def link_cells(
    table: pd.DataFrame,
    config: TrackConfig | None = None,
    *,
    overlap: dict[tuple[int, int, int, int], float] | None = None,
    n_frames: int | None = None,
) -> pd.DataFrame:
    """Link the cells of a time series into tracks.

    Parameters
    ----------
    table
        Cell table, one row per cell and frame: ``frame`` (int, 0-based), ``centroid_y_um``,
        ``centroid_x_um``; optionally ``cell_id`` (label in its frame), ``area_um2`` and
        ``mean_intensity`` (for the feature costs).
    config
        Tracking parameters (defaults: :class:`TrackConfig`).
    overlap
        ``{(frame, cell_id, frame + 1, cell_id'): IoU}`` for ``config.overlap_weight``
        (see :func:`mechanoscope.track.labels.overlap_table`).
    n_frames
        Number of frames of the series (frames without cells at the end count for the
        gap check); default: last frame + 1.

    Returns
    -------
    DataFrame
        A copy of ``table`` (same row order) with ``track_id`` (1, 2, …; one id per
        unbranched piece of a lineage, kept across closed gaps), ``parent_track_id``
        (the mother's track for daughters, 0 = none) and ``lineage_id`` (the track id
        of the lineage's root). ``attrs["division_repairs"]`` counts the splits undone and
        the divisions added across gaps (:func:`mechanoscope.track.divisions.repair_divisions`).

    Raises
    ------
    TrackingError
        See :func:`check_cell_table`.
    """
    config = config or TrackConfig()
    check_cell_table(table, config, n_frames)
    if overlap is not None and "cell_id" not in table.columns:
        raise TrackingError("overlap costs need a 'cell_id' column (the label of each cell in its frame)")
    frames = table["frame"].to_numpy().astype(np.int64)
    cols = [table[c].to_numpy(dtype=float) for c in COORDINATE_COLUMNS]
    if config.area_weight or config.intensity_weight or (overlap is not None and config.overlap_weight):
        def log_of(col: str) -> np.ndarray:
            if col not in table.columns:
                return np.zeros(len(table))
            return np.log(np.clip(table[col].to_numpy(dtype=float), 1e-12, None))

        cols += [log_of("area_um2"), log_of("mean_intensity"), frames.astype(float),
                 table["cell_id"].to_numpy(dtype=float) if "cell_id" in table.columns else np.zeros(len(table))]
    features = np.column_stack(cols)
    last = int(frames.max()) + 1
    rows_of = [np.flatnonzero(frames == t) for t in range(last)]
    coords = [features[r] for r in rows_of]
    tree = _laptrack(config, overlap).predict(coords)
    repairs = {"splits_undone": 0, "gap_divisions": 0}
    for t, r in enumerate(rows_of):
        tree.add_nodes_from((t, i) for i in range(len(r)))
    if config.divisions and "area_um2" in table.columns and (config.gap_divisions or config.check_division_areas):
        area = table["area_um2"].to_numpy(dtype=float)
        repairs = repair_divisions(
            tree, coords, [area[r] for r in rows_of],
            max_gap_frames=config.max_gap_frames if config.gap_divisions else 0,
            division_max_distance_um=config.division_max_distance_um_used(), check_splits=config.check_division_areas,
        )
    seg_of, parent_of = _segments(tree)
    track = np.zeros(len(table), dtype=np.int64)
    for (t, i), seg in seg_of.items():
        track[rows_of[t][i]] = seg
    # number tracks by first appearance (frame, then row) so that ids are stable and readable
    order = pd.DataFrame({"seg": track, "frame": frames, "row": np.arange(len(table))}).sort_values(["frame", "row"])
    renum = {s: k + 1 for k, s in enumerate(pd.unique(order["seg"]))}
    out = table.copy()
    out["track_id"] = np.array([renum[s] for s in track], dtype=np.int64)
    parent = {renum[s]: renum[p] for s, p in parent_of.items()}
    out["parent_track_id"] = out["track_id"].map(lambda k: parent.get(k, 0)).astype(np.int64)
    out["lineage_id"] = out["track_id"].map(lambda k: _root(k, parent)).astype(np.int64)
    out.attrs["division_repairs"] = repairs
    return out


def _root(k: int, parent: dict[int, int]) -> int:
    while parent.get(k, 0):
        k = parent[k]
    return k


def _segments(tree) -> tuple[dict, dict]:
    """Split the track graph into unbranched segments; return node→segment and segment→parent."""
    seg_of: dict = {}
    parent_of: dict[int, int] = {}
    nodes = sorted(tree.nodes)
    n_seg = 0
    for node in nodes:
        preds = list(tree.predecessors(node))
        starts = not preds or tree.out_degree(preds[0]) != 1
        if not starts or node in seg_of:
            continue
        n_seg += 1
        cur = node
        while True:
            seg_of[cur] = n_seg
            succ = list(tree.successors(cur))
            if len(succ) != 1:
                break
            cur = succ[0]
        if preds and tree.out_degree(preds[0]) > 1:
            parent_of[n_seg] = -1  # filled below, once the mother has a segment
    for node in nodes:
        succ = list(tree.successors(node))
        if len(succ) > 1:
            for child in succ:
                parent_of[seg_of[child]] = seg_of[node]
    return seg_of, {s: p for s, p in parent_of.items() if p > 0}


def lineage_table(tracked: pd.DataFrame) -> pd.DataFrame:
    """One row per track: its lineage, frames, parent, children and generation.

    Columns: ``track_id``, ``parent_track_id``, ``lineage_id``, ``generation`` (0 for
    a root), ``begin_frame``, ``end_frame``, ``n_detections``, ``n_missed_frames``
    (closed gaps), ``n_children``, ``divides`` (ends in a division), ``division_frame``
    (the mother's last frame, when it divides).
    """
    g = tracked.groupby("track_id", sort=True)
    lin = pd.DataFrame({
        "parent_track_id": g["parent_track_id"].first(),
        "lineage_id": g["lineage_id"].first(),
        "begin_frame": g["frame"].min().astype(np.int64),
        "end_frame": g["frame"].max().astype(np.int64),
        "n_detections": g.size().astype(np.int64),
    })
    lin["n_missed_frames"] = (lin["end_frame"] - lin["begin_frame"] + 1 - lin["n_detections"]).astype(np.int64)
    children = lin.loc[lin["parent_track_id"] > 0].groupby("parent_track_id").size()
    lin["n_children"] = lin.index.map(lambda k: int(children.get(k, 0))).astype(np.int64)
    lin["divides"] = lin["n_children"] >= 2
    lin["division_frame"] = lin["end_frame"].where(lin["divides"]).astype("Int64")
    parent = lin["parent_track_id"].to_dict()

    def generation(k: int) -> int:
        n = 0
        while parent.get(k, 0):
            k, n = parent[k], n + 1
        return n

    lin["generation"] = [generation(k) for k in lin.index]
    return lin.reset_index()
