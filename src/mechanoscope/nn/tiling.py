"""Tiled inference of a fully convolutional network over a whole image with seamless linear blending; memory bounded by the tile size."""

from __future__ import annotations

import math
from collections.abc import Callable
from typing import Any

import numpy as np

from mechanoscope.errors import (
    ConfigError,
    MechanoscopeError,
)
from mechanoscope.nn.inference import forward_tta
from mechanoscope.nn.precision import inference_autocast

__all__ = ["tiling_plan", "predict_logits_tiled"]


# --------------------------------------------------------------------------- tiling
def _round_up(n: int, k: int) -> int:
    return int(math.ceil(n / k) * k) if k > 1 else int(n)


def _axis_grid(length: int, tile: int, step: int, margin: int, stride: int) -> tuple[int, int, int]:
    """Number of tiles, padded length and tile length along one axis."""
    need = length + 2 * margin
    if need <= tile:
        padded = _round_up(need, stride)
        return 1, padded, padded
    n = int(math.ceil((need - tile) / step)) + 1
    return n, tile + (n - 1) * step, tile


def _axis_weights(n_len: int, first: bool, last: bool, margin: int, ramp: int) -> np.ndarray:
    """Blend weights along one axis of one tile: 0 in the context margin, a linear
    ramp over ``ramp`` px, then 1; only at tile edges inside the image."""
    w = np.ones(n_len, dtype=np.float32)
    up = (np.arange(ramp, dtype=np.float32) + 0.5) / max(ramp, 1)
    if not first:
        w[:margin] = 0.0
        w[margin : margin + ramp] = np.minimum(w[margin : margin + ramp], up)
    if not last:
        w[n_len - margin :] = 0.0
        seg = w[n_len - margin - ramp : n_len - margin]
        w[n_len - margin - ramp : n_len - margin] = np.minimum(seg, up[::-1][: len(seg)])
    return w


def tiling_plan(
    rf_radius_px: int, stride: int, tile_size_px: int, tile_overlap_px: int | None
) -> tuple[int, int, int, int]:
    """Tile size, overlap, context margin and ramp length actually used (all px)."""
    tile = _round_up(max(tile_size_px, stride), stride)
    if tile_overlap_px is None:
        overlap = _round_up(2 * rf_radius_px + 16, stride)
    else:
        overlap = _round_up(tile_overlap_px, stride)
    if overlap >= tile:
        what = (
            f"the automatic tile overlap ({overlap} px: twice the network's receptive-field "
            f"radius of {rf_radius_px} px plus 16 px)"
            if tile_overlap_px is None
            else f"the tile overlap ({overlap} px)"
        )
        raise ConfigError(
            f"tile size {tile} px must be larger than {what}; use tile_size_px >= "
            f"{2 * overlap} (CLI: --tile-size-px) or a smaller overlap (--tile-overlap-px)"
        )
    margin = rf_radius_px if overlap - 2 * rf_radius_px >= 2 else overlap // 4
    ramp = overlap - 2 * margin
    return tile, overlap, margin, ramp


def predict_logits_tiled(
    net: Any,
    image: np.ndarray,
    *,
    tile_size_px: int,
    tile_overlap_px: int | None,
    rf_radius_px: int,
    stride: int,
    device: Any = None,
    tile_batch: int = 2,
    progress: Callable[[int, int], None] | None = None,
    tta: bool | str = False,
    precision: str = "fp32",
) -> np.ndarray:
    """Network output of a whole normalised image, computed in overlapping tiles.

    The image is reflect-padded by the margin on every side and cut into tiles whose
    origins are multiples of the network's stride (so every tile sees the same
    pixel grid as whole-image inference). At tile edges inside the image the outer
    ``margin`` px get weight 0 (context only) and the next ``ramp`` px a linear
    ramp; the ramps of neighbouring tiles sum to one, so the blend has no seams. When
    ``margin >= rf_radius_px`` (true for the automatic overlap) the result equals
    whole-image inference up to floating-point rounding. Memory on the device is
    bounded by ``tile_batch`` tiles.

    Parameters
    ----------
    net
        Network in eval mode mapping ``(B, 1, H, W)`` to ``(B, C, H, W)``.
    image
        ``(Y, X)`` float32 normalised image at the model's pixel size.
    tile_size_px, tile_overlap_px
        See :class:`SegmentationInferenceConfig`.
    rf_radius_px, stride
        Receptive-field radius and total stride of ``net``.
    device
        Torch device; default: that of the network's parameters.
    tile_batch
        Tiles per forward pass.
    progress
        Called as ``progress(done, total)`` after every batch of tiles.
    tta
        Average every tile's output over views of it: ``"dihedral"`` (or ``True``) its 8
        rotations and mirrors (8× the cost), ``"mirror"`` it and its mirror (2×);
        ``False`` / ``"none"`` one pass (:func:`mechanoscope.nn.inference.forward_tta`).
    precision
        ``"fp32"`` or ``"bf16"`` autocast (:func:`mechanoscope.nn.precision.inference_autocast`);
        the output is float32 either way.

    Returns
    -------
    np.ndarray
        ``(C, Y, X)`` float32 blended network output (logits).
    """
    import torch

    if device is None:
        device = next(net.parameters()).device
    tile, _overlap, margin, ramp = tiling_plan(rf_radius_px, stride, tile_size_px, tile_overlap_px)
    step = tile - _overlap
    h, w = image.shape
    ny, hp, th = _axis_grid(h, tile, step, margin, stride)
    nx, wp, tw = _axis_grid(w, tile, step, margin, stride)
    padded = np.pad(
        image.astype(np.float32, copy=False),
        ((margin, hp - h - margin), (margin, wp - w - margin)),
        mode="reflect" if min(h, w) > 1 else "edge",
    )
    out: np.ndarray | None = None
    weight = np.zeros((hp, wp), dtype=np.float32)
    starts = [(iy * step, ix * step, iy, ix) for iy in range(ny) for ix in range(nx)]
    total = len(starts)
    done = 0
    with torch.inference_mode():
        for b in range(0, total, tile_batch):
            chunk = starts[b : b + tile_batch]
            batch = np.stack([padded[y0 : y0 + th, x0 : x0 + tw] for y0, x0, _, _ in chunk])
            x = torch.from_numpy(batch[:, None]).to(device)
            with inference_autocast(device, precision):
                y = forward_tta(net, x, tta, dense=True)
            y = y.float().cpu().numpy()
            if out is None:
                out = np.zeros((y.shape[1], hp, wp), dtype=np.float32)
            for k, (y0, x0, iy, ix) in enumerate(chunk):
                wy = _axis_weights(th, iy == 0, iy == ny - 1, margin, ramp)
                wx = _axis_weights(tw, ix == 0, ix == nx - 1, margin, ramp)
                wt = wy[:, None] * wx[None, :]
                out[:, y0 : y0 + th, x0 : x0 + tw] += y[k] * wt
                weight[y0 : y0 + th, x0 : x0 + tw] += wt
            done += len(chunk)
            if progress is not None:
                progress(done, total)
    assert out is not None
    sl = (slice(margin, margin + h), slice(margin, margin + w))
    wsum = weight[sl]
    if np.any(wsum <= 0):  # pragma: no cover - guaranteed by the tiling plan
        raise MechanoscopeError("internal error: tiling left pixels without weight")
    return out[(slice(None), *sl)] / wsum[None]


