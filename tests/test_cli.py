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
