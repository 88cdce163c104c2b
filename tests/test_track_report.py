"""The report's tracking section: stiffness over time per condition, tracks coloured by stiffness."""

from __future__ import annotations

import numpy as np
import pandas as pd
import pytest

from mechanoscope.report.track_figures import stiffness_time_figure, track_overlay_figure, track_section_html
from mechanoscope.simulate.timelapse import TimelapseConfig, render_timelapse
from mechanoscope.track import (
    TrackConfig,
    find_track_outputs,
    stiffness_over_time,
    track_label_series,
    trajectories,
    write_track_outputs,
)


def _traj() -> pd.DataFrame:
    """Two tracks of a 'control' and a 'treated' cell plus a daughter, stiffness known per frame."""
    rows = []
    for t in range(4):
        rows.append({"track_id": 1, "parent_track_id": 0, "frame": t, "centroid_y_um": 10.0, "centroid_x_um": 10.0 + 2 * t,
                     "pred_stiffness_pa": 100.0 * (t + 1), "condition": "control"})
        rows.append({"track_id": 2, "parent_track_id": 0, "frame": t, "centroid_y_um": 40.0 + t, "centroid_x_um": 30.0,
                     "pred_stiffness_pa": 1000.0, "condition": "treated"})
    for t in (2, 3):
        rows.append({"track_id": 3, "parent_track_id": 2, "frame": t, "centroid_y_um": 50.0, "centroid_x_um": 35.0 + t,
                     "pred_stiffness_pa": 3000.0, "condition": "treated"})
    return trajectories(pd.DataFrame(rows), window_frames=1)


def test_stiffness_over_time_is_the_median_and_iqr_of_each_frame():
    traj = _traj()
    over = stiffness_over_time(traj)
    assert list(over.columns) == ["condition", "frame", "n_cells", "median_pa", "q25_pa", "q75_pa"]
    ctrl = over[over["condition"] == "control"].set_index("frame")
    assert ctrl["median_pa"].tolist() == [100.0, 200.0, 300.0, 400.0] and (ctrl["n_cells"] == 1).all()
    tr = over[over["condition"] == "treated"].set_index("frame")
    assert tr.loc[1, "median_pa"] == 1000.0 and tr.loc[3, "median_pa"] == 2000.0  # median of 1000 and 3000
    assert tr.loc[3, "q25_pa"] == 1500.0 and tr.loc[3, "q75_pa"] == 2500.0 and tr.loc[3, "n_cells"] == 2
    # no condition column: one group; a non-positive prediction is left out; no stiffness: empty
    one = stiffness_over_time(traj.drop(columns="condition").assign(stiffness_pa=lambda d: d["stiffness_pa"].where(d["frame"] != 0, -1.0)))
    assert set(one["condition"]) == {"all cells"} and 0 not in set(one["frame"])
    assert stiffness_over_time(traj.drop(columns="stiffness_pa")).empty


def test_overlay_colours_each_step_by_the_smoothed_stiffness():
    from matplotlib.collections import LineCollection

    traj = _traj()
    fig = track_overlay_figure(traj)
    lc = [c for c in fig.axes[0].collections if isinstance(c, LineCollection)][0]
    segs = lc.get_segments()
    assert len(segs) == 3 + 3 + 1  # steps of tracks 1, 2, 3
    np.testing.assert_allclose(segs[0], [[10.0, 10.0], [12.0, 10.0]])  # (x, y) in µm, track 1 frames 0 -> 1
    np.testing.assert_allclose(lc.get_array()[:3], np.log10([200.0, 300.0, 400.0]))  # track 1, value at each step's end
    np.testing.assert_allclose(lc.get_array()[3:6], 3.0)
    np.testing.assert_allclose(lc.get_array()[6], np.log10(3000.0))
    dots = fig.axes[0].collections[1].get_offsets()  # the daughter's first position
    np.testing.assert_allclose(dots, [[37.0, 50.0]])
    # over a label image: axes in µm, the image spans the field
    bg = np.zeros((60, 50), np.uint16)
    bg[8:12, 8:12] = 1
    fig = track_overlay_figure(traj, bg, 1.0, background_frame=3)
    assert fig.axes[0].images[0].get_extent() == [0, 50.0, 60.0, 0]
    assert "frame 3" in fig.axes[0].get_title()
    # without stiffness the colour is the frame
    lc = [c for c in track_overlay_figure(traj.drop(columns=["stiffness_pa", "stiffness_smooth_pa"])).axes[0].collections
          if isinstance(c, LineCollection)][0]
    np.testing.assert_allclose(lc.get_array()[:3], [1, 2, 3])


def test_time_figure_draws_each_conditions_medians_and_band():
    over = stiffness_over_time(_traj())
    fig = stiffness_time_figure(over)
    ax = fig.axes[0]
    lines = {ln.get_label(): ln for ln in ax.get_lines()}
    assert set(lines) == {"control", "treated"}
    np.testing.assert_allclose(lines["control"].get_ydata(), [100, 200, 300, 400])
    np.testing.assert_allclose(lines["treated"].get_ydata(), [1000, 1000, 2000, 2000])
    band = ax.collections[1].get_paths()[0].vertices  # treated: between q25 and q75
    assert band[:, 1].min() == pytest.approx(1000.0) and band[:, 1].max() == pytest.approx(2500.0)
    assert ax.get_yscale() == "log"


@pytest.fixture(scope="module")
def tracked_sim(tmp_path_factory):
    cfg = TimelapseConfig(n_frames=8, n_cells=8, image_shape_px=(96, 96), treatment_frame=2, treatment_ramp_frames=2,
                          treatment_fold=3.0, prediction_cv=0.05, enter_rate_per_frame=0.0)
    sim = render_timelapse(cfg, seed=2)
    res = track_label_series(sim.labels, 1.0, TrackConfig(expected_speed_um_per_frame=3.0), cells=sim.cells)
    return sim, res


def test_report_shows_the_tracking_section_only_when_the_run_has_tracks(tmp_path, tracked_sim):
    from mechanoscope.pipeline import evaluate_run
    from mechanoscope.report import write_report
    from tests.test_report import make_run

    run = make_run(tmp_path / "run")
    ev = evaluate_run(run, figures=False)
    html = write_report(run, evaluation=ev).read_text(encoding="utf-8")
    assert "Tracking:" not in html and find_track_outputs(run) is None
    n_img = html.count("<img ")
    sim, res = tracked_sim
    write_track_outputs(res, run / "track")
    found = find_track_outputs(run)
    assert found is not None and found.background.shape == (96, 96) and found.background_frame == 7
    html = write_report(run, evaluation=ev).read_text(encoding="utf-8")
    assert "Tracking: cells and their stiffness over time" in html and html.count("<img ") == n_img + 2
    # the table beside the figures: the treated cells stiffen about threefold, the controls do not
    over = found.over_time.set_index(["condition", "frame"])
    ratio = over.loc[("treated", 7), "median_pa"] / over.loc[("treated", 0), "median_pa"]
    assert ratio == pytest.approx(3.0, rel=0.2)
    assert over.loc[("control", 7), "median_pa"] / over.loc[("control", 0), "median_pa"] == pytest.approx(1.0, rel=0.2)
    assert f"<td class=\"num\">{ratio:.2f}</td>" in html
    assert f"<tr><th>tracks</th><td class=\"num\">{res.trajectories['track_id'].nunique()}</td></tr>" in html


def test_a_cell_table_with_track_ids_is_enough(tmp_path, tracked_sim):
    _sim, res = tracked_sim
    run = tmp_path / "run"
    run.mkdir()
    res.cells.to_parquet(run / "cells.parquet")
    found = find_track_outputs(run)
    assert found is not None and found.background is None
    pd.testing.assert_frame_equal(found.over_time, stiffness_over_time(res.trajectories))
    html = track_section_html(found)
    assert html.count("<img ") == 2 and "no stiffness" not in html
    res.cells.drop(columns=["pred_stiffness_pa"]).to_parquet(run / "cells.parquet")
    html = track_section_html(find_track_outputs(run))
    assert html.count("<img ") == 1 and "carry no stiffness prediction" in html
    res.cells.drop(columns=["track_id"]).to_parquet(run / "cells.parquet")
    assert find_track_outputs(run) is None
