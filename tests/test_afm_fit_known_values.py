"""AFM Hertz fits on simulated curves against hand-computed contact mechanics (Poisson ratio, depth, points)."""

from __future__ import annotations

import numpy as np
import pytest

pytest.importorskip("nanite")
pytest.importorskip("afmformats")

from mechanoscope.mechanics.afm_fit import AFMFitConfig, fit_afm_files  # noqa: E402
from mechanoscope.simulate.afm_curves import AFMCurveSimConfig, simulate_afm_curves  # noqa: E402

RAW_FRAME = ["compute_tip_position", "correct_force_offset"]  # contact point stays in the simulator's frame


def _fit(tmp_path, sim: AFMCurveSimConfig, **fit):
    truth = simulate_afm_curves(tmp_path, sim, seed=1)
    tab = fit_afm_files(tmp_path, AFMFitConfig(rate_quality=False, preprocessing=RAW_FRAME, **fit)).table
    tab = tab.merge(truth, on=["file", "curve_index"], suffixes=("", "_true"))
    assert (tab.status == "ok").all(), tab.error.tolist()
    return tab


def test_poisson_ratio_and_indentation_depth_follow_hertz(tmp_path):
    sim = AFMCurveSimConfig(n_curves=3, curves_per_file=3, noise_pn=0.0, poisson_ratio=0.5, points_per_segment=400)
    tab = _fit(tmp_path / "a", sim)
    e, r = tab.youngs_modulus_pa_true.to_numpy(), 10e-6
    assert np.allclose(tab.youngs_modulus_pa / e, 1.0, rtol=0.02)
    # paraboloid: F = 4/3 · E / (1 − ν²) · √R · δ^1.5, so at the 2 nN setpoint δ = (3 F (1 − ν²) / (4 E √R))^(2/3)
    depth = (3 * 2e-9 * (1 - 0.25) / (4 * e * np.sqrt(r))) ** (2 / 3)
    np.testing.assert_allclose(tab.max_indentation_m, depth, rtol=0.02)
    assert (tab.fit_points == 400).all()  # the whole approach segment, no retract points
    # the same curves read with ν = 0.3: E / (1 − ν²) is what the curve fixes, so E scales by (1 − 0.09) / (1 − 0.25)
    nu3 = _fit(tmp_path / "b", sim, poisson_ratio=0.3)
    np.testing.assert_allclose(nu3.youngs_modulus_pa / tab.youngs_modulus_pa, 0.91 / 0.75, rtol=1e-3)


def test_contact_point_weighting_is_nanites_weight_cp_in_metres():
    """weight_contact_point_um = 1 µm is nanite's weight_cp = 1e-6 m on a real JPK curve (and moves E by ~600 Pa)."""
    import nanite

    from tests.test_afm_fit import _afm

    path = _afm("fmt-jpk-fd_spot3-0192.jpk-force")
    common = dict(preprocessing=["compute_tip_position"], contact_point_initial_um=18.0, fit_baseline=True, rate_quality=False)
    weighted = fit_afm_files(path, AFMFitConfig(**common, weight_contact_point_um=1.0)).table.iloc[0]
    plain = fit_afm_files(path, AFMFitConfig(**common, weight_contact_point_um=0.0)).table.iloc[0]
    curve = nanite.load_group(path)[0]
    curve.apply_preprocessing(["compute_tip_position"])
    params = curve.get_initial_fit_parameters(model_key="hertz_para")
    params["contact_point"].set(18e-6)
    params["baseline"].set(vary=True)
    curve.fit_model(model_key="hertz_para", params_initial=params, weight_cp=1e-6)
    ref = curve.fit_properties["params_fitted"]
    assert weighted.youngs_modulus_pa == pytest.approx(ref["E"].value, abs=0.5)
    assert weighted.contact_point_m == pytest.approx(ref["contact_point"].value, rel=1e-6)
    assert abs(weighted.youngs_modulus_pa - plain.youngs_modulus_pa) > 300  # the weighting matters on this curve
