"""Learned cell segmentation: a small U-Net predicting background / interior / boundary.

Why three classes
-----------------
The network predicts, per pixel, the probability of three classes: *background*,
*cell interior* and *cell boundary* (the outer ``boundary_width_px`` pixels of every
cell, including both sides of every contact line between touching cells). Where two
cells touch, the boundary class forms an explicit line that separates their
interiors, so every connected component of the thresholded interior map is one cell
and serves directly as a watershed marker. The alternative, foreground + distance map
(distance maxima as markers), needs an extra ``h``/min-distance parameter to decide
whether a saddle between two maxima means two cells, over-splits elongated or
irregular cells (spread fibroblasts, migrating cells) and under-splits cells that touch
along a long edge, where the distance map has no saddle; the boundary class is
learned from exactly those contact lines. A three-class softmax is also trained with
one well-behaved loss (Dice + cross-entropy) and blends linearly across tiles.

Pipeline
--------
1. Resample the image to the model's pixel size (``pixel_size_um`` in the model's
   config), so a model trained at 0.65 µm/px applies to images at 1.3 µm/px.
2. Normalise per image between two intensity percentiles (recorded in the model
   folder's ``normalization.json``).
3. Tiled inference (:func:`predict_logits_tiled`): overlapping tiles, linear blending,
   memory bounded by the tile size; the stitched map equals whole-image inference.
4. Instance extraction (:func:`probabilities_to_labels`): markers = connected
   components of ``p(interior) > interior_threshold``; marker-controlled watershed on
   ``1 - p(interior)`` inside the foreground ``p(interior) + p(boundary) >
   foreground_threshold``; foreground parts without a marker become their own cell;
   cells smaller than ``min_cell_area_um2`` are removed.
5. Back to the input's pixel grid: labels have the input image's shape.

The network is MONAI's :class:`~monai.networks.nets.UNet` with strides ``(1, 2, 2,
...)`` (the first level works at full resolution, which keeps thin boundaries
sharp) and *batch* normalisation: instance or group normalisation would make each
tile's output depend on the tile's statistics and cause seams.
"""

from __future__ import annotations

import copy
import csv
import io
import math
import os
import time
import warnings
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal

import numpy as np
from pydantic import BaseModel, ConfigDict, Field, ValidationError, field_validator

from mechanoscope.errors import (
    AxesError,
    ConfigError,
    MechanoscopeError,
    MechanoscopeWarning,
)
from mechanoscope.io.images import Image, check_image_values

__all__ = [
    "CLASSES",
    "SegmentationInferenceConfig",
    "SegmentationTrainConfig",
    "SegmentationModel",
    "TrainProgress",
    "train_segmentation",
    "load_segmentation_model",
    "segment_network",
    "predict_probabilities",
    "predict_logits_tiled",
    "tiling_plan",
    "probabilities_to_labels",
    "segmentation_targets",
    "resample_image",
    "resample_labels",
    "normalize_percentile",
    "build_unet",
    "receptive_field_radius_px",
]

#: Classes predicted per pixel, in channel order.
CLASSES: tuple[str, ...] = ("background", "interior", "boundary")
TASK = "instance_segmentation"
ARCHITECTURE = "monai.networks.nets.UNet"

#: ``progress(epoch, epochs, record)`` after every epoch; ``record`` is the CSV log row.
TrainProgress = Callable[[int, int, dict[str, Any]], None]


# --------------------------------------------------------------------------- configs
class SegmentationInferenceConfig(BaseModel):
    """How a segmentation model is applied: tiling and instance extraction."""

    model_config = ConfigDict(extra="forbid")

    tile_size_px: int = Field(
        512, ge=16,
        description=(
            "Edge length of the square tiles the image is processed in, in pixels at the "
            "model's pixel size. Bounds memory use; rounded up to a multiple of the "
            "network's total stride."
        ),
    )
    tile_overlap_px: int | None = Field(
        None, ge=0,
        description=(
            "Overlap of neighbouring tiles in pixels at the model's pixel size. None = "
            "automatic: twice the network's receptive-field radius plus 16 px, which "
            "makes tiled inference equal to whole-image inference. At tile edges inside "
            "the image up to one receptive-field radius (at most a quarter of the "
            "overlap) is context only; the rest of the overlap is blended linearly."
        ),
    )
    tile_batch: int = Field(2, ge=1, description="Tiles passed through the network at once.")
    foreground_threshold: float = Field(
        0.5, gt=0, lt=1,
        description="A pixel is cell (interior or boundary) if p(interior) + p(boundary) exceeds this.",
    )
    interior_threshold: float = Field(
        0.5, gt=0, lt=1,
        description="Pixels with p(interior) above this form the watershed markers (one per cell).",
    )
    min_cell_area_um2: float = Field(
        20.0, ge=0, description="Cells smaller than this area (µm²) are removed."
    )
    device: Literal["auto", "cpu", "cuda"] = Field(
        "auto", description="Where the network runs; 'auto' = CUDA if available, else CPU."
    )


class SegmentationTrainConfig(BaseModel):
    """Training parameters of the learned segmentation network.

    Lengths in pixels refer to the model's pixel size (``pixel_size_um``): training
    images are resampled to it first.
    """

    model_config = ConfigDict(extra="forbid")

    epochs: int = Field(100, ge=1, description="Maximum number of epochs.")
    batch_size: int = Field(8, ge=1, description="Patches per optimisation step.")
    patch_size_px: int = Field(
        128, ge=16,
        description=(
            "Edge length of the random square training patches, in pixels at the model's "
            "pixel size; a multiple of the network's total stride."
        ),
    )
    patches_per_epoch: int = Field(
        256, ge=1, description="Random training patches drawn per epoch."
    )
    learning_rate: float = Field(1e-3, gt=0, description="AdamW learning rate.")
    weight_decay: float = Field(1e-4, ge=0, description="AdamW weight decay.")
    validation_fraction: float = Field(
        0.2, ge=0, lt=1,
        description=(
            "Fraction of the *images* held out for validation (at least one image when "
            "> 0 and there are two or more images)."
        ),
    )
    early_stopping_patience: int = Field(
        15, ge=1,
        description="Stop after this many epochs without a lower validation loss.",
    )
    max_validation_patches: int = Field(
        64, ge=1, description="Validation loss is computed on at most this many fixed patches."
    )
    seed: int = Field(0, description="Seed of weight initialisation, splits, patches, augmentation.")
    pixel_size_um: float | None = Field(
        None, gt=0,
        description=(
            "Pixel size (µm) the model works at; images are resampled to it at training "
            "and prediction time. None = median pixel size of the training images."
        ),
    )
    channels: tuple[int, ...] = Field(
        (16, 32, 64, 128, 256),
        min_length=2,
        description=(
            "Feature channels per U-Net level, first level at full resolution; each "
            "further level halves the resolution (total stride 2**(len-2))."
        ),
    )
    num_res_units: int = Field(2, ge=0, description="Residual units per U-Net level.")
    boundary_width_px: int = Field(
        2, ge=1, description="Width of the boundary class inside each cell's outline (px)."
    )
    normalize_percentiles: tuple[float, float] = Field(
        (1.0, 99.8),
        description="Per-image intensity percentiles mapped to 0 and 1 before the network.",
    )
    augment: bool = Field(True, description="Random 90° rotations, flips, intensity changes, noise.")
    intensity_scale_range: tuple[float, float] = Field(
        (0.8, 1.25), description="Range of the random intensity factor (normalised image)."
    )
    gamma_range: tuple[float, float] = Field(
        (0.7, 1.4), description="Range of the random gamma applied to each patch."
    )
    noise_std: float = Field(
        0.03, ge=0, description="Maximum std of added Gaussian noise (normalised intensity)."
    )
    device: Literal["auto", "cpu", "cuda"] = Field(
        "auto", description="Where to train; 'auto' = CUDA if available, else CPU."
    )
    inference: SegmentationInferenceConfig = Field(
        default_factory=SegmentationInferenceConfig,
        description="Tiling and instance-extraction defaults stored with the model.",
    )
    optimize_thresholds: bool = Field(
        True,
        description=(
            "After training, choose interior/foreground thresholds and the minimum cell area "
            "with the best pooled AP@0.5 on the validation images (as StarDist's "
            "optimize_thresholds) and store them as the model's inference defaults."
        ),
    )

    @field_validator("channels")
    @classmethod
    def _positive_channels(cls, v: tuple[int, ...]) -> tuple[int, ...]:
        if any(c < 1 for c in v):
            raise ValueError("every channel count must be >= 1")
        return v

    @field_validator("normalize_percentiles", "intensity_scale_range", "gamma_range")
    @classmethod
    def _ordered_pair(cls, v: tuple[float, float]) -> tuple[float, float]:
        if not v[0] <= v[1]:
            raise ValueError(f"expected (low, high) with low <= high, got {v}")
        return v

    @property
    def stride(self) -> int:
        """Total down-sampling factor of the network."""
        return 2 ** (len(self.channels) - 2)


def _config_error(exc: ValidationError, what: str) -> ConfigError:
    lines = [f"{'.'.join(str(x) for x in e['loc'])}: {e['msg']}" for e in exc.errors()]
    return ConfigError(f"{what}: invalid configuration: " + "; ".join(lines))


# --------------------------------------------------------------------------- network
def build_unet(config: SegmentationTrainConfig) -> Any:
    """The MONAI U-Net described by ``config`` (1 input channel, 3 output classes)."""
    from monai.networks.nets import UNet

    strides = (1,) + (2,) * (len(config.channels) - 2)
    return UNet(
        spatial_dims=2,
        in_channels=1,
        out_channels=len(CLASSES),
        channels=tuple(config.channels),
        strides=strides,
        num_res_units=config.num_res_units,
        norm="batch",
    )


def _architecture(config: SegmentationTrainConfig) -> dict[str, Any]:
    return {
        "name": ARCHITECTURE,
        "spatial_dims": 2,
        "in_channels": 1,
        "out_channels": len(CLASSES),
        "channels": list(config.channels),
        "strides": [1] + [2] * (len(config.channels) - 2),
        "num_res_units": config.num_res_units,
        "norm": "batch",
        "total_stride": config.stride,
    }


def receptive_field_radius_px(net: Any, stride: int) -> int:
    """Radius (px) of the region of the input that one output pixel depends on.

    Measured with a gradient probe on a copy of ``net`` in eval mode (the network's
    state and the global random state are untouched).
    """
    import torch

    probe = copy.deepcopy(net).cpu().eval()
    gen = torch.Generator().manual_seed(0)
    size = 64
    while True:
        size = int(math.ceil(size / (2 * stride)) * 2 * stride)
        x = torch.randn((1, 1, size, size), generator=gen, requires_grad=True)
        y = probe(x)
        c = size // 2
        y[0, :, c, c].sum().backward()
        support = torch.nonzero(x.grad[0, 0].abs() > 0)
        if support.numel() == 0:
            return 0
        lo = int(support.min())
        hi = int(support.max())
        if lo > 0 and hi < size - 1 or size >= 4096:
            return int(max(c - lo, hi - c))
        size *= 2


def _device(name: str) -> Any:
    import torch

    if name not in ("auto", "cpu", "cuda"):
        raise ConfigError(f"device {name!r} is not known; use 'auto', 'cpu' or 'cuda'")
    if name == "cuda" or (name == "auto" and torch.cuda.is_available()):
        if not torch.cuda.is_available():
            raise ConfigError("device='cuda' was asked for but no CUDA GPU is available; use 'auto' or 'cpu'")
        return torch.device("cuda")
    return torch.device("cpu")


# --------------------------------------------------------------------------- image prep
def _as_2d_float(image: np.ndarray | Image, where: str) -> np.ndarray:
    arr = image.as_2d() if isinstance(image, Image) else np.asarray(image)
    if arr.ndim != 2:
        raise AxesError(
            f"{where}: expected a 2-D (Y, X) image, got shape {arr.shape}; select one "
            "plane/channel first"
        )
    check_image_values(arr, where)
    return arr.astype(np.float32, copy=False)


def _check_pixel_size(pixel_size_um: Any, where: str) -> float:
    try:
        px = float(pixel_size_um)
    except (TypeError, ValueError):
        px = float("nan")
    if not (math.isfinite(px) and px > 0):
        raise ConfigError(
            f"{where}: pixel_size_um must be a positive number of µm, got {pixel_size_um!r}; "
            "pass the image's pixel size (CLI: --pixel-size-um)"
        )
    return px


def _target_shape(shape: tuple[int, int], pixel_size_um: float, target_um: float) -> tuple[int, int]:
    f = pixel_size_um / target_um
    return (max(1, int(round(shape[0] * f))), max(1, int(round(shape[1] * f))))


def resample_image(image: np.ndarray, pixel_size_um: float, target_pixel_size_um: float) -> np.ndarray:
    """Resample a ``(Y, X)`` image from ``pixel_size_um`` to ``target_pixel_size_um``.

    Linear interpolation, with Gaussian anti-aliasing when down-sampling. Returns a
    float32 array of shape ``round(shape * pixel_size_um / target_pixel_size_um)``
    (the input itself, as float32, when the sizes agree within 0.1 %).
    """
    from skimage.transform import resize

    image = np.asarray(image, dtype=np.float32)
    if abs(pixel_size_um / target_pixel_size_um - 1.0) < 1e-3:
        return image
    shape = _target_shape(image.shape, pixel_size_um, target_pixel_size_um)
    down = pixel_size_um < target_pixel_size_um
    return resize(
        image, shape, order=1, mode="reflect", anti_aliasing=down, preserve_range=True
    ).astype(np.float32)


def resample_labels(labels: np.ndarray, shape: tuple[int, int]) -> np.ndarray:
    """Nearest-neighbour resampling of a label image to ``shape`` (ids kept)."""
    from skimage.transform import resize

    labels = np.asarray(labels)
    if labels.shape == tuple(shape):
        return labels
    out = resize(labels, shape, order=0, mode="edge", anti_aliasing=False, preserve_range=True)
    return np.rint(out).astype(labels.dtype)


def normalize_percentile(
    image: np.ndarray, percentiles: tuple[float, float] = (1.0, 99.8)
) -> tuple[np.ndarray, float, float]:
    """Map the two intensity percentiles of ``image`` to 0 and 1 (no clipping).

    Returns the float32 image and the two percentile values. Falls back to min/max
    when the percentiles coincide.
    """
    lo, hi = (float(v) for v in np.percentile(image, percentiles))
    if hi - lo <= 0:
        lo, hi = float(image.min()), float(image.max())
    if hi - lo <= 0:
        hi = lo + 1.0
    return ((image - lo) / (hi - lo)).astype(np.float32), lo, hi


def segmentation_targets(labels: np.ndarray, boundary_width_px: int = 2) -> np.ndarray:
    """Per-pixel classes from a label image: 0 background, 1 interior, 2 boundary.

    The boundary is the outer ``boundary_width_px`` pixels inside every cell's
    outline, on both sides of every contact between touching cells.

    Parameters
    ----------
    labels
        ``(Y, X)`` integer label image, 0 = background.
    boundary_width_px
        Width of the boundary band in pixels (>= 1).

    Returns
    -------
    np.ndarray
        ``(Y, X)`` uint8 class map.
    """
    from scipy import ndimage as ndi
    from skimage.segmentation import find_boundaries

    labels = np.asarray(labels)
    fg = labels > 0
    edge = find_boundaries(labels, mode="inner") & fg
    if boundary_width_px > 1:
        edge = ndi.binary_dilation(edge, iterations=boundary_width_px - 1) & fg
    out = fg.astype(np.uint8)
    out[edge] = 2
    return out


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
            y = net(x).float().cpu().numpy()
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


def _softmax(logits: np.ndarray) -> np.ndarray:
    z = logits - logits.max(axis=0, keepdims=True)
    np.exp(z, out=z)
    z /= z.sum(axis=0, keepdims=True)
    return z


# --------------------------------------------------------------------------- instances
def probabilities_to_labels(
    prob: np.ndarray,
    *,
    pixel_size_um: float,
    foreground_threshold: float = 0.5,
    interior_threshold: float = 0.5,
    min_cell_area_um2: float = 20.0,
) -> np.ndarray:
    """Instance labels from per-pixel class probabilities.

    Parameters
    ----------
    prob
        ``(3, Y, X)`` probabilities of background, interior, boundary (see
        :data:`CLASSES`).
    pixel_size_um
        Pixel size of ``prob`` in µm (for the minimum area).
    foreground_threshold
        Cell pixels: ``p(interior) + p(boundary) > foreground_threshold``.
    interior_threshold
        Marker pixels: ``p(interior) > interior_threshold``; each connected
        component is one cell.
    min_cell_area_um2
        Cells (and markers smaller than a quarter of it) below this area are dropped.

    Returns
    -------
    np.ndarray
        ``(Y, X)`` int32 labels, 0 = background, consecutive ids ``1..N``.
    """
    from scipy import ndimage as ndi
    from skimage.segmentation import relabel_sequential, watershed

    prob = np.asarray(prob, dtype=np.float32)
    if prob.ndim != 3 or prob.shape[0] != len(CLASSES):
        raise MechanoscopeError(
            f"probabilities must have shape (3, Y, X) for {CLASSES}, got {prob.shape}"
        )
    min_px = float(min_cell_area_um2) / float(pixel_size_um) ** 2
    fg = (prob[1] + prob[2]) > foreground_threshold
    interior = (prob[1] > interior_threshold) & fg
    markers, n = ndi.label(interior)
    if n:
        sizes = np.bincount(markers.ravel(), minlength=n + 1)
        small = sizes < max(1.0, 0.25 * min_px)
        small[0] = False
        markers[small[markers]] = 0
    labels = watershed(1.0 - prob[1], markers, mask=fg)
    # foreground parts that no marker reached (tiny cells that are all boundary)
    rest, n_rest = ndi.label(fg & (labels == 0))
    if n_rest:
        offset = int(labels.max())
        labels = np.where(rest > 0, rest + offset, labels)
    if labels.max() > 0:
        sizes = np.bincount(labels.ravel())
        small = sizes < min_px
        small[0] = False
        labels[small[labels]] = 0
    labels, _, _ = relabel_sequential(labels)
    return labels.astype(np.int32)


# --------------------------------------------------------------------------- model
@dataclass
class SegmentationModel:
    """A trained segmentation network ready to apply.

    Attributes
    ----------
    net
        The MONAI U-Net in eval mode, on ``device``.
    config
        Its training config (incl. inference defaults).
    pixel_size_um
        Pixel size (µm) the model works at.
    normalization, metrics
        Contents of the model folder's JSON files.
    rf_radius_px
        Receptive-field radius of the network in pixels (at the model's pixel size).
    path
        Model folder it was loaded from, if any.
    """

    net: Any
    config: SegmentationTrainConfig
    pixel_size_um: float
    normalization: dict[str, Any]
    metrics: dict[str, Any] = field(default_factory=dict)
    rf_radius_px: int = 0
    path: Path | None = None
    device: Any = None

    @property
    def stride(self) -> int:
        return self.config.stride


def load_segmentation_model(
    folder: str | os.PathLike[str], *, device: Literal["auto", "cpu", "cuda"] | None = None
) -> SegmentationModel:
    """Load a segmentation model folder written by :func:`train_segmentation`.

    Parameters
    ----------
    folder
        Model folder.
    device
        Where to run it; default: the device of the stored inference config
        (``"auto"``).

    Raises
    ------
    ModelFolderError
        Missing files, a damaged folder, a folder of another task, or weights that do
        not fit the architecture. :class:`ModelSchemaError` for another schema version.
    """
    from mechanoscope.learn.model_folder import ModelFolderError, load_model_folder

    mf = load_model_folder(folder)
    cfg = mf.config
    if cfg.get("task") != TASK:
        raise ModelFolderError(
            f"{mf.path}: is a {cfg.get('task')!r} model, not a segmentation model "
            f"({TASK!r}); pass a model trained with `mechanoscope segment train`"
        )
    if cfg.get("architecture", {}).get("name") != ARCHITECTURE:
        raise ModelFolderError(
            f"{mf.path}: architecture {cfg.get('architecture', {}).get('name')!r} is not "
            f"supported (expected {ARCHITECTURE!r})"
        )
    try:
        train_cfg = SegmentationTrainConfig.model_validate(cfg.get("train_config", {}))
    except ValidationError as exc:
        raise ModelFolderError(f"{mf.path}/config.json: {_config_error(exc, 'train_config')}") from exc
    net = build_unet(train_cfg)
    try:
        net.load_state_dict(mf.state_dict, strict=True)
    except RuntimeError as exc:
        raise ModelFolderError(
            f"{mf.path}/weights.safetensors: weights do not fit the architecture in "
            f"config.json ({str(exc).splitlines()[0]}); the folder is inconsistent, retrain"
        ) from exc
    dev = _device(device or train_cfg.inference.device)
    net = net.to(dev).eval()
    rf = cfg.get("receptive_field_radius_px")
    if not isinstance(rf, int):
        rf = receptive_field_radius_px(net, train_cfg.stride)
    return SegmentationModel(
        net=net,
        config=train_cfg,
        pixel_size_um=float(cfg["pixel_size_um"]),
        normalization=mf.normalization,
        metrics=mf.metrics,
        rf_radius_px=int(rf),
        path=mf.path,
        device=dev,
    )


def _resolve_model(model: SegmentationModel | str | os.PathLike[str]) -> SegmentationModel:
    if isinstance(model, SegmentationModel):
        return model
    return load_segmentation_model(model)


def _model_grid_probabilities(
    image: np.ndarray,
    pixel_size_um: float,
    model: SegmentationModel,
    inference: SegmentationInferenceConfig,
    progress: Callable[[int, int], None] | None,
) -> np.ndarray:
    pct = tuple(model.normalization.get("percentiles", model.config.normalize_percentiles))
    img_m = resample_image(image, pixel_size_um, model.pixel_size_um)
    norm, _, _ = normalize_percentile(img_m, pct)  # type: ignore[arg-type]
    was_training = model.net.training
    model.net.eval()
    try:
        logits = predict_logits_tiled(
            model.net,
            norm,
            tile_size_px=inference.tile_size_px,
            tile_overlap_px=inference.tile_overlap_px,
            rf_radius_px=model.rf_radius_px,
            stride=model.stride,
            device=model.device,
            tile_batch=inference.tile_batch,
            progress=progress,
        )
    finally:
        model.net.train(was_training)
    return _softmax(logits)


def _resize_prob(prob: np.ndarray, shape: tuple[int, int]) -> np.ndarray:
    from skimage.transform import resize

    if prob.shape[1:] == tuple(shape):
        return prob
    down = shape[0] < prob.shape[1] or shape[1] < prob.shape[2]
    return np.stack(
        [
            resize(p, shape, order=1, mode="edge", anti_aliasing=down, preserve_range=True)
            for p in prob
        ]
    ).astype(np.float32)


def predict_probabilities(
    image: np.ndarray | Image,
    *,
    pixel_size_um: float,
    model: SegmentationModel | str | os.PathLike[str],
    inference: SegmentationInferenceConfig | None = None,
    progress: Callable[[int, int], None] | None = None,
) -> np.ndarray:
    """Per-pixel class probabilities on the input's pixel grid.

    Parameters
    ----------
    image
        ``(Y, X)`` grey image (any numeric dtype) or an :class:`Image` with one plane.
    pixel_size_um
        Pixel size of ``image`` in µm.
    model
        A loaded model or a model folder.
    inference
        Tiling/threshold settings; default: those stored with the model.
    progress
        ``progress(done, total)`` over tiles.

    Returns
    -------
    np.ndarray
        ``(3, Y, X)`` float32 probabilities of :data:`CLASSES`.
    """
    m = _resolve_model(model)
    px = _check_pixel_size(pixel_size_um, "image")
    arr = _as_2d_float(image, _where(image))
    inf = inference or m.config.inference
    prob = _model_grid_probabilities(arr, px, m, inf, progress)
    return _resize_prob(prob, arr.shape)


def _where(image: Any) -> str:
    if isinstance(image, Image) and image.path is not None:
        return str(image.path)
    return "image"


def segment_network(
    image: np.ndarray | Image,
    *,
    pixel_size_um: float,
    model: SegmentationModel | str | os.PathLike[str],
    inference: SegmentationInferenceConfig | None = None,
    progress: Callable[[int, int], None] | None = None,
) -> np.ndarray:
    """Segment cells with a trained network.

    Parameters
    ----------
    image
        ``(Y, X)`` grey image (any numeric dtype) or an :class:`Image` with one plane.
    pixel_size_um
        Pixel size of ``image`` in µm; the image is resampled to the model's pixel
        size, so any magnification works.
    model
        A model from :func:`load_segmentation_model`, or a model folder.
    inference
        Tiling and instance-extraction settings; default: those stored with the model.
    progress
        ``progress(done, total)`` over tiles.

    Returns
    -------
    np.ndarray
        ``(Y, X)`` int32 labels of the input's shape: 0 = background, ``1..N`` cells.

    Raises
    ------
    AxesError
        ``image`` is not a single 2-D plane.
    ImageReadError
        ``image`` is empty, constant or holds NaN/inf.
    ConfigError
        Bad pixel size or tiling settings.
    """
    m = _resolve_model(model)
    px = _check_pixel_size(pixel_size_um, "image")
    arr = _as_2d_float(image, _where(image))
    inf = inference or m.config.inference
    prob = _model_grid_probabilities(arr, px, m, inf, progress)
    kw = dict(
        foreground_threshold=inf.foreground_threshold,
        interior_threshold=inf.interior_threshold,
        min_cell_area_um2=inf.min_cell_area_um2,
    )
    if prob.shape[1:] == arr.shape:
        return probabilities_to_labels(prob, pixel_size_um=px, **kw)
    if px < m.pixel_size_um:
        # the input is finer than the model: extract on the input grid (smooth outlines)
        return probabilities_to_labels(_resize_prob(prob, arr.shape), pixel_size_um=px, **kw)
    # the input is coarser: extract where the boundaries are resolved, then sample down
    from skimage.segmentation import relabel_sequential

    lab = probabilities_to_labels(prob, pixel_size_um=m.pixel_size_um, **kw)
    lab = resample_labels(lab, arr.shape)
    lab, _, _ = relabel_sequential(lab)
    return lab.astype(np.int32)


# --------------------------------------------------------------------------- training
@dataclass
class _Prepared:
    image: np.ndarray  # normalised, model grid, float32
    target: np.ndarray  # class map, uint8
    labels: np.ndarray  # instance labels on the model grid
    lo: float
    hi: float


def _prepare(
    image: Any, labels: Any, px: float, cfg: SegmentationTrainConfig, target_px: float, i: int
) -> _Prepared:
    where = _where(image) if isinstance(image, Image) else f"training image {i}"
    arr = _as_2d_float(image, where)
    lab = labels.as_2d() if isinstance(labels, Image) else np.asarray(labels)
    if lab.shape != arr.shape:
        raise MechanoscopeError(
            f"{where}: image shape {arr.shape} differs from its label image shape "
            f"{lab.shape}; pair each image with its own mask"
        )
    if not np.issubdtype(lab.dtype, np.integer) or (lab.size and lab.min() < 0):
        raise MechanoscopeError(
            f"{where}: labels must be non-negative integer ids (0 = background), got {lab.dtype}"
        )
    img_m = resample_image(arr, px, target_px)
    lab_m = resample_labels(lab, img_m.shape)
    norm, lo, hi = normalize_percentile(img_m, cfg.normalize_percentiles)
    return _Prepared(norm, segmentation_targets(lab_m, cfg.boundary_width_px), lab_m, lo, hi)


def _pad_to(a: np.ndarray, size: int) -> np.ndarray:
    ph, pw = max(0, size - a.shape[0]), max(0, size - a.shape[1])
    if ph == 0 and pw == 0:
        return a
    return np.pad(a, ((0, ph), (0, pw)), mode="reflect" if min(a.shape) > 1 else "edge")


def _augment(img: np.ndarray, tgt: np.ndarray, rng: np.random.Generator, cfg: SegmentationTrainConfig) -> tuple[np.ndarray, np.ndarray]:
    k = int(rng.integers(4))
    img, tgt = np.rot90(img, k), np.rot90(tgt, k)
    if rng.random() < 0.5:
        img, tgt = img[:, ::-1], tgt[:, ::-1]
    lo, hi = float(img.min()), float(img.max())
    g_lo, g_hi = cfg.gamma_range
    gamma = float(np.exp(rng.uniform(np.log(g_lo), np.log(g_hi))))
    if hi > lo and gamma != 1.0:
        img = ((img - lo) / (hi - lo)) ** gamma * (hi - lo) + lo
    s_lo, s_hi = cfg.intensity_scale_range
    img = img * float(np.exp(rng.uniform(np.log(s_lo), np.log(s_hi))))
    if cfg.noise_std > 0:
        img = img + rng.normal(0.0, rng.uniform(0.0, cfg.noise_std), img.shape)
    return np.ascontiguousarray(img, dtype=np.float32), np.ascontiguousarray(tgt)


def _sample_batch(
    data: list[_Prepared], n: int, rng: np.random.Generator, cfg: SegmentationTrainConfig
) -> tuple[np.ndarray, np.ndarray]:
    p = cfg.patch_size_px
    weights = np.array([d.image.size for d in data], dtype=float)
    weights /= weights.sum()
    imgs, tgts = [], []
    for _ in range(n):
        d = data[int(rng.choice(len(data), p=weights))]
        y0 = int(rng.integers(d.image.shape[0] - p + 1))
        x0 = int(rng.integers(d.image.shape[1] - p + 1))
        img = d.image[y0 : y0 + p, x0 : x0 + p]
        tgt = d.target[y0 : y0 + p, x0 : x0 + p]
        if cfg.augment:
            img, tgt = _augment(img, tgt, rng, cfg)
        imgs.append(img)
        tgts.append(tgt)
    return np.stack(imgs)[:, None].astype(np.float32), np.stack(tgts)[:, None].astype(np.int64)


def _validation_patches(
    data: list[_Prepared], cfg: SegmentationTrainConfig, rng: np.random.Generator
) -> tuple[np.ndarray, np.ndarray] | None:
    if not data:
        return None
    p = cfg.patch_size_px
    imgs, tgts = [], []
    for d in data:
        h, w = d.image.shape
        for y0 in range(0, max(h - p, 0) + 1, p):
            for x0 in range(0, max(w - p, 0) + 1, p):
                imgs.append(d.image[y0 : y0 + p, x0 : x0 + p])
                tgts.append(d.target[y0 : y0 + p, x0 : x0 + p])
    if len(imgs) > cfg.max_validation_patches:
        keep = np.sort(rng.choice(len(imgs), cfg.max_validation_patches, replace=False))
        imgs = [imgs[i] for i in keep]
        tgts = [tgts[i] for i in keep]
    return np.stack(imgs)[:, None].astype(np.float32), np.stack(tgts)[:, None].astype(np.int64)


def _write_log(path: Path, rows: list[dict[str, Any]]) -> str:
    buf = io.StringIO()
    if rows:
        writer = csv.DictWriter(buf, fieldnames=list(rows[0]), lineterminator="\n")
        writer.writeheader()
        writer.writerows(rows)
    text = buf.getvalue()
    from mechanoscope.io.atomic import atomic_path

    with atomic_path(path) as tmp:
        tmp.write_text(text)
    return text


def _hash_array(a: np.ndarray) -> str:
    import hashlib

    h = hashlib.sha256()
    h.update(str((a.shape, a.dtype.str)).encode())
    h.update(np.ascontiguousarray(a).tobytes())
    return h.hexdigest()


#: candidates of the threshold search on the validation images
THRESHOLD_GRID = {"interior_threshold": (0.3, 0.5, 0.7, 0.85, 0.92), "foreground_threshold": (0.4, 0.5, 0.6)}


def optimize_thresholds(
    model: SegmentationModel, images: list[Any], labels: list[Any], pxs: list[float]
) -> tuple[SegmentationInferenceConfig, dict[str, Any]]:
    """Instance-extraction settings with the best pooled AP@0.5 on held-out images.

    Probabilities are computed once per image; only the extraction is repeated over
    :data:`THRESHOLD_GRID` and two minimum areas (the configured one and a quarter of
    the median true cell area). Ties keep the configured defaults (tried first).
    """
    import itertools

    from mechanoscope.evaluate.segmentation import aggregate_segmentation_scores, segmentation_scores

    trues = [lab.as_2d() if isinstance(lab, Image) else np.asarray(lab) for lab in labels]
    probs = [predict_probabilities(img, pixel_size_um=px, model=model) for img, px in zip(images, pxs)]
    areas = np.concatenate([np.bincount(t.ravel().astype(np.int64))[1:] * px * px for t, px in zip(trues, pxs)])
    areas = areas[areas > 0]
    default = model.config.inference
    min_areas = [default.min_cell_area_um2]
    if areas.size:
        min_areas.append(round(float(0.25 * np.median(areas)), 1))
    combos = [(default.interior_threshold, default.foreground_threshold, default.min_cell_area_um2)]
    combos += [c for c in itertools.product(THRESHOLD_GRID["interior_threshold"], THRESHOLD_GRID["foreground_threshold"], min_areas) if c not in combos]
    table = []
    for it, ft, ma in combos:
        per = [
            segmentation_scores(probabilities_to_labels(p, pixel_size_um=px, interior_threshold=it, foreground_threshold=ft, min_cell_area_um2=ma), t)
            for p, t, px in zip(probs, trues, pxs)
        ]
        table.append({"interior_threshold": it, "foreground_threshold": ft, "min_cell_area_um2": ma, "val_ap_50": aggregate_segmentation_scores(per)["ap_50"]})
    best = max(range(len(table)), key=lambda k: (table[k]["val_ap_50"], -k))
    chosen = {k: table[best][k] for k in ("interior_threshold", "foreground_threshold", "min_cell_area_um2")}
    record = {"objective": "pooled AP@0.5 on the validation images", "chosen": table[best], "configured_default": table[0], "n_images": len(images)}
    return default.model_copy(update=chosen), record


def _validation_scores(
    model: SegmentationModel, images: list[Any], labels: list[Any], pxs: list[float]
) -> dict[str, Any]:
    """Instance scores on the validation images (needs mechanoscope.evaluate)."""
    try:
        from mechanoscope.evaluate.segmentation import (
            aggregate_segmentation_scores,
            segmentation_scores,
        )
    except ImportError:  # pragma: no cover - evaluate is part of the product
        return {}
    per = []
    for img, lab, px in zip(images, labels, pxs):
        pred = segment_network(img, pixel_size_um=px, model=model)
        true = lab.as_2d() if isinstance(lab, Image) else np.asarray(lab)
        per.append(segmentation_scores(pred, true))
    agg = aggregate_segmentation_scores(per)
    keys = ("n_images", "n_true", "n_pred", "ap_50", "ap_75", "ap_50_95", "f1_50",
            "precision_50", "recall_50", "pq", "sq", "dice", "jaccard")
    return {k: agg.get(k) for k in keys}


def _model_card(
    cfg: SegmentationTrainConfig, px: float, n_train: int, n_val: int, metrics: dict[str, Any]
) -> str:
    val = metrics.get("validation_scores") or {}

    def fmt(v: Any) -> str:
        return f"{v:.3f}" if isinstance(v, float) else str(v)

    lines = [
        "# Cell segmentation network (mechanoscope)",
        "",
        "**Task:** instance segmentation of cells in label-free (bright-field / phase-contrast) "
        "images. Per pixel the network predicts background / cell interior / cell boundary; "
        "cells are the watershed regions grown from interior components.",
        "",
        f"**Architecture:** MONAI UNet, channels {list(cfg.channels)}, "
        f"{cfg.num_res_units} residual unit(s) per level, batch normalisation, 1 input channel.",
        "",
        f"**Pixel size:** {px:g} µm/px. Images at other pixel sizes are resampled to it "
        "before prediction and the labels are returned on the input's grid.",
        "",
        f"**Normalisation:** per image, intensity percentiles {list(cfg.normalize_percentiles)} "
        "mapped to 0 and 1 (see normalization.json).",
        "",
        f"**Training data:** {n_train} training image(s), {n_val} validation image(s) "
        "(split by image). Provenance and input hashes: provenance.json.",
        "",
        "## Validation metrics",
        "",
        f"- best validation loss (Dice + cross-entropy): {fmt(metrics.get('best_val_loss'))} "
        f"at epoch {metrics.get('best_epoch')} of {metrics.get('epochs_run')}",
    ]
    for k in ("ap_50", "ap_75", "ap_50_95", "f1_50", "dice"):
        if k in val:
            lines.append(f"- {k}: {fmt(val[k])}")
    lines += [
        "",
        "## Intended use and limits",
        "",
        "Segmenting cells that look like the training images (modality, cell type, "
        "confluence, focus). Check a few predictions against your own images before "
        "trusting morphology or stiffness estimates built on them; retrain or fine-tune "
        "for other modalities. Validation metrics come from held-out images of the same "
        "data set and overstate performance on other data.",
        "",
    ]
    return "\n".join(lines)


def train_segmentation(
    images: Sequence[np.ndarray | Image],
    labels: Sequence[np.ndarray | Image],
    *,
    pixel_sizes_um: float | Sequence[float],
    config: SegmentationTrainConfig | None = None,
    out: str | os.PathLike[str],
    progress: TrainProgress | None = None,
    input_paths: Sequence[str | os.PathLike[str]] | None = None,
    command: str | Sequence[str] | None = None,
    overwrite: bool = False,
) -> Path:
    """Train the segmentation network and write a model folder.

    Parameters
    ----------
    images
        ``(Y, X)`` grey images (any numeric dtype) or single-plane :class:`Image`\\ s.
    labels
        Instance label images of the same shapes (0 = background, one id per cell).
    pixel_sizes_um
        Pixel size in µm of every image, or one value for all.
    config
        Training parameters; defaults if ``None``.
    out
        Model folder to write (see :mod:`mechanoscope.learn.model_folder`), plus
        ``training_log.csv`` (one row per epoch). While training, the log is kept
        up to date in ``<out>.partial/`` which is removed at the end.
    progress
        ``progress(epoch, epochs, record)`` after every epoch.
    input_paths
        Files the images and labels came from; their SHA-256 goes into
        ``provenance.json`` (else the arrays are hashed).
    command
        Command line recorded in the provenance (default ``sys.argv``).
    overwrite
        Replace an existing model folder at ``out``.

    Returns
    -------
    Path
        The model folder.

    Raises
    ------
    MechanoscopeError
        No images, mismatched counts/shapes, bad pixel sizes or labels.
    ConfigError
        Inconsistent configuration (e.g. patch size not a multiple of the stride).
    OutputFolderError
        ``out`` exists (and ``overwrite`` is false) or is not a model folder.
    """
    import torch
    from monai.losses import DiceCELoss

    from mechanoscope.learn.model_folder import check_output_folder, save_model_folder
    from mechanoscope.learn.model_folder import provenance as collect_provenance

    cfg = config or SegmentationTrainConfig()
    out = Path(out)
    images, labels = list(images), list(labels)
    if not images:
        raise MechanoscopeError("no training images given; pass at least one image and its labels")
    if len(images) != len(labels):
        raise MechanoscopeError(
            f"got {len(images)} images but {len(labels)} label images; pass one label image per image"
        )
    if isinstance(pixel_sizes_um, (int, float)):
        pxs = [float(pixel_sizes_um)] * len(images)
    else:
        pxs = list(pixel_sizes_um)
        if len(pxs) != len(images):
            raise MechanoscopeError(
                f"got {len(pxs)} pixel sizes for {len(images)} images; pass one per image or a single value"
            )
    pxs = [_check_pixel_size(p, f"training image {i}") for i, p in enumerate(pxs)]
    if cfg.patch_size_px % cfg.stride:
        raise ConfigError(
            f"patch_size_px={cfg.patch_size_px} is not a multiple of the network's total "
            f"stride {cfg.stride} (channels {list(cfg.channels)}); use e.g. "
            f"{_round_up(cfg.patch_size_px, cfg.stride)}"
        )
    check_output_folder(out, overwrite=overwrite)
    target_px = float(cfg.pixel_size_um) if cfg.pixel_size_um else float(np.median(pxs))
    cfg = cfg.model_copy(update={"pixel_size_um": target_px})
    device = _device(cfg.device)
    rng = np.random.default_rng(cfg.seed)

    prepared = [_prepare(im, lb, px, cfg, target_px, i) for i, (im, lb, px) in enumerate(zip(images, labels, pxs))]
    for d in prepared:
        d.image = _pad_to(d.image, cfg.patch_size_px)
        d.target = _pad_to(d.target, cfg.patch_size_px)

    n = len(images)
    order = rng.permutation(n)
    n_val = 0
    if cfg.validation_fraction > 0:
        if n >= 2:
            n_val = min(n - 1, max(1, int(round(cfg.validation_fraction * n))))
        else:
            warnings.warn(
                "only one training image: no image can be held out for validation, so early "
                "stopping uses the training loss; give more images for a real validation",
                MechanoscopeWarning,
                stacklevel=2,
            )
    val_idx = sorted(int(i) for i in order[:n_val])
    train_idx = sorted(int(i) for i in order[n_val:])
    train_data = [prepared[i] for i in train_idx]
    val_data = [prepared[i] for i in val_idx]
    val_batch = _validation_patches(val_data, cfg, rng)

    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(cfg.seed)
        net = build_unet(cfg)
    rf = receptive_field_radius_px(net, cfg.stride)
    net = net.to(device)
    if device.type == "cuda":
        torch.backends.cudnn.deterministic = True
        torch.backends.cudnn.benchmark = False
    loss_fn = DiceCELoss(to_onehot_y=True, softmax=True, batch=True)
    opt = torch.optim.AdamW(net.parameters(), lr=cfg.learning_rate, weight_decay=cfg.weight_decay)

    partial = out.with_name(out.name + ".partial")
    partial.mkdir(parents=True, exist_ok=True)
    log_path = partial / "training_log.csv"
    rows: list[dict[str, Any]] = []
    best_loss, best_epoch, best_state = math.inf, 0, None
    steps = int(math.ceil(cfg.patches_per_epoch / cfg.batch_size))
    stopped_early = False

    def eval_loss(batch: tuple[np.ndarray, np.ndarray]) -> float:
        net.eval()
        total, count = 0.0, 0
        with torch.inference_mode():
            for b in range(0, len(batch[0]), cfg.batch_size):
                x = torch.from_numpy(batch[0][b : b + cfg.batch_size]).to(device)
                y = torch.from_numpy(batch[1][b : b + cfg.batch_size]).to(device)
                total += float(loss_fn(net(x), y)) * len(x)
                count += len(x)
        return total / max(count, 1)

    log_text = ""
    for epoch in range(1, cfg.epochs + 1):
        t0 = time.perf_counter()
        net.train()
        train_loss = 0.0
        for _ in range(steps):
            xb, yb = _sample_batch(train_data, cfg.batch_size, rng, cfg)
            x = torch.from_numpy(xb).to(device)
            y = torch.from_numpy(yb).to(device)
            opt.zero_grad(set_to_none=True)
            loss = loss_fn(net(x), y)
            loss.backward()
            opt.step()
            train_loss += float(loss.detach())
        train_loss /= steps
        val_loss = eval_loss(val_batch) if val_batch is not None else float("nan")
        monitor = val_loss if val_batch is not None else train_loss
        improved = monitor < best_loss
        if improved:
            best_loss, best_epoch = monitor, epoch
            best_state = {k: v.detach().cpu().clone() for k, v in net.state_dict().items()}
        row = {
            "epoch": epoch,
            "train_loss": round(train_loss, 6),
            "val_loss": round(val_loss, 6) if math.isfinite(val_loss) else "",
            "best": improved,
            "learning_rate": cfg.learning_rate,
            "seconds": round(time.perf_counter() - t0, 3),
        }
        rows.append(row)
        log_text = _write_log(log_path, rows)
        if progress is not None:
            progress(epoch, cfg.epochs, dict(row))
        if epoch - best_epoch >= cfg.early_stopping_patience:
            stopped_early = epoch < cfg.epochs
            break

    assert best_state is not None
    net.load_state_dict(best_state)
    net.eval()
    model = SegmentationModel(
        net=net, config=cfg, pixel_size_um=target_px, normalization={}, rf_radius_px=rf,
        device=device,
    )
    normalization = {
        "method": "percentile",
        "scope": "per_image",
        "percentiles": list(cfg.normalize_percentiles),
        "clip": False,
        "applied_after": "resampling to the model pixel size",
        "formula": "(x - p_low) / (p_high - p_low)",
        "input_channels": 1,
        "training_percentile_values": {
            "p_low_median": float(np.median([d.lo for d in prepared])),
            "p_high_median": float(np.median([d.hi for d in prepared])),
        },
    }
    model.normalization = normalization
    threshold_search = None
    if cfg.optimize_thresholds and val_idx:
        inf, threshold_search = optimize_thresholds(
            model, [images[i] for i in val_idx], [labels[i] for i in val_idx], [pxs[i] for i in val_idx]
        )
        cfg = cfg.model_copy(update={"inference": inf})
        model.config = cfg
    val_scores = _validation_scores(
        model, [images[i] for i in val_idx], [labels[i] for i in val_idx], [pxs[i] for i in val_idx]
    ) if val_idx else {}
    metrics = {
        "best_epoch": best_epoch,
        "best_val_loss": best_loss if val_batch is not None else None,
        "best_train_loss": best_loss if val_batch is None else None,
        "monitored": "val_loss" if val_batch is not None else "train_loss",
        "epochs_run": len(rows),
        "stopped_early": stopped_early,
        "final_train_loss": rows[-1]["train_loss"],
        "n_train_images": len(train_idx),
        "n_validation_images": len(val_idx),
        "validation_scores": val_scores,
        "threshold_search": threshold_search,
    }
    config_json = {
        "task": TASK,
        "architecture": _architecture(cfg),
        "classes": list(CLASSES),
        "input_channels": 1,
        "input_size_px": cfg.patch_size_px,
        "pixel_size_um": target_px,
        "receptive_field_radius_px": rf,
        "train_config": cfg.model_dump(mode="json"),
    }
    if input_paths is not None:
        inputs: Any = [Path(p) for p in input_paths]
    else:
        inputs = {f"image[{i}]": _hash_array(np.asarray(im.data if isinstance(im, Image) else im)) for i, im in enumerate(images)}
        inputs.update({f"labels[{i}]": _hash_array(np.asarray(lb.data if isinstance(lb, Image) else lb)) for i, lb in enumerate(labels)})
    prov = collect_provenance(
        seed=cfg.seed,
        command=command,
        inputs=inputs,
        extra={
            "training_images": n,
            "train_image_indices": train_idx,
            "validation_image_indices": val_idx,
            "input_pixel_sizes_um": pxs,
        },
    )
    save_model_folder(
        out,
        config=config_json,
        state_dict=best_state,
        normalization=normalization,
        metrics=metrics,
        provenance=prov,
        model_card=_model_card(cfg, target_px, len(train_idx), len(val_idx), metrics),
        extra_files={"training_log.csv": log_text},
        overwrite=overwrite,
    )
    import shutil

    shutil.rmtree(partial, ignore_errors=True)
    return out
