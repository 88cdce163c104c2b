"""Benchmark of stiffness learning on simulated adherent cells (issue: stiffness models).

Two fixed-seed simulated data sets of bright-field fields of view (the regression set in
phase contrast with ``--regression-modality phase_contrast``):

* **classification**: ``soft`` (median 200 Pa) and ``stiff`` (2 kPa) populations, one
  population per image; CNN vs the gradient-boosting features baseline, both on the
  same split by image, metrics on held-out test images.
* **regression**: Young's modulus log-uniform 100 Pa – 10 kPa; every whole cell has a
  simulated AFM value (true E × 25 % log-normal error) and the models are trained on
  those noisy values only; APE is computed against the TRUE modulus of held-out images.
  The **oracle** is a gradient-boosting regressor given the simulator's true latent
  morphology variables (volume, spread area, height, aspect ratio, fibre and ruffle
  amplitudes) of the same training cells with the same noisy labels: the information
  limit of the data for that training budget. The oracle is fitted on the training +
  validation cells; the CNN learns from the training cells and uses the validation cells
  to choose its epoch. With ``--refit-regression`` the CNN and the features baseline are
  then refitted on training + validation cells (``TrainConfig.refit``).
* **oracle without volume**: the same regressor given only what a bright-field image
  shows directly: the stress-fibre texture amplitude in µm (relative amplitude × mean
  height), spread area, aspect ratio and ruffling, but not the cell volume (a hidden
  nuisance: the simulator's fibre modulation is relative to the local height).
* **learning curve** (regression): the CNN and the oracle retrained on 1/4 and 1/2 of
  the training images (same validation, calibration and test images), so that a lab
  can see how the error falls with the number of AFM-measured cells.

Cells are cut with the TRUE label images so that the figures measure the stiffness
models, not segmentation (``benchmarks/segment.py`` measures that).

Prints JSON. ``--quick`` runs a small smoke version (~1 min); the full run takes ~75 min
on two cores (``--threads 1``).
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
from mechanoscope.learn.data import TrainingData, load_run
from mechanoscope.learn.predict import load_stiffness_model, predict_cells
from mechanoscope.learn.train import train_model
from mechanoscope.simulate import AdherentConfig, simulate_adherent

OBSERVABLE_LATENTS = ["fibre_texture_um", "spread_area_um2", "aspect_ratio_latent", "ruffle_amplitude"]
LATENTS = ["volume_um3", "spread_area_um2", "mean_height_um", "aspect_ratio_latent", "fibre_amplitude", "ruffle_amplitude"]
CROP_UM = 80.0


def make_run(root: Path, config: AdherentConfig, seed: int, crop_pixels: int = 64) -> Path:
    sim = simulate_adherent(config, root / "sim", seed=seed, overwrite=True)
    run = root / "run"
    extract_folder(sim / "images", sim / "labels", run, ExtractConfig.build(crop={"crop_size_um": CROP_UM, "crop_pixels": crop_pixels}))
    cells = pd.read_parquet(run / "cells.parquet")
    truth = pd.read_parquet(sim / "cells.parquet")
    afm = pd.read_parquet(sim / "afm.parquet").rename(columns={"truth_cell_id": "cell_id", "measured_stiffness_pa": "afm_stiffness_pa"})
    cells = cells.merge(truth[["image_id", "cell_id", "label", "stiffness_pa"] + LATENTS], on=["image_id", "cell_id"], how="left")
    cells = cells.merge(afm[["image_id", "cell_id", "afm_stiffness_pa"]], on=["image_id", "cell_id"], how="left")
    cells["fibre_texture_um"] = cells["fibre_amplitude"] * cells["mean_height_um"]
    cells.to_parquet(run / "cells.parquet", index=False)
    return run


def _ape(true: np.ndarray, pred: np.ndarray) -> dict:
    m = regression_metrics(true, pred)
    return {"ape_mean_pct": m["ape_mean_pct"], "ape_median_pct": m["ape_median_pct"], "rmse_log10": m["rmse_log10"]}


def _oracle(table: pd.DataFrame, train_rows: np.ndarray, test_rows: np.ndarray, seed: int, columns: list[str] = LATENTS) -> np.ndarray:
    """Gradient boosting on true latents → log10(AFM value); predictions (Pa) on test rows."""
    from sklearn.ensemble import HistGradientBoostingRegressor

    model = HistGradientBoostingRegressor(max_iter=300, learning_rate=0.05, random_state=seed)
    model.fit(table.loc[train_rows, columns].to_numpy(), np.log10(table.loc[train_rows, "afm_stiffness_pa"].to_numpy()))
    return 10 ** model.predict(table.loc[test_rows, columns].to_numpy())


def _cells_learnt_from(metrics: dict) -> int:
    """Training cells, plus the validation cells when the model was refitted on them."""
    return metrics.get("refit", {}).get("cells", metrics["n_cells"]["train"])


def _learning_curve(data, reg, common: dict, root: Path, seed: int) -> list[dict]:
    """CNN and oracle trained on nested subsets of the training images (same other splits)."""
    table = data.table
    split = reg.split.to_numpy()
    test = split == "test"
    true = table["stiffness_pa"].to_numpy()
    train_images = sorted(table.loc[split == "train", "image_id"].unique())
    rng = np.random.default_rng(seed)
    order = list(rng.permutation(train_images))
    rows = []
    for fraction in (0.25, 0.5):
        keep = set(order[: max(1, int(round(fraction * len(order))))])
        sub_table = table.copy()
        dropped = (split == "train") & ~table["image_id"].isin(keep).to_numpy()
        sub_table.loc[dropped, "afm_stiffness_pa"] = np.nan  # these cells have no AFM label
        sub = TrainingData(sub_table, data.crops, data.channels, data.attrs, data.path)
        t = time.perf_counter()
        res = train_model(sub, TrainConfig.build(target="afm_stiffness_pa", split_from=str(reg.model_dir), **common), root / f"m_reg_{fraction}", overwrite=True)
        seconds = time.perf_counter() - t
        pred = predict_cells(load_stiffness_model(res.model_dir), table[test], data.crops[test], channels=data.channels, attrs=data.attrs)
        train_rows = np.isin(split, ["train", "val"]) & ~dropped & table["afm_stiffness_pa"].notna().to_numpy()
        cnn = _ape(true[test], pred["pred_stiffness_pa"].to_numpy())
        oracle = _ape(true[test], _oracle(table, train_rows, test, seed))
        rows.append({"training_fraction": fraction, "training_cells": res.metrics["n_cells"]["train"], "cells_learnt_from": _cells_learnt_from(res.metrics), "cnn_vs_true_E": cnn, "oracle_vs_true_E": oracle, "cnn_over_oracle_mean_ape": round(cnn["ape_mean_pct"] / oracle["ape_mean_pct"], 3), "cnn_training_seconds": round(seconds, 1)})
    return rows


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__)
    ap.add_argument("--quick", action="store_true")
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--n-images", type=int, default=160, help="fields of view of the classification data set")
    ap.add_argument("--n-images-regression", type=int, default=640, help="fields of view of the regression data set (~4.6 AFM-labelled training cells each)")
    ap.add_argument("--crop-pixels", type=int, default=64, help="crop edge (px) for the 80-µm classification crops")
    ap.add_argument("--crop-pixels-regression", type=int, default=128, help="crop edge (px) for the 80-µm regression crops (128: about the camera pixel, keeps stress-fibre texture)")
    ap.add_argument("--regression-modality", choices=["brightfield", "phase_contrast"], default="brightfield")
    ap.add_argument("--skip-classification", action="store_true")
    ap.add_argument("--no-learning-curve", action="store_true", help="skip the regression learning curve (1/4, 1/2 of the training images)")
    ap.add_argument("--epochs", type=int, default=35)
    ap.add_argument("--ensemble", type=int, default=2, help="deep-ensemble size of the CNN classifier")
    ap.add_argument("--ensemble-regression", type=int, default=1, help="deep-ensemble size of the CNN regressor (also in the learning curve)")
    ap.add_argument("--refit-regression", action="store_true", help="once the validation cells have chosen the epoch, refit the regressors on training + validation cells (the cells the oracle is fitted on); about 2.4x the CNN training time")
    ap.add_argument("--no-tta", action="store_true", help="disable test-time augmentation")
    ap.add_argument("--threads", type=int, default=0, help="torch CPU threads (0 = torch default)")
    ap.add_argument("--workdir", type=Path, default=None)
    args = ap.parse_args()
    n_images = 16 if args.quick else args.n_images
    n_images_reg = 16 if args.quick else args.n_images_regression
    epochs = 2 if args.quick else args.epochs
    root = args.workdir or Path(tempfile.mkdtemp(prefix="mechanoscope_bench_"))
    out: dict = {
        "benchmark": "stiffness", "seed": args.seed, "n_images": n_images, "n_images_regression": n_images_reg, "epochs_max": epochs,
        "crop_classification": {"crop_size_um": CROP_UM, "crop_pixels": args.crop_pixels},
        "crop_regression": {"crop_size_um": CROP_UM, "crop_pixels": args.crop_pixels_regression}, "workdir": str(root),
    }

    common = dict(seed=args.seed, epochs=epochs, num_threads=args.threads, min_cells_per_class=5, tta=not args.no_tta)
    out["tta"] = not args.no_tta
    if not args.skip_classification:
        _classification(args, root, n_images, common, out)
    _regression(args, root, n_images_reg, common, out)
    print(json.dumps(out, indent=2, default=float))


def _classification(args, root: Path, n_images: int, common: dict, out: dict) -> None:
    # ---------------------------------------------------------------- classification
    t = time.perf_counter()
    run_c = make_run(root / "cls", AdherentConfig(n_images=n_images, afm_fraction=0.0), args.seed, args.crop_pixels)
    out["classification_data_seconds"] = round(time.perf_counter() - t, 1)
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



def _regression(args, root: Path, n_images_reg: int, common: dict, out: dict) -> None:
    # ---------------------------------------------------------------- regression
    t = time.perf_counter()
    out["regression_modality"] = args.regression_modality
    sim_cfg = AdherentConfig(n_images=n_images_reg, stiffness_mode="continuous", afm_fraction=1.0, modality=args.regression_modality, defocus_um=3.0 if args.regression_modality == "brightfield" else 0.0)
    run_r = make_run(root / "reg", sim_cfg, args.seed + 1, args.crop_pixels_regression)
    out["regression_data_seconds"] = round(time.perf_counter() - t, 1)
    t = time.perf_counter()
    out["regressor_ensemble_size"] = args.ensemble_regression
    out["regressors_refit_on_validation_cells"] = args.refit_regression
    common = {**common, "refit": args.refit_regression}
    reg = train_model(run_r, TrainConfig.build(target="afm_stiffness_pa", ensemble_size=args.ensemble_regression, **common), root / "m_reg", overwrite=True)
    train_reg_s = time.perf_counter() - t
    reg_feat = train_model(run_r, TrainConfig.build(target="afm_stiffness_pa", model_type="features", split_from=str(reg.model_dir), **common), root / "m_reg_feat", overwrite=True)
    data_r = load_run(run_r)
    table = data_r.table
    split = reg.split.to_numpy()
    test = split == "test"
    # held-out test cells only (TTA inference on every crop would cost minutes)
    p_cnn = predict_cells(load_stiffness_model(reg.model_dir), table[test], data_r.crops[test], channels=data_r.channels, attrs=data_r.attrs)
    p_feat = predict_cells(load_stiffness_model(reg_feat.model_dir), table[test])
    true = table["stiffness_pa"].to_numpy()
    afm_vals = table["afm_stiffness_pa"].to_numpy()
    lo, hi = np.full(len(table), np.nan), np.full(len(table), np.nan)
    lo[test], hi[test] = p_cnn["pred_lo_pa"].to_numpy(), p_cnn["pred_hi_pa"].to_numpy()
    # oracle: true latent morphology → log10(AFM value), same training (+ validation) cells
    train_rows = np.isin(split, ["train", "val"])
    p_oracle = _oracle(table, train_rows, test, args.seed)
    cnn_ape = _ape(true[test], p_cnn["pred_stiffness_pa"].to_numpy())
    oracle_ape = _ape(true[test], p_oracle)
    oracle_observable_ape = _ape(true[test], _oracle(table, train_rows, test, args.seed, OBSERVABLE_LATENTS))
    afm_ape = _ape(true[test], afm_vals[test])
    out["regression"] = {
        "cnn_vs_true_E": cnn_ape,
        "features_baseline_vs_true_E": _ape(true[test], p_feat["pred_stiffness_pa"].to_numpy()),
        "oracle_latents_vs_true_E": oracle_ape,
        "oracle_without_volume_vs_true_E": oracle_observable_ape,
        "afm_measurement_itself_vs_true_E": afm_ape,
        "cnn_over_oracle_mean_ape": round(cnn_ape["ape_mean_pct"] / oracle_ape["ape_mean_pct"], 3),
        "interval_level": 0.9,
        "coverage_of_held_out_afm_values": float(np.mean((lo[test] <= afm_vals[test]) & (afm_vals[test] <= hi[test]))),
        "coverage_of_true_E": float(np.mean((lo[test] <= true[test]) & (true[test] <= hi[test]))),
        "interval_width_fold_median": float(np.median(hi[test] / lo[test])),
        "spearman_log10_cnn": float(pd.Series(np.log10(p_cnn["pred_stiffness_pa"].to_numpy())).corr(pd.Series(np.log10(true[test])), method="spearman")),
        "cells_per_split": reg.metrics["n_cells"],
        "cnn_training_seconds": round(train_reg_s, 1),
        "cnn_epochs_run": int((reg.log["pass"] == "select").sum() if "pass" in reg.log else len(reg.log)),
        "cnn_refit_epochs": reg.metrics.get("refit", {}).get("epochs_per_network"),
        "targets": {"cnn_over_oracle_max": 1.2, "coverage_range": [0.88, 0.92]},
    }
    if not args.no_learning_curve:
        curve = _learning_curve(data_r, reg, {**common, "ensemble_size": args.ensemble_regression}, root, args.seed)
        curve.append({"training_fraction": 1.0, "training_cells": reg.metrics["n_cells"]["train"], "cells_learnt_from": _cells_learnt_from(reg.metrics), "cnn_vs_true_E": cnn_ape, "oracle_vs_true_E": oracle_ape, "cnn_over_oracle_mean_ape": out["regression"]["cnn_over_oracle_mean_ape"], "cnn_training_seconds": round(train_reg_s, 1)})
        out["regression_learning_curve"] = curve


if __name__ == "__main__":
    main()
