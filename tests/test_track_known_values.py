"""Per-track series, lineages and tracking metrics on hand-made tracks with values computed by hand."""

from __future__ import annotations

import numpy as np
import pandas as pd
import pytest

from mechanoscope.metrics.tracking import division_scores, edge_scores, linking_scores, match_detections, table_links
from mechanoscope.track import lineage_table, trajectories, track_summary
from mechanoscope.track.series import stiffness_over_time


def _track(frames, ys, xs, tid=1, **cols):
    return pd.DataFrame({"track_id": tid, "parent_track_id": 0, "lineage_id": tid, "frame": frames, "cell_id": 1,
                         "centroid_y_um": ys, "centroid_x_um": xs, **cols})


def test_speed_over_a_closed_gap_is_per_frame_elapsed_and_per_minute():
    tr = _track([0, 1, 3], [0.0, 3.0, 9.0], [0.0, 4.0, 12.0])  # steps 5 µm in 1 frame, then 10 µm in 2 frames
    traj = trajectories(tr, frame_interval_min=2.0)
    assert traj["step_um"].tolist()[1:] == pytest.approx([5.0, 10.0])
    assert traj["speed_um_per_frame"].tolist()[1:] == pytest.approx([5.0, 5.0])
    assert traj["time_min"].tolist() == pytest.approx([0.0, 2.0, 6.0])
    assert traj["speed_um_per_min"].tolist()[1:] == pytest.approx([2.5, 2.5])


def test_msd_diffusion_and_alpha_of_a_straight_and_of_an_anisotropic_track():
    t = np.arange(8)
    s = track_summary(trajectories(_track(t, 3.0 * t, 4.0 * t)))  # 5 µm per frame: MSD(lag) = 25 lag²
    assert s.loc[0, "msd_alpha"] == pytest.approx(2.0)
    assert s.loc[0, "diffusion_um2_per_frame"] == pytest.approx(25.0 / 4.0)
    # motion along x only, with y constant far from 0: MSD = x displacement² (y must not enter)
    s = track_summary(trajectories(_track(t, np.full(8, 50.0), 2.0 * t)))
    assert s.loc[0, "msd_alpha"] == pytest.approx(2.0) and s.loc[0, "diffusion_um2_per_frame"] == pytest.approx(1.0)


def test_smoothed_stiffness_interval_and_log10_slope():
    e = np.array([800.0, 1000.0, 700.0, 1200.0, 900.0])
    traj = trajectories(_track(np.arange(5), np.zeros(5), np.zeros(5), pred_stiffness_pa=e), window_frames=3)
    le = np.log(e[1:4])  # the window centred on frame 2
    half = 1.96 * le.std(ddof=1) / np.sqrt(3)
    row = traj.iloc[2]
    assert row["stiffness_smooth_pa"] == pytest.approx(np.exp(le.mean()))
    assert row["stiffness_smooth_lo_pa"] == pytest.approx(np.exp(le.mean() - half))
    assert row["stiffness_smooth_hi_pa"] == pytest.approx(np.exp(le.mean() + half))
    f = np.arange(6)
    traj = trajectories(_track(f, np.zeros(6), np.zeros(6), pred_stiffness_pa=800.0 * 10 ** (0.02 * f)))
    s = track_summary(traj)
    assert s.loc[0, "stiffness_log10_slope_per_frame"] == pytest.approx(0.02)
    assert s.loc[0, "stiffness_median_pa"] == pytest.approx(np.median(800.0 * 10 ** (0.02 * f)))


def test_stiffness_over_time_quartiles():
    traj = pd.DataFrame({"frame": [0] * 5 + [1] * 4, "stiffness_pa": [100.0, 200, 300, 400, 500, 10, 20, 30, 40]})
    out = stiffness_over_time(traj).set_index("frame")
    assert out.loc[0, ["median_pa", "q25_pa", "q75_pa"]].tolist() == pytest.approx([300.0, 200.0, 400.0])
    assert out.loc[1, ["median_pa", "q25_pa", "q75_pa"]].tolist() == pytest.approx([25.0, 17.5, 32.5])
    assert out["n_cells"].tolist() == [5, 4]


def test_lineage_table_generations_children_and_missed_frames():
    rows = []
    def add(tid, parent, frames):
        rows.extend({"track_id": tid, "parent_track_id": parent, "lineage_id": 1, "frame": f} for f in frames)
    add(1, 0, [0, 1, 2])  # root, divides into 2 and 3 after frame 2
    add(2, 1, [3, 5, 6])  # missed in frame 4; divides into 4 and 5
    add(3, 1, [3, 4])
    add(4, 2, [7])
    add(5, 2, [7, 8])
    add(6, 3, [5, 6])  # 3's only successor: a gap-closed continuation, not a division
    lin = lineage_table(pd.DataFrame(rows)).set_index("track_id")
    assert lin["generation"].to_dict() == {1: 0, 2: 1, 3: 1, 4: 2, 5: 2, 6: 2}
    assert lin["n_children"].to_dict() == {1: 2, 2: 2, 3: 1, 4: 0, 5: 0, 6: 0}
    assert lin["divides"].to_dict() == {1: True, 2: True, 3: False, 4: False, 5: False, 6: False}
    assert lin.loc[1, "division_frame"] == 2 and lin.loc[2, "division_frame"] == 6 and pd.isna(lin.loc[3, "division_frame"])
    assert lin.loc[2, "n_missed_frames"] == 1 and lin.loc[1, "n_missed_frames"] == 0


def _labels(frames):
    """(T, 6, 6) label series from {t: [(label, slice_y, slice_x), ...]}."""
    out = np.zeros((max(frames) + 1, 6, 6), np.int32)
    for t, cells in frames.items():
        for lab, sy, sx in cells:
            out[t][sy, sx] = lab
    return out


def test_ctc_matching_needs_more_than_half_of_the_reference_cell():
    ref = _labels({0: [(1, slice(0, 2), slice(0, 2))]})  # 4 pixels
    half = _labels({0: [(5, slice(0, 1), slice(0, 2))]})  # covers exactly 2 of them
    more = _labels({0: [(5, slice(0, 2), slice(0, 2)), (6, slice(4, 6), slice(4, 6))]})
    more[0][1, 1] = 0  # 3 of 4
    assert match_detections(ref, half) == {}
    assert match_detections(ref, more) == {(0, 1): 5}


def test_linking_counts_with_a_merged_result_cell():
    """Two reference cells merged into one result cell: two reference links found by one result link."""
    ref = _labels({0: [(1, slice(0, 2), slice(0, 2)), (2, slice(0, 2), slice(2, 4))],
                   1: [(1, slice(0, 2), slice(0, 2)), (2, slice(0, 2), slice(2, 4))]})
    comp = _labels({0: [(9, slice(0, 2), slice(0, 4))], 1: [(9, slice(0, 2), slice(0, 4))]})
    rt = pd.DataFrame({"label": [1, 2], "begin": [0, 0], "end": [1, 1], "parent_label": [0, 0]})
    ct = pd.DataFrame({"label": [9], "begin": [0], "end": [1], "parent_label": [0]})
    s = linking_scores(ref, rt, comp, ct)
    assert (s["n_ref_links"], s["n_comp_links"], s["tp"], s["fp"], s["fn"]) == (2, 1, 2, 0, 0)
    assert s["precision"] == 1.0 and s["recall"] == 1.0


def test_a_division_with_one_daughter_wrong_is_not_found():
    # mother 1 (frames 0-1) divides into 2 and 3 (frames 2-3); the result links only daughter 2 to it
    cells = {t: [(1, slice(2, 4), slice(2, 4))] for t in (0, 1)}
    cells.update({t: [(2, slice(0, 2), slice(0, 2)), (3, slice(4, 6), slice(4, 6))] for t in (2, 3)})
    ref = _labels(cells)
    rt = pd.DataFrame({"label": [1, 2, 3], "begin": [0, 2, 2], "end": [1, 3, 3], "parent_label": [0, 1, 1]})
    ok = division_scores(ref, rt, ref.copy(), rt)
    assert (ok["tp"], ok["f1"]) == (1, 1.0)
    comp = ref.copy()
    comp[2:][comp[2:] == 3] = 7
    comp[2][2:4, 2:4] = 8  # the result's mother has a second daughter elsewhere (a wrong cell)
    comp[3][2:4, 2:4] = 8
    ct = pd.DataFrame({"label": [1, 2, 7, 8], "begin": [0, 2, 2, 2], "end": [1, 3, 3, 3], "parent_label": [0, 1, 0, 1]})
    bad = division_scores(ref, rt, comp, ct)
    assert (bad["n_ref_divisions"], bad["n_comp_divisions"], bad["tp"], bad["fp"], bad["fn"]) == (1, 1, 0, 1, 1)
    comp[comp == 7] = 0  # daughter 3 missed altogether: one matched daughter is not the division
    ct = ct[ct["label"] != 7]
    miss = division_scores(ref, rt, comp, ct)
    assert (miss["tp"], miss["fn"]) == (0, 1)


def test_table_links_join_the_mothers_last_detection_to_the_daughters_first():
    t = pd.DataFrame({"node": ["a0", "a1", "a2", "b3", "b4", "c3"], "track_id": [1, 1, 1, 2, 2, 3],
                      "parent_track_id": [0, 0, 0, 1, 1, 1], "frame": [0, 1, 2, 3, 4, 3]})
    links = table_links(t)
    assert links == {("a0", "a1"), ("a1", "a2"), ("a2", "b3"), ("b3", "b4"), ("a2", "c3")}
    s = edge_scores(links, {("a0", "a1"), ("a1", "a2"), ("a0", "b3")})
    assert (s["tp"], s["fp"], s["fn"]) == (2, 1, 3) and s["precision"] == pytest.approx(2 / 3) and s["recall"] == pytest.approx(0.4)


def test_a_division_links_the_mothers_last_detection_even_when_her_first_is_missed():
    cells = {t: [(1, slice(2, 4), slice(2, 4))] for t in (0, 1)}
    cells.update({t: [(2, slice(0, 2), slice(0, 2)), (3, slice(4, 6), slice(4, 6))] for t in (2, 3)})
    ref = _labels(cells)
    rt = pd.DataFrame({"label": [1, 2, 3], "begin": [0, 2, 2], "end": [1, 3, 3], "parent_label": [0, 1, 1]})
    comp = ref.copy()
    comp[0][:] = 0  # the result misses the mother in frame 0 only
    ct = pd.DataFrame({"label": [1, 2, 3], "begin": [1, 2, 2], "end": [1, 3, 3], "parent_label": [0, 1, 1]})
    link = linking_scores(ref, rt, comp, ct)
    # reference links: 1:0→1, 1:1→2:2, 1:1→3:2, 2:2→2:3, 3:2→3:3; only the first is lost
    assert (link["n_ref_links"], link["n_comp_links"], link["tp"], link["fn"], link["fp"]) == (5, 4, 4, 1, 0)
    div = division_scores(ref, rt, comp, ct)
    assert (div["tp"], div["f1"]) == (1, 1.0)


def test_a_gap_written_as_a_single_child_track_is_not_a_division():
    # CTC writes a track with a missed frame as a parent track and one child track: not a division
    ref = _labels({0: [(1, slice(0, 2), slice(0, 2))], 2: [(2, slice(0, 2), slice(0, 2))], 3: [(2, slice(0, 2), slice(0, 2))]})
    rt = pd.DataFrame({"label": [1, 2], "begin": [0, 2], "end": [0, 3], "parent_label": [0, 1]})
    div = division_scores(ref, rt, ref.copy(), rt)
    assert (div["n_ref_divisions"], div["n_comp_divisions"], div["tp"]) == (0, 0, 0) and div["f1"] == 1.0
    link = linking_scores(ref, rt, ref.copy(), rt)
    assert link["n_ref_links"] == 2 and link["f1"] == 1.0  # 1:0→2:2 across the gap, 2:2→2:3


def test_a_cell_missed_for_exactly_max_gap_frames_frames_stays_one_track():
    from mechanoscope.track import TrackConfig, link_cells

    rows = [dict(frame=t, cell_id=1, centroid_y_um=10.0, centroid_x_um=10.0 + t) for t in range(7) if t not in (2, 3)]
    rows += [dict(frame=t, cell_id=2, centroid_y_um=80.0, centroid_x_um=80.0) for t in range(7)]
    out = link_cells(pd.DataFrame(rows), TrackConfig(expected_speed_um_per_frame=2.0, max_gap_frames=2, divisions=False))
    assert out.loc[out.cell_id == 1, "track_id"].nunique() == 1  # frames 1 → 4: two missed frames closed


@pytest.mark.parametrize("other_area_um2", [300.0, 100.0 / 3])
def test_the_area_cost_penalises_a_change_of_area_either_way(other_area_um2):
    from mechanoscope.track import TrackConfig, link_cells

    # frame 1: B 3 µm away with the same area, C 2.5 µm away with 3x or 1/3 the area; cost 9 vs 6.25 (1 + ln 3) = 13.1
    t = pd.DataFrame({"frame": [0, 1, 1], "cell_id": [1, 1, 2], "centroid_y_um": [0.0, 0.0, 0.0],
                      "centroid_x_um": [0.0, 3.0, -2.5], "area_um2": [100.0, 100.0, other_area_um2]})
    out = link_cells(t, TrackConfig(expected_speed_um_per_frame=2.0, area_weight=1.0, divisions=False, max_gap_frames=0))
    assert out.track_id.iloc[0] == out.track_id.iloc[1] != out.track_id.iloc[2]


def test_overlap_is_intersection_over_union_and_daughters_must_be_smaller_than_the_mother():
    from mechanoscope.track.divisions import _area_ok
    from mechanoscope.track.labels import overlap_table

    s = _labels({0: [(1, slice(0, 2), slice(0, 2))], 1: [(4, slice(0, 2), slice(1, 3))]})  # 4 px each, 2 shared
    assert overlap_table(s) == {(0, 1, 1, 4): pytest.approx(2 / 6)}
    assert _area_ok(100.0, [50.0, 50.0]) and _area_ok(100.0, [63.0, 63.0])  # flat and rounded halves
    assert not _area_ok(100.0, [95.0, 50.0])  # a "daughter" as large as the mother is the mother moving on
    assert not _area_ok(100.0, [15.0, 50.0])


@pytest.mark.parametrize("distance_um, divides", [(12.0, True), (14.0, True), (14.3, False)])
def test_a_division_across_one_missed_frame_reaches_sqrt2_times_the_cutoff(distance_um, divides):
    """A daughter first seen one frame late may lie up to R·sqrt(gap + 1) = R·sqrt(2) from her mother."""
    import networkx as nx

    from mechanoscope.track.divisions import repair_divisions

    tree = nx.DiGraph()
    tree.add_edge((0, 0), (1, 0))  # the mother (frame 0) and the daughter the tracker linked (frame 1)
    tree.add_node((2, 0))  # the other daughter, missed in frame 1
    coords = [np.array([[0.0, 0.0]]), np.array([[0.0, 5.0]]), np.array([[distance_um, 0.0]])]
    areas = [np.array([100.0]), np.array([50.0]), np.array([50.0])]
    counts = repair_divisions(tree, coords, areas, max_gap_frames=1, division_max_distance_um=10.0)
    assert counts["gap_divisions"] == int(divides)
    assert tree.has_edge((0, 0), (2, 0)) is divides
