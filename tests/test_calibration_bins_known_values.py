"""Reliability bins and the confusion matrix as they are written into metrics.json, by hand.

Counts are JSON integers (not 3.0), the confusion matrix says which axis is which, a float32
probability a hair above 1 (a softmax rounding) lands in the last bin instead of a bin of its own,
and column vectors give the same bins as flat arrays.
"""

from __future__ import annotations

import json

import numpy as np

from mechanoscope.evaluate.stiffness import classification_metrics, reliability_bins


def test_confusion_matrix_block_by_hand():
    # true soft, soft, stiff, stiff, stiff; predicted (argmax) soft, stiff, stiff, stiff, soft
    y_true = ["soft", "soft", "stiff", "stiff", "stiff"]
    prob = np.array([[0.9, 0.1], [0.4, 0.6], [0.2, 0.8], [0.3, 0.7], [0.6, 0.4]])
    out = classification_metrics(y_true, prob, ["soft", "stiff"])
    block = out["confusion_matrix"]
    assert block == {"labels": ["soft", "stiff"], "rows": "true class", "columns": "predicted class",
                     "counts": [[1, 1], [1, 2]]}
    assert all(type(v) is int for row in block["counts"] for v in row)
    assert '"counts": [[1, 1], [1, 2]]' in json.dumps(block)


def test_reliability_bins_by_hand_with_integer_counts():
    # 4 bins of width 0.25: confidences 0.1 and 0.2 in bin 0 (one right), 0.6 in bin 2 (right),
    # 0.9 and 1.0 in bin 3 (one right). ECE = 2/5 |0.5 - 0.15| + 1/5 |1 - 0.6| + 2/5 |0.5 - 0.95|
    correct = [True, False, True, False, True]
    confidence = [0.1, 0.2, 0.6, 0.9, 1.0]
    out = reliability_bins(correct, confidence, n_bins=4)
    assert out["count"] == [2, 0, 1, 2]
    assert all(type(v) is int for v in out["count"])
    np.testing.assert_allclose([v for v in out["confidence"] if v is not None], [0.15, 0.6, 0.95])
    assert out["accuracy"][1] is None and out["accuracy"][2] == 1.0
    assert abs(out["ece"] - (0.4 * 0.35 + 0.2 * 0.4 + 0.4 * 0.45)) < 1e-12


def test_a_probability_rounded_just_above_one_stays_in_the_last_bin():
    # float32 softmax outputs can sum to 1 + 1e-7: that cell belongs to the top bin, and there
    # are still exactly n_bins bins
    top = float(np.nextafter(np.float32(1.0), np.float32(2.0)))
    out = reliability_bins([True, True], [0.95, top], n_bins=10)
    assert len(out["count"]) == 10
    assert out["count"][9] == 2 and sum(out["count"]) == 2


def test_column_vectors_give_the_same_bins_as_flat_arrays():
    rng = np.random.default_rng(3)
    conf = rng.uniform(0.5, 1.0, 40)
    correct = rng.uniform(size=40) < conf
    flat = reliability_bins(correct, conf)
    column = reliability_bins(correct.reshape(-1, 1), conf.reshape(-1, 1))
    assert column == flat
