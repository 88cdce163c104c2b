"""The learned segmenter's confidence: computed from its maps, recorded per image, flagged by segmentation QC."""

from __future__ import annotations

import numpy as np
import pytest

from mechanoscope.metrics.segmentation_qc import segmentation_qc
from mechanoscope.segment.network import segmentation_confidence


def test_confidence_of_a_probability_map_by_hand():
    fg = np.array([[0.0, 1.0, 0.5, 0.3], [0.9, 0.1, 0.74, 0.76]], dtype=np.float32)
    c = segmentation_confidence(fg[None])
    assert c["certainty"] == pytest.approx(np.mean([1, 1, 0, 0.4, 0.8, 0.8, 0.48, 0.52]), abs=1e-4)
    assert c["undecided_fraction"] == pytest.approx(3 / 8)  # 0.5, 0.3, 0.74 lie in (0.25, 0.75)


def test_qc_flags_an_image_the_network_was_unsure_about():
    images = [{"image_id": "a", "n_cells": 10, "covered_fraction": 0.2, "segmentation_undecided_fraction": 0.03},
              {"image_id": "b", "n_cells": 11, "covered_fraction": 0.2, "segmentation_undecided_fraction": 0.30},
              {"image_id": "c", "n_cells": 9, "covered_fraction": 0.2, "segmentation_undecided_fraction": 0.15},
              {"image_id": "d", "n_cells": 10, "covered_fraction": 0.2}]  # classical: no confidence, no flag
    qc = segmentation_qc(images)
    assert qc["flagged"] == ["b"] and qc["images"]["b"]["flags"] == ["uncertain"]
    assert "30% of the pixels undecided" in qc["images"]["b"]["reason"]
    assert qc["images"]["d"]["undecided_fraction"] is None and qc["settings"]["max_undecided_fraction"] == 0.15
    assert segmentation_qc(images, max_undecided_fraction=0.1)["flagged"] == ["b", "c"]
    with pytest.raises(ValueError, match="max_undecided_fraction"):
        segmentation_qc(images, max_undecided_fraction=1.5)


def test_builtin_is_less_sure_of_a_dim_field_and_process_field_carries_it():
    from mechanoscope.io.images import Image
    from mechanoscope.pipeline.field import process_field
    from mechanoscope.segment.batch import build_segmenter
    from mechanoscope.simulate import AdherentConfig
    from mechanoscope.simulate.adherent import simulate_field

    segment, _, _ = build_segmenter("builtin", device="cpu")
    undecided = {}
    for photons in (5000.0, 1000.0):  # the default exposure and a dim dish, same cells
        cfg = AdherentConfig(image_shape_px=(256, 256), n_images=2, camera={"photons_per_pixel": photons})
        f = simulate_field(cfg, 7102, population="soft")
        labels, conf = segment.with_confidence(f.image, cfg.optics.pixel_size_um)
        assert np.array_equal(labels, segment(f.image, cfg.optics.pixel_size_um))  # the same labels as a plain call
        undecided[photons] = conf["undecided_fraction"]
        if photons == 5000.0:
            res = process_field(Image(f.image, axes="YX", pixel_size_um=cfg.optics.pixel_size_um), segmenter=segment, image_id="f")
            assert res.segmentation_confidence == conf and np.array_equal(res.labels, labels)
    assert undecided[1000.0] > undecided[5000.0] + 0.05, undecided
    classical, _, _ = build_segmenter("classical")
    res = process_field(Image(f.image, axes="YX", pixel_size_um=cfg.optics.pixel_size_um), segmenter=classical, image_id="f")
    assert res.segmentation_confidence is None


def test_an_empty_noise_only_field_gets_no_cells_from_the_learned_segmenter():
    from mechanoscope.errors import MechanoscopeWarning
    from mechanoscope.segment.batch import build_segmenter
    from mechanoscope.segment.network_prep import structure_to_noise_ratio
    from mechanoscope.simulate import AdherentConfig
    from mechanoscope.simulate.adherent import simulate_field

    rng = np.random.default_rng(0)
    flat = rng.normal(1000, 5, (128, 128)).clip(0).astype(np.uint16)
    assert 0.8 < structure_to_noise_ratio(flat) < 1.25 and 0.8 < structure_to_noise_ratio(rng.poisson(500, (128, 128))) < 1.25
    dim = simulate_field(AdherentConfig(image_shape_px=(128, 128), n_images=2, camera={"photons_per_pixel": 300.0}), 7100, population="soft")
    assert structure_to_noise_ratio(dim.image) > 8  # cells in a very dim field still stand out of the noise
    assert structure_to_noise_ratio(np.repeat(np.arange(64), 64).reshape(64, 64)) == float("inf")  # no noise to measure
    segment, _, _ = build_segmenter("builtin", device="cpu")
    with pytest.warns(MechanoscopeWarning, match="no structure beyond camera noise"):
        labels, conf = segment.with_confidence(flat, 0.65)
    assert labels.shape == flat.shape and labels.max() == 0 and conf["undecided_fraction"] == 0.0
    off, _, _ = build_segmenter("builtin", {"min_structure_ratio": 0}, device="cpu")
    assert off(flat, 0.65).max() > 0  # without the check the network draws objects into stretched noise
