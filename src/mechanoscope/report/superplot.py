"""SuperPlot of a condition comparison (Lord et al. 2020, J Cell Biol 219:e202001064).

Cells are small points coloured by their replicate; each replicate's median is a
large marker of the same colour on top; a black bar marks each condition's mean of
replicate medians (geometric mean on the log scale). The figure shows a
:class:`~mechanoscope.metrics.conditions.ConditionComparison` and computes no
statistics: the p-values in the caption are the comparison's.
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import TYPE_CHECKING

import numpy as np

from mechanoscope.report.figures import _plt, figure_to_png_bytes

if TYPE_CHECKING:  # the figure only reads the comparison; importing metrics here would slow `import mechanoscope.report`
    from mechanoscope.metrics.conditions import ConditionComparison

__all__ = ["superplot_png"]


def _fmt(v: float) -> str:
    if not np.isfinite(v):
        return "n/a"
    return f"{v:.2g}" if v >= 1e-3 else f"{v:.1e}"


def _caption(comp: ConditionComparison) -> str:
    t = comp.tests
    parts = []
    if t.get("replicate_level"):
        parts.append(f"{t['replicate_level']['test']}: p = {_fmt(t['replicate_level']['p_value'])}")
    if t.get("mixed_model"):
        parts.append(f"mixed model: p = {_fmt(t['mixed_model']['omnibus']['p_value'] or float('nan'))}")
    trend = t.get("trend") or {}
    if "mixed_model" in trend:
        parts.append(f"trend ({trend['mixed_model']['direction']}): p = {_fmt(trend['mixed_model']['p_value'])}")
    if not parts:
        parts.append("no replicate-level test possible; " + f"{t['cell_level']['test']}: p = {_fmt(t['cell_level']['p_value'])}")
    return "\n".join(parts)


def superplot_png(comparison: ConditionComparison, path: str | os.PathLike[str] | None = None, *, max_points_per_replicate: int = 400, seed: int = 0, title: str | None = None) -> bytes:
    """Draw the SuperPlot of a comparison; returns PNG bytes (also written to ``path``).

    Parameters
    ----------
    comparison
        Result of :func:`~mechanoscope.metrics.conditions.compare_replicated_conditions`.
    path
        Optional PNG file to write (atomically).
    max_points_per_replicate
        Cells drawn per replicate (a seeded random subset above it); medians use all cells.
    seed
        Seed of the jitter and the subset.
    title
        Figure title [default: the value column].
    """
    from matplotlib.ticker import FuncFormatter

    plt = _plt()
    cfg = comparison.config
    cells, reps = comparison.cells, comparison.replicates
    order = comparison.conditions
    rng = np.random.default_rng(seed)
    rep_names = sorted(set(reps["replicate"]), key=lambda s: (len(s), s))
    cmap = plt.get_cmap("tab10" if len(rep_names) <= 10 else "tab20")
    colour = {r: cmap(i % cmap.N) for i, r in enumerate(rep_names)}
    summary = comparison.summary.set_index("condition")
    fig, ax = plt.subplots(figsize=(max(4.0, 1.4 * len(order) + 2.2), 4.6))
    for x, c in enumerate(order):
        rsub = reps[reps["condition"] == c]
        k = max(len(rsub), 1)
        for j, (_, rrow) in enumerate(rsub.iterrows()):
            v = cells.loc[(cells["condition"] == c) & (cells["replicate"] == rrow["replicate"]), "value"].to_numpy()
            if v.size > max_points_per_replicate:
                v = rng.choice(v, max_points_per_replicate, replace=False)
            xs = x + rng.uniform(-0.32, 0.32, v.size)
            small = v.size < 60
            ax.scatter(xs, v, s=14 if small else 6, alpha=0.6 if small else 0.35, color=colour[rrow["replicate"]], edgecolor="none", zorder=1)
            xm = x + (j - (k - 1) / 2) * min(0.5 / k, 0.15)
            ax.scatter([xm], [rrow["median"]], s=90, color=colour[rrow["replicate"]], edgecolor="k", linewidth=1.0, zorder=3)
        centre = float(summary.loc[c, "mean_of_replicate_medians"])
        ax.plot([x - 0.3, x + 0.3], [centre, centre], color="k", lw=2.2, zorder=2)
    if cfg.log_scale:
        ax.set_yscale("log")
        if cfg.value.endswith("_pa"):
            ax.yaxis.set_major_formatter(FuncFormatter(lambda v, _: f"{v / 1000:g} kPa" if v >= 1000 else f"{v:g} Pa"))
    ax.set_xticks(range(len(order)), [f"{c}\n{int(summary.loc[c, 'n_replicates'])} rep, {int(summary.loc[c, 'n_cells'])} cells" for c in order], fontsize=8)
    ax.set_xlim(-0.6, len(order) - 0.4)
    ax.set_ylabel(cfg.value)
    ax.set_title(title or f"{cfg.value} by {cfg.by}", fontsize=10)
    ax.grid(axis="y", color="0.92", zorder=0)
    handles = [plt.Line2D([], [], marker="o", ls="", color=colour[r], markeredgecolor="k", label=f"replicate {r}") for r in rep_names[:12]]
    handles.append(plt.Line2D([], [], color="k", lw=2.2, label="mean of replicate medians"))
    ax.legend(handles=handles, fontsize=7, loc="upper left", bbox_to_anchor=(1.01, 1.0), frameon=False)
    fig.text(0.01, -0.02, _caption(comparison), fontsize=7.5, va="top", ha="left")
    png = figure_to_png_bytes(fig)
    if path is not None:
        from mechanoscope.io.atomic import atomic_path

        with atomic_path(path) as tmp:
            Path(tmp).write_bytes(png)
    return png
