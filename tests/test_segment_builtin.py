"""The built-in segmentation model shipped with the package (``builtin``).

It loads offline from the package folder, finds the cells of simulated bright-field and
phase-contrast fields (fresh seeds, not those it was trained on), fine-tunes for two
epochs from the CLI, its training script's quick mode runs, and its card names the
data, the licence, the settings and the scores it was measured at.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch

from mechanoscope.evaluate.segmentation import segmentation_scores
from mechanoscope.evaluate.segmentation_pooled import aggregate_segmentation_scores
from mechanoscope.segment.batch import build_segmenter
from mechanoscope.segment.builtin_model import builtin_model_path, resolve_model_folder
from tests.conftest import shared_data

torch.set_num_threads(1)

REPO = Path(__file__).resolve().parents[1]


def _fields(modality: str, seeds: range, size: int = 256):
    from mechanoscope.simulate import AdherentConfig, simulate_field

    kw = {"defocus_um": 0.0} if modality == "phase_contrast" else {}
    cfg = AdherentConfig(modality=modality, image_shape_px=(size, size), n_images=2, **kw)
    return [simulate_field(cfg, s, population=cfg.population_names[s % 2], image_id=str(s)) for s in seeds], cfg.optics.pixel_size_um


@pytest.fixture(scope="module")
def builtin():
    return build_segmenter("builtin", device="cpu")


def test_builtin_model_folder_is_in_the_package_and_small():
    path = builtin_model_path()
    assert path.parent == Path(__import__("mechanoscope.segment", fromlist=["x"]).__file__).parent
    for name in ("config.json", "weights.safetensors", "normalization.json", "metrics.json", "MODEL_CARD.md"):
        assert (path / name).is_file(), name
    assert (path / "weights.safetensors").stat().st_size < 10e6
    assert resolve_model_folder("builtin") == path and resolve_model_folder("BUILTIN") == path
    cfg = json.loads((path / "config.json").read_text())
    assert cfg["task"] == "instance_segmentation"
    # mirror test-time augmentation: +0.03 AP@0.5 on three real phase-contrast sets for 2 network passes (2.73 -> 2.39 MP/s)
    assert cfg["train_config"]["inference"]["test_time_augmentation"] == "mirror"


def test_builtin_loads_offline_and_is_recorded_as_builtin(builtin, monkeypatch):
    segment, info, cfg = builtin
    assert info["method"] == "builtin"
    assert Path(info["model"]) == builtin_model_path()
    assert len(info["model_weights_sha256"]) == 64
    assert cfg.device == "cpu"


# The shipped model reaches AP@0.5 0.96 (phase contrast, 23 of 24 cells) and 0.69 (bright
# field) on these two 256-px fields (earlier models: 1.00 / 0.23, then 0.92 / 0.80 before
# training on varied exposure and illumination, which gave up some standard bright field for
# dim and uneven light and real phase contrast). Phase contrast is held to the issue's target
# 0.9; bright field to a floor below what it reaches (a broken model gets 0), and its 0.9
# target is an expected failure until the model improves (strict: it fails once met).
MIN_AP_50 = {"brightfield": 0.6, "phase_contrast": 0.9}


def _simulated_ap_50(builtin, modality: str) -> dict:
    segment, _, _ = builtin
    fields, px = _fields(modality, range(7100, 7102))
    per = [segmentation_scores(segment(f.image, px), f.labels) for f in fields]
    return aggregate_segmentation_scores(per)


@pytest.mark.parametrize("modality", ["brightfield", "phase_contrast"])
def test_builtin_finds_the_cells_of_a_simulated_field(builtin, modality):
    agg = _simulated_ap_50(builtin, modality)
    assert agg["ap_50"] >= MIN_AP_50[modality], agg


@pytest.mark.xfail(strict=True, reason="simulated bright field (3 µm defocus) is not yet learned well enough: AP@0.5 0.69 here, "
                                       "0.61 on 12 of the benchmark's test fields; the issue's target is 0.9")
def test_builtin_reaches_the_issue_target_on_simulated_bright_field(builtin):
    assert _simulated_ap_50(builtin, "brightfield")["ap_50"] >= 0.9


def test_builtin_beats_the_classical_pipeline_on_real_phase_contrast(builtin):
    """On two real Usiigaci images (part of its training set, so only a sanity check)."""
    from mechanoscope.io import read_image, read_label_image
    from mechanoscope.segment.classical import ClassicalSegmentationConfig, segment_classical

    data = shared_data("usiigaci_phase_contrast")
    segment, _, _ = builtin
    px = 6.5 * 2 / 15
    ours, classical = [], []
    for name in ("train_set1", "train_set2"):
        img = read_image(data / "images" / f"{name}.png", pixel_size_um=px).as_2d()[:512, :512]
        lab = read_label_image(data / "masks" / f"{name}_instances.png").as_2d().astype(np.int32)[:512, :512]
        ours.append(segmentation_scores(segment(img, px), lab))
        classical.append(segmentation_scores(segment_classical(img, pixel_size_um=px, config=ClassicalSegmentationConfig(cell_diameter_um=40.0)), lab))
    assert aggregate_segmentation_scores(ours)["ap_50"] > aggregate_segmentation_scores(classical)["ap_50"] + 0.2


def test_cli_fine_tunes_the_builtin_model_for_two_epochs(tmp_path):
    from mechanoscope.io import write_label_image
    from mechanoscope.io.images import write_image

    fields, px = _fields("brightfield", range(7200, 7203), size=160)
    (tmp_path / "img").mkdir()
    (tmp_path / "lab").mkdir()
    for k, f in enumerate(fields):
        write_image(tmp_path / "img" / f"f{k}.tif", f.image, pixel_size_um=px)
        write_label_image(tmp_path / "lab" / f"f{k}.tif", f.labels, pixel_size_um=px)
    out = tmp_path / "tuned"
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    r = subprocess.run(
        [sys.executable, "-m", "mechanoscope.cli.main", "segment", "train", str(tmp_path / "img"), str(tmp_path / "lab"),
         "--init", "builtin", "--out", str(out), "--epochs", "2", "--patches-per-epoch", "8", "--batch-size", "4",
         "--patch-size-px", "64", "--validation-fraction", "0.34", "--device", "cpu"],
        capture_output=True, text=True, env=env, timeout=300,
    )
    assert r.returncode == 0, r.stdout + r.stderr
    assert "Traceback" not in r.stdout + r.stderr
    tuned = json.loads((out / "config.json").read_text())
    base = json.loads((builtin_model_path() / "config.json").read_text())
    assert tuned["architecture"] == base["architecture"]  # kept from the built-in model
    assert tuned["pixel_size_um"] == base["pixel_size_um"]
    prov = json.loads((out / "provenance.json").read_text())
    assert Path(prov["initialised_from"]) == builtin_model_path()
    from safetensors.numpy import load_file

    a, b = load_file(out / "weights.safetensors"), load_file(builtin_model_path() / "weights.safetensors")
    assert a.keys() == b.keys()
    assert any(not np.array_equal(a[k], b[k]) for k in a)  # it trained


def test_cli_refuses_an_init_folder_that_does_not_exist(tmp_path):
    r = subprocess.run(
        [sys.executable, "-m", "mechanoscope.cli.main", "segment", "train", str(tmp_path), str(tmp_path),
         "--init", str(tmp_path / "nope"), "--out", str(tmp_path / "m")],
        capture_output=True, text=True, timeout=300,
    )
    assert r.returncode != 0 and "Traceback" not in r.stdout + r.stderr


def test_training_script_quick_mode_runs(tmp_path):
    shared_data("usiigaci_phase_contrast")
    out = tmp_path / "quick"
    script = [sys.executable, str(REPO / "scripts" / "train_builtin_segmenter.py"), "--quick", "--out", str(out)]
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    r = subprocess.run([*script, "--test-time-augmentation", "none"], capture_output=True, text=True, timeout=600, env=env)
    assert r.returncode == 0, r.stderr[-2000:]
    rec = json.loads(r.stdout)
    assert rec["quick"] is True and rec["data"]["real"]["n_images"] == 3
    assert set(rec["scores"]) == {"real_validation", "simulated_brightfield", "simulated_phase_contrast", "t98g_vs_usiigaci_peer"}
    assert rec["scores"]["t98g_vs_usiigaci_peer"]["builtin"]["n_images"] == 3 and rec["inference"]["test_time_augmentation"] == "none"
    assert (out / "weights.safetensors").is_file()
    assert "Usiigaci" in (out / "MODEL_CARD.md").read_text()
    weights = (out / "weights.safetensors").read_bytes()
    # --rescore: no training; the model's default augmentation changes and its record and card follow
    r = subprocess.run([*script, "--rescore", "--test-time-augmentation", "mirror"], capture_output=True, text=True, timeout=600, env=env)
    assert r.returncode == 0, r.stderr[-2000:]
    again = json.loads(r.stdout)
    assert (out / "weights.safetensors").read_bytes() == weights
    assert json.loads((out / "config.json").read_text())["train_config"]["inference"]["test_time_augmentation"] == "mirror"
    assert again["inference"]["test_time_augmentation"] == "mirror" and again["training"] == rec["training"]
    assert json.loads((out / "metrics.json").read_text())["builtin_training"]["scores"] == again["scores"]
    assert "(`mirror`)" in (out / "MODEL_CARD.md").read_text()


def test_model_card_names_data_licence_settings_and_scores():
    path = builtin_model_path()
    card = (path / "MODEL_CARD.md").read_text()
    rec = json.loads((path / "metrics.json").read_text())["builtin_training"]
    assert rec["quick"] is False
    for needed in ("Usiigaci", "MIT", "doi:10.1016/j.softx.2019.02.007", "OIST", "Simulated fields", "Augmentation",
                   rec["settings"]["representation"], f"{rec['settings']['epochs']} epochs"):
        assert needed in card, needed
    for name, sc in rec["scores"].items():
        assert f"| {name} | builtin | {sc['builtin']['ap_50']} |" in card


def test_cli_test_time_augmentation_flag_names_the_choices(tmp_path):
    import tifffile

    (tmp_path / "img").mkdir()
    tifffile.imwrite(tmp_path / "img" / "a.tif", np.full((64, 64), 100, np.uint16))
    r = subprocess.run([sys.executable, "-m", "mechanoscope.cli.main", "segment", "run", str(tmp_path / "img"), "--pixel-size-um", "0.5",
                        "--out", str(tmp_path / "out"), "--test-time-augmentation", "sideways"], capture_output=True, text=True, timeout=300)
    text = r.stdout + r.stderr
    assert r.returncode == 2 and "test_time_augmentation" in text and "'mirror'" in text and "Traceback" not in text
