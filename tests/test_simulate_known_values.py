"""The simulators' known truth, checked against hand values: a force curve's baseline, setpoint,
Hertz indentation and time axis; the contact points of the truth table in the configured µm
range; the RT-DC features of a rectangular mask; the landmark transform's RMS residual (µm)
and the failed curves dropped before matching."""

from __future__ import annotations

import math

import numpy as np
import pandas as pd
import pytest

from mechanoscope.mechanics.afm_run import afm_points_in_image, transform_from_landmarks
from mechanoscope.simulate.afm_curves import AFMCurveSimConfig, simulate_afm_curves, simulate_curve
from mechanoscope.simulate.channel import measure_mask


def test_force_curve_baseline_setpoint_hertz_depth_and_time_by_hand():
    cfg = AFMCurveSimConfig(points_per_segment=200, poisson_ratio=0.5, tip_radius_um=5.0, setpoint_nn=2.0,
                            spring_constant_n_per_m=0.05, approach_distance_um=3.0, speed_um_per_s=2.0)
    e, c, offset, tilt = 1000.0, 2e-6, 3e-11, 1e-5  # Pa, m, N, N/m
    d = simulate_curve(e, c, cfg, np.random.default_rng(0), offset_n=offset, tilt_n_per_m=tilt)
    z, f, ft = d["height (piezo)"], d["force"], d["force_true"]
    n = cfg.points_per_segment
    # recorded force = contact force + offset + tilt · (z − z_top); at the top no contact: the offset alone
    assert z[0] == pytest.approx(c + 3e-6, abs=1e-15) and f[0] == pytest.approx(offset, abs=1e-20)
    np.testing.assert_allclose(f - ft, offset + tilt * (z - z[0]), rtol=0, atol=1e-21)
    assert (ft[z >= c] == 0).all() and (ft[z < c - 1e-9] > 0).all()
    # turning point: the setpoint, at indentation δ = (3 F (1 − ν²) / (4 E √R))^(2/3), tip at c − δ, base at c − δ − F/k
    f_set = 2e-9
    delta = (3 * f_set * (1 - 0.25) / (4 * e * math.sqrt(5e-6))) ** (2 / 3)
    assert ft[n - 1] == pytest.approx(f_set, rel=1e-9)
    assert z[n - 1] == pytest.approx(c - delta - f_set / 0.05, rel=1e-9)
    # time: the base travels down and up at 2 µm/s
    travel = 2 * (z[0] - z[n - 1])
    assert d["time"][0] == 0 and d["time"][-1] == pytest.approx(travel / 2e-6, rel=1e-12)
    step = np.diff(d["time"])  # the turning point is recorded twice (last approach, first retract point)
    assert step[n - 1] == 0 and np.all(np.delete(step, n - 1) > 0) and (d["segment"][:n] == 0).all() and (d["segment"][n:] == 1).all()


def test_truth_table_contact_points_lie_in_the_configured_range_in_metres(tmp_path):
    cfg = AFMCurveSimConfig(n_curves=6, curves_per_file=6, points_per_segment=50, contact_point_range_um=(1.0, 4.0))
    truth = simulate_afm_curves(tmp_path, cfg, seed=2)
    cp = truth["contact_point_m"].to_numpy()
    assert ((cp >= 1e-6) & (cp <= 4e-6)).all() and cp.std() > 1e-7
    assert ((truth["youngs_modulus_pa"] >= 300) & (truth["youngs_modulus_pa"] <= 30000)).all()


def test_rtdc_features_of_a_rectangular_mask_by_hand():
    mask = np.zeros((12, 20), bool)
    mask[2:5, 5:11] = True  # rows 2–4, columns 5–10: 3 × 6 pixels
    m = measure_mask(mask, 0.5)
    # dclab's contour runs through the border pixels' centres: a 5 × 2 px rectangle, perimeter 14 px
    assert m["area_cvx"] == pytest.approx(10.0) and m["area_msd"] == pytest.approx(10.0)
    assert m["area_um"] == pytest.approx(10.0 * 0.25)
    assert m["circ"] == pytest.approx(2 * math.sqrt(math.pi * 10) / 14) and m["deform"] == pytest.approx(1 - m["circ"])
    # position: contour centroid (x = column 7.5, y = row 3) in µm; size: pixels spanned × pixel size
    assert (m["pos_x"], m["pos_y"]) == pytest.approx((7.5 * 0.5, 3 * 0.5))
    assert (m["size_x"], m["size_y"]) == pytest.approx((6 * 0.5, 3 * 0.5))


def test_landmark_rms_is_in_micrometres():
    e = 0.1  # two opposite corners pushed out by e along both axes, the other two in: best fit is the identity
    lm = pd.DataFrame({"stage_x_um": [1, -1, 1, -1], "stage_y_um": [1, -1, -1, 1],
                       "image_x_um": [1 + e, -1 - e, 1 - e, -1 + e], "image_y_um": [1 + e, -1 - e, -1 + e, 1 - e]}, dtype=float)
    tr, rms = transform_from_landmarks(lm)
    assert tr.scale == pytest.approx(1.0) and tr.rotation_deg == pytest.approx(0.0, abs=1e-9)
    assert (tr.offset_x_um, tr.offset_y_um) == pytest.approx((0.0, 0.0), abs=1e-12)
    assert rms == pytest.approx(e * math.sqrt(2))  # every landmark is e·√2 µm off


def test_failed_and_non_positive_fits_are_dropped_before_matching():
    afm = pd.DataFrame({"youngs_modulus_pa": [1000.0, 0.0, -5.0, np.nan, 2000.0, 3000.0],
                        "status": ["ok", "ok", "ok", "ok", "failed", "ok"],
                        "x_um": [1.0, 2, 3, 4, 5, 6], "y_um": [10.0, 20, 30, 40, 50, 60], "file": ["a.h5"] * 6})
    pts, n_dropped = afm_points_in_image(afm)
    assert n_dropped == 4 and list(pts["measured_stiffness_pa"]) == [1000.0, 3000.0]
    assert list(pts["position_x_um"]) == [1.0, 6.0] and list(pts["position_y_um"]) == [10.0, 60.0]
    assert list(pts["image_id"]) == ["a", "a"]
