"""Benchmark of condition comparisons with replicates (``mechanoscope compare``).

Prints JSON with:

* ``passage_series``: an image-level simulation (``simulate_adherent`` with the
  ``passage`` design: P3/P5/P7/P9, medians 300→1100 Pa, 3 replicates, log-normal
  replicate effect SD 0.15 on ln scale, a senescence score per replicate rising 0.4
  per decade of median modulus). The compared value is a *noisy proxy of the true
  modulus* taken from the simulation's truth table (``stiffness_pa`` × exp(N(0, 0.5)),
  about the published CNN's error), not a trained CNN's prediction: training CNNs
  takes far longer than a benchmark here should. Reports the trend test (p-value,
  direction) and the functional-readout correlation recovered against the known slope.
* ``null``: ≥ 200 experiments with no true difference, drawn at the *table level*
  from the same generative model (replicate effects + cell scatter,
  :func:`mechanoscope.simulate.conditions.simulate_condition_table`; no images, so it
  runs in about a minute). False-positive rates at α = 0.05 of the replicate-level
  test, the mixed model and the cell-level test (which treats cells as independent),
  with 95 % binomial (Wilson) intervals; for two conditions and for four ordered
  conditions (omnibus and trend tests). With 200 experiments a rate's 95 % interval
  spans about ±3 points around 5 %, so ``null_replicate_level_only`` repeats the cheap
  tests (replicate-level and cell-level, no mixed model) over 2000 experiments.
* ``power``: table-level passage series with the true trend: how often each trend test
  detects it, and the mean functional correlation.

Usage: python benchmarks/compare.py [--n-null 200] [--n-power 50] [--seed 0] [--quick]
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

from mechanoscope.metrics.conditions import compare_replicated_conditions
from mechanoscope.simulate import AdherentConfig, simulate_adherent
from mechanoscope.simulate.conditions import ConditionsDesign, FunctionalReadoutSpec, condition_preset, simulate_condition_table

PROXY_SD_LN = 0.5  # log-normal error of the stand-in for predicted stiffness
ALPHA = 0.05
ORDER = ["P3", "P5", "P7", "P9"]


def _wilson(k: int, n: int) -> list[float]:
    from statsmodels.stats.proportion import proportion_confint

    lo, hi = proportion_confint(k, n, alpha=0.05, method="wilson")
    return [float(lo), float(hi)]


def _proxy(cells: pd.DataFrame, rng: np.random.Generator) -> pd.DataFrame:
    return cells.assign(pred_stiffness_pa=cells["stiffness_pa"] * np.exp(PROXY_SD_LN * rng.standard_normal(len(cells))))


def passage_series(seed: int, images_per_replicate: int, cells_per_image: int, size_px: int) -> dict:
    design = condition_preset("passage", replicates=3, replicate_sd_ln=0.15, functional=FunctionalReadoutSpec())
    cfg = AdherentConfig(n_images=design.n_units * images_per_replicate, cells_per_image=cells_per_image,
                         image_shape_px=(size_px, size_px), conditions=design, afm_fraction=0.0)
    t0 = time.perf_counter()
    with tempfile.TemporaryDirectory() as tmp:
        out = simulate_adherent(cfg, Path(tmp) / "sim", seed=seed)
        cells = pd.read_parquet(out / "cells.parquet")
        func = pd.read_parquet(out / "functional.parquet")
    t_sim = time.perf_counter() - t0
    cells = _proxy(cells, np.random.default_rng(seed + 1))
    t0 = time.perf_counter()
    res = compare_replicated_conditions(cells, value="pred_stiffness_pa", order=ORDER, functional=func)
    t_cmp = time.perf_counter() - t0
    truth = compare_replicated_conditions(cells, value="stiffness_pa", order=ORDER, functional=func, n_bootstrap=200)
    tr = res.tests["trend"]
    f = res.functional["readouts"]["senescence_score"]
    ft = truth.functional["readouts"]["senescence_score"]
    return {
        "design": {"conditions": ORDER, "medians_pa": design.medians_pa, "replicates": 3, "replicate_sd_ln": 0.15,
                   "cell_sigma_ln": design.cell_sigma_ln, "images": cfg.n_images, "cells": int(len(cells)),
                   "value": f"pred_stiffness_pa = stiffness_pa × exp(N(0, {PROXY_SD_LN})) (a proxy, not a trained CNN)"},
        "simulate_seconds": round(t_sim, 2),
        "compare_seconds": round(t_cmp, 2),
        "median_pa": dict(zip(res.summary["condition"], res.summary["median"].round(1))),
        "trend_mixed_model": {"p_value": tr["mixed_model"]["p_value"], "direction": tr["mixed_model"]["direction"],
                              "fold_per_step": float(np.exp(tr["mixed_model"]["slope_per_step"])),
                              "true_fold_per_step": float(np.exp(np.polyfit(range(4), np.log(design.medians_pa), 1)[0]))},
        "trend_jonckheere_terpstra": {"p_value": tr["jonckheere_terpstra"]["p_value"], "direction": tr["jonckheere_terpstra"]["direction"]},
        "replicate_level_anova_p": res.tests["replicate_level"]["p_value"],
        "mixed_model_p": res.tests["mixed_model"]["omnibus"]["p_value"],
        "cell_level_p": res.tests["cell_level"]["p_value"],
        "functional": {"level": "replicate", "n": f["n"], "pearson_r": f["pearson_r"], "pearson_p": f["pearson_p"],
                       "slope_per_decade": f["slope_per_decade"], "true_slope_per_decade": design.functional.slope_per_decade,
                       "on_true_stiffness": {"pearson_r": ft["pearson_r"], "slope_per_decade": ft["slope_per_decade"]}},
    }


def _rates(rows: list[dict], keys: list[str]) -> dict:
    out = {}
    for k in keys:
        p = np.array([r[k] for r in rows], dtype=float)
        ok = np.isfinite(p)
        hits = int((p[ok] < ALPHA).sum())
        out[k] = {"rate": hits / max(ok.sum(), 1), "ci95": _wilson(hits, int(ok.sum())), "n": int(ok.sum())}
    return out


def null_experiments(n: int, seed: int, cells_per_replicate: int) -> dict:
    out = {}
    ss = np.random.SeedSequence(seed)
    for name, k in (("two_conditions", 2), ("four_ordered_conditions", 4)):
        design = ConditionsDesign(names=ORDER[:k], medians_pa=[500.0] * k, replicates=3, replicate_sd_ln=0.15)
        rows = []
        t0 = time.perf_counter()
        for child in ss.spawn(n):
            rng = np.random.default_rng(child)
            cells, _ = simulate_condition_table(design, cells_per_replicate, rng)
            cells = _proxy(cells, rng)
            r = compare_replicated_conditions(cells, value="pred_stiffness_pa", order=ORDER[:k] if k > 2 else None, n_bootstrap=100)
            row = {"replicate_level": r.tests["replicate_level"]["p_value"], "mixed_model": r.tests["mixed_model"]["omnibus"]["p_value"],
                   "cell_level": r.tests["cell_level"]["p_value"],
                   "pairwise_any_replicate_holm": float(np.nanmin(r.pairwise["p_replicates_holm"])),
                   "pairwise_any_cells_holm": float(np.nanmin(r.pairwise["p_cells_holm"]))}
            if k > 2:
                row["trend_mixed_model"] = r.tests["trend"]["mixed_model"]["p_value"]
                row["trend_jonckheere_terpstra"] = r.tests["trend"]["jonckheere_terpstra"]["p_value"]
            rows.append(row)
        out[name] = {
            "experiments": n, "conditions": k, "replicates": 3, "cells_per_replicate": cells_per_replicate,
            "replicate_sd_ln": 0.15, "cell_sigma_ln": design.cell_sigma_ln, "proxy_sd_ln": PROXY_SD_LN,
            "false_positive_rate": _rates(rows, [c for c in rows[0]]),
            "seconds": round(time.perf_counter() - t0, 1),
        }
    return out


def replicate_level_many(n: int, seed: int, cells_per_replicate: int) -> dict:
    """The cheap tests (no mixed model) over many more null experiments: a tighter estimate of their rates."""
    from scipy import stats

    from mechanoscope.metrics.conditions import replicate_level_tests

    out = {}
    for name, k in (("two_conditions", 2), ("four_ordered_conditions", 4)):
        design = ConditionsDesign(names=ORDER[:k], medians_pa=[500.0] * k, replicates=3, replicate_sd_ln=0.15)
        rows = []
        for child in np.random.SeedSequence(seed + 100 + k).spawn(n):
            rng = np.random.default_rng(child)
            cells, _ = simulate_condition_table(design, cells_per_replicate, rng)
            cells = _proxy(cells, rng)
            med = cells.groupby(["condition", "replicate"])["pred_stiffness_pa"].median()
            rep = replicate_level_tests({c: np.log(med[c].to_numpy()) for c in ORDER[:k]})
            groups = [cells.loc[cells["condition"] == c, "pred_stiffness_pa"].to_numpy() for c in ORDER[:k]]
            cell_p = stats.mannwhitneyu(groups[1], groups[0]).pvalue if k == 2 else stats.kruskal(*groups).pvalue
            rows.append({"replicate_level": rep["p_value"], "cell_level": float(cell_p)})
        out[name] = {"experiments": n, "test": rep["test"], "false_positive_rate": _rates(rows, ["replicate_level", "cell_level"])}
    return out


def power(n: int, seed: int, cells_per_replicate: int) -> dict:
    design = condition_preset("passage", replicates=3, replicate_sd_ln=0.15, functional=FunctionalReadoutSpec())
    rows, r_f = [], []
    for child in np.random.SeedSequence(seed + 7).spawn(n):
        rng = np.random.default_rng(child)
        cells, reps = simulate_condition_table(design, cells_per_replicate, rng)
        cells = _proxy(cells, rng)
        r = compare_replicated_conditions(cells, value="pred_stiffness_pa", order=ORDER, n_bootstrap=100,
                                          functional=reps[["condition", "replicate", "senescence_score"]])
        tr = r.tests["trend"]
        rows.append({"trend_mixed_model": tr["mixed_model"]["p_value"] if tr["mixed_model"]["direction"] == "increasing" else 1.0,
                     "trend_jonckheere_terpstra": tr["jonckheere_terpstra"]["p_value"] if tr["jonckheere_terpstra"]["direction"] == "increasing" else 1.0,
                     "replicate_level": r.tests["replicate_level"]["p_value"], "mixed_model": r.tests["mixed_model"]["omnibus"]["p_value"]})
        r_f.append(r.functional["readouts"]["senescence_score"]["pearson_r"])
    return {"experiments": n, "cells_per_replicate": cells_per_replicate, "detection_rate_increasing_at_0.05": _rates(rows, list(rows[0])),
            "functional_pearson_r_mean": float(np.mean(r_f)), "functional_pearson_r_range": [float(np.min(r_f)), float(np.max(r_f))]}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--n-null", type=int, default=200)
    ap.add_argument("--n-power", type=int, default=50)
    ap.add_argument("--n-many", type=int, default=2000, help="Null experiments for the cheap tests alone (no mixed model).")
    ap.add_argument("--cells-per-replicate", type=int, default=100)
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--quick", action="store_true", help="Small run (smoke test).")
    args = ap.parse_args()
    if args.quick:
        args.n_null, args.n_power, args.n_many = 20, 5, 100
    warnings.simplefilter("ignore")
    t0 = time.perf_counter()
    result = {
        "passage_series": passage_series(args.seed, images_per_replicate=2, cells_per_image=12, size_px=320),
        "null": null_experiments(args.n_null, args.seed, args.cells_per_replicate),
        "null_replicate_level_only": replicate_level_many(args.n_many, args.seed, args.cells_per_replicate),
        "power": power(args.n_power, args.seed, args.cells_per_replicate),
        "alpha": ALPHA,
        "notes": [
            "value = truth stiffness x log-normal error (SD 0.5 on ln scale) as a stand-in for CNN predictions; training CNNs is too slow for this benchmark",
            "null and power experiments are drawn at the table level from the simulator's generative model (replicate effect + cell scatter), without images",
            "cell_level = Mann-Whitney (2 conditions) / Kruskal-Wallis (4) on cells as if independent: the pseudo-replication the report used to run",
        ],
    }
    result["seconds_total"] = round(time.perf_counter() - t0, 1)
    print(json.dumps(result, indent=2, default=float))


if __name__ == "__main__":
    main()
