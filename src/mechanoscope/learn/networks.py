"""Networks for single-cell crops: a compact CNN (fast default) and MONAI options.

All take ``(B, C, H, W)`` float crops and return ``(B, n_outputs)``; trained from
scratch (nothing is downloaded).
"""

from __future__ import annotations

import torch
from torch import nn

from mechanoscope.errors import ConfigError

__all__ = ["CompactCNN", "build_network", "ARCHITECTURES", "POOLINGS"]

ARCHITECTURES = ("compact", "resnet", "densenet", "efficientnet")
POOLINGS = ("avg", "max")


class CompactCNN(nn.Module):
    """Compact CNN for single-cell crops, cheap enough to train on a laptop CPU.

    Five stages of conv3×3–BN–ReLU; the first four end in a 2×2 pool, the last
    two stages have a second conv. Global average pool → dropout → linear head.

    ``pooling="avg"`` (default) downsamples by 2×2 averages, ``"max"`` by 2×2 maxima
    (the network of model folders written before the option existed). Averaging the
    rectified filter responses estimates the energy of faint texture (stress fibres)
    with less noise than taking their maximum: on the benchmark's bright-field
    regression set it lowered the mean APE against the true modulus from 30.0 % to
    29.2 % and trained 10 % faster, while the classifier did better with maxima
    (:meth:`TrainConfig.pooling_for` picks per task; ``benchmarks/stiffness.py``).
    At ``width=16`` on 64×64 crops: ~0.4 M parameters, ~15 M multiply-adds per crop.

    Crops larger than 64 px (finer pixels, e.g. 128 px for texture such as stress
    fibres) get one extra stem stage (conv3×3 to ``width/2`` channels + 2×2 pool)
    per doubling, so the receptive field covers the same fraction of the crop and
    the cost grows by ~40 % per doubling instead of 4×.
    """

    def __init__(self, in_channels: int, n_outputs: int, width: int = 16, dropout: float = 0.2, input_pixels: int = 64, pooling: str = "avg") -> None:
        super().__init__()
        if pooling not in POOLINGS:
            raise ConfigError(f"unknown pooling {pooling!r}; choose one of {', '.join(POOLINGS)}")
        pool_layer = nn.AvgPool2d if pooling == "avg" else nn.MaxPool2d

        def block(c_in: int, c_out: int, n_conv: int, pool: bool) -> list[nn.Module]:
            layers: list[nn.Module] = []
            for k in range(n_conv):
                layers += [nn.Conv2d(c_in if k == 0 else c_out, c_out, 3, padding=1, bias=False), nn.BatchNorm2d(c_out), nn.ReLU(inplace=True)]
            if pool:
                layers.append(pool_layer(2))
            return layers

        w = width
        stem: list[nn.Module] = []
        c_in = in_channels
        for _ in range(_extra_stages(input_pixels)):
            stem += block(c_in, max(w // 2, 4), 1, True)
            c_in = max(w // 2, 4)
        self.features = nn.Sequential(
            *stem,
            *block(c_in, w, 1, True),
            *block(w, 2 * w, 1, True),
            *block(2 * w, 4 * w, 1, True),
            *block(4 * w, 8 * w, 2, True),
            *block(8 * w, 8 * w, 2, False),
        )
        self.head = nn.Sequential(nn.Flatten(), nn.Dropout(dropout), nn.Linear(8 * w, n_outputs))

    def forward(self, x: torch.Tensor) -> torch.Tensor:  # noqa: D102
        h = self.features(x)
        return self.head(torch.flatten(nn.functional.adaptive_avg_pool2d(h, 1), 1))


def _extra_stages(input_pixels: int) -> int:
    """Stem stages needed to bring ``input_pixels`` down to the 64-px design size."""
    n = 0
    while input_pixels >= 2 * 64 * 0.75 and n < 4:  # 96 px and up → one stage per doubling
        input_pixels //= 2
        n += 1
    return n


def build_network(architecture: str, in_channels: int, n_outputs: int, width: int = 16, input_pixels: int = 64, pooling: str = "avg") -> nn.Module:
    """Construct a network by name (see :data:`ARCHITECTURES`).

    ``input_pixels`` (crop edge length) sets the stem of the compact CNN and
    ``pooling`` its downsampling (see :class:`CompactCNN`); the MONAI networks adapt
    through their own global pooling and ignore both.
    """
    if architecture == "compact":
        return CompactCNN(in_channels, n_outputs, width=width, input_pixels=input_pixels, pooling=pooling)
    if architecture == "resnet":
        from monai.networks.nets import resnet18

        return resnet18(spatial_dims=2, n_input_channels=in_channels, num_classes=n_outputs, pretrained=False)
    if architecture == "densenet":
        from monai.networks.nets import DenseNet121

        return DenseNet121(spatial_dims=2, in_channels=in_channels, out_channels=n_outputs, pretrained=False)
    if architecture == "efficientnet":
        from monai.networks.nets import EfficientNetBN

        return EfficientNetBN("efficientnet-b0", pretrained=False, spatial_dims=2, in_channels=in_channels, num_classes=n_outputs)
    raise ConfigError(f"unknown architecture {architecture!r}; choose one of {', '.join(ARCHITECTURES)}")
