"""RT-DC import details a wrong line would silently change: the pixel-size override and when
the out-of-table note says the channel settings are the likely cause."""

from __future__ import annotations

import numpy as np
import pytest

pytest.importorskip("dclab")

from mechanoscope.mechanics.rtdc import import_rtdc, lut_coverage_note  # noqa: E402
from tests.test_rtdc_import import _file  # noqa: E402

SETTINGS = {"lut": "LE-2D-FEM-19", "channel_width_um": 20.0, "flow_rate_ul_s": 0.04}


def test_a_pixel_size_passed_wins_over_the_files_and_moves_the_modulus(tmp_path):
    path = _file("fmt-hdf5_fl_wide-channel_2023__wide_channel_issue_212.rtdc")
    base = import_rtdc(path, tmp_path / "a", {"viscosity_model": "herold-2017", "crop_pixels": 16})
    other = import_rtdc(path, tmp_path / "b", {"viscosity_model": "herold-2017", "crop_pixels": 16, "pixel_size_um": 0.5})
    assert base.settings["pixel_size_um"] != 0.5 and other.settings["pixel_size_um"] == 0.5
    a = base.table.sort_values("rtdc_event").rtdc_youngs_modulus_pa.to_numpy()
    b = other.table.sort_values("rtdc_event").rtdc_youngs_modulus_pa.to_numpy()
    # the pixelation correction of area and deformation depends on the pixel size: other moduli
    assert np.isfinite(a).all() and np.isfinite(b).all() and not np.allclose(a, b, rtol=1e-6)


def _note(n_out: int, n: int = 10) -> str:
    area = np.full(n, 50.0)
    deform = np.full(n, 0.05)  # inside the table: the events counted outside are 'stiffer or softer'
    emod = np.where(np.arange(n) < n_out, np.nan, 1000.0)
    return lut_coverage_note("f.rtdc", area, deform, emod, SETTINGS)


def test_the_note_blames_the_channel_settings_only_when_half_or_more_are_outside():
    assert _note(0) == ""
    few, half, most = _note(4), _note(5), _note(6)
    assert "4 of 10 event(s)" in few and "4 stiffer or softer" in few and "most events outside" not in few
    assert "5 of 10 event(s)" in half and "most events outside" in half and "--channel-width-um" in half
    assert "6 of 10 event(s)" in most and "most events outside" in most
