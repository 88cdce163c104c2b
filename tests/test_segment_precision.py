"""bf16 inference of the segmentation network: opt-in, really bfloat16, close to fp32, recorded."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from mechanoscope.errors import ConfigError
from mechanoscope.evaluate.segmentation import segmentation_scores
from mechanoscope.nn.precision import PRECISION_ENV
from mechanoscope.segment.batch import build_segmenter
from tests.test_segment_builtin import _fields


@pytest.fixture(scope="module")
def field():
    fields, px = _fields("phase_contrast", range(7300, 7301))
    return fields[0], px


def _conv_dtypes(segmenter, image, px) -> set:
    seen = set()
    hooks = [m.register_forward_hook(lambda _m, _i, out: seen.add(out.dtype))
             for m in segmenter.model.inference_net().modules() if isinstance(m, torch.nn.Conv2d)]
    try:
        labels = segmenter(image, px)
    finally:
        for h in hooks:
            h.remove()
    return seen, labels


def test_bf16_runs_in_bfloat16_stays_close_to_fp32_and_is_recorded(field, monkeypatch):
    f, px = field
    monkeypatch.delenv(PRECISION_ENV, raising=False)
    fp32, _, cfg32 = build_segmenter("builtin", {"test_time_augmentation": "none"}, device="cpu")
    bf16, _, cfg16 = build_segmenter("builtin", {"test_time_augmentation": "none", "precision": "bf16"}, device="cpu")
    assert cfg32.precision == "fp32" and cfg16.precision == "bf16"  # the resolved precision is in the settings
    d32, lab32 = _conv_dtypes(fp32, f.image, px)
    d16, lab16 = _conv_dtypes(bf16, f.image, px)
    assert d32 == {torch.float32} and torch.bfloat16 in d16
    assert lab16.dtype == lab32.dtype and lab16.shape == lab32.shape
    # the same cells: bf16 labels against fp32 labels, and both against the truth
    assert segmentation_scores(lab16, lab32)["ap_50"] >= 0.9
    assert abs(segmentation_scores(lab16, f.labels)["ap_50"] - segmentation_scores(lab32, f.labels)["ap_50"]) <= 0.1
    # fp32 afterwards is bit-identical to fp32 before
    assert np.array_equal(fp32(f.image, px), lab32)


def test_the_environment_sets_the_precision_and_bad_values_are_refused(monkeypatch):
    monkeypatch.setenv(PRECISION_ENV, "bf16")
    assert build_segmenter("builtin", device="cpu")[2].precision == "bf16"
    assert build_segmenter("builtin", {"precision": "fp32"}, device="cpu")[2].precision == "fp32"  # an explicit setting wins
    monkeypatch.setenv(PRECISION_ENV, "half")
    with pytest.raises(ConfigError, match="MECHANOSCOPE_INFERENCE_PRECISION='half'"):
        build_segmenter("builtin", device="cpu")
    monkeypatch.delenv(PRECISION_ENV)
    with pytest.raises(ConfigError):
        build_segmenter("builtin", {"precision": "fp16"}, device="cpu")
