"""Several methods on one condition series (metrics.method_series): found differences, agreement, errors.

Known truth: a table-level series (simulate_condition_table) with a truth column, an
unbiased noisy method, a method biased ×1.5, and a method blind to the conditions.
"""

from __future__ import annotations

import numpy as np
import pytest

from mechanoscope.errors import MechanoscopeError
from mechanoscope.metrics.method_series import method_condition_series
from mechanoscope.simulate.conditions import ConditionsDesign, simulate_condition_table


def _series():
    design = ConditionsDesign(names=["P3", "P5", "P7"], medians_pa=[500.0, 1000.0, 2000.0], replicates=4, replicate_sd_ln=0.05, cell_sigma_ln=0.3)
    cells, _ = simulate_condition_table(design, 40, seed=3)
    rng = np.random.default_rng(0)
    e = cells["stiffness_pa"].to_numpy()
    cells["good_pa"] = e * np.exp(0.1 * rng.standard_normal(len(e)))
    cells["biased_pa"] = 1.5 * e
    cells["blind_pa"] = np.exp(rng.normal(np.log(900), 0.3, len(e)))
    cells.loc[cells.index[::3], "good_pa"] = np.nan  # measured only some cells
    return cells


def test_methods_find_the_true_differences_and_report_bias():
    res = method_condition_series(_series(), {"good": "good_pa", "biased": "biased_pa", "blind": "blind_pa"}, order=["P3", "P5", "P7"],
                                  truth="stiffness_pa", n_bootstrap=100)
    m = res["methods"]
    assert m["truth"]["pairs_found"] == ["P3 vs P5", "P3 vs P7", "P5 vs P7"]
    assert m["good"]["pairs_found_with_true_sign"] == 3 and m["good"]["n_cells"] == 320  # 2 of 3 of the 3 × 4 × 40 cells measured
    assert m["blind"]["pairs_found"] == [] and m["blind"]["fold_change_last_vs_first"] == pytest.approx(1.0, abs=0.25)
    assert m["biased"]["median_ratio_to_truth"] == pytest.approx(1.5) and m["biased"]["median_ape_percent"] == pytest.approx(50.0)
    assert m["good"]["median_ape_percent"] < 10
    agree = {(a["method"], a["reference"]): a for a in res["agreement"]}
    assert agree[("biased", "truth")]["bias_ratio"] == pytest.approx(1.5, rel=1e-6)
    assert agree[("good", "truth")]["bias_ratio"] == pytest.approx(1.0, abs=0.05) and agree[("good", "truth")]["spearman"] > 0.8
    rows = [r for r in res["table"] if r["method"] == "biased"]
    assert [r["condition"] for r in rows] == ["P3", "P5", "P7"] and rows[2]["median_pa"] > rows[0]["median_pa"]
    # the side-by-side figure draws exactly these medians and intervals, methods offset within each condition
    from mechanoscope.report.method_series_figure import method_series_figure, method_series_points

    pts = method_series_points(res)
    assert list(pts) == ["truth", "good", "biased", "blind"]
    assert pts["biased"]["median"] == pytest.approx([r["median_pa"] for r in rows])
    assert pts["biased"]["err_high"] == pytest.approx([r["ci_high_pa"] - r["median_pa"] for r in rows])
    assert all(lo >= 0 for lo in pts["biased"]["err_low"])
    xs = [pts[m]["x"][1] for m in pts]  # condition P5: four methods side by side around x = 1
    assert xs == sorted(xs) and 0.6 < xs[0] < 1.0 < xs[-1] < 1.4
    assert method_series_figure(res)[:8] == b"\x89PNG\r\n\x1a\n"


def test_missing_method_column_is_named():
    with pytest.raises(MechanoscopeError, match="afm_stiffness_pa"):
        method_condition_series(_series(), {"AFM": "afm_stiffness_pa"}, order=["P3", "P5", "P7"])
