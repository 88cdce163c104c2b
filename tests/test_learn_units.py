"""Numeric units of the learning layer against hand-computed values: data checks and splits,
crop normalisation, class weights, ensemble combination, epoch selection, and predict_cells on a
model whose network is a fixed linear layer (so probabilities and intervals are known exactly)."""

import math
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from mechanoscope.errors import MechanoscopeError
from mechanoscope.learn.data import check_target, crop_background, group_split, load_run, normalise_crops, resolve_task
from mechanoscope.learn.predict import StiffnessModel, predict_cells
from mechanoscope.learn.train import EarlyStopping, _batches, _class_weights, _combine_regression, best_epochs

FAST = settings(max_examples=60, deadline=None, derandomize=True)


# ----------------------------------------------------------------------- resolve_task
def test_resolve_task_rules():
    t = pd.DataFrame({
        "e": np.arange(11.0),
        "ten": np.r_[np.arange(10.0), np.nan],
        "flag": [True, False] * 5 + [True],
        "label": ["a", "b"] * 5 + ["a"],
        "code": np.arange(11) % 3,
        "stiffness_pa": [100.0, 200.0] * 5 + [100.0],
        "name": [f"cell{i}" for i in range(11)],  # 11 distinct texts
        "flag_pa": [True, False] * 5 + [True],  # booleans stay classes even with a _pa name
    })
    assert resolve_task(t, "name") == "classification"
    assert resolve_task(t, "flag_pa") == "classification"
    assert resolve_task(t, "stiffness_pa") == "regression"
    assert resolve_task(t, "e") == "regression"
    assert resolve_task(t, "ten") == "classification"  # NaN is not an 11th value
    assert resolve_task(t, "flag") == "classification"  # booleans are classes
    assert resolve_task(t, "label") == "classification"
    assert resolve_task(t, "code") == "classification"
    assert resolve_task(t, "label", "regression") == "regression"  # explicit task wins
    assert resolve_task(t, "e", "classification") == "classification"
    with pytest.raises(MechanoscopeError, match=r"'nope' is not in the cell table; available columns: e, ten, flag, label, code, stiffness_pa, name, flag_pa$"):
        resolve_task(t, "nope")


# ----------------------------------------------------------------------- check_target
def test_check_target_classification():
    t = pd.DataFrame({"y": ["b"] * 10 + ["a"] * 12 + [None, np.nan]})
    usable, classes = check_target(t, "y", "classification")  # default: 10 cells per class
    assert classes == ["a", "b"]
    np.testing.assert_array_equal(usable, [True] * 22 + [False, False])
    with pytest.raises(MechanoscopeError, match=r"too few cells in class\(es\) 'b': 10 of 'y' \(need at least 11 each"):
        check_target(t, "y", "classification", min_cells_per_class=11)
    t3 = pd.DataFrame({"y": ["b"] * 3 + ["a"] * 2 + ["c"] * 9})
    with pytest.raises(MechanoscopeError, match=r"'b': 3, 'a': 2 of 'y'"):
        check_target(t3, "y", "classification", min_cells_per_class=4)
    assert check_target(t3, "y", "classification", min_cells_per_class=2)[1] == ["a", "b", "c"]
    with pytest.raises(MechanoscopeError, match=r"'y' is constant \('a' for all 5 cells\)"):
        check_target(pd.DataFrame({"y": ["a"] * 5 + [None]}), "y", "classification", min_cells_per_class=1)
    with pytest.raises(MechanoscopeError, match=r"'y' holds no values \(all missing\)"):
        check_target(pd.DataFrame({"y": [None, None]}), "y", "classification")
    # numbers as classes: names are strings
    assert check_target(pd.DataFrame({"y": [1, 2] * 3}), "y", "classification", min_cells_per_class=3)[1] == ["1", "2"]


def test_check_target_regression():
    v = np.r_[np.linspace(1, 2, 20), np.nan, np.inf]
    t = pd.DataFrame({"stiffness_pa": v, "height": v - 5})
    usable, classes = check_target(t, "stiffness_pa", "regression")
    assert classes is None
    np.testing.assert_array_equal(usable, [True] * 20 + [False, False])  # NaN and inf dropped
    # negative values are fine for a target that is not a modulus
    assert check_target(t, "height", "regression")[0].sum() == 20
    for name in ("stiffness_pa", "cell_stiffness", "young_modulus", "e_pa"):
        bad = pd.DataFrame({name: np.r_[np.linspace(1, 2, 19), 0.0, -1.0]})
        with pytest.raises(MechanoscopeError, match=rf"'{name}' holds 2 non-positive stiffness values; a Young's modulus is > 0 Pa — fix or remove those cells"):
            check_target(bad, name, "regression")
    # exactly 2 × min_cells_per_class usable cells is enough, one fewer is not
    assert check_target(pd.DataFrame({"x": np.arange(8.0)}), "x", "regression", min_cells_per_class=4)[0].all()
    with pytest.raises(MechanoscopeError, match=r"only 7 cells have a value of 'x'; need at least 8"):
        check_target(pd.DataFrame({"x": np.r_[np.arange(7.0), np.nan]}), "x", "regression", min_cells_per_class=4)
    with pytest.raises(MechanoscopeError, match=r"only 19 cells"):
        check_target(pd.DataFrame({"x": np.arange(19.0)}), "x", "regression")  # default min 10 -> 20
    with pytest.raises(MechanoscopeError, match=r"'x' is constant; nothing to learn"):
        check_target(pd.DataFrame({"x": np.r_[np.full(20, 3.0), np.inf]}), "x", "regression")
    with pytest.raises(MechanoscopeError, match=r"'x' holds values that are not numbers"):
        check_target(pd.DataFrame({"x": ["1.5"] * 20 + ["soft"]}), "x", "regression")
    # numbers stored as text are read as numbers
    assert check_target(pd.DataFrame({"x": [str(i) for i in range(20)]}), "x", "regression")[0].all()
    with pytest.raises(MechanoscopeError, match="no values"):
        check_target(pd.DataFrame({"x": [np.nan] * 3}), "x", "regression")


# ----------------------------------------------------------------------- group_split
def _expected_counts(n, fracs):
    out, start = {}, 0
    for name, frac in fracs:
        k = int(round(frac * n))
        if frac > 0 and k == 0 and n - start > 1:
            k = 1
        k = max(0, min(k, n - start))
        out[name] = k
        start += k
    out["train"] = n - start
    return out


def test_group_split_hand_counts():
    groups = np.repeat(np.arange(10), 3)  # ints are fine
    s = group_split(groups, val_fraction=0.3, calibration_fraction=0.1, test_fraction=0.2, seed=0)
    per_group = pd.Series(s).groupby(groups).agg(lambda v: v.unique().tolist())
    assert all(len(v) == 1 for v in per_group)
    counts = pd.Series([v[0] for v in per_group]).value_counts().to_dict()
    assert counts == {"train": 4, "val": 3, "test": 2, "calibration": 1}
    # three groups, 10 % each: test and calibration get one group each (not 0), val none so one trains
    s = group_split(np.array(["a", "b", "c"]), val_fraction=0.1, calibration_fraction=0.1, test_fraction=0.1, seed=1)
    assert sorted(s) == ["calibration", "test", "train"]
    # a zero fraction stays zero
    s = group_split(np.array(["a", "b", "c"]), val_fraction=0.1, calibration_fraction=0.0, test_fraction=0.1, seed=1)
    assert sorted(s) == ["test", "train", "val"]
    # two groups: one test, the other must train
    s = group_split(np.array(["a", "b"]), val_fraction=0.1, calibration_fraction=0.1, test_fraction=0.1, seed=1)
    assert sorted(s) == ["test", "train"]
    with pytest.raises(MechanoscopeError, match=r"^only 1 groups: too few to split into train/val/calibration/test by group; add images or lower the split fractions$"):
        group_split(np.array(["a", "a"]), val_fraction=0.0, calibration_fraction=0.0, test_fraction=0.6, seed=0)
    # a single group with small fractions just trains
    assert group_split(np.array(["a", "a"]), val_fraction=0.1, calibration_fraction=0.1, test_fraction=0.1, seed=0).tolist() == ["train", "train"]
    with pytest.raises(MechanoscopeError, match=r"only 2 groups"):
        group_split(np.array(["a", "b"]), val_fraction=0.5, calibration_fraction=0.0, test_fraction=0.5, seed=0)


@settings(max_examples=40, deadline=None, derandomize=True)
@given(
    st.lists(st.integers(1, 4), min_size=2, max_size=30),
    st.sampled_from([0.0, 0.1, 0.15, 0.2]),
    st.sampled_from([0.0, 0.1, 0.2]),
    st.sampled_from([0.0, 0.1, 0.2, 0.3]),
    st.integers(0, 2**16),
    st.booleans(),
)
def test_group_split_properties(sizes, val, cal, test, seed, stratified):
    n_groups = len(sizes)
    groups = np.repeat([f"g{i:02d}" for i in range(n_groups)], sizes)
    cls = np.array(["a", "b", "c"])[np.arange(n_groups) % 3]  # one class per group
    y = np.repeat(cls, sizes)
    fracs = [("test", test), ("calibration", cal), ("val", val)]
    strata = [cls[cls == c] for c in sorted(set(cls))] if stratified else [cls]
    expected = {k: 0 for k in ("train", "val", "calibration", "test")}
    for stratum in strata:
        for k, v in _expected_counts(len(stratum), fracs).items():
            expected[k] += v
    kw = dict(val_fraction=val, calibration_fraction=cal, test_fraction=test, seed=seed, stratify=y if stratified else None)
    if expected["train"] == 0:
        with pytest.raises(MechanoscopeError, match="too few to split"):
            group_split(groups, **kw)
        return
    s = group_split(groups, **kw)
    assert len(s) == len(groups) and set(s) <= {"train", "val", "calibration", "test"}
    per_group = pd.Series(s).groupby(groups).nunique()
    assert (per_group == 1).all()  # no group on two sides
    of_group = pd.Series(s).groupby(groups).first()
    assert {k: int((of_group == k).sum()) for k in expected} == expected  # fractions honoured
    if stratified:  # each class stratum gets its own share
        for c in sorted(set(cls)):
            sel = of_group[[g for g, cc in zip(sorted(set(groups)), cls) if cc == c]]
            want = _expected_counts(int((cls == c).sum()), fracs)
            assert {k: int((sel == k).sum()) for k in want} == want
    np.testing.assert_array_equal(s, group_split(groups, **kw))  # deterministic by seed


def test_group_split_deals_each_class_separately():
    groups = np.repeat([f"g{i}" for i in range(9)], 2)
    y = np.repeat(list("abcabcabc"), 2)
    for seed in range(6):
        s = group_split(groups, val_fraction=0.34, calibration_fraction=0.0, test_fraction=0.34, seed=seed, stratify=y)
        for c in "abc":
            assert sorted(s[y == c][::2]) == ["test", "train", "val"]  # one group of each class per split


def test_group_split_depends_on_the_seed_and_strata_follow_the_majority_class():
    groups = np.repeat([f"g{i:02d}" for i in range(30)], 2)
    seen = {tuple(group_split(groups, val_fraction=0.2, calibration_fraction=0.1, test_fraction=0.2, seed=s)) for s in range(5)}
    assert len(seen) == 5
    # majority class decides a group's stratum: groups 0-5 mostly 'a' (one 'b' each), 6-11 'b'
    groups = np.repeat([f"g{i:02d}" for i in range(12)], 3)
    y = np.array([["a", "a", "b"]] * 6 + [["b", "b", "b"]] * 6).ravel()
    for seed in range(10):
        s = group_split(groups, val_fraction=0.0, calibration_fraction=0.0, test_fraction=0.5, seed=seed, stratify=y)
        of_group = pd.Series(s).groupby(groups).first()
        assert (of_group.iloc[:6] == "test").sum() == 3 and (of_group.iloc[6:] == "test").sum() == 3


# ----------------------------------------------------------------------- crops
def _border_crop():
    """4×5 intensity with distinct border values and a dark interior (any interior pixel taken
    for a border pixel moves the median); channel 1 unrelated."""
    x = np.full((4, 5), -1000.0)
    x[0, :] = [1, 2, 3, 4, 5]
    x[-1, :] = [6, 7, 8, 9, 10]
    x[1:-1, 0] = [11, 12]
    x[1:-1, -1] = [13, 14]
    return x


def test_crop_background_is_the_median_of_the_border():
    x = _border_crop()
    border = np.r_[x[0], x[-1], x[:, 0], x[:, -1]]  # top, bottom, left, right (corners twice)
    assert np.median(border) == 6.5
    crops = np.stack([np.stack([x, np.full_like(x, 5e4)]), np.stack([2 * x, np.zeros_like(x)])]).astype(np.float32)
    bg = crop_background(crops)
    assert bg.dtype == np.float32 and bg.shape == (2,)
    np.testing.assert_allclose(bg, [6.5, 13.0])
    # a zero background would divide by zero: it becomes 1; small or negative ones are kept
    z = np.zeros((3, 1, 3, 3), np.float32)
    z[1], z[2] = 0.5, -2.0
    np.testing.assert_array_equal(crop_background(z), [1.0, 0.5, -2.0])


def test_normalise_crops_hand_values_and_channel_order():
    x = _border_crop().astype(np.float32)
    mask = (x < -100).astype(np.float32)
    crops = np.stack([np.stack([x, mask])])
    out = normalise_crops(crops, ["intensity", "mask"], ["mask", "intensity"], 0.5)
    assert out.dtype == np.float32 and out.shape == (1, 2, 4, 5)
    np.testing.assert_array_equal(out[0, 0], mask)
    np.testing.assert_allclose(out[0, 1], (x / 6.5 - 1) / 0.5, rtol=1e-6)
    only_mask = normalise_crops(crops, ["intensity", "mask"], ["mask"], 0.5)
    np.testing.assert_array_equal(only_mask[0, 0], mask)
    with pytest.raises(MechanoscopeError, match=r"\['phase'\] needed by the model are not in the crop store \(it has \['intensity', 'mask'\]\); re-extract"):
        normalise_crops(crops, ["intensity", "mask"], ["intensity", "phase"], 1.0)


def test_load_run_reads_table_and_crops(tmp_path):
    from mechanoscope.io.crop_store import write_crop_store

    run = tmp_path / "run"
    with pytest.raises(MechanoscopeError, match=r"no cells.parquet; run `mechanoscope extract IMAGES LABELS --out .*run` first \(or pass a run folder that holds a cell table and crops\)$"):
        load_run(run)
    run.mkdir()
    table = pd.DataFrame({"image_id": ["i0", "i0", "i1"], "cell_id": [1, 2, 1], "y": [1.0, 2.0, 3.0]})
    table.to_parquet(run / "cells.parquet", index=False)
    crops = np.arange(3 * 2 * 4 * 4, dtype=np.float32).reshape(3, 2, 4, 4)
    write_crop_store(run / "crops.zarr", crops, image_ids=table.image_id.to_numpy(), cell_ids=table.cell_id.to_numpy(), crop_size_um=8.0, crop_pixels=4, channels=["intensity", "mask"])
    d = load_run(run)
    pd.testing.assert_frame_equal(d.table, table)
    assert d.crops.dtype == np.float32
    np.testing.assert_array_equal(d.crops, crops)
    assert d.channels == ["intensity", "mask"] and d.attrs["crop_size_um"] == 8.0 and d.path == run
    lite = load_run(str(run), with_crops=False)
    assert lite.crops.shape == (3, 0, 0, 0) and lite.crops.dtype == np.float32
    assert lite.channels == [] and lite.attrs == {} and lite.path == run
    pd.testing.assert_frame_equal(lite.table, table)
    table.iloc[::-1].to_parquet(run / "cells.parquet", index=False)  # reordered after extraction
    with pytest.raises(MechanoscopeError, match="reordered"):
        load_run(run)


# ----------------------------------------------------------------------- train helpers
def test_class_weights_are_inverse_frequency():
    y = np.array([0] * 6 + [1] * 2 + [2] * 4)
    w = _class_weights(y, 3)
    assert w.dtype == np.float32
    np.testing.assert_allclose(w, [12 / 6 / 3, 12 / 2 / 3, 12 / 4 / 3], rtol=1e-6)  # [2/3, 2, 1]
    counts = np.bincount(y)
    np.testing.assert_allclose(w * counts, [4, 4, 4], rtol=1e-6)  # every class weighs N/K in total
    # a class absent from the training labels gets weight N/K (count floored at 1), no division by 0
    np.testing.assert_allclose(_class_weights(np.array([0, 0, 0, 1]), 3), [4 / 3 / 3, 4 / 3, 4 / 3], rtol=1e-6)
    np.testing.assert_allclose(_class_weights(np.array([1, 1]), 2), [1.0, 0.5], rtol=1e-6)


def test_combine_regression_by_hand():
    # K=2 members, N=3 cells, one output (MSE): ensemble mean and population spread
    outs = np.array([[[1.0], [0.0], [2.0]], [[3.0], [0.0], [-2.0]]])
    mu, sd = _combine_regression(outs, "mse")
    np.testing.assert_allclose(mu, [2.0, 0.0, 0.0])
    np.testing.assert_allclose(sd, [1.0, 1e-6, 2.0])  # |a-b|/2; a zero spread is floored at sqrt(1e-12)
    # one member, MSE: no spread
    mu, sd = _combine_regression(outs[:1], "mse")
    np.testing.assert_allclose(mu, [1.0, 0.0, 2.0])
    assert sd is None
    # one member, Gaussian: sd = sqrt(exp(log-variance output))
    g1 = np.array([[[0.5, math.log(4.0)], [1.0, math.log(0.25)]]])
    mu, sd = _combine_regression(g1, "gaussian")
    np.testing.assert_allclose(mu, [0.5, 1.0])
    np.testing.assert_allclose(sd, [2.0, 0.5])
    # two Gaussian members: mean aleatoric variance + variance of the means
    g2 = np.array([[[0.0, math.log(1.0)]], [[2.0, math.log(3.0)]]])
    mu, sd = _combine_regression(g2, "gaussian")
    np.testing.assert_allclose(mu, [1.0])
    np.testing.assert_allclose(sd, [math.sqrt((1 + 3) / 2 + 1.0)])


def test_best_epochs_and_early_stopping_rules():
    log = pd.DataFrame({
        "member": [0, 0, 0, 0, 1, 1, 1],
        "epoch": [1, 2, 3, 4, 1, 2, 3],
        "val_loss": [0.5, 0.3, 0.3 - 1e-7, 0.1, 0.2, 0.2 - 5e-7, 0.3],
    })
    # member 0: best 0.1 at epoch 4 (0.3 - 1e-7 is no improvement); member 1: epoch 1 (a 5e-7 gain is not one)
    assert best_epochs(log, 2) == [4, 1]
    assert best_epochs(log[log.member == 1].assign(val_loss=[np.nan] * 3), 1) == [1]
    assert best_epochs(pd.DataFrame({"member": [0, 0], "epoch": [1, 2], "val_loss": [0.2, 0.2 - 2e-6]}), 1) == [2]

    s = EarlyStopping(epochs=10, patience=2)  # stale epochs count from epoch 7 on
    assert s.anneal_start == 6
    results = [s.update(v) for v in [1.0, 0.9, 0.95, 0.95, 0.95, 0.95, 0.95, 0.9 - 5e-7]]
    assert [r[0] for r in results] == [True, True, False, False, False, False, False, False]
    assert [r[1] for r in results] == [False] * 7 + [True]  # epochs 7 and 8 are stale -> stop
    assert s.best == 0.9 and s.epoch == 8
    s = EarlyStopping(epochs=5, patience=1)  # anneal_start = 3
    assert [s.update(v)[1] for v in [1.0, 2.0, 2.0, 2.0]] == [False, False, False, True]
    s = EarlyStopping(epochs=5, patience=1)
    assert [s.update(v) for v in [1.0, 2.0, 2.0, 0.5, 2.0]][-2:] == [(True, False), (False, True)]


def test_batches_cover_every_row_once():
    assert list(_batches(10, 4)) == [slice(0, 4), slice(4, 8), slice(8, 10)]
    assert list(_batches(8, 4)) == [slice(0, 4), slice(4, 8)]
    assert list(_batches(0, 4)) == []
    assert list(_batches(3, 5)) == [slice(0, 3)]


# ----------------------------------------------------------------------- predict_cells by hand
PXL = 3


def _linear(weights: dict[int, list[float]], bias: list[float], n_in: int):
    """Flatten + Linear with every weight zero except input pixel i -> weights[i] (one per output)."""
    import torch

    lin = torch.nn.Linear(n_in, len(bias))
    with torch.no_grad():
        lin.weight.zero_()
        for i, w in weights.items():
            lin.weight[:, i] = torch.tensor(w)
        lin.bias[:] = torch.tensor(bias)
    return torch.nn.Sequential(torch.nn.Flatten(), lin).eval()


def _hand_crops(v):
    """Intensity 100 everywhere except the centre 100·(1 + 0.5 v): relative contrast / 0.5 = v at the centre.
    Mask channel: the value 7 at the centre (a network reading the wrong channel sees 7, not v)."""
    v = np.asarray(v, dtype=np.float64)
    crops = np.full((len(v), 2, PXL, PXL), 100.0)
    crops[:, 0, 1, 1] = 100 * (1 + 0.5 * v)
    crops[:, 1] = 0.0
    crops[:, 1, 1, 1] = 7.0
    return crops.astype(np.float32)


def _model(members, **cfg):
    base = dict(model_type="cnn", crop_pixels=PXL, crop_size_um=3.0, pixel_size_um_of_crop=1.0, tta=False)
    base.update(cfg)
    return StiffnessModel(Path("hand"), base, {"contrast_scale": 0.5}, members)


V = np.array([-2.0, -0.5, 0.0, 1.0, 3.0])


def _sigmoid(x):
    return 1 / (1 + np.exp(-x))


def test_predict_cells_classification_applies_the_temperature():
    # member logits [0, a·v + b]: (a, b) = (1, 0) and (3, 0.4) -> mean logit difference 2v + 0.2
    members = [_linear({4: [0.0, 1.0]}, [0.0, 0.0], 9), _linear({4: [0.0, 3.0]}, [0.0, 0.4], 9)]
    cfg = dict(task="classification", target="label", classes=["soft", "stiff"], channels=["intensity"])
    table = pd.DataFrame({"cell_id": range(len(V))}, index=[10, 11, 12, 13, 14])
    seen = []
    out = predict_cells(_model(members, temperature=2.0, **cfg), table, _hand_crops(V), channels=["intensity", "mask"], attrs={"crop_size_um": 3.0}, batch_size=2, progress=lambda d, n: seen.append((d, n)))
    p = _sigmoid((2 * V + 0.2) / 2.0)  # softmax of logits / T
    assert list(out.index) == [10, 11, 12, 13, 14]
    np.testing.assert_allclose(out["pred_prob_stiff"], p, rtol=1e-5)
    np.testing.assert_allclose(out["pred_prob_soft"], 1 - p, rtol=1e-5)
    np.testing.assert_allclose(out["pred_confidence"], np.maximum(p, 1 - p), rtol=1e-5)
    assert out["pred_label"].tolist() == ["soft", "soft", "stiff", "stiff", "stiff"]
    assert seen == [(2, 5), (4, 5), (5, 5)]
    # without a stored temperature: T = 1
    plain = predict_cells(_model(members, **cfg), table, _hand_crops(V), channels=["intensity", "mask"])
    np.testing.assert_allclose(plain["pred_prob_stiff"], _sigmoid(2 * V + 0.2), rtol=1e-5)
    # three classes, T = 0.5
    m3 = [_linear({4: [1.0, 0.0, -1.0]}, [0.0, 0.5, 0.0], 9)]
    out3 = predict_cells(_model(m3, task="classification", target="label", classes=["a", "b", "c"], channels=["intensity"], temperature=0.5), table, _hand_crops(V), channels=["intensity", "mask"])
    z = np.stack([V, np.full_like(V, 0.5), -V], 1) / 0.5
    ref = np.exp(z) / np.exp(z).sum(1, keepdims=True)
    np.testing.assert_allclose(out3[["pred_prob_a", "pred_prob_b", "pred_prob_c"]].to_numpy(), ref, rtol=1e-5)
    assert out3["pred_label"].tolist() == list(np.array(["a", "b", "c"])[ref.argmax(1)])


def test_predict_cells_regression_log_target_interval_in_pa():
    # two members reading the intensity centre (input 9 + 4 after the mask channel): mu_k = c_k v + d_k
    members = [_linear({13: [1.0]}, [0.1], 18), _linear({13: [0.5]}, [-0.1], 18)]
    cfg = dict(task="regression", target="afm_stiffness_pa", channels=["mask", "intensity"], log_target=True, target_mean=3.0, target_std=0.5, conformal_quantile=1.2, loss="mse")
    table = pd.DataFrame({"cell_id": range(len(V))})
    crops = _hand_crops(V)
    mu = (1.0 * V + 0.1 + 0.5 * V - 0.1) / 2
    sd = np.maximum(np.abs((1.0 * V + 0.1) - (0.5 * V - 0.1)) / 2, 1e-6)
    out = predict_cells(_model(members, conformal_scaled=True, **cfg), table, crops, channels=["intensity", "mask"])
    assert set(out.columns) == {"pred_stiffness_pa", "pred_lo_pa", "pred_hi_pa", "pred_log10_sd", "pred_interval_calibrated"}
    assert not out["pred_interval_calibrated"].any()  # this hand-made model has no domain reference: no claim of calibration
    np.testing.assert_allclose(out["pred_stiffness_pa"], 10 ** (mu * 0.5 + 3.0), rtol=1e-5)
    np.testing.assert_allclose(out["pred_lo_pa"], 10 ** ((mu - 1.2 * sd) * 0.5 + 3.0), rtol=1e-5)
    np.testing.assert_allclose(out["pred_hi_pa"], 10 ** ((mu + 1.2 * sd) * 0.5 + 3.0), rtol=1e-5)
    np.testing.assert_allclose(out["pred_log10_sd"], sd * 0.5, rtol=1e-5)
    # a fold interval, symmetric on log10 E: log10(hi/lo) = 2 q · sd(log10 E)
    np.testing.assert_allclose(np.log10(out.pred_hi_pa / out.pred_lo_pa), 2 * 1.2 * out.pred_log10_sd, rtol=1e-5)
    # unscaled conformal scores: the interval half-width is q in standardised units whatever the spread
    out = predict_cells(_model(members, conformal_scaled=False, **cfg), table, crops, channels=["intensity", "mask"])
    np.testing.assert_allclose(out["pred_lo_pa"], 10 ** ((mu - 1.2) * 0.5 + 3.0), rtol=1e-5)
    np.testing.assert_allclose(out["pred_hi_pa"], 10 ** ((mu + 1.2) * 0.5 + 3.0), rtol=1e-5)
    np.testing.assert_allclose(out["pred_log10_sd"], sd * 0.5, rtol=1e-5)


def test_predict_cells_regression_linear_target_and_gaussian_spread():
    # one Gaussian member: outputs (mu, log variance) = (v, 2 ln 2 · v)  -> sd = 2**v
    members = [_linear({4: [1.0, 2 * math.log(2.0)]}, [0.0, 0.0], 9)]
    cfg = dict(task="regression", target="height_um", channels=["intensity"], log_target=False, target_mean=5.0, target_std=2.0, conformal_quantile=0.8, loss="gaussian", conformal_scaled=True)
    out = predict_cells(_model(members, **cfg), pd.DataFrame({"i": range(len(V))}), _hand_crops(V), channels=["intensity", "mask"])
    sd = 2.0**V
    assert set(out.columns) == {"pred_height_um", "pred_lo_value", "pred_hi_value", "pred_log10_sd", "pred_interval_calibrated"}
    np.testing.assert_allclose(out["pred_height_um"], V * 2 + 5, rtol=1e-5)
    np.testing.assert_allclose(out["pred_lo_value"], (V - 0.8 * sd) * 2 + 5, rtol=1e-5)
    np.testing.assert_allclose(out["pred_hi_value"], (V + 0.8 * sd) * 2 + 5, rtol=1e-5)
    # one MSE member: no spread, width q
    single = [_linear({4: [1.0]}, [0.0], 9)]
    cfg.update(loss="mse", target="stiffness_pa", log_target=True)
    out = predict_cells(_model(single, **cfg), pd.DataFrame({"i": range(len(V))}), _hand_crops(V), channels=["intensity", "mask"])
    assert set(out.columns) == {"pred_stiffness_pa", "pred_lo_pa", "pred_hi_pa", "pred_interval_calibrated"}
    np.testing.assert_allclose(out["pred_lo_pa"] * 10 ** (2 * 0.8 * 2.0), out["pred_hi_pa"], rtol=1e-5)
    np.testing.assert_allclose(out["pred_stiffness_pa"], 10 ** (V * 2 + 5), rtol=1e-5)


def test_predict_cells_refuses_crops_that_do_not_fit():
    members = [_linear({4: [0.0, 1.0]}, [0.0, 0.0], 9)]
    m = _model(members, task="classification", target="label", classes=["soft", "stiff"], channels=["intensity"])
    t = pd.DataFrame({"i": range(2)})
    with pytest.raises(MechanoscopeError, match="needs the crops"):
        predict_cells(m, t, None)
    with pytest.raises(MechanoscopeError, match=r"crops are \(4, 4\) px but the model expects 3×3 px; re-extract with --crop-pixels 3 --crop-size-um 3.0"):
        predict_cells(m, t, np.ones((2, 2, 4, 4), np.float32), channels=["intensity", "mask"])
    with pytest.raises(MechanoscopeError, match=r"crops cover 6.0 µm but the model was trained on 3.0 µm crops"):
        predict_cells(m, t, _hand_crops([0, 1]), channels=["intensity", "mask"], attrs={"crop_size_um": 6.0})
    with pytest.raises(MechanoscopeError, match=r"\['intensity'\] needed by the model are missing"):
        predict_cells(m, t, _hand_crops([0, 1]), channels=["phase", "mask"])


def test_networks_run_on_the_device_asked_for():
    import torch

    from mechanoscope.errors import ConfigError
    from mechanoscope.learn.config import TrainConfig
    from mechanoscope.learn.train import predict_outputs, train_networks

    members = [_linear({4: [0.0, 1.0]}, [0.0, 0.0], 9)]
    cfg = dict(task="classification", target="label", classes=["soft", "stiff"], channels=["intensity"])
    table = pd.DataFrame({"cell_id": range(len(V))})
    cpu = predict_cells(_model(members, **cfg), table, _hand_crops(V), channels=["intensity", "mask"], device="cpu")
    np.testing.assert_allclose(cpu["pred_prob_stiff"], _sigmoid(V), rtol=1e-5)
    x = np.random.default_rng(0).normal(size=(12, 1, 8, 8)).astype(np.float32)
    y = np.arange(12) % 2
    if not torch.cuda.is_available():
        # asking for a GPU that is not there fails before any work, saying what to use instead
        with pytest.raises(ConfigError, match="no CUDA GPU"):
            predict_cells(_model(members, **cfg), table, _hand_crops(V), channels=["intensity", "mask"], device="cuda")
        with pytest.raises(ConfigError, match="no CUDA GPU"):
            train_networks(x, y, x, y, task="classification", n_outputs=2, config=TrainConfig(target="label", epochs=1, device="cuda", width=4))
        with pytest.raises(ConfigError, match="not known"):
            predict_outputs(members, x[:, :, :3, :3].reshape(12, 1, 3, 3), device="tpu")
        return
    # on a GPU: the same numbers as on the CPU, and trained networks come back on the CPU
    gpu = predict_cells(_model(members, **cfg), table, _hand_crops(V), channels=["intensity", "mask"], device="cuda")
    np.testing.assert_allclose(gpu["pred_prob_stiff"], cpu["pred_prob_stiff"], rtol=1e-4)
    nets, log = train_networks(x, y, x, y, task="classification", n_outputs=2, config=TrainConfig(target="label", epochs=2, device="cuda", width=4))
    assert all(p.device.type == "cpu" for p in nets[0].parameters()) and np.isfinite(log["val_loss"]).all()
