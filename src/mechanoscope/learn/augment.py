"""On-the-fly augmentation of normalised crops ``(B, C, H, W)`` (torch, batched).

Channel 0 is the intensity (relative contrast, background 0); other channels are
masks. Geometric transforms act on all channels; photometric ones on channel 0 only.
"""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F

from mechanoscope.learn.config import AugmentConfig

__all__ = ["augment_batch"]


def _uniform(gen: torch.Generator, n: int, lo: float, hi: float) -> torch.Tensor:
    return lo + (hi - lo) * torch.rand(n, generator=gen)


def augment_batch(x: torch.Tensor, cfg: AugmentConfig, gen: torch.Generator, intensity_channel: int | None = 0) -> torch.Tensor:
    """Return an augmented copy of ``x``; randomness only from ``gen`` (reproducible).

    ``cfg`` must have its task defaults filled in (:meth:`AugmentConfig.for_task`).
    """
    unresolved = [k for k in ("intensity_scale", "gamma", "blur_sigma_px") if getattr(cfg, k) is None]
    if unresolved:
        raise ValueError(f"augmentation settings {unresolved} are None (task default); resolve them with AugmentConfig.for_task(task) first")
    x = x.clone()
    b = x.shape[0]
    if cfg.rotate90_flip:
        k = torch.randint(0, 4, (b,), generator=gen)
        for r in range(1, 4):
            sel = k == r
            if sel.any():
                x[sel] = torch.rot90(x[sel], r, dims=(2, 3))
        flip = torch.rand(b, generator=gen) < 0.5
        if flip.any():
            x[flip] = torch.flip(x[flip], dims=(3,))
    if cfg.affine_degrees > 0 or cfg.affine_scale > 0 or cfg.affine_translate_fraction > 0:
        ang = _uniform(gen, b, -cfg.affine_degrees, cfg.affine_degrees) * math.pi / 180
        scale = 1 + _uniform(gen, b, -cfg.affine_scale, cfg.affine_scale)
        t = _uniform(gen, 2 * b, -2 * cfg.affine_translate_fraction, 2 * cfg.affine_translate_fraction).view(b, 2)
        cos, sin = torch.cos(ang) / scale, torch.sin(ang) / scale
        theta = torch.stack([torch.stack([cos, -sin, t[:, 0]], 1), torch.stack([sin, cos, t[:, 1]], 1)], 1)
        grid = F.affine_grid(theta, list(x.shape), align_corners=False)
        x = F.grid_sample(x, grid, mode="bilinear", padding_mode="zeros", align_corners=False)
        if x.shape[1] > 1:  # keep masks binary
            ch = [c for c in range(x.shape[1]) if c != intensity_channel]
            x[:, ch] = (x[:, ch] > 0.5).to(x.dtype)
    if intensity_channel is None:
        return x
    i = intensity_channel
    if cfg.gamma > 0:
        g = (1 + _uniform(gen, b, -cfg.gamma, cfg.gamma)).view(b, 1, 1)
        v = x[:, i]
        x[:, i] = torch.sign(v) * torch.abs(v).clamp_min(1e-6) ** g
    if cfg.intensity_scale > 0:
        x[:, i] *= (1 + _uniform(gen, b, -cfg.intensity_scale, cfg.intensity_scale)).view(b, 1, 1)
    if cfg.blur_sigma_px > 0:
        sigma = float(_uniform(gen, 1, 0.3, cfg.blur_sigma_px)) if cfg.blur_sigma_px > 0.3 else cfg.blur_sigma_px
        r = max(1, int(math.ceil(2.5 * sigma)))
        coords = torch.arange(-r, r + 1, dtype=x.dtype)
        k1 = torch.exp(-(coords**2) / (2 * sigma**2))
        k1 = k1 / k1.sum()
        sel = torch.rand(b, generator=gen) < 0.5
        if sel.any():
            v = x[sel, i : i + 1]
            v = F.conv2d(F.pad(v, (r, r, 0, 0), mode="replicate"), k1.view(1, 1, 1, -1))
            v = F.conv2d(F.pad(v, (0, 0, r, r), mode="replicate"), k1.view(1, 1, -1, 1))
            x[sel, i : i + 1] = v
    if cfg.noise_std > 0:
        amp = _uniform(gen, b, 0, cfg.noise_std).view(b, 1, 1)
        x[:, i] += amp * torch.randn(x[:, i].shape, generator=gen)
    return x
