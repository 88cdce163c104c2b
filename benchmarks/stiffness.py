"""Benchmark of stiffness learning on simulated adherent cells (issue: stiffness models).

Two fixed-seed simulated data sets of bright-field fields of view:

* **classification**: ``soft`` (median 200 Pa) and ``stiff`` (2 kPa) populations, one
  population per image; CNN vs the gradient-boosting features baseline, both on the
  same split by image, metrics on held-out test images.
* **regression**: Young's modulus log-uniform 100 Pa – 10 kPa; every whole cell has a
  simulated AFM value (true E × 25 % log-normal error) and the models are trained on
  those noisy values only; APE is computed against the TRUE modulus of held-out images.
  The **oracle** is a gradient-boosting regressor given the simulator's true latent
  morphology variables (volume, spread area, height, aspect ratio, fibre and ruffle
  amplitudes) of the same training cells with the same noisy labels: the information
  limit of the data for that training budget.

Cells are cut with the TRUE label images so that the figures measure the stiffness
models, not segmentation (``benchmarks/segment.py`` measures that).

Prints JSON. ``--quick`` runs a small smoke version (~2 min).
"""

from __future__ import annotations

import argparse
import json
import tempfile
import time
from pathlib import Path

import numpy as np
import pandas as pd

from mechanoscope.cells.extract import ExtractConfig, extract_folder
from mechanoscope.evaluate.stiffness import regression_metrics
from mechanoscope.learn.config import TrainConfig
from mechanoscope.learn.data import load_run
from mechanoscope.learn.predict import load_stiffness_model, predict_cells
from mechanoscope.learn.train import train_model
from mechanoscope.simulate import AdherentConfig, simulate_adherent

LATENTS = ["volume_um3", "spread_area_um2", "mean_height_um", "aspect_ratio_latent", "fibre_amplitude", "ruffle_amplitude"]
CROP = {"crop_size_um": 80.0, "crop_pixels": 64}


def make_run(root: Path, config: AdherentConfig, seed: int) -> Path:
    sim = simulate_adherent(config, root / "sim", seed=seed, overwrite=True)
    run = root / "run"
    extract_folder(sim / "images", sim / "labels", run, ExtractConfig.build(crop=CROP))
    cells = pd.read_parquet(run / "cells.parquet")
    truth = pd.read_parquet(sim / "cells.parquet")
    afm = pd.read_parquet(sim / "afm.parquet").rename(columns={"truth_cell_id": "cell_id", "measured_stiffness_pa": "afm_stiffness_pa"})
    cells = cells.merge(truth[["image_id", "cell_id", "label", "stiffness_pa"] + LATENTS], on=["image_id", "cell_id"], how="left")
    cells = cells.merge(afm[["image_id", "cell_id", "afm_stiffness_pa"]], on=["image_id", "cell_id"], how="left")
    cells.to_parquet(run / "cells.parquet", index=False)
    return run


def _ape(true: np.ndarray, pred: np.ndarray) -> dict:
    m = regression_metrics(true, pred)
    return {"ape_mean_pct": m["ape_mean_pct"], "ape_median_pct": m["ape_median_pct"]}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__)
    ap.add_argument("--quick", action="store_true")
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--n-images", type=int, default=120)
    ap.add_argument("--epochs", type=int, default=40)
    ap.add_argument("--ensemble", type=int, default=2, help="deep-ensemble size of the CNN classifier")
    ap.add_argument("--no-tta", action="store_true", help="disable test-time augmentation")
    ap.add_argument("--workdir", type=Path, default=None)
    args = ap.parse_args()
    n_images = 16 if args.quick else args.n_images
    epochs = 2 if args.quick else args.epochs
    root = args.workdir or Path(tempfile.mkdtemp(prefix="mechanoscope_bench_"))
    out: dict = {"benchmark": "stiffness", "seed": args.seed, "n_images": n_images, "epochs_max": epochs, "crop": CROP, "workdir": str(root)}

    # ---------------------------------------------------------------- classification
    t = time.perf_counter()
    run_c = make_run(root / "cls", AdherentConfig(n_images=n_images, afm_fraction=0.0), args.seed)
    out["classification_data_seconds"] = round(time.perf_counter() - t, 1)
    common = dict(seed=args.seed, epochs=epochs, num_threads=0, min_cells_per_class=5, tta=not args.no_tta)
    out["tta"] = not args.no_tta
    out["classifier_ensemble_size"] = args.ensemble
    t = time.perf_counter()
    cnn = train_model(run_c, TrainConfig.build(target="label", ensemble_size=args.ensemble, **common), root / "m_cls", overwrite=True)
    train_cnn_s = time.perf_counter() - t
    feat = train_model(run_c, TrainConfig.build(target="label", model_type="features", **common), root / "m_cls_feat", overwrite=True)
    keys = ["auc", "f1", "accuracy", "balanced_accuracy", "ece", "ece_uncalibrated", "n"]
    out["classification"] = {
        "cnn": {k: cnn.metrics["test"].get(k) for k in keys},
        "features_baseline": {k: feat.metrics["test"].get(k) for k in keys if k in feat.metrics["test"]},
        "cells_per_split": cnn.metrics["n_cells"],
        "images_per_split": cnn.metrics["n_groups"],
        "cnn_training_seconds": round(train_cnn_s, 1),
        "cnn_epochs_run": int(len(cnn.log)),
        "targets": {"auc_min": 0.99, "f1_min": 0.976, "cnn_ahead_of_features": True},
    }
    # inference speed on all crops
    data = load_run(run_c)
    model = load_stiffness_model(cnn.model_dir)
    predict_cells(model, data.table.iloc[:64], data.crops[:64], channels=data.channels, attrs=data.attrs)  # warm-up
    t = time.perf_counter()
    predict_cells(model, data.table, data.crops, channels=data.channels, attrs=data.attrs)
    out["inference_crops_per_second"] = round(len(data.table) / (time.perf_counter() - t), 1)

    # ---------------------------------------------------------------- regression
    t = time.perf_counter()
    run_r = make_run(root / "reg", AdherentConfig(n_images=n_images, stiffness_mode="continuous", afm_fraction=1.0), args.seed + 1)
    out["regression_data_seconds"] = round(time.perf_counter() - t, 1)
    t = time.perf_counter()
    reg = train_model(run_r, TrainConfig.build(target="afm_stiffness_pa", **common), root / "m_reg", overwrite=True)
    train_reg_s = time.perf_counter() - t
    reg_feat = train_model(run_r, TrainConfig.build(target="afm_stiffness_pa", model_type="features", split_from=str(reg.model_dir), **common), root / "m_reg_feat", overwrite=True)
    data_r = load_run(run_r)
    table = data_r.table
    split = reg.split.to_numpy()
    test = split == "test"
    p_cnn = predict_cells(load_stiffness_model(reg.model_dir), table, data_r.crops, channels=data_r.channels, attrs=data_r.attrs)
    p_feat = predict_cells(load_stiffness_model(reg_feat.model_dir), table)
    true = table["stiffness_pa"].to_numpy()
    afm_vals = table["afm_stiffness_pa"].to_numpy()
    lo, hi = p_cnn["pred_lo_pa"].to_numpy(), p_cnn["pred_hi_pa"].to_numpy()
    # oracle: true latent morphology → log10(AFM value), same training cells
    from sklearn.ensemble import HistGradientBoostingRegressor

    train_rows = np.isin(split, ["train", "val"])
    oracle = HistGradientBoostingRegressor(max_iter=300, learning_rate=0.05, random_state=args.seed)
    oracle.fit(table.loc[train_rows, LATENTS].to_numpy(), np.log10(afm_vals[train_rows]))
    p_oracle = 10 ** oracle.predict(table.loc[test, LATENTS].to_numpy())
    cnn_ape = _ape(true[test], p_cnn["pred_stiffness_pa"].to_numpy()[test])
    oracle_ape = _ape(true[test], p_oracle)
    afm_ape = _ape(true[test], afm_vals[test])
    out["regression"] = {
        "cnn_vs_true_E": cnn_ape,
        "features_baseline_vs_true_E": _ape(true[test], p_feat["pred_stiffness_pa"].to_numpy()[test]),
        "oracle_latents_vs_true_E": oracle_ape,
        "afm_measurement_itself_vs_true_E": afm_ape,
        "cnn_over_oracle_mean_ape": round(cnn_ape["ape_mean_pct"] / oracle_ape["ape_mean_pct"], 3),
        "interval_level": 0.9,
        "coverage_of_held_out_afm_values": float(np.mean((lo[test] <= afm_vals[test]) & (afm_vals[test] <= hi[test]))),
        "coverage_of_true_E": float(np.mean((lo[test] <= true[test]) & (true[test] <= hi[test]))),
        "interval_width_fold_median": float(np.median(hi[test] / lo[test])),
        "spearman_log10_cnn": float(pd.Series(np.log10(p_cnn["pred_stiffness_pa"].to_numpy()[test])).corr(pd.Series(np.log10(true[test])), method="spearman")),
        "cells_per_split": reg.metrics["n_cells"],
        "cnn_training_seconds": round(train_reg_s, 1),
        "cnn_epochs_run": int(len(reg.log)),
        "targets": {"cnn_over_oracle_max": 1.2, "coverage_range": [0.88, 0.92]},
    }
    print(json.dumps(out, indent=2, default=float))


if __name__ == "__main__":
    main()
