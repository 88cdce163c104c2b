"""Benchmark of the applicability domain (issue 16): does a run imaged differently say so?

A soft/stiff classifier and a Young's-modulus regressor are trained as the demo trains
them (bright-field, 80 µm / 64 px crops, intensity + mask channels, test-time
augmentation, the regressor on the AFM-measured cells and the classifier's split), on
one simulated experiment of the demo's size by default (96 images of 512 px, 40
epochs, at most 180 s per model; ``--train-images`` etc. to change).
Fresh simulated experiments (other seeds) are then imaged

* ``same``: like the training experiment;
* ``pixel_size``: 0.65 → 0.9 µm per pixel (crops are resampled to the model's pixel size);
* ``illumination``: illumination unevenness 0.15 → 0.6 peak-to-peak;
* ``dim``: 5000 → 400 photo-electrons per pixel at background (shot noise);
* ``defocus``: mean defocus 3 → 5 µm;

and predicted. Cells are cut with the TRUE label images, so the figures measure the
models and the domain score, not segmentation. For every experiment, on QC-passing
cells with a true modulus: the 90 % interval coverage and mean APE of all cells and of
the cells the domain check keeps (in domain for both models, in an in-domain image),
the classifier's accuracy, the fraction of cells and of images flagged (and why:
pixel size, native image statistics, crop scores). Then the AUROC of the domain score
for telling shifted from same-imaging images (image score:
``pred_image_domain_score_<target>``, the larger of the two models) and cells.

Prints JSON. ``--quick``: a smaller smoke run.
"""

from __future__ import annotations

import argparse
import json
import sys
import tempfile
import time
import warnings
from pathlib import Path

import numpy as np
import pandas as pd

from mechanoscope.cells.extract import ExtractConfig, extract_folder
from mechanoscope.learn.config import TrainConfig
from mechanoscope.learn.data import load_run
from mechanoscope.learn.predict import load_stiffness_model, predict_cells
from mechanoscope.learn.train import train_model
from mechanoscope.simulate import AdherentConfig, simulate_adherent

CROP_UM = 80.0
SHIFTS = {
    "same": {},
    "pixel_size": {"optics": {"pixel_size_um": 0.9}},
    "illumination": {"illumination_variation": 0.6},
    "dim": {"camera": {"photons_per_pixel": 400.0}},
    "defocus": {"defocus_um": 5.0},
}


def make_run(root: Path, config: AdherentConfig, seed: int) -> Path:
    sim = simulate_adherent(config, root / "sim", seed=seed, overwrite=True)
    run = root / "run"
    extract_folder(sim / "images", sim / "labels", run, ExtractConfig.build(crop={"crop_size_um": CROP_UM, "crop_pixels": 64}))
    cells = pd.read_parquet(run / "cells.parquet")
    truth = pd.read_parquet(sim / "cells.parquet")
    afm = pd.read_parquet(sim / "afm.parquet").rename(columns={"truth_cell_id": "cell_id", "measured_stiffness_pa": "afm_stiffness_pa"})
    cells = cells.merge(truth[["image_id", "cell_id", "label", "stiffness_pa"]], on=["image_id", "cell_id"], how="left")
    cells = cells.merge(afm[["image_id", "cell_id", "afm_stiffness_pa"]], on=["image_id", "cell_id"], how="left")
    cells.to_parquet(run / "cells.parquet", index=False)
    return run


def _config(n_images: int, size_px: int, **shift) -> AdherentConfig:
    base = AdherentConfig(n_images=n_images, image_shape_px=(size_px, size_px), afm_fraction=0.5)
    fields = base.model_dump()
    for k, v in shift.items():
        if isinstance(v, dict):
            fields[k] = {**fields[k], **v}
        else:
            fields[k] = v
    return AdherentConfig.model_validate(fields)


def _auroc(pos: np.ndarray, neg: np.ndarray) -> float | None:
    from sklearn.metrics import roc_auc_score

    pos, neg = pos[np.isfinite(pos)], neg[np.isfinite(neg)]
    if not len(pos) or not len(neg):
        return None
    return float(roc_auc_score(np.r_[np.ones(len(pos)), np.zeros(len(neg))], np.r_[pos, neg]))


def _figures(t: pd.DataFrame) -> dict:
    ok = t["qc_pass"].fillna(False).to_numpy(bool) & t["stiffness_pa"].notna().to_numpy()
    sub = t[ok]
    true = sub["stiffness_pa"].to_numpy(float)
    pred = sub["pred_stiffness_pa"].to_numpy(float)
    cover = (sub["pred_lo_pa"].to_numpy() <= true) & (true <= sub["pred_hi_pa"].to_numpy())
    ape = 100 * np.abs(pred - true) / true
    keep = sub["pred_in_domain"].astype(bool).to_numpy() & sub["pred_image_in_domain"].astype(bool).to_numpy()
    img = t.groupby("image_id")["pred_image_in_domain"].first().astype(bool)
    why = t.groupby("image_id")["pred_image_domain_reason"].first().fillna("")
    kinds = {"pixel_size": "pixel size", "native_image_statistics": "than in training", "crop_scores": "median crop domain score"}
    return {
        "n_images": int(t["image_id"].nunique()),
        "n_cells_scored": int(ok.sum()),
        "interval_coverage": float(cover.mean()),
        "ape_mean_pct": float(ape.mean()),
        "classifier_accuracy": float((sub["pred_label"].astype(str) == sub["label"].astype(str)).mean()),
        "fraction_cells_flagged": float(1 - t["pred_in_domain"].astype(bool).mean()),
        "fraction_images_flagged": float(1 - img.mean()),
        "fraction_images_flagged_by": {k: float(why.str.contains(v, regex=False).mean()) for k, v in kinds.items()},
        "fraction_intervals_marked_not_calibrated": float(1 - t["pred_interval_calibrated"].astype(bool).mean()),
        "example_reason": next((r for r in why if r), None),
        "n_cells_kept": int(keep.sum()),
        "interval_coverage_kept": float(cover[keep].mean()) if keep.any() else None,
        "ape_mean_pct_kept": float(ape[keep].mean()) if keep.any() else None,
        "median_domain_score": {c[len("pred_domain_score_"):]: float(t[c].median()) for c in t.columns if str(c).startswith("pred_domain_score_")},
    }


def _reference_info(folder: Path) -> dict:
    meta = json.loads((folder / "domain.json").read_text())
    il = meta.get("image_level") or {}
    return {"held_out_fraction_cells_flagged": meta["held_out_fraction_flagged"], "n_held_out_images": meta["n_held_out_images"],
            "image_threshold": meta["image_threshold"], "image_level_reference_images": il.get("n_reference_images"),
            "image_level_threshold_z": il.get("threshold"), "image_level_guaranteed": il.get("level_guaranteed"),
            "pixel_size_range_um": il.get("pixel_size_range_um")}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--train-images", type=int, default=96)
    ap.add_argument("--test-images", type=int, default=20)
    ap.add_argument("--size-px", type=int, default=512)
    ap.add_argument("--epochs", type=int, default=40)
    ap.add_argument("--max-train-seconds", type=float, default=180.0)
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--quick", action="store_true")
    a = ap.parse_args()
    if a.quick:
        a.train_images, a.test_images, a.size_px, a.epochs, a.max_train_seconds = 20, 4, 256, 4, 15.0
    warnings.simplefilter("ignore")
    import torch

    torch.set_num_threads(a.threads)
    t0 = time.perf_counter()
    out: dict = {"settings": {**vars(a), "shifts": SHIFTS, "interval_level": 0.9, "crops": f"{CROP_UM} µm, 64 px, true labels"}}
    with tempfile.TemporaryDirectory() as tmp:
        root = Path(tmp)
        train_run = make_run(root / "train", _config(a.train_images, a.size_px), a.seed)
        print(f"[{time.perf_counter() - t0:.0f} s] training experiment simulated and extracted", file=sys.stderr, flush=True)
        common = dict(epochs=a.epochs, seed=a.seed, max_train_seconds=a.max_train_seconds, num_threads=a.threads, tta=True)
        t = time.perf_counter()
        cls = train_model(train_run, TrainConfig.build(target="label", **common), root / "cls")
        print(f"[{time.perf_counter() - t0:.0f} s] classifier trained: test accuracy {cls.metrics['test'].get('accuracy')}", file=sys.stderr, flush=True)
        reg = train_model(train_run, TrainConfig.build(target="afm_stiffness_pa", split_from=str(cls.model_dir), min_cells_per_class=5, **common), root / "reg")
        print(f"[{time.perf_counter() - t0:.0f} s] regressor trained: {reg.metrics['test']}", file=sys.stderr, flush=True)
        out["training"] = {"seconds": round(time.perf_counter() - t, 1), "cells": cls.metrics["n_cells"], "classifier_test_accuracy": cls.metrics["test"].get("accuracy"),
                           "regressor_test": {k: reg.metrics["test"].get(k) for k in ("ape_mean_pct", "interval_coverage")},
                           "domain_reference": {m: _reference_info(root / m) for m in ("cls", "reg")}}
        models = [load_stiffness_model(cls.model_dir), load_stiffness_model(reg.model_dir)]
        per_shift, image_scores, cell_scores = {}, {}, {}
        for k, (name, shift) in enumerate(SHIFTS.items()):
            run = make_run(root / name, _config(a.test_images, a.size_px, **shift), a.seed + 100 + k)
            data = load_run(run)
            table = data.table
            for m in models:
                pred = predict_cells(m, table, data.crops, channels=data.channels, attrs=data.attrs)
                table = table.drop(columns=[c for c in pred.columns if c in table.columns]).join(pred)
            per_shift[name] = _figures(table)
            score = table[[c for c in table.columns if str(c).startswith("pred_domain_score_")]].max(axis=1)
            cell_scores[name] = score.to_numpy()
            img_score = table[[c for c in table.columns if str(c).startswith("pred_image_domain_score_")]].max(axis=1)
            image_scores[name] = img_score.groupby(table["image_id"]).first().to_numpy()
            print(f"[{time.perf_counter() - t0:.0f} s] {name}: {json.dumps(per_shift[name], default=float)}", file=sys.stderr, flush=True)
        out["per_shift"] = per_shift
        out["auroc_vs_same"] = {name: {"images": _auroc(image_scores[name], image_scores["same"]), "cells": _auroc(cell_scores[name], cell_scores["same"])}
                                for name in SHIFTS if name != "same"}
        shifted_imgs = np.concatenate([image_scores[n] for n in SHIFTS if n != "same"])
        out["auroc_all_shifts"] = {"images": _auroc(shifted_imgs, image_scores["same"]),
                                   "cells": _auroc(np.concatenate([cell_scores[n] for n in SHIFTS if n != "same"]), cell_scores["same"])}
    out["seconds"] = round(time.perf_counter() - t0, 1)
    print(json.dumps(out, indent=2, default=float))


if __name__ == "__main__":
    main()
