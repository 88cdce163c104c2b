"""Calibrated uncertainty (learn.uncertainty) against hand values, brute-force references and exact
finite-sample expectations: temperature softmax, temperature fitting, ECE, split-conformal quantiles."""

import math

import numpy as np
import pytest
from hypothesis import assume, given, settings
from hypothesis import strategies as st
from hypothesis.extra import numpy as hnp

from mechanoscope.errors import MechanoscopeError
from mechanoscope.learn.uncertainty import (
    conformal_interval,
    conformal_quantile,
    expected_calibration_error,
    fit_temperature,
    softmax_t,
)

LN3 = math.log(3.0)
FAST = settings(max_examples=60, deadline=None, derandomize=True)

finite_logits = hnp.arrays(
    np.float64,
    hnp.array_shapes(min_dims=2, max_dims=2, min_side=1, max_side=6),
    elements=st.floats(-30, 30, allow_nan=False, allow_infinity=False),
)


# ----------------------------------------------------------------------- softmax_t
def test_softmax_t_hand_values():
    # softmax([0, ln 3]) = [1/4, 3/4]
    np.testing.assert_allclose(softmax_t(np.array([0.0, LN3])), [0.25, 0.75], rtol=1e-12)
    np.testing.assert_allclose(softmax_t(np.array([0.0, LN3]), 1.0), [0.25, 0.75], rtol=1e-12)
    # T = 2 DIVIDES the logits: [0, 2 ln 3] / 2 = [0, ln 3]  (× T would give [1/82, 81/82])
    np.testing.assert_allclose(softmax_t(np.array([0.0, 2 * LN3]), 2.0), [0.25, 0.75], rtol=1e-12)
    # T = 1/2 sharpens: [0, ln 3] / 0.5 = [0, ln 9] -> [0.1, 0.9]
    np.testing.assert_allclose(softmax_t(np.array([0.0, LN3]), 0.5), [0.1, 0.9], rtol=1e-12)
    # computed in float64 whatever the precision of the network outputs
    assert softmax_t(np.array([0.0, LN3], np.float32)).dtype == np.float64
    # three classes, rows independent, last axis
    z = np.array([[0.0, math.log(2), math.log(5)], [math.log(4), 0.0, math.log(4)]])
    np.testing.assert_allclose(softmax_t(z), [[1 / 8, 2 / 8, 5 / 8], [4 / 9, 1 / 9, 4 / 9]], rtol=1e-12)
    np.testing.assert_allclose(softmax_t(3 * z, 3.0), [[1 / 8, 2 / 8, 5 / 8], [4 / 9, 1 / 9, 4 / 9]], rtol=1e-12)
    # very large T flattens, very small T is (numerically) an arg-max
    np.testing.assert_allclose(softmax_t(z, 1e9), np.full((2, 3), 1 / 3), rtol=1e-6)
    np.testing.assert_allclose(softmax_t(np.array([1.0, 2.0, 0.0]), 1e-3), [0, 1, 0], atol=1e-12)


@FAST
@given(finite_logits, st.floats(0.05, 20), st.floats(-50, 50))
def test_softmax_t_invariants(z, t, shift):
    p = softmax_t(z, t)
    ref = np.exp((z - z.max(axis=1, keepdims=True)) / t)
    ref /= ref.sum(axis=1, keepdims=True)
    np.testing.assert_allclose(p, ref, rtol=1e-9, atol=1e-300)
    assert p.shape == z.shape
    np.testing.assert_allclose(p.sum(axis=1), 1.0, rtol=1e-12)
    assert (p >= 0).all()
    np.testing.assert_allclose(softmax_t(z + shift, t), p, rtol=1e-7, atol=1e-12)  # shift invariance
    np.testing.assert_allclose(softmax_t(z / t, 1.0), p, rtol=1e-9, atol=1e-300)  # T only rescales
    # argmax never changes with T (ties aside)
    if z.shape[1] > 1 and (np.sort(z, axis=1)[:, -1] - np.sort(z, axis=1)[:, -2] > 1e-6).all():
        np.testing.assert_array_equal(p.argmax(1), z.argmax(1))


# ----------------------------------------------------------------------- temperature
def _nll(logits, y, t):
    p = np.exp(logits / t - (logits / t).max(1, keepdims=True))
    p /= p.sum(1, keepdims=True)
    return -np.mean(np.log(p[np.arange(len(y)), y]))


def _labels_from(logits, t0, rng):
    p = softmax_t(logits, t0)
    u = rng.uniform(size=(len(p), 1))
    return (u > np.cumsum(p, axis=1)).sum(axis=1)  # inverse-CDF sampling of one class per row


@pytest.mark.parametrize("t0,k", [(0.5, 2), (2.0, 3), (4.0, 4)])
def test_fit_temperature_recovers_the_generating_temperature(t0, k):
    rng = np.random.default_rng(int(t0 * 10) + k)
    z = rng.normal(0, 3, (8000, k))
    y = _labels_from(z, t0, rng)
    t = fit_temperature(z, y)
    assert t == pytest.approx(t0, rel=0.06)
    # rescaling the logits by c rescales the fitted temperature by c
    for c in (0.25, 3.0):
        assert fit_temperature(z * c, y) == pytest.approx(c * t, rel=1e-3)
    # it is the NLL minimum: a brute-force grid search agrees
    grid = t * np.exp(np.linspace(-0.2, 0.2, 41))  # steps of 1 %
    best = grid[np.argmin([_nll(z, y, g) for g in grid])]
    assert t == pytest.approx(best, rel=0.011)
    assert _nll(z, y, t) <= _nll(z, y, 1.0) + 1e-12


def test_fit_temperature_edge_cases_and_bounds():
    assert fit_temperature(np.zeros((0, 2)), np.zeros(0, int)) == 1.0
    assert fit_temperature(np.array([[5.0, 0.0]]), np.array([1])) == 1.0  # one sample: no fit
    # two correctly ranked samples already have a fit: sharpening is always better -> lower bound 0.05
    two = fit_temperature(np.array([[2.0, 0.0], [0.0, 2.0]]), np.array([0, 1]))
    assert two == pytest.approx(0.05, rel=0.2)  # the NLL is flat there: stops near the bound
    # every sample wrong: flattening is always better -> upper bound 20
    wrong = fit_temperature(np.array([[2.0, 0.0], [0.0, 2.0], [1.0, 0.0]]), np.array([1, 0, 1]))
    assert wrong == pytest.approx(20.0, rel=1e-3)
    # lists are accepted (converted), labels as floats too
    assert fit_temperature([[2.0, 0.0], [0.0, 2.0]], [0.0, 1.0]) == pytest.approx(two)


# ----------------------------------------------------------------------- ECE
def _ece_reference(prob, y, n_bins):
    """Loop over cells: bin b holds confidences in (edges[b], edges[b+1]] (the first bin also holds 0)."""
    edges = np.linspace(0, 1, n_bins + 1)
    bins: dict[int, list] = {}
    for p_row, yy in zip(prob, y):
        conf = max(p_row)
        pred = int(np.argmax(p_row))
        b = 0
        for i in range(1, n_bins):
            if conf > edges[i]:
                b = i
        bins.setdefault(b, []).append((conf, float(pred == yy)))
    n = len(y)
    return sum(len(v) / n * abs(np.mean([c for _, c in v]) - np.mean([f for f, _ in v])) for v in bins.values())


def test_ece_hand_values():
    # 10 cells at confidence 0.9, 8 correct: ECE = |0.8 - 0.9| = 0.1
    prob = np.tile([0.9, 0.1], (10, 1))
    y = np.array([0] * 8 + [1] * 2)
    assert expected_calibration_error(prob, y) == pytest.approx(0.1, abs=1e-12)
    # two bins: 4 cells at 0.6 (all right: gap 0.4), 6 cells at 0.95 (3 right: gap 0.45) -> 0.4*0.4 + 0.6*0.45
    prob = np.array([[0.6, 0.4]] * 4 + [[0.05, 0.95]] * 6)
    y = np.array([0] * 4 + [1, 1, 1, 0, 0, 0])
    assert expected_calibration_error(prob, y) == pytest.approx(0.4 * 0.4 + 0.6 * 0.45, abs=1e-12)
    # n_bins=1 pools everything: |mean correct - mean conf| = |0.7 - (0.4*0.6 + 0.6*0.95)|
    assert expected_calibration_error(prob, y, n_bins=1) == pytest.approx(abs(0.7 - 0.81), abs=1e-12)
    # n_bins=2 keeps confidence 0.4 (bin [0, 0.5]) apart from 0.8: 0.5*|1-0.4| + 0.5*|0-0.8|
    prob = np.array([[0.4, 0.3, 0.3], [0.8, 0.1, 0.1]])
    assert expected_calibration_error(prob, np.array([0, 1]), n_bins=2) == pytest.approx(0.7, abs=1e-12)
    # default 15 bins: 0.61 and 0.65 share (0.6, 0.667], 0.9 and 0.95 do not (bins 13, 14)
    prob = np.array([[0.61, 0.39], [0.65, 0.35], [0.9, 0.1], [0.95, 0.05]])
    ece = 0.5 * abs(0.5 - 0.63) + 0.25 * abs(1 - 0.9) + 0.25 * abs(0 - 0.95)
    assert expected_calibration_error(prob, np.array([0, 1, 0, 1])) == pytest.approx(ece, abs=1e-12)
    # confidence 1 falls in the last bin, perfect -> 0; empty input -> NaN
    assert expected_calibration_error(np.array([[1.0, 0.0], [0.0, 1.0]]), np.array([0, 1])) == 0.0
    assert math.isnan(expected_calibration_error(np.zeros((0, 2)), np.zeros(0, int)))
    assert expected_calibration_error([[0.9, 0.1]], [0.0]) == pytest.approx(0.1)


@FAST
@given(
    st.integers(1, 40).flatmap(
        lambda n: st.tuples(
            hnp.arrays(np.float64, (n, 3), elements=st.floats(0.0, 1.0)),
            hnp.arrays(np.int64, n, elements=st.integers(0, 2)),
        )
    ),
    st.integers(1, 20),
)
def test_ece_matches_brute_force(data, n_bins):
    raw, y = data
    raw = raw + 1e-3
    prob = raw / raw.sum(1, keepdims=True)
    scaled = prob.max(1) * n_bins  # a confidence on a bin edge is binned by rounding: keep off the edges
    assume(np.all(np.abs(scaled - np.round(scaled)) > 1e-9))
    assert expected_calibration_error(prob, y, n_bins) == pytest.approx(_ece_reference(prob, y, n_bins), abs=1e-12)


# ----------------------------------------------------------------------- conformal quantile
def test_conformal_quantile_hand_values():
    s = np.arange(1.0, 11.0)[::-1]  # 10 scores, unsorted
    # k = ceil(11 * 0.9) = 10 -> the largest score (ceil(10 * 0.9) = 9 would give 9.0)
    assert conformal_quantile(s, 0.9) == 10.0
    # k = ceil(11 * 0.5) = 6 -> 6.0 (ceil(10 * 0.5) = 5 would give 5.0)
    assert conformal_quantile(s, 0.5) == 6.0
    assert conformal_quantile(s, 0.05) == 1.0  # k = ceil(0.55) = 1
    # NaN / inf scores are dropped: n = 4 finite, k = ceil(5 * 0.6) = 3
    assert conformal_quantile(np.array([4.0, np.nan, 1.0, np.inf, 3.0, 2.0, -np.inf]), 0.6) == 3.0
    assert conformal_quantile([0.5, 0.1, 0.3], 0.5) == 0.3  # k = ceil(2) = 2
    assert isinstance(conformal_quantile(s, 0.9), float)


@pytest.mark.parametrize("level", [0.5, 0.68, 0.8, 0.9, 0.95, 0.99])
def test_conformal_quantile_too_few_cells_message_is_exact(level):
    """The number in the message is the smallest calibration set that works."""
    with pytest.raises(MechanoscopeError, match="too few") as info:
        conformal_quantile(np.ones(0), level)
    need = int(info.value.args[0].split("at least ")[1].split()[0])
    assert need == math.ceil(round(level / (1 - level), 9))  # n >= level / (1 - level)
    assert conformal_quantile(np.arange(need, dtype=float), level) == need - 1  # enough: the largest
    if need > 1:
        with pytest.raises(MechanoscopeError, match=rf"{need - 1} calibration cells are too few.*label more cells or lower the interval level"):
            conformal_quantile(np.arange(need - 1, dtype=float), level)


@FAST
@given(st.floats(0.01, 0.995))
def test_conformal_quantile_needed_cells_is_the_smallest_that_works(level):
    with pytest.raises(MechanoscopeError, match="too few") as info:
        conformal_quantile(np.ones(0), level)
    need = int(info.value.args[0].split("at least ")[1].split()[0])
    assert need >= 1 and need >= level / (1 - level) - 1e-6
    conformal_quantile(np.arange(need, dtype=float), level)  # works
    with pytest.raises(MechanoscopeError, match="too few"):
        conformal_quantile(np.arange(need - 1, dtype=float), level)


@pytest.mark.parametrize("level", [0.0, 1.0, -0.1, 1.5])
def test_conformal_quantile_rejects_levels_outside_0_1(level):
    with pytest.raises(MechanoscopeError, match="interval level must be in"):
        conformal_quantile(np.arange(100.0), level)


@FAST
@given(
    hnp.arrays(np.float64, st.integers(1, 60), elements=st.floats(-1e6, 1e6), unique=True),
    st.floats(0.01, 0.99),
)
def test_conformal_quantile_is_the_finite_sample_order_statistic(scores, level):
    n = len(scores)
    k = math.ceil((n + 1) * level)
    if k > n:
        with pytest.raises(MechanoscopeError, match="too few"):
            conformal_quantile(scores, level)
        return
    q = conformal_quantile(scores, level)
    assert q == sorted(scores)[k - 1]
    # exactly k of the n scores are <= q: a new exchangeable score falls at or below q w.p. k/(n+1) >= level
    assert int((scores <= q).sum()) == k
    assert k / (n + 1) >= level - 1e-12


@pytest.mark.parametrize("n,level", [(10, 0.9), (9, 0.9), (5, 0.8), (7, 0.5), (19, 0.9), (30, 0.75)])
def test_conformal_coverage_equals_k_over_n_plus_1(n, level):
    """Seeded Monte Carlo: coverage of a new exchangeable score is exactly k/(n+1), k = ceil((n+1)·level)."""
    rng = np.random.default_rng(n * 100 + int(level * 100))
    reps = 20000
    draws = rng.exponential(size=(reps, n + 1))
    covered = np.array([d[n] <= conformal_quantile(d[:n], level) for d in draws])
    k = math.ceil((n + 1) * level)
    expected = k / (n + 1)
    tol = 4 * math.sqrt(expected * (1 - expected) / reps)
    assert covered.mean() == pytest.approx(expected, abs=tol)
    assert expected >= level


def test_conformal_interval_hand_values_and_coverage():
    lo, hi = conformal_interval(np.array([1.0, 2.0]), 0.5)
    assert lo.dtype == hi.dtype == np.float64
    np.testing.assert_allclose(lo, [0.5, 1.5])
    np.testing.assert_allclose(hi, [1.5, 2.5])
    lo, hi = conformal_interval([1.0, 2.0], 2.0, np.array([0.1, 3.0]))
    np.testing.assert_allclose(lo, [0.8, -4.0])
    np.testing.assert_allclose(hi, [1.2, 8.0])
    # scaled scores |y - mu| / sigma with the conformal quantile: interval covers exactly the k cells at or below it
    rng = np.random.default_rng(5)
    mu, sigma = rng.normal(size=50), rng.uniform(0.5, 2, 50)
    y = mu + sigma * rng.normal(size=50)
    q = conformal_quantile(np.abs(y - mu) / sigma, 0.8)
    lo, hi = conformal_interval(mu, q, sigma)
    assert int(((lo <= y) & (y <= hi)).sum()) == math.ceil(51 * 0.8)


def test_conformal_interval_is_float64_whatever_the_input_dtype():
    mu32 = np.array([1000.5, 2000.25], dtype=np.float32)
    lo, hi = conformal_interval(mu32, 0.1)
    assert lo.dtype == hi.dtype == np.float64
    assert hi - lo == pytest.approx([0.2, 0.2], abs=1e-12)  # float32 would lose the 0.1 at 1e3 Pa
    lo, hi = conformal_interval(np.zeros(1), 0.1, sigma=np.array([3.0], dtype=np.float32))
    assert hi[0] == pytest.approx(0.1 * 3.0, abs=1e-13)  # q·σ in float64, not float32 (0.3000000119)
    lo, hi = conformal_interval(np.array([3, 4]), 0.5)  # integer predictions, no sigma
    assert lo.dtype == hi.dtype == np.float64 and lo.tolist() == [2.5, 3.5]


def test_calibration_error_is_computed_in_float64_for_float32_probabilities():
    rng = np.random.default_rng(4)
    p = rng.dirichlet([1.0, 1.0, 1.0], size=500).astype(np.float32)
    y = rng.integers(0, 3, 500)
    exact = expected_calibration_error(p.astype(np.float64), y)  # the same float32 values, widened
    assert expected_calibration_error(p, y) == pytest.approx(exact, rel=0, abs=1e-15)
