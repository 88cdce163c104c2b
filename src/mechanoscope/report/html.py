"""A self-contained HTML report of a run folder, for the cell biologist.

:func:`write_report` evaluates the run (:func:`mechanoscope.evaluate.evaluate_run`,
which also writes ``RUN/evaluation.json`` and ``RUN/figures/*.png``) and writes
``RUN/report.html``: one file, figures embedded as base64 PNG, no external CSS,
scripts, fonts or images, so it can be mailed or archived as is.

:func:`metric_rows` turns an evaluation into ``(metric, value, unit, meaning)`` rows;
the command line prints the same rows.
"""

from __future__ import annotations

import base64
import json
import datetime as _dt
import math
import os
from collections.abc import Mapping
from pathlib import Path
from typing import Any

from mechanoscope.errors import MechanoscopeError

__all__ = ["write_report", "metric_rows", "coverage_sentence", "NO_TRUTH_SENTENCE"]

#: Said when a run carries no truth to score against.
NO_TRUTH_SENTENCE = "no measured stiffness in this run: metrics need truth; figures show predictions only"

# published reference values (DESIGN.md): soft/stiff CNN and the modulus regressor
_PUBLISHED = {"auc": 1.00, "f1": 0.976, "accuracy": 0.976, "ape_mean_pct": 57.0}


def _num(v: Any, fmt: str = ".3f") -> str:
    if v is None or (isinstance(v, float) and not math.isfinite(v)):
        return "–"
    return format(v, fmt)


def _pa(v: float | None) -> str:
    if v is None:
        return "–"
    if v >= 1e6:
        return f"{v / 1e6:.3g} MPa"
    if v >= 1e3:
        return f"{v / 1e3:.3g} kPa"
    return f"{v:.3g} Pa"


def _p(v: float | None) -> str:
    if v is None:
        return "–"
    return "< 0.001" if v < 0.001 else f"{v:.3f}"


def coverage_sentence(coverage: float, n: int, nominal: float | None) -> str:
    """One sentence judging interval coverage against the nominal level.

    Coverage within two binomial standard errors of the nominal level (plus one cell)
    counts as consistent.
    """
    pct = 100 * coverage
    if nominal is None:
        return (
            f"The prediction intervals contained the measured modulus for {pct:.0f} % of the "
            f"{n} cells; their nominal level is not recorded in predict.json."
        )
    se = math.sqrt(max(nominal * (1 - nominal), 1e-12) / max(n, 1))
    tol = 2 * se + 1.0 / max(n, 1)
    head = (
        f"Nominal {100 * nominal:.0f} % intervals contained the measured modulus for "
        f"{pct:.0f} % of the {n} cells: "
    )
    if coverage < nominal - tol:
        return head + "the intervals are too narrow (the model is over-confident)."
    if coverage > nominal + tol:
        return head + "the intervals are wider than needed (conservative)."
    return head + "consistent with the nominal level."


def metric_rows(evaluation: Mapping[str, Any]) -> list[dict[str, str]]:
    """Headline metrics of an evaluation as rows for a table.

    Parameters
    ----------
    evaluation
        The dict returned by :func:`mechanoscope.evaluate.evaluate_run` (or read from
        ``evaluation.json``).

    Returns
    -------
    list of dict
        Each with ``section`` (``classification``/``regression``), ``metric``,
        ``value`` (formatted), ``unit`` and ``meaning`` (one sentence).
    """
    rows: list[dict[str, str]] = []

    def add(section: str, metric: str, value: str, unit: str, meaning: str) -> None:
        rows.append({"section": section, "metric": metric, "value": value, "unit": unit, "meaning": meaning})

    c = evaluation.get("classification")
    if c:
        pos = c.get("positive_class")
        classes = c.get("classes", [])
        neg = [k for k in classes if k != pos]
        s = "classification"
        if c.get("auc") is not None:
            if pos and neg:
                meaning = (
                    f"Chance that a random {pos} cell gets a higher P({pos}) than a random {neg[0]} "
                    f"cell; 0.5 = guessing, 1 = perfect (published soft/stiff CNN: {_PUBLISHED['auc']:.2f})."
                )
            else:
                meaning = "One-vs-rest area under the ROC curve, averaged over classes; 0.5 = guessing, 1 = perfect."
            add(s, "AUC", _num(c["auc"]), "", meaning)
        add(s, "F1", _num(c.get("f1")), "",
            (f"Harmonic mean of precision and recall for the {pos} class" if pos else "Macro-averaged F1 over classes")
            + f"; 1 = no false or missed calls (published: {_PUBLISHED['f1']:.3f}).")
        add(s, "accuracy", _num(c.get("accuracy")), "",
            f"Fraction of the {c.get('n')} cells with truth whose class was predicted right "
            f"(published: {_PUBLISHED['accuracy']:.3f}).")
        k = max(len(classes), 2)
        add(s, "balanced accuracy", _num(c.get("balanced_accuracy")), "",
            f"Mean of the per-class recalls; not inflated when one class dominates (chance = {1 / k:.2f}).")
        if c.get("ece") is not None:
            add(s, "expected calibration error", _num(c["ece"]), "",
                f"Average gap between the model's confidence and its actual accuracy "
                f"({100 * c['ece']:.1f} percentage points; {c.get('ece_bins', 15)} bins); 0 = confidences can be taken at face value.")
        add(s, "Brier score", _num(c.get("brier")), "", (c.get("brier_definition") or "") + ".")
    r = evaluation.get("regression")
    if r:
        s = "regression"
        add(s, "mean APE", _num(r.get("ape_mean_pct"), ".1f"), "%",
            f"On average the predicted modulus is off by this share of the measured one "
            f"(|pred − meas| / meas; published CNN regressor: {_PUBLISHED['ape_mean_pct']:.0f} %). "
            "Over-predictions can exceed 100 %, under-predictions cannot.")
        add(s, "median APE", _num(r.get("ape_median_pct"), ".1f"), "%",
            "Half of the cells are predicted within this percentage of their measured modulus.")
        if r.get("pearson_r_log10") is not None:
            add(s, "Pearson r (log10 E)", _num(r["pearson_r_log10"]), "",
                f"Linear correlation of log predicted and log measured modulus (p {_p(r.get('pearson_p'))}); 1 = perfect, 0 = none.")
        if r.get("spearman_rho_log10") is not None:
            add(s, "Spearman ρ", _num(r["spearman_rho_log10"]), "",
                f"Rank correlation: how well the model orders cells from soft to stiff (p {_p(r.get('spearman_p'))}).")
        rm = r.get("rmse_log10")
        add(s, "RMSE (log10 E)", _num(rm), "decades",
            f"Typical error on a log scale; {_num(rm, '.2f')} decades ≈ a factor of {_num(10**rm if rm is not None else None, '.2f')}.")
        ba = r.get("bland_altman") or {}
        if ba.get("bias_fold") is not None:
            f = ba["bias_fold"]
            if abs(f - 1) < 0.005:
                verdict = "no systematic over- or under-estimation"
            elif f > 1:
                verdict = f"the model over-estimates by {(f - 1) * 100:.0f} % on average"
            else:
                verdict = f"the model under-estimates by {(1 - f) * 100:.0f} % on average"
            add(s, "Bland–Altman bias", f"×{f:.2f}", "fold",
                f"Predictions are on average {f:.2f} times the measured modulus ({verdict}; "
                f"log10 bias {ba['bias_log10']:+.3f}).")
        if ba.get("loa_low_fold") is not None:
            add(s, "95 % limits of agreement", f"×{ba['loa_low_fold']:.2f} – ×{ba['loa_high_fold']:.2f}", "fold",
                "For 95 % of cells the ratio predicted/measured lies in this range (bias ± 1.96 SD on log10 E).")
        iv = r.get("interval")
        if iv:
            nominal = iv.get("nominal_level", evaluation.get("interval_level"))
            add(s, "interval coverage", _num(100 * iv["coverage"], ".1f"), "%",
                coverage_sentence(iv["coverage"], iv["n"], nominal))
            add(s, "interval width", f"×{iv['width_fold_geomean']:.2f}", "fold (hi/lo)",
                f"Geometric-mean ratio of upper to lower interval end (median ×{iv['width_fold_median']:.2f}).")
    return rows


def _condition_rows(evaluation: Mapping[str, Any]) -> tuple[list[dict[str, Any]], list[str], list[str]]:
    cond = evaluation.get("conditions")
    if not cond:
        return [], [], []
    classes = (evaluation.get("predictions") or {}).get("classes") or []
    rows = []
    for name, s in cond["summaries"].items():
        rows.append({
            "name": name,
            "n": s.get("n_cells"),
            "median": _pa(s.get("median_pa")),
            "iqr": f"{_pa(s.get('q25_pa'))} – {_pa(s.get('q75_pa'))}" if s.get("median_pa") is not None else "–",
            "fractions": [_num(100 * (s.get("class_fraction") or {}).get(c) if (s.get("class_fraction") or {}).get(c) is not None else None, ".0f") for c in classes],
        })
    sentences = []
    comp = cond.get("comparison")
    if comp:
        if comp["test"].startswith("Mann"):
            ratio = comp.get("median_ratio_b_over_a")
            sentences.append(
                f"{comp['test']} on predicted modulus, {comp['b']} (n = {comp['n_b']}) vs "
                f"{comp['a']} (n = {comp['n_a']}): p {_p(comp['p'])}; median ratio "
                f"{comp['b']}/{comp['a']} = {_num(ratio, '.2f')}; probability that a random "
                f"{comp['b']} cell is stiffer than a random {comp['a']} cell = "
                f"{_num(comp['prob_superiority_b_over_a'], '.2f')} (0.5 = no difference)."
            )
        else:
            sentences.append(
                f"{comp['test']} on predicted modulus across {len(comp['conditions'])} conditions: "
                f"H = {comp['h']:.2f}, p {_p(comp['p'])}, ε² = {_num(comp.get('epsilon_squared'), '.3f')} "
                "(share of rank variance explained by condition)."
            )
            for pr in comp.get("pairwise", []):
                sentences.append(
                    f"{pr['b']} vs {pr['a']}: median ratio {_num(pr.get('median_ratio_b_over_a'), '.2f')}, "
                    f"Holm-adjusted p {_p(pr.get('p_holm'))}."
                )
        if comp.get("excluded"):
            sentences.append(f"Left out (too few cells): {', '.join(comp['excluded'])}.")
        sentences.append("Caveat: " + comp["caveat"] + ".")
    ct = cond.get("class_comparison")
    if ct:
        sentences.append(
            f"Predicted class vs condition, {ct['test']}: χ² = {ct['chi2']:.2f} "
            f"(dof {ct['dof']}), p {_p(ct['p'])}."
        )
    return rows, [str(c) for c in classes], sentences


_TEMPLATE = """<!DOCTYPE html>
<html lang="en">
<head>
<meta charset="utf-8">
<meta name="viewport" content="width=device-width, initial-scale=1">
<title>mechanoscope report – {{ run_name }}</title>
<style>
body { font-family: -apple-system, "Segoe UI", Helvetica, Arial, sans-serif; max-width: 1100px;
       margin: 2em auto; padding: 0 1em; color: #222; line-height: 1.45; }
h1 { font-size: 1.6em; margin-bottom: 0.1em; }
h2 { font-size: 1.25em; border-bottom: 1px solid #ccc; padding-bottom: 0.2em; margin-top: 1.8em; }
.sub { color: #666; margin-top: 0; }
table { border-collapse: collapse; margin: 0.6em 0; font-size: 0.93em; }
th, td { border: 1px solid #ddd; padding: 0.3em 0.6em; text-align: left; vertical-align: top; }
th { background: #f3f5f7; }
td.num { text-align: right; white-space: nowrap; font-variant-numeric: tabular-nums; }
.note { background: #fff8e1; border-left: 4px solid #f0b400; padding: 0.6em 0.9em; margin: 0.8em 0; }
.figs { display: flex; flex-wrap: wrap; gap: 1.2em; }
figure { margin: 0; max-width: 100%; }
figure img { max-width: 100%; height: auto; border: 1px solid #eee; }
figcaption { font-size: 0.88em; color: #444; max-width: 520px; }
footer { margin-top: 2.5em; color: #777; font-size: 0.85em; border-top: 1px solid #ddd; padding-top: 0.6em; }
</style>
</head>
<body>
<h1>Cell stiffness report</h1>
<p class="sub">Run <strong>{{ run_name }}</strong> · generated {{ date }} · mechanoscope {{ version }}</p>

<h2>What was run</h2>
<table>
<tr><th>cells in the table</th><td class="num">{{ ev.n_cells }}</td></tr>
{% if ev.n_images is not none %}<tr><th>images</th><td class="num">{{ ev.n_images }}</td></tr>{% endif %}
<tr><th>cells evaluated</th><td>{{ ev.scope.n_cells_in_scope }} ({{ ev.scope.cells }})</td></tr>
{% if ev.scope.n_failed_qc_excluded %}<tr><th>left out (failed quality control)</th><td class="num">{{ ev.scope.n_failed_qc_excluded }}</td></tr>{% endif %}
<tr><th>predictions</th><td>{{ tasks }}</td></tr>
{% if ev.predictions.stiffness_pa and ev.predictions.stiffness_pa.n %}<tr><th>predicted modulus (median, IQR)</th><td>{{ pred_median }} ({{ pred_iqr }})</td></tr>{% endif %}
{% if ev.predictions.class_counts %}<tr><th>predicted classes</th><td>{% for k, v in ev.predictions.class_counts.items() %}{{ k }}: {{ v }}{% if not loop.last %}, {% endif %}{% endfor %}</td></tr>{% endif %}
{% if ev.interval_level is not none %}<tr><th>prediction interval level</th><td class="num">{{ (100 * ev.interval_level) | round(1) }} %</td></tr>{% endif %}
</table>
{% if model_rows %}
<p>Model (from predict.json):</p>
<table>
{% for k, v in model_rows %}<tr><th>{{ k }}</th><td>{{ v }}</td></tr>
{% endfor %}</table>
{% endif %}
{% if split_sentence %}<p>{{ split_sentence }}</p>{% endif %}

{% if no_truth %}
<div class="note"><strong>{{ no_truth_sentence[0] | upper }}{{ no_truth_sentence[1:] }}.</strong>
Add measured stiffness (column <code>stiffness_pa</code>, in Pa) or true classes (column <code>label</code>) to the cell table to score the model.</div>
{% endif %}

{% for section, title in sections %}
{% set srows = rows | selectattr("section", "equalto", section) | list %}
{% if srows %}
<h2>{{ title }}</h2>
<table>
<tr><th>metric</th><th>value</th><th>unit</th><th>what it means</th></tr>
{% for r in srows %}<tr><td>{{ r.metric }}</td><td class="num">{{ r.value }}</td><td>{{ r.unit }}</td><td>{{ r.meaning }}</td></tr>
{% endfor %}</table>
{% if section == "classification" and cls_note %}<p>{{ cls_note }}</p>{% endif %}
{% if section == "regression" and reg_note %}<p>{{ reg_note }}</p>{% endif %}
{% endif %}
{% endfor %}

{% if cond_rows %}
<h2>Conditions</h2>
<table>
<tr><th>condition</th><th>cells</th>{% if has_pa %}<th>median predicted E</th><th>IQR (25–75 %)</th>{% endif %}{% for c in cond_classes %}<th>% predicted {{ c }}</th>{% endfor %}</tr>
{% for r in cond_rows %}<tr><td>{{ r.name }}</td><td class="num">{{ r.n }}</td>{% if has_pa %}<td class="num">{{ r.median }}</td><td class="num">{{ r.iqr }}</td>{% endif %}{% for f in r.fractions %}<td class="num">{{ f }}</td>{% endfor %}</tr>
{% endfor %}</table>
{% for s in cond_sentences %}<p>{{ s }}</p>
{% endfor %}
{% endif %}

{% if qc and qc.flagged %}
<h2>Segmentation quality control</h2>
<p>{{ qc.flagged | length }} of {{ qc.images | length }} image(s) yielded no cell or far fewer cells (or less cell area) than comparable images{% if qc.settings.grouped_by %} of the same {{ qc.settings.grouped_by }}{% endif %}: check their exposure, focus and segmentation before reading their cells' results.</p>
{% if qc.lost_groups %}<div class="note"><strong>Every image of {{ qc.lost_groups | join(", ") }} is flagged</strong>: its cells were not found, so comparisons with it are not meaningful.</div>{% endif %}
<table>
<tr><th>image</th><th>{{ qc.settings.grouped_by or "group" }}</th><th>cells</th><th>area covered</th><th>why flagged</th></tr>
{% for image_id in qc.flagged %}{% set e = qc.images[image_id] %}<tr><td>{{ image_id }}</td><td>{{ e.group }}</td><td class="num">{{ e.n_cells }}</td><td class="num">{% if e.covered_fraction is not none %}{{ "%.1f %%" | format(100 * e.covered_fraction) }}{% endif %}</td><td>{{ e.reason }}</td></tr>
{% endfor %}</table>
{% endif %}

{{ comparison_html | safe }}

{{ explanation_html | safe }}

{{ tracking_html | safe }}

{% if figures %}
<h2>Figures</h2>
<div class="figs">
{% for f in figures %}<figure>
<img src="data:image/png;base64,{{ f.data }}" alt="{{ f.title }}">
<figcaption><strong>{{ f.title }}.</strong> {{ f.caption }}</figcaption>
</figure>
{% endfor %}</div>
{% endif %}

{% if notes %}
<h2>Notes</h2>
<ul>{% for n in notes %}<li>{{ n }}</li>{% endfor %}</ul>
{% endif %}

<footer>
mechanoscope {{ version }} · report generated {{ date }} · evaluation written {{ ev.created }} ·
all numbers also in <code>evaluation.json</code>, figures in <code>figures/</code> of the run folder.
Stiffness is Young's modulus E in pascal (Pa).
</footer>
</body>
</html>
"""


def _model_rows(model: Mapping[str, Any]) -> list[tuple[str, str]]:
    rows = []
    for k, v in model.items():
        if v is None:  # a setting that does not apply to this model (e.g. interval level of a classifier)
            continue
        if isinstance(v, Mapping):
            v = "; ".join(f"{kk}: {vv}" for kk, vv in v.items())
        elif isinstance(v, list):
            v = ", ".join(map(str, v))
        rows.append((str(k).replace("_", " "), str(v)))
    return rows


def _read_evaluation(run: Path) -> dict[str, Any]:
    path = run / "evaluation.json"
    if not path.exists():
        raise MechanoscopeError(f"{run}: no evaluation.json; evaluate the run first (`mechanoscope evaluate {run}`, or `mechanoscope report {run}`, which evaluates it)")
    try:
        return json.loads(path.read_text(encoding="utf-8"))
    except (OSError, ValueError) as exc:
        raise MechanoscopeError(f"{path}: cannot be read ({exc}); re-run `mechanoscope evaluate {run}`") from None


def write_report(
    run_dir: str | os.PathLike[str],
    out: str | os.PathLike[str] | None = None,
    *,
    evaluation: Mapping[str, Any] | None = None,
    comparison: Mapping[str, Any] | None = None,
    superplot_png: bytes | None = None,
    tracking: Any | None = None,
    explanation: Mapping[str, Any] | None = None,
    explanation_pngs: Mapping[str, bytes] | None = None,
) -> Path:
    """Write a self-contained HTML report of an evaluated run folder.

    The report shows an evaluation; it never computes one: pass ``evaluation`` (the
    result of :func:`mechanoscope.pipeline.evaluate_run`) or let it read
    ``RUN/evaluation.json`` and ``RUN/figures`` written by ``mechanoscope evaluate``.

    Parameters
    ----------
    run_dir
        Run folder with ``cells.parquet`` (predictions, optional truth),
        ``predict.json`` and ``crops.zarr``.
    out
        Report file; default ``RUN/report.html``.
    evaluation
        The result of :func:`mechanoscope.pipeline.evaluate_run` on this folder
        (its figures are read from ``RUN/figures``); default: ``RUN/evaluation.json``.
    comparison, superplot_png
        A condition comparison (``ConditionComparison.to_dict()``) and its SuperPlot for
        the comparison section; default: ``RUN/comparison/comparison.json`` and
        ``superplot.png`` when ``mechanoscope compare RUN`` wrote them.
    explanation, explanation_pngs
        Attribution maps, embedding map and domain summary
        (:func:`mechanoscope.pipeline.explain.explain_run`'s result and its figures by
        file name) for the explanation section; default: ``RUN/explain/`` when
        ``mechanoscope explain RUN`` wrote it.
    tracking
        Tracking results (:class:`mechanoscope.track.TrackOutputs`) for the tracking section
        (tracks coloured by stiffness, stiffness against time per condition); default: what
        :func:`mechanoscope.track.find_track_outputs` finds in the run (``mechanoscope track``
        output in RUN or RUN/track, or a cell table with ``track_id``). No tracks, no section.

    Returns
    -------
    Path
        The report file.

    Raises
    ------
    MechanoscopeError
        When the run has not been evaluated (no ``evaluation.json``) or that file is unreadable.
    """
    import jinja2

    from mechanoscope import __version__
    from mechanoscope.io import atomic_path

    run = Path(run_dir)
    target = Path(out) if out is not None else run / "report.html"
    if target.suffix.lower() not in (".html", ".htm"):
        raise MechanoscopeError(f"{target}: give a report file name ending in .html")
    ev = dict(evaluation) if evaluation is not None else _read_evaluation(run)

    figures = []
    for name, info in ev.get("figures", {}).items():
        path = run / info["file"]
        if path.exists():
            figures.append({
                "name": name,
                "title": info.get("title", name),
                "caption": info.get("caption", ""),
                "data": base64.b64encode(path.read_bytes()).decode("ascii"),
            })
    rows = metric_rows(ev)
    cond_rows, cond_classes, cond_sentences = _condition_rows(ev)
    no_truth = not (ev["truth"]["classification"] or ev["truth"]["regression"])
    notes = [n for n in ev.get("notes", []) if n != NO_TRUTH_SENTENCE]
    scope = ev["scope"]
    split_sentence = ""
    if "split_counts" in scope:
        split_sentence = (
            "The cell table has a split column: metrics are computed on the test split only "
            f"({scope['n_cells_in_scope']} QC-passing test cells; all splits: "
            + ", ".join(f"{k or 'none'} {v}" for k, v in scope["split_counts"].items()) + ")."
        )
    c = ev.get("classification")
    cls_note = ""
    if c:
        counts = ", ".join(f"{k}: {v}" for k, v in c["class_counts"].items())
        cls_note = (
            f"{c['n']} cells with a true class ({counts}); "
            f"{c.get('n_missing_truth', 0)} cell(s) without a true class were not scored."
        )
        if c.get("notes"):
            cls_note += " " + " ".join(c["notes"])
    r = ev.get("regression")
    reg_note = ""
    if r:
        reg_note = (
            f"{r['n']} cells with a measured modulus (median {_pa(r['measured_median_pa'])}; their "
            f"predicted median {_pa(r['predicted_median_pa'])}); {r['n_missing_truth']} cell(s) without "
            "measurement were not scored."
        )
    st = (ev.get("predictions") or {}).get("stiffness_pa") or {}
    from mechanoscope.report.comparison_section import comparison_section_html, read_comparison

    if comparison is None and (found := read_comparison(run / "comparison")) is not None:
        comparison, superplot_png = found
    comparison_html = comparison_section_html(comparison, superplot_png) if comparison else ""
    from mechanoscope.report.explanation_section import explanation_section_html, read_explanation

    if explanation is None and (found_x := read_explanation(run / "explain")) is not None:
        explanation, explanation_pngs = found_x
    explanation_html = explanation_section_html(explanation, explanation_pngs) if explanation else ""
    if tracking is None:
        from mechanoscope.track.outputs import find_track_outputs

        tracking = find_track_outputs(run)
    from mechanoscope.report.track_figures import track_section_html

    tracking_html = track_section_html(tracking) if tracking is not None else ""
    env = jinja2.Environment(autoescape=True, undefined=jinja2.ChainableUndefined)
    html = env.from_string(_TEMPLATE).render(
        ev=ev,
        run_name=run.resolve().name,
        date=_dt.datetime.now().astimezone().strftime("%Y-%m-%d %H:%M %Z").strip(),
        version=__version__,
        tasks=" and ".join(
            {"classification": "stiffness class", "regression": "Young's modulus (Pa)"}[t] for t in ev["tasks"]
        ),
        pred_median=_pa(st.get("median_pa")),
        pred_iqr=f"{_pa(st.get('q25_pa'))} – {_pa(st.get('q75_pa'))}",
        model_rows=_model_rows(ev.get("model") or {}),
        split_sentence=split_sentence,
        no_truth=no_truth,
        no_truth_sentence=NO_TRUTH_SENTENCE,
        sections=[
            ("classification", "Classification: " + " / ".join((ev.get("predictions") or {}).get("classes") or [])),
            ("regression", "Regression: Young's modulus"),
        ],
        rows=rows,
        cls_note=cls_note,
        reg_note=reg_note,
        cond_rows=cond_rows,
        cond_classes=cond_classes,
        cond_sentences=cond_sentences,
        has_pa=bool(st),
        figures=figures,
        notes=notes,
        comparison_html=comparison_html,
        explanation_html=explanation_html,
        tracking_html=tracking_html,
        qc=ev.get("segmentation_qc"),
    )
    with atomic_path(target) as tmp:
        tmp.write_text(html, encoding="utf-8")
    return target
