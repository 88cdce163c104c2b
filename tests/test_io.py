"""Image and table I/O: axes, pixel size, bad files, atomic writes."""

import warnings

import numpy as np
import pandas as pd
import pytest
import tifffile

from mechanoscope.errors import AxesError, ImageReadError, MechanoscopeWarning, MissingPixelSizeError
from mechanoscope.io import (
    atomic_path,
    check_image_values,
    image_paths,
    read_image,
    read_label_image,
    read_table,
    write_image,
    write_label_image,
    write_table,
)


def test_tiff_round_trip_keeps_pixel_size(tmp_path):
    data = np.arange(64 * 48, dtype=np.uint16).reshape(64, 48)
    p = write_image(tmp_path / "a.tif", data, pixel_size_um=0.325)
    img = read_image(p)
    np.testing.assert_array_equal(img.data, data)
    assert img.axes == "YX"
    assert img.pixel_size_um == pytest.approx(0.325, rel=1e-6)
    assert img.pixel_size_source == "metadata"


def test_ome_tiff_physical_size_is_read(tmp_path):
    p = tmp_path / "b.ome.tif"
    tifffile.imwrite(p, np.zeros((3, 32, 32), np.uint8), ome=True, metadata={"axes": "TYX", "PhysicalSizeX": 0.5, "PhysicalSizeXUnit": "µm", "PhysicalSizeY": 0.5})
    img = read_image(p)
    assert img.axes == "TYX" and img.pixel_size_um == pytest.approx(0.5)
    assert img.plane(T=1).axes == "YX"


def test_missing_pixel_size_is_a_clear_error_naming_the_file(tmp_path):
    p = tmp_path / "nometa.tif"
    tifffile.imwrite(p, np.ones((16, 16), np.uint8))
    with pytest.raises(MissingPixelSizeError, match="nometa.tif.*pixel-size-um"):
        read_image(p)
    assert read_image(p, pixel_size_um=0.65).pixel_size_source == "override"
    assert read_image(p, require_pixel_size=False).pixel_size_um is None


def test_print_resolution_is_not_taken_as_pixel_size(tmp_path):
    p = tmp_path / "dpi.tif"
    tifffile.imwrite(p, np.ones((16, 16), np.uint8), resolution=(72, 72), resolutionunit="INCH")
    with pytest.raises(MissingPixelSizeError):
        read_image(p)


def test_override_differing_from_metadata_warns(tmp_path):
    p = write_image(tmp_path / "c.tif", np.ones((8, 8), np.uint16), pixel_size_um=0.65)
    with pytest.warns(MechanoscopeWarning, match="overrides"):
        img = read_image(p, pixel_size_um=1.3)
    assert img.pixel_size_um == 1.3


def test_png_needs_explicit_pixel_size(tmp_path):
    import imageio.v3 as iio

    p = tmp_path / "d.png"
    iio.imwrite(p, (np.arange(100).reshape(10, 10)).astype(np.uint8))
    with pytest.raises(MissingPixelSizeError, match="d.png"):
        read_image(p)
    rgb = np.repeat(np.arange(100, dtype=np.uint8).reshape(10, 10)[..., None], 3, axis=2)
    iio.imwrite(tmp_path / "grey_rgb.png", rgb)
    img = read_image(tmp_path / "grey_rgb.png", pixel_size_um=1.0)
    assert img.axes == "YX" and img.data.shape == (10, 10)


def test_three_d_without_axes_is_an_error_that_says_what_to_pass(tmp_path):
    p = tmp_path / "stack.tif"
    tifffile.imwrite(p, np.zeros((4, 16, 16), np.uint8))  # plain TIFF: tifffile calls the axes 'QYX'
    with pytest.raises(AxesError, match=r"stack.tif.*--axes"):
        read_image(p, pixel_size_um=1.0)
    img = read_image(p, axes="TYX", pixel_size_um=1.0)
    assert img.axes == "TYX"
    with pytest.raises(AxesError, match="single 2-D plane"):
        img.as_2d()
    with pytest.raises(AxesError, match="letters"):
        read_image(p, axes="YX", pixel_size_um=1.0)


def test_corrupt_truncated_and_empty_files(tmp_path):
    good = write_image(tmp_path / "g.tif", np.ones((64, 64), np.uint16), pixel_size_um=1.0, compression=None)
    raw = good.read_bytes()
    (tmp_path / "trunc.tif").write_bytes(raw[: len(raw) // 3])
    with pytest.raises(ImageReadError, match="trunc.tif"):
        read_image(tmp_path / "trunc.tif")
    (tmp_path / "junk.tif").write_bytes(b"this is not a tiff")
    with pytest.raises(ImageReadError, match="junk.tif.*corrupt"):
        read_image(tmp_path / "junk.tif")
    (tmp_path / "empty.tif").write_bytes(b"")
    with pytest.raises(ImageReadError, match="empty"):
        read_image(tmp_path / "empty.tif")
    with pytest.raises(ImageReadError, match="no such file"):
        read_image(tmp_path / "missing.tif")
    with pytest.raises(ImageReadError, match="unsupported"):
        (tmp_path / "x.bmpx").write_bytes(b"1")
        read_image(tmp_path / "x.bmpx")


def test_label_images(tmp_path):
    lab = np.zeros((20, 20), np.int32)
    lab[2:5, 2:5] = 1
    lab[10:15, 10:15] = 70000
    p = write_label_image(tmp_path / "l.tif", lab, pixel_size_um=0.5)
    back = read_label_image(p)
    np.testing.assert_array_equal(back.data, lab)
    assert back.pixel_size_um == pytest.approx(0.5)
    tifffile.imwrite(tmp_path / "f.tif", np.full((4, 4), 0.5, np.float32))
    with pytest.raises(ImageReadError, match="integer ids"):
        read_label_image(tmp_path / "f.tif")


def test_check_image_values():
    with pytest.raises(ImageReadError, match="NaN"):
        check_image_values(np.array([[1.0, np.nan], [0.0, 2.0]]), "x.tif")
    with pytest.raises(ImageReadError, match="constant"):
        check_image_values(np.full((4, 4), 7, np.uint8), "x.tif")
    with pytest.raises(ImageReadError, match="empty"):
        check_image_values(np.zeros((0, 4)), "x.tif")
    check_image_values(np.arange(4.0).reshape(2, 2))


def test_atomic_write_keeps_old_file_on_failure(tmp_path):
    target = tmp_path / "t.txt"
    target.write_text("old")
    with pytest.raises(RuntimeError):
        with atomic_path(target) as tmp:
            tmp.write_text("half")
            raise RuntimeError("crash while writing")
    assert target.read_text() == "old"
    assert [p.name for p in tmp_path.iterdir()] == ["t.txt"]


def test_tables_round_trip(tmp_path):
    df = pd.DataFrame({"cell_id": [1, 2], "area_um2": [10.5, 20.25], "label": ["soft", "stiff"]})
    for name in ("t.parquet", "t.csv"):
        pd.testing.assert_frame_equal(read_table(write_table(df, tmp_path / name)), df)
    with pytest.raises(ValueError, match="parquet or .csv"):
        write_table(df, tmp_path / "t.xlsx")
    (tmp_path / "bad.parquet").write_bytes(b"nope")
    with pytest.raises(ValueError, match="bad.parquet"):
        read_table(tmp_path / "bad.parquet")


def test_image_paths(tmp_path):
    with pytest.raises(ImageReadError, match="no images"):
        image_paths(tmp_path)
    write_image(tmp_path / "b.tif", np.ones((4, 4), np.uint8), pixel_size_um=1)
    write_image(tmp_path / "a.tif", np.ones((4, 4), np.uint8), pixel_size_um=1)
    (tmp_path / "notes.txt").write_text("x")
    assert [p.name for p in image_paths(tmp_path)] == ["a.tif", "b.tif"]
