"""The report's comparison section: a condition comparison in plain words, its tables and SuperPlot.

Shows the result of :func:`mechanoscope.metrics.conditions.compare_replicated_conditions`
(``ConditionComparison.to_dict()``, as ``mechanoscope compare`` writes it to
``comparison.json``); computes nothing.
"""

from __future__ import annotations

import base64
import json
from collections.abc import Mapping
from pathlib import Path
from typing import Any

__all__ = ["comparison_section_html", "comparison_sentences", "read_comparison"]


def _p(v: float | None) -> str:
    if v is None:
        return "n/a"
    return "< 0.0001" if v < 1e-4 else f"= {v:.3g}"


def _v(v: float | None, unit: str) -> str:
    if v is None:
        return "–"
    if unit == "Pa":
        return f"{v / 1000:.3g} kPa" if v >= 1000 else f"{v:.3g} Pa"
    return f"{v:.3g}"


def comparison_sentences(comp: Mapping[str, Any]) -> list[str]:
    """The tests of a comparison, named and explained in plain words, one sentence each."""
    cfg = comp["config"]
    t = comp["tests"]
    log = cfg.get("log_scale", True)
    scale = "ln " if log else ""
    out = []
    if cfg.get("replicate"):
        out.append(f"Unit of analysis: the biological replicate (column “{cfg['replicate']}”, nested in “{cfg['by']}”). "
                   f"Each replicate is summarised by the median {cfg['value']} of its cells; conditions are compared "
                   f"on the {scale}replicate medians, so thousands of cells from three wells count as three observations.")
    rl = t.get("replicate_level")
    if rl:
        what = ("Welch's t-test compares the mean log replicate medians of the two conditions without assuming equal spread"
                if rl["test"].startswith("Welch") else "one-way analysis of variance asks whether the log replicate medians differ between any of the conditions")
        out.append(f"{rl['test']}: {what}; p {_p(rl['p_value'])}.")
    mm = t.get("mixed_model")
    if mm:
        om = mm["omnibus"]
        out.append(f"Mixed-effects model on every cell's {scale}{cfg['value']} with a random intercept per replicate "
                   f"({mm['n_groups']} replicates): conditions differ with p {_p(om['p_value'])} (F test with "
                   f"{om['df'][0]} and {om['df'][1]} degrees of freedom, the latter counting replicates, not cells); "
                   f"share of the variance of single cells that lies between replicates (ICC) = {mm['icc']:.2f}.")
    tr = t.get("trend") or {}
    if tr.get("mixed_model"):
        m = tr["mixed_model"]
        import math

        step = f"×{math.exp(m['slope_per_step']):.2f} per step" if log else f"{m['slope_per_step']:+.3g} per step"
        out.append(f"Trend over the order {' → '.join(tr['order'])}: {step} "
                   f"(linear contrast in the mixed model), {m['direction']}, p {_p(m['p_value'])}.")
    if tr.get("jonckheere_terpstra"):
        j = tr["jonckheere_terpstra"]
        out.append(f"Jonckheere–Terpstra test on the replicate medians (rank test for an ordered change, {j['method']}): "
                   f"{j['direction']}, p {_p(j['p_value'])}.")
    if tr.get("cell_level"):
        j = tr["cell_level"]
        out.append(f"Jonckheere–Terpstra on cells only (no replicate-level trend test possible): {j['direction']}, p {_p(j['p_value'])}.")
    cl = t["cell_level"]
    n_cells = sum(r["n_cells"] for r in comp["summary"])
    out.append(f"For contrast only: {cl['test']} over {n_cells} cells gives p {_p(cl['p_value'])} — treating cells of one well "
               "as independent overstates the evidence and is not the test to report.")
    f = comp.get("functional")
    if f:
        for name, r in f["readouts"].items():
            if "pearson_r" in r:
                slope = r.get("slope_per_decade")
                s = f"; {slope:+.3g} {name} per decade of {cfg['value']}" if slope is not None else ""
                out.append(f"{name} vs {f['x']}, one point per {f['level']} (n = {r['n']}): Pearson r = {r['pearson_r']:.2f} "
                           f"(p {_p(r['pearson_p'])}), Spearman ρ = {r['spearman_rho']:.2f}{s}.")
    return out


def read_comparison(folder: str | Path) -> tuple[dict[str, Any], bytes | None] | None:
    """``comparison.json`` (and ``superplot.png``) from a folder written by ``mechanoscope compare``, or None."""
    p = Path(folder)
    if not (p / "comparison.json").is_file():
        return None
    comp = json.loads((p / "comparison.json").read_text(encoding="utf-8"))
    png = (p / "superplot.png").read_bytes() if (p / "superplot.png").is_file() else None
    return comp, png


_SECTION = """
<h2>Comparison of conditions: {{ cfg.value }} by {{ cfg.by }}</h2>
<table>
<tr><th>condition</th><th>cells</th><th>replicates</th><th>median</th><th>{{ level }} % CI of the median</th><th>how the CI was made</th></tr>
{% for r in summary %}<tr><td>{{ r.condition }}</td><td class="num">{{ r.n_cells }}</td><td class="num">{{ r.n_replicates }}</td>
<td class="num">{{ v(r.median) }}</td><td class="num">{{ v(r.ci_low) }} – {{ v(r.ci_high) }}</td><td>{{ r.ci_method }}</td></tr>
{% endfor %}</table>
{% for s in sentences %}<p>{{ s }}</p>
{% endfor %}
{% if pairwise %}
<table>
<tr><th>pair</th><th>effect (b vs a)</th><th>95 % CI</th><th>Hedges' g (replicates)</th><th>p, replicates (Holm)</th><th>p, mixed model (Holm)</th></tr>
{% for r in pairwise %}<tr><td>{{ r.b }} vs {{ r.a }}</td><td class="num">{{ num(r.estimate) }}</td><td class="num">{{ num(r.ci_low) }} – {{ num(r.ci_high) }}</td>
<td class="num">{{ num(r.hedges_g) }}</td><td class="num">{{ p(r.p_replicates_holm) }}</td><td class="num">{{ p(r.p_mixed_holm) }}</td></tr>
{% endfor %}</table>
<p>Effect: {{ pairwise[0].estimate_kind }}. Holm's correction holds the chance of any false positive among the {{ pairwise | length }} pair(s) at 5 %.</p>
{% endif %}
{% for m in messages %}<div class="note">{{ m }}</div>
{% endfor %}
{% if png %}<figure>
<img src="data:image/png;base64,{{ png }}" alt="SuperPlot">
<figcaption><strong>SuperPlot.</strong> Each small point is a cell, coloured by its replicate; large points are the replicates' medians,
the black bar their mean (geometric on a log axis). The tests above use the large points.</figcaption>
</figure>{% endif %}
"""


def comparison_section_html(comparison: Mapping[str, Any], superplot_png: bytes | None = None) -> str:
    """HTML of the comparison section (escaped; embed as-is in the report)."""
    import jinja2

    unit = "Pa" if str(comparison["config"]["value"]).endswith("_pa") else ""
    env = jinja2.Environment(autoescape=True, undefined=jinja2.ChainableUndefined)
    return env.from_string(_SECTION).render(
        cfg=comparison["config"],
        level=round(100 * comparison["config"].get("ci_level", 0.95)),
        summary=comparison["summary"],
        pairwise=comparison["pairwise"],
        sentences=comparison_sentences(comparison),
        messages=comparison.get("messages", []),
        png=base64.b64encode(superplot_png).decode("ascii") if superplot_png else None,
        v=lambda x: _v(x, unit),
        num=lambda x: "–" if x is None else f"{x:.3g}",
        p=lambda x: "n/a" if x is None else ("< 0.0001" if x < 1e-4 else f"{x:.3g}"),
    )
