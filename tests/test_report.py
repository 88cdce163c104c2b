"""The self-contained HTML report and ``mechanoscope report``."""

from __future__ import annotations

import json
import re
from html import escape as html_escape

import numpy as np
import pandas as pd
import pytest
from typer.testing import CliRunner

from mechanoscope import __version__
from mechanoscope.cli.main import app
from mechanoscope.errors import MechanoscopeError
from mechanoscope.pipeline import evaluate_run
from mechanoscope.report import write_report
from mechanoscope.report.html import NO_TRUTH_SENTENCE, coverage_sentence

runner = CliRunner()


def _pa_text(v: float) -> str:
    """A modulus as the report prints it: 3 significant digits in Pa, kPa or MPa."""
    for scale, unit in ((1e6, "MPa"), (1e3, "kPa"), (1.0, "Pa")):
        if v >= scale:
            return f"{v / scale:.3g} {unit}"
    return f"{v:.3g} Pa"


def make_run(root, n=30, *, cls=True, reg=True, truth=True, condition=True, seed=1):
    """A tiny run folder: cell table with predictions, crops.zarr, predict.json."""
    import zarr

    rng = np.random.default_rng(seed)
    root.mkdir(parents=True, exist_ok=True)
    e = 10 ** rng.uniform(2, 4, n)
    df = pd.DataFrame({"image_id": [f"img{i % 2}" for i in range(n)], "cell_id": np.arange(n) + 1, "qc_pass": True})
    if condition:
        df["condition"] = np.where(np.arange(n) % 2 == 0, "M0", "<b>M1</b>")
    if truth:
        df["label"] = np.where(e > 1000, "stiff", "soft")
        df["stiffness_pa"] = e
    if cls:
        p = np.clip((np.log10(e) - 2) / 2 + rng.normal(0, 0.1, n), 0.01, 0.99)
        df["pred_prob_soft"], df["pred_prob_stiff"] = 1 - p, p
        df["pred_label"] = np.where(p > 0.5, "stiff", "soft")
    if reg:
        pred = e * 10 ** rng.normal(0.1, 0.15, n)
        df["pred_stiffness_pa"], df["pred_lo_pa"], df["pred_hi_pa"] = pred, pred / 2, pred * 2
    df.to_parquet(root / "cells.parquet")
    g = zarr.open_group(str(root / "crops.zarr"), mode="w")
    g.create_array("crops", shape=(n, 1, 10, 10), dtype="float32")[:] = rng.normal(size=(n, 1, 10, 10))
    (root / "predict.json").write_text(json.dumps({"model": {"name": "tiny-cnn"}, "interval_level": 0.9}))
    return root


def assert_self_contained(html: str) -> None:
    assert html.lstrip().startswith("<!DOCTYPE html>")
    for bad in ('src="http', "src='http", 'href="http', "href='http", "url(http", "<link", "<script", "@import"):
        assert bad not in html, bad


@pytest.fixture(scope="module")
def full_report(tmp_path_factory):
    run = make_run(tmp_path_factory.mktemp("rep") / "run")
    with pytest.raises(MechanoscopeError, match="no evaluation.json; evaluate the run first"):
        write_report(run)  # the report shows an evaluation, never computes one
    path = write_report(run, evaluation=evaluate_run(run, figures=True))
    again = write_report(run, run / "again.html").read_text(encoding="utf-8")  # from evaluation.json and figures/
    assert again.count('<img src="data:image/png;base64,') == path.read_text(encoding="utf-8").count('<img src="data:image/png;base64,') >= 7
    return run, path, path.read_text(encoding="utf-8")


def test_report_is_one_self_contained_file(full_report):
    run, path, html = full_report
    assert path == run / "report.html"
    assert_self_contained(html)
    ev = json.loads((run / "evaluation.json").read_text())
    images = re.findall(r'<img src="data:image/png;base64,([A-Za-z0-9+/=]+)"', html)
    assert len(images) == len(ev["figures"]) >= 7
    for name in ("AUC", "F1", "balanced accuracy", "expected calibration error", "Brier score",
                 "mean APE", "median APE", "Bland–Altman bias", "limits of agreement",
                 "interval coverage", "Pearson r"):
        assert name in html, name
    assert "tiny-cnn" in html and __version__ in html
    # the numbers shown are those of evaluation.json, looked for in the visible text only (the
    # base64 figures contain almost any short string by chance)
    text = re.sub(r'<img src="data:image/png;base64,[A-Za-z0-9+/=]+"', "<img", html)
    assert "base64" not in text
    assert '<th>prediction interval level</th><td class="num">90.0 %</td>' in text
    c, r = ev["classification"], ev["regression"]
    assert f'<td>AUC</td><td class="num">{c["auc"]:.3f}</td>' in text
    assert f'<td>balanced accuracy</td><td class="num">{c["balanced_accuracy"]:.3f}</td>' in text
    assert f'<td>mean APE</td><td class="num">{r["ape_mean_pct"]:.1f}</td><td>%</td>' in text
    ba = r["bland_altman"]
    assert f'×{ba["loa_low_fold"]:.2f} – ×{ba["loa_high_fold"]:.2f}' in text
    iv = r["interval"]
    assert html_escape(coverage_sentence(iv["coverage"], iv["n"], 0.9)) in text
    assert f"Nominal 90 % intervals contained the measured modulus for {100 * iv['coverage']:.0f} % of the {iv['n']} cells" in text
    med = ev["predictions"]["stiffness_pa"]["median_pa"]
    assert f"<td>{_pa_text(med)} (" in text and _pa_text(med).endswith("Pa")
    m0 = ev["conditions"]["summaries"]["M0"]["median_pa"]
    assert f'<td>M0</td><td class="num">15</td><td class="num">{_pa_text(m0)}</td>' in text
    comp = ev["conditions"]["comparison"]
    assert "Mann-Whitney U (two-sided) on predicted modulus" in text
    assert f"= {comp['prob_superiority_b_over_a']:.2f} (0.5 = no difference)" in text
    assert NO_TRUTH_SENTENCE not in html
    # cell-table text is escaped, never injected as markup
    assert "<b>M1</b>" not in html and "&lt;b&gt;M1&lt;/b&gt;" in html


def test_report_without_truth_says_so(tmp_path):
    run = make_run(tmp_path / "r", truth=False, condition=False)
    html = write_report(run, evaluation=evaluate_run(run, figures=False)).read_text()
    assert_self_contained(html)
    assert NO_TRUTH_SENTENCE[1:] in html  # shown with a capital first letter
    assert "mean APE" not in html and "AUC" not in html


def test_report_classification_only(tmp_path):
    run = make_run(tmp_path / "r", reg=False)
    out = tmp_path / "elsewhere" / "rep.html"
    html = write_report(run, out, evaluation=evaluate_run(run, figures=False)).read_text()
    assert "AUC" in html and "mean APE" not in html and "% predicted stiff" in html


def test_coverage_sentence():
    assert "too narrow" in coverage_sentence(0.5, 200, 0.9)
    assert "consistent" in coverage_sentence(0.88, 200, 0.9)
    assert "wider than needed" in coverage_sentence(1.0, 500, 0.8)


def test_cli_report(tmp_path):
    run = make_run(tmp_path / "r", cls=False, condition=False)
    r = runner.invoke(app, ["report", str(run)], terminal_width=200)
    assert r.exit_code == 0, r.output
    assert str(run / "report.html") in r.output
    html = (run / "report.html").read_text()
    assert_self_contained(html)
    assert "data:image/png;base64" in html and "mean APE" in html
    r = runner.invoke(app, ["report", str(tmp_path / "missing")])
    assert r.exit_code == 2 and "no such run folder" in r.output


def test_model_table_leaves_out_settings_that_do_not_apply():
    from mechanoscope.report.html import _model_rows

    rows = _model_rows({"model_path": "/m", "classes": ["soft", "stiff"], "interval_level": None, "interval_method": None})
    assert rows == [("model path", "/m"), ("classes", "soft, stiff")]
