"""config.merge_config: the one merge of a config file with the flags typed on the command line."""

from __future__ import annotations

import json

import pytest
from pydantic import Field

from mechanoscope.config import StrictConfig, merge_config
from mechanoscope.errors import ConfigError


class _Cfg(StrictConfig):
    epochs: int = Field(10, ge=1)
    seed: int = 0
    ensemble_size: int = 1
    target: str = "label"


def test_without_a_file_every_flag_applies_defaults_included():
    cfg = merge_config(_Cfg, None, {"epochs": 4, "seed": 0, "ensemble": 3}, renames={"ensemble": "ensemble_size"}, typed=set())
    assert (cfg.epochs, cfg.seed, cfg.ensemble_size) == (4, 0, 3)


def test_with_a_file_only_typed_flags_override_it(tmp_path):
    f = tmp_path / "c.yaml"
    f.write_text("epochs: 7\nseed: 3\n")
    flags = {"epochs": 10, "seed": 5, "ensemble": 2}
    cfg = merge_config(_Cfg, f, flags, typed={"seed"}, renames={"ensemble": "ensemble_size"})
    assert (cfg.epochs, cfg.seed, cfg.ensemble_size) == (7, 5, 1)  # epochs from the file, seed typed, ensemble default untouched
    cfg = merge_config(_Cfg, f, flags, typed={"seed"}, fixed={"target": "stiffness_pa"})
    assert cfg.target == "stiffness_pa"
    json_file = tmp_path / "c.json"
    json_file.write_text(json.dumps({"epochs": 2}))
    assert merge_config(_Cfg, json_file, flags, typed=[]).epochs == 2


def test_bad_files_and_values_name_the_file_and_the_parameter(tmp_path):
    f = tmp_path / "c.yaml"
    f.write_text("epochs: 0\nbogus: 1\n")
    with pytest.raises(ConfigError) as err:
        merge_config(_Cfg, f, {}, typed=[])
    text = str(err.value)
    assert str(f) in text and "epochs" in text and "bogus: unknown parameter" in text and "allowed parameters are" in text
    with pytest.raises(ConfigError, match="no such config file"):
        merge_config(_Cfg, tmp_path / "missing.yaml", {})
    (tmp_path / "list.yaml").write_text("- 1\n- 2\n")
    with pytest.raises(ConfigError, match="expected a mapping of training settings"):
        merge_config(_Cfg, tmp_path / "list.yaml", {}, what="training settings")
    with pytest.raises(ConfigError, match="epochs") as err:
        merge_config(_Cfg, None, {"epochs": -1})
    assert "None" not in str(err.value)


class _Crop(StrictConfig):
    crop_pixels: int = 64
    crop_size_um: float = 80.0


class _Nested(StrictConfig):
    crop: _Crop = Field(default_factory=_Crop)
    relabel: bool = False


def test_dotted_renames_set_a_field_of_a_nested_section_and_keep_the_others(tmp_path):
    f = tmp_path / "e.yaml"
    f.write_text("crop: {crop_size_um: 40}\nrelabel: true\n")
    cfg = merge_config(_Nested, f, {"crop_pixels": 32, "relabel": False}, typed={"crop_pixels"}, renames={"crop_pixels": "crop.crop_pixels"})
    assert (cfg.crop.crop_pixels, cfg.crop.crop_size_um, cfg.relabel) == (32, 40.0, True)
    cfg = merge_config(_Nested, None, {"crop_pixels": 48}, renames={"crop_pixels": "crop.crop_pixels"})
    assert (cfg.crop.crop_pixels, cfg.crop.crop_size_um) == (48, 80.0)
