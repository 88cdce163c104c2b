"""Numeric precision of inference: float32 (the default) or bfloat16 autocast.

:func:`inference_precision` resolves a setting (``"fp32"``, ``"bf16"``; ``None``: the
environment variable ``MECHANOSCOPE_INFERENCE_PRECISION``, else ``"fp32"``) and
:func:`inference_autocast` runs a block in it on a device. :func:`native_bf16` says
whether the device computes bfloat16 in hardware (AVX512-BF16 or AMX on the CPU; on
CUDA, ``torch.cuda.is_bf16_supported``); elsewhere bfloat16 is emulated and slower
than float32.

Why float32 stays the default (``benchmarks/throughput.py``, 2-core AVX512-BF16 CPU):
bf16 autocast with channels-last runs the compact CNN 1.3–1.6× faster at batch 256,
and on models trained for 15 epochs it moves probabilities by ≤ 4e-3, moduli by
≤ 0.2 % and applicability-domain scores by ≤ 0.7 %; but the domain score is a
Mahalanobis distance in the penultimate features, and on a barely trained model
(1 epoch, nearly collinear features) bf16 rounding moved it by up to 39 % and flipped
one cell's verdict of 143. A prediction's numbers should not depend on the CPU it ran
on, so bf16 is a choice (the environment variable, or ``predict_cells(precision="bf16")``),
recorded in a run's settings (``inference_precision``) when it is not fp32.
"""

from __future__ import annotations

import contextlib
import os
from collections.abc import Iterator
from typing import Any

__all__ = ["PRECISIONS", "PRECISION_ENV", "inference_autocast", "inference_precision", "native_bf16"]

#: Environment variable that sets the inference precision when none is passed.
PRECISION_ENV = "MECHANOSCOPE_INFERENCE_PRECISION"
PRECISIONS = ("fp32", "bf16")


def inference_precision(precision: str | None = None) -> str:
    """``precision`` checked (``fp32`` or ``bf16``); ``None``: ``MECHANOSCOPE_INFERENCE_PRECISION`` or ``fp32``."""
    from mechanoscope.errors import ConfigError

    where = "precision"
    if precision is None:
        precision = os.environ.get(PRECISION_ENV, "").strip() or "fp32"
        where = PRECISION_ENV
    p = str(precision).strip().lower()
    if p not in PRECISIONS:
        raise ConfigError(f"{where}={precision!r}: expected one of {', '.join(PRECISIONS)} (fp32 is the default; bf16 is faster on CPUs with native bfloat16)")
    return p


def native_bf16(device: Any = "cpu") -> bool:
    """Whether ``device`` computes bfloat16 in hardware (CPU: AVX512-BF16 or AMX; CUDA: ``is_bf16_supported``)."""
    import torch

    if getattr(device, "type", str(device)).startswith("cuda"):
        return bool(torch.cuda.is_available() and torch.cuda.is_bf16_supported())
    cpu = torch.cpu
    return bool(getattr(cpu, "_is_avx512_bf16_supported", lambda: False)() or getattr(cpu, "_is_amx_tile_supported", lambda: False)())


@contextlib.contextmanager
def inference_autocast(device: Any, precision: str) -> Iterator[None]:
    """Run the block under ``torch.autocast(device, bfloat16)`` for ``precision == "bf16"``; as it is for ``fp32``."""
    import torch

    if inference_precision(precision) == "fp32":
        yield
        return
    with torch.autocast(device_type=getattr(device, "type", str(device)), dtype=torch.bfloat16):
        yield
