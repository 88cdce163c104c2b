"""End-to-end truth (issue 14 item 4): stiffness figures through the product's own segmentation.

Every stiffness number a user gets is computed on a crop that segmentation cut. This
benchmark measures what that costs, on simulated experiments whose truth is known:

* **training** (once per run): a soft/stiff classifier and a Young's-modulus regressor
  are trained as the demo trains them (bright field, 80 µm / 64 px crops, intensity +
  mask channels, test-time augmentation; the regressor on simulated AFM values of every
  whole cell) on crops cut with the TRUE masks of two training experiments
  (``classification``: ``soft``/``stiff`` populations, one per image like one dish per
  condition; ``regression``: E log-uniform 100 Pa – 10 kPa).
* **test sets**, fresh experiments with other seeds: ``normal`` (imaged like the
  training experiments), ``dim`` (bright field at 1,000 photo-electrons per pixel
  instead of 5,000: a shorter exposure) and ``uneven_illumination`` (peak-to-peak
  unevenness 0.6 instead of 0.15). Each set has a classification and a regression
  experiment.
* every test field goes through :func:`~mechanoscope.pipeline.field.process_field` with
  the segmenter of each **method**: ``builtin`` (the model shipped with the package,
  ``build_segmenter("builtin")``), ``classical`` (the classical pipeline) and
  ``true_masks`` (a segmenter that returns the true label image: the same crops, models
  and scoring, without segmentation errors).

Per set, task and method:

* ``figures``: classification AUC / F1 / accuracy of the QC-passing cells, each labelled
  with its image's condition (what the lab knows; a spurious object counts with its
  dish), and the same on the cells matched to a true cell (``figures_matched_cells``);
  regression APE (mean, median, %) against the TRUE modulus on the QC-passing cells
  matched to a true cell (IoU ≥ 0.5, one-to-one:
  :func:`~mechanoscope.evaluate.segmentation.match_instances`).
* ``ratio_to_true_masks``: each figure over the true-mask figure, and whether it is
  within 1.1× (AUC, F1: ratio ≥ 1/1.1; APE: ratio ≤ 1.1).
* ``cells``: true cells, true cells matched, segmented objects, objects matched.
* ``images``: an image is **lost** when no QC-passing cell of it matches a true cell
  (nothing of it reaches the statistics); every lost image is listed by name with the
  reason, next to the images the product's own segmentation QC
  (:func:`~mechanoscope.metrics.segmentation_qc.segmentation_qc`, as ``predict`` runs it)
  flags, and the lost images QC did not flag.
* ``conditions``: a condition is lost when all its images are lost (classification: the
  soft and stiff dishes; regression: one group ``all``); ``lost_by_qc`` is what the
  product reports.

Prints JSON (``--out FILE`` also writes it). ``--quick``: a few small fields and 2
epochs (under a minute). The default size (128 training and 32 test fields of 512 px
per experiment) runs in about 10 min on one core (``--threads 1``).

Measured 2026-12-02 (``--methods builtin``, 460 s on one core), the built-in model with its
default mirror test-time augmentation against the same models on true masks; classification
AUC / F1, regression APE mean / median %, true cells matched (classification / regression),
images lost: normal 0.996 / 0.969 (true 0.995 / 0.968), 39.1 / 32.0 (41.3 / 35.3), 0.79 /
0.74, 0 / 0; dim light (1,000 photons/px) 0.989 / 0.953 (0.991 / 0.959), 112.8 / 47.2
(111.2 / 54.4), 0.70 / 0.76, 0 / 0; uneven illumination (0.6) 0.998 / 0.991 (0.992 /
0.947), 42.1 / 37.0 (56.5 / 39.0), 0.39 / 0.37, 1 / 2. Every figure is within 1.1x of the
true masks' (without test-time augmentation the dim set's APE mean was 1.12x) and no
condition is lost; under uneven illumination 6 of 10 true cells are not matched.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import tempfile
import time
import warnings
from collections.abc import Callable, Mapping
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd

from mechanoscope.cells.extract import ExtractConfig
from mechanoscope.evaluate.segmentation import match_instances
from mechanoscope.evaluate.stiffness import classification_metrics, regression_metrics
from mechanoscope.io import read_image, read_label_image
from mechanoscope.learn.config import TrainConfig
from mechanoscope.learn.predict import load_stiffness_model
from mechanoscope.learn.train import train_model
from mechanoscope.metrics.segmentation_qc import segmentation_qc
from mechanoscope.pipeline.field import FieldError, process_field
from mechanoscope.segment.batch import build_segmenter
from mechanoscope.simulate import AdherentConfig, simulate_adherent

Segmenter = Callable[[np.ndarray, float], np.ndarray]

CROP_UM, CROP_PX = 80.0, 64
TRUE = "true_masks"
TARGET_RATIO = 1.1
SETS: dict[str, dict] = {
    "normal": {},
    "dim": {"camera": {"photons_per_pixel": 1000.0}},
    "uneven_illumination": {"illumination_variation": 0.6},
}
TASKS: dict[str, dict] = {
    "classification": {"stiffness_mode": "populations", "afm_fraction": 0.0},
    "regression": {"stiffness_mode": "continuous", "afm_fraction": 1.0},
}
HIGHER_IS_BETTER = {"auc": True, "f1": True, "ape_mean_pct": False, "ape_median_pct": False}  # the figures with a 1.1x target
QUICK = dict(train_images=12, test_images=4, size_px=256, epochs=2, max_train_seconds=10.0)


# ----------------------------------------------------------------------------- experiments
def experiment_config(task: str, shift: Mapping[str, Any], n_images: int, size_px: int) -> AdherentConfig:
    """The simulated experiment of ``task`` imaged with ``shift`` (nested fields of :class:`AdherentConfig`)."""
    fields = AdherentConfig(n_images=n_images, image_shape_px=(size_px, size_px), **TASKS[task]).model_dump()
    for k, v in shift.items():
        fields[k] = {**fields[k], **v} if isinstance(v, dict) else v
    return AdherentConfig.model_validate(fields)


def experiment_seeds(seed: int) -> dict:
    """Training and test seeds; the test seeds never repeat a training seed."""
    train = {task: seed + j for j, task in enumerate(TASKS)}
    test = {name: {task: seed + 1000 + 10 * k + j for j, task in enumerate(TASKS)} for k, name in enumerate(SETS)}
    used = list(train.values()) + [s for v in test.values() for s in v.values()]
    assert len(set(used)) == len(used), "experiment seeds must differ"
    return {"train": train, "test": test}


def training_run(sim: Path, out: Path) -> Path:
    """Crops cut with the TRUE masks of a simulated experiment, with the truth and AFM values attached."""
    from mechanoscope.pipeline import true_mask_run

    return true_mask_run(sim, out, ExtractConfig.build(crop={"crop_size_um": CROP_UM, "crop_pixels": CROP_PX}))


def train_models(root: Path, *, seeds: dict, n_images: int, size_px: int, epochs: int, max_train_seconds: float, threads: int, tta: bool = True) -> tuple[dict, dict]:
    """Train the classifier and the regressor once; returns the loaded models and a JSON summary."""
    models, info = {}, {}
    for task, target in (("classification", "label"), ("regression", "afm_stiffness_pa")):
        t = time.perf_counter()
        sim = simulate_adherent(experiment_config(task, {}, n_images, size_px), root / f"train_{task}" / "sim", seed=seeds["train"][task], overwrite=True)
        run = training_run(sim, root / f"train_{task}" / "run")
        cfg = TrainConfig.build(target=target, epochs=epochs, seed=seeds["train"][task], max_train_seconds=max_train_seconds, num_threads=threads,
                                tta=tta, min_cells_per_class=5)
        res = train_model(run, cfg, root / f"model_{task}", overwrite=True)
        models[task] = load_stiffness_model(res.model_dir)
        keys = ("auc", "f1", "accuracy") if task == "classification" else ("ape_mean_pct", "ape_median_pct")
        info[task] = {"seed": seeds["train"][task], "n_images": n_images, "cells_per_split": res.metrics["n_cells"],
                      "internal_test": {k: res.metrics.get("test", {}).get(k) for k in keys},
                      "epochs_run": int(len(res.log)), "seconds": round(time.perf_counter() - t, 1)}
        _say(f"{task} model trained: {info[task]}")
    return models, info


# ----------------------------------------------------------------------------- one experiment
def _true_segmenter(true: np.ndarray) -> Segmenter:
    return lambda plane, px: true


def run_experiment(sim: Path, task: str, model: Any, segmenters: Mapping[str, Segmenter | None]) -> dict[str, dict]:
    """Every field of a simulated experiment through ``process_field`` with each segmenter.

    ``segmenters``: method name → ``segment(plane, px)``, or None for the true masks.
    Returns per method the cell table (``table``: QC, predictions, the matched true cell
    and its truth) and one record per image (``images``).
    """
    truth = pd.read_parquet(sim / "cells.parquet")
    conditions = truth.groupby("image_id")["label"].agg(lambda s: s.value_counts().index[0]) if task == "classification" else None
    stiffness = truth.set_index(["image_id", "cell_id"])["stiffness_pa"]
    out: dict[str, dict] = {name: {"tables": [], "images": [], "seconds": {}} for name in segmenters}
    for path in sorted((sim / "images").glob("*.tif")):
        image_id = path.stem
        image = read_image(path)
        true = read_label_image(sim / "labels" / path.name).data.astype(np.int64)
        condition = str(conditions[image_id]) if conditions is not None else "all"
        for name, seg in segmenters.items():
            rec: dict[str, Any] = {"image_id": image_id, "condition": condition}
            try:
                with warnings.catch_warnings():
                    warnings.simplefilter("ignore")
                    res = process_field(image, image_id=image_id, segmenter=seg or _true_segmenter(true), models=[model])
            except FieldError as exc:
                match = match_instances(np.zeros_like(true), true)
                rec.update(n_cells=0, covered_fraction=0.0, failed=f"{exc.stage}: {exc}", n_true=match.n_true, n_matched=0, n_scored=0)
                out[name]["images"].append(rec)
                continue
            labels = np.asarray(res.labels).astype(np.int64)
            match = match_instances(labels, true)
            table = res.table.copy()
            pairs = pd.Series(match.true_ids, index=match.pred_ids, dtype="int64")
            ious = pd.Series(match.ious, index=match.pred_ids, dtype=float)
            table["truth_cell_id"] = table["cell_id"].map(pairs)
            table["truth_iou"] = table["cell_id"].map(ious)
            keys = pd.MultiIndex.from_arrays([np.full(len(table), image_id), table["truth_cell_id"].fillna(-1).astype(np.int64)])
            table["true_stiffness_pa"] = stiffness.reindex(keys).to_numpy()
            table["condition"] = condition
            scored = table["qc_pass"].fillna(False).astype(bool) & table["truth_cell_id"].notna()
            rec.update(n_cells=int(len(table)), covered_fraction=float(np.count_nonzero(labels)) / labels.size,
                       n_true=match.n_true, n_pred=match.n_pred, n_matched=match.tp, n_scored=int(scored.sum()))
            out[name]["images"].append(rec)
            out[name]["tables"].append(table)
            for k, v in res.seconds.items():
                out[name]["seconds"][k] = out[name]["seconds"].get(k, 0.0) + v
    for name in out:
        tables = out[name].pop("tables")
        out[name]["table"] = pd.concat(tables, ignore_index=True) if tables else pd.DataFrame()
    return out


# ----------------------------------------------------------------------------- figures
def classification_figures(table: pd.DataFrame, classes: list[str]) -> dict | None:
    """AUC / F1 / accuracy of the cells of ``table``, true class = the image's condition."""
    if not len(table):
        return None
    prob = table[[f"pred_prob_{c}" for c in classes]].to_numpy(float)
    m = classification_metrics(table["condition"].astype(str).to_numpy(), prob, classes, y_pred=table["pred_label"].astype(str).to_numpy())
    return {"auc": m["auc"], "f1": m["f1"], "accuracy": m["accuracy"], "n_cells": int(m["n"]),
            "n_cells_per_condition": {str(k): int(v) for k, v in table["condition"].value_counts().sort_index().items()}}


def regression_figures(table: pd.DataFrame) -> dict | None:
    """APE (mean, median, %) of the predicted against the TRUE modulus."""
    if not len(table):
        return None
    m = regression_metrics(table["true_stiffness_pa"].to_numpy(float), table["pred_stiffness_pa"].to_numpy(float))
    return {"ape_mean_pct": m["ape_mean_pct"], "ape_median_pct": m["ape_median_pct"], "n_cells": int(m["n"])}


def ratios(figures: dict | None, reference: dict | None) -> tuple[dict, dict]:
    """Each figure over its true-mask figure and whether that is within :data:`TARGET_RATIO`."""
    ratio, within = {}, {}
    for k, higher in HIGHER_IS_BETTER.items():
        if reference is None or k not in reference:
            continue
        v, ref = (figures or {}).get(k), reference.get(k)
        r = None if v is None or ref is None or ref == 0 else round(float(v) / float(ref), 4)
        ratio[k] = r
        within[k] = bool(r is not None and (r >= 1 / TARGET_RATIO if higher else r <= TARGET_RATIO))
    return ratio, within


def _lost_reason(rec: dict, qc: dict) -> str:
    if rec.get("failed"):
        return f"the field failed: {rec['failed']}"
    flagged = qc["images"].get(rec["image_id"], {}).get("reason")
    if rec["n_cells"] == 0:
        return "segmentation found no cell"
    why = f"{rec['n_cells']} object{'s' if rec['n_cells'] != 1 else ''} found, {rec['n_matched']} of the {rec['n_true']} true cells matched (IoU >= 0.5), none of them both matched and QC-passing"
    return f"{why}; segmentation QC: {flagged}" if flagged else why


def method_summary(result: dict, task: str, classes: list[str] | None) -> dict:
    """Figures, cells, images and conditions of one method on one experiment (no ratios yet)."""
    table, images = result["table"], result["images"]
    done = [r for r in images if not r.get("failed")]  # as predict runs it: on the fields that were processed
    qc = segmentation_qc(done, {r["image_id"]: r["condition"] for r in done})
    qc_pass = table["qc_pass"].fillna(False).astype(bool) if len(table) else pd.Series(dtype=bool)
    matched = table["truth_cell_id"].notna() if len(table) else pd.Series(dtype=bool)
    out: dict[str, Any] = {}
    if task == "classification":
        out["figures"] = classification_figures(table[qc_pass], classes or [])
        out["figures_matched_cells"] = classification_figures(table[qc_pass & matched], classes or [])
    else:
        out["figures"] = regression_figures(table[qc_pass & matched])
    n_true = sum(r["n_true"] for r in images)
    n_matched = sum(r["n_matched"] for r in images)
    n_seg = sum(r["n_cells"] for r in images)
    out["cells"] = {"n_true": n_true, "n_matched": n_matched, "fraction_true_matched": n_matched / n_true if n_true else None,
                    "n_segmented": n_seg, "fraction_segmented_matched": n_matched / n_seg if n_seg else None,
                    "n_qc_pass": int(qc_pass.sum()), "n_scored_matched_qc_pass": int((qc_pass & matched).sum())}
    lost = {r["image_id"]: _lost_reason(r, qc) for r in images if r["n_scored"] == 0}
    out["images"] = {"n": len(images), "n_lost": len(lost), "fraction_lost": len(lost) / len(images) if images else None,
                     "lost": lost, "flagged_by_qc": {i: qc["images"][i]["reason"] for i in qc["flagged"]},
                     "lost_not_flagged_by_qc": sorted(set(lost) - set(qc["flagged"])),
                     "failed": {r["image_id"]: r["failed"] for r in images if r.get("failed")}}
    names = sorted({r["condition"] for r in images})
    lost_conditions = [c for c in names if all(r["image_id"] in lost for r in images if r["condition"] == c)]
    out["conditions"] = {"names": names, "lost": lost_conditions, "fraction_lost": len(lost_conditions) / len(names) if names else None,
                         "lost_by_qc": sorted(qc["lost_groups"])}
    out["seconds"] = {k: round(v, 2) for k, v in result["seconds"].items()}
    return out


def score_experiment(sim: Path, task: str, model: Any, segmenters: Mapping[str, Segmenter | None]) -> dict:
    """:func:`run_experiment` + :func:`method_summary` per method, ratios to the true masks."""
    if TRUE not in segmenters:
        segmenters = {TRUE: None, **segmenters}
    results = run_experiment(sim, task, model, segmenters)
    classes = list(model.config["classes"]) if task == "classification" else None
    out = {name: method_summary(res, task, classes) for name, res in results.items()}
    ref = out[TRUE]["figures"]
    true_table = results[TRUE]["table"]
    for name, s in out.items():
        if name != TRUE:
            s["ratio_to_true_masks"], s["within_1.1x_of_true_masks"] = ratios(s["figures"], ref)
            s["true_masks_on_the_same_cells"] = same_cells_figures(results[name]["table"], true_table, task, classes)
    return out


def same_cells_figures(table: pd.DataFrame, true_table: pd.DataFrame, task: str, classes: list[str] | None) -> dict | None:
    """True-mask figures of the true cells a method's scored cells matched: the cost of its
    crops on the cells it kept, apart from which cells it kept."""
    if not len(table) or not len(true_table):
        return None
    kept = table[table["qc_pass"].fillna(False).astype(bool) & table["truth_cell_id"].notna()]
    keys = set(zip(kept["image_id"].astype(str), kept["truth_cell_id"].astype(np.int64)))
    rows = [(i, c) in keys for i, c in zip(true_table["image_id"].astype(str), true_table["cell_id"].astype(np.int64))]
    sub = true_table[np.asarray(rows, dtype=bool) & true_table["qc_pass"].fillna(False).astype(bool).to_numpy()]
    return classification_figures(sub, classes or []) if task == "classification" else regression_figures(sub)


# ----------------------------------------------------------------------------- the benchmark
def run_benchmark(root: Path, *, seed: int = 0, train_images: int = 128, test_images: int = 32, size_px: int = 512, epochs: int = 40,
                  max_train_seconds: float = 240.0, threads: int = 1, tta: bool = True, methods: tuple[str, ...] = ("builtin", "classical"),
                  extra_segmenters: Mapping[str, Mapping[str, Segmenter]] | None = None) -> dict:
    """Train once, then score every test set, task and method; returns the JSON-ready result.

    ``extra_segmenters``: set name → {method name → segmenter}, scored on that set only
    (the test uses it to force a segmenter that finds nothing).
    """
    t0 = time.perf_counter()
    seeds = experiment_seeds(seed)
    settings = {"seed": seed, "train_images": train_images, "test_images": test_images, "size_px": size_px, "epochs": epochs,
                "max_train_seconds": max_train_seconds, "threads": threads, "tta": tta, "methods": list(methods), "sets": SETS, "tasks": TASKS,
                "crops": f"{CROP_UM} µm, {CROP_PX} px, intensity + mask", "seeds": seeds, "match_iou": 0.5, "target_ratio": TARGET_RATIO}
    models, training = train_models(root, seeds=seeds, n_images=train_images, size_px=size_px, epochs=epochs, max_train_seconds=max_train_seconds, threads=threads, tta=tta)
    segmenters: dict[str, Segmenter | None] = {TRUE: None}
    described = {}
    for m in methods:
        segmenters[m], described[m], _ = build_segmenter(m)
    settings["segmenters"] = described
    sets: dict[str, dict] = {}
    for name, shift in SETS.items():
        sets[name] = {}
        for task in TASKS:
            cfg = experiment_config(task, shift, test_images, size_px)
            sim = simulate_adherent(cfg, root / f"test_{name}_{task}", seed=seeds["test"][name][task], overwrite=True)
            segs = {**segmenters, **(extra_segmenters or {}).get(name, {})}
            sets[name][task] = score_experiment(sim, task, models[task], segs)
            _say(f"{name} / {task}: " + json.dumps({m: {"figures": s["figures"], "lost": s["images"]["n_lost"]} for m, s in sets[name][task].items()}, default=float))
    from mechanoscope import __version__

    return {"benchmark": "end_to_end", "mechanoscope_version": __version__, "settings": settings, "training": training, "summary": summarise(sets), "sets": sets,
            "seconds": round(time.perf_counter() - t0, 1)}


def summarise(sets: dict) -> dict:
    """The headline per set, task and method: figures, ratios, matched, lost."""
    out: dict = {}
    for name, tasks in sets.items():
        for task, methods in tasks.items():
            for m, s in methods.items():
                row = {k: v for k, v in (s["figures"] or {}).items() if k in HIGHER_IS_BETTER or k == "n_cells"}
                row.update({f"{k}_ratio": v for k, v in s.get("ratio_to_true_masks", {}).items()})
                if s.get("true_masks_on_the_same_cells"):
                    row["true_masks_on_the_same_cells"] = {k: v for k, v in s["true_masks_on_the_same_cells"].items() if k in HIGHER_IS_BETTER or k == "n_cells"}
                if s.get("within_1.1x_of_true_masks"):
                    row["all_within_1.1x"] = all(s["within_1.1x_of_true_masks"].values())
                row.update(fraction_true_cells_matched=s["cells"]["fraction_true_matched"], images_lost=s["images"]["n_lost"],
                           n_images=s["images"]["n"], conditions_lost=s["conditions"]["lost"])
                out.setdefault(name, {}).setdefault(task, {})[m] = row
    return out


def _say(msg: str) -> None:
    print(f"[{time.strftime('%H:%M:%S')}] {msg}", file=sys.stderr, flush=True)


def main(argv: list[str] | None = None) -> dict:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--train-images", type=int, default=128, help="fields of view of each training experiment")
    ap.add_argument("--test-images", type=int, default=32, help="fields of view of each test experiment")
    ap.add_argument("--size-px", type=int, default=512)
    ap.add_argument("--epochs", type=int, default=40)
    ap.add_argument("--max-train-seconds", type=float, default=240.0, help="training time limit per model (s)")
    ap.add_argument("--threads", type=int, default=1, help="torch CPU threads for training and inference")
    ap.add_argument("--no-tta", action="store_true", help="no test-time augmentation (8x faster prediction)")
    ap.add_argument("--methods", default="builtin,classical", help="segmenters to score besides the true masks (comma-separated)")
    ap.add_argument("--quick", action="store_true", help="a few small fields, 2 epochs (under a minute)")
    ap.add_argument("--workdir", type=Path, default=None, help="keep the simulated data and models here (default: a temporary folder)")
    ap.add_argument("--out", type=Path, default=None, help="also write the JSON to this file")
    a = ap.parse_args(argv)
    if a.quick:
        for k, v in QUICK.items():
            setattr(a, k, v)
    import torch

    torch.set_num_threads(a.threads)
    os.environ.setdefault("MECHANOSCOPE_INFERENCE_THREADS", str(a.threads))
    kw = dict(seed=a.seed, train_images=a.train_images, test_images=a.test_images, size_px=a.size_px, epochs=a.epochs,
              max_train_seconds=a.max_train_seconds, threads=a.threads, tta=not a.no_tta, methods=tuple(m for m in a.methods.split(",") if m))
    if a.workdir is not None:
        a.workdir.mkdir(parents=True, exist_ok=True)
        result = run_benchmark(a.workdir, **kw)
    else:
        with tempfile.TemporaryDirectory(prefix="mechanoscope_e2e_") as tmp:
            result = run_benchmark(Path(tmp), **kw)
    result["settings"]["quick"] = a.quick
    text = json.dumps(result, indent=2, default=float)
    if a.out is not None:
        a.out.parent.mkdir(parents=True, exist_ok=True)
        a.out.write_text(text)
    print(text)
    return result


if __name__ == "__main__":
    main()
