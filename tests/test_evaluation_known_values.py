"""evaluate_run against a hand-made table whose every number is counted by hand: which cells
are in scope (QC missing = failing, only split == 'test'), the positive class of a binary
model without a 'stiff' class, labels from the probabilities when pred_label is absent,
cells without a prediction, the summary quartiles in Pa, and the gallery's row mapping."""

from __future__ import annotations

import json

import numpy as np
import pandas as pd
import pytest

from mechanoscope.pipeline import evaluate_run
from mechanoscope.pipeline.evaluation import _RowView


def _run(root, table: pd.DataFrame, classes=("b", "a")):
    root.mkdir(parents=True, exist_ok=True)
    table.to_parquet(root / "cells.parquet")
    (root / "predict.json").write_text(json.dumps({"classes": list(classes), "interval_level": 0.9}))
    return root


def _table() -> pd.DataFrame:
    # 10 cells; scope = qc_pass True (None counts as failing) and split 'test'
    qc = [True, True, True, True, None, False, True, True, True, True]
    split = ["test", "test", "test", "test", "test", "test", "val", "calibration", "train", "test"]
    p_a = [0.9, 0.2, 0.7, np.nan, 0.5, 0.5, 0.5, 0.5, 0.5, 0.4]
    label = ["a", "b", "b", "a", "a", "a", "a", "a", "a", None]
    pred = [100.0, 200.0, 400.0, 800.0, 1.0, 1.0, 1.0, 1.0, 1.0, 1600.0]
    return pd.DataFrame({
        "image_id": [f"i{k}" for k in range(10)], "cell_id": np.arange(1, 11), "qc_pass": pd.array(qc, dtype="boolean"),
        "split": split, "pred_prob_a": p_a, "pred_prob_b": [1 - v for v in p_a], "label": label,
        "pred_stiffness_pa": pred,
    })


def test_scope_positive_class_labels_and_counts_by_hand(tmp_path):
    ev = evaluate_run(_run(tmp_path / "r", _table()), figures=False)
    s = ev["scope"]
    # in scope: rows 0, 1, 2, 3, 9 (row 4 has no QC verdict, 5 fails QC, 6–8 are val/calibration/train)
    assert s["n_cells_in_scope"] == 5 and s["n_failed_qc_excluded"] == 2
    assert s["split_counts"] == {"test": 7, "val": 1, "calibration": 1, "train": 1}
    pr = ev["predictions"]
    # two classes without 'stiff': the positive class is the second one the model lists
    assert pr["classes"] == ["b", "a"] and pr["positive_class"] == "a"
    # no pred_label column: argmax of the probabilities → rows 0 a, 1 b, 2 a, 9 b; row 3 has none
    assert pr["class_counts"] == {"b": 2, "a": 2} and pr["n_without_class_prediction"] == 1
    c = ev["classification"]
    # truth and prediction on rows 0 (a→a), 1 (b→b), 2 (b→a); row 3 lacks a prediction, row 9 its truth
    assert c["n"] == 3 and c["accuracy"] == pytest.approx(2 / 3)
    assert c["n_missing_truth"] == 1 and c["n_missing_prediction"] == 1 and c["n_unknown_truth_class"] == 0
    # predicted moduli in scope: 100, 200, 400, 800, 1600 Pa → quartiles 200, 400, 800 Pa
    assert pr["stiffness_pa"] == {"n": 5, "median_pa": 400.0, "q25_pa": 200.0, "q75_pa": 800.0, "iqr_pa": 600.0}


def test_unknown_truth_class_is_not_a_missing_prediction(tmp_path):
    t = _table()
    t.loc[3, "label"] = "z"  # a class the model does not know, on the row without a prediction
    ev = evaluate_run(_run(tmp_path / "r", t), figures=False)
    assert ev["classification"]["n_unknown_truth_class"] == 1 and ev["classification"]["n_missing_prediction"] == 0


def test_gallery_rows_map_scope_rows_to_table_rows():
    arr = np.arange(10)[:, None] * np.ones((1, 3))
    view = _RowView(arr, np.array([0, 1, 2, 3, 9]))
    assert len(view) == 5
    np.testing.assert_array_equal(view[4], [9, 9, 9])
    np.testing.assert_array_equal(view[1], [1, 1, 1])
