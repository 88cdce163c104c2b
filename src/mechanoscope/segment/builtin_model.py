"""The segmentation model shipped with the package (``builtin``).

The model folder ``mechanoscope/segment/builtin/`` (config.json, weights.safetensors,
normalization.json, metrics.json, provenance.json, MODEL_CARD.md) is made by
``scripts/train_builtin_segmenter.py`` and installed as package data; it loads
offline like any model folder written by ``segment train``.
"""

from __future__ import annotations

import os
from pathlib import Path

from mechanoscope.errors import MechanoscopeError

__all__ = ["BUILTIN_NAME", "builtin_model_path", "resolve_model_folder"]

#: the name that selects the shipped model wherever a model folder is accepted
BUILTIN_NAME = "builtin"


def builtin_model_path() -> Path:
    """Folder of the built-in segmentation model inside the installed package.

    Raises
    ------
    MechanoscopeError
        The folder is missing (a broken installation).
    """
    path = Path(__file__).resolve().parent / BUILTIN_NAME
    if not (path / "weights.safetensors").is_file() or not (path / "config.json").is_file():
        raise MechanoscopeError(
            f"{path}: the built-in segmentation model is missing from this installation; "
            "reinstall mechanoscope, or retrain it with scripts/train_builtin_segmenter.py"
        )
    return path


def resolve_model_folder(model: str | os.PathLike[str]) -> Path:
    """``"builtin"`` → :func:`builtin_model_path`; anything else as a path."""
    if isinstance(model, str) and model.lower() == BUILTIN_NAME:
        return builtin_model_path()
    return Path(model)
