"""Simulated RT-DC channel: dclab's look-up table inverted, contours, images, .rtdc files, truth recovered.

The test against truth: cells with known E are deformed as dclab's table says, rendered,
segmented like the instrument, written as .rtdc, and ``import_rtdc`` (dclab's table,
pixelation correction) gives the moduli back — median APE ≤ 8 %, 75th percentile ≤ 15 %
with instrument-like segmented masks (pixelation and segmentation are the method's own
error; with the true contour the median APE is ≤ 5 %).
"""

from __future__ import annotations

import subprocess
import sys
import warnings

import numpy as np
import pytest

pytest.importorskip("dclab")

from mechanoscope.errors import MechanoscopeError  # noqa: E402
from mechanoscope.simulate.channel import (  # noqa: E402
    ChannelSimConfig,
    contour_deformation,
    contour_with_deformation,
    lut_deformation,
    measure_mask,
    simulate_channel,
)


def _dclab_e_pa(area, deform, cfg, px_um=0.0):
    from dclab.features.emodulus import get_emodulus

    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        return 1e3 * get_emodulus(deform=deform, area_um=area, medium=cfg.medium, channel_width=cfg.channel_width_um,
                                  flow_rate=cfg.flow_rate_ul_s, px_um=px_um, temperature=cfg.temperature_c,
                                  lut_data=cfg.lut, visc_model=cfg.viscosity_model)


def test_lut_deformation_round_trips_through_dclab():
    cfg = ChannelSimConfig(flow_rate_ul_s=0.06, channel_width_um=30.0)
    rng = np.random.default_rng(1)
    area = rng.uniform(80, 250, 12)
    e = np.exp(rng.uniform(np.log(700), np.log(3000), 12))
    # last three: 1 MPa (stiffer than the table covers), then a soft and a stiff cell of one size
    d = lut_deformation(np.append(area, [100.0, 120.0, 120.0]), np.append(e, [1e6, 800.0, 2400.0]), cfg)
    assert np.isnan(d[-3]) and np.isfinite(d[:-3]).all() and np.isfinite(d[-2:]).all()
    assert d[-1] < d[-2]  # stiffer cells deform less at the same size
    back = _dclab_e_pa(area, d[:-3], cfg)
    assert np.allclose(back, e, rtol=5e-3)
    with pytest.raises(MechanoscopeError, match="one value per cell"):
        lut_deformation(np.ones(2), np.ones(3), cfg)


@pytest.mark.parametrize("deform, asym", [(0.0, 0.25), (0.01, 0.0), (0.05, 0.25), (0.15, 0.4)])
def test_contour_has_the_requested_deformation_and_area(deform, asym):
    xy = contour_with_deformation(120.0, deform, asym)
    d, a = contour_deformation(xy)
    assert d == pytest.approx(deform, abs=1e-7 if deform else 1e-4) and a == pytest.approx(120.0, rel=1e-9)
    if deform > 0:
        assert np.ptp(xy[:, 0]) > np.ptp(xy[:, 1])  # elongated along the flow
    with pytest.raises(MechanoscopeError, match="beyond"):
        contour_with_deformation(120.0, 0.6, asym)


def test_measured_deformation_of_a_pixelated_disc_matches_dclabs_pixelation_correction():
    from dclab.features.emodulus.pxcorr import corr_deform_with_area_um

    yy, xx = np.mgrid[:80, :120]
    deltas = []
    for r, (cy, cx) in zip((12.0, 15.3, 18.7, 21.1), ((40.2, 50.7), (39.6, 60.1), (40.5, 59.5), (41.0, 61.3))):
        m = measure_mask((yy - cy) ** 2 + (xx - cx) ** 2 <= r**2, 0.34)
        deltas.append(m["deform"] - corr_deform_with_area_um(m["area_um"], 0.34))
        assert m["area_um"] == pytest.approx(np.pi * r**2 * 0.34**2, rel=0.12)
    assert abs(np.mean(deltas)) < 0.003  # what dclab subtracts is what a pixelated contour adds
    assert np.isnan(measure_mask(np.zeros((10, 10), bool), 0.34)["deform"])


def test_simulated_rtdc_file_opens_in_dclab_and_import_recovers_the_moduli(tmp_path):
    import dclab

    from mechanoscope.mechanics.rtdc import import_rtdc

    sim = simulate_channel(tmp_path / "sim", {"n_events": 30, "flow_rate_ul_s": 0.04}, seed=2)
    assert [f.name for f in sim.files] == ["channel.rtdc"] and len(sim.truth) >= 28
    ds = dclab.new_dataset(sim.files[0])
    assert len(ds) == len(sim.truth) and ds.config["setup"]["channel width"] == 20.0
    assert ds.config["setup"]["flow rate"] == 0.04 and ds.config["imaging"]["pixel size"] == pytest.approx(0.34)
    assert ds["image"][0].dtype == np.uint8 and ds["mask"][0].shape == (80, 250)
    assert np.allclose(ds["deform"][:], sim.truth["deform_measured"])
    res = import_rtdc(sim.files[0], tmp_path / "run", {"crop_pixels": 32}, labels=sim.truth)
    assert res.n_outside_lut == 0 and res.notes == []
    cells = res.table
    ape = 100 * np.abs(cells.rtdc_youngs_modulus_pa / cells.stiffness_pa - 1)
    assert np.median(ape) <= 8.0 and np.percentile(ape, 75) <= 15.0, ape.describe()
    # the stiffest cells read stiffest: rank agreement of the look-up with the truth
    from scipy.stats import spearmanr

    assert spearmanr(cells.rtdc_youngs_modulus_pa, cells.stiffness_pa).statistic > 0.9


def test_true_contour_masks_recover_moduli_closer(tmp_path):
    from mechanoscope.mechanics.rtdc import import_rtdc

    sim = simulate_channel(tmp_path / "sim", {"n_events": 24, "mask": "true", "texture_amplitude": 0.0}, seed=5)
    res = import_rtdc(sim.files[0], tmp_path / "run", {"crop_pixels": 16}, labels=sim.truth)
    ape = 100 * np.abs(res.table.rtdc_youngs_modulus_pa / res.table.stiffness_pa - 1)
    assert np.median(ape) <= 5.0


def test_same_seed_same_truth_and_refuses_to_overwrite(tmp_path):
    cfg = {"n_events": 3, "roi_px": (64, 120)}
    a = simulate_channel(tmp_path / "a", cfg, seed=7)
    b = simulate_channel(tmp_path / "b", cfg, seed=7)
    assert a.truth.equals(b.truth)
    with pytest.raises(MechanoscopeError, match="--overwrite"):
        simulate_channel(tmp_path / "a", cfg, seed=7)
    with pytest.raises(MechanoscopeError, match="none of the simulated cells"):
        simulate_channel(tmp_path / "c", {"n_events": 3, "youngs_modulus_range_pa": (5e5, 6e5)}, seed=0)


def test_cli_simulate_channel_with_conditions_then_import(tmp_path):
    import pandas as pd
    from typer.testing import CliRunner

    from mechanoscope.cli.main import app

    out = tmp_path / "sim"
    r = CliRunner().invoke(app, ["simulate", "channel", "--out", str(out), "--conditions", "soft,stiff", "--condition-medians-pa", "900,1800",
                                 "--replicates", "2", "--events-per-sample", "2", "--seed", "1"])
    assert r.exit_code == 0, r.output
    assert sorted(p.name for p in out.glob("*.rtdc")) == ["soft_r1.rtdc", "soft_r2.rtdc", "stiff_r1.rtdc", "stiff_r2.rtdc"]
    r = CliRunner().invoke(app, ["rtdc", "import", str(out / "stiff_r2.rtdc"), "--out", str(tmp_path / "run"), "--labels", str(out / "truth.parquet"),
                                 "--crop-pixels", "16"])
    assert r.exit_code == 0, r.output
    cells = pd.read_parquet(tmp_path / "run" / "cells.parquet")
    assert (cells.condition == "stiff").all() and (cells.replicate == 2).all() and cells.stiffness_pa.notna().all()


def test_cli_bad_channel_settings_give_a_message_not_a_traceback(tmp_path):
    cmd = [sys.executable, "-m", "mechanoscope.cli.main", "simulate", "channel", "--out", str(tmp_path / "x"), "--n-events", "2"]
    r = subprocess.run(cmd + ["--mask", "drawn"], capture_output=True, text=True)
    assert r.returncode != 0 and "Traceback" not in r.stderr + r.stdout and "mask" in r.stderr + r.stdout
