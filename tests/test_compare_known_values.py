"""Condition comparisons against hand-computed values and independent textbook equivalents.

Each test pins a number a user would publish (effect sizes, interval levels, one- vs
two-sided p, trend slope, geometric means, ICC, bootstrap quantiles) to a value computed
here from its definition, not from the code under test.
"""

import numpy as np
import pandas as pd
import pytest
from scipy import stats

from mechanoscope.metrics.conditions import compare_replicated_conditions, mixed_model_test
from mechanoscope.metrics.group_tests import bootstrap_median_ci
from mechanoscope.simulate.conditions import ConditionsDesign, simulate_condition_table


def _exact_table(rep_medians: dict[str, list[float]], spread=(0.8, 1.0, 1.25)) -> pd.DataFrame:
    """Cells whose replicate medians are exactly ``rep_medians`` (three cells per replicate)."""
    rows = []
    for cond, meds in rep_medians.items():
        for r, m in enumerate(meds, start=1):
            rows += [{"condition": cond, "replicate": r, "stiffness_pa": m * f} for f in spread]
    return pd.DataFrame(rows)


def test_pairwise_effect_sizes_equal_their_definitions():
    meds = {"A": [100.0, 150.0, 220.0], "B": [300.0, 380.0, 700.0, 520.0]}
    cells = _exact_table(meds)
    r = compare_replicated_conditions(cells, value="stiffness_pa", order=["A", "B"], n_bootstrap=200)
    pw = r.pairwise.iloc[0]
    la, lb = np.log(meds["A"]), np.log(meds["B"])
    na, nb = la.size, lb.size
    sp = np.sqrt(((na - 1) * la.var(ddof=1) + (nb - 1) * lb.var(ddof=1)) / (na + nb - 2))
    g = (lb.mean() - la.mean()) / sp * (1 - 3 / (4 * (na + nb) - 9))  # Hedges & Olkin's small-sample correction
    assert pw["hedges_g"] == pytest.approx(g, rel=1e-10)
    # Welch CI of the fold change at the configured level
    w = stats.ttest_ind(lb, la, equal_var=False).confidence_interval(0.95)
    assert (pw["ci_low"], pw["ci_high"]) == pytest.approx((np.exp(w.low), np.exp(w.high)), rel=1e-10)
    # Cliff's delta by brute force over every cell pair: P(b > a) − P(b < a); B is stiffer, so positive
    ca = cells.loc[cells.condition == "A", "stiffness_pa"].to_numpy()
    cb = cells.loc[cells.condition == "B", "stiffness_pa"].to_numpy()
    d = np.sign(cb[:, None] - ca[None, :]).mean()
    assert d > 0 and pw["cliffs_delta_cells"] == pytest.approx(d, rel=1e-12)
    # summary: geometric mean and SD (ddof 1) of the log replicate medians
    s = r.summary.set_index("condition")
    assert s.loc["B", "mean_of_replicate_medians"] == pytest.approx(np.exp(lb.mean()), rel=1e-12)
    assert s.loc["B", "replicate_median_spread"] == pytest.approx(lb.std(ddof=1), rel=1e-12)
    assert s.loc["A", "mean_of_replicate_medians"] == pytest.approx(np.exp(la.mean()), rel=1e-12)


def test_cell_median_ratio_when_a_condition_has_one_replicate():
    cells = _exact_table({"A": [100.0], "B": [400.0, 500.0]})
    r = compare_replicated_conditions(cells, value="stiffness_pa", order=["A", "B"], n_bootstrap=200)
    pw = r.pairwise.iloc[0]
    ca = cells.loc[cells.condition == "A", "stiffness_pa"]
    cb = cells.loc[cells.condition == "B", "stiffness_pa"]
    assert pw["estimate"] == pytest.approx(cb.median() / ca.median(), rel=1e-12) and pw["estimate"] > 1


def _balanced_design(seed=3, K=3, R=4, n=30, step=0.4, rep_sd=0.3):
    """y with condition means exactly a + step·j and a clearly non-zero replicate variance."""
    rng = np.random.default_rng(seed)
    rows = []
    for j in range(K):
        rep = rng.standard_normal(R)
        rep = (rep - rep.mean()) * rep_sd / rep.std(ddof=1)
        for r in range(R):
            e = rng.standard_normal(n)
            e = 0.2 * (e - e.mean())
            rows += [{"condition": f"c{j}", "g": f"c{j}_{r}", "y": 6.0 + step * j + rep[r] + v} for v in e]
    return pd.DataFrame(rows)


def test_mixed_model_contrasts_are_two_sided_t_with_containment_df_as_the_anova_on_replicate_means():
    """Balanced nested design: REML Wald t of a contrast = pooled t on replicate means (df G − K)."""
    d = _balanced_design()
    order = ["c0", "c1", "c2"]
    res = mixed_model_test(d.y.to_numpy(), d.condition.to_numpy(), d.g.to_numpy(), order, level=0.9)
    means = d.groupby(["condition", "g"]).y.mean()
    R, K = 4, 3
    df = K * R - K
    mse = sum(((means[c] - means[c].mean()) ** 2).sum() for c in order) / df
    se = np.sqrt(2 * mse / R)
    for coef in res["coefficients"]:
        diff = means[coef["condition"]].mean() - means["c0"].mean()
        t = diff / se
        assert coef["estimate"] == pytest.approx(diff, rel=1e-6)
        assert coef["se"] == pytest.approx(se, rel=1e-3)
        assert coef["p_value"] == pytest.approx(2 * stats.t.sf(abs(t), df), rel=1e-2)
        half = stats.t.ppf(0.95, df) * se  # level 0.9: two-sided, 5 % in each tail
        assert coef["ci_high"] - coef["estimate"] == pytest.approx(half, rel=1e-3)
        assert coef["estimate"] - coef["ci_low"] == pytest.approx(half, rel=1e-3)
    a, b = "c1", "c2"
    t = (means[b].mean() - means[a].mean()) / se
    assert res["contrasts"][(a, b)][2] == pytest.approx(2 * stats.t.sf(abs(t), df), rel=1e-2)
    # the trend: condition means exactly linear, so the slope per step is the step
    res = mixed_model_test(d.y.to_numpy(), d.condition.to_numpy(), d.g.to_numpy(), order, trend=True)
    assert res["trend"]["slope_per_step"] == pytest.approx(0.4, rel=1e-6)
    # ICC from the variance components of statsmodels' own fit
    import statsmodels.formula.api as smf

    ref = smf.mixedlm("y ~ C(condition)", d, groups=d["g"]).fit(reml=True)
    vr, ve = float(ref.cov_re.iloc[0, 0]), float(ref.scale)
    assert res["icc"] == pytest.approx(vr / (vr + ve), rel=1e-3) and res["icc"] > 0.5


def test_compare_reports_two_sided_mixed_model_p_and_holm_over_pairs():
    design = ConditionsDesign(names=["a", "b", "c"], medians_pa=[500.0, 650.0, 900.0], replicates=4, replicate_sd_ln=0.2)
    cells, _ = simulate_condition_table(design, 25, 4)
    r = compare_replicated_conditions(cells, value="stiffness_pa", order=["a", "b", "c"], n_bootstrap=200)
    coef = {c["condition"]: c for c in r.tests["mixed_model"]["coefficients"]}
    pw = r.pairwise.set_index(["a", "b"])
    for c in ("b", "c"):
        t = coef[c]["estimate"] / coef[c]["se"]
        assert pw.loc[("a", c), "p_mixed"] == pytest.approx(2 * stats.t.sf(abs(t), 12 - 3), rel=1e-6)
    from statsmodels.stats.multitest import multipletests

    assert pw["p_mixed_holm"].to_numpy() == pytest.approx(multipletests(pw["p_mixed"].to_numpy(), method="holm")[1])


def _reference_hierarchical(values, groups, n_bootstrap, level, seed):
    """The documented resampling (replicates with replacement, then cells within each), same random draws,
    each resample's median taken with np.median."""
    rng = np.random.default_rng(seed)
    x = np.asarray(values, float)
    names, inv = np.unique(np.asarray(groups).astype(str), return_inverse=True)
    sizes = np.bincount(inv)
    R, nmax = len(names), int(sizes.max())
    members = [x[inv == r] for r in range(R)]
    pick = rng.integers(0, R, size=(n_bootstrap, R))
    u = rng.random((n_bootstrap, R, nmax))
    med = np.empty(n_bootstrap)
    for b in range(n_bootstrap):
        drawn = [members[r][np.floor(u[b, i, : sizes[r]] * sizes[r]).astype(int)] for i, r in enumerate(pick[b])]
        med[b] = np.median(np.concatenate(drawn))
    a = (1 - level) / 2
    return tuple(np.quantile(med, [a, 1 - a]))


def test_bootstrap_ci_quantiles_equal_the_medians_of_the_drawn_cells():
    rng = np.random.default_rng(0)
    # replicate sizes of both parities: odd and even totals per resample
    groups = np.repeat(["r1", "r2", "r3", "r4"], [3, 4, 5, 2])
    values = np.exp(rng.normal(6, 0.5, groups.size))
    for level in (0.95, 0.8):
        lo, hi, method = bootstrap_median_ci(values, groups, n_bootstrap=400, level=level, seed=5)
        assert method.startswith("hierarchical")
        assert (lo, hi) == pytest.approx(_reference_hierarchical(values, groups, 400, level, 5), rel=1e-12)
    # plain cell bootstrap: the same with np.median over index draws
    lo, hi, _ = bootstrap_median_ci(values, None, n_bootstrap=500, level=0.9, seed=2)
    idx = np.random.default_rng(2).integers(0, values.size, size=(500, values.size))
    ref = np.quantile(np.median(values[idx], axis=1), [0.05, 0.95])
    assert (lo, hi) == pytest.approx(tuple(ref), rel=1e-12)


def test_condition_level_functional_readout_uses_the_geometric_mean_of_replicate_medians():
    meds = {"A": [100.0, 400.0, 250.0], "B": [300.0, 900.0, 500.0], "C": [800.0, 3000.0, 1500.0], "D": [900.0, 1200.0, 5000.0]}
    cells = _exact_table(meds)
    readout = {"A": 0.1, "B": 0.5, "C": 0.7, "D": 0.65}
    func = pd.DataFrame({"condition": list(readout), "score": list(readout.values())})
    r = compare_replicated_conditions(cells, value="stiffness_pa", n_bootstrap=200, functional=func)
    fr = r.functional["readouts"]["score"]
    x = [np.mean(np.log10(meds[c])) for c in readout]  # log10 of the geometric mean of the replicate medians
    ref = stats.linregress(x, list(readout.values()))
    assert r.functional["level"] == "condition"
    assert fr["slope_per_decade"] == pytest.approx(ref.slope, rel=1e-10)
    assert fr["pearson_r"] == pytest.approx(ref.rvalue, rel=1e-10)
