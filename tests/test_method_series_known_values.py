"""Method series (metrics.method_series) against hand-computed agreement, fold changes and Holm decisions."""

from __future__ import annotations

import numpy as np
import pytest

from mechanoscope.metrics.conditions import holm_adjust
from mechanoscope.metrics.method_series import method_condition_series
from mechanoscope.simulate.conditions import ConditionsDesign, simulate_condition_table


def _cells(seed=3):
    design = ConditionsDesign(names=["P3", "P5", "P7"], medians_pa=[500.0, 560.0, 640.0], replicates=4, replicate_sd_ln=0.12, cell_sigma_ln=0.3)
    cells, _ = simulate_condition_table(design, 30, seed=seed)
    rng = np.random.default_rng(1)
    cells["noisy_pa"] = cells["stiffness_pa"] * 1.2 * np.exp(0.25 * rng.standard_normal(len(cells)))
    return cells


def test_bland_altman_limits_and_fold_change_equal_their_definitions():
    cells = _cells()
    res = method_condition_series(cells, {"noisy": "noisy_pa"}, order=["P3", "P5", "P7"], truth="stiffness_pa", n_bootstrap=100)
    med = cells.groupby(["condition", "replicate"])[["noisy_pa", "stiffness_pa"]].median()
    d = np.log(med["noisy_pa"].to_numpy()) - np.log(med["stiffness_pa"].to_numpy())  # method / reference
    sd = d.std(ddof=1)
    (ag,) = res["agreement"]
    assert (ag["method"], ag["reference"]) == ("noisy", "truth")
    assert ag["bias_ratio"] == pytest.approx(np.exp(d.mean()), rel=1e-10)
    assert ag["loa_ratio_low"] == pytest.approx(np.exp(d.mean() - 1.96 * sd), rel=1e-10)
    assert ag["loa_ratio_high"] == pytest.approx(np.exp(d.mean() + 1.96 * sd), rel=1e-10)
    # fold change of the last condition over the first: ratio of geometric means of replicate medians
    lm = np.log(med["noisy_pa"])
    assert res["methods"]["noisy"]["fold_change_last_vs_first"] == pytest.approx(np.exp(lm["P7"].mean() - lm["P3"].mean()), rel=1e-10)
    # per-cell percentage error relative to the truth
    ape = 100 * np.abs(cells["noisy_pa"] / cells["stiffness_pa"] - 1)
    assert res["methods"]["noisy"]["mean_ape_percent"] == pytest.approx(ape.mean(), rel=1e-10)


def test_pairs_found_use_the_holm_corrected_p_values():
    from mechanoscope.metrics.conditions import compare_replicated_conditions

    # a series with modest effects: some raw p-values fall below alpha where Holm's do not
    cells = _cells(seed=1)
    alpha = 0.05
    r = compare_replicated_conditions(cells, value="stiffness_pa", order=["P3", "P5", "P7"], qc_only=False, n_bootstrap=100)
    raw = r.pairwise["p_replicates"].to_numpy()
    holm = np.array(holm_adjust(list(raw)))
    assert ((raw < alpha) != (holm < alpha)).any(), (raw, holm)  # the case separates raw from corrected
    res = method_condition_series(cells, {"truth_as_method": "stiffness_pa"}, order=["P3", "P5", "P7"], alpha=alpha, n_bootstrap=100)
    expect = [f"{a} vs {b}" for a, b, p in zip(r.pairwise["a"], r.pairwise["b"], holm) if p < alpha]
    assert res["methods"]["truth_as_method"]["pairs_found"] == expect
