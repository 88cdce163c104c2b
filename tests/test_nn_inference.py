"""The one batched/TTA inference routine (nn.inference) and its use in tiled segmentation."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from mechanoscope.errors import ConfigError
from mechanoscope.nn.inference import DIHEDRAL_VIEWS, forward_tta, predict_batched
from mechanoscope.nn.tiling import predict_logits_tiled


def _asymmetric_conv(seed=0, out_ch=2):
    torch.manual_seed(seed)
    net = torch.nn.Conv2d(1, out_ch, 3, padding=1, bias=True)
    with torch.no_grad():  # a kernel with no symmetry: its output changes with the input's orientation
        net.weight.copy_(torch.arange(9 * out_ch, dtype=torch.float32).reshape(out_ch, 1, 3, 3) ** 1.5 / 10)
    return net.eval()


def _views(x):
    for flip, k in DIHEDRAL_VIEWS:
        v = torch.flip(x, dims=(3,)) if flip else x
        yield torch.rot90(v, k, dims=(2, 3))


def test_dense_tta_is_the_mean_of_the_back_transformed_views_and_is_equivariant():
    net = _asymmetric_conv()
    x = torch.randn(2, 1, 8, 8, generator=torch.Generator().manual_seed(1))
    with torch.no_grad():
        got = forward_tta(net, x, True, dense=True)
        ref = torch.zeros_like(got)
        for flip, k in DIHEDRAL_VIEWS:
            v = torch.flip(x, dims=(3,)) if flip else x
            o = torch.rot90(net(torch.rot90(v, k, dims=(2, 3))), -k, dims=(2, 3))
            ref += torch.flip(o, dims=(3,)) if flip else o
        ref /= 8
        torch.testing.assert_close(got, ref)
        assert not torch.allclose(got, net(x), atol=1e-3)  # the views really differ for this kernel
        # equivariance: TTA of a rotated/mirrored input is the rotated/mirrored TTA output
        for v_in, v_out in zip(_views(x), _views(got)):
            torch.testing.assert_close(forward_tta(net, v_in, True, dense=True), v_out, rtol=1e-5, atol=1e-5)
        # without TTA: the plain forward pass
        torch.testing.assert_close(forward_tta(net, x, False, dense=True), net(x))


def test_mirror_tta_is_the_mean_of_the_input_and_its_mirror_and_names_are_checked():
    net = _asymmetric_conv()
    x = torch.randn(2, 1, 8, 8, generator=torch.Generator().manual_seed(4))
    with torch.no_grad():
        got = forward_tta(net, x, "mirror", dense=True)
        ref = (net(x) + torch.flip(net(torch.flip(x, dims=(3,))), dims=(3,))) / 2
        torch.testing.assert_close(got, ref)
        assert not torch.allclose(got, net(x), atol=1e-3) and not torch.allclose(got, forward_tta(net, x, "dihedral", dense=True), atol=1e-3)
        # mirror-equivariant: the mirrored input gives the mirrored output
        torch.testing.assert_close(forward_tta(net, torch.flip(x, dims=(3,)), "mirror", dense=True), torch.flip(got, dims=(3,)), rtol=1e-5, atol=1e-5)
        torch.testing.assert_close(forward_tta(net, x, "dihedral", dense=True), forward_tta(net, x, True, dense=True))
        torch.testing.assert_close(forward_tta(net, x, "none", dense=True), net(x))
        with pytest.raises(ConfigError, match="'rotate' is not one of"):
            forward_tta(net, x, "rotate", dense=True)


def test_segmentation_tta_setting_reads_old_booleans_and_refuses_other_names():
    from pydantic import ValidationError

    from mechanoscope.segment.network import SegmentationInferenceConfig

    assert SegmentationInferenceConfig().test_time_augmentation == "none"
    assert SegmentationInferenceConfig(test_time_augmentation=True).test_time_augmentation == "dihedral"
    assert SegmentationInferenceConfig(test_time_augmentation=False).test_time_augmentation == "none"
    assert SegmentationInferenceConfig(test_time_augmentation="mirror").test_time_augmentation == "mirror"
    with pytest.raises(ValidationError):
        SegmentationInferenceConfig(test_time_augmentation="flips")


def test_image_level_tta_is_invariant_to_the_crop_orientation():
    conv = _asymmetric_conv(out_ch=3)
    net = torch.nn.Sequential(conv, torch.nn.Flatten(), torch.nn.Linear(3 * 6 * 6, 2)).eval()
    x = torch.randn(4, 1, 6, 6, generator=torch.Generator().manual_seed(2))
    with torch.no_grad():
        base = forward_tta(net, x, True)
        assert base.shape == (4, 2)
        for v in _views(x):
            torch.testing.assert_close(forward_tta(net, v, True), base, rtol=1e-5, atol=1e-5)
        assert not torch.allclose(net(torch.rot90(x, 1, dims=(2, 3))), net(x), atol=1e-3)


def test_predict_batched_is_independent_of_the_batch_size():
    conv = _asymmetric_conv(out_ch=3)
    nets = [torch.nn.Sequential(conv, torch.nn.AdaptiveAvgPool2d(1), torch.nn.Flatten()).eval(), torch.nn.Sequential(torch.nn.Flatten(), torch.nn.Linear(25, 3)).eval()]
    x = np.random.default_rng(0).normal(size=(11, 1, 5, 5)).astype(np.float32)
    a = predict_batched(nets, x, batch_size=3, tta=True, device="cpu")
    b = predict_batched(nets, x, batch_size=256, tta=True, device="cpu")
    assert a.shape == (2, 11, 3) and a.dtype == np.float32
    np.testing.assert_allclose(a, b, rtol=1e-5, atol=1e-6)
    with torch.no_grad():
        np.testing.assert_allclose(a[1], forward_tta(nets[1], torch.from_numpy(x)).numpy(), rtol=1e-5, atol=1e-6)
    assert predict_batched(nets[:1], x[:0], device="cpu").shape == (1, 0, 1)
    with pytest.raises(ConfigError, match="batch_size"):
        predict_batched(nets, x, batch_size=0, device="cpu")


def test_tiled_segmentation_output_with_tta_equals_whole_image_tta():
    net = _asymmetric_conv(out_ch=3)
    img = np.random.default_rng(3).normal(size=(40, 52)).astype(np.float32)
    tiled = predict_logits_tiled(net, img, tile_size_px=24, tile_overlap_px=8, rf_radius_px=1, stride=1, device=torch.device("cpu"), tta=True)
    with torch.no_grad():
        whole = forward_tta(net, torch.from_numpy(img)[None, None], True, dense=True)[0].numpy()
    # reflect padding at the image border: compare inside, away from the border by the receptive field
    np.testing.assert_allclose(tiled[:, 1:-1, 1:-1], whole[:, 1:-1, 1:-1], rtol=1e-4, atol=1e-5)
    plain = predict_logits_tiled(net, img, tile_size_px=24, tile_overlap_px=8, rf_radius_px=1, stride=1, device=torch.device("cpu"))
    assert np.abs(plain - tiled).max() > 1e-2


def test_batchnorm_is_folded_into_monai_convolutions_and_transposed_convolutions():
    from monai.networks.nets import UNet

    from mechanoscope.nn.inference import fuse_for_inference

    torch.manual_seed(0)
    net = UNet(spatial_dims=2, in_channels=1, out_channels=2, channels=(4, 8, 16), strides=(2, 2), num_res_units=1, norm="batch")
    net.train()
    for _ in range(3):  # running statistics away from 0/1, so an unfolded or wrongly folded norm shows
        net(torch.randn(4, 1, 32, 32) * 3 + 1)
    net.eval()
    n_bn = sum(isinstance(m, torch.nn.BatchNorm2d) for m in net.modules())
    n_up = sum(isinstance(m, torch.nn.ConvTranspose2d) for m in net.modules())
    fused = fuse_for_inference(net)
    assert n_bn >= 4 and n_up >= 1 and not any(isinstance(m, torch.nn.BatchNorm2d) for m in fused.modules())
    x = torch.randn(2, 1, 48, 48)
    with torch.inference_mode():
        want, got = net(x), fused(x)
    assert torch.allclose(got, want, atol=1e-4 * float(want.abs().max()))
    assert any(isinstance(m, torch.nn.BatchNorm2d) for m in net.modules())  # the original is untouched


def test_segmentation_inference_net_follows_weight_changes():
    from mechanoscope.segment.network import SegmentationModel
    from mechanoscope.segment.network_config import SegmentationTrainConfig
    from mechanoscope.segment.network_config import build_unet

    cfg = SegmentationTrainConfig(channels=(4, 8), epochs=1)
    net = build_unet(cfg).eval()
    model = SegmentationModel(net=net, config=cfg, pixel_size_um=1.0, normalization={})
    x = torch.randn(1, 1, 32, 32)
    first = model.inference_net()
    assert model.inference_net() is first  # made once
    with torch.inference_mode():
        assert torch.allclose(first(x), net(x), atol=1e-5)
    with torch.no_grad():
        next(net.parameters()).add_(0.5)  # e.g. an optimiser step of fine-tuning
    again = model.inference_net()
    assert again is not first
    with torch.inference_mode():
        assert torch.allclose(again(x), net(x), atol=1e-5) and not torch.allclose(first(x), net(x), atol=1e-3)
