"""Prediction over a folder of images or a run folder: segment → extract → predict with one or more model folders."""

from __future__ import annotations

import json
import os
import time
from pathlib import Path
from collections.abc import Callable, Mapping, Sequence
from typing import Any

import numpy as np
import pandas as pd

from mechanoscope import __version__
from mechanoscope.errors import BatchFailedError, ConfigError, MechanoscopeError
from mechanoscope.io import write_json

__all__ = ["predict_run"]


def _domain_summary(table: pd.DataFrame, models: list) -> dict:
    from mechanoscope.learn.domain import domain_summary

    return domain_summary(table, models)


def _join_image_columns(table: pd.DataFrame, columns: Mapping[str, Mapping[str, Any]]) -> pd.DataFrame:
    """Add per-image columns (e.g. parsed from file names) to every cell row of that image."""
    names = sorted({k for v in columns.values() for k in v})
    clash = [n for n in names if n in table.columns]
    if clash:
        raise ConfigError(f"layout columns {', '.join(clash)} already exist in the cell table; rename the pattern's groups")
    for n in names:
        table[n] = table["image_id"].astype(str).map(lambda i, n=n: (columns.get(i) or {}).get(n)).astype(object) if len(table) else pd.Series(dtype=object)
    return table


def _segmentation_qc(status: list[dict], table: pd.DataFrame, image_columns: Mapping[str, Mapping[str, Any]] | None) -> dict:
    """Images (and conditions) where segmentation found nothing or far too little (:func:`~mechanoscope.metrics.segmentation_qc.segmentation_qc`)."""
    from mechanoscope.metrics.segmentation_qc import segmentation_qc

    done = [e for e in status if e.get("status") == "done"]
    groups: dict[str, str] = {}
    if image_columns and any("condition" in v for v in image_columns.values()):
        groups = {k: str(v["condition"]) for k, v in image_columns.items() if "condition" in v}
    elif len(table) and "condition" in table.columns:
        groups = {str(k): str(v) for k, v in table.groupby("image_id")["condition"].first().items()}
    return segmentation_qc(done, groups or None)


def _is_run(path: Path) -> bool:
    return path.is_dir() and (path / "cells.parquet").exists() and (path / "crops.zarr").exists()


def _split_column(table: pd.DataFrame, models: list) -> pd.Series | None:
    """Which cells a model trained/validated/calibrated on; everything else is ``test``.

    A cell counts as held out only if no model used its group for anything but testing.
    """
    rank = {"train": 3, "val": 2, "calibration": 1, "test": 0}
    best = None
    for m in models:
        sp = m.split or {}
        col = sp.get("group_column")
        if not col or col not in table.columns:
            continue
        where = {g: name for name, gs in sp.get("groups", {}).items() for g in gs}
        this = table[col].astype(str).map(lambda g: where.get(g, "test"))
        best = this if best is None else pd.Series(np.where(this.map(rank) > best.map(rank), this, best), index=table.index)
    return best


def _predict_images(src: Path, out: Path, loaded: list, identities: list[dict], *, segmentation: str, pixel_size_um: float | None, extract_config: dict | None,
                    batch_size: int, progress: Callable[[str, int, int], None], overwrite: bool, max_pixels: int | None,
                    command: str | list[str] | None, paths: Sequence[Path] | None = None, segmentation_settings: dict | None = None,
                    client: Any | None = None) -> tuple[pd.DataFrame, Any, float]:
    """Images → run folder, one field at a time (:func:`~mechanoscope.pipeline.field_run.run_fields`).

    Returns the consolidated table, the :class:`~mechanoscope.io.run_folder.RunFolder`
    that recorded the run and the seconds spent predicting (summed over the finished
    images).
    """
    from mechanoscope.io.images import image_paths, max_pixels_limit
    from mechanoscope.pipeline.field import extract_config_for
    from mechanoscope.pipeline.field_run import run_fields
    from mechanoscope.segment.batch import build_segmenter

    max_pixels_limit(max_pixels)  # a bad limit fails before any work
    paths = list(paths) if paths is not None else image_paths(src)
    segmenter, method_info, seg_cfg = build_segmenter(segmentation, segmentation_settings)
    ecfg = extract_config_for(loaded, extract_config, pixel_size_um=pixel_size_um)
    settings = {
        "segmentation": method_info,
        "segmentation_config": seg_cfg.model_dump(mode="json"),
        "pixel_size_um": pixel_size_um,
        "extract_config": ecfg.model_dump(mode="json"),
        # a model retrained into the same folder has another digest: its predictions are never mixed with the old one's
        "models": [{"model_path": i["path"], "sha256": i["sha256"], "task": m.task, "target": m.config["target"], "model_type": m.config["model_type"]}
                   for m, i in zip(loaded, identities)],
    }
    from mechanoscope.nn.precision import inference_precision

    if (prec := inference_precision()) != "fp32":  # bf16 numbers are never mixed with fp32 ones on resume (fp32 runs keep their old settings)
        settings["inference_precision"] = prec
    extra = {"source": str(src), "segmentation": segmentation}
    spec = json.dumps({"segmentation": segmentation, "segmentation_settings": segmentation_settings or {}, "models": [str(m.path) for m in loaded],
                       "extract_config": ecfg.model_dump(mode="json")}, sort_keys=True) if client is not None else None
    res = run_fields(paths, out, segmenter=segmenter, models=loaded, extract_config=ecfg, settings=settings, pixel_size_um=pixel_size_um,
                     batch_size=batch_size, overwrite=overwrite, max_pixels=max_pixels, record_extra=extra, models_identity=identities, command=command,
                     progress=lambda i, n, name: progress("segment → extract → predict", i, n), client=client, worker_spec=spec)
    pred_seconds = sum(float(e.get("seconds", {}).get("predict", 0.0)) for e in res.status if e["status"] == "done")
    return res.table, res.run, pred_seconds


def predict_run(
    source: str | os.PathLike[str],
    models: list,
    out: str | os.PathLike[str],
    *,
    segmentation: str = "builtin",
    pixel_size_um: float | None = None,
    extract_config: dict | None = None,
    batch_size: int = 256,
    progress: Callable[[str, int, int], None] | None = None,
    overwrite: bool = False,
    max_pixels: int | None = None,
    command: str | list[str] | None = None,
    paths: Sequence[str | os.PathLike[str]] | None = None,
    segmentation_settings: dict | None = None,
    image_columns: Mapping[str, Mapping[str, Any]] | None = None,
    client: Any | None = None,
) -> dict:
    """Predict every cell of ``source`` with one or more model folders.

    ``source`` is a run folder (``cells.parquet`` + ``crops.zarr``) or images: then
    each image is read once and processed as one field of view
    (:func:`~mechanoscope.pipeline.field.process_field`: segmented with
    ``segmentation`` (default ``"builtin"``, the shipped model; ``"classical"``; or a segmentation model folder); extracted with
    the crop geometry the first CNN model expects; predicted), one image at a time
    (:func:`~mechanoscope.pipeline.field_run.run_fields`), so memory is bounded by one
    field. Writes ``out/labels/<image>.tif``, ``out/parts/predict/`` (per-image rows
    and crops), ``out/crops.zarr`` and ``out/cells.parquet`` with ``pred_*`` columns
    (and a ``split`` column that marks cells a model trained on, so evaluation uses
    only held-out cells). The run is recorded in ``out/run.json``
    (:class:`~mechanoscope.io.run_folder.RunFolder`, stage ``predict``: settings, the
    models' identity with a digest of their files, the columns they wrote and, for
    images, a per-image ``status``: ``done``, or ``failed`` with the file, stage and
    message; an image that fails is skipped, the others go on), rewritten after every
    image: a killed run, run again, skips the finished images and redoes the partial
    one. ``out/predict.json`` repeats the summary for older readers. ``overwrite``
    redoes every image, also when ``out`` holds results made with other settings
    (refused otherwise); a run in which no image finished never blocks a corrected
    re-run. From a run folder, ``pred_*``/``split`` columns of an earlier prediction
    are removed (with a warning) before this run's models predict. If no image at all
    can be used a
    :class:`~mechanoscope.errors.BatchFailedError` is raised.

    For images, ``paths`` (files in the order of the table) replaces the images of
    ``source`` (then only a label for the record), ``segmentation_settings`` configure
    the segmenter, ``image_columns[image_id]`` adds per-image columns (plate, well,
    condition …) to the table, and a Dask ``client`` processes the images on its
    workers (:mod:`mechanoscope.pipeline.cluster`) with the same results.
    """
    import shutil
    import warnings

    from mechanoscope.errors import MechanoscopeWarning
    from mechanoscope.learn.data import load_run
    from mechanoscope.learn.predict import load_stiffness_model, predict_cells
    from mechanoscope.io import check_output_folder_path, make_output_folder, write_table
    from mechanoscope.io.crop_store import check_crops_match_table, read_crop_store

    from mechanoscope.io.run_folder import RunFolder, model_identity

    t0 = time.perf_counter()
    say = progress or (lambda *a: None)
    src, out = Path(source), Path(out)
    if not isinstance(batch_size, int) or batch_size < 1:
        raise ConfigError(f"batch size must be a whole number of at least 1 crop, got {batch_size!r} (--batch-size)")
    check_output_folder_path(out, "run folder (--out)")
    loaded = [m if hasattr(m, "members") else load_stiffness_model(m) for m in models]
    if not loaded:
        raise MechanoscopeError("no model given; pass at least one --model folder")
    identities = [{**m.identity, **model_identity(m.path)} for m in loaded]
    from_run = paths is None and _is_run(src)
    if from_run:
        same = src.resolve() == out.resolve()
        if not same:
            make_output_folder(out, "run folder (--out)")
            if (src / "run.json").is_file():  # the record of the stages that made the run comes along
                shutil.copy2(src / "run.json", out / "run.json")
        # a prediction of a whole run is always redone: nothing per image to resume
        run = RunFolder.open(out, "predict", {"source": str(src.resolve()), "models": [{"path": i["path"], "sha256": i["sha256"]} for i in identities]},
                             overwrite=True, models=identities, command=command)
        if not same:
            if (out / "crops.zarr").exists():
                shutil.rmtree(out / "crops.zarr")
            shutil.copytree(src / "crops.zarr", out / "crops.zarr")
            shutil.copy2(src / "cells.parquet", out / "cells.parquet")
            if (src / "labels").is_dir() and not (out / "labels").exists():
                shutil.copytree(src / "labels", out / "labels")
        table = load_run(out, with_crops=False).table
        stale = [c for c in table.columns if str(c).startswith("pred_") or c == "split"]
        if stale:  # predictions always come from the models of this run, never from an earlier one
            warnings.warn(f"{out / 'cells.parquet'}: removed the columns {', '.join(map(str, stale))} of an earlier prediction", MechanoscopeWarning, stacklevel=2)
            table = table.drop(columns=stale)
        store = read_crop_store(out / "crops.zarr")  # lazy: predict_cells reads batch_size crops at a time
        check_crops_match_table(table, store)
        t_pred = time.perf_counter()
        for m in loaded:
            pred = predict_cells(m, table, store.crops if len(table) else None, channels=store.channels, attrs=dict(store.attrs), batch_size=batch_size, progress=lambda i, k: say(f"predicting {m.config['target']}", i, k))
            table = table.drop(columns=[c for c in pred.columns if c in table.columns]).join(pred)
        pred_seconds = time.perf_counter() - t_pred
    else:
        table, run, pred_seconds = _predict_images(
            src, out, loaded, identities, segmentation=segmentation, pixel_size_um=pixel_size_um, extract_config=extract_config, batch_size=batch_size,
            progress=say, overwrite=overwrite, max_pixels=max_pixels, command=command,
            paths=[Path(p) for p in paths] if paths is not None else None, segmentation_settings=segmentation_settings, client=client)
        if image_columns:
            table = _join_image_columns(table, image_columns)
    n = len(table)
    split = _split_column(table, loaded)
    if split is not None:
        table["split"] = split.to_numpy()
    if n == 0:
        warnings.warn(f"{src}: no cell was found; wrote an empty cell table", MechanoscopeWarning, stacklevel=2)
    write_table(table, out / "cells.parquet")
    cls = next((m for m in loaded if m.task == "classification"), None)
    reg = next((m for m in loaded if m.task == "regression"), None)
    status = [] if from_run else list(run.images.values())
    info = {
        "mechanoscope_version": __version__,
        "created": time.strftime("%Y-%m-%dT%H:%M:%S%z"),
        "source": str(src),
        "models": identities,
        "model_path": ", ".join(str(m.path) for m in loaded),
        "classes": cls.config["classes"] if cls else None,
        "target": ", ".join(m.config["target"] for m in loaded),
        "interval_level": reg.config["interval_level"] if reg else None,
        "interval_method": "split-conformal on held-out calibration images" if reg else None,
        "domain": _domain_summary(table, loaded),
        "segmentation_qc": None if from_run else _segmentation_qc(status, table, image_columns),  # cells/images unlike the training images (learn/domain.py)
        "columns": [str(c) for c in table.columns if str(c).startswith("pred_") or c == "split"],
        "n_cells": int(n),
        "n_images": int(table["image_id"].nunique()) if n else 0,
        "segmentation": None if from_run else segmentation,
        "settings": run.settings if not from_run else None,
        "n_resumed": None if from_run else run.n_resumed,
        "complete": True,
        "status": status,
        "n_failed": sum(1 for e in status if e["status"] == "failed"),
        "prediction_seconds": round(pred_seconds, 3),
        "crops_per_second": round(n / pred_seconds, 1) if pred_seconds > 0 and n else None,
        "seconds": round(time.perf_counter() - t0, 2),
        "record": run.record_path.name,
    }
    run.save(complete=True, **{k: v for k, v in info.items() if k not in ("status", "complete", "n_failed", "settings", "mechanoscope_version")})
    write_json(info, out / "predict.json")  # the summary older readers know; run.json is the record
    info["record_path"] = str(run.record_path)
    return info
