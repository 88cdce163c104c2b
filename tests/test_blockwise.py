"""Blockwise classical segmentation: identical labels to the whole-image pipeline, ids across borders."""

import warnings

import numpy as np
import pytest

from mechanoscope.errors import ConfigError, MechanoscopeWarning
from mechanoscope.segment.blockwise import (
    default_overlap_px,
    image_statistics,
    segment_classical_blockwise,
)
from mechanoscope.segment.classical import segment_classical
from mechanoscope.segment.classical_config import ClassicalSegmentationConfig
from mechanoscope.simulate import AdherentConfig
from mechanoscope.simulate.adherent import simulate_field


@pytest.fixture(scope="module")
def field():
    cfg = AdherentConfig(image_shape_px=(384, 448), cells_per_image=14, touching_fraction=0.4)
    f = simulate_field(cfg, 3, population="stiff")
    return f


def _px(field):
    return float(field.pixel_size_um) if hasattr(field, "pixel_size_um") else float(AdherentConfig().optics.pixel_size_um)


@pytest.mark.parametrize("block_px", [96, 160])
def test_blockwise_equals_whole_image_segmentation(field, block_px):
    image, px = field.image, _px(field)
    cfg = ClassicalSegmentationConfig()
    whole = segment_classical(image, pixel_size_um=px, config=cfg)
    assert whole.max() >= 8  # a real test: many cells, some of them cut by block borders
    with warnings.catch_warnings():
        warnings.simplefilter("error", MechanoscopeWarning)  # no cell reaches a window edge
        blocks = segment_classical_blockwise(image, pixel_size_um=px, config=cfg, block_px=block_px)
    np.testing.assert_array_equal(blocks, whole)
    # cells crossing a core border exist, so the stitching was exercised
    def ids(line):
        return set(np.unique(line[line > 0]).tolist())

    across = set()
    for k in range(block_px, min(whole.shape), block_px):
        across |= ids(whole[k - 1]) & ids(whole[k])
        across |= ids(whole[:, k - 1]) & ids(whole[:, k])
    assert across, "no cell crosses a block border: choose another block size"


def test_blockwise_in_parallel_with_dask_and_sampled_statistics(field):
    image, px = field.image, _px(field)
    whole = segment_classical(image, pixel_size_um=px)
    par = segment_classical_blockwise(image, pixel_size_um=px, block_px=128, scheduler="threads")
    np.testing.assert_array_equal(par, whole)
    exact = image_statistics(image, pixel_size_um=px, block_px=128)
    sampled = image_statistics(image, pixel_size_um=px, block_px=128, stats_stride=3)
    assert sampled.threshold == pytest.approx(exact.threshold, abs=0.1)
    assert sampled.lo == pytest.approx(exact.lo, rel=0.02)


def test_too_small_overlap_is_reported_and_bad_options_refused(field):
    image, px = field.image, _px(field)
    with pytest.warns(MechanoscopeWarning, match="raise overlap_px"):
        segment_classical_blockwise(image, pixel_size_um=px, block_px=96, overlap_px=4)
    with pytest.raises(ConfigError, match="at least 64"):
        segment_classical_blockwise(image, pixel_size_um=px, block_px=8)
    with pytest.raises(ConfigError, match="2-D"):
        segment_classical_blockwise(np.zeros((2, 64, 64)), pixel_size_um=px)
    assert default_overlap_px(px) > ClassicalSegmentationConfig().cell_diameter_um / px


def test_the_classical_segmenter_goes_blockwise_on_large_planes_with_the_same_labels(monkeypatch):
    import mechanoscope.segment.blockwise as bw
    from mechanoscope.segment import batch
    from mechanoscope.segment.classical import segment_classical

    field = simulate_field(AdherentConfig(image_shape_px=(256, 256), n_images=2), 11, population="soft")
    image, px = field.image, AdherentConfig().optics.pixel_size_um
    calls = []
    real = bw.segment_classical_blockwise
    monkeypatch.setattr(bw, "segment_classical_blockwise", lambda *a, **k: calls.append(k["block_px"]) or real(*a, **k))
    monkeypatch.setattr(batch, "BLOCKWISE_MIN_PIXELS", 128 * 128)
    monkeypatch.setattr(batch, "BLOCKWISE_BLOCK_PX", 96)
    segment, _, _ = batch.build_segmenter("classical")
    labels = segment(image, px)
    assert calls == [96] and labels.max() > 3
    assert np.array_equal(labels, segment_classical(image, pixel_size_um=px))
    segment(image[:100, :100], px)  # a small plane: the whole-image pipeline
    assert calls == [96]
