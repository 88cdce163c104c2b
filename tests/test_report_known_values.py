"""Numbers the report prints, by hand: the Bland–Altman verdict (over- vs under-estimation and
by how many per cent), the factor an RMSE in decades stands for, interval coverage in per
cent, moduli in Pa / kPa / MPa and the comparison section's values."""

from __future__ import annotations

from mechanoscope.report.comparison_section import _v
from mechanoscope.report.html import _pa, metric_rows


def _rows(**reg):
    base = {"ape_mean_pct": 30.0, "ape_median_pct": 20.0, "rmse_log10": 0.3}
    return {r["metric"]: r for r in metric_rows({"regression": {**base, **reg}, "interval_level": 0.9})}


def test_bias_verdict_rmse_factor_and_coverage_by_hand():
    over = _rows(bland_altman={"bias_fold": 1.25, "bias_log10": 0.0969})["Bland–Altman bias"]
    assert over["value"] == "×1.25" and "over-estimates by 25 %" in over["meaning"]
    under = _rows(bland_altman={"bias_fold": 0.8, "bias_log10": -0.0969})["Bland–Altman bias"]
    assert "under-estimates by 20 %" in under["meaning"]
    assert "no systematic" in _rows(bland_altman={"bias_fold": 1.004, "bias_log10": 0.002})["Bland–Altman bias"]["meaning"]
    # 0.3 decades = a factor 10^0.3 = 2.00
    assert "a factor of 2.00" in _rows()["RMSE (log10 E)"]["meaning"]
    cov = _rows(interval={"coverage": 0.875, "n": 40, "nominal_level": 0.9, "width_fold_geomean": 3.0, "width_fold_median": 2.9})
    assert cov["interval coverage"]["value"] == "87.5" and cov["interval coverage"]["unit"] == "%"
    assert "contained the measured modulus for 88 % of the 40 cells" in cov["interval coverage"]["meaning"]


def test_moduli_are_printed_in_pa_kpa_mpa():
    assert [_pa(v) for v in (512.0, 999.0, 1000.0, 2345.0, 1.5e6)] == ["512 Pa", "999 Pa", "1 kPa", "2.35 kPa", "1.5 MPa"]
    assert [_v(v, "Pa") for v in (512.0, 2345.0)] == ["512 Pa", "2.35 kPa"] and _v(0.1234, "") == "0.123"
