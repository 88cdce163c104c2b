"""Many fields of view into one run folder, one field at a time, resumably.

:func:`run_fields` reads each image once and hands it to
:func:`~mechanoscope.pipeline.field.process_field`; per image it writes, each file
atomically (temporary name, then rename):

``OUT/labels/<image_id>.tif``                   the label image
``OUT/parts/predict/<image_id>.crops.npy``      the field's crops ``(n, C, P, P)`` float32
``OUT/parts/predict/<image_id>.parquet``        the field's cell rows (with ``pred_*`` columns)

and then records the image in ``OUT/run.json``
(:class:`~mechanoscope.io.run_folder.RunFolder`, stage ``predict``: ``done``, or
``failed`` with the file, stage and message, and timings). An image counts as finished
only when its status says ``done``, its three files exist and its file is unchanged,
so a run killed at any point resumes: finished images are skipped, a partial one is
redone, temporaries of the killed run are removed. The parts are then consolidated,
in the order of the images, into ``OUT/crops.zarr`` (crops in the table's row order,
streamed one field at a time) and the cell table that the caller writes as
``OUT/cells.parquet``.

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

import json
import time
import warnings
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd

from mechanoscope.errors import BatchFailedError, SkippedInputWarning, failure_message
from mechanoscope.io.atomic import make_output_folder
from mechanoscope.io.images import read_image, write_label_image
from mechanoscope.io.tables import write_table
from mechanoscope.pipeline.field import FieldError, process_field
from mechanoscope.segment.batch import SEGMENTATION_FIELDS, segmentation_fields

__all__ = ["run_fields", "FieldRunResult", "consolidate_parts", "process_file_to_parts", "record_outcome", "PARTS_FOLDER"]

PARTS_FOLDER = "parts"
LEGACY_RECORD = "predict.json"
"""The record of a predict run before ``run.json``."""
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
    run
        The :class:`~mechanoscope.io.run_folder.RunFolder` (stage ``predict``) that
        records the run; its ``run.json`` is complete once the caller saves it so.
    """

    table: pd.DataFrame
    status: list[dict] = field(default_factory=list)
    settings: dict = field(default_factory=dict)
    n_done: int = 0
    n_skipped: int = 0
    run: Any = None


def _legacy_predict_record(out: Path) -> dict | None:
    """The predict section of a folder written before ``run.json`` (its ``predict.json``).

    Its settings are kept, so other settings are still refused; its images are redone
    (the parts lay elsewhere then), which the files named here (of the present layout)
    make sure of.
    """
    try:
        old = json.loads((out / LEGACY_RECORD).read_text())
    except (OSError, ValueError):
        return None
    if not isinstance(old, dict) or "settings" not in old:
        return None
    images = {
        e["image_id"]: {"status": "done", "files": [f"labels/{e['image_id']}.tif", f"{PARTS_FOLDER}/predict/{e['image_id']}.parquet",
                                                     f"{PARTS_FOLDER}/predict/{e['image_id']}.crops.npy"]}
        for e in old.get("status", []) if isinstance(e, dict) and e.get("status") == "done" and "image_id" in e
    }
    return {"settings": old["settings"], "images": images}


def _has_labels(out: Path) -> bool:
    return (out / "labels").is_dir() and any((out / "labels").glob("*.tif"))


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
    models_identity: Sequence[dict] | None = None,
    command: str | Sequence[str] | None = None,
    client: Any | None = None,
    worker_spec: str | None = None,
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
        More keys for the ``predict`` section of ``run.json``.
    models_identity
        Identity of ``models`` (:func:`~mechanoscope.io.run_folder.model_identity`)
        recorded in ``run.json``.
    command
        Command line for the provenance (default ``sys.argv``).
    client, worker_spec
        A :class:`distributed.Client`: the images are processed as tasks on its workers
        (:mod:`mechanoscope.pipeline.cluster`), which build the segmenter and models from
        ``worker_spec`` (JSON: ``segmentation``, ``segmentation_settings``, ``models``,
        ``extract_config``); ``segmenter`` and ``models`` are then used only here. Results
        and the record are the same as without a client.

    Raises
    ------
    BatchFailedError
        No image could be processed (the record with every failure is written first).
    """
    from mechanoscope.io.run_folder import RunFolder, file_fingerprint

    run = RunFolder.open(out, "predict", settings, overwrite=overwrite, foreign_outputs=_has_labels, legacy=_legacy_predict_record,
                         models=models_identity, command=command)
    if record_extra:
        run.record["stages"]["predict"].update(record_extra)
    make_output_folder(run.labels_dir, "labels folder")
    make_output_folder(run.parts_dir, "parts folder")
    result = FieldRunResult(table=pd.DataFrame(), settings=run.settings, run=run)

    seen: dict[str, Path] = {}
    order: list[str] = []
    jobs: list[tuple[str, Path]] = []
    for k, path in enumerate(paths):
        path = Path(path)
        image_id = path.stem
        if image_id in seen:
            msg = f"{path}: another image has the same name {image_id!r} ({seen[image_id]}); skipped"
            run.mark_failed(f"{image_id}#{k}", image=path, stage="input", error=msg)
            warnings.warn(msg, SkippedInputWarning, stacklevel=2)
            continue
        seen[image_id] = path
        order.append(image_id)
        if run.finished(image_id, inputs=file_fingerprint([path])):
            result.n_skipped += 1
        else:
            jobs.append((image_id, path))
    n_seen = result.n_skipped
    if progress and n_seen:
        progress(n_seen, len(paths), "(finished earlier)")

    def finished_one(image_id: str, outcome: dict) -> None:
        nonlocal n_seen
        result.n_done += record_outcome(run, image_id, outcome)
        n_seen += 1
        if progress:
            progress(n_seen, len(paths), Path(outcome["image"]).name)

    if client is not None and jobs:
        from mechanoscope.pipeline.cluster import run_tasks

        if worker_spec is None:
            raise ValueError("run_fields with a client needs worker_spec")
        run_tasks(client, run.root, jobs, worker_spec, batch_size=batch_size, pixel_size_um=pixel_size_um, max_pixels=max_pixels, on_result=finished_one)
    else:
        for image_id, path in jobs:
            finished_one(image_id, process_file_to_parts(run.root, path, image_id, segmenter=segmenter, models=models, extract_config=extract_config,
                                                         batch_size=batch_size, pixel_size_um=pixel_size_um, max_pixels=max_pixels))
    run.save()
    status = run.images  # in input order, whatever order the images finished in
    result.status = [status[k] for k in order if k in status] + [e for k, e in status.items() if k not in order]
    done = [k for k in order if status.get(k, {}).get("status") == "done"]
    if not done:
        failed = run.failed
        shown = "; ".join(e["error"] for e in failed[:3]) + (" …" if len(failed) > 3 else "")
        raise BatchFailedError(
            f"no image could be processed ({len(failed)} failed; details in {run.record_path}): {shown}",
            [{"file": e["image"], "stage": e["stage"], "error": e["error"]} for e in failed],
        )
    result.table = consolidate_parts(run, done, extract_config)
    return result


def process_file_to_parts(root: Path, path: Path, image_id: str, *, segmenter: Any, models: Any, extract_config: Any, batch_size: int,
                          pixel_size_um: float | None, max_pixels: int | None) -> dict:
    """Read one image, process it and write its parts (label image, rows, crops) under ``root``; never raises.

    Writes no record: returns the outcome, ``{"status": "done", "files", "inputs", "seconds",
    "labels", "part", "n_cells", "pixel_size_um"}`` or ``{"status": "failed", "stage", "error",
    "seconds"}``, for the caller to record (:func:`record_outcome`). Runs in this process
    or on a Dask worker (:mod:`mechanoscope.pipeline.cluster`).
    """
    from mechanoscope.io.run_folder import RunFolder, file_fingerprint

    layout = RunFolder(Path(root), "predict", {"stages": {}}, {})  # paths only
    seconds: dict[str, float] = {}
    t0 = time.perf_counter()
    stage = "read"
    try:
        fingerprint = file_fingerprint([path])
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
        labels_path = layout.label_path(image_id)
        rows_path, crops_path = layout.part_paths(image_id)
        write_label_image(labels_path, res.labels, pixel_size_um=res.pixel_size_um)
        layout.save_crops(crops_path, res.crops)
        write_table(res.table, rows_path)  # written last: the part is complete
        seconds["write"] = time.perf_counter() - t
    except Exception as exc:  # one image never ends the batch: report it, go on
        msg = str(exc) if isinstance(exc, FieldError) else failure_message(exc, path)
        seconds["total"] = time.perf_counter() - t0
        return {"status": "failed", "image": str(path), "stage": _STAGE_NAMES.get(stage, stage), "error": msg, "seconds": seconds}
    seconds["total"] = time.perf_counter() - t0
    return {"status": "done", "image": str(path), "files": [str(labels_path), str(rows_path), str(crops_path)], "inputs": fingerprint,
            "seconds": seconds, "labels": layout.relative(labels_path), "part": layout.relative(rows_path), "n_cells": int(len(res.table)),
            "pixel_size_um": res.pixel_size_um, **segmentation_fields(res.labels, res.segmentation_confidence)}


def record_outcome(run: Any, image_id: str, outcome: dict) -> bool:
    """Record one :func:`process_file_to_parts` outcome in ``run`` (a :class:`~mechanoscope.io.run_folder.RunFolder`); whether it was done."""
    if outcome["status"] != "done":
        warnings.warn(f"skipped {outcome['error']}", SkippedInputWarning, stacklevel=3)
        run.mark_failed(image_id, image=outcome["image"], stage=outcome["stage"], error=outcome["error"], seconds=outcome["seconds"])
        return False
    info = {k: outcome[k] for k in ("labels", "part", "n_cells", "pixel_size_um", *SEGMENTATION_FIELDS) if k in outcome}
    run.mark_done(image_id, files=[Path(f) for f in outcome["files"]], image=outcome["image"], inputs=outcome["inputs"], seconds=outcome["seconds"], **info)
    return True


def consolidate_parts(run: Any, image_ids: Sequence[str], extract_config: Any) -> pd.DataFrame:
    """Join the parts of ``image_ids`` (in this order): crops into ``crops.zarr``, rows into the returned table.

    ``run`` is the :class:`~mechanoscope.io.run_folder.RunFolder` (stage ``predict``);
    see :meth:`~mechanoscope.io.run_folder.RunFolder.consolidate`.
    """
    from mechanoscope import __version__

    crop = extract_config.crop
    return run.consolidate(image_ids, crop_size_um=crop.crop_size_um, crop_pixels=crop.crop_pixels, channels=crop.channels,
                           attrs={"anti_aliasing": crop.anti_aliasing, "mechanoscope_version": __version__})
