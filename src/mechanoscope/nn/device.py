"""Device choice for every network: ``auto`` (CUDA when present, else CPU), ``cpu`` or ``cuda``."""

from __future__ import annotations

from typing import Any

from mechanoscope.errors import (
    ConfigError,
)

__all__ = ["select_device"]


def select_device(name: str) -> Any:
    import torch

    if name not in ("auto", "cpu", "cuda"):
        raise ConfigError(f"device {name!r} is not known; use 'auto', 'cpu' or 'cuda'")
    if name == "cuda" or (name == "auto" and torch.cuda.is_available()):
        if not torch.cuda.is_available():
            raise ConfigError("device='cuda' was asked for but no CUDA GPU is available; use 'auto' or 'cpu'")
        return torch.device("cuda")
    return torch.device("cpu")


