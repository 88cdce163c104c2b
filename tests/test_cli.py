"""The command line: version, help with defaults, simulate."""

import pandas as pd
from typer.testing import CliRunner

from mechanoscope import __version__
from mechanoscope.cli.main import app

runner = CliRunner()


def test_version_and_help():
    r = runner.invoke(app, ["--version"])
    assert r.exit_code == 0 and __version__ in r.output
    r = runner.invoke(app, ["--help"])
    assert r.exit_code == 0 and "simulate" in r.output


def test_simulate_help_shows_defaults():
    r = runner.invoke(app, ["simulate", "adherent", "--help"], terminal_width=200)
    assert r.exit_code == 0
    assert "default: 8" in r.output and "--seed" in r.output


def test_simulate_adherent_writes_dataset(tmp_path):
    out = tmp_path / "sim"
    r = runner.invoke(app, ["simulate", "adherent", "--out", str(out), "--n-images", "2", "--image-size-px", "160", "--cells-per-image", "3"])
    assert r.exit_code == 0, r.output
    cells = pd.read_parquet(out / "cells.parquet")
    assert len(cells) > 0 and set(cells.label) <= {"soft", "stiff"}
    assert (out / "images" / "img_0001.tif").exists()


def test_simulate_bad_population_is_a_clean_error(tmp_path):
    r = runner.invoke(app, ["simulate", "adherent", "--out", str(tmp_path / "x"), "--populations", "soft,wobbly"])
    assert r.exit_code == 2
    assert "unknown population" in r.output and "Traceback" not in r.output


def test_a_config_file_is_not_overridden_by_flag_defaults(tmp_path):
    import json

    cfg = tmp_path / "sim.json"
    cfg.write_text(json.dumps({"n_images": 1, "cells_per_image": 2, "image_shape_px": [128, 128], "modality": "phase_contrast", "optics": {"pixel_size_um": 0.5}}))
    out = tmp_path / "sim"
    r = runner.invoke(app, ["simulate", "adherent", "--out", str(out), "--config", str(cfg), "--cells-per-image", "3"])
    assert r.exit_code == 0, r.output
    used = json.loads((out / "simulation.json").read_text())
    used = used.get("config", used)
    # the file's values stand (not the flags' defaults 8 images, 512 px, bright-field, 0.65 µm) ...
    assert used["n_images"] == 1 and list(used["image_shape_px"]) == [128, 128] and used["modality"] == "phase_contrast"
    assert used["optics"]["pixel_size_um"] == 0.5 and used["defocus_um"] == 0.0
    # ... and a typed flag wins over the file
    assert used["cells_per_image"] == 3

    # extract: crop settings from the file survive the flags' defaults
    ext = tmp_path / "extract.json"
    ext.write_text(json.dumps({"crop": {"crop_size_um": 40.0, "crop_pixels": 24}}))
    run = tmp_path / "run"
    r = runner.invoke(app, ["extract", str(out / "images"), str(out / "labels"), "--out", str(run), "--config", str(ext)])
    assert r.exit_code == 0, r.output
    written = json.loads((run / "extract.json").read_text())
    text = json.dumps(written)
    assert '"crop_pixels": 24' in text and '"crop_size_um": 40.0' in text
