"""Documented defaults and rules of the learning configuration and networks, by hand: the
task defaults of augmentation and pooling, the nominal interval level, the held-out
fractions' limit, the compact CNN's extra stem stages per doubling of the crop, the relative
intensity features of the baseline and the export's agreement tolerance."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pandas as pd
import pytest

from mechanoscope.learn.config import AugmentConfig, TrainConfig


def test_training_defaults_and_task_rules():
    cfg = TrainConfig.build(target="stiffness_pa")
    assert cfg.interval_level == 0.9 and cfg.log_target is True and cfg.loss == "mse" and cfg.balance_classes is True
    assert cfg.pooling_for("regression") == "avg" and cfg.pooling_for("classification") == "max"
    reg, cls = AugmentConfig().for_task("regression"), AugmentConfig().for_task("classification")
    assert (reg.intensity_scale, reg.gamma, reg.blur_sigma_px) == (0.0, 0.0, 0.0)
    assert (cls.intensity_scale, cls.gamma, cls.blur_sigma_px) == (0.15, 0.15, 0.7)
    # held-out fractions must leave at least 10 % of the groups for training
    TrainConfig.build(target="x", val_fraction=0.3, calibration_fraction=0.3, test_fraction=0.25)
    with pytest.raises(ValueError, match="at least 10 %"):
        TrainConfig.build(target="x", val_fraction=0.3, calibration_fraction=0.3, test_fraction=0.35)


def test_compact_cnn_adds_one_stem_stage_per_doubling_from_96_px():
    from mechanoscope.learn.networks import CompactCNN, _extra_stages

    assert [_extra_stages(p) for p in (32, 64, 95, 96, 128, 191, 192, 256, 512, 4096)] == [0, 0, 0, 1, 1, 1, 2, 2, 3, 4]
    # the stem stages halve the crop: the five design stages always see about 64 px
    assert sum(type(m).__name__ == "AvgPool2d" for m in CompactCNN(1, 1, width=4, input_pixels=128).features) == 5
    assert sum(type(m).__name__ == "MaxPool2d" for m in CompactCNN(1, 1, width=4, input_pixels=64, pooling="max").features) == 4


def test_baseline_intensity_features_are_relative_to_the_background():
    from mechanoscope.learn.features import _with_relative, feature_columns

    t = pd.DataFrame({"intensity_std": [10.0, 30.0], "intensity_min": [50.0, 90.0], "intensity_max": [300.0, 600.0],
                      "intensity_mean": [999.0, 999.0], "crop_pad_value": [100.0, 0.0], "area_um2": [1.0, 2.0]})
    r = _with_relative(t)
    # divided by the crop's background (crop_pad_value, preferred over the mean); a zero background gives NaN, not inf
    assert list(r["intensity_std_rel"].iloc[:1]) == [0.1] and list(r["intensity_max_rel"].iloc[:1]) == [3.0]
    assert r["intensity_min_rel"].iloc[0] == 0.5 and np.isnan(r["intensity_min_rel"].iloc[1])
    assert feature_columns(t) == ["area_um2", "intensity_std_rel", "intensity_min_rel", "intensity_max_rel"]


def test_export_agreement_tolerance_is_refused_just_above_it():
    import torch

    from mechanoscope.learn.export import EXPORT_TOLERANCE, ExportError, _check_agreement

    assert EXPORT_TOLERANCE == {"onnx": {"atol": 1e-4, "rtol": 1e-4}, "torchscript": {"atol": 1e-5, "rtol": 1e-5}}
    module = torch.nn.Sequential(torch.nn.Flatten(), torch.nn.LazyLinear(1))
    cfg = {"crop_pixels": 8, "channels": ["intensity"]}
    with torch.no_grad():
        module(torch.zeros(1, 1, 8, 8))
        module[1].weight.zero_()
        module[1].bias.fill_(0.0)  # outputs 0: the allowed difference is exactly atol
    ok = _check_agreement("onnx", lambda a: np.full((len(a), 1), 0.9e-4, np.float32), module, cfg, {}, Path("m"))
    assert ok == pytest.approx(0.9e-4, rel=1e-3)
    with pytest.raises(ExportError, match="differs from PyTorch"):
        _check_agreement("onnx", lambda a: np.full((len(a), 1), 1.2e-4, np.float32), module, cfg, {}, Path("m"))


def test_compact_cnn_head_sees_the_global_average_of_the_last_stage():
    import torch

    from mechanoscope.learn.networks import CompactCNN

    torch.manual_seed(0)
    net = CompactCNN(1, 2, width=4).eval()
    x = torch.randn(3, 1, 64, 64)
    with torch.no_grad():
        h = net.features(x)
        by_hand = h.mean(dim=(2, 3)) @ net.head[2].weight.T + net.head[2].bias  # dropout is off in eval
        torch.testing.assert_close(net(x), by_hand)


def test_affine_augmentation_keeps_masks_binary_and_their_area():
    import torch

    from mechanoscope.learn.augment import augment_batch

    yy, xx = np.mgrid[:32, :32] - 15.5
    disk = (np.hypot(yy, xx) < 8).astype(np.float32)
    x = torch.from_numpy(np.stack([np.stack([disk * 0.5, disk])] * 6))
    cfg = AugmentConfig(rotate90_flip=False, affine_degrees=45, noise_std=0.0).for_task("regression")
    out = augment_batch(x, cfg, torch.Generator().manual_seed(0))
    mask = out[:, 1].numpy()
    assert set(np.unique(mask)) <= {0.0, 1.0}
    # bilinear resampling cut at one half: a rotated disk keeps its area (a cut at 0 would add a rim of ~25 px)
    np.testing.assert_allclose(mask.sum(axis=(1, 2)), disk.sum(), rtol=0.04)


def test_baseline_classifier_weights_classes_by_inverse_frequency():
    from sklearn.ensemble import HistGradientBoostingClassifier
    from threadpoolctl import threadpool_limits

    from mechanoscope.learn.features import FeatureModel

    rng = np.random.default_rng(0)
    n = 120
    y = (rng.random(n) < 0.15).astype(int)  # 15 % minority class
    t = pd.DataFrame({"area_um2": rng.normal(100, 20, n) + 15 * y, "solidity": rng.uniform(0.8, 1.0, n)})
    with threadpool_limits(1):
        fm = FeatureModel("classification", ["area_um2", "solidity"], seed=0, n_classes=2).fit(t, y)
        peer = HistGradientBoostingClassifier(max_iter=300, learning_rate=0.05, early_stopping=False, class_weight="balanced", random_state=0)
        peer.fit(t.to_numpy(), y)
        np.testing.assert_allclose(fm.raw_outputs(t)[0], peer.predict_proba(t.to_numpy()), atol=1e-12)


def test_onnx_members_read_their_own_slice_of_one_shared_run():
    import torch

    from mechanoscope.learn.onnx_predict import OnnxMember, _SharedRun

    calls = []

    class Session:  # the graph's output is (B, K members, n_out)
        def run(self, names, feeds):
            a = feeds["crops"]
            calls.append(a.shape)
            b = a.shape[0]
            return [np.stack([np.full((b, 2), 10.0 * k + np.arange(2)) for k in range(3)], 1).astype(np.float32)]

    shared = _SharedRun(Session())
    members = [OnnxMember(shared, k) for k in range(3)]
    x = torch.zeros(4, 1, 8, 8)
    outs = [m(x).numpy() for m in members]
    assert calls == [(4, 1, 8, 8)]  # one run for all members of the batch
    for k, o in enumerate(outs):
        np.testing.assert_array_equal(o, np.tile([10.0 * k, 10.0 * k + 1], (4, 1)))
