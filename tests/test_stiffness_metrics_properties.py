"""Stiffness metrics checked against reference implementations and hand-computed truth.

Every number of :mod:`mechanoscope.evaluate.stiffness`'s pure functions is compared with
scikit-learn / scipy / statsmodels (where installed) or a brute-force definition, on fixed
cases and on hypothesis-generated data (order invariance, scale invariance, counts).
"""

from __future__ import annotations

import json
import math
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
from hypothesis import assume, given, settings
from hypothesis import strategies as st
from scipy import stats
from sklearn import metrics as skm

from mechanoscope.errors import MechanoscopeError
from mechanoscope.evaluate.conditions import _class_by_condition_test, _holm, compare_conditions, summarize_by_condition
from mechanoscope.evaluate.stiffness import (
    _as_float,
    _as_labels,
    _check_positive,
    _jsonable,
    _none_if_nan,
    classification_metrics,
    regression_metrics,
    reliability_bins,
)
from mechanoscope.pipeline.evaluation import _summary_pa

FAST = settings(max_examples=40, deadline=None)
SLOW = settings(max_examples=15, deadline=None)  # each example calls several scikit-learn metrics

seeds = st.integers(0, 2**32 - 1)


# ============================================================================ references
def ref_holm(p):
    """Holm step-down adjusted p-values, straight from the definition:
    p_adj(i) = max over j <= rank(i) of min(1, (m - j) * p_(j)) (0-based j, sorted p)."""
    p = np.asarray(p, float)
    m = p.size
    order = np.argsort(p, kind="stable")
    adj_sorted = np.minimum(1.0, np.maximum.accumulate((m - np.arange(m)) * p[order]))
    out = np.empty(m)
    out[order] = adj_sorted
    return out


def ref_reliability(correct, conf, n_bins):
    """Loop over bins (b/n, (b+1)/n], the first also holding 0."""
    correct = np.asarray(correct, float)
    conf = np.asarray(conf, float)
    counts, mconf, macc = [], [], []
    ece = 0.0
    for b in range(n_bins):
        lo, hi = b / n_bins, (b + 1) / n_bins
        sel = (conf > lo) & (conf <= hi)
        if b == 0:
            sel |= conf == 0.0
        counts.append(int(sel.sum()))
        if sel.any():
            mconf.append(conf[sel].mean())
            macc.append(correct[sel].mean())
            ece += sel.sum() / conf.size * abs(correct[sel].mean() - conf[sel].mean())
        else:
            mconf.append(None)
            macc.append(None)
    return counts, mconf, macc, ece


def prob_superiority(xa, xb):
    """P(X_b > X_a) + 1/2 P(tie), brute force over all pairs."""
    xa, xb = np.asarray(xa, float), np.asarray(xb, float)
    gt = (xb[:, None] > xa[None, :]).sum()
    eq = (xb[:, None] == xa[None, :]).sum()
    return (gt + 0.5 * eq) / (xa.size * xb.size)


def random_binary(seed, n):
    rng = np.random.default_rng(seed)
    y = rng.integers(0, 2, n)
    y[0], y[1] = 0, 1  # both classes present
    p = np.round(np.clip(0.5 + (y - 0.5) * rng.uniform(-0.6, 1.0, n), 0, 1), 3)
    return np.array(["soft", "stiff"])[y], p


# ====================================================================== classification
@SLOW
@given(seed=seeds, n=st.integers(4, 60))
def test_binary_metrics_match_sklearn(seed, n):
    y, p = random_binary(seed, n)
    prob = np.column_stack([1 - p, p])
    m = classification_metrics(y, prob, ["soft", "stiff"])
    yb = (y == "stiff").astype(int)
    pred = np.argmax(prob, axis=1)  # ties -> column 0 (soft), as np.argmax
    assert m["n"] == n and m["n_missing_truth"] == 0 and m["positive_class"] == "stiff"
    assert m["auc"] == pytest.approx(skm.roc_auc_score(yb, p), abs=1e-12)
    assert m["roc"]["stiff"]["auc"] == m["auc"]
    fpr, tpr, _ = skm.roc_curve(yb, p)
    assert m["roc"]["stiff"]["fpr"] == pytest.approx(fpr.tolist())
    assert m["roc"]["stiff"]["tpr"] == pytest.approx(tpr.tolist())
    assert m["f1"] == pytest.approx(skm.f1_score(yb, pred, zero_division=0), abs=1e-12)
    assert m["accuracy"] == pytest.approx(skm.accuracy_score(yb, pred), abs=1e-12)
    assert m["balanced_accuracy"] == pytest.approx(skm.balanced_accuracy_score(yb, pred), abs=1e-12)
    assert m["brier"] == pytest.approx(skm.brier_score_loss(yb, p), abs=1e-12)
    assert m["confusion_matrix"]["counts"] == skm.confusion_matrix(yb, pred, labels=[0, 1]).tolist()
    prec, rec, f1s, sup = skm.precision_recall_fscore_support(yb, pred, labels=[0, 1], zero_division=0)
    for j, name in enumerate(["soft", "stiff"]):
        pc = m["per_class"][name]
        assert pc["precision"] == pytest.approx(prec[j]) and pc["recall"] == pytest.approx(rec[j])
        assert pc["f1"] == pytest.approx(f1s[j]) and pc["support"] == sup[j]
        assert "auc" not in pc
        assert m["class_counts"][name] == int((yb == j).sum())
    counts, mconf, macc, ece = ref_reliability(pred == yb, prob.max(axis=1), 15)
    assert m["ece"] == pytest.approx(ece, abs=1e-12) and m["ece_bins"] == 15
    assert m["reliability"]["count"] == counts


@SLOW
@given(seed=seeds, n=st.integers(4, 40))
def test_binary_other_positive_class_and_row_order(seed, n):
    y, p = random_binary(seed, n)
    prob = np.column_stack([1 - p, p])
    m = classification_metrics(y, prob, ["soft", "stiff"], positive="soft")
    ys = (y == "soft").astype(int)
    pred_soft = (np.argmax(prob, axis=1) == 0).astype(int)
    assert m["positive_class"] == "soft" and "soft" in m["f1_average"]
    assert m["auc"] == pytest.approx(skm.roc_auc_score(ys, 1 - p), abs=1e-12)
    assert list(m["roc"]) == ["soft"]
    assert m["f1"] == pytest.approx(skm.f1_score(ys, pred_soft, zero_division=0), abs=1e-12)
    assert m["brier"] == pytest.approx(skm.brier_score_loss(ys, 1 - p), abs=1e-12)
    # every metric is invariant to the order of the cells
    perm = np.random.default_rng(seed).permutation(n)
    m2 = classification_metrics(y[perm], prob[perm], ["soft", "stiff"], positive="soft")
    for key in ("auc", "f1", "accuracy", "balanced_accuracy", "brier", "ece"):
        assert m2[key] == pytest.approx(m[key], abs=1e-12), key
    assert m2["confusion_matrix"] == m["confusion_matrix"]


@SLOW
@given(seed=seeds, n=st.integers(6, 60), k=st.integers(3, 5))
def test_multiclass_metrics_match_sklearn(seed, n, k):
    rng = np.random.default_rng(seed)
    classes = [f"c{j}" for j in range(k)]
    y = rng.integers(0, k, n)
    y[:k] = np.arange(k)  # every class present
    logits = rng.normal(size=(n, k)) + 1.5 * np.eye(k)[y] * rng.uniform(0, 2)
    prob = np.exp(logits) / np.exp(logits).sum(axis=1, keepdims=True)
    names = np.array(classes)[y]
    m = classification_metrics(names, prob, classes)
    pred = prob.argmax(axis=1)
    assert m["positive_class"] is None and m["auc_average"] == "one-vs-rest macro"
    assert m["auc"] == pytest.approx(skm.roc_auc_score(y, prob, multi_class="ovr", average="macro"), abs=1e-12)
    for j, name in enumerate(classes):
        assert m["per_class"][name]["auc"] == pytest.approx(skm.roc_auc_score(y == j, prob[:, j]), abs=1e-12)
    used = sorted(set(y) | set(pred))
    assert m["f1"] == pytest.approx(skm.f1_score(y, pred, labels=used, average="macro", zero_division=0), abs=1e-12)
    assert m["balanced_accuracy"] == pytest.approx(skm.balanced_accuracy_score(y, pred), abs=1e-12)
    assert m["accuracy"] == pytest.approx(np.mean(pred == y), abs=1e-12)
    onehot = np.eye(k)[y]
    assert m["brier"] == pytest.approx(np.mean(np.sum((prob - onehot) ** 2, axis=1)), abs=1e-12)
    assert m["confusion_matrix"]["counts"] == skm.confusion_matrix(y, pred, labels=list(range(k))).tolist()
    _, _, _, ece = ref_reliability(pred == y, prob.max(axis=1), 15)
    assert m["ece"] == pytest.approx(ece, abs=1e-12)


def test_multiclass_macro_auc_skips_absent_class_and_f1_uses_occurring_labels():
    classes = ["M0", "M1", "M2"]
    y = ["M0", "M0", "M1", "M1"]
    prob = np.array([[0.7, 0.2, 0.1], [0.3, 0.6, 0.1], [0.2, 0.7, 0.1], [0.6, 0.3, 0.1]])
    m = classification_metrics(y, prob, classes)
    a0 = skm.roc_auc_score([1, 1, 0, 0], prob[:, 0])
    a1 = skm.roc_auc_score([0, 0, 1, 1], prob[:, 1])
    assert m["per_class"]["M2"]["auc"] is None
    assert m["auc"] == pytest.approx((a0 + a1) / 2)
    assert any("M2" in note for note in m["notes"])
    # predictions M0 M1 M1 M0; M2 neither true nor predicted: macro F1 over M0, M1 only
    assert m["f1"] == pytest.approx(0.5)
    assert m["balanced_accuracy"] == pytest.approx(0.5)  # mean recall over the true classes only
    assert m["class_counts"] == {"M0": 2, "M1": 2, "M2": 0}


def test_binary_one_class_in_truth_has_no_auc():
    m = classification_metrics(["stiff"] * 3, [0.9, 0.4, 0.8], ["soft", "stiff"])
    assert m["auc"] is None and m["roc"] == {}
    assert any("AUC undefined" in note and "stiff" in note for note in m["notes"])
    assert m["accuracy"] == pytest.approx(2 / 3) and m["balanced_accuracy"] == pytest.approx(2 / 3)


@SLOW
@given(seed=seeds, n=st.integers(2, 40), k=st.integers(2, 4))
def test_perfect_classifier_properties(seed, n, k):
    rng = np.random.default_rng(seed)
    classes = [f"k{j}" for j in range(k)]
    y = rng.integers(0, k, n)
    y[:2] = [0, 1]
    conf = rng.uniform(0.55, 1.0, n)
    prob = np.tile(((1 - conf) / (k - 1))[:, None], (1, k))
    prob[np.arange(n), y] = conf
    m = classification_metrics(np.array(classes)[y], prob, classes)
    assert m["accuracy"] == 1.0 and m["balanced_accuracy"] == 1.0 and m["f1"] == 1.0
    assert m["auc"] == pytest.approx(1.0)
    # all correct: calibration error = mean(1 - confidence); Brier by hand
    assert m["ece"] == pytest.approx(np.mean(1 - conf), abs=1e-12)
    cm = np.array(m["confusion_matrix"]["counts"])
    assert (cm == np.diag(np.bincount(y, minlength=k))).all()
    if k == 2:
        assert m["brier"] == pytest.approx(np.mean((1 - conf) ** 2), abs=1e-12)
    else:
        assert m["brier"] == pytest.approx(np.mean((1 - conf) ** 2 + (k - 1) * ((1 - conf) / (k - 1)) ** 2))


def test_y_pred_overrides_argmax_and_sets_confidence():
    y = ["soft", "stiff", "stiff", "soft"]
    p = np.array([0.3, 0.45, 0.8, 0.6])
    pred = ["soft", "stiff", "stiff", "soft"]  # tuned threshold 0.4
    m = classification_metrics(y, p, ["soft", "stiff"], y_pred=pred)
    assert m["accuracy"] == 1.0 and m["f1"] == 1.0
    assert m["confusion_matrix"]["counts"] == [[2, 0], [0, 2]]
    # confidence is the probability of the *predicted* class: 0.7, 0.45, 0.8, 0.4
    _, _, _, ece = ref_reliability([1, 1, 1, 1], [0.7, 0.45, 0.8, 0.4], 15)
    assert m["ece"] == pytest.approx(ece) == pytest.approx(1 - np.mean([0.7, 0.45, 0.8, 0.4]))
    assert m["reliability"]["count"][5] == 1  # 0.4 in (0.333, 0.4]
    # missing truth drops the row from y_pred as well
    m2 = classification_metrics(y + [None], np.append(p, 0.5), ["soft", "stiff"], y_pred=pred + ["stiff"])
    assert m2["n"] == 4 and m2["n_missing_truth"] == 1 and m2["accuracy"] == 1.0


def test_probabilities_are_clipped_within_tolerance():
    m = classification_metrics(["soft", "stiff"], [[1 + 5e-7, -5e-7], [0.0, 1.0]], ["soft", "stiff"])
    assert m["brier"] == pytest.approx(0.0, abs=1e-20)
    assert m["ece"] == pytest.approx(0.0, abs=1e-20)


@pytest.mark.parametrize(
    "kwargs, match",
    [
        (dict(y_true=["a"], prob=[[1.0]], classes=["a"]), "at least two classes"),
        (dict(y_true=["a"], prob=[[0.5, 0.5]], classes=["a", "a"]), "unique"),
        (dict(y_true=["a"], prob=[[0.2, 0.3, 0.5]], classes=["a", "b"]), r"shape \(N, 2\)"),
        (dict(y_true=["a"], prob=[0.5], classes=["a", "b", "c"]), r"shape \(N, 3\)"),
        (dict(y_true=["a", "b"], prob=[[0.5, 0.5]], classes=["a", "b"]), "y_true has 2 entries but prob has 1"),
        (dict(y_true=["a"], prob=[[0.5, 0.5]], classes=["a", "b"], y_pred=["a", "b"]), "y_pred has 2 entries"),
        (dict(y_true=["a"], prob=[[0.5, 0.5]], classes=["a", "b"], y_pred=[None]), "1 cell"),
        (dict(y_true=["a"], prob=[[0.5, 0.5]], classes=["a", "b"], y_pred=["z"]), r"\['z'\]"),
        (dict(y_true=["a", "b"], prob=[[np.nan, 0.5], [0.5, 0.5]], classes=["a", "b"]), "1 row"),
        (dict(y_true=["a"], prob=[[1.5, -0.5]], classes=["a", "b"]), r"\[0, 1\]"),
        (dict(y_true=["a", "b"], prob=[[0.5, 0.5], [0.6, 0.6]], classes=["a", "b"]), "row 1 sums to 1.2000"),
        (dict(y_true=["a"], prob=[[0.5, 0.5]], classes=["a", "b"], positive="c"), "'c' is not one of"),
    ],
)
def test_classification_input_errors(kwargs, match):
    with pytest.raises(MechanoscopeError, match=match):
        classification_metrics(**kwargs)


def test_tolerances_of_probability_checks():
    # within tolerance: accepted
    classification_metrics(["a", "b"], [[0.9995, 0.0], [0.0, 1.0]], ["a", "b"])  # sum off by 5e-4
    classification_metrics(["a", "b"], [[1.0 + 5e-7, 0.0], [0.0, 1.0]], ["a", "b"])
    with pytest.raises(MechanoscopeError, match="sum to 1"):
        classification_metrics(["a", "b"], [[0.998, 0.0], [0.0, 1.0]], ["a", "b"])  # off by 2e-3
    with pytest.raises(MechanoscopeError, match=r"\[0, 1\]"):
        classification_metrics(["a", "b"], [[1.0 + 5e-6, -5e-6], [0.0, 1.0]], ["a", "b"])


# ========================================================================== reliability
def test_reliability_bins_by_hand_with_edges():
    # n_bins = 10: bin b holds (b/10, (b+1)/10]; 0 goes to the first bin
    correct = [1, 0, 1, 1, 0, 1]
    conf = [0.0, 0.2, 0.25, 0.5, 1.0, 0.95]
    r = reliability_bins(correct, conf, n_bins=10)
    assert r["n_bins"] == 10 and r["edges"] == pytest.approx(np.linspace(0, 1, 11).tolist())
    assert r["count"] == [1, 1, 1, 0, 1, 0, 0, 0, 0, 2]
    assert r["confidence"][0] == 0.0 and r["accuracy"][0] == 1.0
    assert r["confidence"][1] == pytest.approx(0.2) and r["accuracy"][1] == 0.0
    assert r["confidence"][9] == pytest.approx(0.975) and r["accuracy"][9] == 0.5
    assert r["confidence"][3] is None and r["accuracy"][3] is None
    ece = (1 * 1.0 + 1 * 0.2 + 1 * 0.75 + 1 * 0.5 + 2 * abs(0.5 - 0.975)) / 6
    assert r["ece"] == pytest.approx(ece)
    assert reliability_bins([], [])["ece"] is None
    with pytest.raises(MechanoscopeError, match="correct has 2 entries but confidence has 1"):
        reliability_bins([1, 0], [0.5])


@FAST
@given(
    data=st.lists(
        st.tuples(st.booleans(), st.floats(0.0, 1.0).filter(lambda c: abs(c * 15 - round(c * 15)) > 1e-6 or c == 0.0)),
        min_size=1,
        max_size=50,
    )
)
def test_reliability_bins_match_loop_reference(data):
    correct, conf = map(np.array, zip(*data))
    r = reliability_bins(correct, conf)
    counts, mconf, macc, ece = ref_reliability(correct, conf, 15)
    assert r["count"] == counts and sum(r["count"]) == len(data)
    for got, want in zip(r["confidence"] + r["accuracy"], mconf + macc):
        assert (got is None) == (want is None)
        if want is not None:
            assert got == pytest.approx(want, abs=1e-12)
    assert r["ece"] == pytest.approx(ece, abs=1e-12)
    assert 0.0 <= r["ece"] <= 1.0


# ========================================================================== regression
def test_bland_altman_limits_are_bias_pm_196_sample_sd():
    # d = log10(pred / true) = [0.1, 0.3, -0.1, 0.5]: mean 0.2, sample SD (ddof=1)
    # sqrt(0.2 / 3) = 0.2581988897; limits 0.2 -/+ 1.96 * 0.2581988897
    t = np.array([100.0, 250.0, 1000.0, 4000.0])
    p = t * 10 ** np.array([0.1, 0.3, -0.1, 0.5])
    ba = regression_metrics(t, p)["bland_altman"]
    assert ba["bias_log10"] == pytest.approx(0.2, abs=1e-12)
    assert ba["sd_log10"] == pytest.approx(0.2581988897471611, abs=1e-12)
    assert ba["loa_low_log10"] == pytest.approx(-0.30606982390443577, abs=1e-12)
    assert ba["loa_high_log10"] == pytest.approx(0.7060698239044358, abs=1e-12)
    assert ba["bias_fold"] == pytest.approx(10**0.2)
    assert ba["loa_low_fold"] == pytest.approx(10**-0.30606982390443577)
    assert ba["loa_high_fold"] == pytest.approx(10**0.7060698239044358)
    m = regression_metrics(t, p)
    assert m["rmse_log10"] == pytest.approx(math.sqrt((0.01 + 0.09 + 0.01 + 0.25) / 4))
    assert m["mae_log10"] == pytest.approx(0.25)
    assert m["measured_median_pa"] == pytest.approx(625.0)
    assert m["predicted_median_pa"] == pytest.approx(np.median(p))


def test_single_cell_has_bias_but_no_limits():
    m = regression_metrics([100.0], [200.0])
    ba = m["bland_altman"]
    assert ba["bias_fold"] == pytest.approx(2.0) and ba["sd_log10"] is None
    assert ba["loa_low_log10"] is None and ba["loa_high_fold"] is None and ba["loa_low_fold"] is None
    assert m["ape_mean_pct"] == pytest.approx(100.0) and m["spearman_rho_log10"] is None


log_moduli = st.lists(st.floats(1.0, 5.0), min_size=3, max_size=40)


@FAST
@given(lt=log_moduli, seed=seeds)
def test_regression_metrics_match_scipy_and_hand(lt, seed):
    rng = np.random.default_rng(seed)
    t = 10 ** np.array(lt)
    p = t * 10 ** rng.normal(0, 0.3, t.size)
    m = regression_metrics(t, p)
    ape = np.abs(p - t) / t * 100
    d = np.log10(p) - np.log10(t)
    assert m["n"] == t.size and m["unit"] == "Pa"
    assert m["ape_mean_pct"] == pytest.approx(ape.mean(), rel=1e-9)
    assert m["ape_median_pct"] == pytest.approx(np.median(ape), rel=1e-9)
    if np.ptp(lt) > 0:
        r = stats.pearsonr(np.log10(p), np.log10(t))
        rho = stats.spearmanr(np.log10(p), np.log10(t))
        assert m["pearson_r_log10"] == pytest.approx(r[0], abs=1e-9)
        assert m["pearson_p"] == pytest.approx(r[1], rel=1e-6, abs=1e-300)
        assert m["spearman_rho_log10"] == pytest.approx(rho[0], abs=1e-9)
        assert m["spearman_p"] == pytest.approx(rho[1], rel=1e-6, abs=1e-300)
    else:
        assert m["pearson_r_log10"] is None and m["spearman_p"] is None
    ba = m["bland_altman"]
    sd = d.std(ddof=1)
    assert ba["bias_log10"] == pytest.approx(d.mean(), abs=1e-12)
    assert ba["sd_log10"] == pytest.approx(sd, abs=1e-12)
    assert ba["loa_low_log10"] == pytest.approx(d.mean() - 1.96 * sd, abs=1e-12)
    assert ba["loa_high_log10"] == pytest.approx(d.mean() + 1.96 * sd, abs=1e-12)
    assert m["rmse_log10"] == pytest.approx(np.sqrt(np.mean(d**2)), abs=1e-12)
    assert m["mae_log10"] == pytest.approx(np.mean(np.abs(d)), abs=1e-12)
    assert m["measured_median_pa"] == pytest.approx(np.median(t))
    # unit change (Pa -> kPa or any factor): every relative metric unchanged; row order too
    c = 10 ** rng.uniform(-3, 3)
    perm = rng.permutation(t.size)
    m2 = regression_metrics(c * t[perm], c * p[perm])
    for key in ("ape_mean_pct", "ape_median_pct", "rmse_log10", "mae_log10"):
        assert m2[key] == pytest.approx(m[key], rel=1e-6, abs=1e-9), key
    for key in ("bias_log10", "sd_log10", "loa_low_log10", "loa_high_log10"):
        assert m2["bland_altman"][key] == pytest.approx(ba[key], rel=1e-6, abs=1e-9), key
    if m["pearson_r_log10"] is not None and m2["pearson_r_log10"] is not None:
        assert m2["spearman_rho_log10"] == pytest.approx(m["spearman_rho_log10"], abs=1e-9)
    assert m2["measured_median_pa"] == pytest.approx(c * m["measured_median_pa"], rel=1e-9)


def test_constant_values_have_no_correlation():
    m = regression_metrics([100.0, 100.0, 100.0], [50.0, 100.0, 200.0])
    assert m["pearson_r_log10"] is None and m["spearman_rho_log10"] is None and m["pearson_p"] is None
    m = regression_metrics([50.0, 100.0, 200.0], [100.0, 100.0, 100.0])
    assert m["pearson_r_log10"] is None and m["spearman_p"] is None
    m = regression_metrics([50.0, 100.0, 200.0], [100.0, 90.0, 300.0])
    assert m["pearson_r_log10"] is not None and m["spearman_rho_log10"] == pytest.approx(0.5)


@FAST
@given(seed=seeds, n=st.integers(1, 40))
def test_interval_coverage_counts_by_hand(seed, n):
    rng = np.random.default_rng(seed)
    t = 10 ** rng.uniform(2, 4, n)
    p = t * 10 ** rng.normal(0, 0.2, n)
    lo = p / 10 ** rng.uniform(0, 0.5, n)
    hi = p * 10 ** rng.uniform(0, 0.5, n)
    t[rng.random(n) < 0.2] = np.nan  # not measured
    lo[rng.random(n) < 0.2] = np.nan  # no interval
    # put a few truths exactly on an interval end: ends count as covered
    on = (rng.random(n) < 0.2) & np.isfinite(lo) & np.isfinite(t)
    lo[on] = t[on]
    hi[on] = np.maximum(hi[on], t[on])
    keep = np.isfinite(t)
    assume(keep.any())
    iv = regression_metrics(t, p, lo, hi)["interval"]
    k = keep & np.isfinite(lo) & np.isfinite(hi)
    if not k.any():
        assert iv is None
        return
    covered = sum(1 for i in np.flatnonzero(k) if lo[i] <= t[i] <= hi[i])
    below = sum(1 for i in np.flatnonzero(k) if t[i] < lo[i])
    above = sum(1 for i in np.flatnonzero(k) if t[i] > hi[i])
    assert iv["n"] == int(k.sum()) and iv["n_missing_interval"] == int((keep & ~k).sum())
    assert iv["coverage"] == pytest.approx(covered / k.sum())
    assert iv["n_below"] == below and iv["n_above"] == above and covered + below + above == k.sum()
    w = hi[k] / lo[k]
    assert iv["width_fold_geomean"] == pytest.approx(math.exp(np.mean(np.log(w))), rel=1e-9)
    # median taken on the log scale: for an even count the geometric mean of the middle two
    ws = np.sort(w)
    mid = ws[ws.size // 2] if ws.size % 2 else math.sqrt(ws[ws.size // 2 - 1] * ws[ws.size // 2])
    assert iv["width_fold_median"] == pytest.approx(mid, rel=1e-9)


def test_missing_values_are_counted_separately():
    t = [100.0, np.nan, 300.0, 400.0, None, 600.0]
    p = [110.0, 200.0, np.nan, 400.0, 500.0, 300.0]
    m = regression_metrics(t, p)
    assert m["n"] == 3 and m["n_missing_truth"] == 2 and m["n_missing_prediction"] == 1
    assert m["ape_mean_pct"] == pytest.approx((10 + 0 + 50) / 3)
    assert m["ape_median_pct"] == pytest.approx(10.0)
    assert m["interval"] is None


@pytest.mark.parametrize(
    "args, match",
    [
        (([1.0, 2.0], [1.0]), "true_pa has 2 values but pred_pa has 1"),
        (([1.0], [1.0], [0.5], None), "both ends"),
        (([1.0], [1.0], None, [2.0]), "both ends"),
        (([1.0, 2.0], [1.0, 2.0], [0.5], [2.0, 3.0]), "1/2 values but true_pa has 2"),
        (([1.0, 2.0], [1.0, 2.0], [0.5, 1.0], [2.0]), "2/1 values"),
        (([1.0], [np.inf]), "pred_pa: 1 value"),
        (([-np.inf], [1.0]), "true_pa"),
        (([1.0], [1.0], [0.0], [2.0]), "lo_pa"),
        (([1.0], [1.0], [0.5], [-2.0]), "hi_pa"),
        (([1.0, 2.0, 3.0], [1.0, 2.0, 3.0], [0.5, 3.0, 4.0], [2.0, 2.5, 3.5]), r"for 2 cell\(s\) \(first at row 1: 3.0 > 2.5 Pa\)"),
        (([np.nan, 2.0], [1.0, np.nan]), r"\(1 of 2 without measurement\)"),
        ((["a"], [1.0]), "true_pa: values must be numbers"),
        ((None, [1.0]), "true_pa: no values given"),
    ],
)
def test_regression_input_errors(args, match):
    with pytest.raises(MechanoscopeError, match=match):
        regression_metrics(*args)


def test_swapped_interval_ignored_where_an_end_is_missing():
    iv = regression_metrics([1.0, 2.0], [1.0, 2.0], [np.nan, 1.0], [0.5, 3.0])["interval"]
    assert iv["n"] == 1 and iv["n_missing_interval"] == 1 and iv["coverage"] == 1.0


# ========================================================================== conditions
@FAST
@given(seed=seeds, n=st.integers(1, 60))
def test_summarize_by_condition_by_hand(seed, n):
    rng = np.random.default_rng(seed)
    cond = rng.choice(np.array(["b", "a", "c", None], dtype=object), n)
    e = 10 ** rng.uniform(2, 4, n)
    e[rng.random(n) < 0.15] = np.nan
    lab = rng.choice(np.array(["soft", "stiff", None], dtype=object), n)
    s = summarize_by_condition(cond, e, lab, ["soft", "stiff"])
    present = sorted({c for c in cond if c is not None})
    assert list(s) == present
    for name in present:
        sel = cond == name
        assert s[name]["n_cells"] == int(sel.sum())
        v = e[sel & np.isfinite(e)]
        assert s[name]["n_predicted"] == v.size
        if v.size:
            q = pd.Series(v).quantile([0.25, 0.5, 0.75]).to_numpy()  # linear interpolation
            assert s[name]["median_pa"] == pytest.approx(q[1])
            assert s[name]["q25_pa"] == pytest.approx(q[0]) and s[name]["q75_pa"] == pytest.approx(q[2])
            assert s[name]["iqr_pa"] == pytest.approx(q[2] - q[0])
        else:
            assert "median_pa" not in s[name]
        labs = [x for x in lab[sel] if x is not None]
        for c in ("soft", "stiff"):
            want = labs.count(c) / len(labs) if labs else None
            assert s[name]["class_fraction"][c] == (pytest.approx(want) if want is not None else None)


def test_summarize_by_condition_order_and_options():
    cond = pd.Categorical(["late", "early", "late", "mid"], categories=["early", "mid", "late", "never"])
    s = summarize_by_condition(cond)
    assert list(s) == ["early", "mid", "late"] and s["late"] == {"n_cells": 2}
    s = summarize_by_condition([1, 2, 1, 2], None, ["x", "y", "y", "y"])
    assert list(s) == ["1", "2"]
    assert s["1"]["class_fraction"] == {"x": 0.5, "y": 0.5}  # classes from the labels, sorted
    assert s["2"]["class_fraction"] == {"y": 1.0}
    s = summarize_by_condition(pd.Series(["a", "a"], index=[7, 9]), pd.Series([1.0, 3.0], index=[0, 1]))
    assert s["a"]["median_pa"] == 2.0 and s["a"]["q25_pa"] == 1.5 and s["a"]["q75_pa"] == 2.5


@FAST
@given(p=st.lists(st.floats(0.0, 1.0), min_size=1, max_size=12))
def test_holm_matches_definition(p):
    adj = np.array(_holm(p))
    assert adj == pytest.approx(ref_holm(p), abs=1e-15)
    assert (adj >= np.array(p) - 1e-15).all() and (adj <= 1.0).all()
    order = np.argsort(p, kind="stable")
    assert (np.diff(adj[order]) >= -1e-15).all()  # monotone in the raw p-values
    # step-down procedure at alpha = 0.05 rejects exactly the hypotheses with adj <= alpha
    m = len(p)
    rejected = set()
    for rank, i in enumerate(np.argsort(p, kind="stable")):
        if p[i] <= 0.05 / (m - rank):
            rejected.add(int(i))
        else:
            break
    assert rejected == {i for i in range(m) if adj[i] <= 0.05 + 1e-12} or any(
        abs(p[i] * (m - r) - 0.05) < 1e-12 for r, i in enumerate(order)
    )


def test_holm_by_hand_and_against_statsmodels():
    p = [0.01, 0.04, 0.03, 0.005]
    # sorted 0.005, 0.01, 0.03, 0.04 -> x4, x3, x2, x1 = 0.02, 0.03, 0.06, 0.04 -> running max
    assert _holm(p) == pytest.approx([0.03, 0.06, 0.06, 0.02])
    assert _holm([0.5, 0.6]) == pytest.approx([1.0, 1.0])  # capped at 1
    multitest = pytest.importorskip("statsmodels.stats.multitest")
    rng = np.random.default_rng(3)
    for _ in range(20):
        q = rng.uniform(0, 0.2, rng.integers(1, 10)).tolist()
        assert _holm(q) == pytest.approx(multitest.multipletests(q, method="holm")[1], abs=1e-15)


@FAST
@given(seed=seeds, na=st.integers(2, 15), nb=st.integers(2, 15), ties=st.booleans())
def test_two_conditions_match_scipy_mann_whitney(seed, na, nb, ties):
    rng = np.random.default_rng(seed)
    xa = 10 ** rng.uniform(2, 4, na)
    xb = 10 ** rng.uniform(2.3, 4.3, nb)
    if ties:
        xa, xb = np.round(xa, -3) + 1000, np.round(xb, -3) + 1000
    v = np.concatenate([xb, xa, [np.nan]])
    cond = ["treated"] * nb + ["control"] * na + ["control"]
    c = compare_conditions(v, cond)
    ref = stats.mannwhitneyu(xb, xa, alternative="two-sided")
    assert c["test"] == "Mann-Whitney U (two-sided)"
    assert c["a"] == "control" and c["b"] == "treated" and c["conditions"] == ["control", "treated"]
    assert c["n_a"] == na and c["n_b"] == nb and c["excluded"] == {}
    assert c["u"] == pytest.approx(ref.statistic)
    assert c["p"] == pytest.approx(ref.pvalue, rel=1e-9)
    assert c["prob_superiority_b_over_a"] == pytest.approx(prob_superiority(xa, xb))
    assert c["median_ratio_b_over_a"] == pytest.approx(np.median(xb) / np.median(xa))
    # swapping which condition is "b" mirrors the effect sizes and keeps p
    perm = rng.permutation(v.size)
    c2 = compare_conditions(v[perm], pd.Categorical(np.array(cond)[perm], categories=["treated", "control"]))
    assert c2["a"] == "treated" and c2["p"] == pytest.approx(c["p"], rel=1e-9)
    assert c2["prob_superiority_b_over_a"] == pytest.approx(1 - c["prob_superiority_b_over_a"])
    assert c2["median_ratio_b_over_a"] == pytest.approx(1 / c["median_ratio_b_over_a"])


@FAST
@given(seed=seeds, k=st.integers(3, 5), ties=st.booleans())
def test_several_conditions_match_scipy_kruskal_and_holm(seed, k, ties):
    rng = np.random.default_rng(seed)
    names = [f"g{j}" for j in range(k)]
    groups = {nm: 10 ** rng.uniform(2 + 0.2 * j, 3 + 0.2 * j, rng.integers(3, 10)) for j, nm in enumerate(names)}
    if ties:
        groups = {nm: np.round(g, -2) + 100 for nm, g in groups.items()}
    v = np.concatenate(list(groups.values()) + [[5.0]])
    cond = [nm for nm, g in groups.items() for _ in g] + ["lonely"]
    c = compare_conditions(v, cond)
    h, p = stats.kruskal(*groups.values())
    assert c["test"] == "Kruskal-Wallis H" and c["conditions"] == names
    assert c["excluded"] == {"lonely": 1} and c["n"] == {nm: g.size for nm, g in groups.items()}
    assert c["h"] == pytest.approx(h) and c["p"] == pytest.approx(p, rel=1e-9)
    n_all = sum(g.size for g in groups.values())
    assert c["epsilon_squared"] == pytest.approx(h / (n_all - 1))
    pairs = [(a, b) for i, a in enumerate(names) for b in names[i + 1 :]]
    assert [(pr["a"], pr["b"]) for pr in c["pairwise"]] == pairs
    raw = []
    for pr, (a, b) in zip(c["pairwise"], pairs):
        ref = stats.mannwhitneyu(groups[b], groups[a], alternative="two-sided")
        assert pr["u"] == pytest.approx(ref.statistic) and pr["p"] == pytest.approx(ref.pvalue, rel=1e-9)
        assert pr["n_a"] == groups[a].size and pr["n_b"] == groups[b].size
        assert pr["prob_superiority_b_over_a"] == pytest.approx(prob_superiority(groups[a], groups[b]))
        raw.append(ref.pvalue)
    assert [pr["p_holm"] for pr in c["pairwise"]] == pytest.approx(ref_holm(raw).tolist(), rel=1e-9)
    assert all(pr["p_holm"] >= pr["p"] for pr in c["pairwise"])


def test_identical_values_and_min_cells():
    c = compare_conditions([5.0] * 9, ["a", "b", "c"] * 3)
    assert c["h"] == 0.0 and c["p"] == 1.0 and c["epsilon_squared"] == 0.0
    assert all(pr["p_holm"] == 1.0 for pr in c["pairwise"])
    c = compare_conditions([1.0, 2.0, 3.0, 4.0, 5.0, 6.0, 7.0], ["a"] * 3 + ["b"] * 2 + ["c"] * 2, min_cells=3)
    assert c is None  # only "a" has 3 cells
    c = compare_conditions([1.0, 2.0, 3.0, 4.0, 5.0, 6.0, np.nan], ["a"] * 3 + ["b"] * 3 + ["c"], min_cells=3)
    assert c["conditions"] == ["a", "b"] and c["excluded"] == {"c": 0}
    with pytest.raises(MechanoscopeError, match="conditions has 2 entries but values has 3"):
        compare_conditions([1.0, 2.0, 3.0], ["a", "b"])


def test_class_by_condition_chi_square_matches_scipy():
    cond = pd.Series(["A"] * 10 + ["B"] * 12 + [None] * 3)
    lab = np.array(["soft"] * 7 + ["stiff"] * 3 + ["soft"] * 2 + ["stiff"] * 9 + [None] + ["stiff"] * 3, dtype=object)
    r = _class_by_condition_test(lab, cond)
    table = np.array([[7, 3], [2, 9]])
    chi2, p, dof, _ = stats.chi2_contingency(table)
    assert r["chi2"] == pytest.approx(chi2) and r["p"] == pytest.approx(p) and r["dof"] == dof == 1
    assert r["counts"] == {"A": {"soft": 7, "stiff": 3}, "B": {"soft": 2, "stiff": 9}}
    # one class only, or one condition only: no test
    assert _class_by_condition_test(np.array(["soft"] * 4, dtype=object), pd.Series(["A", "B"] * 2)) is None
    assert _class_by_condition_test(np.array(["soft", "stiff"], dtype=object), pd.Series(["A", "A"])) is None
    assert _class_by_condition_test(np.array([None, None], dtype=object), pd.Series(["A", "B"])) is None


@FAST
@given(seed=seeds, n=st.integers(4, 60))
def test_class_by_condition_random_tables(seed, n):
    rng = np.random.default_rng(seed)
    cond = rng.choice(["x", "y", "z"], n)
    lab = rng.choice(["soft", "stiff", "mid"], n).astype(object)
    ct = pd.crosstab(cond, lab)
    r = _class_by_condition_test(lab, pd.Series(cond))
    if ct.shape[0] < 2 or ct.shape[1] < 2:
        assert r is None
        return
    chi2, p, dof, _ = stats.chi2_contingency(ct.to_numpy())
    assert r["chi2"] == pytest.approx(chi2) and r["p"] == pytest.approx(p, rel=1e-9) and r["dof"] == dof
    assert sum(sum(row.values()) for row in r["counts"].values()) == n


# ============================================================================= helpers
def test_summary_pa_by_hand():
    s = _summary_pa(np.array([1.0, np.nan, 3.0, 2.0, 4.0, np.inf]))
    assert s == {"n": 4, "median_pa": 2.5, "q25_pa": 1.75, "q75_pa": 3.25, "iqr_pa": 1.5}
    assert _summary_pa(np.array([np.nan])) == {"n": 0}


def test_jsonable_and_none_if_nan():
    assert _none_if_nan(None) is None and _none_if_nan(float("nan")) is None
    assert _none_if_nan(np.float32(-np.inf)) is None and _none_if_nan(np.int64(3)) == 3.0
    obj = {
        1: (np.float64(0.5), np.float32(np.nan), np.int64(7)),
        "b": np.array([True, False]),
        "c": [np.bool_(True), True, Path("x/y"), "s", None, float("inf")],
    }
    out = _jsonable(obj)
    assert out == {"1": [0.5, None, 7], "b": [True, False], "c": [True, True, "x/y", "s", None, None]}
    assert type(out["1"][2]) is int and type(out["b"][0]) is bool and type(out["c"][0]) is bool
    assert type(out["c"][1]) is bool and type(out["1"][0]) is float
    assert json.dumps(out, allow_nan=False)


def test_as_float_and_as_labels():
    v = _as_float([1, None, "2.5", np.nan], "x")
    assert v[0] == 1.0 and np.isnan(v[1]) and v[2] == 2.5 and np.isnan(v[3]) and v.dtype == float
    v = _as_float(pd.Series([1.0, pd.NA], dtype="Float64"), "x")
    assert v[0] == 1.0 and np.isnan(v[1]) and v.dtype == np.float64
    assert _as_float(np.array([[1.0, 2.0]]), "x").shape == (2,)
    with pytest.raises(MechanoscopeError, match="x: values must be numbers"):
        _as_float(["soft"], "x")
    with pytest.raises(MechanoscopeError, match="y: no values given"):
        _as_float(None, "y")
    labels, missing = _as_labels(["a", None, 3, np.nan])
    assert labels.tolist() == ["a", "None", "3", "nan"] and missing.tolist() == [False, True, False, True]


def test_check_positive_message():
    _check_positive(np.array([1.0, np.nan, 5.0]), "E")  # NaN = missing, allowed
    with pytest.raises(MechanoscopeError, match=r"^file: E: 2 value\(s\) .*first at row 1: np.float64\(0.0\)|^file: E: 2 value\(s\) .*first at row 1: 0.0"):
        _check_positive(np.array([1.0, 0.0, np.inf]), "E", "file: ")
    with pytest.raises(MechanoscopeError, match=r"E: 1 value\(s\) .*row 2.*fix or remove those cells \(leave missing measurements as NaN\)$"):
        _check_positive(np.array([1.0, 2.0, -np.inf]), "E")


# ============================================================ edges found by mutation testing
def test_correlation_defined_when_log_range_is_exactly_one_decade():
    t = np.array([100.0, 300.0, 1000.0])  # log10 range exactly 1
    p = np.array([100.0, 200.0, 1000.0])
    m = regression_metrics(t, p)
    r = stats.pearsonr(np.log10(p), np.log10(t))
    assert m["pearson_r_log10"] == pytest.approx(r[0]) and m["spearman_rho_log10"] == pytest.approx(1.0)


def test_two_cells_have_limits_of_agreement():
    # d = [log10 2, log10 0.5] = [+0.30103, -0.30103]: bias 0, SD (ddof=1) = 0.30103 * sqrt(2)
    ba = regression_metrics([100.0, 100.0], [200.0, 50.0])["bland_altman"]
    sd = math.log10(2) * math.sqrt(2)
    assert ba["bias_log10"] == pytest.approx(0.0, abs=1e-15) and ba["sd_log10"] == pytest.approx(sd)
    assert ba["loa_high_log10"] == pytest.approx(1.96 * sd) and ba["loa_low_fold"] == pytest.approx(10 ** (-1.96 * sd))
    assert "bias ± 1.96 SD(d)" in ba["definition"]


def test_definitions_recorded_in_the_result():
    m = regression_metrics([100.0], [150.0])
    assert m["ape_definition"] == "|E_pred - E_true| / E_true * 100"
    c = compare_conditions([1.0, 2.0, 3.0, 4.0], ["a", "a", "b", "b"])
    assert "treated as independent" in c["caveat"] and "per-replicate medians" in c["caveat"]
    r = _class_by_condition_test(np.array(["x", "y", "y", "x"], dtype=object), pd.Series(["A", "A", "B", "B"]))
    assert r["test"] == "chi-square test of independence (predicted class × condition)"


def test_first_swapped_interval_row_is_reported():
    # row 0: zero-width interval (valid), row 1: no lower end, row 2: swapped
    with pytest.raises(MechanoscopeError, match=r"for 1 cell\(s\) \(first at row 2: 3.0 > 2.0 Pa\)"):
        regression_metrics([1.0, 1.0, 1.0], [1.0, 1.0, 1.0], [1.0, np.nan, 3.0], [1.0, 0.5, 2.0])


@pytest.mark.parametrize(
    "call, match",
    [
        (lambda: regression_metrics([1.0], ["x"]), "^pred_pa: values must be numbers"),
        (lambda: regression_metrics([1.0], [1.0], ["x"], [2.0]), "^lo_pa: values must be numbers"),
        (lambda: regression_metrics([1.0], [1.0], [0.5], ["x"]), "^hi_pa: values must be numbers"),
        (lambda: regression_metrics([0.0], [1.0]), r"^true_pa: 1 value\(s\)"),
        (lambda: regression_metrics([1.0], [1.0], [-1.0], [2.0]), r"^lo_pa: 1 value\(s\)"),
        (lambda: regression_metrics([1.0], [1.0], [0.5], [0.0]), r"^hi_pa: 1 value\(s\)"),
        (lambda: regression_metrics([1.0], [1.0], [0.5], None), "^lo_pa and hi_pa: give both ends"),
        (lambda: summarize_by_condition(["a"], ["x"]), "^pred_pa: values must be numbers"),
        (lambda: compare_conditions(["x"], ["a"]), "^values: values must be numbers"),
    ],
)
def test_error_messages_name_the_input(call, match):
    with pytest.raises(MechanoscopeError, match=match):
        call()


def test_condition_literally_named_none_is_not_mixed_with_missing():
    cond = ["None", None, "None", "b", "b", np.nan]
    s = summarize_by_condition(cond, [1.0, 2.0, 3.0, 4.0, 5.0, 6.0])
    assert s["None"]["n_cells"] == 2 and s["None"]["median_pa"] == 2.0 and list(s) == ["None", "b"]
    c = compare_conditions([1.0, 100.0, 3.0, 4.0, 5.0, 6.0], cond)
    assert c["n_a"] == 2 and c["n_b"] == 2 and c["median_ratio_b_over_a"] == pytest.approx(4.5 / 2.0)


def test_median_ratio_needs_a_nonzero_reference_median():
    # compare_conditions takes any per-cell value; a zero median of "a" has no ratio
    c = compare_conditions([0.0, 0.0, 0.0, 1.0, 2.0, 3.0], ["a"] * 3 + ["b"] * 3)
    assert c["median_ratio_b_over_a"] is None and c["prob_superiority_b_over_a"] == 1.0
    c = compare_conditions([1.0, 1.0, 1.0, 2.0, 2.0, 2.0], ["a"] * 3 + ["b"] * 3)
    assert c["median_ratio_b_over_a"] == 2.0
    c3 = compare_conditions(list(range(9)), ["a", "b", "c"] * 3)
    assert "per-replicate medians" in c3["caveat"]
    assert c3["pairwise_test"] == "Mann-Whitney U (two-sided), Holm-adjusted"


def test_object_probability_array_is_read_as_numbers():
    # DataFrame.to_numpy() of mixed columns gives an object array
    prob = np.array([[0.9, 0.1], [0.2, 0.8], [0.6, 0.4]], dtype=object)
    m = classification_metrics(["a", "b", "b"], prob, ["a", "b"])
    assert m["accuracy"] == pytest.approx(2 / 3) and m["auc"] == 1.0


@pytest.mark.parametrize(
    "prob, match",
    [
        ([[-0.5, 0.5]], r"^prob: probabilities must lie in \[0, 1\]$"),  # only a negative value
        ([[0.0, 1.5]], r"^prob: probabilities must lie in \[0, 1\]$"),  # only a value above 1
        ([[0.3, 0.3], [0.6, 0.6]], r"row 0 sums to 0.6000 \(are all pred_prob_<class> columns present"),
        ([[np.nan, 1.0], [np.inf, 0.0], [0.5, 0.5]], r"^prob: 2 row\(s\) hold NaN .* drop cells without a prediction first$"),
    ],
)
def test_probability_checks_name_the_problem(prob, match):
    with pytest.raises(MechanoscopeError, match=match):
        classification_metrics(["a"] * len(prob), prob, ["a", "b"])


def test_probability_tolerance_is_inclusive():
    m = classification_metrics(["a", "b"], [[1 + 1e-6, -1e-6], [0.0, 1.0]], ["a", "b"])
    assert m["accuracy"] == 1.0


def test_unknown_true_class_and_missing_truth_messages():
    with pytest.raises(MechanoscopeError, match=r"^y_true: true classes \['c'\] are not among .*drop those cells or evaluate with a model trained on them$"):
        classification_metrics(["a", "c"], [[0.5, 0.5], [0.5, 0.5]], ["a", "b"])
    with pytest.raises(MechanoscopeError, match=r"^y_true: no cell has a true class \(all missing\); classification metrics need truth$"):
        classification_metrics([None, np.nan], [[0.5, 0.5], [0.5, 0.5]], ["a", "b"])


def test_f1_without_positive_cells_is_zero_and_averages_are_named():
    m = classification_metrics(["soft"] * 3, [0.1, 0.2, 0.3], ["soft", "stiff"])
    assert m["f1"] == 0.0 and m["f1_average"] == "binary (positive class: stiff)"
    assert m["per_class"]["stiff"]["f1"] == 0.0 and m["per_class"]["stiff"]["precision"] == 0.0
    m = classification_metrics(["M0", "M1"], np.eye(3)[:2], ["M0", "M1", "M2"])
    assert m["f1_average"] == "macro (unweighted mean over classes)"
    assert m["per_class"]["M2"] == {"precision": 0.0, "recall": 0.0, "f1": 0.0, "support": 0, "auc": None}


def test_comparisons_leave_missing_conditions_out_even_beside_a_condition_named_nan():
    # a condition literally called "nan" is a condition; a missing one (None/NaN) is not it

    cond = pd.Series(["nan", "nan", None, np.nan, "b", "b", "b"], dtype=object)
    v = np.array([1.0, 2.0, 50.0, 60.0, 3.0, 4.0, 5.0])
    res = compare_conditions(v, cond)
    assert res["conditions"] == ["b", "nan"]
    assert (res["n_a"], res["n_b"]) == (3, 2)  # the two missing-condition cells belong to neither
    s = summarize_by_condition(cond, pred_pa=v)
    assert s["nan"]["n_cells"] == 2 and s["b"]["n_cells"] == 3
    assert s["nan"]["median_pa"] == pytest.approx(1.5)


def test_comparison_of_identical_values_is_quiet_and_says_what_cells_are():
    import warnings

    with warnings.catch_warnings():
        warnings.simplefilter("error")  # scipy divides 0/0 for all-equal values: no RuntimeWarning may leak
        res = compare_conditions(np.ones(6), ["a", "a", "b", "b", "c", "c"])
    assert (res["h"], res["p"]) == (0.0, 1.0)
    assert res["caveat"] == (
        "cells are treated as independent; cells from one dish/image are not independent "
        "replicates, so compare per-replicate medians before drawing conclusions"
    )


def test_constant_predictions_have_no_correlation_and_raise_no_warning():
    import warnings

    true = np.array([100.0, 300.0, 1000.0, 3000.0])
    with warnings.catch_warnings():
        warnings.simplefilter("error")  # SciPy warns on constant input; the metric must not ask it
        m = regression_metrics(true, np.full(4, 500.0))
    assert m["pearson_r_log10"] is None and m["spearman_rho_log10"] is None and m["pearson_p"] is None
    assert m["bland_altman"]["definition"] == (
        "d = log10(E_pred) - log10(E_true); bias = mean(d); limits = bias ± 1.96 SD(d); fold = 10**value"
    )


def test_f1_of_a_class_never_predicted_is_zero_without_a_warning():
    import warnings

    y = np.array(["soft", "stiff", "soft", "stiff"])
    prob = np.array([[0.9, 0.1], [0.8, 0.2], [0.7, 0.3], [0.6, 0.4]])  # every cell called soft
    three = np.array([[0.8, 0.1, 0.1]] * 3 + [[0.1, 0.8, 0.1]])
    with warnings.catch_warnings():
        warnings.simplefilter("error")  # scikit-learn warns on 0/0 precision unless told what to do
        m = classification_metrics(y, prob, ["soft", "stiff"])
        m3 = classification_metrics(np.array(["a", "b", "c", "a"]), three, ["a", "b", "c"])
    assert m["f1"] == 0.0
    # a: precision 1/3, recall 1/2 -> F1 0.4; b and c: no true positive -> 0; macro mean 0.4/3
    assert m3["f1"] == pytest.approx(0.4 / 3)


# ===================================================== classification outputs beyond the headline numbers
def test_roc_curves_thresholds_brier_definition_and_reliability_bins_are_reported():
    t = ["soft", "stiff", "soft", "stiff", "stiff", "soft"]
    p1 = np.array([0.2, 0.9, 0.4, 0.6, 0.35, 0.1])
    r = classification_metrics(t, p1, ["soft", "stiff"], n_bins=5)
    fpr, tpr, thr = skm.roc_curve(np.array(t) == "stiff", p1)
    assert list(r["roc"]) == ["stiff"]
    # sklearn's first threshold is +inf (no cell called stiff); it is written as None (JSON has no infinity)
    assert r["roc"]["stiff"]["thresholds"][0] is None and not np.isfinite(thr[0])
    assert r["roc"]["stiff"]["thresholds"][1:] == pytest.approx(thr[1:].tolist()) == [0.9, 0.6, 0.4, 0.35, 0.1]
    assert r["roc"]["stiff"]["fpr"] == pytest.approx(fpr.tolist()) and r["roc"]["stiff"]["tpr"] == pytest.approx(tpr.tolist())
    assert len(r["roc"]["stiff"]["thresholds"]) == len(thr) and all(v is None or isinstance(v, float) for v in r["roc"]["stiff"]["thresholds"])
    assert r["brier_definition"] == "mean squared error of P(stiff); 0 = perfect, 0.25 = always 0.5"
    assert r["reliability"]["n_bins"] == 5 and r["ece_bins"] == 5 and len(r["reliability"]["count"]) == 5
    # three classes: one curve per class present on both sides, the others left out, their AUC named in a note
    t3 = ["a", "b", "a", "b", "a", "b"]
    p3 = np.array([[0.6, 0.3, 0.1], [0.2, 0.7, 0.1], [0.5, 0.2, 0.3], [0.3, 0.5, 0.2], [0.7, 0.2, 0.1], [0.1, 0.8, 0.1]])
    r3 = classification_metrics(t3, p3, ["a", "b", "c"])
    assert sorted(r3["roc"]) == ["a", "b"] and all(isinstance(r3["roc"][k], dict) for k in r3["roc"])
    assert r3["roc"]["a"]["auc"] == pytest.approx(skm.roc_auc_score(np.array(t3) == "a", p3[:, 0]))
    assert r3["per_class"]["c"]["auc"] is None and r3["auc"] == pytest.approx(np.mean([r3["roc"]["a"]["auc"], r3["roc"]["b"]["auc"]]))
    assert r3["notes"] == ["one-vs-rest AUC averaged without ['c']: no cell of those classes (or only those) in the truth"]
    assert r3["brier_definition"] == "mean over cells of the summed squared error over classes; 0 = perfect, max 2"
    # every cell of one class: no curve at all, AUC None (not NaN)
    r1 = classification_metrics(["a"] * 3, p3[:3], ["a", "b", "c"])
    assert r1["auc"] is None and r1["roc"] == {}


def test_auc_note_names_the_one_class_even_for_a_single_cell():
    r = classification_metrics(["stiff"], [0.8], ["soft", "stiff"])
    assert r["auc"] is None and r["notes"] == ["AUC undefined: all 1 cells with truth are of one class (stiff)"]


def test_class_fractions_are_none_where_no_cell_of_a_condition_has_a_label():
    s = summarize_by_condition(["a", "a", "b"], None, [None, None, "x"], ["x", "y"])
    assert s["a"]["class_fraction"] == {"x": None, "y": None}
    assert s["b"]["class_fraction"] == {"x": 1.0, "y": 0.0}


def test_classification_result_names_its_classes_and_positive_class():
    r = classification_metrics(["soft", "stiff", "soft"], [0.2, 0.7, 0.4], ["soft", "stiff"])
    assert r["classes"] == ["soft", "stiff"] and r["positive_class"] == "stiff" and r["n"] == 3 and r["n_missing_truth"] == 0
    r = classification_metrics(["a", "b", "c"], np.eye(3), ["a", "b", "c"])
    assert r["classes"] == ["a", "b", "c"] and r["positive_class"] is None
