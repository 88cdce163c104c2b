"""Faults found by a sweep of bad inputs over the command line (see tests/test_faults.py for the batch cases).

In-process (typer's runner or ``main()`` itself), no subprocess: Ctrl-C inside a verb must say what
happened and exit 130, warnings that escape a verb are one line, tifffile's log chatter about a damaged
file stays off the terminal, a folder of frames is taken in time order and a missing frame is an
error (not a silent shift of every later frame), and a value column with no finite value says so.
"""

from __future__ import annotations

import logging
import warnings
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
import tifffile
from typer.testing import CliRunner

from mechanoscope.errors import ImageReadError, MechanoscopeWarning, TrackingError
from mechanoscope.io.images import read_image, write_image, write_label_image


def _invoke(*args):
    from mechanoscope.cli.main import app

    result = CliRunner().invoke(app, [str(a) for a in args])
    assert "Traceback" not in result.output, result.output
    assert result.exception is None or isinstance(result.exception, SystemExit), repr(result.exception)
    return result


def _frames(folder: Path, names: list[str]) -> None:
    """One 40 × 40 label frame per name: a disk of radius 5 moving 2 px to the right per frame."""
    folder.mkdir()
    yy, xx = np.mgrid[:40, :40]
    for t, name in enumerate(names):
        lab = ((yy - 20) ** 2 + (xx - 8 - 2 * t) ** 2 <= 25).astype(np.uint16)
        write_label_image(folder / name, lab, pixel_size_um=1.0)


def test_ctrl_c_inside_a_verb_says_interrupted_and_exits_130(tmp_path, monkeypatch, capsys):
    import mechanoscope.track.labels as labels
    from mechanoscope.cli.main import main

    _frames(tmp_path / "frames", ["f0.tif", "f1.tif"])

    def interrupted(*args, **kwargs):
        raise KeyboardInterrupt

    monkeypatch.setattr(labels, "read_label_series", interrupted)
    with pytest.raises(SystemExit) as exit_info:
        main(["track", str(tmp_path / "frames"), "--pixel-size-um", "1", "--out", str(tmp_path / "out")])
    assert exit_info.value.code == 130
    err = capsys.readouterr().err
    assert "interrupted" in err and "run the same command again to resume" in err and "Traceback" not in err


def test_a_warning_that_escapes_a_verb_prints_as_one_line(monkeypatch):
    from mechanoscope.cli import main as cli_main

    monkeypatch.delenv("MECHANOSCOPE_DEBUG", raising=False)
    monkeypatch.setattr(warnings, "formatwarning", warnings.formatwarning)  # restored after the test
    cli_main._quiet_library_chatter()
    text = warnings.formatwarning(MechanoscopeWarning("only 6 training cells"), MechanoscopeWarning,
                                  "/site/mechanoscope/cli/train.py", 58, "result = train_model(run, cfg, out)")
    assert text == "warning: only 6 training cells\n"


def test_a_truncated_tiff_raises_one_error_without_tifffile_log_records(tmp_path, caplog):
    yy, xx = np.mgrid[:96, :96]
    write_image(tmp_path / "whole.tif", (100 + 50 * ((yy - 48) ** 2 + (xx - 48) ** 2 < 400)).astype(np.uint16),
                pixel_size_um=0.5, compression=None)
    whole = (tmp_path / "whole.tif").read_bytes()
    (tmp_path / "cut.tif").write_bytes(whole[: len(whole) // 2])
    with caplog.at_level(logging.WARNING, logger="tifffile"):
        with pytest.raises(ImageReadError, match=r"cut\.tif: could not be read.*corrupt or truncated"):
            read_image(tmp_path / "cut.tif")
        assert logging.getLogger("tifffile").level == logging.WARNING  # the reader put the level back
    assert [r for r in caplog.records if r.name.startswith("tifffile")] == []
    # the whole file still reads (the quiet reader changes nothing else)
    assert read_image(tmp_path / "whole.tif").data.shape == (96, 96)


def test_frames_are_taken_in_number_order_and_a_missing_frame_is_an_error(tmp_path):
    from mechanoscope.track.labels import frame_order

    names = [f"t{k}.tif" for k in (10, 0, 11, 1, 2, 3, 4, 5, 6, 7, 8, 9)]
    assert [p.stem for p in frame_order([tmp_path / n for n in sorted(names)])] == [f"t{k}" for k in range(12)]
    assert [p.stem for p in frame_order([tmp_path / n for n in ("s4.tif", "s0.tif", "s2.tif")])] == ["s0", "s2", "s4"]
    unnumbered = [tmp_path / n for n in ("b.tif", "a.tif")]
    assert frame_order(unnumbered) == unnumbered
    with pytest.raises(TrackingError, match=r"numbered 0\.\.3 but frame number\(s\) 2 are missing"):
        frame_order([tmp_path / n for n in ("t0.tif", "t1.tif", "t3.tif")])

    _frames(tmp_path / "gap", ["frame000.tif", "frame001.tif", "frame003.tif", "frame004.tif"])
    result = _invoke("track", tmp_path / "gap", "--pixel-size-um", "1", "--out", tmp_path / "out_gap")
    assert result.exit_code == 2 and "frame number(s) 2 are missing" in result.output and str(tmp_path / "gap") in result.output
    assert not (tmp_path / "out_gap" / "track.json").exists()

    # t0 … t10 unpadded: read as 0, 1, …, 10 the disk moves +2 px every frame, one track without gaps
    _frames(tmp_path / "unpadded", [f"t{k}.tif" for k in range(11)])
    result = _invoke("track", tmp_path / "unpadded", "--pixel-size-um", "1", "--no-divisions", "--out", tmp_path / "out")
    assert result.exit_code == 0, result.output
    cells = pd.read_parquet(tmp_path / "out" / "cells.parquet").sort_values("frame")
    assert cells["track_id"].nunique() == 1 and len(cells) == 11
    assert np.allclose(np.diff(cells["centroid_x_px"].to_numpy()), 2.0)


def test_compare_with_no_finite_value_says_so(tmp_path):
    n = 12
    pd.DataFrame({
        "image_id": [f"i{k % 4}" for k in range(n)], "cell_id": np.arange(n), "condition": ["A", "B"] * (n // 2),
        "pred_stiffness_pa": np.nan, "qc_pass": True,
    }).to_parquet(tmp_path / "cells.parquet", index=False)
    result = _invoke("compare", tmp_path / "cells.parquet", "--out", tmp_path / "cmp")
    assert result.exit_code == 2
    assert "no cell has both a condition and a finite pred_stiffness_pa" in result.output and "12 value(s)" in result.output


def test_an_ome_tiff_whose_unit_is_written_with_the_greek_mu_keeps_its_pixel_size(tmp_path):
    # OME asks for the micro sign (U+00B5) but writers also put the Greek mu (U+03BC): both are µm
    for mu in ("\u00b5", "\u03bc"):
        path = tmp_path / f"u{ord(mu):x}.ome.tif"
        tifffile.imwrite(path, np.arange(64 * 64, dtype=np.uint16).reshape(64, 64), ome=True,
                         metadata={"axes": "YX", "PhysicalSizeX": 0.325, "PhysicalSizeXUnit": f"{mu}m",
                                   "PhysicalSizeY": 0.325, "PhysicalSizeYUnit": f"{mu}m"})
        img = read_image(path)
        assert img.pixel_size_um == pytest.approx(0.325) and img.pixel_size_source == "metadata"


def test_a_model_config_lacking_a_key_the_network_needs_is_a_clear_error_not_a_key_error(tmp_path):
    import torch

    from mechanoscope.errors import MechanoscopeError
    from mechanoscope.io.model_folder import save_model_folder
    from mechanoscope.learn.networks import build_network
    from mechanoscope.learn.predict import load_stiffness_model

    net = build_network("compact", 2, 2, width=8, input_pixels=32, pooling="max")
    config = {"task": "classification", "target": "label", "model_type": "cnn", "architecture": "compact", "in_channels": 2,
              "n_outputs": 2, "width": 8, "crop_pixels": 32, "crop_size_um": 32.0, "channels": ["intensity", "mask"],
              "classes": ["soft", "stiff"], "ensemble_size": 1}
    state = {f"member0.{k}": v.detach().clone() for k, v in net.state_dict().items()}
    kw = dict(state_dict=state, normalization={}, metrics={}, provenance={}, model_card="tiny")
    save_model_folder(tmp_path / "whole", config=config, **kw)
    assert isinstance(load_stiffness_model(tmp_path / "whole").members[0], torch.nn.Module)
    save_model_folder(tmp_path / "edited", config={k: v for k, v in config.items() if k != "in_channels"}, **kw)
    with pytest.raises(MechanoscopeError, match=r"edited/config\.json: lacks in_channels that a cnn model needs"):
        load_stiffness_model(tmp_path / "edited")


def test_implausible_tiff_resolution_tags_are_named_in_the_missing_pixel_size_error(tmp_path):
    from mechanoscope.errors import MissingPixelSizeError

    img = np.arange(32 * 32, dtype=np.uint16).reshape(32, 32)
    # 1/0.65 pixels per cm: 6500 µm pixels, a value written in the wrong unit
    tifffile.imwrite(tmp_path / "cm.tif", img, resolution=(1 / 0.65, 1 / 0.65), resolutionunit="CENTIMETER")
    with pytest.raises(MissingPixelSizeError, match=r"cm\.tif: .*resolution tags say 6500 µm per pixel, in cm units.*--pixel-size-um"):
        read_image(tmp_path / "cm.tif")
    tifffile.imwrite(tmp_path / "none.tif", img)  # no resolution at all: the plain message
    with pytest.raises(MissingPixelSizeError) as info:
        read_image(tmp_path / "none.tif")
    assert "resolution tags" not in str(info.value) and "--pixel-size-um" in str(info.value)
    tifffile.imwrite(tmp_path / "ok.tif", img, resolution=(1e4 / 0.65, 1e4 / 0.65), resolutionunit="CENTIMETER")
    assert read_image(tmp_path / "ok.tif").pixel_size_um == pytest.approx(0.65)
