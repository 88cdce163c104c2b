"""Reading and writing tables (Parquet or CSV, chosen by suffix), atomically."""

from __future__ import annotations

import os
from pathlib import Path

import pandas as pd

from mechanoscope.errors import MechanoscopeError
from mechanoscope.io.atomic import atomic_path

__all__ = ["read_table", "write_table"]


def write_table(table: pd.DataFrame, path: str | os.PathLike[str]) -> Path:
    """Write a table as Parquet (``.parquet``) or CSV (``.csv``), atomically.

    The index is not written. Column names should carry units (``area_um2``).
    """
    p = Path(path)
    suffix = p.suffix.lower()
    if suffix not in (".parquet", ".csv"):
        raise MechanoscopeError(f"{p}: tables are written as .parquet or .csv, not {suffix!r}")
    with atomic_path(p) as tmp:
        if suffix == ".parquet":
            table.to_parquet(tmp, index=False)
        else:
            table.to_csv(tmp, index=False)
    return p


def read_table(path: str | os.PathLike[str]) -> pd.DataFrame:
    """Read a Parquet or CSV table; clear error for missing or corrupt files."""
    p = Path(path)
    if not p.exists():
        raise MechanoscopeError(f"{p}: no such table file")
    suffix = p.suffix.lower()
    try:
        if suffix == ".parquet":
            return pd.read_parquet(p)
        if suffix == ".csv":
            return pd.read_csv(p)
    except Exception as exc:
        raise MechanoscopeError(
            f"{p}: could not be read as a {suffix[1:]} table ({type(exc).__name__}: {exc})"
        ) from exc
    raise MechanoscopeError(f"{p}: tables are read from .parquet or .csv, not {suffix!r}")
