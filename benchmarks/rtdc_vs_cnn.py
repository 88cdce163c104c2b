"""Deformability cytometry (dclab's look-up table) versus an image CNN, on simulated RT-DC events.

Everything starts from ``mechanoscope simulate channel`` (cells with known E deformed as
dclab's table says, rendered, segmented like the instrument, written as .rtdc):

1. **Training set** (E log-uniform) → ``import_rtdc`` (crops + truth) → a tiny CNN
   regressor of ``stiffness_pa`` trained on the event images (``train_model``).
2. **Held-out events** (another seed): E estimated two ways from the same images —
   (a) DC: the instrument's contour → deformation, area → dclab's look-up table (what
   ``rtdc import`` does); (b) the CNN on the crops. Mean/median APE against the true E,
   events per second of each (the look-up alone and the whole import; CNN inference).
3. **Condition series** (passages with rising median E, replicates): every event
   measured by DC and by the CNN, a few cells per replicate by simulated AFM (force
   curves with that E and force noise, fitted with nanite) —
   :func:`mechanoscope.metrics.method_series.method_condition_series`: which condition
   differences each method finds at the replicate level, bias and agreement.

Prints JSON. Usage: nice python benchmarks/rtdc_vs_cnn.py [--n-train 300] [--n-test 120]
[--events-per-sample 25] [--epochs 12] [--seed 0]
"""

from __future__ import annotations

import argparse
import json
import tempfile
import time
import warnings
from pathlib import Path

import numpy as np
import pandas as pd

from mechanoscope.learn.config import TrainConfig
from mechanoscope.learn.data import TrainingData, load_run
from mechanoscope.learn.predict import load_stiffness_model, predict_cells
from mechanoscope.learn.train import train_model
from mechanoscope.mechanics.afm_fit import AFMFitConfig, fit_afm_files
from mechanoscope.mechanics.rtdc import import_rtdc, rtdc_youngs_modulus_pa
from mechanoscope.metrics.method_series import method_condition_series
from mechanoscope.simulate.afm_curves import AFMCurveSimConfig, simulate_afm_curves
from mechanoscope.simulate.channel import ChannelSimConfig, simulate_channel
from mechanoscope.simulate.conditions import ConditionsDesign

CROP = {"crop_size_um": 20.0, "crop_pixels": 40}
ROI = (64, 160)
SERIES = {"names": ["P3", "P5", "P7", "P9"], "medians_pa": [800.0, 1000.0, 1250.0, 1600.0], "cell_sigma_ln": 0.25,
          "replicates": 3, "replicate_sd_ln": 0.08}


def _import(files: list[Path], truth: pd.DataFrame, out: Path) -> tuple[TrainingData, float]:
    tables, crops, seconds, n = [], [], 0.0, 0
    for f in files:
        t0 = time.perf_counter()
        res = import_rtdc(f, out / f.stem, CROP, labels=truth)
        seconds += time.perf_counter() - t0
        n += res.n_events
        d = load_run(out / f.stem)
        tables.append(d.table)
        crops.append(d.crops)
    return TrainingData(pd.concat(tables, ignore_index=True), np.concatenate(crops), d.channels, d.attrs), n / seconds


def _ape(est: np.ndarray, true: np.ndarray) -> dict:
    ok = np.isfinite(est) & (est > 0)
    ape = 100 * np.abs(est[ok] / true[ok] - 1)
    return {"n_events": int(ok.sum()), "n_without_estimate": int((~ok).sum()), "mean_ape_percent": round(float(ape.mean()), 2),
            "median_ape_percent": round(float(np.median(ape)), 2), "median_ratio_to_truth": round(float(np.median(est[ok] / true[ok])), 4),
            "spearman_vs_truth": round(float(pd.Series(est[ok]).corr(pd.Series(true[ok]), method="spearman")), 4)}


def _predict(model, data: TrainingData) -> tuple[np.ndarray, float]:
    t0 = time.perf_counter()
    pred = predict_cells(model, data.table, data.crops, channels=data.channels, attrs=data.attrs, device="cpu")
    return pred["pred_stiffness_pa"].to_numpy(float), len(data.table) / (time.perf_counter() - t0)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--n-train", type=int, default=300)
    ap.add_argument("--n-test", type=int, default=120)
    ap.add_argument("--events-per-sample", type=int, default=25)
    ap.add_argument("--afm-per-sample", type=int, default=6)
    ap.add_argument("--epochs", type=int, default=12)
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--figure", type=Path, default=None, help="where to write the side-by-side figure of the condition series (PNG)")
    args = ap.parse_args()
    warnings.simplefilter("ignore")
    t_start = time.perf_counter()
    out: dict = {"settings": vars(args) | {"crop": CROP, "roi_px": ROI, "series": SERIES}}
    base = dict(roi_px=ROI, youngs_modulus_range_pa=(600.0, 2500.0))
    with tempfile.TemporaryDirectory() as tmp:
        tmp = Path(tmp)
        # 1. training set and a tiny CNN
        sim_tr = simulate_channel(tmp / "sim_train", ChannelSimConfig(n_events=args.n_train, **base), seed=args.seed)
        train, _ = _import(sim_tr.files, sim_tr.truth, tmp / "run_train")
        t0 = time.perf_counter()
        cfg = TrainConfig(target="stiffness_pa", task="regression", width=8, epochs=args.epochs, batch_size=32, patience=5,
                          val_fraction=0.15, calibration_fraction=0.1, test_fraction=0.05, num_threads=2, device="cpu",
                          qc_only=False, seed=args.seed)
        tr = train_model(train, cfg, tmp / "model")
        out["cnn_training"] = {"n_train_events": int(len(train.table)), "epochs": args.epochs, "seconds": round(time.perf_counter() - t0, 1)}
        model = load_stiffness_model(tr.model_dir)
        # 2. held-out events: both methods on the same images
        sim_te = simulate_channel(tmp / "sim_test", ChannelSimConfig(n_events=args.n_test, **base), seed=args.seed + 1)
        test, import_eps = _import(sim_te.files, sim_te.truth, tmp / "run_test")
        true = test.table["stiffness_pa"].to_numpy(float)
        dc = test.table["rtdc_youngs_modulus_pa"].to_numpy(float)
        t0 = time.perf_counter()
        st = test.table.iloc[0]
        rtdc_youngs_modulus_pa(test.table["rtdc_area_um2"], test.table["rtdc_deform"], medium="CellCarrierB", channel_width_um=st.rtdc_channel_width_um,
                               flow_rate_ul_s=st.rtdc_flow_rate_ul_s, pixel_size_um=0.34, temperature_c=23.0)
        lut_eps = len(test.table) / (time.perf_counter() - t0)
        cnn, cnn_eps = _predict(model, test)
        out["held_out"] = {
            "dc_lookup_table": _ape(dc, true) | {"events_per_second_lookup": round(lut_eps, 1), "events_per_second_import": round(import_eps, 1)},
            "cnn": _ape(cnn, true) | {"events_per_second_inference": round(cnn_eps, 1)},
        }
        # 3. condition series: DC and CNN on every event, simulated AFM on a few per replicate
        sim_se = simulate_channel(tmp / "sim_series", ChannelSimConfig(conditions=ConditionsDesign(**SERIES), events_per_sample=args.events_per_sample,
                                                                       **base), seed=args.seed + 2)
        series, _ = _import(sim_se.files, sim_se.truth, tmp / "run_series")
        series.table["pred_stiffness_pa"], _ = _predict(model, series)
        pick = series.table.groupby(["condition", "replicate"], sort=False).head(args.afm_per_sample)
        meas = pd.DataFrame({"image_id": pick["image_id"].to_numpy(), "position_y_um": 0.0, "position_x_um": 0.0,
                             "measured_stiffness_pa": pick["stiffness_pa"].to_numpy()})
        afm_truth = simulate_afm_curves(tmp / "afm", AFMCurveSimConfig(noise_pn=20.0), measurements=meas, seed=args.seed + 3)
        fit = fit_afm_files(tmp / "afm", AFMFitConfig(rate_quality=False)).table
        fit = fit.assign(file=[str(Path(f).name) for f in fit["file"]])
        afm_truth = afm_truth.assign(file=[str(Path(f).name) for f in afm_truth["file"]])
        afm = afm_truth.merge(fit[["file", "curve_index", "youngs_modulus_pa", "status"]], on=["file", "curve_index"], suffixes=("_true", ""))
        afm = afm[afm["status"] == "ok"]
        series.table = series.table.merge(afm[["image_id", "youngs_modulus_pa"]].rename(columns={"youngs_modulus_pa": "afm_stiffness_pa"}),
                                          on="image_id", how="left")
        out["condition_series"] = method_condition_series(
            series.table, {"AFM (simulated curves, nanite)": "afm_stiffness_pa", "DC (dclab look-up table)": "rtdc_youngs_modulus_pa",
                           "CNN (event images)": "pred_stiffness_pa"},
            order=SERIES["names"], truth="stiffness_pa", n_bootstrap=300, seed=args.seed)
        if args.figure is not None:  # the published work's comparison: the series by AFM, DC and the CNN side by side
            from mechanoscope.report.method_series_figure import method_series_figure

            args.figure.write_bytes(method_series_figure(out["condition_series"], title="Passage series: AFM, DC and CNN"))
            out["figure"] = str(args.figure)
    out["seconds_total"] = round(time.perf_counter() - t_start, 1)
    print(json.dumps(out, indent=2, default=str))


if __name__ == "__main__":
    main()
