"""End-to-end runs that compose the stages.

``run_demo`` is what ``make demo`` runs: at this stage of the product it simulates
soft and stiff adherent cells, summarises the ground truth and writes figures and a
summary; later stages (segment → extract → train → predict → evaluate → report)
are added to it as they land.
"""

from __future__ import annotations

import os
import time
from pathlib import Path
from typing import Callable

import numpy as np
import pandas as pd

from mechanoscope import __version__
from mechanoscope.io import read_image, read_label_image, write_json
from mechanoscope.pipeline.predict import predict_run
from mechanoscope.simulate import AdherentConfig, simulate_adherent

__all__ = ["run_demo", "summarise_simulation", "attach_simulation_truth", "true_mask_run"]


def true_mask_run(sim_dir: str | os.PathLike[str], out: str | os.PathLike[str], extract_config: object) -> Path:
    """A run folder of a simulated experiment's cells cut with its TRUE masks.

    Crops and morphology as ``extract`` writes them (``extract_config``: an
    :class:`~mechanoscope.cells.extract.ExtractConfig`), each cell joined by its id with
    its true ``label`` and ``stiffness_pa`` and, where simulated, its AFM value
    (``afm_stiffness_pa``). What benchmarks train and score on when segmentation errors
    must be left out.
    """
    from mechanoscope.cells.extract import extract_folder

    sim, run = Path(sim_dir), Path(out)
    extract_folder(sim / "images", sim / "labels", run, extract_config)
    cells = pd.read_parquet(run / "cells.parquet")
    truth = pd.read_parquet(sim / "cells.parquet")
    cells = cells.merge(truth[["image_id", "cell_id", "label", "stiffness_pa"]], on=["image_id", "cell_id"], how="left")
    if (sim / "afm.parquet").exists():
        afm = pd.read_parquet(sim / "afm.parquet").rename(columns={"truth_cell_id": "cell_id", "measured_stiffness_pa": "afm_stiffness_pa"})
        cells = cells.merge(afm[["image_id", "cell_id", "afm_stiffness_pa"]], on=["image_id", "cell_id"], how="left")
    cells.to_parquet(run / "cells.parquet", index=False)
    return run


def summarise_simulation(cells: pd.DataFrame) -> dict:
    """Per-population ground-truth summary: counts and medians with units."""
    out: dict = {}
    for label, grp in cells.groupby("label"):
        out[str(label)] = {
            "n_cells": int(len(grp)),
            "stiffness_pa_median": float(grp["stiffness_pa"].median()),
            "stiffness_pa_iqr": [float(grp["stiffness_pa"].quantile(0.25)), float(grp["stiffness_pa"].quantile(0.75))],
            "spread_area_um2_median": float(grp["spread_area_um2"].median()),
            "mean_height_um_median": float(grp["mean_height_um"].median()),
            "aspect_ratio_median": float(grp["aspect_ratio_latent"].median()),
        }
    return out


def attach_simulation_truth(run_dir: str | os.PathLike[str], sim_dir: str | os.PathLike[str], *, min_iou: float = 0.5) -> pd.DataFrame:
    """Give segmented cells of a simulated data set their truth, as a lab would have it.

    Adds ``condition`` (the population of the image, i.e. what the experimenter
    knows; with simulated conditions also its ``replicate``), ``label`` (=
    condition, the class target), ``stiffness_pa`` and ``truth_cell_id`` of the
    true cell the segmented one overlaps best (IoU ≥ ``min_iou``; NaN otherwise) and ``afm_stiffness_pa`` from the simulated AFM table
    matched by position (:func:`mechanoscope.mechanics.match_afm_to_cells`). Rewrites
    ``RUN/cells.parquet`` and returns the table.
    """
    from mechanoscope.io import read_table, write_table
    from mechanoscope.mechanics import match_afm_to_cells

    run, sim = Path(run_dir), Path(sim_dir)
    cells = read_table(run / "cells.parquet")
    truth = read_table(sim / "cells.parquet")
    afm = read_table(sim / "afm.parquet")
    cond = truth.groupby("image_id")["label"].agg(lambda s: s.value_counts().index[0])
    cells["condition"] = cells["image_id"].map(cond).astype(object)
    if "replicate" in truth.columns:  # a simulation with conditions: the replicate (well) each image shows
        cells["replicate"] = cells["image_id"].map(truth.groupby("image_id")["replicate"].first())
    cells["label"] = cells["condition"]
    cells["stiffness_pa"] = np.nan
    cells["truth_cell_id"] = -1
    cells["truth_iou"] = 0.0
    seg_labels: dict[str, np.ndarray] = {}
    px = float(truth["pixel_size_um"].iloc[0])
    for image_id, idx in cells.groupby("image_id").groups.items():
        seg = read_label_image(run / "labels" / f"{image_id}.tif").data.astype(np.int64)
        true = read_label_image(sim / "labels" / f"{image_id}.tif").data.astype(np.int64)
        seg_labels[str(image_id)] = seg
        ns, nt = seg.max() + 1, true.max() + 1
        inter = np.bincount((seg * nt + true).ravel(), minlength=ns * nt).reshape(ns, nt)
        area_s, area_t = inter.sum(1), inter.sum(0)
        inter[:, 0] = 0
        best = inter.argmax(1)
        iou = inter[np.arange(ns), best] / np.maximum(area_s + area_t[best] - inter[np.arange(ns), best], 1)
        t_img = truth[truth["image_id"] == image_id].set_index("cell_id")["stiffness_pa"]
        ids = cells.loc[idx, "cell_id"].to_numpy(dtype=np.int64)
        ok = iou[ids] >= min_iou
        cells.loc[idx, "truth_cell_id"] = np.where(ok, best[ids], -1)
        cells.loc[idx, "truth_iou"] = iou[ids]
        cells.loc[idx, "stiffness_pa"] = np.where(ok, t_img.reindex(best[ids]).to_numpy(), np.nan)
    for path in sorted((run / "labels").glob("*.tif")):  # images where no cell was found
        if path.stem not in seg_labels:
            seg_labels[path.stem] = read_label_image(path).data
    afm = afm[afm["image_id"].astype(str).isin(seg_labels)]
    cells, _ = match_afm_to_cells(cells, afm, seg_labels, pixel_size_um=px)
    write_table(cells, run / "cells.parquet")
    return cells


def run_demo(
    out: str | os.PathLike[str],
    *,
    seed: int = 0,
    n_images: int = 96,
    epochs: int = 40,
    max_train_seconds: float = 180.0,
    afm_fraction: float = 0.5,
    progress: Callable[[str], None] | None = None,
) -> dict:
    """The whole chain on simulated data, as a lab would run it.

    simulate soft and stiff populations (one per image, like one dish per condition)
    → segment (built-in model, label-free) → extract crops + morphology → attach what the
    lab knows (condition of each image; AFM moduli of a subset of cells) → train a
    soft/stiff classifier and a Young's-modulus regressor (on the AFM cells only)
    sharing one split by image → predict all cells → evaluate on held-out images →
    HTML report. Writes everything under ``out`` and returns a summary.
    """
    from mechanoscope.cells.extract import ExtractConfig, extract_folder
    from mechanoscope.io import read_table
    from mechanoscope.learn.config import TrainConfig
    from mechanoscope.learn.train import train_model
    from mechanoscope.pipeline.evaluation import evaluate_run
    from mechanoscope.report import field_gallery, write_report
    from mechanoscope.segment.batch import segment_images

    say = progress or (lambda msg: None)
    out = Path(out)
    t0 = time.perf_counter()
    timings: dict[str, float] = {}

    def lap(name: str, t: float) -> float:
        now = time.perf_counter()
        timings[name] = round(now - t, 2)
        return now

    t = t0
    config = AdherentConfig(n_images=n_images, afm_fraction=afm_fraction)
    say(f"simulating {n_images} bright-field fields of view (soft and stiff cells, known Young's modulus)")
    sim = simulate_adherent(config, out / "simulated", seed=seed, overwrite=True)
    t = lap("simulate", t)
    run = out / "run"
    say("segmenting cells (built-in label-free segmentation model)")
    seg_errors = segment_images(sim / "images", run, method="builtin", overwrite=True, command="mechanoscope demo").errors
    t = lap("segment", t)
    say("extracting single-cell crops (80 µm, 64 px) and morphology")
    extract_folder(sim / "images", run / "labels", run, ExtractConfig.build(crop={"crop_size_um": 80.0, "crop_pixels": 64}))
    cells = attach_simulation_truth(run, sim)
    t = lap("extract", t)
    models = out / "models"
    common = dict(epochs=epochs, seed=seed, max_train_seconds=max_train_seconds, num_threads=0, tta=True)
    say(f"training the soft/stiff classifier ({int(cells['qc_pass'].sum())} cells pass QC)")
    cls = train_model(run, TrainConfig.build(target="label", **common), models / "classifier", overwrite=True, command="mechanoscope demo")
    t = lap("train_classifier", t)
    n_afm = int(cells["afm_stiffness_pa"].notna().sum())
    say(f"training the Young's-modulus regressor on the {n_afm} AFM-measured cells")
    reg = train_model(run, TrainConfig.build(target="afm_stiffness_pa", split_from=str(cls.model_dir), min_cells_per_class=5, **common), models / "regressor", overwrite=True, command="mechanoscope demo")
    t = lap("train_regressor", t)
    say("predicting every cell")
    info = predict_run(run, [cls.model_dir, reg.model_dir], run)
    t = lap("predict", t)
    say("evaluating on held-out images and writing the report")
    evaluation = evaluate_run(run, figures=True)
    report = write_report(run, evaluation=evaluation)  # the report shows this evaluation: the run is evaluated once
    firsts = cells.groupby("condition")["image_id"].first()
    imgs = [read_image(sim / "images" / f"{i}.tif").data for i in firsts]
    labs = [read_label_image(run / "labels" / f"{i}.tif").data for i in firsts]
    field_gallery(imgs, [f"{c}: {i} (segmented outlines)" for c, i in firsts.items()], config.optics.pixel_size_um, out / "fields.png", labels=labs)
    t = lap("evaluate_report", t)
    summary = {
        "mechanoscope_version": __version__,
        "seed": seed,
        "n_images": n_images,
        "n_cells_segmented": int(len(cells)),
        "n_cells_afm": n_afm,
        "populations": summarise_simulation(read_table(sim / "cells.parquet")),
        "classifier_test": cls.metrics.get("test", {}),
        "regressor_test": reg.metrics.get("test", {}),
        "evaluation": {k: evaluation.get(k) for k in ("classification", "regression") if k in evaluation},
        "segmentation_errors": seg_errors,
        "timings_s": timings,
        "seconds": round(time.perf_counter() - t0, 2),
        "crops_per_second": info.get("crops_per_second"),
        "outputs": {"report": str(report), "run": str(run), "models": str(models), "figure": str(out / "fields.png")},
    }
    write_json(summary, out / "summary.json")
    return summary


# ----------------------------------------------------------------------------- predict
