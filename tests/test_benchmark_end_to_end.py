"""benchmarks/end_to_end.py: its JSON has the promised structure and the relations that must hold.

One tiny run (small fields, 1 epoch) is shared by the tests; a segmenter that finds nothing
is forced on the dim set, and a segmenter that returns the true masks with other ids is
scored against the true masks.
"""

from __future__ import annotations

import importlib.util
import math
from pathlib import Path

import numpy as np
import pytest

from mechanoscope.io import read_image, read_label_image
from mechanoscope.learn.predict import load_stiffness_model

BENCH = Path(__file__).resolve().parents[1] / "benchmarks" / "end_to_end.py"
TINY = dict(train_images=10, test_images=2, size_px=256, epochs=1, max_train_seconds=5.0, threads=1, tta=False)


def _load():
    spec = importlib.util.spec_from_file_location("bench_end_to_end", BENCH)
    mod = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(mod)
    return mod


def _nothing(plane, px):
    return np.zeros(plane.shape, dtype=np.int32)


@pytest.fixture(scope="module")
def bench():
    return _load()


@pytest.fixture(scope="module")
def result(bench, tmp_path_factory):
    root = tmp_path_factory.mktemp("e2e")
    out = bench.run_benchmark(root, **TINY, extra_segmenters={"dim": {"nothing": _nothing}})
    return out, root


def _methods(out):
    for set_name, tasks in out["sets"].items():
        for task, methods in tasks.items():
            for method, s in methods.items():
                yield set_name, task, method, s


def test_structure_every_set_task_and_method(bench, result):
    out, _ = result
    assert set(out["sets"]) == {"normal", "dim", "uneven_illumination"}
    assert out["settings"]["sets"]["dim"] == {"camera": {"photons_per_pixel": 1000.0}}
    for set_name, tasks in out["sets"].items():
        assert set(tasks) == {"classification", "regression"}
        for task, methods in tasks.items():
            expected = {"true_masks", "builtin", "classical"} | ({"nothing"} if set_name == "dim" else set())
            assert set(methods) == expected
            assert set(out["summary"][set_name][task]) == expected
    for _, task, method, s in _methods(out):
        assert {"figures", "cells", "images", "conditions", "seconds"} <= set(s)
        keys = {"auc", "f1"} if task == "classification" else {"ape_mean_pct", "ape_median_pct"}
        if s["figures"] is not None:
            assert keys <= set(s["figures"])
        if method != "true_masks":
            assert set(s["ratio_to_true_masks"]) == keys
            assert set(s["within_1.1x_of_true_masks"]) == keys
    assert out["settings"]["segmenters"]["builtin"]["method"] == "builtin"


def test_test_experiments_use_other_seeds_than_training(result):
    seeds = result[0]["settings"]["seeds"]
    train = set(seeds["train"].values())
    test = [s for v in seeds["test"].values() for s in v.values()]
    assert len(set(test)) == len(test) and not train & set(test)


def test_true_mask_figures_are_computed_on_the_true_cells(result):
    out, root = result
    for set_name, task, method, s in _methods(out):
        if method != "true_masks":
            continue
        labels = sorted((root / f"test_{set_name}_{task}" / "labels").glob("*.tif"))
        n_true = sum(len(np.setdiff1d(np.unique(read_label_image(p).data), [0])) for p in labels)
        c = s["cells"]
        assert c["n_true"] == n_true == c["n_matched"] == c["n_segmented"] and c["fraction_true_matched"] == 1.0
        assert s["figures"]["n_cells"] == (c["n_qc_pass"] if task == "classification" else c["n_scored_matched_qc_pass"])
        assert s["images"]["n_lost"] == 0 and s["conditions"]["lost"] == []


def test_counts_fractions_and_ratios_are_consistent(result):
    out, _ = result
    for set_name, task, method, s in _methods(out):
        c, im, cond = s["cells"], s["images"], s["conditions"]
        assert c["n_matched"] <= c["n_true"] and c["n_matched"] <= c["n_segmented"]
        assert c["n_scored_matched_qc_pass"] <= min(c["n_qc_pass"], c["n_matched"])
        for frac in (c["fraction_true_matched"], c["fraction_segmented_matched"], im["fraction_lost"], cond["fraction_lost"]):
            assert frac is None or 0.0 <= frac <= 1.0
        assert im["n"] == 2 and im["n_lost"] == len(im["lost"]) and math.isclose(im["fraction_lost"], im["n_lost"] / im["n"])
        assert set(im["lost_not_flagged_by_qc"]) <= set(im["lost"])
        assert set(cond["lost"]) <= set(cond["names"])
        assert cond["names"] == (["soft", "stiff"] if task == "classification" else ["all"])
        if method == "true_masks":
            continue
        ref = out["sets"][set_name][task]["true_masks"]["figures"]
        for k, r in s["ratio_to_true_masks"].items():
            v = (s["figures"] or {}).get(k)
            if v is None or ref.get(k) in (None, 0):
                assert r is None and s["within_1.1x_of_true_masks"][k] is False
                continue
            assert math.isclose(r, v / ref[k], rel_tol=1e-3)
            assert s["within_1.1x_of_true_masks"][k] == (r >= 1 / 1.1 if k in ("auc", "f1") else r <= 1.1)
        same = s["true_masks_on_the_same_cells"]
        if same is not None and s["figures"] is not None and task == "regression":
            assert same["n_cells"] <= s["figures"]["n_cells"]


def test_a_segmenter_that_finds_nothing_loses_every_dim_image_and_condition(result):
    out, _ = result
    s = out["sets"]["dim"]["classification"]["nothing"]
    assert s["figures"] is None and s["cells"]["n_matched"] == 0 and s["cells"]["fraction_true_matched"] == 0.0
    assert s["images"]["n_lost"] == s["images"]["n"] == 2 and s["images"]["fraction_lost"] == 1.0
    assert set(s["images"]["lost"]) == {"img_0000", "img_0001"}
    assert all(r == "segmentation found no cell" for r in s["images"]["lost"].values())
    assert set(s["images"]["flagged_by_qc"]) == set(s["images"]["lost"]) and s["images"]["lost_not_flagged_by_qc"] == []
    assert s["conditions"]["lost"] == ["soft", "stiff"] and s["conditions"]["lost_by_qc"] == ["soft", "stiff"]
    assert s["conditions"]["fraction_lost"] == 1.0
    r = out["sets"]["dim"]["regression"]["nothing"]
    assert r["images"]["fraction_lost"] == 1.0 and r["conditions"]["lost"] == ["all"]
    assert out["summary"]["dim"]["classification"]["nothing"]["images_lost"] == 2


def test_true_masks_with_other_ids_score_exactly_like_the_true_masks(bench, result):
    """The matching pairs each segmented cell with its own true cell and truth (not by id)."""
    _, root = result
    sim = root / "test_normal_regression"
    planes = {p.stem: (read_image(p).data, read_label_image(sim / "labels" / p.name).data) for p in sorted((sim / "images").glob("*.tif"))}

    def shuffled_truth(plane, px):
        true = next(lab for img, lab in planes.values() if np.array_equal(np.asarray(img, dtype=float).squeeze(), np.asarray(plane, dtype=float)))
        ids = np.unique(true)[1:]
        new = np.zeros(int(true.max()) + 1, dtype=np.int64)
        new[ids] = 1000 + np.random.default_rng(0).permutation(len(ids))
        return new[true]

    model = load_stiffness_model(root / "model_regression")
    s = bench.score_experiment(sim, "regression", model, {"shuffled": shuffled_truth})
    assert s["shuffled"]["cells"]["fraction_true_matched"] == 1.0
    assert s["shuffled"]["figures"]["n_cells"] == s["true_masks"]["figures"]["n_cells"] > 0
    assert math.isclose(s["shuffled"]["figures"]["ape_mean_pct"], s["true_masks"]["figures"]["ape_mean_pct"], rel_tol=1e-4)
    assert s["shuffled"]["ratio_to_true_masks"]["ape_mean_pct"] == pytest.approx(1.0, rel=1e-3)
