"""Known values of training and prediction that the self-consistency tests of test_learn.py
cannot see: the stored target transform is log10 of the training cells' moduli (so that
10 ** (...) gives pascal back), the split-conformal interval covers its nominal share of the
calibration cells, and the networks of a deep ensemble start from different weights.

Fast: the features baseline (gradient boosting on a table, no crops) and a width-4 CNN on
16 × 16 crops for one epoch.
"""

import json

import numpy as np
import pandas as pd
import pytest
from threadpoolctl import threadpool_limits

from mechanoscope.learn.config import TrainConfig
from mechanoscope.learn.data import TrainingData
from mechanoscope.learn.predict import load_stiffness_model, predict_cells
from mechanoscope.learn.train import train_model, train_networks
from mechanoscope.learn.uncertainty import conformal_quantile


def _table(n_images: int = 20, per_image: int = 12, seed: int = 0) -> pd.DataFrame:
    """A modulus that is a smooth function of the area (10^2 .. 10^4 Pa) with 5 % log-normal scatter."""
    rng = np.random.default_rng(seed)
    rows = []
    for i in range(n_images):
        for j in range(per_image):
            area = rng.uniform(50, 450)
            e = 10 ** (2 + (area - 50) / 200 + rng.normal(0, 0.02))
            rows.append({"image_id": f"img_{i:02d}", "cell_id": j + 1, "area_um2": area, "solidity": rng.uniform(0.8, 1.0),
                         "stiffness_pa": e, "qc_pass": True})
    return pd.DataFrame(rows)


def _train_features(table, folder, **kw):
    data = TrainingData(table=table, crops=np.zeros((len(table), 1, 2, 2), np.float32), channels=["intensity"], attrs={})
    cfg = TrainConfig.build(target="stiffness_pa", model_type="features", seed=0, **kw)
    # one OpenMP thread: gradient boosting on 170 rows takes 0.25 s instead of 3 s on two busy cores
    with threadpool_limits(1):
        res = train_model(data, cfg, folder)
        return res, load_stiffness_model(res.model_dir)


@pytest.fixture(scope="module")
def features_regression(tmp_path_factory):
    table = _table()
    # log_target=False cannot switch off the log10 of a *_pa column ("always for *_pa columns")
    res, model = _train_features(table, tmp_path_factory.mktemp("feat") / "model", interval_level=0.9, log_target=False)
    return table, res, model


def test_target_transform_is_log10_of_the_training_cells(features_regression):
    table, res, model = features_regression
    train = (res.split == "train").to_numpy()
    log_e = np.log10(table["stiffness_pa"].to_numpy()[train])
    assert model.config["log_target"] is True
    # hand values: mean and population standard deviation (ddof 0) of log10 E over the training cells only
    assert model.config["target_mean"] == pytest.approx(log_e.mean(), rel=1e-12)
    assert model.config["target_std"] == pytest.approx(log_e.std(ddof=0), rel=1e-12)
    # so the predictions come back in pascal: a smooth function of the area is learnt within a few per cent
    with threadpool_limits(1):
        pred = predict_cells(model, table)
    ratio = pred["pred_stiffness_pa"].to_numpy() / table["stiffness_pa"].to_numpy()
    assert np.median(np.abs(np.log10(ratio[train]))) < 0.03  # within 7 % on the cells it learnt from
    assert np.median(np.abs(np.log10(ratio[~train]))) < 0.1


def test_conformal_interval_covers_its_level_of_the_calibration_cells(features_regression):
    table, res, model = features_regression
    cal = (res.split == "calibration").to_numpy()
    with threadpool_limits(1):
        pred = predict_cells(model, table)
    # the stored quantile is the ⌈(n+1)·0.9⌉-th smallest |log10 E − μ| / σ_log10 of the calibration cells
    mu = np.log10(pred["pred_stiffness_pa"].to_numpy()[cal])
    scores = np.abs(np.log10(table["stiffness_pa"].to_numpy()[cal]) - mu) / model.config["target_std"]
    assert model.config["conformal_quantile"] == pytest.approx(conformal_quantile(scores, 0.9), rel=1e-9)
    e = table["stiffness_pa"].to_numpy()[cal]
    inside = (pred["pred_lo_pa"].to_numpy()[cal] <= e) & (e <= pred["pred_hi_pa"].to_numpy()[cal])
    k = int(np.ceil((cal.sum() + 1) * 0.9))
    assert inside.sum() >= k - 1  # by construction (ties aside) at least k of the n calibration cells


def test_ensemble_members_start_from_different_weights():
    rng = np.random.default_rng(0)
    x = rng.normal(size=(8, 1, 16, 16)).astype(np.float32)
    y = rng.normal(size=8).astype(np.float32)
    cfg = TrainConfig.build(target="stiffness_pa", epochs=1, batch_size=8, width=4, num_threads=1, seed=3, ensemble_size=2)
    nets, _ = train_networks(x, y, x[:0], y[:0], task="regression", n_outputs=1, config=cfg, keep_epochs=[1, 1])
    w0 = [p.detach().numpy() for p in nets[0].parameters()]
    w1 = [p.detach().numpy() for p in nets[1].parameters()]
    assert not all(np.array_equal(a, b) for a, b in zip(w0, w1))
    # and the same seed gives the same first member again (seed · 1000 + member)
    again, _ = train_networks(x, y, x[:0], y[:0], task="regression", n_outputs=1, config=cfg.model_copy(update={"ensemble_size": 1}), keep_epochs=[1])
    assert all(np.array_equal(a, p.detach().numpy()) for a, p in zip(w0, again[0].parameters()))


def test_gaussian_loss_reads_output_1_as_the_log_variance(monkeypatch):
    """combine_ensemble turns output 1 into a variance with exp (it is a log-variance): training
    must give the Gaussian NLL that same variance, exp(output 1)."""
    import torch

    seen = []
    real = torch.nn.functional.gaussian_nll_loss

    def spy(mu, y, var, *a, **k):
        seen.append((mu.detach().clone(), var.detach().clone()))
        return real(mu, y, var, *a, **k)

    monkeypatch.setattr(torch.nn.functional, "gaussian_nll_loss", spy)
    outs = []
    rng = np.random.default_rng(1)
    x = rng.normal(size=(8, 1, 16, 16)).astype(np.float32)
    y = rng.normal(size=8).astype(np.float32)
    cfg = TrainConfig.build(target="stiffness_pa", epochs=1, batch_size=8, width=4, num_threads=1, seed=0, loss="gaussian")
    from mechanoscope.learn import networks

    build = networks.build_network

    def build_and_watch(*a, **k):
        net = build(*a, **k)
        net.register_forward_hook(lambda m, i, o: outs.append(o.detach().clone()))
        return net

    monkeypatch.setattr(networks, "build_network", build_and_watch)
    train_networks(x, y, x[:0], y[:0], task="regression", n_outputs=2, config=cfg, keep_epochs=[1])
    (mu, var), out = seen[0], outs[0]
    torch.testing.assert_close(mu, out[:, 0])
    torch.testing.assert_close(var, torch.exp(out[:, 1]).clamp_min(1e-4))


def test_contrast_scale_is_the_std_of_the_training_crops_contrast(tmp_path):
    from mechanoscope.learn.data import normalise_crops

    rng = np.random.default_rng(2)
    table = _table(n_images=12, per_image=6)
    n = len(table)
    # crops of an intensity channel whose contrast differs by image: the held-out images' must not set the scale
    amp = np.repeat(rng.uniform(0.05, 0.6, 12), 6)
    yy, xx = np.mgrid[:16, :16] - 7.5
    dome = np.clip(1 - (yy**2 + xx**2) / 36, 0, None)
    inten = 1000 * (1 + amp[:, None, None] * dome + rng.normal(0, 0.01, (n, 16, 16)))
    crops = np.stack([inten, np.broadcast_to(dome > 0, (n, 16, 16))], 1).astype(np.float32)
    data = TrainingData(table=table, crops=crops, channels=["intensity", "mask"], attrs={"crop_size_um": 16.0, "crop_pixels": 16})
    cfg = TrainConfig.build(target="stiffness_pa", epochs=1, batch_size=32, width=4, num_threads=1, seed=0, interval_level=0.8)
    with threadpool_limits(1):
        res = train_model(data, cfg, tmp_path / "cnn")
    train = (res.split == "train").to_numpy()
    rel = normalise_crops(crops, ["intensity", "mask"], ["intensity"], 1.0)
    norm = json.loads((res.model_dir / "normalization.json").read_text())
    assert norm["contrast_scale"] == pytest.approx(float(np.std(rel[train, 0])), rel=1e-6)
    assert norm["contrast_scale"] != pytest.approx(float(np.std(rel[:, 0])), rel=1e-3)
