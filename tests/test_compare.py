"""Condition comparisons with replicates: statistics against SciPy/statsmodels, hand cases, bad input, CLI, simulator."""

import itertools
import json
import os
import subprocess
import sys

import numpy as np
import pandas as pd
import pytest
from scipy import stats

from typer.testing import CliRunner

from mechanoscope.cli.main import app
from mechanoscope.errors import ConfigError, MechanoscopeError
from mechanoscope.metrics.conditions import ComparisonConfig, compare_replicated_conditions, mixed_model_test
from mechanoscope.metrics.group_tests import bootstrap_median_ci, holm_adjust, jonckheere_terpstra
from mechanoscope.simulate.conditions import ConditionsDesign, condition_preset, simulate_condition_table


runner = CliRunner()


def _table(seed=0, cells=60, design=None, **kw):
    design = design or condition_preset("passage", **kw)
    return simulate_condition_table(design, cells, seed)


# ----------------------------------------------------------------------------- building blocks


def test_holm_matches_statsmodels_and_a_hand_case():
    from statsmodels.stats.multitest import multipletests

    assert holm_adjust([0.01, 0.04, 0.03]) == pytest.approx([0.03, 0.06, 0.06])
    rng = np.random.default_rng(0)
    for n in (1, 2, 7, 30):
        p = np.round(rng.uniform(0, 0.2, n), 2)  # rounded: ties included
        assert holm_adjust(list(p)) == pytest.approx(multipletests(p, method="holm")[1])
    # missing p-values neither count nor get one
    assert holm_adjust([0.02, None, float("nan"), 0.01]) == [pytest.approx(0.02), None, None, pytest.approx(0.02)]
    assert holm_adjust([0.5, 0.9]) == pytest.approx([1.0, 1.0])


def test_bootstrap_ci_is_reproducible_with_its_seed_and_hierarchical_with_replicates():
    cells, _ = _table(seed=3, replicate_sd_ln=0.6)
    sub = cells[cells.condition == "P3"]
    a = bootstrap_median_ci(sub.stiffness_pa, sub.replicate, seed=11)
    b = bootstrap_median_ci(sub.stiffness_pa, sub.replicate, seed=11)
    c = bootstrap_median_ci(sub.stiffness_pa, sub.replicate, seed=12)
    assert a == b and a[:2] != c[:2]
    assert a[2].startswith("hierarchical")
    flat = bootstrap_median_ci(sub.stiffness_pa, None, seed=11)
    assert flat[2] == "cell bootstrap"
    med = float(np.median(sub.stiffness_pa))
    assert flat[0] <= med <= flat[1]
    # with a large replicate effect, resampling replicates widens the interval
    assert (a[1] - a[0]) > (flat[1] - flat[0])
    assert bootstrap_median_ci(np.full(20, 7.0), None)[:2] == (7.0, 7.0)
    # the hierarchical median of a resample equals the median of the drawn cells (odd and even counts)
    lo, hi, _ = bootstrap_median_ci([1.0, 2.0, 3.0, 10.0, 20.0], ["a", "a", "a", "b", "b"], n_bootstrap=500)
    assert 1.0 <= lo <= hi <= 20.0


def _jt_bruteforce(groups):
    """Exact two-sided p of J by enumerating every assignment of the pooled values to the groups."""
    pooled = np.concatenate(groups)
    sizes = [len(g) for g in groups]
    labels = np.repeat(np.arange(len(groups)), sizes)

    def J(lab):
        s = 0.0
        for a in range(len(groups)):
            for b in range(a + 1, len(groups)):
                x, y = pooled[lab == a], pooled[lab == b]
                s += (y[None, :] > x[:, None]).sum() + 0.5 * (y[None, :] == x[:, None]).sum()
        return s

    obs = J(labels)
    perms = {tuple(p) for p in itertools.permutations(labels)}
    vals = np.array([J(np.array(p)) for p in perms])
    mean = vals.mean()
    return obs, min(1.0, 2 * min((vals >= obs - 1e-9).mean(), (vals <= obs + 1e-9).mean())), mean


def test_jonckheere_terpstra_exact_matches_enumeration_and_sums_mann_whitney_u():
    groups = [np.array([1.2, 3.1]), np.array([2.5, 4.0, 4.4]), np.array([3.9, 5.5])]
    res = jonckheere_terpstra(groups)
    obs, p, mean = _jt_bruteforce(groups)
    assert res["statistic"] == obs and res["null_mean"] == pytest.approx(mean)
    assert res["method"] == "exact" and res["p_value"] == pytest.approx(p)
    assert res["direction"] == "increasing"
    # J is the sum of the pairwise Mann–Whitney U statistics (later group larger)
    u = sum(stats.mannwhitneyu(groups[b], groups[a]).statistic for a in range(3) for b in range(a + 1, 3))
    assert res["statistic"] == pytest.approx(u)
    rev = jonckheere_terpstra(groups[::-1])
    assert rev["direction"] == "decreasing" and rev["p_value"] == pytest.approx(res["p_value"])
    # perfectly ordered 3 x 3: J = 27 is the maximum, p = 2 / (9! / 3!^3)
    top = jonckheere_terpstra([[1, 2, 3], [4, 5, 6], [7, 8, 9]])
    assert top["statistic"] == 27 and top["p_value"] == pytest.approx(2 / 1680)


def test_jonckheere_terpstra_with_ties_uses_the_normal_approximation_close_to_enumeration():
    groups = [np.array([1.0, 2.0, 2.0]), np.array([2.0, 3.0, 3.0]), np.array([3.0, 4.0, 5.0])]
    res = jonckheere_terpstra(groups)
    obs, p, _ = _jt_bruteforce(groups)
    assert res["method"] == "normal approximation" and res["statistic"] == obs
    assert res["p_value"] == pytest.approx(p, abs=0.03)
    with pytest.raises(MechanoscopeError, match="two non-empty"):
        jonckheere_terpstra([[1.0, 2.0]])


def test_mixed_model_matches_statsmodels_formula_fit_and_the_replicate_mean_anova_when_balanced():
    import statsmodels.formula.api as smf

    cells, _ = _table(seed=5, cells=40, replicate_sd_ln=0.3)
    cells["y"] = np.log(cells.stiffness_pa)
    cells["g"] = cells.condition + "_" + cells.replicate.astype(str)
    order = ["P3", "P5", "P7", "P9"]
    res = mixed_model_test(cells.y.to_numpy(), cells.condition.to_numpy(), cells.g.to_numpy(), order, trend=True)
    ref = smf.mixedlm("y ~ C(condition, Treatment('P3'))", cells, groups=cells["g"]).fit(reml=True)
    est = [c["estimate"] for c in res["coefficients"]]
    np.testing.assert_allclose(est, ref.fe_params.to_numpy()[1:], rtol=1e-5)
    np.testing.assert_allclose([c["se"] for c in res["coefficients"]], ref.bse.to_numpy()[1:4], rtol=1e-4)
    assert res["replicate_variance"] == pytest.approx(float(ref.cov_re.iloc[0, 0]), rel=1e-4)
    # balanced nested design: the Wald F with G - K df equals the one-way ANOVA on replicate means
    means = cells.groupby(["condition", "replicate"]).y.mean()
    f = stats.f_oneway(*[means[c].to_numpy() for c in order])
    assert res["omnibus"]["df"] == [3, 8]
    assert res["omnibus"]["statistic"] == pytest.approx(f.statistic, rel=1e-3)
    assert res["omnibus"]["p_value"] == pytest.approx(f.pvalue, rel=1e-2)
    assert res["trend"]["direction"] == "increasing" and res["trend"]["p_value"] < 0.01


# ----------------------------------------------------------------------------- the comparison


def test_replicate_level_tests_equal_scipy_on_log_replicate_medians():
    cells, _ = _table(seed=1, cells=50)
    two = cells[cells.condition.isin(["P3", "P9"])]
    r = compare_replicated_conditions(two, value="stiffness_pa")
    med = two.groupby(["condition", "replicate"]).stiffness_pa.median()
    ref = stats.ttest_ind(np.log(med["P9"]), np.log(med["P3"]), equal_var=False)
    assert r.tests["replicate_level"]["test"].startswith("Welch")
    assert r.tests["replicate_level"]["p_value"] == pytest.approx(ref.pvalue)
    pw = r.pairwise.iloc[0]
    assert pw["p_replicates"] == pytest.approx(ref.pvalue)
    assert pw["estimate"] == pytest.approx(np.exp(np.log(med["P9"]).mean() - np.log(med["P3"]).mean()))
    assert pw["ci_low"] < pw["estimate"] < pw["ci_high"]
    mw = stats.mannwhitneyu(two[two.condition == "P9"].stiffness_pa, two[two.condition == "P3"].stiffness_pa)
    assert r.tests["cell_level"]["p_value"] == pytest.approx(mw.pvalue)
    # four conditions: one-way ANOVA on log medians, Holm over the six pairs
    r4 = compare_replicated_conditions(cells, value="stiffness_pa", order=["P3", "P5", "P7", "P9"])
    med = cells.groupby(["condition", "replicate"]).stiffness_pa.median()
    f = stats.f_oneway(*[np.log(med[c]) for c in ["P3", "P5", "P7", "P9"]])
    assert r4.tests["replicate_level"]["p_value"] == pytest.approx(f.pvalue)
    assert len(r4.pairwise) == 6
    assert r4.pairwise["p_replicates_holm"].tolist() == pytest.approx(holm_adjust(r4.pairwise["p_replicates"].tolist()))
    assert r4.tests["trend"]["mixed_model"]["direction"] == "increasing"
    assert r4.tests["trend"]["jonckheere_terpstra"]["direction"] == "increasing"
    s = r4.summary.set_index("condition")
    assert (s.n_replicates == 3).all() and (s.n_cells == 150).all()
    assert s.loc["P3", "median"] == pytest.approx(cells[cells.condition == "P3"].stiffness_pa.median())
    assert (s.ci_low <= s["median"]).all() and (s["median"] <= s.ci_high).all()
    # same seed → same result; JSON-ready
    again = compare_replicated_conditions(cells, value="stiffness_pa", order=["P3", "P5", "P7", "P9"])
    pd.testing.assert_frame_equal(r4.summary, again.summary)
    json.dumps(r4.to_dict())


def test_functional_readout_correlation_per_replicate_and_per_condition():
    cells, reps = _table(seed=2, cells=80, functional={"noise_sd": 0.01})
    f = reps[["condition", "replicate", "senescence_score"]]
    r = compare_replicated_conditions(cells, value="stiffness_pa", n_bootstrap=200, functional=f)
    fr = r.functional
    assert fr["level"] == "replicate" and fr["n_points"] == 12
    med = r.replicates.set_index(["condition", "replicate"])["median"]
    m = f.assign(replicate=f.replicate.astype(str)).set_index(["condition", "replicate"]).join(med)
    ref = stats.pearsonr(np.log10(m["median"]), m.senescence_score)
    assert fr["readouts"]["senescence_score"]["pearson_r"] == pytest.approx(ref.statistic)
    assert fr["readouts"]["senescence_score"]["pearson_r"] > 0.8
    assert fr["readouts"]["senescence_score"]["slope_per_decade"] == pytest.approx(0.4, abs=0.15)
    per_cond = f.groupby("condition", as_index=False).senescence_score.mean()
    rc = compare_replicated_conditions(cells, value="stiffness_pa", n_bootstrap=200, functional=per_cond)
    assert rc.functional["level"] == "condition" and rc.functional["n_points"] == 4
    with pytest.raises(MechanoscopeError, match="no readout for P9"):
        compare_replicated_conditions(cells, value="stiffness_pa", n_bootstrap=200, functional=per_cond[per_cond.condition != "P9"])
    with pytest.raises(MechanoscopeError, match="readout for P11 not in the data"):
        compare_replicated_conditions(cells, value="stiffness_pa", n_bootstrap=200, functional=pd.concat([per_cond, pd.DataFrame({"condition": ["P11"], "senescence_score": [1.0]})]))
    with pytest.raises(MechanoscopeError, match="key columns"):
        compare_replicated_conditions(cells, value="stiffness_pa", n_bootstrap=200, functional=per_cond.rename(columns={"condition": "passage"}))


def test_bad_inputs_give_clear_messages():
    cells, _ = _table(seed=4, cells=20)
    with pytest.raises(MechanoscopeError, match="grouping column 'passage' is not in the cell table"):
        compare_replicated_conditions(cells, by="passage", value="stiffness_pa", n_bootstrap=200)
    with pytest.raises(MechanoscopeError, match="value column 'pred_stiffness_pa'.*stiffness_pa"):
        compare_replicated_conditions(cells)
    with pytest.raises(MechanoscopeError, match="replicate column 'well'"):
        compare_replicated_conditions(cells, value="stiffness_pa", n_bootstrap=200, replicate="well")
    with pytest.raises(MechanoscopeError, match=r"order names condition\(s\) \['P4'\]"):
        compare_replicated_conditions(cells, value="stiffness_pa", n_bootstrap=200, order=["P3", "P4"])
    with pytest.raises(MechanoscopeError, match="at least two conditions"):
        compare_replicated_conditions(cells[cells.condition == "P3"], value="stiffness_pa", n_bootstrap=200)
    neg = cells.assign(stiffness_pa=cells.stiffness_pa - 500)
    with pytest.raises(MechanoscopeError, match="≤ 0"):
        compare_replicated_conditions(neg, value="stiffness_pa", n_bootstrap=200)
    assert compare_replicated_conditions(neg, value="stiffness_pa", n_bootstrap=200, log_scale=False).tests["replicate_level"] is not None
    with pytest.raises(ConfigError):
        ComparisonConfig.build(vaule="x")
    # a subset order leaves the others out, and says so
    r = compare_replicated_conditions(cells, value="stiffness_pa", n_bootstrap=200, order=["P9", "P3"])
    assert r.conditions == ["P9", "P3"] and any("not named in the order" in m for m in r.messages)
    # NaN values (e.g. AFM on a subset of cells) are left out and counted
    part = cells.assign(stiffness_pa=cells.stiffness_pa.where(np.arange(len(cells)) % 2 == 0))
    r = compare_replicated_conditions(part, value="stiffness_pa", n_bootstrap=200)
    assert r.summary.n_cells.sum() == len(cells) // 2 and any("without a finite" in m for m in r.messages)


def test_a_condition_with_one_replicate_is_compared_on_cells_only():
    cells, _ = _table(seed=6, cells=30)
    one = cells[~((cells.condition == "P5") & (cells.replicate > 1))]
    r = compare_replicated_conditions(one, value="stiffness_pa", n_bootstrap=200)
    assert r.tests["replicate_level"] is None and r.tests["mixed_model"] is None
    assert r.tests["cell_level"]["p_value"] is not None
    assert any("['P5'] have a single replicate: no replicate-level test is possible" in m for m in r.messages)
    pw = r.pairwise.set_index(["a", "b"])
    assert np.isnan(pw.loc[("P3", "P5"), "p_replicates"]) and np.isfinite(pw.loc[("P3", "P7"), "p_replicates"])
    assert "cell medians" in pw.loc[("P3", "P5"), "estimate_kind"]
    # without any replicate column: cells only, with a warning in plain words
    r = compare_replicated_conditions(cells.drop(columns="replicate"), value="stiffness_pa", n_bootstrap=200, replicate=None, order=["P3", "P5", "P7", "P9"])
    assert r.tests["replicate_level"] is None and "cell_level" in r.tests["trend"]
    assert any("overstates significance" in m for m in r.messages)


def test_quality_control_failures_are_left_out():
    cells, _ = _table(seed=7, cells=20)
    cells["qc_pass"] = np.arange(len(cells)) % 4 != 0
    r = compare_replicated_conditions(cells, value="stiffness_pa")
    assert r.summary.n_cells.sum() == int(cells.qc_pass.sum())
    assert compare_replicated_conditions(cells, value="stiffness_pa", qc_only=False).summary.n_cells.sum() == len(cells)
    assert not any("no qc_pass column" in m for m in r.messages)
    # a table without the column: every cell is used, and the result says so (never a silent change)
    r = compare_replicated_conditions(cells.drop(columns="qc_pass"), value="stiffness_pa")
    assert r.summary.n_cells.sum() == len(cells) and any("no qc_pass column" in m for m in r.messages)
    r = compare_replicated_conditions(cells.drop(columns="qc_pass"), value="stiffness_pa", qc_only=False)
    assert not any("no qc_pass column" in m for m in r.messages)


# ----------------------------------------------------------------------------- simulator


def test_design_validation_and_presets():
    with pytest.raises(ConfigError, match="3 values for 2 conditions"):
        ConditionsDesign.build(names=["a", "b"], medians_pa=[1, 2, 3])
    with pytest.raises(ConfigError, match="unique"):
        ConditionsDesign.build(names=["a", "a"], medians_pa=[1, 2])
    with pytest.raises(ConfigError, match="unknown condition preset"):
        condition_preset("zebra")
    m = condition_preset("macrophage")
    assert m.names == ["M0", "M1", "M2"] and max(zip(m.medians_pa, m.names))[1] == "M1"
    # replicate effects have the documented SD on the ln scale
    d = ConditionsDesign(names=["a"], medians_pa=[500.0], replicates=1000, replicate_sd_ln=0.2)
    _, reps = simulate_condition_table(d, 1, 0)
    assert np.std(np.log(reps.replicate_median_pa / 500.0)) == pytest.approx(0.2, rel=0.08)


def test_simulate_adherent_with_conditions_records_condition_and_replicate(tmp_path):
    from mechanoscope.simulate import AdherentConfig, simulate_adherent

    design = ConditionsDesign(names=["lo", "hi"], medians_pa=[200.0, 2000.0], replicates=2, replicate_sd_ln=0.1, functional={})
    with pytest.raises(ConfigError, match="every replicate needs at least one field of view"):
        AdherentConfig.build(n_images=3, conditions=design)
    cfg = AdherentConfig(n_images=8, image_shape_px=(128, 128), cells_per_image=3, conditions=design, afm_fraction=0.5)
    out = simulate_adherent(cfg, tmp_path / "sim", seed=2)
    cells = pd.read_parquet(out / "cells.parquet")
    units = cells.groupby("image_id")[["condition", "replicate"]].first()
    assert units.apply(tuple, axis=1).tolist() == [("lo", 1), ("lo", 2), ("hi", 1), ("hi", 2)] * 2
    assert (cells.label == cells.condition).all()
    reps = pd.read_parquet(out / "replicates.parquet")
    func = pd.read_parquet(out / "functional.parquet")
    assert list(func.columns) == ["condition", "replicate", "senescence_score"] and len(func) == 4
    m = cells.merge(reps, on=["condition", "replicate"], suffixes=("", "_r"))
    np.testing.assert_allclose(m.replicate_median_pa, m.replicate_median_pa_r)
    assert (cells.groupby("condition").stiffness_pa.median()["hi"] > 3 * cells.groupby("condition").stiffness_pa.median()["lo"])
    # same config + seed → same cells; the compare verb reads the folder
    again = simulate_adherent(cfg, tmp_path / "sim2", seed=2)
    pd.testing.assert_frame_equal(cells, pd.read_parquet(again / "cells.parquet"))


# ----------------------------------------------------------------------------- CLI


def _cli(*args, cwd=None):
    env = {**os.environ, "PYTHONWARNINGS": "ignore", "COLUMNS": "200"}
    env.pop("MECHANOSCOPE_DEBUG", None)
    return subprocess.run([sys.executable, "-m", "mechanoscope.cli.main", *args], capture_output=True, text=True, env=env, timeout=300, cwd=cwd)


def test_cli_compare_writes_tables_json_and_superplot_and_fails_cleanly(tmp_path):
    cells, reps = _table(seed=8, cells=40, functional={})
    cells["pred_stiffness_pa"] = cells.stiffness_pa * np.exp(0.3 * np.random.default_rng(0).standard_normal(len(cells)))
    run = tmp_path / "run"
    run.mkdir()
    cells.to_parquet(run / "cells.parquet")
    reps[["condition", "replicate", "senescence_score"]].to_csv(tmp_path / "func.csv", index=False)
    out = tmp_path / "cmp"
    r = _cli("compare", str(run), "--by", "condition", "--order", "P3,P5,P7,P9", "--functional", str(tmp_path / "func.csv"), "--out", str(out))
    assert r.returncode == 0, r.stderr
    assert "Traceback" not in r.stderr and "one-way ANOVA on replicate medians" in r.stderr and "senescence_score" in r.stderr
    for name in ("summary", "pairwise", "replicates"):
        assert (out / f"{name}.csv").is_file() and (out / f"{name}.parquet").is_file()
    res = json.loads((out / "comparison.json").read_text())
    assert res["value"] == "pred_stiffness_pa" and res["tests"]["trend"]["mixed_model"]["direction"] == "increasing"
    assert res["functional"]["level"] == "replicate"
    assert (out / "superplot.png").read_bytes()[:4] == b"\x89PNG"
    assert len(pd.read_csv(out / "summary.csv")) == 4
    bad = [
        (["--by", "passage"], "grouping column 'passage'"),
        (["--order", "P3,P4"], "order names condition(s) ['P4']"),
        (["--replicate", "well"], "replicate column 'well'"),
        (["--value", "afm_stiffness_pa"], "value column 'afm_stiffness_pa'"),
    ]
    r = _cli("compare", str(run), "--out", str(tmp_path / "bad"), *bad[0][0])  # one bad input in a real process
    assert r.returncode == 2 and bad[0][1] in r.stderr and "Traceback" not in r.stderr
    for extra, msg in bad[1:] + [(["--by", "condition"], "no such table file")]:  # the others in-process (same error path)
        src = run if msg != "no such table file" else tmp_path / "nowhere.parquet"
        r = runner.invoke(app, ["compare", str(src), "--out", str(tmp_path / "bad"), *extra])
        assert r.exit_code == 2, (extra, r.output)
        assert msg in r.output and "Traceback" not in r.output


def test_cli_simulate_conditions_then_compare(tmp_path):
    sim = tmp_path / "sim"
    r = runner.invoke(app, ["simulate", "adherent", "--out", str(sim), "--conditions", "macrophage", "--replicates", "2",
                            "--cells-per-image", "3", "--image-size-px", "96", "--functional"])
    assert r.exit_code == 0, r.output
    cells = pd.read_parquet(sim / "cells.parquet")
    assert set(cells.condition) == {"M0", "M1", "M2"} and set(cells.replicate) == {1, 2} and cells.image_id.nunique() == 6
    r = runner.invoke(app, ["compare", str(sim), "--value", "stiffness_pa", "--functional", str(sim / "functional.parquet"), "--out", str(tmp_path / "c")])
    assert r.exit_code == 0, r.output
    r = runner.invoke(app, ["simulate", "adherent", "--out", str(tmp_path / "x"), "--conditions", "a,b"])
    assert r.exit_code == 2 and "--condition-medians-pa" in r.output and "Traceback" not in r.output


# ----------------------------------------------------------------------------- report


def test_report_shows_the_comparison_section_written_by_compare(tmp_path):
    from mechanoscope.pipeline.evaluation import evaluate_run
    from mechanoscope.report import write_report
    from tests.test_report import assert_self_contained, make_run

    run = make_run(tmp_path / "r", n=36, cls=False)
    cells = pd.read_parquet(run / "cells.parquet")
    cells["replicate"] = (np.arange(len(cells)) // 2) % 3 + 1
    cells.to_parquet(run / "cells.parquet")
    r = runner.invoke(app, ["compare", str(run), "--n-bootstrap", "200"])  # default --out: RUN/comparison
    assert r.exit_code == 0, r.output
    comp = json.loads((run / "comparison" / "comparison.json").read_text())
    html = write_report(run, evaluation=evaluate_run(run, figures=False)).read_text()
    assert_self_contained(html)
    assert "Comparison of conditions: pred_stiffness_pa by condition" in html
    assert "Unit of analysis: the biological replicate" in html and "Welch t-test on replicate medians" in html
    assert "Mixed-effects model on every cell" in html and "For contrast only" in html
    assert "data:image/png;base64," in html and "SuperPlot" in html
    p = comp["pairwise"][0]["p_replicates_holm"]
    assert f'<td class="num">{p:.3g}</td>' in html
    assert "<b>M1</b>" not in html and "&lt;b&gt;M1&lt;/b&gt;" in html  # condition names escaped


def test_simulated_truth_attached_to_a_run_carries_the_replicate(tmp_path):
    import shutil

    from mechanoscope.pipeline import attach_simulation_truth
    from mechanoscope.simulate import AdherentConfig, simulate_adherent

    design = ConditionsDesign(names=["a", "b"], medians_pa=[300.0, 900.0], replicates=2)
    sim = simulate_adherent(AdherentConfig(n_images=4, image_shape_px=(96, 96), cells_per_image=2, conditions=design), tmp_path / "sim", seed=1)
    truth = pd.read_parquet(sim / "cells.parquet")
    run = tmp_path / "run"
    shutil.copytree(sim / "labels", run / "labels")  # a perfect segmentation
    truth[["image_id", "cell_id"]].to_parquet(run / "cells.parquet")
    cells = attach_simulation_truth(run, sim)
    assert cells.replicate.tolist() == truth.replicate.tolist() and cells.condition.tolist() == truth.condition.tolist()


def test_mixed_model_refits_when_the_gradient_optimiser_fails_at_zero_replicate_variance():
    """A null experiment where statsmodels' default (bfgs → lbfgs) fit returns nonsense fixed
    effects with NaN standard errors ("converged"): the refit gives the balanced-design answer."""
    design = ConditionsDesign(names=["P3", "P5", "P7", "P9"], medians_pa=[500.0] * 4, replicates=3, replicate_sd_ln=0.15)
    ss = np.random.SeedSequence(0)
    ss.spawn(200)
    rng = np.random.default_rng(ss.spawn(200)[112])  # found by benchmarks/compare.py
    cells, _ = simulate_condition_table(design, 100, rng)
    y = np.log(cells.stiffness_pa.to_numpy() * np.exp(0.5 * rng.standard_normal(len(cells))))
    g = (cells.condition + "_" + cells.replicate.astype(str)).to_numpy()
    res = mixed_model_test(y, cells.condition.to_numpy(), g, design.names, trend=True)
    means = pd.Series(y).groupby(cells.condition.to_numpy()).mean()  # balanced: fixed effects = condition means
    np.testing.assert_allclose([c["estimate"] for c in res["coefficients"]], (means[design.names[1:]] - means["P3"]).to_numpy(), atol=1e-4)
    assert np.isfinite(res["trend"]["p_value"]) and res["trend"]["se"] > 0 and 0.05 < res["omnibus"]["p_value"] < 1
