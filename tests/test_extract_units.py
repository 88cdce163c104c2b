"""extract_cells / extract_folder: pixel sizes and µm columns, axes, frames, channels, pairing.

Hand-made label images with cells at known positions (in µm) and images whose
per-channel / per-frame intensities are known constants.
"""

from __future__ import annotations

import json
import warnings

import numpy as np
import pandas as pd
import pytest

from mechanoscope.cells import ExtractConfig, extract_cells, extract_folder, pair_images_and_labels
from mechanoscope.errors import AxesError, MechanoscopeError, MechanoscopeWarning, MissingPixelSizeError
from mechanoscope.io.images import Image, write_image, write_label_image

CROP = {"crop": {"crop_size_um": 16.0, "crop_pixels": 8}}
CROPT = {"crop": {"crop_size_um": 8.0, "crop_pixels": 16}}  # crop pixel = image pixel at 0.5 µm


def rects(shape, boxes):
    """Label image with rectangles [(y0, y1, x0, x1, id)] in pixels (half-open)."""
    lab = np.zeros(shape, np.int32)
    for y0, y1, x0, x1, i in boxes:
        lab[y0:y1, x0:x1] = i
    return lab


# a non-square field with two cells at known, x/y-asymmetric places
LAB = rects((30, 50), [(4, 10, 30, 40, 3), (18, 26, 6, 10, 8)])
# centroids (px): id 3 → (6.5, 34.5), area 60; id 8 → (21.5, 7.5), area 32


def img_for(lab, inside=200.0, outside=100.0, seed=0):
    rng = np.random.default_rng(seed)
    return (np.where(lab > 0, inside, outside) + rng.normal(0, 0.5, lab.shape)).astype(np.float32)


def test_um_columns_use_the_images_pixel_size_and_the_override():
    img = Image(img_for(LAB), "YX", 0.5)
    t, crops = extract_cells(img, LAB, config=CROP)
    assert t.cell_id.tolist() == [3, 8]
    assert (t.pixel_size_um == 0.5).all()
    assert t.area_px.tolist() == [60, 32]
    np.testing.assert_allclose(t.area_um2, [15.0, 8.0])
    np.testing.assert_allclose(t.centroid_y_px, [6.5, 21.5])
    np.testing.assert_allclose(t.centroid_x_px, [34.5, 7.5])
    np.testing.assert_allclose(t.centroid_y_um, [3.25, 10.75])
    np.testing.assert_allclose(t.centroid_x_um, [17.25, 3.75])
    assert crops.shape == (2, 2, 8, 8)
    # 8×8 crop pixels of 2 µm around (3.25, 17.25) µm and (10.75, 3.75) µm in a 15 × 25 µm image:
    # crop-pixel centres outside the image: 2 rows of the first; 2 rows and 2 columns of the second
    np.testing.assert_allclose(t.crop_outside_fraction, [2 / 8, 1 - (6 / 8) ** 2])
    # an explicit pixel size overrides the image's own
    t2, _ = extract_cells(img, LAB, pixel_size_um=2.0, config=CROP)
    assert (t2.pixel_size_um == 2.0).all()
    np.testing.assert_allclose(t2.area_um2, [240.0, 128.0])
    np.testing.assert_allclose(t2.centroid_x_um, [69.0, 15.0])
    np.testing.assert_allclose(t2.crop_outside_fraction, [0.0, 0.0])  # 60 × 100 µm image: both crops inside
    # the crop covers crop_size_um of specimen: at 2 µm/px a 16 µm crop holds 8×8 image px
    big = {"crop": {"crop_size_um": 40.0, "crop_pixels": 20}}
    _, c2 = extract_cells(img, LAB, pixel_size_um=2.0, config=big)
    _, c1 = extract_cells(img, LAB, pixel_size_um=1.0, config=big)
    assert c2[0, 1].sum() == pytest.approx(60, abs=2)  # 6×10 px = 12×20 µm = 6×10 crop px of 2 µm
    assert c1[0, 1].sum() == pytest.approx(15, abs=3)  # 6×10 µm = 3×5 crop px


def test_pixel_size_is_required_and_must_be_positive():
    img = img_for(LAB)
    with pytest.raises(MissingPixelSizeError, match="pixel_size_um"):
        extract_cells(img, LAB)
    with pytest.raises(MissingPixelSizeError):
        extract_cells(Image(img, "YX", None), LAB)
    for bad in (0.0, -1.0, float("nan"), float("inf")):
        with pytest.raises(MechanoscopeError, match="positive"):
            extract_cells(img, LAB, pixel_size_um=bad)


def test_image_id_and_pad_value_defaults(tmp_path):
    img = img_for(LAB)
    t, _ = extract_cells(img, LAB, pixel_size_um=1.0)
    assert (t.image_id == "image").all()
    t, _ = extract_cells(Image(img, "YX", 1.0, tmp_path / "well_B3.tif"), LAB)
    assert (t.image_id == "well_B3").all()
    t, _ = extract_cells(Image(img, "YX", 1.0, tmp_path / "well_B3.tif"), LAB, image_id="other")
    assert (t.image_id == "other").all()
    # pad value = median of the image unless configured
    np.testing.assert_allclose(t.crop_pad_value, float(np.median(img)), rtol=1e-6)
    t, _ = extract_cells(img, LAB, pixel_size_um=1.0, config={"crop": {"pad_value": 7.0}})
    assert (t.crop_pad_value == 7.0).all()


@pytest.mark.parametrize("axes", ["CYX", "YXC", "YCX"])
def test_the_chosen_channel_is_measured(axes):
    chans = np.stack([img_for(LAB, 200, 100), img_for(LAB, 400, 50, 1), img_for(LAB, 900, 10, 2)])  # (C, Y, X)
    data = np.transpose(chans, ["CYX".index(a) for a in axes])
    for k, inside in enumerate((200, 400, 900)):
        t, crops = extract_cells(data, LAB, pixel_size_um=1.0, config={"axes": axes, "channel": k, **CROP})
        assert t.intensity_mean.tolist() == pytest.approx([inside, inside], abs=1)
        assert t.cell_id.tolist() == [3, 8]
        np.testing.assert_allclose(t.centroid_x_px, [34.5, 7.5])
    with pytest.raises(AxesError, match="3 channels"):
        extract_cells(data, LAB, pixel_size_um=1.0, config={"axes": axes})
    with pytest.raises(AxesError, match=r"channel=3.*only 3 channels \(0\.\.2\)"):
        extract_cells(data, LAB, pixel_size_um=1.0, config={"axes": axes, "channel": 3})


def test_single_channel_and_single_plane_axes_are_dropped():
    img = img_for(LAB)
    for axes, arr in (("CYX", img[None]), ("ZYX", img[None]), ("YXZ", img[..., None]), ("TZCYX", img[None, None, None])):
        t, _ = extract_cells(arr, LAB, pixel_size_um=1.0, config={"axes": axes})
        assert t.cell_id.tolist() == [3, 8] and (t.frame == 0).all()
        np.testing.assert_allclose(t.centroid_y_px, [6.5, 21.5])
    with pytest.raises(AxesError, match="Z stack of 2"):
        extract_cells(np.stack([img, img]), LAB, pixel_size_um=1.0, config={"axes": "ZYX"})
    # channel 0 of a plain image is fine, channel 1 is not
    assert len(extract_cells(img, LAB, pixel_size_um=1.0, config={"channel": 0})[0]) == 2
    with pytest.raises(AxesError, match="no channel axis"):
        extract_cells(img, LAB, pixel_size_um=1.0, config={"channel": 1})
    with pytest.raises(AxesError, match="do not fit"):
        extract_cells(img[None], LAB, pixel_size_um=1.0, config={"axes": "YX"})
    with pytest.raises(AxesError, match="do not fit"):
        extract_cells(img[None], LAB, pixel_size_um=1.0, config={"axes": "QYX"})


def test_transposed_axes_are_brought_to_yx():
    img = img_for(LAB)
    t, crops = extract_cells(img.T[None].copy(), LAB, pixel_size_um=0.5, config={"axes": "CXY", **CROP})
    ref, ref_crops = extract_cells(img, LAB, pixel_size_um=0.5, config=CROP)
    pd.testing.assert_frame_equal(t, ref)
    np.testing.assert_array_equal(crops, ref_crops)
    # time last: (Y, X, T)
    two = np.stack([img, 2 * img], axis=-1)
    t, _ = extract_cells(two, np.stack([LAB, LAB]), pixel_size_um=1.0, config={"axes": "YXT"})
    assert t.frame.tolist() == [0, 0, 1, 1]
    assert t.intensity_mean.tolist() == pytest.approx([200, 200, 400, 400], abs=1)


def test_time_lapse_frames_pair_image_and_label_planes():
    n = 3
    labs = np.stack([rects((30, 50), [(2 + 5 * k, 8 + 5 * k, 3 + 10 * k, 9 + 10 * k, 1)] + ([(20, 28, 40, 48, 2)] if k == 1 else []))
                     for k in range(n)])
    imgs = np.stack([img_for(labs[k], inside=100 * (k + 2), outside=50.0, seed=k) for k in range(n)])
    t, crops = extract_cells(imgs, labs, pixel_size_um=0.5, config={"axes": "TYX", **CROPT})
    assert t.frame.tolist() == [0, 1, 1, 2] and t.cell_id.tolist() == [1, 1, 2, 1]
    assert len(crops) == 4
    assert t.intensity_mean.tolist() == pytest.approx([200, 300, 300, 400], abs=1)
    np.testing.assert_allclose(t.centroid_y_px, [4.5, 9.5, 23.5, 14.5])
    np.testing.assert_allclose(t.centroid_x_px, [5.5, 15.5, 43.5, 25.5])
    np.testing.assert_allclose(t.centroid_x_um, [2.75, 7.75, 21.75, 12.75])
    # each crop's mask channel is its own cell in its own frame
    assert [c[1].sum() > 0 for c in crops] == [True] * 4
    # ... and its intensity channel comes from the same frame (raw values, not normalised)
    assert [float(c[0][c[1] > 0].mean()) for c in crops] == pytest.approx([200, 300, 300, 400], abs=2)
    # an Image with T axis, labels as Image with T axis
    t2, _ = extract_cells(Image(imgs, "TYX", 0.5), Image(labs, "TYX", 0.5), config=CROPT)
    pd.testing.assert_frame_equal(t.drop(columns="image_id"), t2.drop(columns="image_id"))
    # a frame without cells does not shift the others
    labs[0] = 0
    t3, c3 = extract_cells(imgs, labs, pixel_size_um=0.5, config={"axes": "TYX"})
    assert t3.frame.tolist() == [1, 1, 2] and len(c3) == 3
    # wrong number of label planes
    with pytest.raises(MechanoscopeError, match="shape"):
        extract_cells(imgs, labs[:2], pixel_size_um=0.5, config={"axes": "TYX"})


def test_single_frame_label_stack_and_empty_labels():
    img = img_for(LAB)
    t, _ = extract_cells(img, LAB[None], pixel_size_um=1.0)
    assert t.cell_id.tolist() == [3, 8] and (t.frame == 0).all()
    t, _ = extract_cells(Image(img, "YX", 1.0), Image(LAB[None], "TYX", 1.0))
    assert t.cell_id.tolist() == [3, 8]
    # two label planes for a single-frame image is a mismatch, not "take the first plane"
    with pytest.raises(MechanoscopeError, match="shape"):
        extract_cells(img, np.stack([LAB, np.zeros_like(LAB)]), pixel_size_um=1.0)
    with pytest.raises(MechanoscopeError, match="shape"):
        extract_cells(Image(img, "YX", 1.0), Image(np.stack([LAB, LAB]), "TYX", 1.0))
    with pytest.warns(MechanoscopeWarning, match="no cells"):
        t, crops = extract_cells(img, np.zeros_like(LAB), pixel_size_um=1.0, config=CROP)
    assert len(t) == 0 and crops.shape[0] == 0 and "area_um2" in t.columns


# ----------------------------------------------------------------------------- folders


def _write(folder, name, lab, px, img=None, lab_px=None, suffix="_labels"):
    (folder / "images").mkdir(exist_ok=True)
    (folder / "labels").mkdir(exist_ok=True)
    write_image(folder / "images" / f"{name}.tif", img_for(lab) if img is None else img, pixel_size_um=px)
    write_label_image(folder / "labels" / f"{name}{suffix}.tif", lab, pixel_size_um=px if lab_px is None else lab_px)


def test_folder_uses_each_files_pixel_size_or_the_override(tmp_path):
    lab_b = rects((30, 50), [(10, 20, 10, 30, 5)])
    _write(tmp_path, "a", LAB, 0.5)
    _write(tmp_path, "b", lab_b, 0.25, lab_px=0.3)  # label metadata disagrees: image wins, with a warning
    with pytest.warns(MechanoscopeWarning, match=r"pixel size 0\.3 µm differs from 0\.25 µm"):
        res = extract_folder(tmp_path / "images", tmp_path / "labels", tmp_path / "run", ExtractConfig.build(**CROP))
    t = pd.read_parquet(tmp_path / "run" / "cells.parquet")
    assert t.image_id.tolist() == ["a", "a", "b"] and t.cell_id.tolist() == [3, 8, 5]
    np.testing.assert_allclose(t.pixel_size_um, [0.5, 0.5, 0.25])
    np.testing.assert_allclose(t.area_um2, [15.0, 8.0, 200 * 0.0625])
    np.testing.assert_allclose(t.centroid_y_um, [3.25, 10.75, 14.5 * 0.25])
    np.testing.assert_allclose(t.centroid_x_um, [17.25, 3.75, 19.5 * 0.25])
    summary = json.loads((tmp_path / "run" / "extract.json").read_text())
    ins = {i["image_id"]: i for i in summary["inputs"]}
    assert ins["a"]["pixel_size_um"] == pytest.approx(0.5) and ins["b"]["pixel_size_um"] == pytest.approx(0.25)
    assert ins["a"]["pixel_size_source"] == "metadata" and ins["a"]["n_cells"] == 2 and ins["b"]["n_cells"] == 1
    assert ins["a"]["shape"] == [30, 50] and ins["a"]["axes"] == "YX"
    assert ins["a"]["n_qc_pass"] == int(t[t.image_id == "a"].qc_pass.sum())
    assert summary["n_cells"] == 3 == res.n_cells and summary["n_images"] == 2 == res.n_images
    assert summary["crops"]["pixel_size_um_of_crop"] == pytest.approx(2.0)
    # the override replaces every file's metadata
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", MechanoscopeWarning)
        res = extract_folder(tmp_path / "images", tmp_path / "labels", tmp_path / "run2",
                             ExtractConfig.build(pixel_size_um=2.0, **CROP))
    t = res.table
    np.testing.assert_allclose(t.pixel_size_um, [2.0, 2.0, 2.0])
    np.testing.assert_allclose(t.area_um2, [240.0, 128.0, 800.0])
    summary = json.loads((tmp_path / "run2" / "extract.json").read_text())
    assert [i["pixel_size_source"] for i in summary["inputs"]] == ["override", "override"]
    assert summary["config"]["pixel_size_um"] == 2.0


def test_folder_channel_and_axes_settings_reach_every_image(tmp_path):
    chans = np.stack([img_for(LAB, 200, 100), img_for(LAB, 600, 50, 1)])
    (tmp_path / "im").mkdir()
    (tmp_path / "lb").mkdir()
    write_image(tmp_path / "im" / "m.tif", chans, pixel_size_um=0.5, axes="CYX")
    write_label_image(tmp_path / "lb" / "m_masks.tif", LAB, pixel_size_um=0.5)
    res = extract_folder(tmp_path / "im", tmp_path / "lb", tmp_path / "run", ExtractConfig.build(channel=1, **CROP))
    assert res.table.intensity_mean.tolist() == pytest.approx([600, 600], abs=1)
    assert res.table.frame.tolist() == [0, 0]
    with pytest.raises(MechanoscopeError, match="no image could be extracted.*channel"), warnings.catch_warnings():
        warnings.simplefilter("ignore", MechanoscopeWarning)
        extract_folder(tmp_path / "im", tmp_path / "lb", tmp_path / "run2", ExtractConfig.build(**CROP))


def test_pairing_rules(tmp_path):
    (tmp_path / "i").mkdir()
    (tmp_path / "l").mkdir()
    img_names = ["p1.tif", "p2.tif", "p3.tif", "p4.png", "p5.tif", "p5.png"]
    lab_names = ["p1-Masks.tif", "p2.seg.tif", "p3.tif", "p3_labels.tif", "p4_labels.tif", "p4_label.tif", "orphan_labels.tif", "_labels.tif"]
    for n in img_names:
        (tmp_path / "i" / n).write_bytes(b"")
    for n in lab_names:
        (tmp_path / "l" / n).write_bytes(b"")
    pairs, problems = pair_images_and_labels(tmp_path / "i", tmp_path / "l")
    got = {(i.name, l.name) for i, l in pairs}
    assert ("p1.tif", "p1-Masks.tif") in got  # '-' separator, case-insensitive suffix
    assert ("p2.tif", "p2.seg.tif") in got  # '.' separator
    assert ("p3.tif", "p3.tif") in got  # the exact stem wins over NAME_labels
    assert not any(i == "p4.png" for i, _ in got)  # two candidates → a problem
    errs = " | ".join(p["error"] for p in problems)
    assert "several label images match" in errs and "p4_labels.tif" in errs and "p4_label.tif" in errs
    assert "orphan_labels.tif: no image with a matching name" in errs
    assert "same name 'p5'" in errs
    assert any("p5" in p["image"] and "no label image" in p["error"] for p in problems)
    # the ambiguous label files are reported once (with p4), not again as orphans
    assert sum("p4_label" in p["labels"] for p in problems) == 1
    # '_labels' alone is not a suffix of anything: it is an orphan, not the labels of image ''
    assert any(p["labels"].endswith("_labels.tif") and p["labels"].split("/")[-1] == "_labels.tif" for p in problems)
    # image order is kept
    assert [i.name for i, _ in pairs] == sorted(i.name for i, _ in pairs)
