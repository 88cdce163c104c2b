"""Physics of the image formation model (simulate/optics.py)."""

import numpy as np
import pytest

from mechanoscope.errors import ConfigError
from mechanoscope.simulate.optics import (
    CameraConfig,
    OpticsConfig,
    apply_camera,
    laplacian_spectral,
    phase_from_height,
    render_brightfield,
    render_phase_contrast,
)


def _bump(n=192, sigma_um=4.0, height_um=0.2, px=0.65):
    y, x = np.mgrid[:n, :n] * px
    c = n / 2 * px
    return height_um * np.exp(-((x - c) ** 2 + (y - c) ** 2) / (2 * sigma_um**2))


def test_uniform_slab_has_no_contrast():
    optics = OpticsConfig()
    slab = np.full((128, 128), 3.0)
    for dz in (0.0, 2.0, -5.0):
        img = render_brightfield(slab, optics, dz)
        assert np.ptp(img) < 1e-9
    pc = render_phase_contrast(slab, optics)
    assert np.ptp(pc) < 1e-9


def test_weak_phase_object_invisible_in_focus_and_visible_defocused():
    optics = OpticsConfig(absorption_per_um=0.0, condenser_na=0.0, objective_na=1.0)
    h = _bump()
    assert np.abs(render_brightfield(h, optics, 0.0) - 1).max() < 1e-6
    assert np.abs(render_brightfield(h, optics, 2.0) - 1).max() > 1e-4


@pytest.mark.parametrize("dz", [0.5, 1.0, 2.0])
def test_brightfield_follows_transport_of_intensity(dz):
    """I(Δz) − 1 ≈ −(Δz/k)·∇²φ for a weak, smooth phase object (relative error < 2 %)."""
    optics = OpticsConfig(absorption_per_um=0.0, condenser_na=0.0, objective_na=1.0)
    h = _bump()
    phi = phase_from_height(h, optics)
    tie = -(dz / optics.k_um) * laplacian_spectral(phi, optics.pixel_size_um)
    for sign in (+1, -1):
        sim = render_brightfield(h, optics, sign * dz) - 1
        rel = np.linalg.norm(sim - sign * tie) / np.linalg.norm(tie)
        assert rel < 0.02, rel


def test_brightfield_contrast_changes_sign_with_defocus():
    optics = OpticsConfig(absorption_per_um=0.0)
    h = _bump(height_um=0.5)
    c = h.shape[0] // 2
    above = render_brightfield(h, optics, +2.0)[c, c] - 1
    below = render_brightfield(h, optics, -2.0)[c, c] - 1
    # a positive phase bump acts as a weak converging lens: bright past focus, dark before
    assert above > 1e-3 and below < -1e-3
    assert np.isclose(above, -below, rtol=0.15)


def test_phase_contrast_shows_dark_cell_with_bright_halo():
    optics = OpticsConfig(absorption_per_um=0.0)
    n, px = 256, optics.pixel_size_um
    y, x = np.mgrid[:n, :n] * px
    r = np.hypot(x - n / 2 * px, y - n / 2 * px)
    radius = 12.0
    h = np.where(r < radius, 2.0 * np.sqrt(np.clip(1 - (r / radius) ** 2, 0, None)), 0.0)
    img = render_phase_contrast(h, optics)
    background = np.median(img[r > radius + 40])
    inside = img[r < radius * 0.6].mean()
    halo = img[(r > radius + 0.5) & (r < radius + 4)].mean()
    far = img[(r > radius + 25) & (r < radius + 35)].mean()
    assert abs(background - 1) < 0.05  # normalised background
    assert inside < background - 0.2  # positive phase contrast: the cell is dark
    assert halo > background + 0.1  # the halo is bright
    assert abs(far - background) < abs(halo - background) / 3  # and decays away from the cell


def test_camera_noise_matches_poisson_gaussian_model():
    cam = CameraConfig(photons_per_pixel=800, gain_adu_per_electron=2.0, read_noise_e=5.0, offset_adu=100)
    rng = np.random.default_rng(1)
    flat = np.full((400, 400), 0.7)
    raw = apply_camera(flat, cam, rng)
    img = raw.astype(float)
    n_e = 0.7 * 800
    expected_mean = 100 + 2.0 * n_e
    expected_var = 2.0**2 * (n_e + 5.0**2) + 1 / 12
    assert abs(img.mean() - expected_mean) < 0.5
    assert abs(img.var() / expected_var - 1) < 0.03
    assert raw.dtype == np.uint16


def test_camera_clips_to_bit_depth():
    cam = CameraConfig(photons_per_pixel=1e6, bit_depth=12)
    img = apply_camera(np.full((8, 8), 2.0), cam, np.random.default_rng(0))
    assert img.max() == 2**12 - 1


@pytest.mark.parametrize("field,value", [("objective_na", 1.2), ("pixel_size_um", 0.0), ("pixel_size_um", -1.0), ("wavelength_um", 0.0)])
def test_impossible_optics_are_rejected_naming_the_parameter(field, value):
    with pytest.raises(ConfigError, match=field):
        OpticsConfig.build(**{field: value})


def test_unknown_optics_key_is_rejected():
    with pytest.raises(ConfigError, match="unknown parameter"):
        OpticsConfig.build(numerical_aperture=0.5)
