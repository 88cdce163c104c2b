"""Truth of the time-lapse and condition simulators against hand values: each detection's
centroid and area are those of its pixels in the label image (µm), treated cells stiffen
linearly to the fold over the ramp frames, ellipses keep the cell's area with the aspect
ratio asked for; replicate effects are ln(replicate / condition median) and cells scatter
around their replicate's median with the configured sigma."""

from __future__ import annotations

import numpy as np
import pytest

from mechanoscope.simulate.conditions import ConditionsDesign, simulate_condition_table
from mechanoscope.simulate.timelapse import TimelapseConfig, _Cell, _paint, _stiffness_factor, render_timelapse


def test_each_detection_is_its_pixels_in_micrometres():
    cfg = TimelapseConfig(n_frames=3, image_shape_px=(48, 80), pixel_size_um=0.5, n_cells=4, cell_radius_um=3.0, enter_rate_per_frame=0.0)
    sim = render_timelapse(cfg, seed=1)
    assert len(sim.cells) >= 8
    for r in sim.cells.itertuples():
        yy, xx = np.nonzero(sim.labels[r.frame] == r.cell_id)
        assert r.area_um2 == pytest.approx(len(yy) * 0.25)
        assert (r.centroid_y_um, r.centroid_x_um) == pytest.approx((yy.mean() * 0.5, xx.mean() * 0.5))


def test_treated_cells_stiffen_linearly_over_the_ramp():
    cfg = TimelapseConfig(treatment_frame=5, treatment_ramp_frames=4, treatment_fold=3.0)
    treated = _Cell(1, 0.0, 0.0, 0.0, 0.0, 5.0, 1.0, 0.0, 1000.0, True, 0)
    control = _Cell(2, 0.0, 0.0, 0.0, 0.0, 5.0, 1.0, 0.0, 1000.0, False, 0)
    # frame 5 is the ramp's first of 4 frames: 1 + 2 · k/4 for k = 1..4, then the full fold
    assert [_stiffness_factor(cfg, treated, t) for t in (0, 4, 5, 6, 7, 8, 9, 30)] == pytest.approx([1, 1, 1.5, 2, 2.5, 3, 3, 3])
    assert {_stiffness_factor(cfg, control, t) for t in (0, 5, 30)} == {1.0}
    assert _stiffness_factor(TimelapseConfig(), treated, 30) == 1.0  # no treatment


def test_painted_ellipse_has_the_cells_area_and_aspect_ratio():
    cell = _Cell(1, 50.0, 50.0, 0.0, 0.0, 10.0, 1.0, 0.0, 1000.0, False, 0)
    cell.ar = 2.25  # long/short axis 2.25: semi-axes 15 and 6.67 µm, area π·10²
    sy, sx, mask = _paint((400, 400), cell, 0.25, (0.0, 0.0))
    yy, xx = np.nonzero(mask)
    assert mask.sum() * 0.25**2 == pytest.approx(np.pi * 100, rel=0.01)
    assert (np.ptp(xx) + 1) * 0.25 == pytest.approx(30.0, abs=0.5) and (np.ptp(yy) + 1) * 0.25 == pytest.approx(2 * 10 / 1.5, abs=0.5)


def test_replicate_effects_and_cell_scatter_by_hand():
    design = ConditionsDesign(names=["A", "B"], medians_pa=[400.0, 1200.0], replicates=40, replicate_sd_ln=0.2, cell_sigma_ln=0.5)
    cells, reps = simulate_condition_table(design, 200, seed=3)
    np.testing.assert_allclose(reps["replicate_effect_ln"], np.log(reps["replicate_median_pa"] / reps["condition_median_pa"]))
    assert list(reps["replicate"][:3]) == [1, 2, 3] and 0.15 < reps["replicate_effect_ln"].std() < 0.25
    ln = np.log(cells["stiffness_pa"] / cells["replicate_median_pa"])
    assert abs(ln.mean()) < 0.02 and 0.48 < ln.std() < 0.52  # 16,000 draws of N(0, 0.5²)


def test_persistent_random_walk_keeps_the_rms_speed():
    # v ← p·v + √(1 − p²)·noise keeps the RMS speed at speed_um_per_frame in every frame
    cfg = TimelapseConfig(n_frames=16, image_shape_px=(200, 200), pixel_size_um=2.0, n_cells=30, cell_radius_um=2.0, radius_cv=0.0,
                          aspect_ratio=1.0, speed_um_per_frame=3.0, persistence=0.7, division_probability=0.0, enter_rate_per_frame=0.0,
                          miss_probability=0.0, position_noise_um=0.0)
    c = render_timelapse(cfg, seed=2).cells.sort_values(["true_track_id", "frame"])
    step = c.groupby("true_track_id")[["centroid_y_um", "centroid_x_um"]].diff().dropna()
    step = step[c.loc[step.index, "frame"] >= 8]  # well after the start
    assert len(step) > 150
    rms = float(np.sqrt((step**2).sum(axis=1).mean()))
    assert 2.4 < rms < 3.6  # q = 1 − p instead would settle near 3 · 0.3/√(1 − 0.49) = 1.3 µm


def test_slow_cells_of_a_wide_field_stay_in_it():
    # a cell leaves only when its centre leaves the field (rows × columns = 40 × 200 µm): slow cells all stay
    cfg = TimelapseConfig(n_frames=5, image_shape_px=(40, 200), pixel_size_um=1.0, n_cells=12, cell_radius_um=2.0, speed_um_per_frame=0.2,
                          division_probability=0.0, enter_rate_per_frame=0.0, miss_probability=0.0, position_noise_um=0.0)
    sim = render_timelapse(cfg, seed=5)
    frames = sim.cells.groupby("true_track_id")["frame"].nunique()
    assert len(frames) >= 10 and (frames == 5).mean() >= 0.8
    assert sim.cells["centroid_x_um"].max() > 100  # cells far right of the 40 µm height are followed too


def test_a_mother_divides_in_the_truth_only_when_both_daughters_were_seen():
    # lineage.divides must agree with the lineage itself: a division is a mother with two daughter
    # tracks (as in the CTC ground truth); a mother whose second daughter was never detected is
    # not a division event. This seed has such mothers, so a ">= 1 daughter" rule shows here.
    cfg = TimelapseConfig(division_probability=0.1, min_frames_between_divisions=3)
    lin = render_timelapse(cfg, seed=1).lineage
    daughters = lin.loc[lin["parent_track_id"] > 0].groupby("parent_track_id").size()
    n_daughters = lin["true_track_id"].map(daughters).fillna(0).astype(int)
    assert (n_daughters == 1).any() and (n_daughters == 2).sum() > 50
    assert (lin["divides"] == (n_daughters == 2)).all()
