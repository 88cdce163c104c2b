"""The report's tracking section: tracks over the image coloured by stiffness, stiffness against time.

Draws what tracking computed (:class:`mechanoscope.track.TrackOutputs`: the per-track
series of :func:`mechanoscope.track.trajectories` and the per-frame medians of
:func:`mechanoscope.track.stiffness_over_time`); computes no statistic of its own.

* :func:`track_overlay_figure` — every track as a line through its centroids (µm), each
  step coloured by the track's smoothed stiffness (log colour scale), over the outlines
  of the cells in one frame; daughters start with a dot.
* :func:`stiffness_time_figure` — per condition, the median stiffness of the tracked
  cells in each frame (line) and its interquartile range (band), log axis.
* :func:`track_section_html` — both figures with captions and a small table, as HTML to
  embed in the report.

The ``*_figure`` functions return the matplotlib figure (its artists hold the values
drawn, which the tests read); ``*_png`` render it to PNG bytes.
"""

from __future__ import annotations

import base64
from typing import Any

import numpy as np
import pandas as pd

from mechanoscope.report.figures import _plt, figure_to_png_bytes

__all__ = [
    "stiffness_time_figure",
    "stiffness_time_png",
    "track_overlay_figure",
    "track_overlay_png",
    "track_section_html",
    "track_segments",
]


def _colour_column(traj: pd.DataFrame) -> str | None:
    for c in ("stiffness_smooth_pa", "stiffness_pa"):
        if c in traj.columns and (pd.to_numeric(traj[c], errors="coerce") > 0).any():
            return c
    return None


def track_segments(traj: pd.DataFrame, value: str | None = None) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Line pieces of the overlay: one per step of a track between consecutive detections.

    Returns ``segments`` ``(n, 2, 2)`` as ((x0, y0), (x1, y1)) in µm, ``values`` ``(n,)``
    (the ``value`` column at the step's end, NaN without one) and ``track_ids`` ``(n,)``.
    """
    segs, vals, ids = [], [], []
    for tid, t in traj.sort_values(["track_id", "frame"]).groupby("track_id", sort=True):
        xy = t[["centroid_x_um", "centroid_y_um"]].to_numpy(float)
        v = t[value].to_numpy(float) if value is not None else np.full(len(t), np.nan)
        for k in range(1, len(t)):
            segs.append(xy[k - 1:k + 1])
            vals.append(v[k])
            ids.append(tid)
    if not segs:
        return np.zeros((0, 2, 2)), np.zeros(0), np.zeros(0, dtype=np.int64)
    return np.array(segs), np.array(vals, dtype=float), np.array(ids, dtype=np.int64)


def track_overlay_figure(traj: pd.DataFrame, background: np.ndarray | None = None, pixel_size_um: float | None = None,
                         *, background_frame: int | None = None):
    """Tracks drawn over the cells of one frame, coloured by smoothed stiffness.

    Parameters
    ----------
    traj
        Per-track series (``track_id``, ``frame``, ``centroid_x_um``, ``centroid_y_um``;
        ``stiffness_smooth_pa`` or ``stiffness_pa`` for the colour, else tracks are coloured
        by frame; ``parent_track_id`` marks daughters).
    background
        ``(Y, X)`` label image drawn as grey cells with outlines; axes are in µm, so it
        needs ``pixel_size_um``.
    background_frame
        Frame of ``background`` (for the title).

    Returns
    -------
    matplotlib.figure.Figure
        Its first ``LineCollection`` holds the segments (:func:`track_segments`) and, as
        its array, log10 of the stiffness (Pa) of each step (or the frame).
    """
    plt = _plt()
    from matplotlib.collections import LineCollection
    from matplotlib.colors import Normalize

    value = _colour_column(traj)
    segs, vals, _ids = track_segments(traj, value)
    fig, ax = plt.subplots(figsize=(6.4, 5.6))
    if background is not None and pixel_size_um:
        from skimage.segmentation import find_boundaries

        h, w = background.shape
        ext = (0, w * pixel_size_um, h * pixel_size_um, 0)
        grey = np.where(background > 0, 0.82, 1.0)
        grey[find_boundaries(background, mode="inner")] = 0.55
        ax.imshow(grey, cmap="gray", vmin=0, vmax=1, extent=ext, interpolation="nearest")
    if value is not None:
        colour = np.log10(np.where(vals > 0, vals, np.nan))
        label = f"log10 {'smoothed ' if value == 'stiffness_smooth_pa' else ''}stiffness (Pa)"
        cmap = "viridis"
    else:
        step_frames = traj.sort_values(["track_id", "frame"]).groupby("track_id")["frame"].apply(lambda f: f.iloc[1:]).to_numpy(float)
        colour, label, cmap = step_frames, "frame", "plasma"
    finite = colour[np.isfinite(colour)] if len(colour) else colour
    norm = Normalize(*(np.percentile(finite, [2, 98]) if len(finite) else (0, 1)))
    lc = LineCollection(segs, cmap=cmap, norm=norm, linewidths=1.6)
    lc.set_array(colour)
    ax.add_collection(lc)
    if "parent_track_id" in traj.columns:
        first = traj.sort_values("frame").groupby("track_id").first()
        born = first[first["parent_track_id"] > 0]
        ax.scatter(born["centroid_x_um"], born["centroid_y_um"], s=12, c="k", marker="o", label="daughter's first position", zorder=3)
        if len(born):
            ax.legend(loc="lower right", fontsize=8)
    if background is None or not pixel_size_um:
        ax.autoscale()
        ax.invert_yaxis()
    ax.set_aspect("equal")
    ax.set_xlabel("x (µm)")
    ax.set_ylabel("y (µm)")
    n_tracks = traj["track_id"].nunique()
    where = f" over the cells of frame {background_frame}" if background is not None and background_frame is not None else ""
    ax.set_title(f"{n_tracks} tracks{where}", fontsize=10)
    fig.colorbar(lc, ax=ax, label=label, shrink=0.8)
    fig.tight_layout()
    return fig


def track_overlay_png(traj: pd.DataFrame, background: np.ndarray | None = None, pixel_size_um: float | None = None,
                      *, background_frame: int | None = None) -> bytes:
    """:func:`track_overlay_figure` as PNG bytes."""
    return figure_to_png_bytes(track_overlay_figure(traj, background, pixel_size_um, background_frame=background_frame))


def stiffness_time_figure(over_time: pd.DataFrame):
    """Median stiffness per frame and condition (lines) with the interquartile range (bands).

    ``over_time`` is :func:`mechanoscope.track.stiffness_over_time`; the x axis is
    ``time_min`` when present, else the frame. Each condition's line (``Line2D`` labelled
    with the condition) holds its medians; the band its 25 % and 75 % quantiles.
    """
    plt = _plt()
    fig, ax = plt.subplots(figsize=(6.4, 4.2))
    xcol = "time_min" if "time_min" in over_time.columns and over_time["time_min"].notna().all() else "frame"
    for k, (cond, g) in enumerate(over_time.sort_values("frame").groupby("condition", sort=True)):
        colour = f"C{k % 10}"
        ax.fill_between(g[xcol], g["q25_pa"], g["q75_pa"], color=colour, alpha=0.2, linewidth=0)
        ax.plot(g[xcol], g["median_pa"], color=colour, lw=1.8, label=f"{cond}")
    ax.set_yscale("log")
    ax.set_xlabel("time (min)" if xcol == "time_min" else "frame")
    ax.set_ylabel("stiffness of tracked cells (Pa)")
    ax.legend(fontsize=8, title="median, IQR band", title_fontsize=8)
    fig.tight_layout()
    return fig


def stiffness_time_png(over_time: pd.DataFrame) -> bytes:
    """:func:`stiffness_time_figure` as PNG bytes."""
    return figure_to_png_bytes(stiffness_time_figure(over_time))


_SECTION = """
<h2>Tracking: cells and their stiffness over time</h2>
<table>
{% for k, v in rows %}<tr><th>{{ k }}</th><td class="num">{{ v }}</td></tr>
{% endfor %}</table>
{% if change_rows %}
<table>
<tr><th>condition</th><th>median E, first frame ({{ first }})</th><th>median E, last frame ({{ last }})</th><th>ratio last / first</th><th>cells (first, last)</th></tr>
{% for r in change_rows %}<tr><td>{{ r.condition }}</td><td class="num">{{ r.first }}</td><td class="num">{{ r.last }}</td><td class="num">{{ r.ratio }}</td><td class="num">{{ r.n }}</td></tr>
{% endfor %}</table>
{% endif %}
{% for m in messages %}<div class="note">{{ m }}</div>
{% endfor %}
<div class="figs">
<figure>
<img src="data:image/png;base64,{{ overlay }}" alt="tracks over the image">
<figcaption><strong>Tracks.</strong> Each line follows one cell's centroid from frame to frame; {{ colour_caption }}
Black dots mark where a daughter was first seen after a division. Grey: the cells of the frame shown.</figcaption>
</figure>
{% if timeplot %}<figure>
<img src="data:image/png;base64,{{ timeplot }}" alt="stiffness against time">
<figcaption><strong>Stiffness against time.</strong> For each condition, the line is the median predicted Young's modulus
of the tracked cells in each frame and the band their interquartile range (25–75 %); log axis.</figcaption>
</figure>{% endif %}
</div>
"""


def _pa(v: float) -> str:
    if not np.isfinite(v):
        return "–"
    return f"{v / 1000:.3g} kPa" if v >= 1000 else f"{v:.3g} Pa"


def _change_rows(over_time: pd.DataFrame) -> tuple[list[dict[str, Any]], int | None, int | None]:
    if not len(over_time):
        return [], None, None
    first, last = int(over_time["frame"].min()), int(over_time["frame"].max())
    rows = []
    for cond, g in over_time.groupby("condition", sort=True):
        a = g[g["frame"] == first]
        b = g[g["frame"] == last]
        ma = float(a["median_pa"].iloc[0]) if len(a) else float("nan")
        mb = float(b["median_pa"].iloc[0]) if len(b) else float("nan")
        rows.append({"condition": cond, "first": _pa(ma), "last": _pa(mb),
                     "ratio": f"{mb / ma:.2f}" if np.isfinite(ma) and np.isfinite(mb) and ma > 0 else "–",
                     "n": f"{int(a['n_cells'].iloc[0]) if len(a) else 0}, {int(b['n_cells'].iloc[0]) if len(b) else 0}"})
    return rows, first, last


def track_section_html(tracking) -> str:
    """HTML of the tracking section for a :class:`mechanoscope.track.TrackOutputs` (escaped)."""
    import jinja2

    traj = tracking.trajectories
    summary = tracking.summary or {}
    lin = tracking.lineage
    n_div = int(lin["divides"].sum()) if lin is not None and "divides" in lin.columns else summary.get("n_divisions")
    speed = pd.to_numeric(traj.get("speed_um_per_frame"), errors="coerce") if "speed_um_per_frame" in traj.columns else None
    rows = [
        ("frames", int(traj["frame"].max()) + 1 if len(traj) else 0),
        ("tracks", int(traj["track_id"].nunique())),
        ("detections (cell × frame)", len(traj)),
    ]
    if n_div is not None:
        rows.append(("divisions", n_div))
    if summary.get("n_divisions_across_gaps"):
        rows.append(("of which across missed detections", summary["n_divisions_across_gaps"]))
    if summary.get("n_closed_gaps") is not None:
        rows.append(("tracks with a closed gap (missed detections)", summary["n_closed_gaps"]))
    if speed is not None and speed.notna().any():
        rows.append(("median speed", f"{float(speed.median()):.3g} µm/frame"))
    value = _colour_column(traj)
    messages = []
    if value is None:
        messages.append("The tracked cells carry no stiffness prediction (pred_stiffness_pa): tracks are coloured by frame "
                        "and there is no stiffness-against-time plot. Track a predicted run (or pass --cells) to add them.")
    change_rows, first, last = _change_rows(tracking.over_time)
    overlay = track_overlay_png(traj, tracking.background, tracking.pixel_size_um, background_frame=tracking.background_frame)
    timeplot = stiffness_time_png(tracking.over_time) if len(tracking.over_time) else None
    colour_caption = (
        "its colour is the cell's stiffness smoothed along the track (running geometric mean over a few frames; log scale)."
        if value == "stiffness_smooth_pa" else
        "its colour is the cell's predicted stiffness in that frame (log scale)." if value else "its colour is the frame."
    )
    env = jinja2.Environment(autoescape=True)
    return env.from_string(_SECTION).render(
        rows=rows, change_rows=change_rows, first=first, last=last, messages=messages,
        overlay=base64.b64encode(overlay).decode("ascii"),
        timeplot=base64.b64encode(timeplot).decode("ascii") if timeplot else None,
        colour_caption=colour_caption,
    )
