"""Configuration of the learned segmenter: inference and training settings, the U-Net it builds."""

from __future__ import annotations

import copy
import math
from collections.abc import Callable
from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field, ValidationError, field_validator

from mechanoscope.errors import (
    ConfigError,
)

__all__ = ["CLASSES", "TASK", "ARCHITECTURE", "TrainProgress", "SegmentationInferenceConfig", "SegmentationTrainConfig", "build_unet", "receptive_field_radius_px"]


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
        1024, ge=16,
        description=(
            "Edge length of the square tiles the image is processed in, in pixels at the "
            "model's pixel size. Bounds memory use (a 1024-px tile of the built-in model "
            "needs ~0.26 GB, two at once ~0.4 GB); rounded up to a multiple of the network's total stride. "
            "Larger tiles waste less of the network's work on overlaps (512 → 1024: "
            "1.2–1.8× faster on 1024² images at 0.87 µm/px, identical labels)."
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
    min_structure_ratio: float = Field(
        3.0, ge=0,
        description=(
            "An image whose structure-to-noise ratio (mechanoscope.segment.network_prep."
            "structure_to_noise_ratio: variance of the image smoothed over 2 px over what camera "
            "noise alone leaves after that smoothing; ~1 for an empty, noise-only field, 14 for "
            "simulated bright field at 300 photons/pixel, > 1,000 for real phase contrast) is below "
            "this holds no cells: it gets no label instead of objects the network would draw into "
            "stretched noise. 0 turns the check off."
        ),
    )
    test_time_augmentation: Literal["none", "mirror", "dihedral"] = Field(
        "none",
        description=(
            "Average the network's per-pixel output over views of every tile: 'mirror' the tile "
            "and its left-right mirror (2 network passes; the built-in model on real 1-MP images "
            "2.73 -> 2.39 MP/s, the rest of segmentation is unchanged), 'dihedral' its 8 rotations "
            "and mirrors (8 passes), 'none' one pass (true/false of older configs mean 'dihedral'/'none'). "
            "On the built-in model, measured on real phase contrast (4 validation images / 11 "
            "training images / 7 T98G frames against Usiigaci's own masks), AP@0.5 0.601 / "
            "0.719 / 0.785 with 'none', 0.635 / 0.742 / 0.822 with 'mirror', 0.632 / 0.748 / "
            "0.810 with 'dihedral'."
        ),
    )

    precision: Literal["fp32", "bf16"] | None = Field(
        None,
        description=(
            "Numeric precision of the network: 'fp32', or 'bf16' autocast (faster on CPUs with "
            "native bfloat16 and on GPUs; on the built-in model it moved real phase-contrast "
            "AP@0.5 by <= 0.008). None: $MECHANOSCOPE_INFERENCE_PRECISION, else fp32; the "
            "precision used is recorded with the run's settings."
        ),
    )

    @field_validator("test_time_augmentation", mode="before")
    @classmethod
    def _tta_from_bool(cls, v: Any) -> Any:
        from mechanoscope.nn.inference import TTA_FROM_BOOL

        return TTA_FROM_BOOL[v] if isinstance(v, bool) else v
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
    scale_range: tuple[float, float] = Field(
        (1.0, 1.0),
        description=(
            "Range of the random scale factor of training patches (a patch of size*s pixels is "
            "resized to the patch size); (1, 1) = no scale augmentation."
        ),
    )
    blur_sigma_max_px: float = Field(
        0.0, ge=0, description="Half the patches are blurred by a Gaussian of random sigma up to this (px); 0 = none."
    )
    representation: Literal["classes3", "distance", "hover"] = Field(
        "classes3",
        description=(
            "What the network predicts per pixel (mechanoscope.segment.distance_targets): "
            "'classes3' background/interior/boundary, 'distance' foreground + per-cell "
            "normalised distance to the outline, 'hover' foreground + HoVer-Net offsets."
        ),
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

    @field_validator("normalize_percentiles", "intensity_scale_range", "gamma_range", "scale_range")
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
    """The MONAI U-Net described by ``config`` (1 input channel, the representation's outputs)."""
    from monai.networks.nets import UNet

    from mechanoscope.segment.distance_targets import n_outputs

    strides = (1,) + (2,) * (len(config.channels) - 2)
    return UNet(
        spatial_dims=2,
        in_channels=1,
        out_channels=n_outputs(config.representation),
        channels=tuple(config.channels),
        strides=strides,
        num_res_units=config.num_res_units,
        norm="batch",
    )


def _architecture(config: SegmentationTrainConfig) -> dict[str, Any]:
    from mechanoscope.segment.distance_targets import n_outputs

    return {
        "name": ARCHITECTURE,
        "spatial_dims": 2,
        "in_channels": 1,
        "out_channels": n_outputs(config.representation),
        "representation": config.representation,
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


