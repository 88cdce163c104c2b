"""Instance-segmentation metrics against a brute-force reference written here.

The reference knows nothing of the module's tricks: objects are Python sets of pixel
indices, IoU is ``len(a & b) / len(a | b)``, and the matching is an exhaustive search
over every one-to-one assignment of candidate pairs (IoU >= threshold) that maximises
first the NUMBER of matches and then their summed IoU (StarDist's rule). Label images
are small (12x12 .. 24x24) with at most a handful of objects so the search stays cheap.
"""

from __future__ import annotations

import json
import math
from functools import lru_cache

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from hypothesis.extra import numpy as hnp

from mechanoscope.errors import MechanoscopeError
from mechanoscope.evaluate import (
    AP_THRESHOLDS,
    aggregate_segmentation_scores,
    iou_matrix,
    match_instances,
    overlap_table,
    segmentation_scores,
    segmentation_scores_dataset,
    segmentation_table,
)

approx = pytest.approx

#: low thresholds (where one object can have several candidate partners and the
#: optimal assignment matters), the standard grid, and the exact-match threshold 1.0
THRESHOLDS = sorted({0.05, 0.1, 0.2, 0.3, 0.4, 0.45, *AP_THRESHOLDS, 1.0})
PER_KEYS = {
    "threshold", "tp", "fp", "fn", "precision", "recall", "f1", "ap",
    "mean_matched_iou", "pq", "sum_matched_iou",
}
HEADLINE = (
    "ap_50", "ap_75", "ap_50_95", "f1_50", "precision_50", "recall_50", "pq", "sq",
    "dice", "jaccard",
)
TOP_KEYS = {"n_images", "n_true", "n_pred", "thresholds", "per_threshold", "foreground", *HEADLINE}


# ============================================================================ reference
def ref_objects(lab: np.ndarray) -> dict[int, frozenset[int]]:
    """Object id -> set of flat pixel indices (explicit pixel sets)."""
    out: dict[int, set[int]] = {}
    for idx, v in enumerate(np.asarray(lab).ravel().tolist()):
        if v:
            out.setdefault(int(v), set()).add(idx)
    return {k: frozenset(s) for k, s in out.items()}


def ref_ious(pred: np.ndarray, true: np.ndarray) -> dict[tuple[int, int], float]:
    """(true id, pred id) -> IoU for every pair sharing at least one pixel."""
    T, P = ref_objects(true), ref_objects(pred)
    return {
        (t, p): len(a & b) / len(a | b)
        for t, a in T.items()
        for p, b in P.items()
        if a & b
    }


def ref_best_matching(
    true_ids: list[int], pred_ids: list[int], ious: dict[tuple[int, int], float], thr: float
) -> tuple[int, float]:
    """Exhaustive one-to-one matching: lexicographic max of (number of pairs, summed IoU)."""
    pidx = {p: k for k, p in enumerate(pred_ids)}
    cands = [
        [(pidx[p], ious[(t, p)]) for p in pred_ids if ious.get((t, p), 0.0) >= thr]
        for t in true_ids
    ]

    @lru_cache(maxsize=None)
    def best(i: int, used: int) -> tuple[int, float]:
        if i == len(true_ids):
            return (0, 0.0)
        result = best(i + 1, used)  # true object i stays unmatched
        for k, v in cands[i]:
            if not used >> k & 1:
                n, s = best(i + 1, used | (1 << k))
                result = max(result, (n + 1, s + v))
        return result

    return best(0, 0)


def ref_ratios(tp: int, fp: int, fn: int, s: float, n_true: int, n_pred: int) -> dict[str, float]:
    if n_true == 0 and n_pred == 0:
        return dict.fromkeys(("precision", "recall", "f1", "ap", "mean_matched_iou", "pq"), 1.0)

    def div(a: float, b: float) -> float:
        return a / b if b else 0.0

    sq, f1 = div(s, tp), div(2 * tp, 2 * tp + fp + fn)
    return {
        "precision": div(tp, tp + fp),
        "recall": div(tp, tp + fn),
        "f1": f1,
        "ap": div(tp, tp + fp + fn),
        "mean_matched_iou": sq,
        "pq": sq * f1,
    }


def ref_scores(pred: np.ndarray, true: np.ndarray, thresholds) -> dict:
    T, P = ref_objects(true), ref_objects(pred)
    ious = ref_ious(pred, true)
    tids, pids = sorted(T), sorted(P)
    per = []
    for thr in thresholds:
        tp, s = ref_best_matching(tids, pids, ious, thr)
        fp, fn = len(pids) - tp, len(tids) - tp
        d = {"threshold": thr, "tp": tp, "fp": fp, "fn": fn, "sum_matched_iou": s}
        d.update(ref_ratios(tp, fp, fn, s, len(tids), len(pids)))
        per.append(d)
    ft = {i for i, v in enumerate(true.ravel().tolist()) if v}
    fpx = {i for i, v in enumerate(pred.ravel().tolist()) if v}
    fg = {"intersection_px": len(ft & fpx), "true_px": len(ft), "pred_px": len(fpx)}
    return {"n_true": len(tids), "n_pred": len(pids), "per_threshold": per, "foreground": fg}


def ref_headline(per: list[dict], fg: dict) -> dict:
    by = {d["threshold"]: d for d in per}
    i, t, p = fg["intersection_px"], fg["true_px"], fg["pred_px"]
    empty = t == 0 and p == 0
    return {
        "ap_50": by[0.5]["ap"],
        "ap_75": by[0.75]["ap"],
        "ap_50_95": sum(by[x]["ap"] for x in AP_THRESHOLDS) / len(AP_THRESHOLDS),
        "f1_50": by[0.5]["f1"],
        "precision_50": by[0.5]["precision"],
        "recall_50": by[0.5]["recall"],
        "pq": by[0.5]["pq"],
        "sq": by[0.5]["mean_matched_iou"],
        "dice": 1.0 if empty else 2 * i / (t + p),
        "jaccard": 1.0 if empty else i / (t + p - i),
    }


def assert_scores_match_reference(s: dict, ref: dict) -> None:
    assert set(s) == TOP_KEYS
    assert (s["n_true"], s["n_pred"]) == (ref["n_true"], ref["n_pred"])
    assert s["foreground"] == ref["foreground"]
    assert len(s["per_threshold"]) == len(ref["per_threshold"])
    for got, want in zip(s["per_threshold"], ref["per_threshold"]):
        assert set(got) == PER_KEYS
        assert got["threshold"] == want["threshold"]
        assert (got["tp"], got["fp"], got["fn"]) == (want["tp"], want["fp"], want["fn"]), got
        for k in ("precision", "recall", "f1", "ap", "mean_matched_iou", "pq", "sum_matched_iou"):
            assert got[k] == approx(want[k], rel=1e-9, abs=1e-12), (k, got, want)
    head = ref_headline(ref["per_threshold"], ref["foreground"])
    for k in HEADLINE:
        assert s[k] == approx(head[k], rel=1e-9, abs=1e-12), k
    json.dumps(s)  # plain Python numbers only


# ============================================================================ strategies
ID_POOLS = {
    "small": st.integers(1, 40),
    # ids above 4 * pixels and 2**20 take the np.unique path of the id compaction
    "huge": st.integers(2**21, 2**62),  # beyond 2**53: float64 ids would lose them
}


@st.composite
def rect_labels(draw, shape: tuple[int, int], max_objects: int = 5) -> np.ndarray:
    """Up to ``max_objects`` rectangles, later ones painted over earlier ones (touching,
    overlapping, partly or wholly hidden objects), on background or filling the frame."""
    h, w = shape
    lab = np.zeros(shape, dtype=np.int64)
    if draw(st.booleans()) and max_objects > 1:
        lab[:, :] = 1  # no background at all: first object is the whole frame
    n = draw(st.integers(0, max_objects))
    for k in range(n):
        y0, x0 = draw(st.integers(0, h - 1)), draw(st.integers(0, w - 1))
        y1, x1 = draw(st.integers(y0 + 1, h)), draw(st.integers(x0 + 1, w))
        lab[y0:y1, x0:x1] = k + 2 if lab.max() else k + 1
    return lab


def blob_labels(shape: tuple[int, int], max_id: int = 4):
    """Pixel noise over ``0..max_id``: fragmented objects with many low-IoU overlaps."""
    return hnp.arrays(np.int64, shape, elements=st.integers(0, max_id))


@st.composite
def coarse_pair(draw, shape: tuple[int, int]) -> tuple[np.ndarray, np.ndarray]:
    """Chunky blobs on a coarse grid (cells of 2-4 px) and a prediction that relabels
    some cells and is shifted by a pixel or two: chains of partial overlaps in which
    one object has several candidate partners (where greedy matching goes wrong)."""
    cell = draw(st.integers(2, 4))
    gh, gw = -(-shape[0] // cell), -(-shape[1] // cell)
    grid = draw(hnp.arrays(np.int64, (gh, gw), elements=st.integers(0, 4)))
    flip = draw(hnp.arrays(np.int64, (gh, gw), elements=st.integers(-1, 4)))
    pgrid = np.where(flip >= 0, flip, grid)
    up = np.ones((cell, cell), dtype=np.int64)
    true = np.kron(grid, up)[: shape[0], : shape[1]]
    pred = np.kron(pgrid, up)[: shape[0], : shape[1]]
    pred = np.roll(pred, (draw(st.integers(-2, 2)), draw(st.integers(-2, 2))), axis=(0, 1))
    return pred, true


@st.composite
def derived_pred(draw, true: np.ndarray) -> np.ndarray:
    """A prediction made from the truth: shifted, split, merged, partly erased."""
    pred = true.copy()
    dy, dx = draw(st.integers(-3, 3)), draw(st.integers(-3, 3))
    pred = np.roll(pred, (dy, dx), axis=(0, 1))
    ids = [int(i) for i in np.unique(pred) if i]
    if ids and draw(st.booleans()):  # split one object along a column
        i = draw(st.sampled_from(ids))
        col = draw(st.integers(0, pred.shape[1] - 1))
        part = (pred == i) & (np.arange(pred.shape[1]) >= col)[None, :]
        pred[part] = 50
    if len(ids) > 1 and draw(st.booleans()):  # merge two objects
        a, b = draw(st.permutations(ids))[:2]
        pred[pred == b] = a
    if draw(st.booleans()):  # erase or repaint a rectangle
        h, w = pred.shape
        y0, x0 = draw(st.integers(0, h - 1)), draw(st.integers(0, w - 1))
        y1, x1 = draw(st.integers(y0 + 1, h)), draw(st.integers(x0 + 1, w))
        pred[y0:y1, x0:x1] = draw(st.sampled_from([0, 51]))
    return pred


def relabel(lab: np.ndarray, new_ids: list[int], dtype) -> np.ndarray:
    """Give the objects of ``lab`` (ascending) the ids ``new_ids`` (0 stays 0)."""
    out = np.zeros(lab.shape, dtype=dtype)
    for old, new in zip([int(i) for i in np.unique(lab) if i], new_ids):
        out[lab == old] = new
    return out


@st.composite
def label_pair(draw, shape=None) -> tuple[np.ndarray, np.ndarray]:
    """(pred, true) with at most 6 objects each; ids non-contiguous, dtypes varied."""
    if shape is None:
        shape = (draw(st.integers(12, 24)), draw(st.integers(12, 24)))
    kind = draw(st.sampled_from(["rects", "rects", "blobs", "derived", "derived", "coarse", "coarse"]))
    true = draw(st.one_of(rect_labels(shape), blob_labels(shape)))
    if kind == "coarse":
        pred, true = draw(coarse_pair(shape))
    elif kind == "rects":
        pred = draw(rect_labels(shape))
    elif kind == "blobs":
        pred = draw(blob_labels(shape))
    else:
        pred = draw(derived_pred(true))
    pool = ID_POOLS[draw(st.sampled_from(sorted(ID_POOLS)))]
    out = []
    for lab in (pred, true):
        n = len(np.unique(lab[lab > 0]))
        ids = draw(st.lists(pool, min_size=n, max_size=n, unique=True))
        dtype = draw(st.sampled_from([np.int32, np.int64, np.uint64] if max(ids, default=0) > 2**31 - 1
                                     else [np.uint8, np.uint16, np.int32, np.int64, np.uint64]))
        if max(ids, default=0) > np.iinfo(dtype).max:
            dtype = np.int64
        out.append(relabel(lab, ids, dtype))
    return out[0], out[1]


def scalars(s: dict) -> list[float]:
    """Every number in a scores dict, in a fixed order (for approximate comparison)."""
    vals = [s["n_true"], s["n_pred"], *s["foreground"].values()]
    vals += [s[k] for k in HEADLINE]
    for d in s["per_threshold"]:
        vals += [d[k] for k in sorted(PER_KEYS)]
    return vals


# ============================================================================ hand-made cases
def sum_vs_count_case() -> tuple[np.ndarray, np.ndarray]:
    """Where maximising the summed IoU loses a match.

    1-D row, true A = [0,10) (10 px), B = [10,13) (3 px); pred Y = [0,2), X = [2,12).
    IoU(A,X) = 8/12 = 2/3, IoU(A,Y) = 2/10 = 0.2, IoU(B,X) = 2/11.
    At threshold 0.15 all three pairs are candidates. Summed IoU alone prefers {A-X}
    (2/3 > 0.2 + 2/11 = 0.382): one match. StarDist's rule takes {A-Y, B-X}: two matches.
    """
    true = np.zeros((1, 16), dtype=np.int32)
    true[0, 0:10], true[0, 10:13] = 1, 2
    pred = np.zeros((1, 16), dtype=np.int32)
    pred[0, 0:2], pred[0, 2:12] = 7, 8
    return pred, true


def test_matching_maximises_count_before_summed_iou() -> None:
    pred, true = sum_vs_count_case()
    iou, _, _ = iou_matrix(pred, true)
    np.testing.assert_allclose(iou, [[0.2, 2 / 3], [0.0, 2 / 11]])
    m = match_instances(pred, true, 0.15)
    assert (m.tp, m.fp, m.fn) == (2, 0, 0)
    assert m.true_ids.tolist() == [1, 2] and m.pred_ids.tolist() == [7, 8]
    assert m.ious.tolist() == approx([0.2, 2 / 11])
    assert m.sum_matched_iou == approx(0.2 + 2 / 11)
    assert m.ap == 1.0 and m.f1 == 1.0
    assert m.mean_matched_iou == approx((0.2 + 2 / 11) / 2)
    # the same through the scores dict, and from the other side (roles swapped)
    s = segmentation_scores(pred, true, thresholds=[0.15, 0.5])
    assert [d["tp"] for d in s["per_threshold"]] == [2, 1]
    sw = match_instances(true, pred, 0.15)
    assert (sw.tp, sw.fp, sw.fn) == (2, 0, 0)
    # above 0.2 only A-X is left: one match
    m = match_instances(pred, true, 0.25)
    assert (m.tp, m.fp, m.fn) == (1, 1, 1) and m.pred_ids.tolist() == [8]


def test_matching_breaks_count_ties_by_summed_iou() -> None:
    """Two true and two predicted objects, all four pairs overlap, so both one-to-one
    matchings have two pairs; the one with the larger summed IoU must win.

    4x12 image, true A = columns 0-5 (24 px), B = columns 6-11 (24 px); pred X = columns
    0-4 plus row 0 columns 6-8 (23 px), Y = the rest (25 px).
    IoU(A,X) = 20/27, IoU(B,Y) = 21/28, IoU(A,Y) = 4/45, IoU(B,X) = 3/44.
    """
    true = np.zeros((4, 12), dtype=np.int32)
    true[:, 0:6], true[:, 6:12] = 1, 2
    pred = np.full((4, 12), 4, dtype=np.int32)
    pred[:, 0:5], pred[0, 6:9] = 3, 3
    iou, _, _ = iou_matrix(pred, true)
    np.testing.assert_allclose(iou, [[20 / 27, 4 / 45], [3 / 44, 21 / 28]])
    for thr in (0.05, 0.06):
        m = match_instances(pred, true, thr)
        assert (m.tp, m.fp, m.fn) == (2, 0, 0)
        assert m.pred_ids.tolist() == [3, 4]
        assert m.ious.tolist() == approx([20 / 27, 21 / 28])
        assert m.sum_matched_iou == approx(20 / 27 + 21 / 28)
    # the same with the predicted ids in the other order (Y=3, X=4)
    m = match_instances(7 - pred, true, 0.05)
    assert m.pred_ids.tolist() == [4, 3]
    assert m.ious.tolist() == approx([20 / 27, 21 / 28])


def test_count_first_holds_with_more_objects() -> None:
    """The tie-break weight of the summed IoU must stay below one match whatever the
    number of objects. 1-D row, threshold 0.05:
    true A = [0,20), B = [20,21), C = [25,28); pred Y = [0,2), X = [2,21), Z = [25,28).
    IoU(A,X) = 18/21, IoU(A,Y) = 2/20, IoU(B,X) = 1/19, IoU(C,Z) = 1.
    Best: A-Y, B-X, C-Z (three matches), not A-X, C-Z (two, larger summed IoU)."""
    true = np.zeros((1, 30), dtype=np.int16)
    true[0, 0:20], true[0, 20], true[0, 25:28] = 1, 2, 3
    pred = np.zeros((1, 30), dtype=np.int16)
    pred[0, 0:2], pred[0, 2:21], pred[0, 25:28] = 1, 2, 3
    m = match_instances(pred, true, 0.05)
    assert (m.tp, m.fp, m.fn) == (3, 0, 0)
    assert m.pred_ids.tolist() == [1, 2, 3]
    assert m.sum_matched_iou == approx(0.1 + 1 / 19 + 1)


def test_unmatchable_leftovers_are_not_matched() -> None:
    """Objects that have candidate partners but are left over by the optimal matching
    stay unmatched (the assignment must not pair them through a zero-IoU entry).
    1-D row, threshold 0.2: true A = [0,10), B = [10,12), C = [12,14);
    pred Y = [0,3), Z = [3,6), X = [6,14). Candidates A-Y, A-Z (0.3), A-X (4/14),
    B-X, C-X (0.25): at most two matches (A with Y or Z, X with one of A, B, C)."""
    true = np.zeros((1, 16), dtype=np.uint8)
    true[0, 0:10], true[0, 10:12], true[0, 12:14] = 1, 2, 3
    pred = np.zeros((1, 16), dtype=np.uint8)
    pred[0, 0:3], pred[0, 3:6], pred[0, 6:14] = 4, 5, 6
    m = match_instances(pred, true, 0.2)
    assert (m.tp, m.fp, m.fn) == (2, 1, 1)
    assert m.sum_matched_iou == approx(0.3 + 0.25)
    assert m.ap == approx(0.5) and m.mean_matched_iou == approx(0.275)
    assert m.ious.tolist() == approx([0.3, 0.25])


def test_overlap_table_by_reference() -> None:
    """Areas, overlapping pairs and intersections, with integer dtypes, on the hand case."""
    pred, true = sum_vs_count_case()
    ov = overlap_table(pred, true)
    assert ov.true_ids.tolist() == [1, 2] and ov.pred_ids.tolist() == [7, 8]
    assert ov.true_area_px.tolist() == [10, 3] and ov.pred_area_px.tolist() == [2, 10]
    pairs = sorted(zip(ov.pair_true.tolist(), ov.pair_pred.tolist(),
                       ov.pair_intersection_px.tolist(), ov.pair_iou.tolist()))
    assert pairs == [(0, 0, 2, approx(0.2)), (0, 1, 8, approx(2 / 3)), (1, 1, 2, approx(2 / 11))]
    assert (ov.fg_intersection_px, ov.fg_true_px, ov.fg_pred_px) == (12, 13, 12)
    for arr in (ov.true_ids, ov.pred_ids, ov.true_area_px, ov.pred_area_px, ov.pair_intersection_px):
        assert arr.dtype.kind in "iu"
    e = overlap_table(np.zeros((2, 2), np.uint8), np.zeros((2, 2), np.uint8))
    assert (e.n_true, e.n_pred, e.true_ids.dtype.kind, e.pred_ids.dtype.kind) == (0, 0, "i", "i")


def test_pooled_counts_versus_per_image_means() -> None:
    """Image 1: one object found exactly (AP 1). Image 2: three objects, nothing
    predicted (AP 0). Image 3: both empty (perfect on its own, adds no counts).
    Pooled: TP 1, FP 0, FN 3 -> AP 1/4, recall 1/4, precision 1, F1 2/5, SQ 1, PQ 2/5;
    the mean of per-image APs would be (1 + 0 + 1) / 3."""
    one = np.zeros((6, 6), dtype=np.uint8)
    one[1:3, 1:3] = 4
    three = np.zeros((6, 6), dtype=np.uint8)
    three[0, 0], three[2, 2:4], three[5, :] = 1, 2, 3
    empty = np.zeros((6, 6), dtype=np.uint8)
    per = [
        segmentation_scores(one, one),
        segmentation_scores(empty, three),
        segmentation_scores(empty, empty),
    ]
    assert [s["ap_50"] for s in per] == [1.0, 0.0, 1.0]
    pooled = aggregate_segmentation_scores(per)
    assert (pooled["n_images"], pooled["n_true"], pooled["n_pred"]) == (3, 4, 1)
    for d in pooled["per_threshold"]:
        assert (d["tp"], d["fp"], d["fn"]) == (1, 0, 3)
        assert d["sum_matched_iou"] == 1.0
    assert pooled["ap_50"] == approx(0.25) and pooled["ap_50_95"] == approx(0.25)
    assert pooled["ap_75"] == approx(0.25)
    assert pooled["precision_50"] == 1.0 and pooled["recall_50"] == approx(0.25)
    assert pooled["f1_50"] == approx(0.4)
    assert pooled["sq"] == 1.0 and pooled["pq"] == approx(0.4)
    # foreground: 4 px found of 4 + 1 + 2 + 6 = 13 true px
    assert pooled["foreground"] == {"intersection_px": 4, "true_px": 13, "pred_px": 4}
    assert pooled["dice"] == approx(8 / 17) and pooled["jaccard"] == approx(4 / 13)
    assert pooled["ap_50"] != approx(np.mean([s["ap_50"] for s in per]))
    # the dataset entry point gives the same, from a generator of pairs
    gen = ((p, t) for p, t in [(one, one), (empty, three), (empty, empty)])
    assert segmentation_scores_dataset(gen) == pooled
    # pooling pooled results adds their image counts; JSON round trip is accepted
    again = aggregate_segmentation_scores([json.loads(json.dumps(pooled)), per[0]])
    assert again["n_images"] == 4 and again["per_threshold"][0]["tp"] == 2
    assert again["ap_50"] == approx(2 / 5)
    # a dict without n_images counts as one image
    legacy = {k: v for k, v in per[0].items() if k != "n_images"}
    assert aggregate_segmentation_scores([legacy, legacy])["n_images"] == 2


def test_pooled_empty_datasets() -> None:
    z = np.zeros((4, 4), dtype=np.uint16)
    pooled = segmentation_scores_dataset([(z, z), (z, z)], thresholds=[0.5, 0.75])
    assert pooled["n_images"] == 2
    for k in HEADLINE:
        if k != "ap_50_95":
            assert pooled[k] == 1.0, k
    assert pooled["ap_50_95"] is None
    # predictions but no truth anywhere: every ratio 0, Dice 0
    p = z.copy()
    p[0, 0] = 9
    pooled = segmentation_scores_dataset([(p, z), (z, z)], thresholds=[0.5])
    d = pooled["per_threshold"][0]
    assert (d["tp"], d["fp"], d["fn"]) == (0, 1, 0)
    for k in ("precision", "recall", "f1", "ap", "mean_matched_iou", "pq"):
        assert d[k] == 0.0, k
    assert (pooled["dice"], pooled["jaccard"]) == (0.0, 0.0)


def test_aggregate_and_dataset_errors() -> None:
    with pytest.raises(MechanoscopeError, match="^scores: nothing to aggregate"):
        aggregate_segmentation_scores([])
    z = np.zeros((3, 3), dtype=int)
    with pytest.raises(
        MechanoscopeError,
        match=r"^pair 1: pred has shape \(3, 3\) but true has shape \(3, 4\); both label images "
        r"must cover the same pixels \(same shape\)$",
    ):
        segmentation_scores_dataset([(z, z), (z, np.zeros((3, 4), dtype=int))])
    a = segmentation_scores(z, z, thresholds=[0.5])
    b = segmentation_scores(z, z, thresholds=[0.6])
    with pytest.raises(MechanoscopeError, match=r"image 1 .*\[0\.6\].*image 0 .*\[0\.5\]"):
        aggregate_segmentation_scores([a, b])
    # thresholds compare after rounding away float noise
    c = dict(a, thresholds=[0.5 + 3e-11])
    assert aggregate_segmentation_scores([a, c])["thresholds"] == [0.5]
    assert aggregate_segmentation_scores([c, a])["thresholds"] == [0.5]


def test_threshold_handling() -> None:
    pred, true = sum_vs_count_case()
    s = segmentation_scores(pred, true, thresholds=0.5)  # a scalar is one threshold
    assert s["thresholds"] == [0.5] and len(s["per_threshold"]) == 1
    s = segmentation_scores(pred, true, thresholds=[0.75, 0.5, 0.5, 1.0])
    assert s["thresholds"] == [0.5, 0.75, 1.0]  # sorted, duplicates dropped, 1.0 allowed
    assert [d["threshold"] for d in s["per_threshold"]] == [0.5, 0.75, 1.0]
    assert s["ap_75"] == 0.0 and s["ap_50"] == approx(1 / 3)
    s = segmentation_scores(pred, true, thresholds=[0.5 + 3e-11, 0.75 - 4e-11])
    assert s["thresholds"] == [0.5, 0.75] and s["ap_50"] == approx(1 / 3)  # noise rounded away
    with pytest.raises(MechanoscopeError, match="^thresholds: give at least one IoU threshold"):
        segmentation_scores(pred, true, thresholds=[])
    with pytest.raises(MechanoscopeError, match="'x' is not a number"):
        segmentation_scores(pred, true, thresholds=["x"])
    with pytest.raises(MechanoscopeError, match="'x' is not a number"):
        segmentation_scores(pred, true, thresholds=[0.5, "x"])
    with pytest.raises(MechanoscopeError, match="is not a number"):
        segmentation_scores(pred, true, thresholds=[None])
    for bad in (1.0000001, -0.1, 0.0, 2):
        with pytest.raises(MechanoscopeError, match=r"IoU threshold .* is outside \(0, 1\]"):
            match_instances(pred, true, iou_threshold=bad)


def test_label_validation_messages() -> None:
    z = np.zeros((3, 3), dtype=np.int16)
    with pytest.raises(MechanoscopeError, match=r"^pred: got a boolean mask, but .* one integer id per object; label the mask first, e\.g\. skimage\.measure\.label\(mask\)$"):
        match_instances(z.astype(bool), z)
    with pytest.raises(MechanoscopeError, match=r"^true: got a boolean mask"):
        match_instances(z, z.astype(bool))
    with pytest.raises(MechanoscopeError, match=r"^true: a label image must hold non-negative integer ids.*float32.*astype\(int\)"):
        match_instances(z, z.astype(np.float32))
    neg = z.copy()
    neg[1, 1] = -3
    with pytest.raises(MechanoscopeError, match=r"^pred: .*the negative id -3$"):
        match_instances(neg, z)
    # empty arrays of a signed type are fine (no objects: a perfect empty result)
    e = np.zeros((0, 4), dtype=np.int8)
    m = match_instances(e, e)
    assert (m.tp, m.fp, m.fn, m.ap) == (0, 0, 0, 1.0)
    assert segmentation_scores(e, e)["dice"] == 1.0
    ov = overlap_table(e, e)
    assert ov.true_ids.dtype == ov.pred_ids.dtype == np.int64 and ov.n_true == ov.n_pred == 0


def test_many_objects_use_the_sparse_histogram() -> None:
    """Over 16 M joint bins (4,100+ objects on each side) the joint histogram is
    counted sparsely; the numbers stay the same."""
    n = 5000
    true = np.arange(1, n + 1, dtype=np.int64).reshape(50, 100)
    pred = true.copy()
    pred[:, :50] += 10_000_000  # every object keeps its pixel, ids change
    m = match_instances(pred, true)
    assert (m.tp, m.fp, m.fn) == (n, 0, 0)
    assert m.sum_matched_iou == n
    pred[0, 0] = 0
    ov = overlap_table(pred, true)
    assert (ov.n_true, ov.n_pred, ov.fg_intersection_px) == (n, n - 1, n - 1)


def test_match_arrays_and_dict() -> None:
    pred, true = sum_vs_count_case()
    m = match_instances(pred, true, 0.15)
    d = m.as_dict()
    assert d == {
        "threshold": 0.15, "tp": 2, "fp": 0, "fn": 0, "precision": 1.0, "recall": 1.0,
        "f1": 1.0, "ap": 1.0, "mean_matched_iou": approx((0.2 + 2 / 11) / 2),
        "pq": approx((0.2 + 2 / 11) / 2), "sum_matched_iou": approx(0.2 + 2 / 11),
    }
    assert (m.n_true, m.n_pred) == (2, 2)
    assert m.sq == m.mean_matched_iou and m.rq == m.f1


def test_table_extra_threshold_columns() -> None:
    pred, true = sum_vs_count_case()
    s = segmentation_scores(pred, true, thresholds=[0.15, 0.5, 0.625])
    table = segmentation_table([s, s])
    assert table["image_id"].tolist() == [0, 1]
    assert list(table.columns[:13]) == [
        "image_id", "n_true", "n_pred", "ap_50", "ap_75", "ap_50_95", "f1_50",
        "precision_50", "recall_50", "pq", "sq", "dice", "jaccard",
    ]
    assert list(table.columns[13:]) == ["ap_15", "ap_62.5"]
    assert table["ap_15"].tolist() == [1.0, 1.0]
    assert table["ap_62.5"].tolist() == approx([1 / 3, 1 / 3])
    assert table["ap_75"].isna().all()
    empty = segmentation_table({})
    assert empty.empty and list(empty.columns)[:3] == ["image_id", "n_true", "n_pred"]


# ============================================================================ properties
@settings(max_examples=70, deadline=None)
@given(label_pair())
def test_scores_match_brute_force(pair) -> None:
    pred, true = pair
    s = segmentation_scores(pred, true, thresholds=THRESHOLDS)
    ref = ref_scores(pred, true, THRESHOLDS)
    assert_scores_match_reference(s, ref)

    # IoU matrix: every pair, by explicit pixel sets
    ious = ref_ious(pred, true)
    iou, tids, pids = iou_matrix(pred, true)
    assert tids.tolist() == sorted(ref_objects(true)) and pids.tolist() == sorted(ref_objects(pred))
    want = np.array([[ious.get((t, p), 0.0) for p in pids.tolist()] for t in tids.tolist()])
    np.testing.assert_allclose(iou.reshape(want.shape), want, rtol=1e-12, atol=0)

    # the sparse overlap table: areas and intersections by pixel sets, integer ids
    T, P = ref_objects(true), ref_objects(pred)
    ov = overlap_table(pred, true)
    assert ov.true_area_px.tolist() == [len(T[t]) for t in sorted(T)]
    assert ov.pred_area_px.tolist() == [len(P[p]) for p in sorted(P)]
    got = {
        (int(ov.true_ids[i]), int(ov.pred_ids[j])): (n, v)
        for i, j, n, v in zip(ov.pair_true.tolist(), ov.pair_pred.tolist(),
                              ov.pair_intersection_px.tolist(), ov.pair_iou.tolist())
    }
    assert got == {k: (len(T[k[0]] & P[k[1]]), approx(v, rel=1e-12)) for k, v in ious.items()}
    for arr in (tids, pids, ov.true_area_px, ov.pred_area_px, ov.pair_intersection_px):
        assert arr.dtype.kind in "iu"

    # the matched pairs themselves: one-to-one, above threshold, sorted by true id,
    # with the pair's true IoU, and as many / as good as the exhaustive optimum
    for thr, want_d in zip(THRESHOLDS, ref["per_threshold"]):
        m = match_instances(pred, true, thr)
        t_ids, p_ids = m.true_ids.tolist(), m.pred_ids.tolist()
        assert len(t_ids) == len(p_ids) == len(m.ious) == m.tp == want_d["tp"]
        assert len(set(t_ids)) == len(t_ids) and len(set(p_ids)) == len(p_ids)
        assert t_ids == sorted(t_ids)
        for t, p, v in zip(t_ids, p_ids, m.ious.tolist()):
            assert v == approx(ious[(t, p)], rel=1e-12) and ious[(t, p)] >= thr
        assert m.sum_matched_iou == approx(want_d["sum_matched_iou"], rel=1e-9, abs=1e-12)
        assert (m.n_true, m.n_pred) == (s["n_true"], s["n_pred"])
        assert m.threshold == thr


@settings(max_examples=35, deadline=None)
@given(label_pair(), st.data())
def test_relabelling_changes_nothing(pair, data) -> None:
    pred, true = pair
    base = segmentation_scores(pred, true, thresholds=THRESHOLDS)
    pool = data.draw(st.sampled_from([st.integers(1, 30), st.integers(2**21, 2**62)]))
    new = []
    for lab in (pred, true):
        n = len(np.unique(lab[lab > 0]))
        ids = data.draw(st.lists(pool, min_size=n, max_size=n, unique=True))
        new.append(relabel(lab, ids, np.int64))
    s = segmentation_scores(new[0], new[1], thresholds=THRESHOLDS)
    assert scalars(s) == approx(scalars(base), rel=1e-12, abs=1e-15)


@settings(max_examples=35, deadline=None)
@given(label_pair())
def test_swapping_pred_and_true(pair) -> None:
    pred, true = pair
    a = segmentation_scores(pred, true, thresholds=THRESHOLDS)
    b = segmentation_scores(true, pred, thresholds=THRESHOLDS)
    assert (a["n_true"], a["n_pred"]) == (b["n_pred"], b["n_true"])
    fa, fb = a["foreground"], b["foreground"]
    assert (fa["intersection_px"], fa["true_px"], fa["pred_px"]) == (
        fb["intersection_px"], fb["pred_px"], fb["true_px"])
    for da, db in zip(a["per_threshold"], b["per_threshold"]):
        assert (da["tp"], da["fp"], da["fn"]) == (db["tp"], db["fn"], db["fp"])
        assert (da["precision"], da["recall"]) == approx((db["recall"], db["precision"]))
        for k in ("f1", "ap", "mean_matched_iou", "pq", "sum_matched_iou"):
            assert da[k] == approx(db[k], rel=1e-9, abs=1e-12), k
    for k in ("ap_50", "ap_50_95", "f1_50", "pq", "sq", "dice", "jaccard"):
        assert a[k] == approx(b[k], rel=1e-9, abs=1e-12), k
    assert a["precision_50"] == approx(b["recall_50"])


@settings(max_examples=30, deadline=None)
@given(label_pair())
def test_prediction_equal_to_truth_is_perfect(pair) -> None:
    _, true = pair
    n = len(np.unique(true[true > 0]))
    s = segmentation_scores(true, true.copy(), thresholds=THRESHOLDS)
    for d in s["per_threshold"]:
        assert (d["tp"], d["fp"], d["fn"]) == (n, 0, 0)
        assert d["sum_matched_iou"] == n
        for k in ("precision", "recall", "f1", "ap", "mean_matched_iou", "pq"):
            assert d[k] == 1.0, k
    for k in HEADLINE:
        assert s[k] == 1.0, k
    m = match_instances(true, true, 1.0)
    assert m.true_ids.tolist() == m.pred_ids.tolist() == sorted(ref_objects(true))
    assert m.ious.tolist() == [1.0] * n


@settings(max_examples=35, deadline=None)
@given(label_pair())
def test_ap_never_rises_with_threshold(pair) -> None:
    pred, true = pair
    per = segmentation_scores(pred, true, thresholds=THRESHOLDS)["per_threshold"]
    for lo, hi in zip(per, per[1:]):
        assert lo["threshold"] < hi["threshold"]
        assert hi["tp"] <= lo["tp"]
        for k in ("ap", "f1", "precision", "recall"):
            assert hi[k] <= lo[k] + 1e-12, k


@settings(max_examples=25, deadline=None)
@given(st.lists(label_pair(), min_size=1, max_size=4))
def test_pooling_matches_hand_sums(pairs) -> None:
    thr = [0.1, 0.3, *AP_THRESHOLDS]
    per = [segmentation_scores(p, t, thresholds=thr) for p, t in pairs]
    pooled = aggregate_segmentation_scores(per)
    assert segmentation_scores_dataset(pairs, thresholds=thr) == pooled
    assert set(pooled) == TOP_KEYS
    n_true = sum(s["n_true"] for s in per)
    n_pred = sum(s["n_pred"] for s in per)
    assert (pooled["n_images"], pooled["n_true"], pooled["n_pred"]) == (len(pairs), n_true, n_pred)
    assert pooled["thresholds"] == thr
    for k, d in enumerate(pooled["per_threshold"]):
        assert set(d) == PER_KEYS and d["threshold"] == thr[k]
        tp, fp, fn = (sum(s["per_threshold"][k][c] for s in per) for c in ("tp", "fp", "fn"))
        sum_iou = math.fsum(s["per_threshold"][k]["sum_matched_iou"] for s in per)
        assert (d["tp"], d["fp"], d["fn"]) == (tp, fp, fn)
        assert d["sum_matched_iou"] == approx(sum_iou, rel=1e-12, abs=1e-15)
        want = ref_ratios(tp, fp, fn, sum_iou, n_true, n_pred)
        for key, v in want.items():
            assert d[key] == approx(v, rel=1e-9, abs=1e-12), key
    fg = {c: sum(s["foreground"][c] for s in per) for c in ("intersection_px", "true_px", "pred_px")}
    assert pooled["foreground"] == fg
    head = ref_headline(pooled["per_threshold"], fg)
    for k in HEADLINE:
        assert pooled[k] == approx(head[k], rel=1e-9, abs=1e-12), k
    json.dumps(pooled)
    if len(pairs) == 1:  # one image pooled is that image
        assert scalars(pooled) == approx(scalars(per[0]))
