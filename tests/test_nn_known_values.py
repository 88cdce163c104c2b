"""nn.inference and nn.tiling against hand-computed values and scipy.ndimage."""

from __future__ import annotations

import os

import numpy as np
import pytest
import torch
from scipy import ndimage

from mechanoscope.nn import inference
from mechanoscope.nn.inference import combine_ensemble, default_inference_threads
from mechanoscope.nn.tiling import predict_logits_tiled

CPU = torch.device("cpu")


def test_combine_ensemble_hand_computed_mean_and_spread():
    # 3 members, 1 cell: means 0, 0, 3 -> mean 1 (median would be 0); member variance
    # (ddof 0) = ((1)^2 + (1)^2 + (2)^2) / 3 = 2; predicted variances exp(log v) = 1, 4, 0.25
    # -> mean 1.75; spread sqrt(2 + 1.75)
    outs = np.array([[[0.0, 0.0]], [[0.0, np.log(4.0)]], [[3.0, np.log(0.25)]]])
    mu, sd = combine_ensemble(outs, gaussian=True)
    np.testing.assert_allclose(mu, [1.0])
    np.testing.assert_allclose(sd, [np.sqrt(2.0 + 1.75)])
    mu, sd = combine_ensemble(outs, gaussian=False)
    np.testing.assert_allclose(sd, [np.sqrt(2.0)])
    # one gaussian member: the spread is its predicted standard deviation
    mu, sd = combine_ensemble(outs[1:2], gaussian=True)
    np.testing.assert_allclose((mu, sd), ([0.0], [2.0]))
    assert combine_ensemble(outs[:1], gaussian=False)[1] is None


def test_default_threads_are_the_free_cores(monkeypatch):
    monkeypatch.delenv(inference.THREADS_ENV, raising=False)
    monkeypatch.setattr(os, "sched_getaffinity", lambda _pid: set(range(8)))
    monkeypatch.setattr(torch, "get_num_threads", lambda: 8)
    monkeypatch.setattr(os, "getloadavg", lambda: (1.0, 1.0, 1.0))  # only this process: all 8
    assert default_inference_threads() == 8
    monkeypatch.setattr(os, "getloadavg", lambda: (3.6, 1.0, 1.0))  # 2.6 other processes -> 2 busy cores
    assert default_inference_threads() == 6
    monkeypatch.setattr(torch, "get_num_threads", lambda: 4)  # capped by torch's setting
    assert default_inference_threads() == 2


def _fixed_conv():
    net = torch.nn.Conv2d(1, 1, 3, padding=1, bias=False)
    with torch.no_grad():
        net.weight.copy_(torch.arange(1.0, 10.0).reshape(1, 1, 3, 3) ** 1.3)
    return net.eval()


def test_tiled_output_is_the_reflect_padded_correlation_of_scipy():
    """Every pixel, the border included: the image is mirrored at its edges (numpy 'reflect'
    = scipy 'mirror'), never zero- or edge-padded."""
    net = _fixed_conv()
    img = np.random.default_rng(0).normal(size=(40, 52)).astype(np.float32)
    ref = ndimage.correlate(img.astype(np.float64), net.weight[0, 0].detach().double().numpy(), mode="mirror")
    for tile in (24, 128):  # several tiles, one tile
        got = predict_logits_tiled(net, img, tile_size_px=tile, tile_overlap_px=8, rf_radius_px=1, stride=1, device=CPU)
        assert got.shape == (1, 40, 52)
        np.testing.assert_allclose(got[0], ref, rtol=1e-5, atol=1e-4)


def test_tile_origins_stay_on_the_stride_grid_for_an_odd_overlap():
    """A stride-2 network (2x2 mean, then nearest upsampling) gives the 2x2 block means of
    the reflect-padded image on the grid of the padded origin; tiles cut with an odd
    overlap (9 px, rounded to 10) must keep that grid."""
    net = torch.nn.Sequential(torch.nn.AvgPool2d(2), torch.nn.Upsample(scale_factor=2, mode="nearest")).eval()
    h, w = 30, 34
    img = np.random.default_rng(1).normal(size=(h, w)).astype(np.float32)
    m = 1  # context margin = receptive-field radius
    pad = np.pad(img.astype(np.float64), ((m, m + 2), (m, m + 2)), mode="reflect")
    a, b = pad.shape[0] // 2, pad.shape[1] // 2
    blocks = pad[: 2 * a, : 2 * b].reshape(a, 2, b, 2).mean(axis=(1, 3))
    ref = np.repeat(np.repeat(blocks, 2, 0), 2, 1)[m : m + h, m : m + w]
    got = predict_logits_tiled(net, img, tile_size_px=16, tile_overlap_px=9, rf_radius_px=1, stride=2, device=CPU)
    np.testing.assert_allclose(got[0], ref, rtol=1e-5, atol=1e-5)


@pytest.mark.parametrize("tta", ["mirror", "dihedral"])
def test_tiled_tta_of_a_fixed_conv_is_the_mean_of_the_transformed_kernels(tta):
    """TTA of a linear filter = correlation with the mean of its kernel's views (each view's
    output turned back), computed here with scipy on the mirrored image."""
    net = _fixed_conv()
    k = net.weight[0, 0].detach().double().numpy()
    img = np.random.default_rng(2).normal(size=(20, 28)).astype(np.float32)
    kernels = []
    for flip, q in inference.tta_views(tta):
        # net(T x) turned back by T^-1 = correlation of x with T^-1 applied to the kernel
        kk = np.rot90(k, -q)
        kk = np.fliplr(kk) if flip else kk
        kernels.append(kk)
    mean_k = np.mean(kernels, axis=0)
    ref = ndimage.correlate(img.astype(np.float64), mean_k, mode="mirror")
    got = predict_logits_tiled(net, img, tile_size_px=16, tile_overlap_px=8, rf_radius_px=1, stride=1, device=CPU, tta=tta)
    np.testing.assert_allclose(got[0], ref, rtol=1e-5, atol=1e-4)


def test_early_stopping_edge_cases_by_hand():
    from mechanoscope.nn.training import EarlyStopping

    # an exact tie with the best is not an improvement (min_delta 0)
    s = EarlyStopping(epochs=10, patience=1, count_after_fraction=0.0, min_delta=0.0)
    assert s.update(1.0) == (True, False)
    assert s.update(1.0) == (False, True)
    # 0.6 of 3 epochs = 1.8: stale epochs count after epoch 1 (floor), i.e. from epoch 2 on
    t = EarlyStopping(epochs=3, patience=1)
    assert t.update(1.0) == (True, False)
    assert t.update(2.0) == (False, True)


def test_a_stop_at_the_last_planned_epoch_is_not_early():
    from mechanoscope.nn.training import EarlyStopping, fit_network

    net = torch.nn.Linear(1, 1)
    x = torch.ones(4, 1)
    losses = iter([1.0, 2.0])
    res = fit_network(net, train_batches=lambda _e: [(x, x)], loss_fn=torch.nn.functional.mse_loss,
                      optimizer=torch.optim.SGD(net.parameters(), lr=0.0), epochs=2, device=CPU,
                      validate=lambda: {"val_loss": next(losses)},
                      stopper=EarlyStopping(2, patience=1, count_after_fraction=0.0))
    assert len(res.records) == 2 and res.best_epoch == 1 and not res.stopped_early


def test_precision_names_are_case_insensitive():
    from mechanoscope.nn.precision import inference_precision

    assert inference_precision(" BF16 ") == "bf16" and inference_precision("FP32") == "fp32"
