"""The comparison figure of the published work: one condition series measured by several methods side by side.

Takes the result of :func:`mechanoscope.metrics.method_series.method_condition_series`
(it computes nothing) and draws, per condition, each method's median modulus with its
confidence interval, methods offset side by side, on a log axis.
"""

from __future__ import annotations

import io
from collections.abc import Mapping
from typing import Any

import numpy as np

__all__ = ["method_series_figure", "method_series_points"]


def method_series_points(series: Mapping[str, Any]) -> dict[str, dict[str, list[float]]]:
    """What the figure draws per method: ``x`` positions, ``median``, ``err_low``, ``err_high`` (Pa) in condition order."""
    order = list(series["order"])
    rows = list(series["table"])
    methods = list(dict.fromkeys(r["method"] for r in rows))
    width = 0.7 / max(len(methods), 1)
    out: dict[str, dict[str, list[float]]] = {}
    for k, m in enumerate(methods):
        by = {r["condition"]: r for r in rows if r["method"] == m}
        pts: dict[str, list[float]] = {"x": [], "median": [], "err_low": [], "err_high": []}
        for i, c in enumerate(order):
            r = by.get(c)
            if r is None or r["median_pa"] is None:
                continue
            lo = r["ci_low_pa"] if r["ci_low_pa"] is not None else r["median_pa"]
            hi = r["ci_high_pa"] if r["ci_high_pa"] is not None else r["median_pa"]
            pts["x"].append(i - 0.35 + width * (k + 0.5))
            pts["median"].append(float(r["median_pa"]))
            pts["err_low"].append(float(r["median_pa"] - lo))
            pts["err_high"].append(float(hi - r["median_pa"]))
        out[m] = pts
    return out


def method_series_figure(series: Mapping[str, Any], *, title: str = "Condition series by method") -> bytes:
    """PNG bytes of the side-by-side figure (the plotted numbers: :func:`method_series_points`)."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    order = list(series["order"])
    points = method_series_points(series)
    fig, ax = plt.subplots(figsize=(1.6 + 1.4 * len(order), 3.6), dpi=120)
    for m, pts in points.items():
        style = dict(color="0.35", marker="s", linestyle="none") if m == "truth" else dict(marker="o", linestyle="-")
        ax.errorbar(pts["x"], pts["median"], yerr=np.array([pts["err_low"], pts["err_high"]]), capsize=3, label=m, **style)
    ax.set_xticks(range(len(order)), order)
    ax.set_yscale("log")
    ax.set_ylabel("median Young's modulus (Pa), 95 % CI")
    ax.set_title(title, fontsize=10)
    ax.legend(fontsize=7, frameon=False)
    fig.tight_layout()
    buf = io.BytesIO()
    fig.savefig(buf, format="png")
    plt.close(fig)
    return buf.getvalue()
