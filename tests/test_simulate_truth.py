"""Adherent-cell simulator against its documented model: latents, rendering, truth table, AFM.

Every expectation here is derived from the model in the docstring of
``mechanoscope.simulate.adherent`` and the config parameters, not from running the code.
"""

from __future__ import annotations

import json

import numpy as np
import pandas as pd
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from scipy import ndimage as ndi
from scipy import stats

from mechanoscope.io import read_label_image
from mechanoscope.simulate import AdherentConfig, MorphologyCouplings, afm_measurements, render_cell, simulate_adherent, simulate_field
from mechanoscope.simulate.adherent import _draw_latents, sample_stiffness

NO_NOISE = dict(volume_noise_ln=0.0, area_noise_ln=0.0, polarisation_noise_ln=0.0, fibre_noise_ln=0.0, ruffle_noise_ln=0.0)


# ----------------------------------------------------------------------------- stiffness draws


def test_population_draws_are_lognormal_around_the_median():
    cfg = AdherentConfig(populations={"a": {"median_pa": 300.0, "sigma_ln": 0.4}, "b": {"median_pa": 5000.0, "sigma_ln": 0.1}},
                         population_names=["a", "b"])
    E, names = sample_stiffness(cfg, 4000, np.random.default_rng(0), population="a")
    assert set(names) == {"a"}
    ln = np.log(E)
    assert np.median(ln) == pytest.approx(np.log(300.0), abs=0.03)
    assert ln.std() == pytest.approx(0.4, rel=0.05)
    assert stats.skew(ln) == pytest.approx(0, abs=0.15)  # log-normal, not normal
    # per-cell populations: each cell's E belongs to its own label
    E, names = sample_stiffness(cfg, 2000, np.random.default_rng(1))
    names = np.array(names)
    assert set(names) == {"a", "b"} and 0.45 < (names == "a").mean() < 0.55
    assert np.median(np.log(E[names == "b"])) == pytest.approx(np.log(5000.0), abs=0.02)
    assert np.log(E[names == "b"]).std() == pytest.approx(0.1, rel=0.08)
    assert np.median(np.log(E[names == "a"])) == pytest.approx(np.log(300.0), abs=0.05)


def test_continuous_draws_are_log_uniform_over_the_range():
    cfg = AdherentConfig(stiffness_mode="continuous", stiffness_range_pa=(50.0, 20000.0))
    E, names = sample_stiffness(cfg, 3000, np.random.default_rng(2))
    assert set(names) == {"continuous"}
    assert E.min() >= 50.0 and E.max() <= 20000.0
    lo, hi = np.log(50.0), np.log(20000.0)
    assert stats.kstest(np.log(E), stats.uniform(lo, hi - lo).cdf).pvalue > 0.01


# ----------------------------------------------------------------------------- latents


@settings(max_examples=60, deadline=None)
@given(
    E=st.floats(20.0, 50000.0),
    ac=st.floats(-1.0, 1.0), pc=st.floats(-1.0, 1.0), fc=st.floats(-1.0, 1.0), rc=st.floats(-1.0, 1.0),
    eref=st.floats(100.0, 3000.0),
)
def test_noise_free_latents_follow_the_documented_laws(E, ac, pc, fc, rc, eref):
    c = MorphologyCouplings(**NO_NOISE, reference_stiffness_pa=eref, area_coupling=ac, polarisation_coupling=pc,
                            fibre_coupling=fc, ruffle_coupling=rc, volume_median_um3=1200.0, area_ref_um2=800.0,
                            ar_base=0.5, fibre_base=0.05, ruffle_base=0.03)
    lat = _draw_latents(E, c, np.random.default_rng(0))
    x = np.log10(E / eref)
    assert lat["stiffness_pa"] == E
    assert lat["volume_um3"] == pytest.approx(1200.0)  # V independent of E
    assert lat["spread_area_um2"] == pytest.approx(800.0 * 10 ** (ac * x), rel=1e-9)
    assert lat["mean_height_um"] == pytest.approx(1200.0 / lat["spread_area_um2"], rel=1e-9)
    assert lat["aspect_ratio_latent"] == pytest.approx(min(1 + 0.5 * 10 ** (pc * x), 6.0), rel=1e-9)
    assert lat["fibre_amplitude"] == pytest.approx(min(0.05 * 10 ** (fc * x), 0.6), rel=1e-9)
    assert lat["ruffle_amplitude"] == pytest.approx(min(0.03 * 10 ** (-rc * x), 0.15), rel=1e-9)


def test_defaults_stiff_cells_are_larger_flatter_more_elongated_fibrous_and_smoother():
    c = MorphologyCouplings(**NO_NOISE)
    soft = _draw_latents(200.0, c, np.random.default_rng(0))
    ref = _draw_latents(c.reference_stiffness_pa, c, np.random.default_rng(0))
    stiff = _draw_latents(2000.0, c, np.random.default_rng(0))
    assert ref["spread_area_um2"] == pytest.approx(c.area_ref_um2)
    assert ref["aspect_ratio_latent"] == pytest.approx(1 + c.ar_base)
    assert ref["fibre_amplitude"] == pytest.approx(c.fibre_base)
    assert ref["ruffle_amplitude"] == pytest.approx(c.ruffle_base)
    assert soft["spread_area_um2"] < ref["spread_area_um2"] < stiff["spread_area_um2"]
    assert soft["mean_height_um"] > stiff["mean_height_um"]
    assert soft["aspect_ratio_latent"] < stiff["aspect_ratio_latent"]
    assert soft["fibre_amplitude"] < stiff["fibre_amplitude"]
    assert soft["ruffle_amplitude"] > stiff["ruffle_amplitude"]
    # one decade of E: exactly the coupling exponents
    assert stiff["spread_area_um2"] / soft["spread_area_um2"] == pytest.approx(10 ** c.area_coupling)
    assert stiff["ruffle_amplitude"] / soft["ruffle_amplitude"] == pytest.approx(10 ** -c.ruffle_coupling)


def test_nuisance_factors_do_not_depend_on_stiffness():
    c = MorphologyCouplings()  # default noise
    lo = _draw_latents(150.0, c, np.random.default_rng(11))
    hi = _draw_latents(4000.0, c, np.random.default_rng(11))  # same noise draws
    for k in ("volume_um3", "orientation_rad", "nucleus_radius_um", "dome_exponent"):
        assert lo[k] == hi[k], k
    r = 4000.0 / 150.0
    assert hi["spread_area_um2"] / lo["spread_area_um2"] == pytest.approx(r**c.area_coupling)
    assert (hi["aspect_ratio_latent"] - 1) / (lo["aspect_ratio_latent"] - 1) == pytest.approx(r**c.polarisation_coupling)


def test_area_scales_with_volume_to_the_two_thirds():
    c = MorphologyCouplings(area_noise_ln=0.0, volume_noise_ln=0.5)
    rng = np.random.default_rng(3)
    lats = [_draw_latents(c.reference_stiffness_pa, c, rng) for _ in range(200)]
    V = np.array([d["volume_um3"] for d in lats])
    A = np.array([d["spread_area_um2"] for d in lats])
    np.testing.assert_allclose(A, c.area_ref_um2 * (V / c.volume_median_um3) ** (2 / 3), rtol=1e-9)
    assert np.log(V).std() == pytest.approx(0.5, rel=0.15)
    assert np.median(V) == pytest.approx(c.volume_median_um3, rel=0.12)
    th = np.array([d["orientation_rad"] for d in lats])
    q = np.array([d["dome_exponent"] for d in lats])
    assert th.min() >= 0 and th.max() <= np.pi and th.std() > 0.7  # uniform over [0, π)
    assert q.min() >= 0.6 and q.max() <= 1.4 and q.max() - q.min() > 0.6
    rn = np.array([d["nucleus_radius_um"] for d in lats])  # log-normal, 15 % spread, independent of E
    assert np.median(rn) == pytest.approx(c.nucleus_radius_um, rel=0.05)
    assert np.log(rn).std() == pytest.approx(0.15, rel=0.2)


# ----------------------------------------------------------------------------- rendering


def _lat(**kw):
    d = dict(stiffness_pa=1000.0, volume_um3=1500.0, spread_area_um2=900.0, mean_height_um=1500 / 900,
             aspect_ratio_latent=2.5, fibre_amplitude=0.0, ruffle_amplitude=0.0, orientation_rad=0.4,
             nucleus_radius_um=5.0, dome_exponent=1.0)
    d.update(kw)
    return d


def _ellipse_rho2(shape, center, px, lat):
    A, ar, th = lat["spread_area_um2"], lat["aspect_ratio_latent"], lat["orientation_rad"]
    a, b = np.sqrt(A * ar / np.pi), np.sqrt(A / (np.pi * ar))
    yy, xx = np.mgrid[0 : shape[0], 0 : shape[1]].astype(float)
    dy, dx = (yy - center[0]) * px, (xx - center[1]) * px
    u = dx * np.cos(th) + dy * np.sin(th)  # along the long axis (angle from +x towards +y)
    v = -dx * np.sin(th) + dy * np.cos(th)
    return (u / a) ** 2 + (v / b) ** 2, u, v


@pytest.mark.parametrize("px,theta,q,ar", [(0.5, 0.4, 1.0, 2.5), (0.8, 2.2, 0.7, 1.6), (0.3, 1.3, 1.3, 4.0)])
def test_smooth_cell_is_the_documented_elliptical_dome(px, theta, q, ar):
    c = MorphologyCouplings(nucleus_height_fraction=0.0)
    lat = _lat(orientation_rad=theta, dome_exponent=q, aspect_ratio_latent=ar)
    h, m, center = render_cell(lat, px, c, np.random.default_rng(4))
    rho2, _, _ = _ellipse_rho2(h.shape, center, px, lat)
    expect = np.clip(1 - rho2, 0, None) ** q
    expect *= lat["volume_um3"] / (expect.sum() * px**2)
    assert (m != (rho2 < 1)).sum() <= 2
    np.testing.assert_allclose(h, expect, atol=1e-6 * expect.max())
    assert m.sum() * px**2 == pytest.approx(900.0, rel=0.03)
    # the centre lies within half a pixel of the box centre
    half = (h.shape[0] - 1) / 2
    assert abs(center[0] - half) <= 0.5 and abs(center[1] - half) <= 0.5


def test_nucleus_bump_sits_on_the_long_axis():
    px, theta = 0.4, 0.7
    c = MorphologyCouplings(nucleus_height_fraction=0.5)
    lat = _lat(orientation_rad=theta, aspect_ratio_latent=3.0, nucleus_radius_um=4.0)
    for seed in range(4):
        h, m, center = render_cell(lat, px, c, np.random.default_rng(seed))
        rho2, u, v = _ellipse_rho2(h.shape, center, px, lat)
        dome = np.clip(1 - rho2, 0, None)
        ratio = np.where(m, h / np.where(m, dome, 1), 0)
        base = np.median(ratio[m])
        bump = m & (ratio > base * 1.01)
        assert bump.sum() * px**2 == pytest.approx(np.pi * 16, rel=0.2)
        assert abs(v[bump].mean()) < px  # no offset across the long axis
        a = np.sqrt(900 * 3.0 / np.pi)
        assert abs(u[bump].mean()) <= 0.25 * a + px
        assert h.sum() * px**2 == pytest.approx(1500.0, rel=1e-9)


def test_stress_fibres_have_the_given_amplitude_and_run_along_the_long_axis():
    px = 0.5
    c = MorphologyCouplings(nucleus_height_fraction=0.0)
    for theta in (0.3, 1.2, 2.5):
        lat = _lat(orientation_rad=theta, fibre_amplitude=0.3)
        h, m, center = render_cell(lat, px, c, np.random.default_rng(1))
        rho2, _, _ = _ellipse_rho2(h.shape, center, px, lat)
        mod = np.zeros_like(h)
        mod[m] = h[m] / (1 - rho2[m])
        assert mod[m].std() / mod[m].mean() == pytest.approx(0.3, rel=0.03)
        gy, gx = np.gradient(mod)
        inner = rho2 < 0.5
        along = (np.cos(theta) * gx + np.sin(theta) * gy)[inner]
        across = (-np.sin(theta) * gx + np.cos(theta) * gy)[inner]
        assert (across**2).mean() > 10 * (along**2).mean()


def test_edge_ruffling_has_the_given_relative_rms():
    px = 0.25
    c = MorphologyCouplings(nucleus_height_fraction=0.0)
    rms = []
    for ruffle in (0.02, 0.08):
        lat = _lat(aspect_ratio_latent=1.0, ruffle_amplitude=ruffle)
        devs = []
        for seed in range(3):
            h, m, (cy, cx) = render_cell(lat, px, c, np.random.default_rng(seed))
            yy, xx = np.nonzero(m)
            r = np.hypot(yy - cy, xx - cx) * px
            phi = np.arctan2(yy - cy, xx - cx)
            k = np.floor((phi + np.pi) / (2 * np.pi) * 180).astype(int).clip(0, 179)
            rmax = np.zeros(180)
            np.maximum.at(rmax, k, r)
            R = np.sqrt(900 / np.pi)
            devs.append(np.sqrt(np.mean((rmax / R - 1) ** 2)))
        rms.append(np.mean(devs))
    assert rms[0] == pytest.approx(0.02, abs=0.012)
    assert rms[1] == pytest.approx(0.08, rel=0.25)


# ----------------------------------------------------------------------------- one field


def _field(seed=0, **kw):
    base = dict(image_shape_px=(160, 200), cells_per_image=4, debris_per_image=0.0, touching_fraction=0.0,
                optics={"pixel_size_um": 0.8}, defocus_jitter_um=0.0, defocus_um=2.5)
    base.update(kw)
    return AdherentConfig(**base)


def test_truth_table_rows_describe_their_own_label_and_height():
    px = 0.8
    c = dict(ruffle_base=0.0, nucleus_height_fraction=0.3)
    for seed in (1, 2, 3):
        cfg = _field(couplings=c)
        fld = simulate_field(cfg, seed, population=None, image_id="f7")
        t = fld.cells
        assert len(t) >= 3
        assert t.cell_id.tolist() == list(range(1, len(t) + 1))
        assert (t.image_id == "f7").all() and (t.frame == 0).all()
        assert (t.defocus_um == 2.5).all() and (t.pixel_size_um == px).all() and (t.modality == "brightfield").all()
        H, W = fld.labels.shape
        for row in t.itertuples():
            own = fld.labels == row.cell_id
            area = own.sum()
            assert row.area_px_truth == area
            # spread area and volume of the latents belong to this very cell
            assert area * px**2 == pytest.approx(row.spread_area_um2 * row.visible_fraction, rel=0.04)
            if row.visible_fraction == 1.0:
                assert fld.height_um[own].sum() * px**2 == pytest.approx(row.volume_um3, rel=1e-6)
                assert row.mean_height_um == pytest.approx(row.volume_um3 / row.spread_area_um2)
            yy, xx = np.nonzero(own)
            assert row.centroid_y_px == pytest.approx(yy.mean()) and row.centroid_x_px == pytest.approx(xx.mean())
            assert row.centroid_y_um == pytest.approx(yy.mean() * px) and row.centroid_x_um == pytest.approx(xx.mean() * px)
            on_border = own[0].any() or own[-1].any() or own[:, 0].any() or own[:, -1].any()
            assert row.edge_touching_truth == on_border
            assert (row.visible_fraction < 1.0) == on_border
            if not on_border:  # ellipse centre = centroid of a whole smooth cell
                assert row.center_y_px == pytest.approx(yy.mean(), abs=0.6)
                assert row.center_x_px == pytest.approx(xx.mean(), abs=0.6)


def test_per_cell_population_labels_match_their_stiffness():
    pops = {"lo": {"median_pa": 100.0, "sigma_ln": 0.05}, "hi": {"median_pa": 10000.0, "sigma_ln": 0.05}}
    cfg = _field(cells_per_image=6, image_shape_px=(256, 256), populations=pops, population_names=["lo", "hi"],
                 couplings={**NO_NOISE, "ruffle_base": 0.0})
    fld = simulate_field(cfg, 5)
    t = fld.cells
    assert set(t.label) == {"lo", "hi"}
    assert (t.loc[t.label == "lo", "stiffness_pa"] < 130).all() and (t.loc[t.label == "hi", "stiffness_pa"] > 7000).all()
    # noise-free model: area follows from E alone
    x = np.log10(t.stiffness_pa / 632.5)
    np.testing.assert_allclose(t.spread_area_um2, 900.0 * 10 ** (0.15 * x), rtol=1e-9)
    whole = t[t.visible_fraction == 1.0]
    areas = whole.area_px_truth * 0.8**2
    np.testing.assert_allclose(areas, whole.spread_area_um2, rtol=0.04)


def test_all_cells_fit_in_a_roomy_field_and_defocus_jitters():
    cfg = _field(cells_per_image=3, image_shape_px=(320, 320), defocus_jitter_um=1.0)
    d = [simulate_field(cfg, s, population="soft") for s in range(6)]
    assert all(len(f.cells) == 3 for f in d)
    assert all(f.image.shape == (320, 320) and f.image.dtype == np.uint16 for f in d)
    defoci = np.array([f.defocus_um for f in d])
    assert np.all(defoci == [f.cells.defocus_um.iloc[0] for f in d])
    assert defoci.std() > 0.3 and abs(defoci.mean() - 2.5) < 1.5
    assert simulate_field(cfg, 0, population="soft").cells.equals(d[0].cells)


def test_touching_fraction_one_places_cells_in_contact():
    cfg = _field(cells_per_image=5, image_shape_px=(256, 256), touching_fraction=1.0)
    fld = simulate_field(cfg, 0, population="stiff")
    lab = fld.labels
    grown = ndi.grey_dilation(lab, size=3)
    contacts = {(int(a), int(b)) for a, b in zip(lab.ravel(), grown.ravel()) if a > 0 and b > 0 and a != b}
    assert len(contacts) >= 2
    cfg0 = _field(cells_per_image=3, image_shape_px=(320, 320), touching_fraction=0.0, couplings={"ruffle_base": 0.0})
    for s in range(3):
        lab = simulate_field(cfg0, s, population="stiff").labels
        grown = ndi.grey_dilation(lab, size=3)
        assert not np.any((lab > 0) & (grown != lab))  # no cell next to another


# ----------------------------------------------------------------------------- AFM


def _cells_table(n, rng, n_images=3):
    return pd.DataFrame({
        "image_id": [f"img_{i % n_images}" for i in range(n)],
        "cell_id": np.arange(1, n + 1),
        "stiffness_pa": np.exp(rng.uniform(np.log(50), np.log(50000), n)),
        "edge_touching_truth": rng.random(n) < 0.3,
        "centroid_y_um": rng.uniform(0, 300, n),
        "centroid_x_um": rng.uniform(300, 600, n),
    })


def test_afm_measures_whole_cells_with_lognormal_error_of_given_cv():
    rng = np.random.default_rng(0)
    cells = _cells_table(6000, rng)
    cv = 0.5
    afm = afm_measurements(cells, AdherentConfig(afm_fraction=0.7, afm_error_cv=cv), np.random.default_rng(1))
    whole = cells[~cells.edge_touching_truth]
    assert len(afm) == int(round(0.7 * len(whole)))
    assert afm.truth_cell_id.is_unique and set(afm.truth_cell_id) <= set(whole.cell_id)
    assert list(afm.columns) == ["image_id", "position_y_um", "position_x_um", "measured_stiffness_pa", "truth_cell_id"]
    truth = cells.set_index("cell_id").loc[afm.truth_cell_id]
    assert (afm.image_id.to_numpy() == truth.image_id.to_numpy()).all()
    logr = np.log(afm.measured_stiffness_pa.to_numpy() / truth.stiffness_pa.to_numpy())
    sigma = np.sqrt(np.log(1 + cv**2))
    assert logr.std() == pytest.approx(sigma, rel=0.04)
    assert np.median(logr) == pytest.approx(0, abs=0.03)
    assert stats.normaltest(logr).pvalue > 1e-3
    ratio = np.exp(logr)
    assert ratio.std() / ratio.mean() == pytest.approx(cv, rel=0.08)
    # positions: over the measured cell (0.5 µm jitter per axis), in µm
    dy = afm.position_y_um.to_numpy() - truth.centroid_y_um.to_numpy()
    dx = afm.position_x_um.to_numpy() - truth.centroid_x_um.to_numpy()
    assert np.abs(dy).max() < 3 and np.abs(dx).max() < 3
    assert dy.std() == pytest.approx(0.5, rel=0.1) and dx.std() == pytest.approx(0.5, rel=0.1)


def test_afm_without_error_and_empty_inputs():
    rng = np.random.default_rng(2)
    cells = _cells_table(40, rng)
    afm = afm_measurements(cells, AdherentConfig(afm_fraction=1.0, afm_error_cv=0.0), np.random.default_rng(3))
    truth = cells.set_index("cell_id").loc[afm.truth_cell_id]
    np.testing.assert_allclose(afm.measured_stiffness_pa, truth.stiffness_pa, rtol=1e-12)
    assert len(afm) == (~cells.edge_touching_truth).sum()
    assert afm.truth_cell_id.is_monotonic_increasing
    for frac in (0.0,):
        empty = afm_measurements(cells, AdherentConfig(afm_fraction=frac), rng)
        assert len(empty) == 0 and empty.truth_cell_id.dtype == np.int64 and empty.position_x_um.dtype == np.float64
    assert len(afm_measurements(cells.iloc[:0], AdherentConfig(), rng)) == 0


# ----------------------------------------------------------------------------- data set on disk


def test_data_set_files_agree_with_truth_and_cycle_populations(tmp_path):
    cfg = AdherentConfig(n_images=4, image_shape_px=(96, 128), cells_per_image=2, population_names=["stiff", "soft", "intermediate"],
                         afm_fraction=1.0, optics={"pixel_size_um": 1.1}, couplings={"area_ref_um2": 500.0})
    out = simulate_adherent(cfg, tmp_path / "sim", seed=3)
    cells = pd.read_parquet(out / "cells.parquet")
    labels = cells.groupby("image_id")["label"].agg(set).to_dict()
    assert labels == {"img_0000": {"stiff"}, "img_0001": {"soft"}, "img_0002": {"intermediate"}, "img_0003": {"stiff"}}
    for iid, grp in cells.groupby("image_id"):
        lab = read_label_image(out / "labels" / f"{iid}.tif")
        assert lab.pixel_size_um == pytest.approx(1.1, rel=1e-6)
        counts = np.bincount(lab.data.ravel().astype(int), minlength=grp.cell_id.max() + 1)
        assert counts[grp.cell_id.to_numpy()].tolist() == grp.area_px_truth.tolist()
        assert (counts[grp.cell_id.max() + 1 :] == 0).all()
        np.testing.assert_allclose(grp.centroid_x_um, grp.centroid_x_px * 1.1)
    afm = pd.read_parquet(out / "afm.parquet")
    meta = json.loads((out / "simulation.json").read_text())
    assert meta["n_cells"] == len(cells) and meta["n_afm"] == len(afm) and meta["seed"] == 3
    assert meta["config"]["optics"]["pixel_size_um"] == 1.1 and meta["config"]["population_names"] == ["stiff", "soft", "intermediate"]
    assert len(afm) == (~cells.edge_touching_truth).sum()
    m = afm.merge(cells, left_on=["image_id", "truth_cell_id"], right_on=["image_id", "cell_id"], validate="one_to_one")
    assert len(m) == len(afm)
    assert np.hypot(m.position_y_um - m.centroid_y_um, m.position_x_um - m.centroid_x_um).max() < 3
    # fresh images are independent draws: the per-image fields are not all identical
    assert cells.groupby("image_id").stiffness_pa.first().nunique() == 4
