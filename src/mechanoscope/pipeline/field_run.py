"""Many fields of view into one run folder, one field at a time, resumably.

:func:`run_fields` reads each image once and hands it to
:func:`~mechanoscope.pipeline.field.process_field`; per image it writes, each file
atomically (temporary name, then rename):

``OUT/labels/<image_id>.tif``            the label image
``OUT/parts/<image_id>.crops.npy``       the field's crops ``(n, C, P, P)`` float32
``OUT/parts/<image_id>.parquet``         the field's cell rows (with ``pred_*`` columns)

and then rewrites ``OUT/predict.json`` with the image's status (``done``, or ``failed``
with the file, stage and message) and timings. An image counts as finished only when
its status says ``done`` *and* its three files exist, so a run killed at any point
resumes: finished images are skipped, a partial one is redone, temporaries of the
killed run are removed. The parts are then consolidated, in the order of the images,
into ``OUT/crops.zarr`` (crops in the table's row order, streamed one field at a
time) and the cell table that the caller writes as ``OUT/cells.parquet``.

Why per-image crop files rather than appending to the crop store as images arrive:
a store appended in arrival order is left in an unknown state by a kill (half an
image's crops, or crops of an image the record does not call finished) and would have
to be truncated on resume; whole per-image files that appear by rename are either
complete or absent, and consolidating them in the images' order gives the same store
whatever order the images finished in. The cost is disk: the crops are kept twice
(parts and store), so that a later run over the same folder (e.g. with new images)
can consolidate again without redoing finished images.
"""

from __future__ import annotations

import contextlib
import json
import shutil
import time
import warnings
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd

from mechanoscope.errors import BatchFailedError, OutputFolderError, SkippedInputWarning, failure_message
from mechanoscope.io.atomic import atomic_path, make_output_folder, write_json
from mechanoscope.io.images import read_image, write_label_image
from mechanoscope.io.tables import write_table
from mechanoscope.pipeline.field import FieldError, process_field

__all__ = ["run_fields", "FieldRunResult", "consolidate_parts", "PARTS_FOLDER"]

PARTS_FOLDER = "parts"
RECORD = "predict.json"
# how process_field's stages are named in the record (the first three as segment/extract named them)
_STAGE_NAMES = {"read": "segment: read", "segment": "segment: segment", "extract": "extract: extract", "predict": "predict", "write": "write"}


@dataclass
class FieldRunResult:
    """What :func:`run_fields` did.

    Attributes
    ----------
    table
        The consolidated cell table (all finished images, in image order).
    status
        One entry per input image, in input order (``image_id``, ``image``,
        ``status``, and ``stage``/``error`` for failed ones, ``seconds`` per stage).
    settings
        What the results depend on (segmentation, extraction, models): a re-run with
        other settings is refused unless ``overwrite``.
    n_done, n_skipped
        Images processed now / already finished by an earlier run.
    """

    table: pd.DataFrame
    status: list[dict] = field(default_factory=list)
    settings: dict = field(default_factory=dict)
    n_done: int = 0
    n_skipped: int = 0


def _remove_temporaries(*folders: Path) -> None:
    """Delete what a killed run left under a temporary name (``.NAME.tmp-PID…``, ``.NAME.old-PID…``)."""
    for folder in folders:
        if not folder.is_dir():
            continue
        for p in folder.iterdir():
            if p.name.startswith(".") and (".tmp-" in p.name or ".old-" in p.name):
                with contextlib.suppress(FileNotFoundError):
                    shutil.rmtree(p) if p.is_dir() and not p.is_symlink() else p.unlink()


def _previous_record(out: Path, settings: dict, overwrite: bool) -> dict[str, dict]:
    """Status of an earlier run into ``out`` to resume from (``{}``: start afresh)."""
    path = out / RECORD
    previous: dict[str, Any] = {}
    if path.is_file():
        with contextlib.suppress(OSError, ValueError):
            previous = json.loads(path.read_text())
    entries = [e for e in previous.get("status", []) if isinstance(e, dict) and "image_id" in e]
    finished = any(e.get("status") == "done" for e in entries)
    has_labels = (out / "labels").is_dir() and any((out / "labels").glob("*.tif"))
    if overwrite:
        return {}
    if finished and previous.get("settings") != settings:
        raise OutputFolderError(
            f"{out}: holds a prediction made with other settings (segmentation, extraction or "
            "models); use another --out, or pass --overwrite to redo every image with these"
        )
    if not finished and has_labels and "settings" not in previous:
        raise OutputFolderError(
            f"{out}: has label images that no predict run of this folder made; use another --out "
            "or pass --overwrite"
        )
    return {e["image_id"]: e for e in entries} if finished else {}


def _finished(out: Path, image_id: str, entry: dict | None) -> bool:
    parts = out / PARTS_FOLDER
    return (
        entry is not None
        and entry.get("status") == "done"
        and (out / "labels" / f"{image_id}.tif").is_file()
        and (parts / f"{image_id}.parquet").is_file()
        and (parts / f"{image_id}.crops.npy").is_file()
    )


def _save_npy(path: Path, arr: np.ndarray) -> None:
    with atomic_path(path) as tmp:
        with open(tmp, "wb") as fh:
            np.save(fh, arr, allow_pickle=False)


def run_fields(
    paths: Sequence[Path],
    out: Path,
    *,
    segmenter: Callable[[np.ndarray, float], np.ndarray],
    models: Sequence[Any],
    extract_config: Any,
    settings: dict,
    pixel_size_um: float | None = None,
    batch_size: int = 256,
    overwrite: bool = False,
    max_pixels: int | None = None,
    progress: Callable[[int, int, str], None] | None = None,
    record_extra: dict | None = None,
) -> FieldRunResult:
    """Process every image of ``paths`` into the run folder ``out`` (see the module docstring).

    Parameters
    ----------
    paths
        Image files, in the order of the consolidated table.
    out
        Run folder (created).
    segmenter, models, extract_config, batch_size
        Passed to :func:`~mechanoscope.pipeline.field.process_field`.
    settings
        What the results depend on; stored in the record and compared on resume.
    pixel_size_um, max_pixels
        How to read the images.
    overwrite
        Redo every image, also when ``out`` holds results made with other settings.
    progress
        ``progress(done, total, file_name)`` after each image's status is written.
    record_extra
        More keys for ``predict.json`` while the run is under way.

    Raises
    ------
    BatchFailedError
        No image could be processed (the record with every failure is written first).
    """
    out = make_output_folder(out, "run folder (--out)")
    previous = _previous_record(out, settings, overwrite)
    labels_dir = make_output_folder(out / "labels", "labels folder")
    parts = make_output_folder(out / PARTS_FOLDER, "parts folder")
    _remove_temporaries(out, labels_dir, parts)
    result = FieldRunResult(table=pd.DataFrame(), settings=settings)
    entries: dict[str, dict] = {}
    order: list[str] = []

    def record() -> None:
        status = [entries[k] for k in order]
        write_json({**(record_extra or {}), "settings": settings, "complete": False, "status": status,
                    "n_failed": sum(1 for e in status if e["status"] == "failed")}, out / RECORD)

    seen: dict[str, Path] = {}
    for k, path in enumerate(paths):
        path = Path(path)
        image_id = path.stem
        if image_id in seen:
            msg = f"{path}: another image has the same name {image_id!r} ({seen[image_id]}); skipped"
            key = f"{image_id}#{k}"
            order.append(key)
            entries[key] = {"image_id": image_id, "image": str(path), "file": str(path), "status": "failed", "stage": "input", "error": msg}
            warnings.warn(msg, SkippedInputWarning, stacklevel=2)
            continue
        seen[image_id] = path
        order.append(image_id)
        if _finished(out, image_id, previous.get(image_id)):
            entries[image_id] = previous[image_id]
            result.n_skipped += 1
        else:
            entries[image_id] = _one(path, image_id, out, segmenter=segmenter, models=models, extract_config=extract_config, batch_size=batch_size,
                                     pixel_size_um=pixel_size_um, max_pixels=max_pixels)
            result.n_done += entries[image_id]["status"] == "done"
            record()
        if progress:
            progress(k + 1, len(paths), path.name)
    record()
    result.status = [entries[k] for k in order]
    done = [e["image_id"] for e in result.status if e["status"] == "done"]
    if not done:
        failed = [e for e in result.status if e["status"] == "failed"]
        shown = "; ".join(e["error"] for e in failed[:3]) + (" …" if len(failed) > 3 else "")
        raise BatchFailedError(
            f"no image could be processed ({len(failed)} failed; details in {out / RECORD}): {shown}",
            [{"file": e["image"], "stage": e["stage"], "error": e["error"]} for e in failed],
        )
    result.table = consolidate_parts(out, done, extract_config)
    return result


def _one(path: Path, image_id: str, out: Path, *, segmenter: Any, models: Any, extract_config: Any, batch_size: int, pixel_size_um: float | None, max_pixels: int | None) -> dict:
    """Process one image and write its files; its status entry (``done`` or ``failed``)."""
    seconds: dict[str, float] = {}
    t0 = time.perf_counter()
    stage = "read"
    try:
        img = read_image(path, pixel_size_um=pixel_size_um, max_pixels=max_pixels)
        seconds["read"] = time.perf_counter() - t0
        try:
            res = process_field(img, image_id=image_id, segmenter=segmenter, models=models, extract_config=extract_config, batch_size=batch_size)
        except FieldError as exc:
            stage = exc.stage
            raise
        del img
        seconds.update(res.seconds)
        stage = "write"
        t = time.perf_counter()
        write_label_image(out / "labels" / f"{image_id}.tif", res.labels, pixel_size_um=res.pixel_size_um)
        _save_npy(out / PARTS_FOLDER / f"{image_id}.crops.npy", res.crops)
        write_table(res.table, out / PARTS_FOLDER / f"{image_id}.parquet")  # written last: the part is complete
        seconds["write"] = time.perf_counter() - t
    except Exception as exc:  # one image never ends the batch: record it, go on
        msg = str(exc) if isinstance(exc, FieldError) else failure_message(exc, path)
        warnings.warn(f"skipped {msg}", SkippedInputWarning, stacklevel=3)
        seconds["total"] = time.perf_counter() - t0
        return {"image_id": image_id, "image": str(path), "file": str(path), "status": "failed", "stage": _STAGE_NAMES.get(stage, stage), "error": msg,
                "seconds": {k: round(v, 4) for k, v in seconds.items()}}
    seconds["total"] = time.perf_counter() - t0
    return {"image_id": image_id, "image": str(path), "status": "done", "labels": f"labels/{image_id}.tif", "part": f"{PARTS_FOLDER}/{image_id}.parquet",
            "n_cells": int(len(res.table)), "pixel_size_um": res.pixel_size_um, "seconds": {k: round(v, 4) for k, v in seconds.items()}}


def consolidate_parts(out: Path, image_ids: Sequence[str], extract_config: Any) -> pd.DataFrame:
    """Join the parts of ``image_ids`` (in this order): crops into ``out/crops.zarr``, rows into the returned table.

    Crops are streamed into the store one image at a time (it appears by rename); the
    caller writes the table (``cells.parquet``) after adding run-wide columns. A kill
    between the two leaves a table that does not match the store, which the next run
    (a resume) consolidates again.
    """
    from mechanoscope import __version__
    from mechanoscope.errors import MechanoscopeError
    from mechanoscope.io.crop_store import CropStoreWriter
    from mechanoscope.io.tables import read_table

    crop = extract_config.crop
    parts = out / PARTS_FOLDER
    tables: list[pd.DataFrame] = []
    with CropStoreWriter(out / "crops.zarr", crop_size_um=crop.crop_size_um, crop_pixels=crop.crop_pixels, channels=crop.channels,
                         attrs={"anti_aliasing": crop.anti_aliasing, "mechanoscope_version": __version__}) as writer:
        for image_id in image_ids:
            table = read_table(parts / f"{image_id}.parquet")
            crops = np.load(parts / f"{image_id}.crops.npy", allow_pickle=False)
            if len(crops) != len(table):
                raise MechanoscopeError(f"{parts}: {image_id} has {len(table)} cell rows but {len(crops)} crops; rerun with --overwrite")
            writer.append(crops, image_id=image_id, cell_ids=table["cell_id"].to_numpy(), frames=table["frame"].to_numpy(),
                          pad_value=float(table["crop_pad_value"].iloc[0]) if len(table) else None)
            tables.append(table)
            del crops
    nonempty = [t for t in tables if len(t)]
    return pd.concat(nonempty, ignore_index=True) if nonempty else tables[0].reset_index(drop=True)
