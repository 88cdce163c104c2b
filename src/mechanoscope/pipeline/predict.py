"""Prediction over a folder of images or a run folder: segment → extract → predict with one or more model folders."""

from __future__ import annotations

import os
import time
from pathlib import Path
from typing import Callable

import numpy as np
import pandas as pd

from mechanoscope import __version__
from mechanoscope.errors import BatchFailedError, ConfigError, MechanoscopeError
from mechanoscope.io import write_json

__all__ = ["predict_run"]


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


def predict_run(
    source: str | os.PathLike[str],
    models: list,
    out: str | os.PathLike[str],
    *,
    segmentation: str = "classical",
    pixel_size_um: float | None = None,
    extract_config: dict | None = None,
    batch_size: int = 256,
    progress: Callable[[str, int, int], None] | None = None,
    overwrite: bool = False,
    max_pixels: int | None = None,
) -> dict:
    """Predict every cell of ``source`` with one or more model folders.

    ``source`` is a run folder (``cells.parquet`` + ``crops.zarr``) or images: then
    they are segmented (``segmentation``: ``"classical"`` or a segmentation model
    folder) into ``out/labels`` and extracted into ``out`` with the crop geometry the
    first CNN model expects. Writes ``out/cells.parquet`` with ``pred_*`` columns (and
    a ``split`` column that marks cells a model trained on, so evaluation uses only
    held-out cells) and ``out/predict.json`` with the models' identity and, for
    images, a per-image ``status`` (``done``, or ``failed`` with the file, stage and
    message: an image that fails to segment or extract is skipped, the others go on).
    ``overwrite`` redoes the segmentation also when ``out`` holds labels made with
    other settings. If no image at all can be used a
    :class:`~mechanoscope.errors.BatchFailedError` is raised.
    """
    import shutil
    import warnings

    from mechanoscope.errors import MechanoscopeWarning
    from mechanoscope.io import (
        check_output_folder_path,
        make_output_folder,
        write_table,
    )
    from mechanoscope.learn.data import load_run
    from mechanoscope.learn.predict import load_stiffness_model, predict_cells

    t0 = time.perf_counter()
    say = progress or (lambda *a: None)
    src, out = Path(source), Path(out)
    if not isinstance(batch_size, int) or batch_size < 1:
        raise ConfigError(f"batch size must be a whole number of at least 1 crop, got {batch_size!r} (--batch-size)")
    check_output_folder_path(out, "run folder (--out)")
    loaded = [m if hasattr(m, "members") else load_stiffness_model(m) for m in models]
    if not loaded:
        raise MechanoscopeError("no model given; pass at least one --model folder")
    seg_errors: list = []
    extract_errors: list = []
    status: list[dict] = []
    if _is_run(src):
        if src.resolve() != out.resolve():
            make_output_folder(out, "run folder (--out)")
            if (out / "crops.zarr").exists():
                shutil.rmtree(out / "crops.zarr")
            shutil.copytree(src / "crops.zarr", out / "crops.zarr")
            shutil.copy2(src / "cells.parquet", out / "cells.parquet")
            if (src / "labels").is_dir() and not (out / "labels").exists():
                shutil.copytree(src / "labels", out / "labels")
    else:
        from mechanoscope.cells.extract import ExtractConfig, extract_folder
        from mechanoscope.segment.batch import segment_images

        seg = segment_images(src, out, method=segmentation, pixel_size_um=pixel_size_um, overwrite=overwrite, max_pixels=max_pixels, progress=lambda i, n, name: say("segmenting", i, n))
        label_paths, seg_errors = seg.labels, seg.errors
        cnn = next((m for m in loaded if m.config["model_type"] == "cnn"), None)
        ecfg = dict(extract_config or {})
        if cnn is not None:
            crop = dict(ecfg.get("crop", {}))
            crop.update(crop_size_um=cnn.config["crop_size_um"], crop_pixels=cnn.config["crop_pixels"], mask_channel="mask" in cnn.config["channels"])
            ecfg["crop"] = crop
        if pixel_size_um is not None:
            ecfg["pixel_size_um"] = pixel_size_um
        if not label_paths:
            shown = "; ".join(e["error"] for e in seg_errors[:3]) + (" …" if len(seg_errors) > 3 else "")
            raise BatchFailedError(f"{src}: no image could be segmented ({len(seg_errors)} failed; details in {seg.record_path}): {shown}", seg_errors)
        try:
            ext = extract_folder(seg.images, label_paths, out, ExtractConfig.build(**ecfg), progress=lambda i, n: say("extracting", i, n), max_pixels=max_pixels)
        except BatchFailedError as exc:
            raise BatchFailedError(str(exc), seg_errors + exc.errors) from None
        extract_errors = ext.errors
        failed = {e.get("image") or e["file"] for e in seg_errors + extract_errors}
        status = [{"image": str(p), "status": "done"} for p in seg.images if str(p) not in failed]
        status += [{"image": e["file"], "status": "failed", "stage": "segment: " + e["stage"], "error": e["error"]} for e in seg_errors]
        status += [{"image": e["image"] or e["file"], "status": "failed", "stage": "extract: " + e["stage"], "error": e["error"]} for e in extract_errors]
    data = load_run(out)
    table = data.table
    n = len(table)
    t_pred = time.perf_counter()
    for m in loaded:
        pred = predict_cells(m, table, data.crops if n else None, channels=data.channels, attrs=data.attrs, batch_size=batch_size, progress=lambda i, k: say(f"predicting {m.config['target']}", i, k))
        table = table.drop(columns=[c for c in pred.columns if c in table.columns]).join(pred)
    pred_seconds = time.perf_counter() - t_pred
    split = _split_column(table, loaded)
    if split is not None:
        table["split"] = split.to_numpy()
    if n == 0:
        warnings.warn(f"{src}: no cell was found; wrote an empty cell table", MechanoscopeWarning, stacklevel=2)
    write_table(table, out / "cells.parquet")
    cls = next((m for m in loaded if m.task == "classification"), None)
    reg = next((m for m in loaded if m.task == "regression"), None)
    info = {
        "mechanoscope_version": __version__,
        "created": time.strftime("%Y-%m-%dT%H:%M:%S%z"),
        "source": str(src),
        "models": [m.identity for m in loaded],
        "model_path": ", ".join(str(m.path) for m in loaded),
        "classes": cls.config["classes"] if cls else None,
        "target": ", ".join(m.config["target"] for m in loaded),
        "interval_level": reg.config["interval_level"] if reg else None,
        "interval_method": "split-conformal on held-out calibration images" if reg else None,
        "n_cells": int(n),
        "n_images": int(table["image_id"].nunique()) if n else 0,
        "segmentation": None if _is_run(src) else segmentation,
        "segmentation_errors": seg_errors,
        "extract_errors": extract_errors,
        "status": status,
        "n_failed": sum(1 for e in status if e["status"] == "failed"),
        "prediction_seconds": round(pred_seconds, 3),
        "crops_per_second": round(n / pred_seconds, 1) if pred_seconds > 0 and n else None,
        "seconds": round(time.perf_counter() - t0, 2),
    }
    write_json(info, out / "predict.json")
    return info
