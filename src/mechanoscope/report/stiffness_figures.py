"""Figures of stiffness evaluations: functions ``*_png(...)`` that return PNG bytes.

Each figure is drawn from the metrics of :mod:`mechanoscope.evaluate.stiffness` (never
computes its own numbers), with matplotlib's Agg backend.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import numpy as np
import pandas as pd

from mechanoscope.evaluate.conditions import _condition_order
from mechanoscope.evaluate.stiffness import (
    ECE_BINS,
    _as_float,
    _as_labels,
    classification_metrics,
    regression_metrics,
)
from mechanoscope.report.figures import figure_to_png_bytes

__all__ = [
    "roc_png",
    "confusion_matrix_png",
    "reliability_png",
    "predicted_vs_measured_png",
    "bland_altman_png",
    "condition_distribution_png",
    "class_fraction_png",
    "crop_gallery_png",
    "stiffness_gallery_png",
]


def _plt():
    import matplotlib

    matplotlib.use("Agg", force=False)
    import matplotlib.pyplot as plt

    return plt


def _fmt_pa(v: float) -> str:
    if v >= 1e6:
        return f"{v / 1e6:.3g} MPa"
    if v >= 1e3:
        return f"{v / 1e3:.3g} kPa"
    return f"{v:.3g} Pa"



def roc_png(y_true: Any, prob: Any, classes: Sequence[str], *, positive: str | None = None) -> bytes:
    """ROC curve(s): binary: of the positive class; more classes: one-vs-rest per class."""
    m = classification_metrics(y_true, prob, classes, positive=positive)
    plt = _plt()
    fig, ax = plt.subplots(figsize=(4.6, 4.4))
    ax.plot([0, 1], [0, 1], ls="--", color="0.6", lw=1, label="chance (AUC 0.5)")
    for name, c in m["roc"].items():
        ax.plot(c["fpr"], c["tpr"], lw=2, label=f"{name} (AUC {c['auc']:.3f})")
    if not m["roc"]:
        ax.text(0.5, 0.5, "AUC undefined:\nonly one class in the truth", ha="center", va="center")
    ax.set_xlabel("false positive rate (1 − specificity)")
    ax.set_ylabel("true positive rate (sensitivity)")
    title = f"ROC, positive class: {m['positive_class']}" if m["positive_class"] else "ROC, one-vs-rest"
    ax.set_title(f"{title} (n = {m['n']})", fontsize=10)
    ax.set_xlim(-0.01, 1.01)
    ax.set_ylim(-0.01, 1.01)
    ax.set_aspect("equal")
    ax.legend(loc="lower right", fontsize=8)
    return figure_to_png_bytes(fig)


def confusion_matrix_png(y_true: Any, y_pred: Any, classes: Sequence[str]) -> bytes:
    """Confusion matrix: counts and row percentages (rows = true, columns = predicted)."""
    classes = [str(c) for c in classes]
    t, tm = _as_labels(y_true)
    p, pm = _as_labels(y_pred)
    keep = ~tm & ~pm
    lut = {c: i for i, c in enumerate(classes)}
    k = len(classes)
    cm = np.zeros((k, k), int)
    for a, b in zip(t[keep], p[keep]):
        if a in lut and b in lut:
            cm[lut[a], lut[b]] += 1
    rows = cm.sum(axis=1, keepdims=True)
    with np.errstate(invalid="ignore", divide="ignore"):
        frac = np.where(rows > 0, cm / np.maximum(rows, 1), 0.0)
    plt = _plt()
    size = 1.2 + 0.9 * k
    fig, ax = plt.subplots(figsize=(size + 1.0, size))
    im = ax.imshow(frac, cmap="Blues", vmin=0, vmax=1)
    for i in range(k):
        for j in range(k):
            ax.text(
                j, i, f"{cm[i, j]}\n{100 * frac[i, j]:.0f} %", ha="center", va="center",
                color="white" if frac[i, j] > 0.6 else "black", fontsize=9,
            )
    ax.set_xticks(range(k), classes)
    ax.set_yticks(range(k), classes)
    ax.set_xlabel("predicted class")
    ax.set_ylabel("true class")
    ax.set_title(f"Confusion matrix (n = {int(cm.sum())})", fontsize=10)
    fig.colorbar(im, ax=ax, fraction=0.046, label="fraction of true class")
    return figure_to_png_bytes(fig)


def reliability_png(
    y_true: Any, prob: Any, classes: Sequence[str], *, y_pred: Any | None = None, n_bins: int = ECE_BINS
) -> bytes:
    """Reliability diagram of the top-label confidence, with the ECE and bin counts."""
    m = classification_metrics(y_true, prob, classes, y_pred=y_pred, n_bins=n_bins)
    rel = m["reliability"]
    edges = np.asarray(rel["edges"])
    centers = (edges[:-1] + edges[1:]) / 2
    width = edges[1] - edges[0]
    acc = np.array([np.nan if a is None else a for a in rel["accuracy"]])
    conf = np.array([np.nan if a is None else a for a in rel["confidence"]])
    counts = np.asarray(rel["count"])
    plt = _plt()
    fig, (ax, axh) = plt.subplots(
        2, 1, figsize=(4.6, 5.2), sharex=True, gridspec_kw={"height_ratios": [3, 1]}
    )
    ax.plot([0, 1], [0, 1], ls="--", color="0.6", lw=1, label="perfect calibration")
    ok = counts > 0
    ax.bar(centers[ok], acc[ok], width=width * 0.9, color="tab:blue", alpha=0.6, label="accuracy in bin")
    ax.plot(conf[ok], acc[ok], "o", color="tab:red", ms=4, label="(mean confidence, accuracy)")
    ax.set_ylabel("fraction correct")
    ax.set_ylim(0, 1.02)
    ece = m["ece"]
    ax.set_title(f"Reliability, ECE = {ece:.3f} ({n_bins} bins, n = {m['n']})", fontsize=10)
    ax.legend(loc="upper left", fontsize=8)
    axh.bar(centers, counts, width=width * 0.9, color="0.5")
    axh.set_xlabel("confidence (probability of the predicted class)")
    axh.set_ylabel("cells")
    axh.set_xlim(0, 1)
    fig.tight_layout()
    return figure_to_png_bytes(fig)


def predicted_vs_measured_png(
    true_pa: Any, pred_pa: Any, lo_pa: Any | None = None, hi_pa: Any | None = None
) -> bytes:
    """Predicted vs measured modulus on log–log axes, identity and 2-fold lines, intervals."""
    m = regression_metrics(true_pa, pred_pa, lo_pa, hi_pa)
    t = _as_float(true_pa, "true_pa")
    p = _as_float(pred_pa, "pred_pa")
    keep = np.isfinite(t) & np.isfinite(p)
    plt = _plt()
    fig, ax = plt.subplots(figsize=(4.8, 4.6))
    if lo_pa is not None and hi_pa is not None:
        lo, hi = _as_float(lo_pa, "lo_pa"), _as_float(hi_pa, "hi_pa")
        k = keep & np.isfinite(lo) & np.isfinite(hi)
        ax.vlines(t[k], lo[k], hi[k], color="0.75", lw=0.8, zorder=1, label="prediction interval")
    ax.scatter(t[keep], p[keep], s=12, alpha=0.7, color="tab:blue", edgecolor="none", zorder=2, label="cell")
    vals = np.concatenate([t[keep], p[keep]])
    lo_ax, hi_ax = vals.min() / 1.5, vals.max() * 1.5
    xs = np.array([lo_ax, hi_ax])
    ax.plot(xs, xs, color="k", lw=1, label="identity")
    ax.plot(xs, 2 * xs, color="0.5", ls=":", lw=1, label="2-fold")
    ax.plot(xs, xs / 2, color="0.5", ls=":", lw=1)
    ax.set_xscale("log")
    ax.set_yscale("log")
    ax.set_xlim(lo_ax, hi_ax)
    ax.set_ylim(lo_ax, hi_ax)
    ax.set_aspect("equal")
    ax.set_xlabel("measured Young's modulus E (Pa)")
    ax.set_ylabel("predicted Young's modulus E (Pa)")
    r = m["pearson_r_log10"]
    txt = f"n = {m['n']}\nmean APE = {m['ape_mean_pct']:.0f} %"
    if r is not None:
        txt += f"\nPearson r (log) = {r:.2f}"
    ax.text(0.03, 0.97, txt, transform=ax.transAxes, va="top", fontsize=8,
            bbox={"facecolor": "white", "alpha": 0.8, "edgecolor": "0.8"})
    ax.legend(loc="lower right", fontsize=7)
    ax.set_title("Predicted vs measured stiffness", fontsize=10)
    return figure_to_png_bytes(fig)


def bland_altman_png(true_pa: Any, pred_pa: Any) -> bytes:
    """Bland–Altman plot on log10 E, drawn as fold ratio predicted/measured on a log axis."""
    m = regression_metrics(true_pa, pred_pa)
    t = _as_float(true_pa, "true_pa")
    p = _as_float(pred_pa, "pred_pa")
    keep = np.isfinite(t) & np.isfinite(p)
    t, p = t[keep], p[keep]
    ba = m["bland_altman"]
    plt = _plt()
    fig, ax = plt.subplots(figsize=(5.4, 4.0))
    ax.scatter(np.sqrt(t * p), p / t, s=12, alpha=0.7, color="tab:blue", edgecolor="none")
    ax.axhline(1.0, color="k", lw=0.8)
    ax.axhline(ba["bias_fold"], color="tab:red", lw=1.5, label=f"bias ×{ba['bias_fold']:.2f}")
    if ba["loa_low_fold"] is not None:
        for v in (ba["loa_low_fold"], ba["loa_high_fold"]):
            ax.axhline(v, color="tab:red", ls="--", lw=1)
        ax.plot([], [], color="tab:red", ls="--",
                label=f"95 % limits ×{ba['loa_low_fold']:.2f} – ×{ba['loa_high_fold']:.2f}")
    from matplotlib.ticker import FuncFormatter, LogLocator, NullFormatter

    ax.set_xscale("log")
    ax.set_yscale("log")
    ax.yaxis.set_major_locator(LogLocator(base=10, subs=(1.0, 2.0, 5.0), numticks=20))
    ax.yaxis.set_major_formatter(FuncFormatter(lambda v, _: f"×{v:g}"))
    ax.yaxis.set_minor_formatter(NullFormatter())
    ax.xaxis.set_major_formatter(FuncFormatter(lambda v, _: _fmt_pa(v)))
    ax.set_xlabel("geometric mean of measured and predicted E (Pa)")
    ax.set_ylabel("predicted / measured (fold)")
    ax.set_title(f"Bland–Altman on log10 E (n = {m['n']})", fontsize=10)
    ax.legend(fontsize=8, loc="best")
    return figure_to_png_bytes(fig)


def condition_distribution_png(pred_pa: Any, conditions: Any | None = None, *, max_points: int = 1500, seed: int = 0) -> bytes:
    """Distribution of predicted modulus per condition: violin, box and cells, log axis in Pa.

    At most ``max_points`` cells per condition are drawn as points (random, seeded);
    violins and boxes use all cells.
    """
    from matplotlib.ticker import FuncFormatter, MultipleLocator

    e = _as_float(pred_pa, "pred_pa")
    if conditions is None:
        cond = pd.Series(["all cells"] * len(e))
    else:
        cond = pd.Series(conditions).reset_index(drop=True)
    names = _condition_order(cond)
    str_cond = cond.astype(object).map(lambda c: None if pd.isna(c) else str(c)).to_numpy()
    data = []
    for nm in names:
        v = e[(str_cond == nm) & np.isfinite(e) & (e > 0)]
        data.append(np.log10(v))
    rng = np.random.default_rng(seed)
    plt = _plt()
    fig, ax = plt.subplots(figsize=(max(3.6, 1.3 * len(names) + 1.8), 4.2))
    pos = np.arange(1, len(names) + 1)
    vio_pos = [i for i, d in zip(pos, data) if d.size >= 3 and np.ptp(d) > 0]
    if vio_pos:
        parts = ax.violinplot([data[i - 1] for i in vio_pos], positions=vio_pos, widths=0.8,
                              showextrema=False)
        for b in parts["bodies"]:
            b.set_facecolor("tab:blue")
            b.set_alpha(0.25)
    nonempty = [(i, d) for i, d in zip(pos, data) if d.size]
    if nonempty:
        ax.boxplot([d for _, d in nonempty], positions=[i for i, _ in nonempty], widths=0.25,
                   showfliers=False, medianprops={"color": "tab:red", "lw": 2})
    for i, d in zip(pos, data):
        if d.size > max_points:
            d = rng.choice(d, max_points, replace=False)
        ax.scatter(i + rng.uniform(-0.12, 0.12, d.size), d, s=5, alpha=0.5, color="k", edgecolor="none")
    ax.set_xticks(pos, [f"{nm}\n(n = {d.size})" for nm, d in zip(names, data)])
    finite = [d for d in data if d.size]
    span = float(np.ptp(np.concatenate(finite))) if finite else 0.0
    ax.yaxis.set_major_locator(MultipleLocator(1.0 if span >= 2.5 else 0.5 if span >= 0.8 else 0.1))
    ax.yaxis.set_major_formatter(FuncFormatter(lambda v, _: _fmt_pa(10**v)))
    ax.set_ylabel("predicted Young's modulus E (log scale)")
    ax.set_title("Predicted stiffness per condition", fontsize=10)
    ax.grid(axis="y", color="0.9")
    return figure_to_png_bytes(fig)


def class_fraction_png(pred_label: Any, conditions: Any | None, classes: Sequence[str]) -> bytes:
    """Stacked bars: fraction of cells predicted in each class, per condition."""
    labels, miss = _as_labels(pred_label)
    cond = pd.Series(["all cells"] * len(labels)) if conditions is None else pd.Series(conditions).reset_index(drop=True)
    names = _condition_order(cond)
    str_cond = cond.astype(object).map(lambda c: None if pd.isna(c) else str(c)).to_numpy()
    plt = _plt()
    fig, ax = plt.subplots(figsize=(5.2, 0.6 * len(names) + 1.6))
    left = np.zeros(len(names))
    counts = []
    for nm in names:
        sel = labels[(str_cond == nm) & ~miss]
        counts.append(sel.size)
    for c in classes:
        frac = np.array([
            np.mean(labels[(str_cond == nm) & ~miss] == c) if n else 0.0 for nm, n in zip(names, counts)
        ])
        ax.barh(range(len(names)), frac, left=left, label=str(c))
        left += frac
    ax.set_yticks(range(len(names)), [f"{nm} (n = {n})" for nm, n in zip(names, counts)])
    ax.set_xlim(0, 1)
    ax.invert_yaxis()
    ax.set_xlabel("fraction of cells (predicted class)")
    ax.legend(loc="upper center", bbox_to_anchor=(0.5, -0.25), ncol=max(1, len(classes)), fontsize=8)
    ax.set_title("Predicted class per condition", fontsize=10)
    return figure_to_png_bytes(fig)


def _crop_image(crops: Any, i: int, channel: int) -> np.ndarray:
    arr = np.asarray(crops[int(i)], dtype=float)
    if arr.ndim == 3:
        arr = arr[min(channel, arr.shape[0] - 1)]
    return arr


def _gallery_png(crops: Any, rows: list[tuple[str, list[tuple[int, str]]]], n_cols: int, title: str, channel: int = 0) -> bytes:
    """Tile the chosen crops into one mosaic (one image, fast to draw) with captions."""
    plt = _plt()
    rows = rows or [("", [])]
    tiles: dict[tuple[int, int], np.ndarray] = {}
    for r, (_, items) in enumerate(rows):
        for c, (i, _) in enumerate(items[:n_cols]):
            img = _crop_image(crops, i, channel)
            finite = img[np.isfinite(img)]
            lo, hi = np.percentile(finite, [1, 99]) if finite.size else (0.0, 1.0)
            tiles[r, c] = np.clip((img - lo) / (hi - lo if hi > lo else 1.0), 0.0, 1.0)
    th = max((t.shape[0] for t in tiles.values()), default=16)
    tw = max((t.shape[1] for t in tiles.values()), default=16)
    gap_x = max(2, tw // 8)
    cap = int(round(0.5 * th))  # room for a two-line caption above each tile
    ch, cw = th + cap, tw + gap_x
    mosaic = np.full((len(rows) * ch, n_cols * cw), np.nan)
    for (r, c), t in tiles.items():
        y0, x0 = r * ch + cap, c * cw
        mosaic[y0 : y0 + t.shape[0], x0 : x0 + t.shape[1]] = t
    cmap = plt.get_cmap("gray").with_extremes(bad="white")
    fig, ax = plt.subplots(figsize=(1.45 * n_cols + 1.3, 1.7 * len(rows) + 0.5))
    ax.imshow(mosaic, cmap=cmap, vmin=0, vmax=1, interpolation="nearest")
    for r, (row_title, items) in enumerate(rows):
        ax.text(-gap_x, r * ch + cap + th / 2, row_title, ha="right", va="center", fontsize=8)
        if not items:
            ax.text(tw / 2, r * ch + cap + th / 2, "none", ha="center", va="center", color="0.5", fontsize=8)
        for c, (_, caption) in enumerate(items[:n_cols]):
            ax.text(c * cw + tw / 2, r * ch + cap - 0.5, caption, ha="center", va="bottom", fontsize=7)
    ax.set_axis_off()
    ax.set_title(title, fontsize=10)
    return figure_to_png_bytes(fig)


def crop_gallery_png(
    crops: Any,
    pred_label: Any,
    confidence: Any,
    true_label: Any | None = None,
    *,
    classes: Sequence[str] | None = None,
    n_per_row: int = 5,
    channel: int = 0,
) -> bytes:
    """Example crops per predicted class: the most confident correct and wrong ones.

    Parameters
    ----------
    crops
        ``(N, C, H, W)`` (or ``(N, H, W)``) array-like in table row order, e.g. a Zarr
        array; only the shown crops are read.
    pred_label, confidence
        ``(N,)`` predicted class and its probability.
    true_label
        ``(N,)`` true classes (missing allowed); without it the most confident
        predictions per class are shown.
    classes
        Row order (default: sorted predicted classes).
    n_per_row
        Crops per row.
    channel
        Channel drawn (0 = intensity).
    """
    pl, pmiss = _as_labels(pred_label)
    conf = _as_float(confidence, "confidence")
    tl, tmiss = (None, None) if true_label is None else _as_labels(true_label)
    names = [str(c) for c in classes] if classes is not None else sorted(set(pl[~pmiss]))
    rows: list[tuple[str, list[tuple[int, str]]]] = []
    for c in names:
        sel = (pl == c) & ~pmiss & np.isfinite(conf)
        if tl is None:
            idx = np.flatnonzero(sel)
            idx = idx[np.argsort(-conf[idx], kind="stable")][:n_per_row]
            rows.append((f"pred {c}", [(int(i), f"p = {conf[i]:.2f}") for i in idx]))
            continue
        for ok, what in ((True, "correct"), (False, "wrong")):
            m = sel & ~tmiss & ((tl == c) if ok else (tl != c))
            idx = np.flatnonzero(m)
            idx = idx[np.argsort(-conf[idx], kind="stable")][:n_per_row]
            rows.append((
                f"pred {c}\n{what}",
                [(int(i), f"p = {conf[i]:.2f}" + ("" if ok else f"\ntrue {tl[i]}")) for i in idx],
            ))
    title = "Most confident predictions per class" + ("" if tl is None else " (correct and wrong)")
    return _gallery_png(crops, rows, n_per_row, title, channel)


def stiffness_gallery_png(
    crops: Any, pred_pa: Any, true_pa: Any | None = None, *, n_per_row: int = 5, channel: int = 0
) -> bytes:
    """Example crops: the cells predicted softest and stiffest (measured E in the caption)."""
    e = _as_float(pred_pa, "pred_pa")
    t = None if true_pa is None else _as_float(true_pa, "true_pa")
    idx = np.flatnonzero(np.isfinite(e))
    order = idx[np.argsort(e[idx], kind="stable")]

    def cap(i: int) -> str:
        s = f"pred {_fmt_pa(e[i])}"
        if t is not None and np.isfinite(t[i]):
            s += f"\nmeas {_fmt_pa(t[i])}"
        return s

    rows = [
        ("softest\npredicted", [(int(i), cap(i)) for i in order[:n_per_row]]),
        ("stiffest\npredicted", [(int(i), cap(i)) for i in order[::-1][:n_per_row]]),
    ]
    return _gallery_png(crops, rows, n_per_row, "Cells predicted softest and stiffest", channel)
