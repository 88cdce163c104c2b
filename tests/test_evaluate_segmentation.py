"""Segmentation metrics against hand-computed numbers, and the ``evaluate segmentation`` CLI."""

from __future__ import annotations

import json

import numpy as np
import pandas as pd
import pytest
import typer
from typer.testing import CliRunner

from mechanoscope.cli.evaluate import register
from mechanoscope.errors import MechanoscopeError
from mechanoscope.evaluate import (
    AP_THRESHOLDS,
    aggregate_segmentation_scores,
    iou_matrix,
    match_instances,
    segmentation_scores,
    segmentation_scores_dataset,
    segmentation_table,
)
from mechanoscope.io import write_label_image

approx = pytest.approx


def two_squares() -> tuple[np.ndarray, np.ndarray]:
    """Truth: two 10x10 squares. Prediction: one exact, one shifted by 2 px, one extra.

    Shifted square: intersection 10*8 = 80, union 120 -> IoU 2/3.
    Extra 3x3 square touches no true object -> false positive at every threshold.
    """
    true = np.zeros((20, 25), dtype=np.uint16)
    true[0:10, 0:10] = 1
    true[10:20, 8:18] = 2
    pred = np.zeros((20, 25), dtype=np.int32)
    pred[0:10, 0:10] = 5
    pred[10:20, 10:20] = 9
    pred[0:3, 20:23] = 2
    return pred, true


def split_object() -> tuple[np.ndarray, np.ndarray]:
    """One true 10x10 square predicted as a 10x6 (IoU 0.6) and a 10x4 (IoU 0.4) part."""
    true = np.zeros((10, 10), dtype=np.int64)
    true[:, :] = 7
    pred = np.zeros((10, 10), dtype=np.int64)
    pred[:, 0:6] = 3
    pred[:, 6:10] = 4
    return pred, true


# ----------------------------------------------------------------------------- matching
def test_two_squares_at_05() -> None:
    pred, true = two_squares()
    m = match_instances(pred, true, iou_threshold=0.5)
    assert (m.n_true, m.n_pred, m.tp, m.fp, m.fn) == (2, 3, 2, 1, 0)
    assert m.precision == approx(2 / 3)
    assert m.recall == 1.0
    assert m.f1 == approx(0.8)
    assert m.ap == approx(2 / 3)
    assert m.mean_matched_iou == approx(5 / 6)
    assert m.sq == approx(5 / 6) and m.rq == approx(0.8)
    assert m.pq == approx(5 / 6 * 0.8)
    assert m.true_ids.tolist() == [1, 2]
    assert m.pred_ids.tolist() == [5, 9]
    assert m.ious.tolist() == approx([1.0, 2 / 3])


def test_two_squares_at_08() -> None:
    pred, true = two_squares()
    m = match_instances(pred, true, iou_threshold=0.8)
    assert (m.tp, m.fp, m.fn) == (1, 2, 1)
    assert m.precision == approx(1 / 3)
    assert m.recall == approx(0.5)
    assert m.f1 == approx(0.4)
    assert m.ap == approx(0.25)
    assert m.mean_matched_iou == 1.0
    assert m.pq == approx(0.4)
    assert m.pred_ids.tolist() == [5]


def test_iou_matrix_by_hand() -> None:
    pred, true = two_squares()
    iou, true_ids, pred_ids = iou_matrix(pred, true)
    assert true_ids.tolist() == [1, 2]
    assert pred_ids.tolist() == [2, 5, 9]
    np.testing.assert_allclose(iou, [[0.0, 1.0, 0.0], [0.0, 0.0, 2 / 3]])


def test_split_object_counts_once() -> None:
    pred, true = split_object()
    m = match_instances(pred, true, 0.5)
    assert (m.tp, m.fp, m.fn) == (1, 1, 0)
    assert m.pred_ids.tolist() == [3] and m.ious.tolist() == approx([0.6])
    m = match_instances(pred, true, 0.65)
    assert (m.tp, m.fp, m.fn) == (0, 2, 1)
    assert m.ap == 0.0 and m.pq == 0.0


def test_equal_split_is_one_to_one() -> None:
    # both halves have IoU exactly 0.5 with the true object; only one may match
    true = np.ones((4, 4), dtype=np.uint8)
    pred = np.ones((4, 4), dtype=np.uint8)
    pred[:, 2:] = 2
    m = match_instances(pred, true, 0.5)
    assert (m.tp, m.fp, m.fn) == (1, 1, 0)
    assert m.ap == approx(0.5)


def test_merged_object() -> None:
    # true objects of 120 and 80 px merged into one prediction: IoU 0.6 and 0.4
    true = np.zeros((10, 20), dtype=np.int32)
    true[:, 0:12] = 1
    true[:, 12:20] = 2
    pred = (true > 0).astype(np.int32) * 4
    m = match_instances(pred, true, 0.5)
    assert (m.tp, m.fp, m.fn) == (1, 0, 1)
    assert m.true_ids.tolist() == [1]
    assert m.ap == approx(0.5)
    assert m.recall == approx(0.5) and m.precision == 1.0
    m = match_instances(pred, true, 0.7)
    assert (m.tp, m.fp, m.fn) == (0, 1, 2)


def test_optimal_matching_beats_greedy_below_05() -> None:
    # 1-D objects: true A=[0,10), B=[10,20); pred Y=[0,4), X=[4,14).
    # IoU(A,X)=6/14, IoU(A,Y)=4/10, IoU(B,X)=4/16. Greedy would take A-X and stop at one
    # match; the optimal assignment A-Y, B-X has two.
    true = np.zeros((1, 20), dtype=np.int32)
    true[0, 0:10], true[0, 10:20] = 1, 2
    pred = np.zeros((1, 20), dtype=np.int32)
    pred[0, 0:4], pred[0, 4:14] = 11, 12
    m = match_instances(pred, true, 0.25)
    assert (m.tp, m.fp, m.fn) == (2, 0, 0)
    assert m.true_ids.tolist() == [1, 2] and m.pred_ids.tolist() == [11, 12]
    assert m.sum_matched_iou == approx(0.4 + 0.25)


# ----------------------------------------------------------------------------- empties
def test_both_empty_is_perfect() -> None:
    z = np.zeros((5, 5), dtype=np.uint16)
    m = match_instances(z, z)
    assert (m.tp, m.fp, m.fn) == (0, 0, 0)
    assert (m.precision, m.recall, m.f1, m.ap, m.mean_matched_iou, m.pq) == (1.0,) * 6
    s = segmentation_scores(z, z)
    assert (s["ap_50"], s["ap_50_95"], s["pq"], s["dice"], s["jaccard"]) == (1.0,) * 5


def test_empty_prediction() -> None:
    true = np.zeros((5, 5), dtype=np.uint16)
    true[1:3, 1:3] = 1
    s = segmentation_scores(np.zeros_like(true), true)
    assert (s["n_true"], s["n_pred"]) == (1, 0)
    assert s["per_threshold"][0]["fn"] == 1 and s["per_threshold"][0]["fp"] == 0
    assert (s["ap_50"], s["precision_50"], s["recall_50"], s["f1_50"], s["pq"]) == (0.0,) * 5
    assert (s["dice"], s["jaccard"]) == (0.0, 0.0)


def test_empty_truth() -> None:
    pred = np.zeros((5, 5), dtype=np.uint16)
    pred[0, 0] = 3
    m = match_instances(pred, np.zeros_like(pred))
    assert (m.tp, m.fp, m.fn) == (0, 1, 0)
    assert (m.precision, m.recall, m.ap, m.f1, m.pq) == (0.0,) * 5


# ----------------------------------------------------------------------------- scores
def test_segmentation_scores_by_hand() -> None:
    pred, true = two_squares()
    s = segmentation_scores(pred, true)
    assert s["thresholds"] == list(AP_THRESHOLDS)
    assert (s["n_true"], s["n_pred"]) == (2, 3)
    assert s["ap_50"] == approx(2 / 3)
    assert s["ap_75"] == approx(1 / 4)
    # IoU 2/3 passes 0.50, 0.55, 0.60, 0.65 (AP 2/3) but not 0.70 ... 0.95 (AP 1/4)
    assert s["ap_50_95"] == approx((4 * 2 / 3 + 6 * 1 / 4) / 10)
    assert [d["tp"] for d in s["per_threshold"]] == [2, 2, 2, 2, 1, 1, 1, 1, 1, 1]
    assert s["f1_50"] == approx(0.8)
    assert s["pq"] == approx(2 / 3) and s["sq"] == approx(5 / 6)
    # foreground: true 200 px, pred 209 px, both 180 px
    assert s["foreground"] == {"intersection_px": 180, "true_px": 200, "pred_px": 209}
    assert s["dice"] == approx(360 / 409)
    assert s["jaccard"] == approx(180 / 229)
    json.dumps(s)  # plain Python types only


def test_custom_thresholds_and_missing_headline() -> None:
    pred, true = two_squares()
    s = segmentation_scores(pred, true, thresholds=np.arange(0.5, 0.75, 0.1))
    assert s["thresholds"] == [0.5, 0.6, 0.7]  # np.arange noise rounded away
    assert s["ap_50_95"] is None and s["ap_75"] is None
    assert s["ap_50"] == approx(2 / 3)


def test_relabelling_does_not_change_scores() -> None:
    pred, true = two_squares()
    base = segmentation_scores(pred, true)
    rng = np.random.default_rng(0)
    # huge ids exercise the np.unique path, small shuffled ids the look-up table path
    for new_ids in (rng.permutation(np.arange(1, 4)), np.array([2**40, 17, 2**33])):
        lut_p = {old: new for old, new in zip((2, 5, 9), new_ids)}
        p2 = np.zeros(pred.shape, dtype=np.uint64)
        for old, new in lut_p.items():
            p2[pred == old] = new
        t2 = np.where(true == 1, 60000, np.where(true == 2, 3, 0)).astype(np.uint16)
        assert segmentation_scores(p2, t2) == base
        # swapping the roles of truth and prediction swaps FP and FN only
        swapped = match_instances(t2, p2)
        assert (swapped.tp, swapped.fp, swapped.fn) == (2, 0, 1)


# ----------------------------------------------------------------------------- validation
def test_shape_mismatch_names_both_shapes() -> None:
    with pytest.raises(MechanoscopeError, match=r"\(20, 25\).*\(20, 24\)"):
        match_instances(np.zeros((20, 25), int), np.zeros((20, 24), int))


@pytest.mark.parametrize(
    ("labels", "message"),
    [
        (np.zeros((3, 3), dtype=float), "integer"),
        (np.full((3, 3), -1), "negative"),
        (np.zeros((3, 3), dtype=bool), "skimage.measure.label"),
    ],
)
def test_bad_labels_rejected(labels: np.ndarray, message: str) -> None:
    with pytest.raises(MechanoscopeError, match=message):
        segmentation_scores(labels, np.zeros((3, 3), int))


def test_bad_threshold_rejected() -> None:
    z = np.zeros((3, 3), int)
    with pytest.raises(MechanoscopeError, match=r"outside \(0, 1\]"):
        match_instances(z, z, iou_threshold=0.0)


# ----------------------------------------------------------------------------- pooling
def test_aggregate_sums_counts_over_images() -> None:
    a, b = segmentation_scores(*two_squares()), segmentation_scores(*split_object())
    pooled = aggregate_segmentation_scores([a, b])
    # at 0.5: image a TP2 FP1 FN0, image b TP1 FP1 FN0 -> TP3 FP2 FN0
    at50 = pooled["per_threshold"][0]
    assert (at50["tp"], at50["fp"], at50["fn"]) == (3, 2, 0)
    assert (pooled["n_images"], pooled["n_true"], pooled["n_pred"]) == (2, 3, 5)
    assert pooled["ap_50"] == approx(3 / 5)
    assert pooled["f1_50"] == approx(6 / 8)
    # SQ pooled over matched pairs: (1 + 2/3 + 0.6) / 3
    assert pooled["sq"] == approx((1 + 2 / 3 + 0.6) / 3)
    assert pooled["dice"] == approx(2 * 280 / (300 + 309))
    # pooled ratio, not the mean of per-image APs (2/3 and 1/2)
    assert pooled["ap_50"] != approx((2 / 3 + 1 / 2) / 2)
    assert segmentation_scores_dataset([two_squares(), split_object()]) == pooled


def test_aggregate_rejects_different_thresholds() -> None:
    a = segmentation_scores(*two_squares())
    b = segmentation_scores(*two_squares(), thresholds=[0.5])
    with pytest.raises(MechanoscopeError, match="same thresholds"):
        aggregate_segmentation_scores([a, b])


def test_per_image_table() -> None:
    table = segmentation_table(
        {"a": segmentation_scores(*two_squares()), "b": segmentation_scores(*split_object())}
    )
    assert isinstance(table, pd.DataFrame)
    assert table["image_id"].tolist() == ["a", "b"]
    assert table["ap_50"].tolist() == approx([2 / 3, 1 / 2])
    assert table["ap_80"].tolist() == approx([1 / 4, 0.0])
    assert table["n_pred"].tolist() == [3, 2]
    assert {"ap_50_95", "f1_50", "pq", "dice", "jaccard", "ap_95"} <= set(table.columns)


# ----------------------------------------------------------------------------- CLI
def _app() -> typer.Typer:
    app = typer.Typer()

    @app.callback()
    def _root() -> None:
        """test app"""

    register(app)
    return app


def test_cli_folders(tmp_path) -> None:
    pred_dir, true_dir = tmp_path / "pred", tmp_path / "true"
    (pa, ta), (pb, tb) = two_squares(), split_object()
    write_label_image(pred_dir / "a.tif", pa, pixel_size_um=1.0)
    write_label_image(true_dir / "a.tif", ta, pixel_size_um=1.0)
    write_label_image(pred_dir / "b.tif", pb, pixel_size_um=1.0)
    write_label_image(true_dir / "b.tif", tb, pixel_size_um=1.0)
    write_label_image(pred_dir / "c.tif", pb, pixel_size_um=1.0)  # no truth
    out = tmp_path / "scores.json"
    result = CliRunner().invoke(
        _app(),
        ["evaluate", "segmentation", str(pred_dir), str(true_dir), "--out", str(out)],
        env={"COLUMNS": "200"},
    )
    assert result.exit_code == 0, result.output
    assert "AP@0.5" in result.stdout and "PQ" in result.stdout
    assert "c.tif" in result.stderr
    data = json.loads(out.read_text())
    assert sorted(data["images"]) == ["a", "b"]
    assert data["images"]["a"]["ap_50"] == approx(2 / 3)
    assert data["pooled"]["ap_50"] == approx(3 / 5)
    assert data["unpaired_pred"] == [str(pred_dir / "c.tif")]
    assert data["unpaired_true"] == []


def test_cli_two_files_and_errors(tmp_path) -> None:
    pred, true = two_squares()
    write_label_image(tmp_path / "p.tif", pred, pixel_size_um=1.0)
    write_label_image(tmp_path / "t.tif", true, pixel_size_um=1.0)
    write_label_image(tmp_path / "small.tif", true[:10], pixel_size_um=1.0)
    runner, app = CliRunner(), _app()
    ok = runner.invoke(app, ["evaluate", "segmentation", str(tmp_path / "p.tif"), str(tmp_path / "t.tif")])
    assert ok.exit_code == 0, ok.output
    assert "0.667" in ok.stdout  # AP@0.5 = 2/3
    bad = runner.invoke(
        app, ["evaluate", "segmentation", str(tmp_path / "p.tif"), str(tmp_path / "small.tif")]
    )
    assert bad.exit_code == 2
    assert "(20, 25)" in bad.stderr and "(10, 25)" in bad.stderr
    (tmp_path / "x").mkdir()
    write_label_image(tmp_path / "x" / "other.tif", pred, pixel_size_um=1.0)
    nopair = runner.invoke(app, ["evaluate", "segmentation", str(tmp_path / "x"), str(tmp_path)])
    assert nopair.exit_code == 2
    assert "paired by file name" in nopair.stderr
    assert "Traceback" not in nopair.output


def test_no_overlapping_pair_gives_empty_matches_of_one_length():
    true = np.zeros((6, 8), np.int32)
    pred = np.zeros((6, 8), np.int32)
    true[0:2, 0:2] = 4
    pred[4:6, 5:8] = 9  # no pixel in common: no candidate pair at any threshold
    m = match_instances(pred, true, iou_threshold=0.5)
    assert (m.tp, m.fp, m.fn) == (0, 1, 1)
    assert m.ious.shape == m.true_ids.shape == m.pred_ids.shape == (0,)
    assert m.sum_matched_iou == 0.0
