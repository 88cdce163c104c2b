"""Augmentation draws what its settings say: all 8 dihedral views equally, angles, zooms and
shifts within their ranges (and actually spread over them), photometric changes of the
documented size, on the intensity channel only.

Each property is measured on one seeded batch of many copies of one crop, with tolerances
a few binomial standard deviations wide.
"""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch

from mechanoscope.learn.augment import augment_batch
from mechanoscope.learn.config import AugmentConfig

OFF = dict(rotate90_flip=False, intensity_scale=0.0, gamma=0.0, blur_sigma_px=0.0, noise_std=0.0)
N = 400


def _asymmetric(size=16):
    g = torch.arange(size * size, dtype=torch.float32).view(1, 1, size, size) / (size * size)
    return g


def _spot(size=48, y=14, x=30):
    """A Gaussian spot off the centre (intensity) and a disk mask around the centre."""
    yy, xx = torch.meshgrid(torch.arange(size, dtype=torch.float32), torch.arange(size, dtype=torch.float32), indexing="ij")
    spot = torch.exp(-((yy - y) ** 2 + (xx - x) ** 2) / (2 * 1.5**2))
    return spot.view(1, 1, size, size)


def _centroids(img):
    """(B, 2) intensity-weighted centroids (y, x) of channel 0, relative to the image centre."""
    v = img[:, 0].clamp_min(0)
    size = v.shape[-1]
    c = torch.arange(size, dtype=torch.float32) - (size - 1) / 2
    tot = v.sum((1, 2))
    return torch.stack([(v.sum(2) * c).sum(1) / tot, (v.sum(1) * c).sum(1) / tot], 1)


def test_all_eight_dihedral_views_are_drawn_equally_often():
    x = _asymmetric().repeat(N * 2, 1, 1, 1)
    y = augment_batch(x, AugmentConfig(**{**OFF, "rotate90_flip": True}), torch.Generator().manual_seed(0))
    views = [torch.rot90(v, k, dims=(1, 2)) for v in (x[0], torch.flip(x[0], dims=(2,))) for k in range(4)]
    which = [next(j for j, v in enumerate(views) if torch.equal(y[i], v)) for i in range(len(y))]
    counts = np.bincount(which, minlength=8)
    expected = len(y) / 8
    sd = math.sqrt(len(y) * (1 / 8) * (7 / 8))
    assert np.all(np.abs(counts - expected) < 4 * sd), counts


def test_rotation_angles_fill_the_configured_range_and_keep_the_radius():
    deg = 30.0
    x = _spot().repeat(N, 1, 1, 1)
    y = augment_batch(x, AugmentConfig(**{**OFF, "affine_degrees": deg}), torch.Generator().manual_seed(1))
    c0, c = _centroids(x)[0], _centroids(y)
    r0 = float(torch.linalg.norm(c0))
    assert torch.allclose(torch.linalg.norm(c, dim=1), torch.full((N,), r0), atol=0.6)  # no zoom, no shift
    ang = torch.rad2deg(torch.atan2(c[:, 0], c[:, 1]) - torch.atan2(c0[0], c0[1]))
    ang = (ang + 180) % 360 - 180
    assert float(ang.abs().max()) <= deg + 2
    assert float(ang.min()) < -0.7 * deg and float(ang.max()) > 0.7 * deg  # spread over ±30°, both senses
    assert abs(float(ang.mean())) < 3  # symmetric


def test_zoom_stays_within_the_configured_range_and_uses_it():
    s = 0.2
    x = _spot().repeat(N, 1, 1, 1)
    y = augment_batch(x, AugmentConfig(**{**OFF, "affine_scale": s}), torch.Generator().manual_seed(2))
    c0, c = _centroids(x)[0], _centroids(y)
    ratio = torch.linalg.norm(c, dim=1) / torch.linalg.norm(c0)
    assert float(ratio.min()) > 1 - s - 0.04 and float(ratio.max()) < 1 + s + 0.04
    assert float(ratio.min()) < 1 - 0.6 * s and float(ratio.max()) > 1 + 0.6 * s
    # direction kept: a zoom about the centre does not rotate
    cos = (c @ c0) / (torch.linalg.norm(c, dim=1) * torch.linalg.norm(c0))
    assert float(cos.min()) > 0.995


def test_shifts_stay_within_the_configured_fraction_of_the_crop():
    f, size = 0.1, 48
    x = _spot(size, 24, 24).repeat(N, 1, 1, 1)
    y = augment_batch(x, AugmentConfig(**{**OFF, "affine_translate_fraction": f}), torch.Generator().manual_seed(3))
    shift = _centroids(y) - _centroids(x)[0]
    assert float(shift.abs().max()) <= f * size + 0.6
    for axis in (0, 1):
        assert float(shift[:, axis].min()) < -0.6 * f * size and float(shift[:, axis].max()) > 0.6 * f * size
    # the two axes are shifted independently (not along one diagonal)
    assert abs(float(np.corrcoef(shift[:, 0].numpy(), shift[:, 1].numpy())[0, 1])) < 0.3


def test_contrast_scale_multiplies_each_crop_by_one_factor_in_range():
    s = 0.15
    x = (_asymmetric() + 0.1).repeat(N, 1, 1, 1)  # no zero: the ratio is defined everywhere
    y = augment_batch(x, AugmentConfig(**{**OFF, "intensity_scale": s}), torch.Generator().manual_seed(4))
    ratio = (y[:, 0] / x[:, 0]).flatten(1)
    per_crop = ratio[:, 0]
    assert torch.allclose(ratio, per_crop[:, None].expand_as(ratio), rtol=1e-4)
    assert float(per_crop.min()) >= 1 - s - 1e-6 and float(per_crop.max()) <= 1 + s + 1e-6
    assert float(per_crop.min()) < 1 - 0.8 * s and float(per_crop.max()) > 1 + 0.8 * s


def test_gamma_acts_on_the_magnitude_and_keeps_the_sign():
    g = 0.3
    x = torch.tensor([-0.5, -0.25, 0.25, 0.5]).view(1, 1, 2, 2).repeat(N, 1, 1, 1)
    y = augment_batch(x, AugmentConfig(**{**OFF, "gamma": g}), torch.Generator().manual_seed(5))
    assert torch.equal(torch.sign(y), torch.sign(x))
    expo = torch.log(y[:, 0, 1, 1]) / math.log(0.5)  # |v|**γ at v = 0.5
    assert torch.allclose(torch.log(y[:, 0].abs()) / torch.log(x[:, 0].abs()), expo.view(N, 1, 1).expand(N, 2, 2), rtol=1e-4)
    assert float(expo.min()) >= 1 - g - 1e-5 and float(expo.max()) <= 1 + g + 1e-5
    assert float(expo.min()) < 1 - 0.8 * g and float(expo.max()) > 1 + 0.8 * g


def test_blur_smooths_about_half_the_crops_and_keeps_their_mean():
    rng = np.random.default_rng(0)
    x = torch.from_numpy(rng.normal(0, 1, (1, 1, 24, 24)).astype(np.float32)).repeat(N, 1, 1, 1)
    y = augment_batch(x, AugmentConfig(**{**OFF, "blur_sigma_px": 1.0}), torch.Generator().manual_seed(6))
    changed = (y - x).flatten(1).abs().amax(1) > 1e-6
    frac = float(changed.float().mean())
    assert abs(frac - 0.5) < 4 * math.sqrt(0.25 / N)
    var_ratio = y[changed, 0].flatten(1).var(1) / x[0, 0].var()
    assert float(var_ratio.max()) < 0.6  # white noise blurred with σ ≥ 0.3 px loses variance
    inner = (slice(None), 0, slice(6, -6), slice(6, -6))
    assert abs(float(y[inner][changed].mean()) - float(x[inner][changed].mean())) < 0.05


def test_noise_amplitude_is_bounded_by_its_setting():
    amp = 0.05
    x = torch.zeros(N, 1, 32, 32)
    y = augment_batch(x, AugmentConfig(**{**OFF, "noise_std": amp}), torch.Generator().manual_seed(7))
    sd = y[:, 0].flatten(1).std(1)
    assert float(sd.max()) < amp * 1.15 and float(sd.max()) > 0.8 * amp and float(sd.min()) < 0.2 * amp


@pytest.mark.parametrize("setting", [{"intensity_scale": 0.3}, {"gamma": 0.3}, {"blur_sigma_px": 1.0}, {"noise_std": 0.1}])
def test_photometric_changes_spare_the_mask_channel(setting):
    x = torch.cat([_asymmetric() - 0.5, (_asymmetric() > 0.5).float()], 1).repeat(64, 1, 1, 1)
    y = augment_batch(x, AugmentConfig(**{**OFF, **setting}), torch.Generator().manual_seed(8))
    assert torch.equal(y[:, 1], x[:, 1]) and not torch.equal(y[:, 0], x[:, 0])
    z = augment_batch(x, AugmentConfig(**{**OFF, **setting}), torch.Generator().manual_seed(8), intensity_channel=None)
    assert torch.equal(z, x)
