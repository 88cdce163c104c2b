"""Divisions the frame-to-frame tracker cannot see: daughters first seen after a missed detection.

laptrack's splitting step links a daughter's first detection only to a cell in the frame
just before it. When the mother is missed in its last frame(s), or the daughters in their
first, the mother's track is gap-closed into one daughter and the other daughter starts
a new track (or is split, wrongly, from its sister). This module repairs the track graph
laptrack returns (nodes ``(frame, index)``, edges from earlier to later detections):

1. **Implausible splits** — with cell areas, a split whose daughters are not both
   smaller than the mother (see :data:`DAUGHTER_AREA_RANGE`, :data:`DAUGHTERS_SUM_RANGE`)
   is undone: the daughter farther from the mother becomes a new track again.
2. **Divisions across gaps** — a new track (no predecessor, first seen in frame ``s``) is
   made a daughter of a detection ``m`` in frame ``e`` with ``s - e - 1`` (the gap) in
   ``1 .. max_gap_frames``, at most ``division_max_distance_um * sqrt(gap + 1)`` away
   (the gap-closing scaling of the cutoff), when the two daughters — the new track and
   ``m``'s successor, or two new tracks if ``m``'s track ends there — pass the same area
   test. Candidates are taken greedily by squared distance (µm², the splitting cost).

Without areas (a table without ``area_um2``) nothing is changed: distance alone cannot
tell a division across a gap from a cell that passes one just appearing.
"""

from __future__ import annotations

import numpy as np

__all__ = ["DAUGHTER_AREA_RANGE", "DAUGHTERS_SUM_RANGE", "repair_divisions"]

#: Each daughter's area as a fraction of the mother's last area: halves of a flat cell give
#: 0.5, of a rounded (mitotic, spherical) one about 0.63.
DAUGHTER_AREA_RANGE = (0.2, 0.9)
#: Both daughters' areas together over the mother's (1.0 flat, about 1.26 spherical).
DAUGHTERS_SUM_RANGE = (0.5, 1.5)


def _area_ok(mother: float, daughters: list[float]) -> bool:
    if not (mother > 0) or any(not (a > 0) for a in daughters):
        return False
    lo, hi = DAUGHTER_AREA_RANGE
    slo, shi = DAUGHTERS_SUM_RANGE
    ratios = [a / mother for a in daughters]
    return all(lo <= r <= hi for r in ratios) and slo <= sum(ratios) <= shi


def repair_divisions(tree, coords: list[np.ndarray], areas: list[np.ndarray] | None, *, max_gap_frames: int,
                     division_max_distance_um: float, check_splits: bool = True) -> dict[str, int]:
    """Undo implausible splits and add divisions across missed detections, in place.

    Parameters
    ----------
    tree
        laptrack's track graph (``networkx.DiGraph``; nodes ``(frame, index)``).
    coords
        Per frame, ``(n_t, 2)`` centroids in µm (y, x), indexed like the nodes.
    areas
        Per frame, ``(n_t,)`` cell areas in µm²; None leaves the graph unchanged.
    max_gap_frames, division_max_distance_um
        The tracker's settings (:class:`~mechanoscope.track.TrackConfig`).
    check_splits
        Also undo laptrack's own splits that fail the area test.

    Returns
    -------
    dict
        ``{"splits_undone": …, "gap_divisions": …}``.
    """
    counts = {"splits_undone": 0, "gap_divisions": 0}
    if areas is None:
        return counts

    def pos(node) -> np.ndarray:
        return coords[node[0]][node[1], :2]

    def area(node) -> float:
        return float(areas[node[0]][node[1]])

    def d2(a, b) -> float:
        return float(((pos(a) - pos(b)) ** 2).sum())

    if check_splits:
        for node in sorted(n for n in tree.nodes if tree.out_degree(n) >= 2):
            kids = sorted(tree.successors(node))
            if not _area_ok(area(node), [area(k) for k in kids]):
                far = max(kids, key=lambda k: (d2(node, k), k))
                tree.remove_edge(node, far)
                counts["splits_undone"] += 1
    if max_gap_frames < 1:
        return counts
    orphans = sorted(n for n in tree.nodes if n[0] >= 1 and tree.in_degree(n) == 0)
    by_frame: dict[int, list] = {}
    for n in tree.nodes:
        by_frame.setdefault(n[0], []).append(n)
    candidates: list[tuple[float, tuple, tuple]] = []  # (cost, mother, orphan)
    for o in orphans:
        s = o[0]
        for e in range(max(0, s - 1 - max_gap_frames), s - 1):
            cutoff2 = division_max_distance_um**2 * (s - e)  # (R sqrt(gap + 1))²
            for m in by_frame.get(e, []):
                if tree.out_degree(m) <= 1 and (c := d2(m, o)) <= cutoff2:
                    candidates.append((c, m, o))
    candidates.sort()
    used_orphans: set = set()
    used_mothers: set = set()
    ends = {}  # mother whose track ends: its candidate orphans in cost order
    for c, m, o in candidates:
        if m in used_mothers or o in used_orphans:
            continue
        if tree.out_degree(m) == 1:
            (n,) = tree.successors(m)
            if abs(n[0] - o[0]) <= max_gap_frames and _area_ok(area(m), [area(n), area(o)]):
                tree.add_edge(m, o)
                used_mothers.add(m)
                used_orphans.add(o)
                counts["gap_divisions"] += 1
            continue
        # the mother's track ends at m: two new tracks are needed; pair o with the best partner seen so far
        for c0, o0 in ends.get(m, []):
            if o0 not in used_orphans and abs(o0[0] - o[0]) <= max_gap_frames and _area_ok(area(m), [area(o0), area(o)]):
                tree.add_edge(m, o0)
                tree.add_edge(m, o)
                used_mothers.add(m)
                used_orphans.update((o0, o))
                counts["gap_divisions"] += 1
                break
        else:
            ends.setdefault(m, []).append((c, o))
    return counts

