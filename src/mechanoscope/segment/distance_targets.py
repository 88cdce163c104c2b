"""Instance representations of the segmentation network: targets, losses, activations, post-processing.

Three representations share the same U-Net body and differ in what it predicts per pixel:

``classes3``
    Softmax over background / interior / boundary (:mod:`mechanoscope.segment.instances`);
    markers = interior components.
``distance``
    StarDist-like: a foreground logit and each cell's Euclidean distance to its own outline,
    divided by that cell's largest distance (so 1 at every cell's centre whatever its size);
    markers = components of ``distance > interior_threshold`` inside the foreground,
    watershed on ``-distance``. The normalisation makes the marker level the same for
    small and large cells and keeps touching cells apart where the distance falls to 0
    along their contact line.
``hover``
    HoVer-Net (Graham et al. 2019): a foreground logit and the horizontal and vertical
    offsets of every cell pixel from its cell's centre of mass, scaled to [-1, 1] per
    cell; the offsets flip sign across every contact line, so their Sobel gradient marks
    the borders. Post-processing with MONAI's HoVer-Net blocks
    (``GenerateInstanceBorder``, ``GenerateDistanceMap``, ``GenerateWatershedMarkers``)
    and a marker-controlled watershed; ``interior_threshold`` is the marker level of
    ``1 - border``.

Channel layouts (network output order): ``classes3``: 3 class logits; ``distance``:
(foreground logit, distance logit); ``hover``: (foreground logit, h, v) with h/v in
the network's raw output (trained against targets in [-1, 1]).

Training targets are ``(C, Y, X)`` float32 arrays: ``classes3`` one channel of class
ids, ``distance`` (foreground, distance), ``hover`` (foreground, h, v).
"""

from __future__ import annotations

from typing import Any

import numpy as np

from mechanoscope.errors import ConfigError

__all__ = [
    "REPRESENTATIONS",
    "n_outputs",
    "distance_targets",
    "hover_targets",
    "representation_targets",
    "activate",
    "maps_to_labels",
    "representation_loss",
    "dihedral_target",
    "threshold_grid",
]

REPRESENTATIONS: tuple[str, ...] = ("classes3", "distance", "hover")

_N_OUT = {"classes3": 3, "distance": 2, "hover": 3}


def _check(rep: str) -> str:
    if rep not in _N_OUT:
        raise ConfigError(f"unknown instance representation {rep!r}; choose one of {list(REPRESENTATIONS)}")
    return rep


def n_outputs(rep: str) -> int:
    """Number of network output channels of representation ``rep``."""
    return _N_OUT[_check(rep)]


# --------------------------------------------------------------------------- targets
def _cell_slices(labels: np.ndarray):
    from scipy import ndimage as ndi

    for i, sl in enumerate(ndi.find_objects(labels), start=1):
        if sl is None:
            continue
        # one pixel of margin so a cell's outline counts as its edge
        y0, y1 = max(sl[0].start - 1, 0), min(sl[0].stop + 1, labels.shape[0])
        x0, x1 = max(sl[1].start - 1, 0), min(sl[1].stop + 1, labels.shape[1])
        yield i, (slice(y0, y1), slice(x0, x1))


def distance_targets(labels: np.ndarray) -> np.ndarray:
    """Foreground and per-cell normalised distance to the cell's own outline.

    Parameters
    ----------
    labels
        ``(Y, X)`` integer label image, 0 = background.

    Returns
    -------
    np.ndarray
        ``(2, Y, X)`` float32: foreground (0/1) and distance in [0, 1] (1 at each
        cell's innermost pixel, ~1/max at its outline, 0 outside cells). Pixels on the
        image border count as inside (a cell cut by the border keeps its distances).
    """
    from scipy import ndimage as ndi

    labels = np.asarray(labels)
    out = np.zeros((2, *labels.shape), np.float32)
    out[0] = labels > 0
    for i, sl in _cell_slices(labels):
        m = labels[sl] == i
        d = ndi.distance_transform_edt(m)
        mx = float(d.max())
        if mx > 0:
            out[1][sl][m] = (d[m] / mx).astype(np.float32)
    return out


def hover_targets(labels: np.ndarray) -> np.ndarray:
    """Foreground and HoVer-Net horizontal/vertical offsets to each cell's centre of mass.

    Returns
    -------
    np.ndarray
        ``(3, Y, X)`` float32: foreground (0/1), h (x offset) and v (y offset), each
        scaled to [-1, 1] per cell and side (negative and positive offsets by their own
        largest magnitude, as in HoVer-Net), 0 outside cells.
    """
    labels = np.asarray(labels)
    out = np.zeros((3, *labels.shape), np.float32)
    out[0] = labels > 0
    for i, sl in _cell_slices(labels):
        m = labels[sl] == i
        yy, xx = np.nonzero(m)
        for ch, coord in ((1, xx), (2, yy)):
            off = coord - coord.mean()
            neg, pos = -off[off < 0].min(initial=0.0), off[off > 0].max(initial=0.0)
            val = np.where(off < 0, off / max(neg, 1e-6), off / max(pos, 1e-6))
            out[ch][sl][yy, xx] = val.astype(np.float32)
    return out


def representation_targets(labels: np.ndarray, rep: str, boundary_width_px: int = 2) -> np.ndarray:
    """Training target of ``labels`` for representation ``rep`` as ``(C, Y, X)`` float32."""
    from mechanoscope.segment.network_prep import segmentation_targets

    rep = _check(rep)
    if rep == "classes3":
        return segmentation_targets(labels, boundary_width_px)[None].astype(np.float32)
    if rep == "distance":
        return distance_targets(labels)
    return hover_targets(labels)


def dihedral_target(target: np.ndarray, rep: str, transpose: bool, flip_y: bool, flip_x: bool) -> np.ndarray:
    """Apply (transpose, then flips) to a ``(C, Y, X)`` target, fixing direction channels.

    Only ``hover`` has channels that change: a transpose swaps h and v, a flip of x
    negates h, a flip of y negates v.
    """
    t = target
    if transpose:
        t = t.transpose(0, 2, 1)
        if rep == "hover":
            t = t[[0, 2, 1]]
    if flip_y:
        t = t[:, ::-1, :]
    if flip_x:
        t = t[:, :, ::-1]
    if rep == "hover" and (flip_x or flip_y):
        t = t.copy()
        if flip_x:
            t[1] *= -1
        if flip_y:
            t[2] *= -1
    return np.ascontiguousarray(t)


# --------------------------------------------------------------------------- outputs
def _sigmoid(x: np.ndarray) -> np.ndarray:
    return (0.5 * (1.0 + np.tanh(0.5 * x))).astype(np.float32)


def activate(logits: np.ndarray, rep: str) -> np.ndarray:
    """Network output ``(C, Y, X)`` → maps: class probabilities, or p(fg) and distance/offsets."""
    from mechanoscope.segment.instances import _softmax

    rep = _check(rep)
    logits = np.asarray(logits, dtype=np.float32)
    if rep == "classes3":
        return _softmax(logits.copy())
    out = logits.copy()
    out[0] = _sigmoid(logits[0])
    if rep == "distance":
        out[1] = _sigmoid(logits[1])
    else:
        out[1:] = np.clip(logits[1:], -1.0, 1.0)
    return out


def _finish(labels: np.ndarray, fg: np.ndarray, min_px: float) -> np.ndarray:
    from scipy import ndimage as ndi
    from skimage.segmentation import relabel_sequential

    rest, n_rest = ndi.label(fg & (labels == 0))
    if n_rest:
        labels = np.where(rest > 0, rest + int(labels.max()), labels)
    if labels.max() > 0:
        sizes = np.bincount(labels.ravel())
        small = sizes < min_px
        small[0] = False
        labels[small[labels]] = 0
    labels, _, _ = relabel_sequential(labels)
    return labels.astype(np.int32)


def _markers(seed: np.ndarray, min_px: float) -> np.ndarray:
    from scipy import ndimage as ndi

    markers, n = ndi.label(seed)
    if n:
        sizes = np.bincount(markers.ravel(), minlength=n + 1)
        small = sizes < max(1.0, 0.25 * min_px)
        small[0] = False
        markers[small[markers]] = 0
    return markers


def _hover_border(fg: np.ndarray, hv: np.ndarray) -> np.ndarray:
    import torch
    from monai.apps.pathology.transforms.post.array import GenerateInstanceBorder

    border = GenerateInstanceBorder(kernel_size=5)(torch.from_numpy(fg[None].astype(np.float32)), torch.from_numpy(np.ascontiguousarray(hv)))
    return np.asarray(border)[0].astype(np.float32)


def maps_to_labels(
    maps: np.ndarray,
    rep: str,
    *,
    pixel_size_um: float,
    foreground_threshold: float = 0.5,
    interior_threshold: float = 0.5,
    min_cell_area_um2: float = 20.0,
) -> np.ndarray:
    """Instance labels from the activated maps of :func:`activate`.

    Parameters
    ----------
    maps
        ``(C, Y, X)`` maps of representation ``rep``.
    pixel_size_um
        Pixel size of ``maps`` (µm), for the minimum area.
    foreground_threshold
        Cell pixels: p(foreground) (``classes3``: p(interior) + p(boundary)) above it.
    interior_threshold
        Marker level: p(interior) (``classes3``), normalised distance (``distance``) or
        ``1 - border`` (``hover``) above it; each connected component seeds one cell.
    min_cell_area_um2
        Cells below this area are removed (markers below a quarter of it too).

    Returns
    -------
    np.ndarray
        ``(Y, X)`` int32 labels, 0 = background, ``1..N`` cells.
    """
    from skimage.segmentation import watershed

    rep = _check(rep)
    maps = np.asarray(maps, dtype=np.float32)
    if maps.ndim != 3 or maps.shape[0] != n_outputs(rep):
        raise ConfigError(f"{rep} maps must have shape ({n_outputs(rep)}, Y, X), got {maps.shape}")
    if rep == "classes3":
        from mechanoscope.segment.instances import probabilities_to_labels

        return probabilities_to_labels(maps, pixel_size_um=pixel_size_um, foreground_threshold=foreground_threshold,
                                       interior_threshold=interior_threshold, min_cell_area_um2=min_cell_area_um2)
    min_px = float(min_cell_area_um2) / float(pixel_size_um) ** 2
    fg = maps[0] > foreground_threshold
    if rep == "distance":
        dist = maps[1]
        markers = _markers((dist > interior_threshold) & fg, min_px)
        labels = watershed(-dist, markers, mask=fg)
    else:
        from scipy import ndimage as ndi

        try:
            energy = 1.0 - _hover_border(fg, maps[1:]) if fg.any() else np.zeros(fg.shape, np.float32)
        except ValueError:  # constant offsets (MONAI refuses them): one cell per foreground part
            energy = fg.astype(np.float32)
        energy = np.where(fg, energy, 0.0).astype(np.float32)
        seed = ndi.binary_opening((energy > interior_threshold) & fg, iterations=1)
        markers = _markers(seed, min_px)
        labels = watershed(-ndi.gaussian_filter(energy, 1.0), markers, mask=fg)
    return _finish(labels.astype(np.int32), fg, min_px)


def threshold_grid(rep: str) -> dict[str, tuple[float, ...]]:
    """Candidates of the validation threshold search of representation ``rep``."""
    if _check(rep) == "classes3":
        return {"interior_threshold": (0.3, 0.5, 0.7, 0.85, 0.92), "foreground_threshold": (0.4, 0.5, 0.6)}
    if rep == "distance":
        return {"interior_threshold": (0.25, 0.35, 0.45, 0.55, 0.65), "foreground_threshold": (0.4, 0.5, 0.6)}
    return {"interior_threshold": (0.3, 0.4, 0.5, 0.6, 0.7), "foreground_threshold": (0.4, 0.5, 0.6)}


# --------------------------------------------------------------------------- losses
def representation_loss(rep: str) -> Any:
    """``loss(logits, target)`` of representation ``rep`` (torch tensors ``(B, C, H, W)``).

    ``classes3``: MONAI Dice + cross-entropy. ``distance``: Dice + BCE on the foreground
    plus 2 × BCE of the distance (a regression to [0, 1] targets through a sigmoid).
    ``hover``: Dice + BCE on the foreground plus the HoVer-Net terms: MSE of h/v
    and MSE of their Sobel gradients inside cells.
    """
    import torch
    import torch.nn.functional as F
    from monai.losses import DiceCELoss, DiceLoss

    rep = _check(rep)
    if rep == "classes3":
        dce = DiceCELoss(to_onehot_y=True, softmax=True, batch=True)
        return lambda logits, target: dce(logits, target.long())
    dice = DiceLoss(sigmoid=True, batch=True)

    def fg_loss(logits: Any, target: Any) -> Any:
        return dice(logits[:, :1], target[:, :1]) + F.binary_cross_entropy_with_logits(logits[:, :1], target[:, :1])

    if rep == "distance":
        def dist_loss(logits: Any, target: Any) -> Any:
            return fg_loss(logits, target) + 2.0 * F.binary_cross_entropy_with_logits(logits[:, 1:2], target[:, 1:2])

        return dist_loss
    kx = torch.tensor([[-1.0, 0.0, 1.0], [-2.0, 0.0, 2.0], [-1.0, 0.0, 1.0]]) / 4.0

    def grads(t: Any) -> tuple[Any, Any]:
        k = kx.to(t.device, t.dtype)
        gx = F.conv2d(F.pad(t[:, :1], (1, 1, 1, 1), mode="replicate"), k[None, None])
        gy = F.conv2d(F.pad(t[:, 1:2], (1, 1, 1, 1), mode="replicate"), k.T.contiguous()[None, None])
        return gx, gy

    def hover_loss(logits: Any, target: Any) -> Any:
        pred, tgt, fg = logits[:, 1:], target[:, 1:], target[:, :1]
        mse = F.mse_loss(pred, tgt)
        pgx, pgy = grads(pred)
        tgx, tgy = grads(tgt)
        msge = (((pgx - tgx) ** 2 + (pgy - tgy) ** 2) * fg).sum() / (2.0 * fg.sum() + 1e-6)
        return fg_loss(logits, target) + mse + msge

    return hover_loss
