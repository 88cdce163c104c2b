"""Tracking metrics: CTC measures from py-ctcmetrics, linking and division F1.

* :func:`ctc_scores` — the Cell Tracking Challenge measures (TRA, DET, LNK, CHOTA, BC(i),
  AOGM and its error counts …) computed by py-ctcmetrics (Kaiser et al., the CTC's
  maintained Python implementation) on a reference and a result, each a label series
  with its ``L B E P`` track table.
* :func:`linking_scores` — precision, recall and F1 of links (edges between consecutive
  detections of one cell and from a mother to its daughters), after matching detections
  frame by frame with the CTC rule (a result cell covers more than half of a reference
  cell). This is the edge measure of traccuracy; traccuracy itself is not a dependency
  because its install pins ``click<8.2`` (it would downgrade a tool this project uses).
* :func:`division_scores` — precision, recall and F1 of divisions: a reference division
  is found when the mother's last detection and every daughter's first detection are
  matched to a result mother and its daughters in the same frames (traccuracy's
  ``DivisionMetrics`` at frame tolerance 0; CTC's BC(0) counts the same events).
"""

from __future__ import annotations

import contextlib
import io
import tempfile
from pathlib import Path

import numpy as np
import pandas as pd

from mechanoscope.errors import MechanoscopeError

__all__ = [
    "CTC_DEFAULT_METRICS", "ctc_scores", "division_scores", "edge_scores", "linking_scores", "match_detections",
    "table_links", "tracking_scores",
]

CTC_DEFAULT_METRICS = ("Valid", "DET", "TRA", "LNK", "CHOTA", "BC")


def ctc_scores(
    ref_labels: np.ndarray,
    ref_tracks: pd.DataFrame,
    comp_labels: np.ndarray,
    comp_tracks: pd.DataFrame,
    metrics: tuple[str, ...] = CTC_DEFAULT_METRICS,
) -> dict[str, float]:
    """CTC measures of a result against a reference, computed by py-ctcmetrics.

    Both series are ``(T, Y, X)`` CTC label series with their track tables
    (:data:`mechanoscope.io.ctc.CTC_COLUMNS`); they are written to a temporary CTC folder
    pair and evaluated with ``ctc_metrics``. Returns the package's dictionary (``TRA``,
    ``DET``, ``LNK``, ``CHOTA``, ``BC(0)``…``BC(3)``, ``AOGM``, ``AOGM_FN``, …) with
    plain floats. Raises :class:`MechanoscopeError` if the result is not a valid CTC
    result (``Valid`` = 0).
    """
    try:
        from ctc_metrics.scripts.evaluate import calculate_metrics, load_data
    except ImportError:  # pragma: no cover - optional extra
        raise MechanoscopeError("CTC metrics need py-ctcmetrics: pip install 'mechanoscope[track]'") from None
    from mechanoscope.io.ctc import write_ctc_folder

    if ref_labels.shape != comp_labels.shape:
        raise MechanoscopeError(f"reference {ref_labels.shape} and result {comp_labels.shape} series differ in shape")
    with tempfile.TemporaryDirectory(prefix="mechanoscope-ctc-") as tmp:
        gt, res = Path(tmp) / "01_GT", Path(tmp) / "01_RES"
        write_ctc_folder(gt / "TRA", ref_labels, ref_tracks, kind="man")
        write_ctc_folder(res, comp_labels, comp_tracks, kind="res")
        with contextlib.redirect_stdout(io.StringIO()):
            comp, ref, traj, segm, _masks, valid = load_data(str(res), str(gt), True, False, threads=1)
            out = calculate_metrics(comp, ref, traj, segm, list(metrics), valid)
    if not out.get("Valid", valid):
        raise MechanoscopeError("the result is not a valid CTC tracking result (py-ctcmetrics' check failed)")
    return {k: (float(v) if v is not None else float("nan")) for k, v in out.items()}


def match_detections(ref_labels: np.ndarray, comp_labels: np.ndarray) -> dict[tuple[int, int], int]:
    """Match cells frame by frame with the CTC rule: ``{(frame, ref label): comp label}``.

    A reference cell is matched to the result cell that covers more than half of its
    pixels (at most one can); unmatched reference cells are absent.
    """
    out: dict[tuple[int, int], int] = {}
    for t in range(ref_labels.shape[0]):
        r = ref_labels[t].ravel().astype(np.int64)
        c = comp_labels[t].ravel().astype(np.int64)
        area = np.bincount(r)
        both = (r > 0) & (c > 0)
        if not both.any():
            continue
        k = int(c.max()) + 1
        pairs, n = np.unique(r[both] * k + c[both], return_counts=True)
        for p, cnt in zip(pairs, n):
            i, j = int(p // k), int(p % k)
            if 2 * cnt > area[i]:
                out[(t, i)] = j
    return out


def _graph(labels: np.ndarray, tracks: pd.DataFrame) -> tuple[set, dict]:
    """Edges ``((t, L), (t', L'))`` of a CTC series and ``{mother node: [daughter nodes]}``."""
    present: dict[int, list[int]] = {}
    for t in range(labels.shape[0]):
        for lab in np.unique(labels[t]):
            if lab:
                present.setdefault(int(lab), []).append(t)
    edges = set()
    for lab, frames in present.items():
        edges.update(((a, lab), (b, lab)) for a, b in zip(frames[:-1], frames[1:]))
    children: dict[tuple[int, int], list[tuple[int, int]]] = {}
    for r in tracks.itertuples():
        lab, par = int(r.label), int(r.parent_label)
        if par and lab in present and par in present:
            mother, daughter = (present[par][-1], par), (present[lab][0], lab)
            edges.add((mother, daughter))
            children.setdefault(mother, []).append(daughter)
    divisions = {m: d for m, d in children.items() if len(d) >= 2}
    return edges, divisions


def _f1(tp_ref: int, n_ref: int, tp_comp: int, n_comp: int) -> dict[str, float]:
    precision = tp_comp / n_comp if n_comp else float("nan")
    recall = tp_ref / n_ref if n_ref else float("nan")
    if n_ref == 0 and n_comp == 0:
        precision = recall = 1.0
    f1 = 2 * precision * recall / (precision + recall) if precision + recall > 0 else 0.0
    return {"precision": precision, "recall": recall, "f1": f1}


def linking_scores(ref_labels, ref_tracks, comp_labels, comp_tracks, matches: dict | None = None) -> dict[str, float]:
    """Precision, recall and F1 of links (see the module docstring).

    Returns ``precision``, ``recall``, ``f1``, ``n_ref_links``, ``n_comp_links``, ``tp``
    (reference links found), ``fp`` (result links with no reference link), ``fn``.
    """
    matches = match_detections(ref_labels, comp_labels) if matches is None else matches
    ref_edges, _ = _graph(ref_labels, ref_tracks)
    comp_edges, _ = _graph(comp_labels, comp_tracks)
    found = set()
    for u, v in ref_edges:
        if u in matches and v in matches:
            e = ((u[0], matches[u]), (v[0], matches[v]))
            if e in comp_edges:
                found.add(((u, v), e))
    tp_ref = len({r for r, _ in found})
    tp_comp = len({c for _, c in found})
    out = _f1(tp_ref, len(ref_edges), tp_comp, len(comp_edges))
    out.update(n_ref_links=len(ref_edges), n_comp_links=len(comp_edges), tp=tp_ref,
               fp=len(comp_edges) - tp_comp, fn=len(ref_edges) - tp_ref)
    return out


def division_scores(ref_labels, ref_tracks, comp_labels, comp_tracks, matches: dict | None = None) -> dict[str, float]:
    """Precision, recall and F1 of divisions (frame tolerance 0; see the module docstring).

    Returns ``precision``, ``recall``, ``f1``, ``n_ref_divisions``, ``n_comp_divisions``,
    ``tp``, ``fp``, ``fn``. With no division in either, precision = recall = F1 = 1.
    """
    matches = match_detections(ref_labels, comp_labels) if matches is None else matches
    _, ref_div = _graph(ref_labels, ref_tracks)
    _, comp_div = _graph(comp_labels, comp_tracks)
    tp = 0
    hit_comp = set()
    for mother, daughters in ref_div.items():
        if mother not in matches:
            continue
        cm = (mother[0], matches[mother])
        if cm not in comp_div:
            continue
        mapped = {(d[0], matches[d]) for d in daughters if d in matches}
        if len(mapped) == len(daughters) and mapped == set(comp_div[cm]):
            tp += 1
            hit_comp.add(cm)
    out = _f1(tp, len(ref_div), len(hit_comp), len(comp_div))
    out.update(n_ref_divisions=len(ref_div), n_comp_divisions=len(comp_div), tp=tp,
               fp=len(comp_div) - len(hit_comp), fn=len(ref_div) - tp)
    return out


def tracking_scores(ref_labels, ref_tracks, comp_labels, comp_tracks, *, ctc: bool = True) -> dict[str, object]:
    """Everything at once: ``{"ctc": …, "linking": …, "divisions": …}`` (CTC part optional)."""
    matches = match_detections(ref_labels, comp_labels)
    out: dict[str, object] = {
        "linking": linking_scores(ref_labels, ref_tracks, comp_labels, comp_tracks, matches),
        "divisions": division_scores(ref_labels, ref_tracks, comp_labels, comp_tracks, matches),
    }
    if ctc:
        out["ctc"] = ctc_scores(ref_labels, ref_tracks, comp_labels, comp_tracks)
    return out


def table_links(table: pd.DataFrame, node: str = "node", track: str = "track_id", parent: str = "parent_track_id") -> set:
    """Links of a tracked table of detections: ``{(node a, node b)}``.

    Consecutive detections (by ``frame``) of one track, and each daughter's first
    detection from its mother's last (``parent`` 0 or missing: none). For point data
    whose detections are shared between reference and result (no image matching).
    """
    t = table.sort_values([track, "frame"])
    edges = set()
    first, last = {}, {}
    for tid, g in t.groupby(track, sort=False):
        nodes = g[node].tolist()
        edges.update(zip(nodes[:-1], nodes[1:]))
        first[tid], last[tid] = nodes[0], nodes[-1]
    if parent in t.columns:
        for tid, par in t.groupby(track)[parent].first().items():
            if par and par in last:
                edges.add((last[par], first[tid]))
    return edges


def edge_scores(ref_edges: set, comp_edges: set) -> dict[str, float]:
    """Precision, recall and F1 of links given as sets of node pairs (shared detections)."""
    tp = len(ref_edges & comp_edges)
    out = _f1(tp, len(ref_edges), tp, len(comp_edges))
    out.update(n_ref_links=len(ref_edges), n_comp_links=len(comp_edges), tp=tp,
               fp=len(comp_edges) - tp, fn=len(ref_edges) - tp)
    return out
