"""Attribution maps (captum): shape, where the mass falls, model randomisation, embedding, bad input."""

from pathlib import Path

import numpy as np
import pandas as pd
import pytest

from mechanoscope.errors import MechanoscopeError
from mechanoscope.learn.attribution import (
    attribute,
    class_average_maps,
    embedding_2d,
    explain_cells,
    mask_mass_fraction,
    model_randomisation_test,
    permutation_importance_features,
    pick_cells,
)
from mechanoscope.learn.config import TrainConfig
from mechanoscope.learn.predict import StiffnessModel
from mechanoscope.learn.train import train_networks

PX = 32


def _cells(n: int, seed: int) -> tuple[np.ndarray, np.ndarray]:
    """Normalised crops (intensity, mask) where ONLY the cell carries the class.

    A disk of radius 4–7 px at a random place; class 1 cells are bright inside
    (+0.8 relative contrast), class 0 dark (−0.8). The background is the same noise
    for both classes, so anything the network uses lies on the cell.
    """
    rng = np.random.default_rng(seed)
    yy, xx = np.mgrid[:PX, :PX]
    x = np.zeros((n, 2, PX, PX), np.float32)
    y = rng.integers(0, 2, n)
    for i in range(n):
        r = rng.uniform(4, 7)
        cy, cx = rng.uniform(r + 1, PX - r - 1, 2)
        mask = np.hypot(yy - cy, xx - cx) < r
        x[i, 0] = rng.normal(0, 0.3, (PX, PX)) + mask * (0.8 if y[i] else -0.8)
        x[i, 1] = mask
    return x, y


@pytest.fixture(scope="module")
def net():
    x, y = _cells(384, 0)
    xv, yv = _cells(64, 1)
    cfg = TrainConfig.build(target="label", epochs=3, batch_size=32, width=8, num_threads=1, seed=0, learning_rate=5e-3)
    nets, _ = train_networks(x, y, xv, yv, task="classification", n_outputs=2, config=cfg)
    return nets[0]


@pytest.fixture(scope="module")
def fresh():
    return _cells(48, 2)


def test_the_network_learnt_the_cell_signal(net, fresh):
    import torch

    x, y = fresh
    with torch.inference_mode():
        acc = float((net(torch.from_numpy(x)).argmax(1).numpy() == y).mean())
    assert acc > 0.9  # chance 0.5: there is something to explain


@pytest.mark.parametrize(("method", "min_on_cell"), [("integrated_gradients", 0.45), ("gradcam", 0.25), ("occlusion", 0.45)])
def test_maps_have_the_crop_shape_and_highlight_the_cell(net, fresh, method, min_on_cell):
    x, y = fresh
    maps = attribute([net], x, y, method=method, n_steps=16)
    assert maps.shape == (len(x), PX, PX)
    assert np.isfinite(maps).all()
    frac, area = mask_mass_fraction(maps, x[:, 1])
    assert np.median(area) < 0.2
    # the cell is < 20 % of the crop but holds most of the attribution
    assert np.median(frac) > 2.5 * np.median(area)
    assert np.median(frac) > min_on_cell  # Grad-CAM is upsampled from 8 x 8 px: blurrier


def test_integrated_gradients_completeness(net, fresh):
    """IG's maps sum to f(x) − f(baseline) (the zero baseline stated in the docs)."""
    import torch

    x, y = fresh
    maps = attribute([net], x[:8], y[:8], method="integrated_gradients", n_steps=64)
    with torch.inference_mode():
        fx = net(torch.from_numpy(x[:8])).numpy()[np.arange(8), y[:8]]
        f0 = net(torch.zeros_like(torch.from_numpy(x[:8]))).numpy()[np.arange(8), y[:8]]
    np.testing.assert_allclose(maps.reshape(8, -1).sum(1), fx - f0, rtol=0.1, atol=0.05)


def test_model_randomisation_changes_the_maps(net, fresh):
    x, y = fresh
    res = model_randomisation_test([net], x[:16], y[:16], method="gradcam")
    assert res["n_cells"] == 16
    # trained vs re-initialised network: the maps are not the same picture
    assert res["spearman_median"] < 0.6
    assert res["ssim_median"] < 0.7
    # and a map compared with itself would score 1: the statistic can tell
    same = attribute([net], x[:2], y[:2], method="gradcam")
    from scipy.stats import spearmanr

    assert spearmanr(np.abs(same[0]).ravel(), np.abs(same[0]).ravel()).statistic == pytest.approx(1.0)


def test_mask_mass_fraction_of_known_maps():
    masks = np.zeros((2, 4, 4))
    masks[:, :2, :2] = 1
    maps = np.stack([np.ones((4, 4)), masks[0] * -3.0])
    frac, area = mask_mass_fraction(maps, masks)
    np.testing.assert_allclose(frac, [0.25, 1.0])
    np.testing.assert_allclose(area, [0.25, 0.25])
    frac0, _ = mask_mass_fraction(np.zeros((1, 4, 4)), masks[:1])
    assert np.isnan(frac0[0])


def test_class_average_maps_and_pick_cells():
    maps = np.stack([np.full((2, 2), v) for v in (1.0, 3.0, 10.0)])
    avg = class_average_maps(maps, np.array(["a", "a", "b"]))
    np.testing.assert_allclose(avg["a"], 2.0)
    np.testing.assert_allclose(avg["b"], 10.0)
    t = pd.DataFrame({"pred_label": ["a"] * 5 + ["b"] * 2, "qc_pass": [True, False, True, True, True, True, True]})
    rows = pick_cells(t, by="pred_label", per_group=3)
    assert (t["pred_label"].iloc[rows].value_counts() == pd.Series({"a": 3, "b": 2})).all()
    assert 1 not in rows  # QC-failing cell left out while others remain
    with pytest.raises(MechanoscopeError, match="nope"):
        pick_cells(t, by="nope")


def test_embedding_separates_classes(net, fresh):
    from mechanoscope.learn.domain import penultimate_features

    x, y = fresh
    f = penultimate_features(net, x)
    assert f.shape == (len(x), 8 * 8)
    emb, var = embedding_2d(f)
    assert emb.shape == (len(x), 2) and 0 < var[1] <= var[0] <= 1
    # the first axis separates the two classes (|t| large), as the network does
    from scipy.stats import ttest_ind

    assert abs(ttest_ind(emb[y == 0, 0], emb[y == 1, 0]).statistic) > 5
    with pytest.raises(MechanoscopeError, match="at least 3"):
        embedding_2d(f[:2])


def test_explain_cells_of_a_model(net, fresh):
    x, y = fresh
    raw = np.stack([1000 * (1 + x[:, 0]), x[:, 1]], 1).astype(np.float32)  # normalise_crops undoes this (border median ≈ 1000)
    model = StiffnessModel(Path("in-memory"), {"task": "classification", "target": "label", "model_type": "cnn", "classes": ["dark", "bright"], "channels": ["intensity", "mask"]},
                           {"contrast_scale": 1.0}, [net])
    table = pd.DataFrame({"pred_label": np.array(["dark", "bright"])[y]})
    rows = pick_cells(table, by="pred_label", per_group=3)
    res = explain_cells(model, table, raw, rows, channels=["intensity", "mask"], method="integrated_gradients", n_steps=16)
    assert res.maps.shape == (6, PX, PX) and res.crops.shape == (6, PX, PX)
    assert res.targets == table["pred_label"].iloc[rows].tolist()
    s = res.summary()
    assert s["fraction_on_cell_median"] > 2 * s["area_fraction_median"]
    assert "randomisation" in s and s["baseline"].startswith("zeros")
    with pytest.raises(MechanoscopeError, match="not one of the model's classes"):
        explain_cells(model, table, raw, rows, channels=["intensity", "mask"], target_class="purple")
    with pytest.raises(MechanoscopeError, match="unknown attribution method"):
        attribute([net], x[:2], y[:2], method="saliency-by-hand")


def test_permutation_importance_finds_the_informative_column():
    from mechanoscope.learn.features import FeatureModel

    rng = np.random.default_rng(0)
    t = pd.DataFrame({"area_um2": rng.uniform(100, 1000, 200), "solidity": rng.uniform(0.8, 1, 200)})
    t["label"] = np.where(t["area_um2"] > 550, "stiff", "soft")
    fm = FeatureModel("classification", ["area_um2", "solidity"], seed=0, n_classes=2)
    fm._fit_matrix(t[["area_um2", "solidity"]].to_numpy(), (t["label"] == "stiff").to_numpy().astype(int))
    model = StiffnessModel(Path("in-memory"), {"task": "classification", "target": "label", "model_type": "features", "classes": ["soft", "stiff"]}, {}, [fm])
    imp = permutation_importance_features(model, t, n_repeats=5)
    assert imp["feature"].iloc[0] == "area_um2"
    assert imp["importance_mean"].iloc[0] > 0.3 > abs(imp["importance_mean"].iloc[1])
