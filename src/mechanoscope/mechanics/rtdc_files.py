"""Several RT-DC files → one run folder (one cell table, one crop store).

A measurement campaign is many ``.rtdc`` files (one per sample, condition or replicate).
:func:`import_rtdc_files` imports each with :func:`mechanoscope.mechanics.rtdc.import_rtdc`
into its own part folder (``parts/rtdc/<file stem>/``), then consolidates the parts that
succeeded into the run's ``cells.parquet`` and ``crops.zarr`` (rows of the table and crops
in the same order; every event keeps its ``rtdc_file`` and its ``image_id``
``<file stem>_<event>``) and writes ``rtdc.json`` with each file's settings, counts and
notes. A file that cannot be imported is recorded (file and message) and skipped; the
others are imported. The crop store is committed atomically and the table written after
it; part folders are removed at the end, and a rerun removes what a killed import left
(a table that does not match its crops is refused when the run is loaded). One file is
imported straight into the run folder, exactly as :func:`import_rtdc` does.
"""

from __future__ import annotations

import os
import shutil
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd

from mechanoscope.errors import MechanoscopeError
from mechanoscope.io.rtdc import RTDCReadError
from mechanoscope.mechanics.rtdc import RTDCImportConfig, RTDCImportResult, import_rtdc

__all__ = ["RTDCFilesResult", "import_rtdc_files"]

#: Crops copied per read from a part's store while consolidating.
_COPY_CHUNK = 512


@dataclass
class RTDCFilesResult:
    """What :func:`import_rtdc_files` wrote."""

    out_dir: Path
    table: pd.DataFrame
    files: list[dict[str, Any]]
    """Per file: ``file``, ``status`` (``"imported"`` or ``"failed"``), counts and notes or ``error``."""
    n_events: int
    n_imported: int
    n_outside_lut: int
    events_per_second: float
    failed: list[dict[str, str]] = field(default_factory=list)
    """``{"file", "error"}`` of every file that could not be imported."""
    results: list[RTDCImportResult] = field(default_factory=list)
    """The per-file import results, in input order (imported files only)."""


def _check_names(paths: Sequence[Path]) -> None:
    """Event ids are ``<stem>_<event>``: two files with one stem would give the same ids."""
    seen: dict[str, Path] = {}
    for p in paths:
        if p.stem in seen:
            raise RTDCReadError(f"{seen[p.stem]} and {p} have the same name ({p.stem}); their events would get the same "
                                "image ids. Rename one of them (e.g. add the sample or date) and import again")
        seen[p.stem] = p


def _imported_record(path: Path, res: RTDCImportResult) -> dict[str, Any]:
    """What rtdc.json and the result say of one imported file."""
    return {"file": str(path), "status": "imported", "n_events": res.n_events, "n_imported": res.n_imported,
            "n_outside_lut": res.n_outside_lut, "n_skipped": res.n_skipped, "settings": res.settings,
            "no_modulus": res.no_modulus, "notes": res.notes}


def _consolidate(parts: list[tuple[Path, RTDCImportResult]], out: Path, attrs: dict[str, Any]) -> pd.DataFrame:
    """Concatenate the parts' tables and stream their crops into ``out/crops.zarr``."""
    from mechanoscope.io.crop_store import CropStoreWriter, read_crop_store
    from mechanoscope.io.tables import write_table

    stores = [read_crop_store(part / "crops.zarr") for part, _ in parts]
    first = stores[0]
    for (part, _), st in zip(parts, stores):
        if (st.crop_pixels, st.crop_size_um, st.channels) != (first.crop_pixels, first.crop_size_um, first.channels):
            raise MechanoscopeError(f"{part}: crops differ in geometry from the first file's; import with one --crop-size-um/--crop-pixels")
    with CropStoreWriter(out / "crops.zarr", crop_size_um=first.crop_size_um, crop_pixels=first.crop_pixels,
                         channels=first.channels, attrs=attrs) as writer:
        for st in stores:
            pad = dict(zip(st.attrs.get("image_ids", []), st.attrs.get("pad_values", [])))
            for a in range(0, len(st), _COPY_CHUNK):
                block = np.asarray(st.crops[a : a + _COPY_CHUNK])
                ids = st.image_ids[a : a + _COPY_CHUNK]
                # rows of one image are contiguous (the writer appends image by image)
                starts = np.flatnonzero(np.r_[True, ids[1:] != ids[:-1]])
                for s, e in zip(starts, np.r_[starts[1:], len(ids)]):
                    writer.append(block[s:e], image_id=str(ids[s]), cell_ids=st.cell_ids[a + s : a + e],
                                  frames=st.frames[a + s : a + e], pad_value=pad.get(str(ids[s])))
    cells = pd.concat([res.table for _, res in parts], ignore_index=True)
    write_table(cells, out / "cells.parquet")
    return cells


def import_rtdc_files(
    paths: Sequence[str | os.PathLike[str]],
    out_dir: str | os.PathLike[str],
    config: RTDCImportConfig | dict[str, Any] | None = None,
    *,
    labels: pd.DataFrame | None = None,
    progress: Callable[[str, int, int], None] | None = None,
) -> RTDCFilesResult:
    """Import several RT-DC files into one run folder.

    Parameters
    ----------
    paths
        ``.rtdc`` files; their names (without suffix) must differ.
    out_dir
        Run folder: ``cells.parquet``, ``crops.zarr``, ``rtdc.json``.
    config
        Import settings applied to every file (each file's own metadata fills what is
        not given, as in :func:`~mechanoscope.mechanics.rtdc.import_rtdc`).
    labels
        Optional per-event table with ``rtdc_event`` and, for several files, a ``file``
        column naming each event's file.
    progress
        ``progress(file_name, done, total)`` per event.

    Raises
    ------
    RTDCReadError
        No file given, two files with the same name, or no file could be imported (the
        message lists each file's error). A file that fails while others succeed is
        recorded in the result and in ``rtdc.json`` instead.
    """
    from mechanoscope import __version__
    from mechanoscope.io.atomic import write_json

    files = [Path(p) for p in paths]
    if not files:
        raise RTDCReadError("no RT-DC file given; pass one or more .rtdc files")
    _check_names(files)
    cfg = config if isinstance(config, RTDCImportConfig) else RTDCImportConfig.build(**dict(config or {}))
    if labels is not None and len(files) > 1 and "file" not in labels.columns:
        raise RTDCReadError(f"the labels table has no 'file' column, but {len(files)} files are imported; "
                            "add a 'file' column naming each event's .rtdc file")
    out = Path(out_dir)
    if len(files) == 1:
        res = import_rtdc(files[0], out, cfg, labels=labels,
                          progress=None if progress is None else (lambda i, n: progress(files[0].name, i, n)))
        return RTDCFilesResult(out, res.table, [_imported_record(files[0], res)], res.n_events, res.n_imported, res.n_outside_lut,
                               res.events_per_second, [], [res])
    staging = out / "parts" / "rtdc"
    if staging.exists():  # what a killed import left
        shutil.rmtree(staging)
    t0 = time.perf_counter()
    done: list[tuple[Path, RTDCImportResult]] = []
    records: list[dict[str, Any]] = []
    failed: list[dict[str, str]] = []
    for p in files:
        part = staging / p.stem
        tick = None if progress is None else (lambda i, n, _name=p.name: progress(_name, i, n))
        try:
            res = import_rtdc(p, part, cfg, labels=labels, progress=tick)
        except (MechanoscopeError, OSError, ValueError, KeyError, RuntimeError) as exc:  # the latter: a damaged file dclab/h5py did not foresee
            msg = str(exc) if isinstance(exc, MechanoscopeError) else (
                f"{p}: could not be imported ({type(exc).__name__}: {exc}); check the file (e.g. open it in dclab or Shape-Out)")
            failed.append({"file": str(p), "error": msg})
            records.append({"file": str(p), "status": "failed", "error": msg})
            continue
        done.append((part, res))
        records.append(_imported_record(p, res))
    if not done:
        shutil.rmtree(staging, ignore_errors=True)
        raise RTDCReadError("no RT-DC file could be imported:\n" + "\n".join(f["error"] for f in failed))
    cells = _consolidate(done, out, {"sources": [str(r["file"]) for r in records if r["status"] == "imported"],
                                     "mechanoscope_version": __version__})
    seconds = time.perf_counter() - t0
    n_events = sum(r.n_events for _, r in done)
    n_out = sum(r.n_outside_lut for _, r in done)
    eps = sum(min(r.n_events, cfg.max_events or r.n_events) for _, r in done) / seconds if seconds > 0 else float("inf")
    write_json({
        "config": cfg.model_dump(mode="json"), "files": records, "n_files": len(files), "n_failed": len(failed),
        "n_events": n_events, "n_imported": len(cells), "n_outside_lut": n_out,
        "events_per_second": round(eps, 2), "outputs": {"cells": "cells.parquet", "crops": "crops.zarr"},
        "provenance": {"function": "mechanoscope.mechanics.rtdc_files.import_rtdc_files", "mechanoscope": __version__,
                       "dclab": __import__("dclab").__version__},
    }, out / "rtdc.json")
    shutil.rmtree(staging, ignore_errors=True)
    if (out / "parts").is_dir() and not any((out / "parts").iterdir()):
        (out / "parts").rmdir()
    return RTDCFilesResult(out, cells, records, n_events, len(cells), n_out, eps, failed, [r for _, r in done])
