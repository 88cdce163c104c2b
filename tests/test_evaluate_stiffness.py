"""Stiffness metrics (classification, regression, conditions), evaluate_run and the CLI."""

from __future__ import annotations

import json
import math

import numpy as np
import pandas as pd
import pytest
from typer.testing import CliRunner

from mechanoscope.cli.main import app
from mechanoscope.errors import MechanoscopeError
from mechanoscope.evaluate import (
    classification_metrics,
    compare_conditions,
    regression_metrics,
    reliability_bins,
    summarize_by_condition,
)

from mechanoscope.pipeline import evaluate_run

runner = CliRunner()
PNG_MAGIC = b"\x89PNG\r\n\x1a\n"


def make_run(root, n=36, *, cls=True, reg=True, truth=True, condition=True, split=False, seed=0):
    """A tiny run folder as `mechanoscope predict` writes it (table, crops, predict.json)."""
    import zarr

    rng = np.random.default_rng(seed)
    root.mkdir(parents=True, exist_ok=True)
    e_true = 10 ** rng.uniform(2, 4, n)
    df = pd.DataFrame({"image_id": [f"img{i % 3}" for i in range(n)], "cell_id": np.arange(n) + 1})
    if condition:
        df["condition"] = np.where(np.arange(n) % 2 == 0, "control", "treated")
    df["qc_pass"] = True
    df.loc[1, "qc_pass"] = False
    if truth:
        df["label"] = np.where(e_true > 1000, "stiff", "soft")
        df["stiffness_pa"] = e_true
        df.loc[0, "stiffness_pa"] = np.nan
    if cls:
        p = np.clip((np.log10(e_true) - 2) / 2 + rng.normal(0, 0.15, n), 0.01, 0.99)
        df["pred_prob_soft"] = 1 - p
        df["pred_prob_stiff"] = p
        df["pred_label"] = np.where(p > 0.5, "stiff", "soft")
    if reg:
        pred = e_true * 10 ** rng.normal(0, 0.2, n)
        df["pred_stiffness_pa"] = pred
        df["pred_lo_pa"] = pred / 2.5
        df["pred_hi_pa"] = pred * 2.5
    if split:
        df["split"] = np.where(np.arange(n) % 3 == 0, "test", "train")
    df.to_parquet(root / "cells.parquet")
    g = zarr.open_group(str(root / "crops.zarr"), mode="w")
    arr = g.create_array("crops", shape=(n, 2, 12, 12), dtype="float32")
    arr[:] = rng.normal(size=(n, 2, 12, 12)).astype("float32")
    (root / "predict.json").write_text(
        json.dumps({"model": {"name": "tiny-cnn"}, "classes": ["soft", "stiff"], "interval_level": 0.9})
    )
    return root


# ------------------------------------------------------------------ classification
def test_perfect_classifier():
    m = classification_metrics(["soft", "soft", "stiff", "stiff"], [[0.9, 0.1], [0.8, 0.2], [0.2, 0.8], [0.1, 0.9]], ["soft", "stiff"])
    assert m["auc"] == 1.0 and m["f1"] == 1.0 and m["accuracy"] == 1.0 and m["balanced_accuracy"] == 1.0
    assert m["positive_class"] == "stiff" and m["auc_average"] == "binary"  # what the report says the AUC is
    assert m["ece"] == pytest.approx(0.15)  # all correct: ECE = mean(1 - confidence)
    assert m["brier"] == pytest.approx((0.01 + 0.04 + 0.04 + 0.01) / 4)
    assert m["roc"]["stiff"]["tpr"][-1] == 1.0


def test_known_small_case():
    y = ["soft"] * 4 + ["stiff"] * 2
    p_stiff = np.array([0.1, 0.2, 0.3, 0.7, 0.6, 0.4])
    m = classification_metrics(y, np.column_stack([1 - p_stiff, p_stiff]), ["soft", "stiff"])
    # predicted: soft soft soft stiff | stiff soft  → TP 1, FP 1, FN 1, TN 3
    assert m["confusion_matrix"]["counts"] == [[3, 1], [1, 1]]
    assert m["confusion_matrix"]["labels"] == ["soft", "stiff"]
    assert m["f1"] == pytest.approx(0.5)
    assert m["accuracy"] == pytest.approx(4 / 6)
    assert m["balanced_accuracy"] == pytest.approx((3 / 4 + 1 / 2) / 2)
    assert m["auc"] == pytest.approx(6 / 8)  # 6 of 8 (stiff, soft) pairs ranked right
    # a 1-D array is P(classes[1]); pred_label overrides the arg-max
    m2 = classification_metrics(y, p_stiff, ["soft", "stiff"], y_pred=["soft"] * 6)
    assert m2["accuracy"] == pytest.approx(4 / 6) and m2["f1"] == 0.0 and m2["auc"] == m["auc"]


def test_multiclass_and_missing_truth():
    classes = ["M0", "M1", "M2"]
    prob = np.eye(3)[[0, 1, 2, 0, 1, 2]] * 0.8 + 0.2 / 3
    y = ["M0", "M1", "M2", "M0", None, np.nan]
    m = classification_metrics(y, prob, classes)
    assert m["n"] == 4 and m["n_missing_truth"] == 2
    assert m["auc"] == 1.0 and m["f1"] == 1.0 and m["positive_class"] is None
    assert "macro" in m["f1_average"] and m["auc_average"] == "one-vs-rest macro"


def test_classification_errors():
    with pytest.raises(MechanoscopeError, match="sum to 1"):
        classification_metrics(["soft"], [[0.5, 0.7]], ["soft", "stiff"])
    with pytest.raises(MechanoscopeError, match="wobbly"):
        classification_metrics(["wobbly"], [[0.5, 0.5]], ["soft", "stiff"])
    with pytest.raises(MechanoscopeError, match="no cell has a true class"):
        classification_metrics([None], [[0.5, 0.5]], ["soft", "stiff"])


def test_reliability_bins_ece():
    r = reliability_bins([True, False], [0.9, 0.6], n_bins=15)
    assert r["ece"] == pytest.approx(0.5 * 0.1 + 0.5 * 0.6)
    assert sum(r["count"]) == 2 and len(r["edges"]) == 16


# ---------------------------------------------------------------------- regression
def test_ape_of_known_values():
    m = regression_metrics([100.0, 200.0], [150.0, 100.0])
    assert m["ape_mean_pct"] == pytest.approx(50.0) and m["ape_median_pct"] == pytest.approx(50.0)
    m = regression_metrics([100.0, 100.0, 100.0], [150.0, 50.0, 110.0])
    assert m["ape_mean_pct"] == pytest.approx(110 / 3) and m["ape_median_pct"] == pytest.approx(50.0)


def test_constant_twofold_overprediction():
    t = np.array([100.0, 300.0, 1000.0, 5000.0])
    m = regression_metrics(t, 2 * t)
    ba = m["bland_altman"]
    assert ba["bias_log10"] == pytest.approx(math.log10(2))
    assert ba["bias_fold"] == pytest.approx(2.0)
    assert ba["sd_log10"] == pytest.approx(0.0, abs=1e-12)
    assert ba["loa_low_fold"] == pytest.approx(2.0) and ba["loa_high_fold"] == pytest.approx(2.0)
    assert m["rmse_log10"] == pytest.approx(math.log10(2))
    assert m["pearson_r_log10"] == pytest.approx(1.0) and m["spearman_rho_log10"] == pytest.approx(1.0)
    assert m["ape_mean_pct"] == pytest.approx(100.0)


def test_interval_coverage():
    t = [100.0, 100.0, 100.0, 100.0]
    lo = [50.0, 120.0, 90.0, 10.0]
    hi = [200.0, 200.0, 100.0, 99.0]
    iv = regression_metrics(t, t, lo, hi)["interval"]
    assert iv["coverage"] == 0.5 and iv["n_below"] == 1 and iv["n_above"] == 1 and iv["n"] == 4
    w = np.array(hi) / np.array(lo)
    assert iv["width_fold_geomean"] == pytest.approx(np.exp(np.log(w).mean()))


def test_nan_truth_ignored_and_counted():
    m = regression_metrics([np.nan, 100.0, 200.0, None], [1.0, 100.0, 200.0, 5.0])
    assert m["n"] == 2 and m["n_missing_truth"] == 2 and m["ape_mean_pct"] == 0.0
    assert m["pearson_r_log10"] is None  # fewer than 3 cells


def test_non_positive_stiffness_is_an_error():
    with pytest.raises(MechanoscopeError, match="true_pa.*positive"):
        regression_metrics([0.0, 100.0], [100.0, 100.0])
    with pytest.raises(MechanoscopeError, match="pred_pa"):
        regression_metrics([100.0, 100.0], [-5.0, 100.0])
    with pytest.raises(MechanoscopeError, match="swapped"):
        regression_metrics([100.0], [100.0], [200.0], [50.0])
    with pytest.raises(MechanoscopeError, match="need truth"):
        regression_metrics([np.nan], [100.0])


# ---------------------------------------------------------------------- conditions
def test_condition_summary_and_tests():
    s = summarize_by_condition(["a"] * 5 + ["b"] * 2, [1, 2, 3, 4, 5, 10, 20])
    assert s["a"]["median_pa"] == 3 and s["a"]["q25_pa"] == 2 and s["a"]["q75_pa"] == 4
    assert s["b"]["n_cells"] == 2
    c = compare_conditions([1, 2, 3, 4, 5, 11, 12, 13, 14, 15], ["ctrl"] * 5 + ["drug"] * 5)
    assert c["test"].startswith("Mann") and c["p"] < 0.05
    assert c["prob_superiority_b_over_a"] == 1.0 and c["median_ratio_b_over_a"] == pytest.approx(13 / 3)
    c3 = compare_conditions(list(range(12)), ["M0"] * 4 + ["M1"] * 4 + ["M2"] * 4)
    assert c3["test"].startswith("Kruskal") and len(c3["pairwise"]) == 3
    assert all(pr["p_holm"] >= pr["p"] for pr in c3["pairwise"])
    assert compare_conditions([1, 2], ["a", "b"]) is None  # one cell per condition


# ---------------------------------------------------------------------- run folder
@pytest.fixture(scope="module")
def full_run(tmp_path_factory):
    run = make_run(tmp_path_factory.mktemp("run") / "run")
    return run, evaluate_run(run)


def test_evaluate_run_writes_json_and_figures(full_run):
    run, ev = full_run
    on_disk = json.loads((run / "evaluation.json").read_text(), parse_constant=lambda c: pytest.fail(c))
    assert on_disk["regression"] == ev["regression"] and on_disk["classification"] == ev["classification"]
    # the metrics recomputed from the run's own table with scikit-learn / numpy on the scored
    # cells (QC-passing, with truth); the QC-failed cell 1 must be left out
    from sklearn.metrics import confusion_matrix, roc_auc_score

    df = pd.read_parquet(run / "cells.parquet")
    scored = df[df["qc_pass"]]
    assert ev["classification"]["auc"] == pytest.approx(
        roc_auc_score(scored["label"] == "stiff", scored["pred_prob_stiff"]), abs=1e-12
    )
    assert ev["classification"]["auc"] != pytest.approx(roc_auc_score(df["label"] == "stiff", df["pred_prob_stiff"]))
    assert ev["classification"]["confusion_matrix"]["counts"] == confusion_matrix(
        scored["label"], scored["pred_label"], labels=["soft", "stiff"]
    ).tolist()
    meas = scored.dropna(subset=["stiffness_pa"])
    ape = (meas["pred_stiffness_pa"] - meas["stiffness_pa"]).abs() / meas["stiffness_pa"] * 100
    assert ev["regression"]["ape_mean_pct"] == pytest.approx(ape.mean(), rel=1e-12)
    assert ev["regression"]["ape_median_pct"] == pytest.approx(ape.median(), rel=1e-12)
    covered = (meas["pred_lo_pa"] <= meas["stiffness_pa"]) & (meas["stiffness_pa"] <= meas["pred_hi_pa"])
    assert ev["regression"]["interval"]["coverage"] == pytest.approx(covered.mean())
    assert ev["regression"]["interval"]["width_fold_geomean"] == pytest.approx(2.5 * 2.5)
    ctrl = scored.loc[scored["condition"] == "control", "pred_stiffness_pa"]
    assert ev["conditions"]["summaries"]["control"]["median_pa"] == pytest.approx(ctrl.median())
    assert ev["conditions"]["summaries"]["control"]["n_cells"] == len(ctrl)
    assert ev["scope"]["n_failed_qc_excluded"] == 1 and ev["scope"]["n_cells_in_scope"] == 35
    assert ev["regression"]["n_missing_truth"] == 1 and ev["regression"]["n"] == 34
    assert ev["regression"]["interval"]["nominal_level"] == 0.9
    assert ev["model"]["model"]["name"] == "tiny-cnn" and ev["n_images"] == 3
    assert ev["conditions"]["comparison"]["test"].startswith("Mann")
    expected = {"roc", "confusion_matrix", "reliability", "predicted_vs_measured", "bland_altman",
                "stiffness_by_condition", "class_by_condition", "crop_gallery"}
    assert set(ev["figures"]) == expected
    for info in ev["figures"].values():
        assert (run / info["file"]).read_bytes()[:8] == PNG_MAGIC


def test_evaluate_run_test_split_only(tmp_path):
    run = make_run(tmp_path / "r", split=True)
    ev = evaluate_run(run, figures=False)
    assert "test split" in ev["scope"]["cells"]
    assert ev["classification"]["n"] == 12 and ev["scope"]["split_counts"]["train"] == 24
    # AUC and APE of the held-out cells only, recomputed from the table
    from sklearn.metrics import roc_auc_score

    df = pd.read_parquet(run / "cells.parquet")
    held_out = df[(df["split"] == "test") & df["qc_pass"]]
    assert ev["classification"]["auc"] == pytest.approx(
        roc_auc_score(held_out["label"] == "stiff", held_out["pred_prob_stiff"]), abs=1e-12
    )
    meas = held_out.dropna(subset=["stiffness_pa"])
    ape = (meas["pred_stiffness_pa"] - meas["stiffness_pa"]).abs() / meas["stiffness_pa"] * 100
    assert ev["regression"]["n"] == len(meas) and ev["regression"]["ape_mean_pct"] == pytest.approx(ape.mean())
    assert ev["figures"] == {}


def test_evaluate_run_without_truth(tmp_path):
    run = make_run(tmp_path / "r", truth=False, reg=False)
    ev = evaluate_run(run, figures=False)
    assert ev["classification"] is None and ev["tasks"] == ["classification"]
    assert ev["predictions"]["class_counts"]["soft"] + ev["predictions"]["class_counts"]["stiff"] == 35
    assert any("no measured stiffness" in n for n in ev["notes"])


def test_evaluate_run_bad_inputs(tmp_path):
    with pytest.raises(MechanoscopeError, match="no such run folder"):
        evaluate_run(tmp_path / "missing")
    (tmp_path / "empty").mkdir()
    with pytest.raises(MechanoscopeError, match="cells.parquet"):
        evaluate_run(tmp_path / "empty")
    run = make_run(tmp_path / "neg", cls=False)
    df = pd.read_parquet(run / "cells.parquet")
    df.loc[3, "stiffness_pa"] = -10.0
    df.to_parquet(run / "cells.parquet")
    with pytest.raises(MechanoscopeError, match="cells.parquet: column stiffness_pa"):
        evaluate_run(run, figures=False)


def test_crops_as_plain_array_or_mismatched(tmp_path):
    import zarr

    from mechanoscope.pipeline.evaluation import _open_crops

    a = zarr.open(str(tmp_path / "crops.zarr"), mode="w", shape=(4, 1, 8, 8), dtype="float32")
    a[:] = 1.0
    arr, why = _open_crops(tmp_path, 4)
    assert why is None and arr.shape == (4, 1, 8, 8)
    arr, why = _open_crops(tmp_path, 5)
    assert arr is None and "do not belong together" in why


# ----------------------------------------------------------------------------- CLI
def test_cli_evaluate_run_and_shorthand(full_run):
    run, _ = full_run
    r = runner.invoke(app, ["evaluate", "run", str(run), "--no-figures"], terminal_width=160)
    assert r.exit_code == 0, r.output
    assert "AUC" in r.output and "mean APE" in r.output and "evaluation.json" in r.output
    r = runner.invoke(app, ["evaluate", str(run), "--no-figures"], terminal_width=160)
    assert r.exit_code == 0, r.output
    assert "Bland–Altman bias" in r.output
    # the segmentation command is untouched; a missing folder is a clean error
    r = runner.invoke(app, ["evaluate", "segmentation", "--help"])
    assert r.exit_code == 0 and "segmentation" in r.output
    r = runner.invoke(app, ["evaluate", "run", str(run / "nope")])
    assert r.exit_code == 2 and "no such run folder" in r.output and "Traceback" not in r.output
