"""Reading real-time deformability cytometry (RT-DC) ``.rtdc`` files with dclab.

dclab opens the file (HDF5, also dclab-compressed ones when ``hdf5plugin`` is
installed); this module only turns its errors into messages naming the file and
collects the measurement settings the Young's-modulus look-up needs.
"""

from __future__ import annotations

import os
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Optional

import numpy as np

from mechanoscope.errors import MechanoscopeError

__all__ = ["RTDCReadError", "RTDCSetup", "open_rtdc", "rtdc_setup", "write_rtdc"]


class RTDCReadError(MechanoscopeError):
    """An RT-DC file is missing, unreadable, or lacks what a stage needs (images, metadata)."""


@dataclass(frozen=True)
class RTDCSetup:
    """Settings of one RT-DC measurement (None where the file does not record them)."""

    channel_width_um: Optional[float]
    flow_rate_ul_s: Optional[float]
    medium: Optional[str]
    temperature_c: Optional[float]
    pixel_size_um: Optional[float]
    has_temperature_feature: bool
    n_events: int


def open_rtdc(path: str | os.PathLike[str]) -> Any:
    """Open an ``.rtdc`` file with dclab; :class:`RTDCReadError` with the file's name if that fails."""
    p = Path(path)
    if not p.is_file():
        raise RTDCReadError(f"{p}: no such RT-DC file")
    if p.stat().st_size == 0:
        raise RTDCReadError(f"{p}: the file is empty")
    try:
        import dclab
    except ImportError as exc:  # pragma: no cover - rtdc extra missing
        raise RTDCReadError("reading RT-DC files needs dclab: pip install 'mechanoscope[rtdc]'") from exc
    try:
        import hdf5plugin  # noqa: F401  (zstd-compressed datasets)
    except ImportError:  # pragma: no cover - optional
        pass
    try:
        return dclab.new_dataset(p)
    except Exception as exc:
        raise RTDCReadError(f"{p}: could not be read as an RT-DC file — truncated or not .rtdc? ({type(exc).__name__}: {exc})") from None


def _get(cfg: Any, section: str, key: str) -> Any:
    try:
        return cfg[section][key]
    except (KeyError, TypeError):
        return None


def rtdc_setup(ds: Any) -> RTDCSetup:
    """Channel width (µm), flow rate (µL/s), medium, temperature (°C), pixel size (µm) of a dataset."""
    cfg = ds.config
    temp = _get(cfg, "setup", "temperature")
    px = _get(cfg, "imaging", "pixel size")
    return RTDCSetup(
        channel_width_um=_num(_get(cfg, "setup", "channel width")),
        flow_rate_ul_s=_num(_get(cfg, "setup", "flow rate")),
        medium=None if _get(cfg, "setup", "medium") in (None, "", "other") else str(_get(cfg, "setup", "medium")),
        temperature_c=_num(temp),
        pixel_size_um=_num(px),
        has_temperature_feature="temp" in ds.features_innate,
        n_events=int(len(ds)),
    )


def _num(v: Any) -> Optional[float]:
    try:
        f = float(v)
    except (TypeError, ValueError):
        return None
    return f if np.isfinite(f) and f > 0 else None


def write_rtdc(path: str | os.PathLike[str], features: dict[str, np.ndarray], metadata: dict[str, dict[str, Any]]) -> Path:
    """Write events as an ``.rtdc`` file with dclab's ``RTDCWriter`` (temporary name, then renamed).

    Parameters
    ----------
    path
        Output file.
    features
        dclab feature name → array with one entry per event (``image``/``image_bg``:
        (N, Y, X) uint8, ``mask``: (N, Y, X) bool, scalar features: (N,)).
    metadata
        dclab metadata sections (``experiment``, ``imaging``, ``setup``, …).

    Raises
    ------
    RTDCReadError
        dclab refuses a feature or metadata key (the message names the file).
    """
    from dclab import RTDCWriter

    from mechanoscope.io.atomic import atomic_path

    p = Path(path)
    try:
        with atomic_path(p) as tmp:
            with RTDCWriter(tmp, mode="reset") as writer:
                writer.store_metadata(metadata)
                for name, data in features.items():
                    writer.store_feature(name, np.asarray(data))
    except (ValueError, KeyError, TypeError) as exc:
        raise RTDCReadError(f"{p}: dclab could not write the events ({exc})") from None
    return p
