"""Time-lapse tracking: linking cells across frames (laptrack), lineages, per-track series.

Table in, table out: :func:`link_cells` takes a cell table (``frame`` and centroid in µm)
and returns it with ``track_id``, ``parent_track_id`` and ``lineage_id``;
:func:`track_label_series` does the same from a label-image series and also returns the
relabelled series, the lineage table and the per-track series.
"""

from mechanoscope.track.config import TrackConfig
from mechanoscope.track.divisions import repair_divisions
from mechanoscope.track.labels import as_series, check_ids_unique, measure_series, overlap_table, read_label_series, relabel_series
from mechanoscope.track.outputs import TrackOutputs, find_track_outputs, read_track_outputs
from mechanoscope.track.link import check_cell_table, lineage_table, link_cells
from mechanoscope.track.run import TrackResult, cells_of_frames, track_label_series, write_track_outputs
from mechanoscope.track.series import msd_curve, stiffness_over_time, track_summary, trajectories

__all__ = [
    "TrackConfig",
    "TrackOutputs",
    "TrackResult",
    "as_series",
    "cells_of_frames",
    "check_ids_unique",
    "check_cell_table",
    "find_track_outputs",
    "lineage_table",
    "link_cells",
    "measure_series",
    "msd_curve",
    "overlap_table",
    "read_label_series",
    "read_track_outputs",
    "relabel_series",
    "repair_divisions",
    "stiffness_over_time",
    "track_label_series",
    "track_summary",
    "trajectories",
    "write_track_outputs",
]
