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
