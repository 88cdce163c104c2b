"""Pixel size read from files written by other software (not by our own writer).

A round trip through ``write_image`` cannot catch a reader and a writer that are wrong in
the same way; these files are written with tifffile and zarr directly, the way
microscope software writes them, with a known physical pixel size.
"""

from __future__ import annotations

import numpy as np
import pytest
import tifffile
from hypothesis import given, settings
from hypothesis import strategies as st

from mechanoscope.errors import MissingPixelSizeError
from mechanoscope.io import read_image

PX_UM = 0.65


def _plain(path, **kw):
    tifffile.imwrite(path, np.arange(24 * 20, dtype=np.uint16).reshape(24, 20), **kw)
    return path


@pytest.mark.parametrize(
    ("kw", "expected_um"),
    [
        # TIFF resolution tags: pixels per centimetre / per inch
        ({"resolution": (1e4 / PX_UM, 1e4 / PX_UM), "resolutionunit": "CENTIMETER"}, PX_UM),
        ({"resolution": (25400 / 0.5, 25400 / 0.5), "resolutionunit": "INCH"}, 0.5),
        # ImageJ hyperstacks: resolution in pixels per `unit`
        ({"imagej": True, "resolution": (1 / PX_UM, 1 / PX_UM), "metadata": {"unit": "micron"}}, PX_UM),
        ({"imagej": True, "resolution": (1 / 0.00025, 1 / 0.00025), "metadata": {"unit": "mm"}}, 0.25),
        ({"imagej": True, "resolution": (1 / 650.0, 1 / 650.0), "metadata": {"unit": "nm"}}, PX_UM),
    ],
    ids=["tiff-cm", "tiff-inch", "imagej-micron", "imagej-mm", "imagej-nm"],
)
def test_pixel_size_from_foreign_tiff_tags(tmp_path, kw, expected_um):
    img = read_image(_plain(tmp_path / "a.tif", **kw))
    assert img.pixel_size_um == pytest.approx(expected_um, rel=1e-6)
    assert img.pixel_size_source == "metadata"


def test_x_resolution_is_used_not_y(tmp_path):
    # anisotropic tags: the reader documents that it takes X
    p = _plain(tmp_path / "aniso.tif", resolution=(1e4 / 0.5, 1e4 / 0.8), resolutionunit="CENTIMETER")
    assert read_image(p).pixel_size_um == pytest.approx(0.5, rel=1e-6)


@pytest.mark.parametrize(("value", "unit", "expected_um"), [(0.4, "µm", 0.4), (650.0, "nm", 0.65), (0.001, "mm", 1.0)])
def test_ome_tiff_physical_size_units(tmp_path, value, unit, expected_um):
    p = tmp_path / "o.ome.tif"
    tifffile.imwrite(p, np.zeros((16, 16), np.uint8), ome=True,
                     metadata={"axes": "YX", "PhysicalSizeX": value, "PhysicalSizeXUnit": unit,
                               "PhysicalSizeY": value, "PhysicalSizeYUnit": unit})
    assert read_image(p).pixel_size_um == pytest.approx(expected_um, rel=1e-6)


def test_print_resolutions_are_rejected_on_both_sides_of_the_plausible_range(tmp_path):
    # 300 dpi → 84.7 µm is still plausible for a pixel; 1 pixel per cm → 10 mm is not; 1e9 per cm → 0.01 nm is not
    assert read_image(_plain(tmp_path / "dpi.tif", resolution=(300, 300), resolutionunit="INCH")).pixel_size_um == pytest.approx(25400 / 300)
    for name, res in (("coarse.tif", 1.0), ("fine.tif", 1e9)):
        with pytest.raises(MissingPixelSizeError):
            read_image(_plain(tmp_path / name, resolution=(res, res), resolutionunit="CENTIMETER"))


def _ome_zarr(path, data, axes, scale, unit="micrometer"):
    import zarr

    root = zarr.open_group(str(path), mode="w")
    root.create_array("0", data=data)
    root.attrs["multiscales"] = [{
        "version": "0.4",
        "axes": [{"name": a, "type": "space" if a in "yx" else ("channel" if a == "c" else "time"), **({"unit": unit} if a in "yx" else {})} for a in axes],
        "datasets": [{"path": "0", "coordinateTransformations": [{"type": "scale", "scale": list(scale)}]}],
    }]
    return path


def test_ome_zarr_pixel_size_is_the_x_scale(tmp_path):
    data = np.arange(2 * 12 * 10, dtype=np.uint16).reshape(2, 12, 10)
    p = _ome_zarr(tmp_path / "f.zarr", data, "tyx", (1.0, 0.9, PX_UM))
    img = read_image(p)
    assert img.axes == "TYX" and img.data.shape == (2, 12, 10)
    np.testing.assert_array_equal(img.data, data)
    assert img.pixel_size_um == pytest.approx(PX_UM)
    nm = _ome_zarr(tmp_path / "nm.zarr", data[0], "yx", (650.0, 650.0), unit="nanometer")
    assert read_image(nm).pixel_size_um == pytest.approx(PX_UM)


@settings(max_examples=25)
@given(px_um=st.floats(0.05, 20.0), unit=st.sampled_from(["CENTIMETER", "INCH"]))
def test_any_plausible_pixel_size_survives_the_resolution_tags(tmp_path_factory, px_um, unit):
    per_unit = (1e4 if unit == "CENTIMETER" else 25400.0) / px_um
    p = _plain(tmp_path_factory.mktemp("h") / "h.tif", resolution=(per_unit, per_unit), resolutionunit=unit)
    assert read_image(p).pixel_size_um == pytest.approx(px_um, rel=1e-5)
