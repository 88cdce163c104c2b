"""Fast inference path of predict_cells: one pass per network, BatchNorm folded, threads.

The reference everywhere is the unoptimised path computed by hand from the original
networks: ``forward_tta`` of each unfused network, and the applicability-domain score
from a second, separate pass (``DomainReference.score_crops`` without features), which
is what ``predict_cells`` did before. Tolerances: probabilities 1e-5 absolute, moduli
1e-5 relative, domain scores 1e-4 relative (Mahalanobis distances in 64 features
amplify the float32 rounding of the folded convolutions) with the same in/out verdicts.
The networks run on the CPU here (a GPU rounds convolutions differently, TF32).
"""

from __future__ import annotations

import copy
import functools
import os
import subprocess
import sys
import textwrap

import numpy as np
import pandas as pd
import pytest
import torch

from mechanoscope.errors import ConfigError
from mechanoscope.learn.data import normalise_crops
from mechanoscope.learn.domain import (
    crop_statistics,
    fit_domain_reference,
    penultimate_features,
)
from mechanoscope.learn.networks import build_network
from mechanoscope.learn.predict import StiffnessModel, predict_cells
from mechanoscope.nn.inference import (
    THREADS_ENV,
    combine_ensemble,
    default_inference_threads,
    forward_tta,
    forward_tta_capture,
    fuse_for_inference,
    inference_threads,
)

CH = ["intensity", "mask"]
PX = 32
SCALE = 0.2


def _crops(n: int, seed: int, noise: float = 0.02, level: float = 1000.0, with_radius: bool = False):
    """Raw crops: a dark disk of random radius and contrast on a flat background, plus its mask."""
    rng = np.random.default_rng(seed)
    yy, xx = np.mgrid[:PX, :PX]
    out = np.empty((n, 2, PX, PX), np.float32)
    radius = rng.uniform(5, 11, n)
    for i in range(n):
        disk = np.hypot(yy - PX / 2 + rng.normal(0, 1), xx - PX / 2 + rng.normal(0, 1)) < radius[i]
        img = level * (1 - rng.uniform(0.05, 0.3) * disk) * (1 + noise * rng.standard_normal((PX, PX)))
        out[i, 0], out[i, 1] = img, disk
    return (out, radius) if with_radius else out


def _net(n_out: int, seed: int, x: np.ndarray | None = None, radius: np.ndarray | None = None) -> torch.nn.Module:
    """A compact CNN, trained a few steps on ``x`` (big vs small disks) when given, in eval mode."""
    torch.manual_seed(seed)
    net = build_network("compact", 2, n_out, width=8, input_pixels=PX, pooling="max")
    if x is not None:
        xt, r = torch.from_numpy(x), torch.from_numpy(radius).float()
        opt = torch.optim.Adam(net.parameters(), lr=3e-3)
        for _ in range(12):
            out = net(xt)
            loss = torch.nn.functional.cross_entropy(out, (r > 8).long()) if n_out == 2 else torch.nn.functional.mse_loss(out[:, 0], (r - 8) / 2)
            opt.zero_grad()
            loss.backward()
            opt.step()
    return net.eval()


@functools.cache
def _trained(task: str, members: int, train: bool) -> tuple:
    raw, radius = _crops(64, seed=99, with_radius=True)
    train_x = normalise_crops(raw, CH, CH, SCALE) if train else None
    with inference_threads(1):  # the machine may be shared: one thread is the safe speed
        return tuple(_net(2 if task == "classification" else 1, k, train_x, radius) for k in range(members))


def _model(task: str, tta: bool, members: int = 2, train: bool = True) -> StiffnessModel:
    nets = [copy.deepcopy(n) for n in _trained(task, members, train)]
    ref_x = normalise_crops(_crops(60, seed=100), CH, CH, SCALE)
    held_x = normalise_crops(_crops(40, seed=101), CH, CH, SCALE)
    dom = fit_domain_reference(
        penultimate_features(nets[0], ref_x), crop_statistics(ref_x, CH),
        penultimate_features(nets[0], held_x), crop_statistics(held_x, CH), np.repeat(["a", "b", "c", "d"], 10), channels=CH,
    )
    cfg = {"task": task, "target": "label" if task == "classification" else "stiffness_pa", "model_type": "cnn", "architecture": "compact",
           "crop_pixels": PX, "crop_size_um": 40.0, "pixel_size_um_of_crop": 40.0 / PX, "channels": CH, "tta": tta, "temperature": 1.7,
           "classes": ["soft", "stiff"], "target_mean": 3.0, "target_std": 0.4, "log_target": True, "conformal_quantile": 0.8,
           "conformal_scaled": False, "loss": "mse"}
    return StiffnessModel(path=__import__("pathlib").Path("synthetic"), config=cfg, normalization={"contrast_scale": SCALE}, members=nets, domain=dom)


def _test_cells(n: int = 50) -> tuple[pd.DataFrame, np.ndarray]:
    # in-domain crops and noisier ones (out of domain), in three images
    crops = np.concatenate([_crops(n - 20, seed=7), _crops(20, seed=8, noise=0.12)])
    table = pd.DataFrame({"image_id": [f"i{3 * i // n}" for i in range(n)], "cell_id": np.arange(n)})
    return table, crops


def _reference(model: StiffnessModel, crops: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Outputs (K, N, n_out) and domain scores of the unoptimised two-pass path."""
    x = torch.from_numpy(normalise_crops(crops, CH, CH, SCALE))
    with inference_threads(1), torch.inference_mode():
        raw = np.stack([forward_tta(m, x, bool(model.config["tta"])).numpy() for m in model.members])
    return raw, model.domain.score_crops(model.members[0], x)


def _domain_agrees(got: pd.DataFrame, score: np.ndarray, target: str) -> None:
    np.testing.assert_allclose(got[f"pred_domain_score_{target}"], score, rtol=1e-4)
    assert (score > 1).any() and (score <= 1).any()  # both verdicts occur, so their equality means something
    np.testing.assert_array_equal(got[f"pred_in_domain_{target}"].to_numpy(bool), score <= 1)


@pytest.mark.parametrize("tta", [False, True])
def test_classification_equals_unoptimised_path(tta):
    model = _model("classification", tta)
    table, crops = _test_cells()
    raw, score = _reference(model, crops)
    z = raw.mean(0) / 1.7
    prob = np.exp(z - z.max(1, keepdims=True))
    prob /= prob.sum(1, keepdims=True)
    got = predict_cells(model, table, crops, channels=CH, batch_size=32, device="cpu")
    np.testing.assert_allclose(got[["pred_prob_soft", "pred_prob_stiff"]].to_numpy(), prob, atol=1e-5)
    assert 0.05 < (prob.argmax(1) == 1).mean() < 0.95  # both classes predicted
    np.testing.assert_array_equal(got["pred_label"].to_numpy(), np.array(["soft", "stiff"])[prob.argmax(1)])
    _domain_agrees(got, score, "label")


@pytest.mark.parametrize("kwargs", [{}, {"threads": 1, "channels_last": True}, {"fuse": False, "channels_last": False, "threads": 1}])
def test_regression_equals_unoptimised_path(kwargs):
    model = _model("regression", tta=True)
    table, crops = _test_cells()
    raw, score = _reference(model, crops)
    mu = raw[:, :, 0].mean(0)
    sd = raw[:, :, 0].std(0)
    got = predict_cells(model, table, crops, channels=CH, batch_size=25, **kwargs, device="cpu")
    np.testing.assert_allclose(got["pred_stiffness_pa"], 10 ** (mu * 0.4 + 3.0), rtol=1e-5)
    np.testing.assert_allclose(got["pred_log10_sd"], sd * 0.4, rtol=1e-4, atol=1e-7)
    np.testing.assert_allclose(got["pred_lo_pa"], 10 ** ((mu - 0.8) * 0.4 + 3.0), rtol=1e-5)
    _domain_agrees(got, score, "stiffness_pa")


def test_each_network_runs_once_per_batch_and_view():
    model = _model("classification", tta=True)
    table, crops = _test_cells(70)
    predict_cells(model, table.iloc[:2], crops[:2], channels=CH, batch_size=32, device="cpu")  # builds the inference copies
    (_, nets), = model._inference.values()
    calls = [0] * len(nets)
    hooks = [net.register_forward_pre_hook(lambda *a, k=k: calls.__setitem__(k, calls[k] + 1)) for k, net in enumerate(nets)]
    originals = [0]
    hooks.append(model.members[0].register_forward_pre_hook(lambda *a: originals.__setitem__(0, originals[0] + 1)))
    try:
        predict_cells(model, table, crops, channels=CH, batch_size=32, device="cpu")
    finally:
        for h in hooks:
            h.remove()
    assert calls == [3 * 8, 3 * 8]  # 3 batches × 8 views, the domain features come from the same pass
    assert originals == [0]
    assert not any(isinstance(m, torch.nn.BatchNorm2d) for m in nets[0].modules())


def test_weights_changed_in_place_are_used():
    model = _model("regression", tta=False)
    table, crops = _test_cells(30)
    before = predict_cells(model, table, crops, channels=CH, device="cpu")["pred_stiffness_pa"].to_numpy()
    with torch.no_grad():
        for net in model.members:
            net.head[-1].bias.add_(0.5)
    after = predict_cells(model, table, crops, channels=CH, device="cpu")["pred_stiffness_pa"].to_numpy()
    np.testing.assert_allclose(after / before, 10 ** (0.5 * 0.4), rtol=1e-5)


def test_fuse_keeps_outputs_and_leaves_the_original():
    net = _trained("classification", 2, True)[0]  # trained: BatchNorm statistics far from identity
    state = {k: v.clone() for k, v in net.state_dict().items()}
    x = torch.from_numpy(normalise_crops(_crops(16, seed=5), CH, CH, SCALE))
    fused = fuse_for_inference(net)
    with torch.inference_mode():
        ref, got = net(x), fused(x)
    n_bn = sum(isinstance(m, torch.nn.BatchNorm2d) for m in net.modules())
    assert n_bn == 7 and not any(isinstance(m, torch.nn.BatchNorm2d) for m in fused.modules())
    torch.testing.assert_close(got, ref, rtol=1e-5, atol=1e-5)
    assert all(torch.equal(state[k], v) for k, v in net.state_dict().items())
    assert fuse_for_inference(ob := object()) is ob  # not a module (e.g. an ONNX member): as it is


def test_capture_equals_separate_feature_pass():
    net = _net(2, 4)
    x = torch.from_numpy(normalise_crops(_crops(12, seed=6), CH, CH, SCALE))
    with torch.inference_mode():
        out, feats = forward_tta_capture(net, x, net.head[-1], tta=True)
        ref = forward_tta(net, x, True)
    torch.testing.assert_close(out, ref, rtol=0, atol=0)
    np.testing.assert_array_equal(feats.numpy().astype(np.float64), penultimate_features(net, x))
    assert feats.shape == (12, 64)


def test_combine_ensemble_equals_training_combination():
    from mechanoscope.learn.train import _combine_regression

    outs = np.random.default_rng(0).normal(size=(3, 9, 2))
    for loss in ("mse", "gaussian"):
        for k in (1, 3):
            a, b = combine_ensemble(outs[:k], gaussian=loss == "gaussian"), _combine_regression(outs[:k], loss)
            np.testing.assert_array_equal(a[0], b[0])
            assert (a[1] is None) == (b[1] is None)
            if a[1] is not None:
                np.testing.assert_array_equal(a[1], b[1])


def test_inference_threads_setting(monkeypatch):
    before = torch.get_num_threads()
    monkeypatch.setenv(THREADS_ENV, "1")
    assert default_inference_threads() == 1
    with inference_threads() as n:
        assert n == 1 and torch.get_num_threads() == 1
    assert torch.get_num_threads() == before
    monkeypatch.setenv(THREADS_ENV, "two")
    with pytest.raises(ConfigError, match=THREADS_ENV):
        default_inference_threads()
    monkeypatch.delenv(THREADS_ENV)
    monkeypatch.setattr(os, "getloadavg", lambda: (1.0, 1.0, 1.0))  # only this process runs: every core
    assert default_inference_threads() == min(len(os.sched_getaffinity(0)), before)
    monkeypatch.setattr(os, "getloadavg", lambda: (50.0, 50.0, 50.0))  # far more runnable processes than cores
    assert default_inference_threads() == 1
    with pytest.raises(ConfigError), inference_threads(0):
        pass


def test_prediction_does_not_import_training():
    code = textwrap.dedent(
        """
        import sys
        sys.path.insert(0, %r)
        import test_predict_speed as t
        model = t._model("regression", tta=False, members=1, train=False)
        table, crops = t._test_cells(20)
        had = set(sys.modules)  # fitting the domain reference (sklearn) may have imported SciPy parts already
        out = t.predict_cells(model, table, crops, channels=t.CH, device="cpu")
        assert len(out) == 20
        heavy = [m for m in ("mechanoscope.learn.train", "mechanoscope.learn.uncertainty", "scipy.optimize") if m in sys.modules and m not in had]
        print("heavy:", heavy, "mechanoscope.learn.train" in had)
        """
    ) % os.path.dirname(__file__)
    proc = subprocess.run([sys.executable, "-c", code], check=False, capture_output=True, text=True, timeout=120)
    assert proc.returncode == 0, proc.stderr[-2000:]
    assert "heavy: [] False" in proc.stdout, proc.stdout


def _crop_statistics_per_crop(x: np.ndarray, channels: list[str]) -> np.ndarray:
    """The former one-crop-at-a-time ``crop_statistics`` (np.median, np.linalg.lstsq, np.std), as the reference."""
    img = np.asarray(x[:, channels.index("intensity")], dtype=np.float64)
    n, h, w = img.shape
    yy, xx = np.mgrid[:h, :w]
    cell = np.asarray(x[:, channels.index("mask")]) > 0.5 if "mask" in channels else np.broadcast_to(np.hypot(yy - (h - 1) / 2, xx - (w - 1) / 2) < 0.3 * min(h, w), (n, h, w))
    lap = np.zeros_like(img)
    lap[:, 1:-1, 1:-1] = 4 * img[:, 1:-1, 1:-1] - img[:, :-2, 1:-1] - img[:, 2:, 1:-1] - img[:, 1:-1, :-2] - img[:, 1:-1, 2:]
    gy, gx = np.gradient(img, axis=(1, 2))
    inner = np.zeros((h, w), bool)
    inner[1:-1, 1:-1] = True
    design = np.stack([np.ones(h * w), (yy.ravel() - h / 2) / h, (xx.ravel() - w / 2) / w], 1)
    out = np.full((n, 6), np.nan)
    for i in range(n):
        bg = ~cell[i] if (~cell[i]).sum() >= 8 else ~inner
        fg = cell[i] if cell[i].sum() >= 4 else inner
        lb = lap[i][bg & inner]
        out[i, 0] = 1.4826 * np.median(np.abs(lb - np.median(lb))) / np.sqrt(20.0) if lb.size else 0.0
        coef, *_ = np.linalg.lstsq(design[bg.ravel()], img[i].ravel()[bg.ravel()], rcond=None)
        out[i, 1] = np.hypot(coef[1], coef[2])
        g2 = np.mean(gy[i][fg] ** 2 + gx[i][fg] ** 2)
        l2 = np.mean(lap[i][fg & inner] ** 2) if (fg & inner).any() else 0.0
        out[i, 2] = np.log((l2 + 1e-12) / (g2 + 1e-12))
        out[i, 3], out[i, 4], out[i, 5] = np.std(img[i][fg]), np.mean(img[i][fg]), np.std(img[i][bg])
    return out


def test_crop_statistics_without_a_loop_equal_the_per_crop_ones():
    from mechanoscope.learn.domain import crop_statistics

    x = normalise_crops(np.concatenate([_crops(30, 1), _crops(10, 2, noise=0.2, level=300.0)]), CH, CH, SCALE)
    x[3, 1] = 0  # no cell: the interior stands for it
    x[4, 1] = 1  # no background: the border stands for it
    x[5, 0] += np.linspace(-1, 1, PX)[None, :]  # a background slope
    for ch, xs in ((CH, x), (["intensity"], x[:, :1])):
        ref = _crop_statistics_per_crop(xs, ch)
        got = crop_statistics(xs, ch)
        np.testing.assert_allclose(got, ref, rtol=1e-10, atol=1e-12)
        assert got[5, 1] > 5 * np.median(got[:, 1])  # the slope is seen
    assert crop_statistics(x[:0], CH).shape == (0, 6)


def _image_statistics_pandas(table: pd.DataFrame, local_background=None, background_noise=None) -> pd.DataFrame:
    """The former pandas-groupby ``image_statistics`` (median / quantile per image), as the reference."""
    from mechanoscope.learn.domain_image import IMAGE_STAT_NAMES, _log

    n = len(table)
    col = lambda c: table[c].to_numpy(dtype=float) if c in table.columns else np.full(n, np.nan)  # noqa: E731
    opt = lambda v: np.full(n, np.nan) if v is None else np.asarray(v, dtype=float)  # noqa: E731
    lb = opt(local_background)
    bg = col("crop_pad_value")
    bg = np.where(np.isfinite(bg) & (bg > 0), bg, lb)
    with np.errstate(divide="ignore", invalid="ignore"):
        per = pd.DataFrame({"pixel_size_um": col("pixel_size_um"), "noise": np.sqrt(np.maximum(col("texture_neighbour_contrast"), 0) / 2) / bg,
                            "bgnoise": opt(background_noise), "sharp": col("texture_gradient_mean_per_um") / bg, "contrast": col("intensity_std") / bg,
                            "lo": col("intensity_min") / bg, "hi": col("intensity_max") / bg, "local_bg": lb, "area": col("area_um2")},
                           index=pd.Index(table["image_id"].astype(str).to_numpy(), name="image_id"))
    g = per.groupby(level=0, sort=True)
    med = g.median()
    out = pd.DataFrame(index=med.index)
    out["n_cells"] = g.size().astype(int)
    out["pixel_size_um"] = med["pixel_size_um"]
    for name, c in (("noise_rel", "noise"), ("background_noise_rel", "bgnoise"), ("sharpness_rel", "sharp"), ("contrast_rel", "contrast"), ("log_cell_area_um2", "area")):
        out[name] = _log(med[c].to_numpy())
    out["intensity_p05_rel"] = g["lo"].quantile(0.05)
    out["intensity_p95_rel"] = g["hi"].quantile(0.95)
    with np.errstate(divide="ignore", invalid="ignore"):
        unev = (g["local_bg"].quantile(0.9) - g["local_bg"].quantile(0.1)) / med["local_bg"]
    out["illumination_unevenness"] = unev.where((g["local_bg"].count() >= 3) & (med["local_bg"] > 0))
    return out[["n_cells", "pixel_size_um", *IMAGE_STAT_NAMES]]


def test_image_statistics_without_pandas_groupby_equal_the_groupby_ones():
    from mechanoscope.learn.domain_image import image_statistics

    rng = np.random.default_rng(3)
    seen_nan = seen_many = 0
    for trial in range(60):
        n, g = int(rng.integers(1, 50)), int(rng.integers(1, 6))
        t = pd.DataFrame({"image_id": rng.choice([f"im{k}" for k in range(g)], n), "pixel_size_um": rng.choice([0.5, 0.6], n),
                          "texture_neighbour_contrast": rng.uniform(0, 10, n), "crop_pad_value": rng.choice([1000.0, np.nan, 0.0], n),
                          "texture_gradient_mean_per_um": rng.uniform(1, 5, n), "intensity_std": rng.uniform(1, 50, n),
                          "intensity_min": rng.uniform(0, 900, n), "intensity_max": rng.uniform(900, 2000, n), "area_um2": rng.uniform(50, 500, n)})
        for c in t.columns[1:]:
            t.loc[rng.random(n) < 0.25, c] = np.nan  # missing values (and whole images without a value) are skipped, as pandas does
        if trial % 3 == 0:
            t = t.drop(columns=["intensity_min"])
        lb = rng.uniform(900, 1100, n)
        lb[rng.random(n) < 0.2] = np.nan
        bn = None if trial % 2 else rng.uniform(0, 0.1, n)
        got, ref = image_statistics(t, lb, bn), _image_statistics_pandas(t, lb, bn)
        assert list(got.index) == list(ref.index) and got.index.name == "image_id" and list(got.columns) == list(ref.columns)
        seen_nan += bool(np.isnan(ref.to_numpy(float)).any())
        seen_many += bool((got["n_cells"] > 3).any())
        np.testing.assert_allclose(got.to_numpy(float), ref.to_numpy(float), rtol=1e-13, atol=0, equal_nan=True)
    assert seen_nan > 10 and seen_many > 10  # the cases that matter occurred: NaN statistics, images with several cells


@pytest.mark.parametrize("task", ["classification", "regression"])
def test_bf16_autocast_stays_within_the_stated_tolerance_of_fp32(task, monkeypatch):
    from mechanoscope.nn.precision import PRECISION_ENV

    model = _model(task, tta=True)
    table, crops = _test_cells()
    ref = predict_cells(model, table, crops, channels=CH, device="cpu", threads=1)
    seen: list = []
    predict_cells(model, table.iloc[:2], crops[:2], channels=CH, device="cpu")  # builds the inference copies
    (_, nets), = model._inference.values()
    conv = next(m for m in nets[0].modules() if isinstance(m, torch.nn.Conv2d))
    hook = conv.register_forward_hook(lambda mod, inp, out: seen.append(out.dtype))
    try:
        monkeypatch.setenv(PRECISION_ENV, "bf16")  # the environment variable chooses it when the call does not
        got = predict_cells(model, table, crops, channels=CH, device="cpu", threads=1)
    finally:
        hook.remove()
    assert seen and set(seen) == {torch.bfloat16}  # it did run in bfloat16
    t = model.config["target"]
    if task == "classification":
        d = np.abs(got[["pred_prob_soft", "pred_prob_stiff"]].to_numpy() - ref[["pred_prob_soft", "pred_prob_stiff"]].to_numpy())
        assert 0 < d.max() < 1e-2  # changed by the rounding, within the stated tolerance
    else:
        r = np.abs(got["pred_stiffness_pa"].to_numpy() / ref["pred_stiffness_pa"].to_numpy() - 1)
        assert 0 < r.max() < 1e-2
    np.testing.assert_allclose(got[f"pred_domain_score_{t}"], ref[f"pred_domain_score_{t}"], rtol=0.1)  # barely trained nets: a few %
    monkeypatch.setenv(PRECISION_ENV, "fp16")
    with pytest.raises(ConfigError, match=PRECISION_ENV):
        predict_cells(model, table, crops, channels=CH, device="cpu")
    monkeypatch.delenv(PRECISION_ENV)
    again = predict_cells(model, table, crops, channels=CH, device="cpu", threads=1)  # fp32 again: the reference numbers exactly
    pd.testing.assert_frame_equal(again, ref)
    with pytest.raises(ConfigError, match="precision"):
        predict_cells(model, table, crops, channels=CH, device="cpu", precision="half")
