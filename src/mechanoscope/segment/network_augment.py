"""Training patches of the segmentation network: random crops with scale, dihedral, gamma, intensity, blur and noise augmentation.

Every patch is cut from a prepared image (normalised, on the model's grid) and its
``(C, Y, X)`` target of the model's representation
(:func:`mechanoscope.segment.distance_targets.representation_targets`). Scale
augmentation crops ``patch * s`` pixels and resizes them to ``patch`` (image: linear;
class ids and foreground: nearest; distances and offsets: linear, which is right
because they are normalised per cell and so do not change with scale), so a model
trained at one pixel size tolerates images whose true pixel size is off by the factor
``s``. The dihedral views fix the direction channels of the ``hover`` representation.
"""

from __future__ import annotations

from typing import Any

import numpy as np

from mechanoscope.segment.distance_targets import dihedral_target

__all__ = ["augment_patch", "sample_batch", "validation_patches"]


def _resize(a: np.ndarray, size: int, order: int) -> np.ndarray:
    from skimage.transform import resize

    if a.shape[-1] == size and a.shape[-2] == size:
        return a
    return resize(a, (size, size), order=order, mode="reflect", anti_aliasing=False, preserve_range=True).astype(np.float32)


def _resize_target(t: np.ndarray, size: int, rep: str) -> np.ndarray:
    if t.shape[-1] == size and t.shape[-2] == size:
        return t
    out = np.empty((t.shape[0], size, size), np.float32)
    for c in range(t.shape[0]):
        discrete = rep == "classes3" or c == 0
        out[c] = _resize(t[c], size, 0 if discrete else 1)
    return out


def augment_patch(img: np.ndarray, tgt: np.ndarray, rng: np.random.Generator, cfg: Any) -> tuple[np.ndarray, np.ndarray]:
    """One dihedral view, gamma, intensity factor, blur and noise of a patch and its target."""
    from scipy import ndimage as ndi

    rep = cfg.representation
    tr, fy, fx = (bool(b) for b in rng.integers(0, 2, 3))
    if tr:
        img = img.T
    if fy:
        img = img[::-1, :]
    if fx:
        img = img[:, ::-1]
    tgt = dihedral_target(tgt, rep, tr, fy, fx)
    lo, hi = float(img.min()), float(img.max())
    g_lo, g_hi = cfg.gamma_range
    gamma = float(np.exp(rng.uniform(np.log(g_lo), np.log(g_hi))))
    if hi > lo and gamma != 1.0:
        img = ((img - lo) / (hi - lo)) ** gamma * (hi - lo) + lo
    s_lo, s_hi = cfg.intensity_scale_range
    img = img * float(np.exp(rng.uniform(np.log(s_lo), np.log(s_hi))))
    if cfg.blur_sigma_max_px > 0 and rng.random() < 0.5:
        img = ndi.gaussian_filter(np.asarray(img, np.float32), float(rng.uniform(0.0, cfg.blur_sigma_max_px)))
    if cfg.noise_std > 0:
        img = img + rng.normal(0.0, rng.uniform(0.0, cfg.noise_std), img.shape)
    return np.ascontiguousarray(img, dtype=np.float32), np.ascontiguousarray(tgt, dtype=np.float32)


def sample_batch(data: list[Any], n: int, rng: np.random.Generator, cfg: Any) -> tuple[np.ndarray, np.ndarray]:
    """``n`` random augmented patches: ``(n, 1, P, P)`` images and ``(n, C, P, P)`` targets.

    ``data`` items have ``image`` ``(Y, X)`` and ``target`` ``(C, Y, X)`` (both at least
    ``patch_size_px`` on a side); images are drawn with probability proportional to
    their size times ``weight`` (attribute, default 1).
    """
    p = cfg.patch_size_px
    weights = np.array([d.image.size * float(getattr(d, "weight", 1.0)) for d in data], dtype=float)
    weights /= weights.sum()
    s_lo, s_hi = cfg.scale_range
    imgs, tgts = [], []
    for _ in range(n):
        d = data[int(rng.choice(len(data), p=weights))]
        s = float(np.exp(rng.uniform(np.log(s_lo), np.log(s_hi)))) if s_hi > s_lo else 1.0
        c = int(min(round(p * s), d.image.shape[0], d.image.shape[1]))
        y0 = int(rng.integers(d.image.shape[0] - c + 1))
        x0 = int(rng.integers(d.image.shape[1] - c + 1))
        img = _resize(d.image[y0 : y0 + c, x0 : x0 + c], p, 1)
        tgt = _resize_target(d.target[:, y0 : y0 + c, x0 : x0 + c], p, cfg.representation)
        if cfg.augment:
            img, tgt = augment_patch(img, tgt, rng, cfg)
        imgs.append(img)
        tgts.append(tgt)
    return np.stack(imgs)[:, None].astype(np.float32), np.stack(tgts).astype(np.float32)


def validation_patches(data: list[Any], cfg: Any, rng: np.random.Generator) -> tuple[np.ndarray, np.ndarray] | None:
    """Fixed non-overlapping validation patches (at most ``max_validation_patches``)."""
    if not data:
        return None
    p = cfg.patch_size_px
    imgs, tgts = [], []
    for d in data:
        h, w = d.image.shape
        for y0 in range(0, max(h - p, 0) + 1, p):
            for x0 in range(0, max(w - p, 0) + 1, p):
                imgs.append(d.image[y0 : y0 + p, x0 : x0 + p])
                tgts.append(d.target[:, y0 : y0 + p, x0 : x0 + p])
    if len(imgs) > cfg.max_validation_patches:
        keep = np.sort(rng.choice(len(imgs), cfg.max_validation_patches, replace=False))
        imgs = [imgs[i] for i in keep]
        tgts = [tgts[i] for i in keep]
    return np.stack(imgs)[:, None].astype(np.float32), np.stack(tgts).astype(np.float32)
