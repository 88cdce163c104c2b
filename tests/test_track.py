"""Tracking: CTC format, metrics against py-ctcmetrics, linking on hand-made and simulated series, CLI."""

from __future__ import annotations

import json
import os
import subprocess
import sys

import numpy as np
import pandas as pd
import pytest

from mechanoscope.errors import ConfigError, CTCFormatError, TrackingError
from mechanoscope.io.ctc import (
    check_ctc_consistency,
    ctc_tracks_from_labels,
    read_ctc_folder,
    read_ctc_tracks,
    write_ctc_folder,
)
from mechanoscope.metrics.tracking import ctc_scores, division_scores, linking_scores
from mechanoscope.simulate.timelapse import TimelapseConfig, render_timelapse
from mechanoscope.track import TrackConfig, link_cells, lineage_table, track_label_series, trajectories, track_summary
from tests.conftest import shared_data


def _square(shape, y, x, r=3):
    m = np.zeros(shape, bool)
    m[max(0, y - r):y + r, max(0, x - r):x + r] = True
    return m


def _series(cells: dict[int, dict[int, tuple[int, int]]], n_frames: int, shape=(48, 48)) -> np.ndarray:
    """``{label: {frame: (y, x)}}`` → (T, Y, X) series of 6 x 6 squares."""
    out = np.zeros((n_frames, *shape), np.uint16)
    for lab, where in cells.items():
        for t, (y, x) in where.items():
            out[t][_square(shape, y, x)] = lab
    return out


def _tracks(rows):
    return pd.DataFrame(rows, columns=["label", "begin_frame", "end_frame", "parent_label"])


# --- CTC format -----------------------------------------------------------------------

def test_ctc_round_trip(tmp_path):
    labels = _series({1: {0: (8, 8), 1: (9, 9)}, 2: {2: (8, 10), 3: (8, 12)}, 3: {2: (30, 30), 3: (31, 31)}, 4: {0: (40, 8)}}, 4)
    tracks = _tracks([[1, 0, 1, 0], [2, 2, 3, 1], [3, 2, 3, 1], [4, 0, 0, 0]])
    for kind, names in (("res", ("res_track.txt", "mask000.tif")), ("man", ("man_track.txt", "man_track003.tif"))):
        folder = write_ctc_folder(tmp_path / kind, labels, tracks, kind=kind)
        assert all((folder / n).is_file() for n in names)
        back_labels, back_tracks = read_ctc_folder(folder)
        np.testing.assert_array_equal(back_labels, labels)
        pd.testing.assert_frame_equal(back_tracks, tracks.astype("int64"))
    assert (tmp_path / "res" / "res_track.txt").read_text() == "1 0 1 0\n2 2 3 1\n3 2 3 1\n4 0 0 0\n"


def test_ctc_tracks_from_labels_splits_gaps_into_child_tracks():
    # cell 1 missed in frame 2; cell 5 divides into 6 and 7 after frame 1
    labels = _series({1: {0: (8, 8), 1: (8, 9), 3: (8, 11)}, 5: {0: (30, 30), 1: (30, 31)},
                      6: {2: (26, 30), 3: (25, 30)}, 7: {2: (36, 30), 3: (37, 30)}}, 4)
    out, tracks = ctc_tracks_from_labels(labels, {6: 5, 7: 5})
    rows = {tuple(r) for r in tracks.to_numpy().tolist()}
    assert rows == {(1, 0, 1, 0), (8, 3, 3, 1), (5, 0, 1, 0), (6, 2, 3, 5), (7, 2, 3, 5)}
    assert set(np.unique(out[3])) == {0, 8, 6, 7}
    check_ctc_consistency(out, tracks)


@pytest.mark.parametrize("text, expected", [
    ("1 0 2 0\n2 0 x 0\n", "line 2: expected 4 integers"),
    ("1 0 2\n", "line 1: expected 4 integers"),
    ("1 0 2 0\n1 3 4 0\n", "line 2: track label 1 already used on line 1"),
    ("1 3 2 0\n", "line 1: track 1 ends (E=2) before it begins"),
    ("0 0 2 0\n", "line 1: track label must be > 0"),
    ("1 0 2 0\n2 3 4 9\n", "line 2: parent 9 of track 2 is not a track"),
    ("1 0 2 0\n2 2 4 1\n", "line 2: track 2 begins at frame 2 but its parent 1 ends at frame 2"),
    ("1 0 2 1\n", "line 1: track 1 is its own parent"),
])
def test_malformed_track_file_names_file_and_line(tmp_path, text, expected):
    p = tmp_path / "man_track.txt"
    p.write_text(text)
    with pytest.raises(CTCFormatError) as err:
        read_ctc_tracks(p)
    assert str(p) in str(err.value) and expected in str(err.value)


def test_ctc_folder_disagreeing_with_its_images_is_an_error(tmp_path):
    labels = _series({1: {0: (8, 8), 2: (8, 9)}}, 3)  # label 1 absent in frame 1
    write_ctc_folder(tmp_path, labels, _tracks([[1, 0, 2, 0]]), kind="man")
    with pytest.raises(CTCFormatError, match=r"track 1 \(B=0, E=2\) is missing in frame\(s\) \[1\]"):
        read_ctc_folder(tmp_path)
    (tmp_path / "man_track001.tif").unlink()
    with pytest.raises(CTCFormatError, match=r"label TIFF missing for frame\(s\) \[1\]"):
        read_ctc_folder(tmp_path)


# --- metrics: hand-made cases, checked against py-ctcmetrics ---------------------------

def _two_cells():
    return _series({1: {0: (8, 8), 1: (8, 10), 2: (8, 12)}, 2: {0: (30, 30), 1: (31, 30), 2: (32, 30)}}, 3)


def test_metrics_perfect_result():
    ref = _two_cells()
    tracks = _tracks([[1, 0, 2, 0], [2, 0, 2, 0]])
    comp = ref.copy()
    comp[comp == 1] = 7  # ids of a result are arbitrary
    c = ctc_scores(ref, tracks, comp, _tracks([[7, 0, 2, 0], [2, 0, 2, 0]]))
    assert c["TRA"] == 1.0 and c["DET"] == 1.0 and c["AOGM"] == 0
    assert linking_scores(ref, tracks, comp, _tracks([[7, 0, 2, 0], [2, 0, 2, 0]]))["f1"] == 1.0


def test_metrics_broken_track_by_hand_and_by_package():
    ref = _two_cells()
    ref_tracks = _tracks([[1, 0, 2, 0], [2, 0, 2, 0]])
    comp = ref.copy()
    comp[2][comp[2] == 1] = 3  # track 1 broken after frame 1, continues as an unrelated track 3
    comp_tracks = _tracks([[1, 0, 1, 0], [2, 0, 2, 0], [3, 2, 2, 0]])
    c = ctc_scores(ref, ref_tracks, comp, comp_tracks)
    # AOGM: one missing edge (weight 1.5); AOGM_0: 6 nodes x 10 + 4 edges x 1.5 = 66
    assert c["AOGM"] == pytest.approx(1.5) and c["AOGM_EA"] == 1
    assert c["TRA"] == pytest.approx(1 - 1.5 / 66)
    assert c["DET"] == 1.0
    link = linking_scores(ref, ref_tracks, comp, comp_tracks)
    assert (link["tp"], link["fp"], link["fn"]) == (3, 0, 1)
    assert link["precision"] == 1.0 and link["recall"] == pytest.approx(0.75)
    assert link["f1"] == pytest.approx(2 * 0.75 / 1.75)
    # a wrong link (the broken piece attached to the other cell) is a false positive
    comp_tracks2 = _tracks([[1, 0, 1, 0], [2, 0, 1, 0], [3, 2, 2, 2], [4, 2, 2, 0]])
    comp2 = comp.copy()
    comp2[2][comp2[2] == 2] = 4
    link2 = linking_scores(ref, ref_tracks, comp2, comp_tracks2)
    assert (link2["tp"], link2["fp"], link2["fn"]) == (2, 1, 2)


def _division(with_parents: bool, swap_daughter: bool = False):
    ref = _series({1: {0: (24, 20), 1: (24, 22)}, 2: {2: (18, 22), 3: (16, 22)}, 3: {2: (30, 22), 3: (32, 22)},
                   4: {0: (6, 40), 1: (6, 40), 2: (6, 40), 3: (6, 40)}}, 4)
    ref_tracks = _tracks([[1, 0, 1, 0], [2, 2, 3, 1], [3, 2, 3, 1], [4, 0, 3, 0]])
    comp = ref.copy()
    if swap_daughter:  # the result attaches the unrelated cell 4 as a daughter and 3 as a new track
        comp_tracks = _tracks([[1, 0, 1, 0], [2, 2, 3, 1], [3, 2, 3, 0], [4, 0, 1, 0], [5, 2, 3, 1]])
        comp[2:][comp[2:] == 4] = 5
    else:
        p = 1 if with_parents else 0
        comp_tracks = _tracks([[1, 0, 1, 0], [2, 2, 3, p], [3, 2, 3, p], [4, 0, 3, 0]])
    return ref, ref_tracks, comp, comp_tracks


@pytest.mark.parametrize("with_parents, swap, expected_f1", [(True, False, 1.0), (False, False, 0.0), (True, True, 0.0)])
def test_division_f1_by_hand_and_as_ctc_branching_correctness(with_parents, swap, expected_f1):
    ref, ref_tracks, comp, comp_tracks = _division(with_parents, swap)
    div = division_scores(ref, ref_tracks, comp, comp_tracks)
    assert div["f1"] == expected_f1
    assert div["n_ref_divisions"] == 1
    c = ctc_scores(ref, ref_tracks, comp, comp_tracks)
    assert c["BC(0)"] == pytest.approx(expected_f1)  # the package counts the same event
    if not with_parents:
        link = linking_scores(ref, ref_tracks, comp, comp_tracks)
        assert (link["n_ref_links"], link["tp"], link["fn"]) == (8, 6, 2)


# --- linking a cell table -------------------------------------------------------------

def _toy_table():
    rows = []
    for t in range(6):
        rows.append(dict(frame=t, cell_id=1, centroid_y_um=10.0 + t, centroid_x_um=10.0))
        if t != 3:  # missed in frame 3: a gap to close
            rows.append(dict(frame=t, cell_id=2, centroid_y_um=100.0, centroid_x_um=50.0 + 2 * t))
        if t < 3:
            rows.append(dict(frame=t, cell_id=3, centroid_y_um=200.0, centroid_x_um=200.0))
        else:  # divides after frame 2
            rows.append(dict(frame=t, cell_id=3, centroid_y_um=200.0, centroid_x_um=195.0 - t))
            rows.append(dict(frame=t, cell_id=4, centroid_y_um=200.0, centroid_x_um=205.0 + t))
    return pd.DataFrame(rows)


def test_link_cells_closes_gaps_and_finds_divisions():
    table = _toy_table()
    out = link_cells(table, TrackConfig(expected_speed_um_per_frame=2.0))
    assert len(out) == len(table) and list(out["cell_id"]) == list(table["cell_id"])
    by = out.groupby(["frame", "cell_id"])["track_id"].first()
    assert by.loc[(0, 2)] == by.loc[(5, 2)]  # the gap is closed: one track
    lin = lineage_table(out).set_index("track_id")
    assert lin.loc[by.loc[(0, 2)], "n_missed_frames"] == 1
    mother = by.loc[(2, 3)]
    daughters = {by.loc[(3, 3)], by.loc[(3, 4)]}
    assert mother not in daughters and len(daughters) == 2
    assert set(lin.index[lin["parent_track_id"] == mother]) == daughters
    assert lin.loc[mother, "divides"] and lin.loc[mother, "division_frame"] == 2
    assert (lin.loc[list(daughters), "generation"] == 1).all()
    assert (lin.loc[list(daughters), "lineage_id"] == mother).all()
    # without divisions, and without gap closing
    plain = link_cells(table, TrackConfig(expected_speed_um_per_frame=2.0, divisions=False, max_gap_frames=0))
    assert (plain["parent_track_id"] == 0).all()
    assert plain.loc[plain["cell_id"] == 2, "track_id"].nunique() == 2


def test_bad_tables_are_refused_with_the_reason():
    table = _toy_table()
    with pytest.raises(TrackingError, match="lacks column"):
        link_cells(table.drop(columns="centroid_x_um"))
    with pytest.raises(TrackingError, match="cell_id 1 is used twice in frame 0"):
        link_cells(pd.concat([table, table.iloc[:1]]))
    with pytest.raises(TrackingError, match="at least 2 frames"):
        link_cells(table[table["frame"] == 0])
    gappy = table[(table["frame"] < 1) | (table["frame"] > 4)]
    with pytest.raises(TrackingError, match=r"frames 1..4 hold no cells \(4 frame\(s\)\), more than the allowed gap of 2"):
        link_cells(gappy)
    assert link_cells(gappy, TrackConfig(max_gap_frames=4))["track_id"].nunique() >= 3
    with pytest.raises(ConfigError, match="unknown parameter"):
        TrackConfig.build(max_speed=3)


def test_defaults_follow_the_expected_speed():
    cfg = TrackConfig(expected_speed_um_per_frame=5.0, cell_diameter_um=20.0)
    assert cfg.max_distance_um_used() == 15.0
    assert cfg.gap_max_distance_um_used() == pytest.approx(15.0 * np.sqrt(3))
    assert cfg.division_max_distance_um_used() == 25.0
    assert TrackConfig(max_distance_um=7.0).resolved()["max_distance_um"] == 7.0


def test_label_series_errors():
    a = np.zeros((20, 20), np.uint16)
    a[2:6, 2:6] = 1
    with pytest.raises(TrackingError, match="differs from frame 0"):
        track_label_series([a, np.zeros((21, 20), np.uint16)], 1.0)
    with pytest.raises(TrackingError, match="at least 2 frames"):
        track_label_series(a[None], 1.0)
    reused = np.stack([a, a]).copy()
    reused[1, 12:16, 12:16] = 1  # one id for two cells
    with pytest.raises(TrackingError, match="frame 1: id 1 is used for 2 separate cell-sized regions"):
        track_label_series(reused, 1.0)


def _division_table(gap_frames: int, daughter_area: float = 50.0, shift_first: int = 0):
    """A mother (area 100 µm²) seen in frames 0..3 and two daughters first seen ``gap_frames`` frames later."""
    rows = [dict(frame=t, cell_id=1, centroid_y_um=50.0, centroid_x_um=50.0 + t, area_um2=100.0) for t in range(4)]
    start = 4 + gap_frames
    for t in range(start, start + 4):
        rows.append(dict(frame=t + shift_first, cell_id=2, centroid_y_um=50.0, centroid_x_um=46.0 - (t - start), area_um2=daughter_area))
        rows.append(dict(frame=t, cell_id=3, centroid_y_um=50.0, centroid_x_um=60.0 + (t - start), area_um2=daughter_area))
    rows += [dict(frame=t, cell_id=9, centroid_y_um=150.0, centroid_x_um=150.0, area_um2=100.0) for t in range(start + 4)]  # a bystander
    return pd.DataFrame(rows).query(f"frame < {start + 4}").reset_index(drop=True)


@pytest.mark.parametrize("gap_frames, shift_first", [(0, 0), (1, 0), (2, 0), (0, 1), (1, 1)])
def test_a_division_across_missed_detections_is_still_a_division(gap_frames, shift_first):
    table = _division_table(gap_frames, shift_first=shift_first)
    out = link_cells(table, TrackConfig(expected_speed_um_per_frame=2.0))
    lin = lineage_table(out).set_index("track_id")
    mother = out.loc[(out["frame"] == 0) & (out["cell_id"] == 1), "track_id"].item()
    daughters = set(out.loc[out["cell_id"].isin([2, 3]), "track_id"])
    assert len(daughters) == 2 and mother not in daughters
    assert set(lin.index[lin["parent_track_id"] == mother]) == daughters
    assert lin.loc[mother, "divides"] and lin.loc[mother, "division_frame"] == 3
    # laptrack's own splitting covers a daughter seen in the next frame (its sister may come later, gap-closed)
    expected = 1 if gap_frames >= 1 else 0
    assert out.attrs["division_repairs"]["gap_divisions"] == expected
    # without the repair one daughter is taken for the mother's continuation and the other is a new track
    if expected:
        plain = link_cells(table, TrackConfig(expected_speed_um_per_frame=2.0, gap_divisions=False))
        assert not lineage_table(plain)["divides"].any()


def test_gap_divisions_need_daughters_smaller_than_the_mother():
    # same geometry, but the "daughters" are as large as the mother: a cell gap-closed and a cell appearing beside it
    out = link_cells(_division_table(1, daughter_area=100.0), TrackConfig(expected_speed_um_per_frame=2.0))
    assert not lineage_table(out)["divides"].any() and out.attrs["division_repairs"]["gap_divisions"] == 0
    # a gap longer than max_gap_frames is not bridged; without areas nothing is repaired
    out = link_cells(_division_table(2), TrackConfig(expected_speed_um_per_frame=2.0, max_gap_frames=1))
    assert not lineage_table(out)["divides"].any()
    out = link_cells(_division_table(1).drop(columns="area_um2"), TrackConfig(expected_speed_um_per_frame=2.0))
    assert not lineage_table(out)["divides"].any()
    # laptrack's own split of a cell into two as large as itself is undone (check_division_areas)
    big = _division_table(0, daughter_area=100.0)
    assert not lineage_table(link_cells(big, TrackConfig(expected_speed_um_per_frame=2.0)))["divides"].any()
    kept = link_cells(big, TrackConfig(expected_speed_um_per_frame=2.0, check_division_areas=False))
    assert lineage_table(kept)["divides"].sum() == 1


def test_divisions_with_missed_detections_in_the_simulator_are_found():
    cfg = TimelapseConfig(n_frames=30, image_shape_px=(160, 160), n_cells=10, division_probability=0.06,
                          division_miss_probability=0.6, miss_probability=0.0, enter_rate_per_frame=0.0)
    sim = render_timelapse(cfg, seed=5)
    tr = sim.ctc_tracks
    end = dict(zip(tr["label"], tr["end_frame"]))
    kids = tr[tr["parent_label"] > 0]
    late = sum(1 for p, g in kids.groupby("parent_label") if len(g) >= 2 and (g["begin_frame"] > end[p] + 1).any())
    assert late >= 4  # divisions whose daughters first appear after a missed frame
    # the misses use their own random stream: apart from the dropped detections the series is the one without them
    base = render_timelapse(cfg.model_copy(update={"division_miss_probability": 0.0}), seed=5)
    assert len(base.cells) > len(sim.cells) and set(map(tuple, sim.cells[["frame", "true_track_id"]].to_numpy())) < set(
        map(tuple, base.cells[["frame", "true_track_id"]].to_numpy()))
    scores = {}
    for name, extra in {"repair": {}, "laptrack only": {"gap_divisions": False, "check_division_areas": False}}.items():
        res = track_label_series(sim.ctc_labels, 1.0, TrackConfig(expected_speed_um_per_frame=3.0, **extra))
        scores[name] = division_scores(sim.ctc_labels, sim.ctc_tracks, *res.ctc())["f1"]
    assert scores["repair"] >= 0.9 and scores["laptrack only"] < 0.6, scores


def test_progress_is_reported_per_frame():
    series = _series({1: {t: (8, 8 + t) for t in range(5)}, 2: {t: (30, 30) for t in range(5)}}, 5)
    calls = []
    track_label_series(series, 1.0, progress=lambda stage, done, total: calls.append((stage, done, total)))
    stages = list(dict.fromkeys(c[0] for c in calls))
    assert stages == ["checking ids", "measuring cells", "linking", "relabelling", "per-track series"]
    for stage in ("checking ids", "measuring cells", "relabelling"):
        done = [d for s, d, n in calls if s == stage]
        assert done == sorted(done) and done[0] == 0 and done[-1] == 5 and set(range(6)) <= set(done)
        assert {n for s, _, n in calls if s == stage} == {5}
    assert [(d, n) for s, d, n in calls if s == "linking"] == [(0, 1), (1, 1)]


# --- per-track series -----------------------------------------------------------------

def test_trajectories_speed_msd_and_smoothed_stiffness():
    t = np.arange(12)
    table = pd.DataFrame({"frame": t, "cell_id": 1, "centroid_y_um": 3.0 * t, "centroid_x_um": 4.0 * t,
                          "pred_stiffness_pa": 800.0})
    tracked = link_cells(table, TrackConfig(expected_speed_um_per_frame=5.0))
    traj = trajectories(tracked, window_frames=5)
    assert traj["speed_um_per_frame"].iloc[1:].to_numpy() == pytest.approx(5.0)
    assert traj["stiffness_smooth_pa"].to_numpy() == pytest.approx(800.0)
    summary = track_summary(traj)
    assert summary.loc[0, "msd_alpha"] == pytest.approx(2.0)  # ballistic
    assert summary.loc[0, "straightness"] == pytest.approx(1.0)
    assert summary.loc[0, "turn_cosine"] == pytest.approx(1.0)
    # noisy stiffness: the running mean's interval holds the true value and narrows with the window
    rng = np.random.default_rng(0)
    table["pred_stiffness_pa"] = 800.0 * np.exp(rng.normal(0, 0.2, len(t)))
    traj = trajectories(link_cells(table, TrackConfig(expected_speed_um_per_frame=5.0)), window_frames=7)
    mid = traj.iloc[3:-3]
    assert ((mid["stiffness_smooth_lo_pa"] < 800 * 1.25) & (mid["stiffness_smooth_hi_pa"] > 800 / 1.25)).all()
    assert (mid["stiffness_smooth_lo_pa"] < mid["stiffness_smooth_pa"]).all()


# --- simulated time-lapse with known truth --------------------------------------------

@pytest.fixture(scope="module")
def sim():
    cfg = TimelapseConfig(n_frames=24, image_shape_px=(200, 200), n_cells=14, division_probability=0.05,
                          miss_probability=0.03, enter_rate_per_frame=0.5, treatment_frame=12)
    return render_timelapse(cfg, seed=3)


@pytest.fixture(scope="module")
def tracked(sim):
    return track_label_series(sim.labels, sim.config.pixel_size_um, TrackConfig(expected_speed_um_per_frame=3.0), cells=sim.cells)


def test_simulation_holds_divisions_gaps_entering_and_leaving(sim):
    lin, tr = sim.lineage, sim.ctc_tracks
    assert lin["divides"].sum() >= 2
    n_children = tr[tr["parent_label"] > 0].groupby("parent_label").size()
    assert (n_children == 1).sum() >= 2  # gaps: a single child continues its parent
    roots = lin[lin["parent_track_id"] == 0]
    assert (roots["begin_frame"] > 0).sum() >= 2  # entered after the start
    assert ((lin["end_frame"] < sim.config.n_frames - 1) & ~lin["divides"]).sum() >= 1  # left the field
    assert render_timelapse(sim.config, seed=3).labels.tobytes() == sim.labels.tobytes()
    # treated cells stiffen by treatment_fold from frame 12 (+ ramp), controls do not
    c = sim.cells.groupby(["condition", sim.cells["frame"] >= 17])["stiffness_pa"].median()
    assert c.loc[("treated", True)] / c.loc[("treated", False)] == pytest.approx(2.0, rel=0.35)
    assert c.loc[("control", True)] / c.loc[("control", False)] == pytest.approx(1.0, rel=0.35)


def test_tracking_the_simulation_recovers_its_tracks(sim, tracked):
    comp_labels, comp_tracks = tracked.ctc()
    link = linking_scores(sim.ctc_labels, sim.ctc_tracks, comp_labels, comp_tracks)
    div = division_scores(sim.ctc_labels, sim.ctc_tracks, comp_labels, comp_tracks)
    c = ctc_scores(sim.ctc_labels, sim.ctc_tracks, comp_labels, comp_tracks, metrics=("Valid", "DET", "TRA"))
    assert link["f1"] >= 0.97 and div["f1"] >= 0.8 and c["TRA"] >= 0.97
    # one cell keeps one id: every true cell maps onto a single track id (daughters get new ones)
    cells = tracked.cells  # the simulation's table is carried: true_track_id beside track_id
    assert cells["true_track_id"].notna().all() and len(cells) == len(sim.cells)
    assert (cells.groupby("true_track_id")["track_id"].nunique() == 1).mean() >= 0.95
    for t in (0, 10, 23):
        ids = tracked.labels[t][sim.labels[t] > 0]
        assert (ids > 0).all()
    assert "stiffness_smooth_pa" in tracked.trajectories.columns and "condition" in tracked.tracks.columns


def test_feature_costs_area_and_overlap(sim):
    base = TrackConfig(expected_speed_um_per_frame=3.0)
    for extra in ({"area_weight": 1.0}, {"overlap_weight": 2.0}, {"area_weight": 0.5, "overlap_weight": 1.0}):
        res = track_label_series(sim.labels[:10], 1.0, base.model_copy(update=extra))
        comp_labels, comp_tracks = res.ctc()
        ref_labels, ref_tracks = _first_frames(sim, 10)
        assert linking_scores(ref_labels, ref_tracks, comp_labels, comp_tracks)["f1"] >= 0.97, extra
    # the overlap term prefers the cell that covers the same pixels: two candidates at equal distance
    table = pd.DataFrame({"frame": [0, 1, 1], "cell_id": [1, 1, 2], "centroid_y_um": [10.0, 10.0, 10.0],
                          "centroid_x_um": [10.0, 7.0, 13.0]})
    for winner in (1, 2):
        iou = {(0, 1, 1, winner): 0.8}
        out = link_cells(table, TrackConfig(overlap_weight=5.0, divisions=False), overlap=iou)
        assert out.loc[(out["frame"] == 1) & (out["cell_id"] == winner), "track_id"].item() == out.loc[0, "track_id"]


def _first_frames(sim, n):
    from mechanoscope.io.ctc import ctc_tracks_from_labels

    # reference restricted to the first n frames: rebuild CTC tracks from the true-id series
    by_true = np.zeros_like(sim.ctc_labels[:n], dtype=np.uint32)
    for row in sim.cells[sim.cells["frame"] < n].itertuples():
        by_true[row.frame][sim.labels[row.frame] == row.cell_id] = row.true_track_id
    parents = dict(zip(sim.lineage["true_track_id"], sim.lineage["parent_track_id"]))
    return ctc_tracks_from_labels(by_true, {k: v for k, v in parents.items() if v})


# --- CLI ------------------------------------------------------------------------------

def _cli(*args, code: str | None = None):
    env = {**os.environ, "COLUMNS": "300", "NO_COLOR": "1", "OMP_NUM_THREADS": "1"}
    env.pop("MECHANOSCOPE_DEBUG", None)
    cmd = [sys.executable, "-m", "mechanoscope.cli.main", *map(str, args)] if code is None else [sys.executable, "-c", code]
    return subprocess.run(cmd, capture_output=True, text=True, env=env, timeout=300)


def test_cli_simulate_track_and_bad_input(tmp_path):
    """One interpreter (each start of the CLI costs seconds on a loaded machine) runs main() per command."""
    import tifffile

    sim_dir, out = tmp_path / "sim", tmp_path / "tracked"
    frame = np.zeros((32, 32), np.uint16)
    frame[4:10, 4:10] = 1
    bad = tmp_path / "bad_ctc"
    bad.mkdir()
    tifffile.imwrite(bad / "man_track000.tif", frame)
    (bad / "man_track.txt").write_text("1 0 0 0\n2 zero 0 0\n")
    single = tmp_path / "single"
    single.mkdir()
    tifffile.imwrite(single / "frame000.tif", frame)
    shapes = tmp_path / "shapes"
    shapes.mkdir()
    tifffile.imwrite(shapes / "frame000.tif", frame)
    tifffile.imwrite(shapes / "frame001.tif", np.zeros((40, 32), np.uint16))
    stack = tmp_path / "stack.tif"  # three frames, no axes in the file: ask for --axes
    tifffile.imwrite(stack, np.stack([frame] * 3), photometric="minisblack", metadata=None)
    nopx = tmp_path / "nopx"
    nopx.mkdir()
    tifffile.imwrite(nopx / "frame000.tif", frame)
    tifffile.imwrite(nopx / "frame001.tif", frame)
    reused = tmp_path / "reused"
    reused.mkdir()
    tifffile.imwrite(reused / "frame000.tif", frame)
    two = frame.copy()
    two[20:26, 20:26] = 1  # id 1 for a second cell
    tifffile.imwrite(reused / "frame001.tif", two)
    gappy = tmp_path / "gappy"
    gappy.mkdir()
    for t in range(5):
        tifffile.imwrite(gappy / f"frame{t:03d}.tif", frame if t in (0, 4) else np.zeros_like(frame))
    x = str(tmp_path / "x")
    cases = [
        (["simulate", "timelapse", "--out", str(sim_dir), "--n-frames", "8", "--n-cells", "6", "--image-size-px", "96"], 0, "wrote 8 frames"),
        (["track", str(sim_dir), "--out", str(out), "--expected-speed-um", "3", "--reference", str(sim_dir / "gt" / "TRA")], 0, "TRA"),
        (["track", str(bad), "--pixel-size-um", "1", "--out", x], 2, "man_track.txt, line 2: expected 4 integers"),
        (["track", str(single), "--pixel-size-um", "1", "--out", x], 2, "at least 2 frames"),
        (["track", str(shapes), "--pixel-size-um", "1", "--out", x], 2, "differs from"),
        (["track", str(nopx), "--out", x], 2, "pass --pixel-size-um"),
        (["track", str(stack), "--pixel-size-um", "1", "--out", x], 2, "axes"),
        (["track", str(single), "--pixel-size-um", "1", "--max-gap-frames", "-1", "--out", x], 2, "max_gap_frames"),
        (["track", str(reused), "--pixel-size-um", "1", "--out", x], 2, "frame001.tif: id 1 is used for 2 separate cell-sized regions"),
        (["track", str(gappy), "--pixel-size-um", "1", "--max-gap-frames", "2", "--out", x], 2,
         "frames 1..3 hold no cells (3 frame(s)), more than the allowed gap of 2 frame(s); raise max_gap_frames (--max-gap-frames)"),
    ]
    code = "\n".join([
        "import sys", "from mechanoscope.cli.main import main",
        f"cases = {[c for c, _, _ in cases]!r}",
        "for args in cases:",
        "    print('@@case', file=sys.stderr, flush=True)",
        "    try:",
        "        main(args)",
        "        print('@@rc 0', file=sys.stderr, flush=True)",
        "    except SystemExit as e: print('@@rc', e.code or 0, file=sys.stderr, flush=True)",
    ])
    r = _cli(code=code)
    assert "Traceback" not in r.stderr, r.stderr
    parts = r.stderr.split("@@case")[1:]
    assert len(parts) == len(cases), r.stderr
    for part, (args, rc, message) in zip(parts, cases):
        assert f"@@rc {rc}" in part and message in part, (args, part)
    for name in ("cells.parquet", "lineage.parquet", "trajectories.parquet", "tracks.parquet", "track.json",
                 "scores.json", "labels/frame007.tif", "ctc/res_track.txt", "ctc/mask000.tif"):
        assert (out / name).exists(), name
    assert json.loads((out / "scores.json").read_text())["ctc"]["TRA"] > 0.9
    assert "pred_stiffness_pa" in pd.read_parquet(out / "cells.parquet").columns
    labels, tracks = read_ctc_folder(out / "ctc")  # the result is a valid CTC folder
    n_tracks = json.loads((out / "track.json").read_text())["n_tracks"]
    assert labels.shape == (8, 96, 96) and len(tracks) >= n_tracks  # a closed gap is one more CTC track


# --- real data (a peer tool's masks and tracks, not ground truth) ----------------------

def test_usiigaci_masks_tracked_agree_with_the_peer_tracker():
    import imageio.v3 as iio

    folder = shared_data("usiigaci_T98G_timelapse")
    n = 6  # six frames of the 37, top-left quarter of the field: a second or two
    masks = np.stack([iio.imread(p)[:512, :512] for p in sorted((folder / "usiigaci_masks_avg").glob("*.png"))[:n]])
    peer = np.stack([iio.imread(p)[:512, :512] for p in sorted((folder / "usiigaci_id_masks").glob("*.png"))[:n]])
    result = track_label_series(masks, 0.87, TrackConfig())
    ref_labels, ref_tracks = ctc_tracks_from_labels(peer)
    comp_labels, comp_tracks = result.ctc()
    link = linking_scores(ref_labels, ref_tracks, comp_labels, comp_tracks)
    c = ctc_scores(ref_labels, ref_tracks, comp_labels, comp_tracks, metrics=("Valid", "DET", "TRA"))
    assert c["DET"] > 0.99 and c["TRA"] > 0.97 and link["f1"] > 0.95


def test_run_folder_cell_table_is_indexed_by_frame():
    from mechanoscope.track import cells_of_frames

    cells = pd.DataFrame({"image_id": ["t002", "t000", "t001", "other"], "cell_id": [1, 1, 1, 1], "frame": 0,
                          "pred_stiffness_pa": [3.0, 1.0, 2.0, 9.0]})
    out = cells_of_frames(cells, ["run/labels/t000.tif", "run/labels/t001.tif", "run/labels/t002.tif"])
    assert dict(zip(out["image_id"], out["frame"])) == {"t000": 0, "t001": 1, "t002": 2}
    assert cells_of_frames(cells, ["s.tif[T=0]", "s.tif[T=1]"]) is cells  # one stack: frames are the table's
    with pytest.raises(TrackingError, match="name none of the label files"):
        cells_of_frames(cells, ["a.tif", "b.tif"])


def test_intensity_cost_prefers_the_cell_of_the_same_brightness(tmp_path):
    # two candidates at equal distance; only their brightness tells them apart
    table = pd.DataFrame({"frame": [0, 1, 1], "cell_id": [1, 1, 2], "centroid_y_um": [10.0, 10.0, 10.0],
                          "centroid_x_um": [10.0, 7.0, 13.0], "mean_intensity": [100.0, 300.0, 300.0]})
    for winner in (1, 2):
        t = table.copy()
        t.loc[t["cell_id"] == winner, "mean_intensity"] = 105.0
        t.loc[0, "mean_intensity"] = 100.0
        out = link_cells(t, TrackConfig(intensity_weight=3.0, divisions=False))
        assert out.loc[(out["frame"] == 1) & (out["cell_id"] == winner), "track_id"].item() == out.loc[0, "track_id"]
    with pytest.raises(TrackingError, match="mean_intensity"):
        link_cells(table.drop(columns="mean_intensity"), TrackConfig(intensity_weight=1.0))
    series = _series({1: {0: (8, 8), 1: (8, 10)}, 2: {0: (30, 30), 1: (30, 31)}}, 2)
    res = track_label_series(series, 1.0, TrackConfig(intensity_weight=1.0), intensity=series.astype(float) * 10 + 1)
    assert res.cells["mean_intensity"].tolist() == pytest.approx([11.0, 21.0, 11.0, 21.0])
    assert res.cells["track_id"].nunique() == 2
