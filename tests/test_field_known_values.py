"""The extraction settings a field is processed with: the crop geometry and mask channel of
the first CNN model, a pixel size given by the caller overriding the images' metadata, and
the caller's other settings kept. Hand cases with stand-in models (no model files)."""

from __future__ import annotations

from types import SimpleNamespace

from mechanoscope.cells.extract import ExtractConfig
from mechanoscope.pipeline.field import extract_config_for


def _cnn(channels, size_um=20.0, pixels=32):
    return SimpleNamespace(config={"model_type": "cnn", "crop_size_um": size_um, "crop_pixels": pixels, "channels": channels})


def test_extract_config_follows_the_first_cnn_and_the_given_pixel_size():
    features = SimpleNamespace(config={"model_type": "features"})
    cfg = extract_config_for([features, _cnn(["intensity"]), _cnn(["intensity", "mask"], 40.0, 64)], {"channel": 1}, pixel_size_um=0.4)
    assert cfg.pixel_size_um == 0.4 and cfg.channel == 1
    assert (cfg.crop.crop_size_um, cfg.crop.crop_pixels, cfg.crop.mask_channel) == (20.0, 32, False)
    cfg = extract_config_for([_cnn(["intensity", "mask"], 40.0, 64)], None)
    assert (cfg.crop.crop_size_um, cfg.crop.crop_pixels, cfg.crop.mask_channel) == (40.0, 64, True)
    assert cfg.pixel_size_um is None  # from the images' metadata
    given = ExtractConfig.build(pixel_size_um=0.65)
    assert extract_config_for([features], given) is given  # nothing to change
    assert extract_config_for([features], given, pixel_size_um=0.3).pixel_size_um == 0.3
