"""Calibrated uncertainty: temperature scaling, calibration error, split-conformal intervals.

* **Temperature scaling** (Guo et al. 2017): one scalar T > 0 divides the logits so
  that the negative log-likelihood on held-out (calibration) cells is minimal.
* **Expected calibration error**: mean |accuracy − confidence| over equal-width
  confidence bins, weighted by bin size.
* **Split-conformal regression** (Lei et al. 2018): on ``n`` calibration cells not used
  for training, scores ``s_i = |y_i − μ_i| / σ_i`` (σ = 1 without a spread estimate);
  the interval ``μ ± q·σ`` with ``q`` the ⌈(n+1)(1−α)⌉-th smallest score covers a new
  cell with probability ≥ 1 − α (exchangeability). Intervals are built on log10 E and
  mapped back to Pa, so they are multiplicative (fold) intervals.
"""

from __future__ import annotations

import numpy as np
from scipy.optimize import minimize_scalar
from scipy.special import log_softmax, softmax

from mechanoscope.errors import MechanoscopeError
from mechanoscope.evaluate.stiffness import reliability_bins

__all__ = [
    "fit_temperature",
    "expected_calibration_error",
    "conformal_quantile",
    "conformal_interval",
    "softmax_t",
]


def fit_temperature(logits: np.ndarray, y: np.ndarray) -> float:
    """Temperature T minimising the NLL of ``softmax(logits / T)`` on (logits, y).

    Parameters
    ----------
    logits : (N, K) float
    y : (N,) int class indices

    Returns
    -------
    float
        T in [0.05, 20]; 1.0 if there are fewer than 2 samples.
    """
    logits = np.asarray(logits, dtype=np.float64)
    y = np.asarray(y, dtype=int)
    if len(y) < 2:
        return 1.0

    def nll(log_t: float) -> float:
        lp = log_softmax(logits / np.exp(log_t), axis=1)
        return float(-lp[np.arange(len(y)), y].mean())

    res = minimize_scalar(nll, bounds=(np.log(0.05), np.log(20.0)), method="bounded")
    return float(np.exp(res.x))


def expected_calibration_error(prob: np.ndarray, y: np.ndarray, n_bins: int = 15) -> float:
    """ECE of class probabilities ``prob`` (N, K) for labels ``y`` (N,); NaN for no cells.

    The one definition of the calibration error in mechanoscope: the top-label
    confidence and correctness of each cell go to
    :func:`mechanoscope.evaluate.stiffness.reliability_bins` (equal-width bins
    ``(b/n, (b+1)/n]``, Guo et al. 2017), which the evaluation's reliability diagram uses too.
    """
    prob = np.asarray(prob, dtype=np.float64)
    y = np.asarray(y, dtype=int)
    if len(y) == 0:
        return float("nan")
    confidence = prob.max(axis=1)
    correct = prob.argmax(axis=1) == y
    return float(reliability_bins(correct, confidence, n_bins=n_bins)["ece"])


def conformal_quantile(scores: np.ndarray, level: float) -> float:
    """The ⌈(n+1)·level⌉-th smallest score (finite-sample split-conformal quantile).

    Raises
    ------
    MechanoscopeError
        Too few calibration cells for the requested level (n < 1/(1−level) − 1).
    """
    if not 0 < level < 1:
        raise MechanoscopeError(f"interval level must be in (0, 1), got {level}")
    s = np.sort(np.asarray(scores, dtype=np.float64)[np.isfinite(scores)])
    n = len(s)
    k = int(np.ceil((n + 1) * level))
    if n == 0 or k > n:
        # smallest n with ceil((n+1)·level) <= n, i.e. n >= level/(1−level) (0.9/0.1 is 9.000000000000002 in floats)
        need = int(np.ceil(level / (1 - level) - 1e-9))
        raise MechanoscopeError(
            f"{n} calibration cells are too few for a {level:.0%} conformal interval; "
            f"at least {need} are needed — label more cells or lower the interval level"
        )
    return float(s[k - 1])


def conformal_interval(mu: np.ndarray, q: float, sigma: np.ndarray | None = None) -> tuple[np.ndarray, np.ndarray]:
    """``(mu − q·σ, mu + q·σ)``; σ = 1 when not given."""
    mu = np.asarray(mu, dtype=np.float64)
    s = np.ones_like(mu) if sigma is None else np.asarray(sigma, dtype=np.float64)
    return mu - q * s, mu + q * s


def softmax_t(logits: np.ndarray, temperature: float = 1.0) -> np.ndarray:
    """Softmax of ``logits / T`` along the last axis."""
    return softmax(np.asarray(logits, dtype=np.float64) / temperature, axis=-1)
