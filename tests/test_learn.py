"""Stiffness/phenotype learning: training, splits, uncertainty, model folders, bad input."""

import json
from pathlib import Path

import numpy as np
import pandas as pd
import pytest

from mechanoscope.io.crop_store import write_crop_store
from mechanoscope.errors import MechanoscopeError
from mechanoscope.learn.config import TrainConfig
from mechanoscope.learn.data import group_split, load_run
from mechanoscope.io.model_folder import ModelFolderError, ModelSchemaError
from mechanoscope.learn.predict import load_stiffness_model, predict_cells
from mechanoscope.learn.train import train_model
from mechanoscope.learn.uncertainty import conformal_interval, conformal_quantile, expected_calibration_error, fit_temperature

PX = 32


def _toy_run(folder: Path, n_images: int = 16, per_image: int = 14, seed: int = 0, crop_px: int = PX) -> Path:
    """Crops of one disk each: 'stiff' cells are large flat disks, 'soft' small bright domes.

    Each image holds one class (like one dish per condition); the modulus grows with
    the disk radius, so both a classifier and a regressor have something to learn.
    """
    rng = np.random.default_rng(seed)
    yy, xx = np.mgrid[:crop_px, :crop_px] - (crop_px - 1) / 2
    rows, crops = [], []
    for i in range(n_images):
        cls = ["soft", "stiff"][i % 2]
        for j in range(per_image):
            r = rng.uniform(4, 7) if cls == "soft" else rng.uniform(9, 12)
            r *= crop_px / 32
            d = np.hypot(yy + rng.normal(0, 1), xx + rng.normal(0, 1)) / r
            mask = (d < 1).astype(np.float32)
            height = np.clip(1 - d**2, 0, None) * (2.0 if cls == "soft" else 0.7)
            inten = 1000 * (1 + 0.3 * height + rng.normal(0, 0.02, d.shape))
            crops.append(np.stack([inten, mask]).astype(np.float32))
            e = 10 ** (1.5 + 0.15 * r + rng.normal(0, 0.05))
            rows.append({"image_id": f"img_{i:02d}", "cell_id": j + 1, "label": cls, "stiffness_pa": e, "area_um2": float(mask.sum()), "solidity": 1.0, "qc_pass": True})
    table = pd.DataFrame(rows)
    folder.mkdir(parents=True, exist_ok=True)
    table.to_parquet(folder / "cells.parquet", index=False)
    write_crop_store(folder / "crops.zarr", np.stack(crops), image_ids=table.image_id.to_numpy(), cell_ids=table.cell_id.to_numpy(), crop_size_um=float(crop_px), crop_pixels=crop_px, channels=["intensity", "mask"])
    return folder


@pytest.fixture(scope="module")
def toy_run(tmp_path_factory):
    return _toy_run(tmp_path_factory.mktemp("toy") / "run")


def _cfg(**kw):
    base = dict(target="label", epochs=2, batch_size=32, width=8, num_threads=1, seed=0, min_cells_per_class=5)
    base.update(kw)
    return TrainConfig.build(**base)


@pytest.fixture(scope="module")
def trained_classifier(toy_run, tmp_path_factory):
    out = tmp_path_factory.mktemp("m") / "cls"
    return train_model(toy_run, _cfg(epochs=4, learning_rate=5e-3), out)


def test_two_epoch_training_learns_a_separable_toy(trained_classifier):
    test = trained_classifier.metrics["test"]
    assert test["n"] > 20
    assert test["auc"] > 0.8 and test["accuracy"] > 0.7  # chance: 0.5


def test_splits_never_share_a_group(trained_classifier, toy_run):
    table = pd.read_parquet(toy_run / "cells.parquet")
    per_group = trained_classifier.split.groupby(table["image_id"]).nunique()
    assert (per_group == 1).all()
    assert set(trained_classifier.split) == {"train", "val", "calibration", "test"}
    split = json.loads((trained_classifier.model_dir / "split.json").read_text())
    groups = [set(v) for v in split["groups"].values()]
    assert sum(len(g) for g in groups) == len(set().union(*groups)) == table.image_id.nunique()


def test_group_split_is_stratified_and_seeded():
    groups = np.repeat([f"g{i}" for i in range(20)], 5)
    y = np.repeat(["a", "b"] * 10, 5)
    s1 = group_split(groups, val_fraction=0.2, calibration_fraction=0.0, test_fraction=0.2, seed=3, stratify=y)
    s2 = group_split(groups, val_fraction=0.2, calibration_fraction=0.0, test_fraction=0.2, seed=3, stratify=y)
    np.testing.assert_array_equal(s1, s2)
    for name in ("train", "val", "test"):
        assert set(y[s1 == name]) == {"a", "b"}
    with pytest.raises(MechanoscopeError, match="too few"):
        group_split(np.array(["a", "b"]), val_fraction=0.3, calibration_fraction=0.3, test_fraction=0.3, seed=0)


def test_save_load_gives_identical_predictions_and_matches_metrics(trained_classifier, toy_run):
    data = load_run(toy_run)
    a = predict_cells(load_stiffness_model(trained_classifier.model_dir), data.table, data.crops, channels=data.channels, attrs=data.attrs)
    b = predict_cells(load_stiffness_model(trained_classifier.model_dir), data.table, data.crops, channels=data.channels, attrs=data.attrs, batch_size=7)
    pd.testing.assert_frame_equal(a, b, check_exact=False, rtol=1e-5)
    assert np.allclose(a["pred_prob_soft"] + a["pred_prob_stiff"], 1)
    # the test metrics were computed from the temperature-scaled probabilities that predict_cells returns
    # (the toy AUC is 1.0 whatever the temperature, so compare the probabilities through Brier score and ECE)
    test = (trained_classifier.split == "test").to_numpy()
    m = trained_classifier.metrics["test"]
    p = a.pred_prob_stiff[test].to_numpy()
    y = (data.table.label[test] == "stiff").to_numpy()
    assert np.mean((p - y) ** 2) == pytest.approx(m["brier"], rel=1e-5)
    prob = a[["pred_prob_soft", "pred_prob_stiff"]][test].to_numpy()
    assert expected_calibration_error(prob, y.astype(int)) == pytest.approx(m["ece"], rel=1e-5)
    t = json.loads((trained_classifier.model_dir / "config.json").read_text())["temperature"]
    assert abs(np.log(t)) > 0.1  # a temperature that matters, so the checks above can tell T from 1
    p1 = 1 / (1 + np.exp(-t * np.log(p / (1 - p))))  # the same logits at T = 1
    assert expected_calibration_error(np.stack([1 - p1, p1], 1), y.astype(int)) == pytest.approx(m["ece_uncalibrated"], rel=1e-4)
    assert abs(np.mean((p1 - y) ** 2) - m["brier"]) > 1e-3
    aug = json.loads((trained_classifier.model_dir / "config.json").read_text())["train_config"]["augment"]
    assert (aug["intensity_scale"], aug["gamma"], aug["blur_sigma_px"]) == (0.15, 0.15, 0.7)  # classification defaults
    files = {p.name for p in trained_classifier.model_dir.iterdir()}
    assert {"config.json", "weights.safetensors", "normalization.json", "metrics.json", "provenance.json", "MODEL_CARD.md", "training_log.csv", "split.json"} <= files


def test_same_seed_same_model(toy_run, tmp_path):
    from safetensors.torch import load_file

    a = train_model(toy_run, _cfg(epochs=1), tmp_path / "a")
    b = train_model(toy_run, _cfg(epochs=1), tmp_path / "b")
    c = train_model(toy_run, _cfg(epochs=1, seed=1), tmp_path / "c")
    wa, wb, wc = (load_file(str(m.model_dir / "weights.safetensors")) for m in (a, b, c))
    assert all(np.array_equal(wa[k].numpy(), wb[k].numpy()) for k in wa)
    assert any(not np.array_equal(wa[k].numpy(), wc[k].numpy()) for k in wa)


def test_regression_ensemble_with_conformal_intervals(toy_run, tmp_path):
    res = train_model(toy_run, _cfg(target="stiffness_pa", epochs=2, ensemble_size=2, loss="gaussian"), tmp_path / "reg")
    cfg = json.loads((res.model_dir / "config.json").read_text())
    assert cfg["task"] == "regression" and cfg["target_unit"] == "Pa" and cfg["log_target"]
    assert cfg["conformal_scaled"] is True
    # regression trains without photometric changes; the model folder records what was used
    aug = cfg["train_config"]["augment"]
    assert (aug["intensity_scale"], aug["gamma"], aug["blur_sigma_px"]) == (0.0, 0.0, 0.0) and aug["rotate90_flip"]
    assert cfg["pooling"] == cfg["train_config"]["pooling"] == "avg"  # the regression default
    data = load_run(toy_run)
    pred = predict_cells(load_stiffness_model(res.model_dir), data.table, data.crops, channels=data.channels, attrs=data.attrs)
    assert {"pred_stiffness_pa", "pred_lo_pa", "pred_hi_pa", "pred_log10_sd"} <= set(pred.columns)
    assert (pred.pred_lo_pa < pred.pred_stiffness_pa).all() and (pred.pred_stiffness_pa < pred.pred_hi_pa).all()
    _check_interval_metrics(res, cfg, pred, data.table)


def _check_interval_metrics(res, cfg, pred, table):
    """metrics.json's interval numbers are those of predict_cells' intervals on the test cells, and the
    intervals are ±q·σ on log10 E around the prediction, q the stored conformal quantile."""
    test = (res.split == "test").to_numpy()
    truth = table.stiffness_pa[test].to_numpy()
    lo, hi = pred.pred_lo_pa[test].to_numpy(), pred.pred_hi_pa[test].to_numpy()
    iv = res.metrics["test"]["interval"]
    assert iv["n"] == test.sum()
    assert iv["coverage"] == pytest.approx(np.mean((lo <= truth) & (truth <= hi)), abs=1e-12)
    assert (iv["n_below"], iv["n_above"]) == (int((truth < lo).sum()), int((truth > hi).sum()))
    q = cfg["conformal_quantile"]
    assert cfg["conformal_scaled"] and q > 0
    log_w = np.log10(pred.pred_hi_pa / pred.pred_lo_pa)
    np.testing.assert_allclose(log_w, 2 * q * pred.pred_log10_sd, rtol=1e-5)
    np.testing.assert_allclose(np.sqrt(pred.pred_lo_pa * pred.pred_hi_pa), pred.pred_stiffness_pa, rtol=1e-5)
    assert iv["width_fold_geomean"] == pytest.approx(10 ** np.mean(log_w[test]), rel=1e-5)


def test_features_baseline_round_trip(toy_run, tmp_path):
    res = train_model(toy_run, _cfg(model_type="features"), tmp_path / "feat")
    assert res.metrics["test"]["auc"] > 0.9  # disk area separates the toy classes
    data = load_run(toy_run, with_crops=False)
    p1 = predict_cells(load_stiffness_model(res.model_dir), data.table)
    p2 = predict_cells(load_stiffness_model(res.model_dir), data.table)
    pd.testing.assert_frame_equal(p1, p2)


def test_empty_table_predicts_nothing(trained_classifier):
    m = load_stiffness_model(trained_classifier.model_dir)
    out = predict_cells(m, pd.DataFrame(columns=["image_id", "cell_id"]), np.zeros((0, 2, PX, PX), np.float32), channels=["intensity", "mask"], attrs={"crop_size_um": PX})
    assert len(out) == 0 and "pred_label" in out.columns


# ----------------------------------------------------------------------- bad input
def _edit_table(run: Path, tmp: Path, fn) -> Path:
    import shutil

    new = tmp / "edited"
    shutil.copytree(run, new)
    t = pd.read_parquet(new / "cells.parquet")
    fn(t).to_parquet(new / "cells.parquet", index=False)
    return new


@pytest.mark.parametrize(
    "target,edit,match",
    [
        ("nonexistent", lambda t: t, "not in the cell table"),
        ("label", lambda t: t.assign(label="soft"), "constant"),
        ("label", lambda t: t.assign(label=np.where(t.index < 3, "rare", t.label)), "too few cells"),
        ("stiffness_pa", lambda t: t.assign(stiffness_pa=np.where(t.index < 4, -10.0, t.stiffness_pa)), "non-positive"),
        ("stiffness_pa", lambda t: t.assign(stiffness_pa=np.nan), "no values"),
    ],
)
def test_bad_targets_give_clear_errors(toy_run, tmp_path, target, edit, match):
    run = _edit_table(toy_run, tmp_path, edit)
    with pytest.raises(MechanoscopeError, match=match):
        train_model(run, _cfg(target=target), tmp_path / "m")


def test_nan_stiffness_rows_are_skipped_not_fatal(toy_run, tmp_path):
    run = _edit_table(toy_run, tmp_path, lambda t: t.assign(stiffness_pa=np.where(t.index % 3 == 0, np.nan, t.stiffness_pa)))
    res = train_model(run, _cfg(target="stiffness_pa", model_type="features"), tmp_path / "m")
    assert sum(res.metrics["n_cells"].values()) == int((np.arange(224) % 3 != 0).sum())


def test_crops_of_another_size_are_refused(trained_classifier, tmp_path):
    other = _toy_run(tmp_path / "big", n_images=2, per_image=3, crop_px=48)
    data = load_run(other)
    with pytest.raises(MechanoscopeError, match="expects 32×32 px"):
        predict_cells(load_stiffness_model(trained_classifier.model_dir), data.table, data.crops, channels=data.channels, attrs=data.attrs)


def test_model_from_another_version_or_incomplete_is_refused(trained_classifier, tmp_path):
    import shutil

    bad = tmp_path / "old"
    shutil.copytree(trained_classifier.model_dir, bad)
    cfg = json.loads((bad / "config.json").read_text())
    cfg["schema_version"] = 999
    (bad / "config.json").write_text(json.dumps(cfg))
    with pytest.raises(ModelSchemaError, match="999"):
        load_stiffness_model(bad)
    (bad / "normalization.json").unlink()
    with pytest.raises(ModelFolderError, match="normalization.json"):
        load_stiffness_model(bad)


def test_unknown_config_key_is_rejected():
    with pytest.raises(MechanoscopeError, match="unknown parameter"):
        TrainConfig.build(target="label", epoch=3)


# ----------------------------------------------------------------------- uncertainty
def test_conformal_intervals_cover_at_the_nominal_level():
    rng = np.random.default_rng(0)
    x = rng.uniform(0, 1, 30000)
    sigma = 0.1 + 0.4 * x  # heteroscedastic
    y = 2 * x + sigma * rng.standard_normal(x.size)
    cal, test = slice(0, 2000), slice(2000, None)
    for scale in (None, sigma):
        s = None if scale is None else scale[cal]
        q = conformal_quantile(np.abs(y[cal] - 2 * x[cal]) / (1 if s is None else s), 0.9)
        lo, hi = conformal_interval(2 * x[test], q, None if scale is None else scale[test])
        cover = np.mean((lo <= y[test]) & (y[test] <= hi))
        assert 0.88 < cover < 0.92
    with pytest.raises(MechanoscopeError, match="too few"):
        conformal_quantile(np.ones(5), 0.9)


def test_temperature_scaling_recovers_the_temperature_and_lowers_ece():
    rng = np.random.default_rng(1)
    n = 20000
    true_logits = rng.normal(0, 2, (n, 2))
    p = np.exp(true_logits) / np.exp(true_logits).sum(1, keepdims=True)
    y = (rng.uniform(size=n) < p[:, 1]).astype(int)
    overconfident = true_logits * 3.0
    t = fit_temperature(overconfident, y)
    assert t == pytest.approx(3.0, rel=0.1)
    from scipy.special import softmax

    assert expected_calibration_error(softmax(overconfident / t, 1), y) < expected_calibration_error(softmax(overconfident, 1), y)


def test_test_time_augmentation_makes_predictions_rotation_invariant(toy_run, trained_classifier, tmp_path):
    res = train_model(toy_run, _cfg(epochs=4, learning_rate=5e-3, tta=True), tmp_path / "tta")
    data = load_run(toy_run)
    model = load_stiffness_model(res.model_dir)
    a = predict_cells(model, data.table, data.crops, channels=data.channels, attrs=data.attrs)
    rotated = np.ascontiguousarray(np.rot90(data.crops, 1, axes=(2, 3)))
    b = predict_cells(model, data.table, rotated, channels=data.channels, attrs=data.attrs)
    assert a.pred_prob_stiff.max() - a.pred_prob_stiff.min() > 0.2  # a model that tells cells apart, not a constant
    tta_diff = np.abs(a.pred_prob_stiff - b.pred_prob_stiff).max()
    assert tta_diff < 1e-6
    plain = load_stiffness_model(trained_classifier.model_dir)  # trained without TTA
    c = predict_cells(plain, data.table, data.crops, channels=data.channels, attrs=data.attrs)
    d = predict_cells(plain, data.table, rotated, channels=data.channels, attrs=data.attrs)
    assert np.abs(c.pred_prob_stiff - d.pred_prob_stiff).max() > 10 * max(tta_diff, 1e-6)  # without TTA it is not


def test_fine_pixel_crops_get_a_stem_and_round_trip(tmp_path):
    from mechanoscope.learn.networks import CompactCNN

    small = CompactCNN(2, 1, width=8, input_pixels=64)
    big = CompactCNN(2, 1, width=8, input_pixels=128)
    pools = [sum(isinstance(m, __import__("torch").nn.AvgPool2d) for m in net.features) for net in (small, big)]
    assert pools == [4, 5]  # one extra 2× reduction for 2× finer crops
    run = _toy_run(tmp_path / "run128", n_images=8, per_image=8, crop_px=128)
    res = train_model(run, _cfg(epochs=2, test_fraction=0.25), tmp_path / "m128")
    cfg = json.loads((res.model_dir / "config.json").read_text())
    assert cfg["crop_pixels"] == 128
    data = load_run(run)
    model = load_stiffness_model(res.model_dir)
    pred = predict_cells(model, data.table, data.crops, channels=data.channels, attrs=data.attrs)
    again = predict_cells(load_stiffness_model(res.model_dir), data.table, data.crops, channels=data.channels, attrs=data.attrs)
    np.testing.assert_array_equal(pred.pred_prob_stiff.to_numpy(), again.pred_prob_stiff.to_numpy())
    assert pred.pred_prob_stiff.between(0, 1).all()


def test_pooling_is_recorded_and_old_folders_load_with_max_pooling(toy_run, trained_classifier, tmp_path):
    import shutil

    import torch

    from mechanoscope.errors import ConfigError
    from mechanoscope.learn.networks import CompactCNN

    assert all(not isinstance(m, torch.nn.MaxPool2d) for m in CompactCNN(2, 1, width=8).features)
    # "auto" resolves per task: the classifier keeps max-pooling
    cls_cfg = json.loads((trained_classifier.model_dir / "config.json").read_text())
    assert cls_cfg["pooling"] == cls_cfg["train_config"]["pooling"] == "max"
    assert TrainConfig.build(target="x", pooling="avg").pooling_for("classification") == "avg"
    assert sum(isinstance(m, torch.nn.MaxPool2d) for m in CompactCNN(2, 1, width=8, pooling="max").features) == 4
    with pytest.raises(ConfigError, match="pooling"):
        CompactCNN(2, 1, pooling="median")
    res = trained_classifier
    data = load_run(toy_run)

    def probs(folder):
        return predict_cells(load_stiffness_model(folder), data.table, data.crops, channels=data.channels, attrs=data.attrs).pred_prob_stiff.to_numpy()

    reference = probs(res.model_dir)
    # a folder written before the option existed has no "pooling" key: it was a max-pool network
    old = tmp_path / "old"
    shutil.copytree(res.model_dir, old)
    cfg = json.loads((old / "config.json").read_text())
    del cfg["pooling"]
    (old / "config.json").write_text(json.dumps(cfg))
    np.testing.assert_array_equal(probs(old), reference)
    cfg["pooling"] = "avg"  # the key is what decides: the same weights under average pooling predict otherwise
    (old / "config.json").write_text(json.dumps(cfg))
    assert np.abs(probs(old) - reference).max() > 1e-4
    cfg["pooling"] = "median"
    (old / "config.json").write_text(json.dumps(cfg))
    with pytest.raises(MechanoscopeError, match=r"old.*median"):
        load_stiffness_model(old)


def _texture_batch(n: int = 16, px: int = 32, seed: int = 0):
    import torch

    g = torch.Generator().manual_seed(seed)
    inten = torch.randn((n, 1, px, px), generator=g)  # pixel-scale texture
    yy, xx = torch.meshgrid(torch.arange(px), torch.arange(px), indexing="ij")
    mask = ((yy - px / 2) ** 2 + (xx - px / 2) ** 2 < (px / 3) ** 2).float().expand(n, 1, px, px)
    return torch.cat([inten, mask], 1)


def test_augmentation_is_reproducible_and_keeps_masks_binary():
    import torch

    from mechanoscope.learn.augment import augment_batch
    from mechanoscope.learn.config import AugmentConfig

    x = _texture_batch()
    cfg = AugmentConfig(affine_degrees=20, affine_scale=0.1, affine_translate_fraction=0.05).for_task("classification")
    a = augment_batch(x, cfg, torch.Generator().manual_seed(3))
    b = augment_batch(x, cfg, torch.Generator().manual_seed(3))
    c = augment_batch(x, cfg, torch.Generator().manual_seed(4))
    assert torch.equal(a, b) and not torch.equal(a, c)
    assert set(torch.unique(a[:, 1]).tolist()) <= {0.0, 1.0}
    assert torch.equal(x, _texture_batch())  # input untouched


def test_default_augmentation_is_exact_geometry_and_keeps_texture():
    """Default: 90° rotations/flips only (no resampling), photometric changes on the intensity only."""
    import torch

    from mechanoscope.learn.augment import augment_batch
    from mechanoscope.learn.config import AugmentConfig

    x = _texture_batch(n=64)
    geo_only = AugmentConfig(intensity_scale=0, gamma=0, blur_sigma_px=0, noise_std=0)
    y = augment_batch(x, geo_only, torch.Generator().manual_seed(0))
    # every crop is one of the 8 dihedral views of its original: values are permuted, not resampled
    for i in range(len(x)):
        views = [torch.rot90(v, k, dims=(1, 2)) for v in (x[i], torch.flip(x[i], dims=(2,))) for k in range(4)]
        assert any(torch.equal(y[i], v) for v in views)
    # an affine step resamples: it damps the pixel-scale texture variance (why it is off by default)
    affine = AugmentConfig(rotate90_flip=False, affine_degrees=15, affine_scale=0, affine_translate_fraction=0.05, intensity_scale=0, gamma=0, blur_sigma_px=0, noise_std=0)
    z = augment_batch(x, affine, torch.Generator().manual_seed(0))
    inner = x[:, 1] > 0
    assert float(z[:, 0][inner].var()) < 0.8 * float(x[:, 0][inner].var())
    # photometric defaults never touch the mask channel
    full = augment_batch(x, AugmentConfig(rotate90_flip=False).for_task("classification"), torch.Generator().manual_seed(1))
    assert torch.equal(full[:, 1], x[:, 1])
    assert not torch.equal(full[:, 0], x[:, 0])


def test_regression_augmentation_keeps_the_contrast_amplitude():
    """Task defaults: regression leaves the intensity values exact (dihedral views + noise only)."""
    import torch

    from mechanoscope.learn.augment import augment_batch
    from mechanoscope.learn.config import AugmentConfig

    x = _texture_batch(n=32)
    reg = AugmentConfig(noise_std=0).for_task("regression")
    y = augment_batch(x, reg, torch.Generator().manual_seed(0))
    # per crop the sorted intensities are unchanged: amplitude and texture exactly kept
    assert torch.equal(torch.sort(y[:, 0].flatten(1), 1).values, torch.sort(x[:, 0].flatten(1), 1).values)
    cls = augment_batch(x, AugmentConfig(noise_std=0).for_task("classification"), torch.Generator().manual_seed(0))
    assert not torch.equal(torch.sort(cls[:, 0].flatten(1), 1).values, torch.sort(x[:, 0].flatten(1), 1).values)
    # explicit values win over the task default; unresolved settings are refused
    assert AugmentConfig(gamma=0.3).for_task("regression").gamma == 0.3
    with pytest.raises(ValueError, match="for_task"):
        augment_batch(x, AugmentConfig(), torch.Generator().manual_seed(0))


def test_early_stopping_waits_for_the_annealed_learning_rate():
    """A good early epoch must not stop training before 60 % of the epochs + patience."""
    from mechanoscope.learn.train import EarlyStopping

    # validation losses of a real run (benchmark regression, seed 1): best at epoch 15, noisy after
    losses = [0.65, 0.23, 0.61, 0.21, 0.50, 0.21, 0.26, 0.16, 0.25, 0.19, 0.135, 0.14, 0.22, 0.18, 0.124,
              0.145, 0.127, 0.153, 0.133, 0.150, 0.134, 0.167, 0.208, 0.128, 0.1253, 0.126, 0.125, 0.127, 0.126, 0.125, 0.126, 0.121, 0.125, 0.126, 0.127]
    stopper = EarlyStopping(epochs=35, patience=10)
    stopped_at, best_epoch = None, None
    for epoch, loss in enumerate(losses, start=1):
        improved, stop = stopper.update(loss)
        best_epoch = epoch if improved else best_epoch
        if stop:
            stopped_at = epoch
            break
    # stale epochs count from epoch 22 on: stop at 31 (counting from epoch 16 stopped this run at 25,
    # before the learning rate had annealed)
    assert stopped_at == 31 and best_epoch == 15
    # with no improvement at all after epoch 1, training stops exactly at 60 % + patience
    stopper = EarlyStopping(epochs=20, patience=3)
    stops = [stopper.update(1.0 if e == 0 else 2.0)[1] for e in range(20)]
    assert stops.index(True) + 1 == 12 + 3


def test_refit_pass_repeats_the_selected_epoch_exactly():
    """keep_epochs=[b] reproduces, weight for weight, the network early stopping kept at epoch b."""
    import torch

    from mechanoscope.learn.train import best_epochs, train_networks

    rng = np.random.default_rng(0)
    x = rng.normal(size=(96, 2, 16, 16)).astype(np.float32)
    y = (x[:, 0].mean((1, 2)) * 4 + rng.normal(0, 0.1, 96)).astype(np.float32)
    cfg = _cfg(target="v", epochs=6, width=4, batch_size=16)
    nets, log = train_networks(x[:64], y[:64], x[64:], y[64:], task="regression", n_outputs=1, config=cfg)
    (b,) = best_epochs(log, 1)
    assert b == int(log.loc[log.val_loss.idxmin(), "epoch"])
    again, log2 = train_networks(x[:64], y[:64], x[:0], y[:0], task="regression", n_outputs=1, config=cfg, keep_epochs=[b])
    assert len(log2) == b
    for (k, v), v2 in zip(nets[0].state_dict().items(), again[0].state_dict().values()):
        assert torch.equal(v, v2), k
    with pytest.raises(ValueError, match="one epoch count per network"):
        train_networks(x[:64], y[:64], x[:0], y[:0], task="regression", n_outputs=1, config=cfg, keep_epochs=[1, 2])


def test_refit_learns_from_the_validation_cells_and_keeps_calibration_held_out(toy_run, tmp_path, monkeypatch):
    import mechanoscope.learn.train as T

    seen = []
    original = T.train_networks

    def spy(x_train, y_train, x_val, y_val, **kw):
        seen.append((len(x_train), len(x_val), kw.get("keep_epochs")))
        return original(x_train, y_train, x_val, y_val, **kw)

    monkeypatch.setattr(T, "train_networks", spy)
    res = train_model(toy_run, _cfg(target="stiffness_pa", epochs=3, ensemble_size=2, refit=True), tmp_path / "refit")
    n = res.metrics["n_cells"]
    # a selection pass on the training cells, then a refit on training + validation cells
    assert seen[0] == (n["train"], n["val"], None)
    assert seen[1][:2] == (n["train"] + n["val"], 0)
    keep = seen[1][2]
    assert res.metrics["refit"] == {"epochs_per_network": keep, "cells": n["train"] + n["val"]}
    assert keep == T.best_epochs(res.log[res.log["pass"] == "select"], 2)
    refit_rows = res.log[res.log["pass"] == "refit"]
    assert refit_rows.groupby("member").size().tolist() == keep and refit_rows.val_loss.isna().all()
    # validation cells were learnt from, so only the test cells are reported
    assert "val" not in res.metrics
    assert "Refitted on training + validation cells" in (res.model_dir / "MODEL_CARD.md").read_text()
    data = load_run(toy_run)
    p1 = predict_cells(load_stiffness_model(res.model_dir), data.table, data.crops, channels=data.channels, attrs=data.attrs)
    p2 = predict_cells(load_stiffness_model(res.model_dir), data.table, data.crops, channels=data.channels, attrs=data.attrs)
    pd.testing.assert_frame_equal(p1, p2)
    _check_interval_metrics(res, json.loads((res.model_dir / "config.json").read_text()), p1, data.table)
    # without held-out calibration images a refit would calibrate on cells it learnt from
    with pytest.raises(MechanoscopeError, match="calibration"):
        train_model(toy_run, _cfg(target="stiffness_pa", epochs=1, refit=True, calibration_fraction=0.0), tmp_path / "nocal")


def test_cli_config_file_is_not_overridden_by_flag_defaults(toy_run, tmp_path):
    from typer.testing import CliRunner

    from mechanoscope.cli.main import app

    cfg = tmp_path / "train.json"
    cfg.write_text(json.dumps({"target": "label", "model_type": "features", "seed": 3, "interval_level": 0.8, "min_cells_per_class": 5}))
    runner = CliRunner()
    r = runner.invoke(app, ["train", str(toy_run), "--target", "label", "--config", str(cfg), "--out", str(tmp_path / "a")])
    assert r.exit_code == 0, r.output
    used = json.loads((tmp_path / "a" / "config.json").read_text())["train_config"]
    assert (used["model_type"], used["seed"], used["interval_level"]) == ("features", 3, 0.8)
    # a flag typed on the command line wins over the file
    r = runner.invoke(app, ["train", str(toy_run), "--target", "label", "--config", str(cfg), "--seed", "5", "--out", str(tmp_path / "b")])
    assert r.exit_code == 0, r.output
    assert json.loads((tmp_path / "b" / "config.json").read_text())["train_config"]["seed"] == 5
