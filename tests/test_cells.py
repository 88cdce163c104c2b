"""Tests of mechanoscope.cells: morphology against analytic truth, crops in µm, store, batch, CLI."""

from __future__ import annotations

import json
import warnings

import numpy as np
import pandas as pd
import pytest

from mechanoscope.cells import (
    CropConfig,
    ExtractConfig,
    LabelImageError,
    QualityConfig,
    ShapeMismatchError,
    check_crops_match_table,
    crop_cells,
    extract_cells,
    extract_folder,
    measure_cells,
    pair_images_and_labels,
    quality_flags,
    read_crop_store,
    write_crop_store,
)
from mechanoscope.errors import AxesError, ConfigError, ImageReadError, MechanoscopeWarning
from mechanoscope.io.images import Image, write_image, write_label_image


def render_disks(shape_um, px, disks):
    """Label image of disks given in µm: [(cy_um, cx_um, r_um, id), ...], pixel centres at (i*px)."""
    h, w = int(round(shape_um[0] / px)), int(round(shape_um[1] / px))
    yy, xx = np.mgrid[0:h, 0:w] * px
    lab = np.zeros((h, w), np.int32)
    for cy, cx, r, i in disks:
        lab[(yy - cy) ** 2 + (xx - cx) ** 2 <= r**2] = i
    return lab


def intensity_for(lab, seed=0):
    rng = np.random.default_rng(seed)
    return (100.0 + 40.0 * (lab > 0) + rng.normal(0, 2.0, lab.shape)).astype(np.float32)


# ----------------------------------------------------------------------------- morphology


def test_disk_area_perimeter_circularity():
    r = 15.0  # µm, 30 px at 0.5 µm/px
    lab = render_disks((80, 80), 0.5, [(40, 40, r, 1)])
    t = measure_cells(lab, pixel_size_um=0.5, image_id="d")
    row = t.iloc[0]
    # pixelised disk: area within 1 %, Crofton perimeter within 3 %
    assert row.area_um2 == pytest.approx(np.pi * r**2, rel=0.01)
    assert row.perimeter_um == pytest.approx(2 * np.pi * r, rel=0.03)
    assert 0.95 <= row.circularity <= 1.0
    assert row.aspect_ratio == pytest.approx(1.0, abs=0.02)
    assert row.equivalent_diameter_um == pytest.approx(2 * r, rel=0.01)
    assert row.centroid_y_um == pytest.approx(40.0, abs=0.05)
    assert row.solidity > 0.97


def test_ellipse_aspect_ratio_and_orientation():
    h, w = 120, 160
    yy, xx = np.mgrid[0:h, 0:w]
    lab = (((yy - 60) / 10.0) ** 2 + ((xx - 80) / 25.0) ** 2 <= 1).astype(np.int32) * 3
    t = measure_cells(lab, pixel_size_um=1.0, image_id="e")
    assert t.cell_id.tolist() == [3]
    assert t.aspect_ratio.iloc[0] == pytest.approx(2.5, rel=0.03)
    assert abs(t.orientation_rad.iloc[0]) == pytest.approx(np.pi / 2, abs=0.01)  # major axis along x
    assert t.major_axis_um.iloc[0] == pytest.approx(50.0, rel=0.03)
    assert t.circularity.iloc[0] < 0.85


def test_pixel_size_scaling_same_physical_object():
    a = measure_cells(render_disks((60, 60), 0.5, [(30, 30, 10, 1)]), pixel_size_um=0.5, image_id="a")
    b = measure_cells(render_disks((60, 60), 1.0, [(30, 30, 10, 1)]), pixel_size_um=1.0, image_id="b")
    # same 10 µm disk at 0.5 and 1.0 µm/px: µm² agree within 3 %, perimeter within 4 %
    assert a.area_um2.iloc[0] == pytest.approx(b.area_um2.iloc[0], rel=0.03)
    assert a.area_um2.iloc[0] == pytest.approx(np.pi * 100, rel=0.03)
    assert a.perimeter_um.iloc[0] == pytest.approx(b.perimeter_um.iloc[0], rel=0.04)


def test_intensity_and_texture_features():
    lab = render_disks((40, 80), 1.0, [(20, 20, 12, 1), (20, 60, 12, 2)])
    yy, xx = np.mgrid[0 : lab.shape[0], 0 : lab.shape[1]]
    img = 100.0 + 0.5 * yy  # smooth ramp everywhere
    rng = np.random.default_rng(1)
    img = img + np.where(lab == 2, rng.normal(0, 5, lab.shape), 0.0)  # cell 2 is noisy
    t = measure_cells(lab, img, pixel_size_um=1.0, image_id="t").set_index("cell_id")
    inside = img[lab == 1]
    assert t.loc[1, "intensity_mean"] == pytest.approx(inside.mean())
    assert t.loc[1, "intensity_std"] == pytest.approx(inside.std())
    assert t.loc[1, "intensity_min"] == inside.min() and t.loc[1, "intensity_max"] == inside.max()
    assert t.loc[1, "texture_smoothness_geary"] < 0.1  # smooth ramp: strongly correlated
    assert 0.7 < t.loc[2, "texture_smoothness_geary"] < 1.3  # noise: about 1
    assert t.loc[2, "texture_neighbour_contrast"] > 10 * t.loc[1, "texture_neighbour_contrast"]
    assert t.loc[1, "texture_gradient_mean_per_um"] == pytest.approx(0.5, rel=0.05)


# ----------------------------------------------------------------------------- quality


def test_edge_small_and_doublet_flags():
    px = 1.0
    lab = render_disks(
        (100, 200),
        px,
        [(50, 30, 8, 1), (50, 70, 8, 2), (5, 120, 8, 3), (80, 170, 1.5, 4)],
    )
    # doublet: two tangent disks sharing one id
    lab |= render_disks((100, 200), px, [(20, 152, 8, 5), (20, 168, 8, 5)])
    t = quality_flags(measure_cells(lab, pixel_size_um=px, image_id="q"), lab.shape, QualityConfig())
    t = t.set_index("cell_id")
    assert not t.loc[1, "edge_touching"] and t.loc[1, "qc_pass"]
    lab_edge = render_disks((100, 200), px, [(2, 120, 8, 3)])
    te = quality_flags(measure_cells(lab_edge, pixel_size_um=px, image_id="q"), lab_edge.shape)
    assert te.edge_touching.iloc[0] and not te.qc_pass.iloc[0]
    assert t.loc[4, "too_small"] and not t.loc[4, "qc_pass"]
    assert t.loc[5, "likely_doublet"] and not t.loc[5, "qc_pass"]
    assert not t.loc[[1, 2, 3], "likely_doublet"].any()
    with pytest.raises(Exception, match="extra"):
        QualityConfig(min_area_um=3)  # unknown key
    with pytest.raises(ValueError, match="max_area_um2"):
        QualityConfig(min_area_um2=100, max_area_um2=50)


# ----------------------------------------------------------------------------- crops


def test_crop_mask_area_in_um_independent_of_pixel_size():
    cfg = CropConfig(crop_size_um=64, crop_pixels=64)  # crop pixel = 1 µm → 1 µm² per pixel
    areas = []
    for px in (0.5, 1.0):
        lab = render_disks((100, 100), px, [(50, 50, 10, 1)])
        table, crops = extract_cells(intensity_for(lab), lab, pixel_size_um=px, config={"crop": cfg.model_dump()})
        assert crops.shape == (1, 2, 64, 64) and crops.dtype == np.float32
        areas.append(crops[0, 1].sum())
    # nearest-neighbour resampling of the same 10 µm disk: areas agree within 3 %
    assert areas[0] == pytest.approx(areas[1], rel=0.03)
    assert areas[0] == pytest.approx(np.pi * 100, rel=0.05)


def test_crop_centred_on_centroid_and_raw_intensity():
    px = 0.7
    lab = render_disks((90, 90), px, [(41.3, 47.9, 9, 1)])
    img = intensity_for(lab)
    table, crops = extract_cells(img, lab, pixel_size_um=px, config={"crop": {"crop_size_um": 40, "crop_pixels": 40}})
    m = crops[0, 1]
    yy, xx = np.mgrid[0:40, 0:40]
    cy, cx = (m * yy).sum() / m.sum(), (m * xx).sum() / m.sum()
    assert cy == pytest.approx(19.5, abs=0.3) and cx == pytest.approx(19.5, abs=0.3)
    # raw intensities (no normalisation): inside ≈ 140, outside ≈ 100
    assert crops[0, 0][m > 0].mean() == pytest.approx(140, abs=2)
    assert crops[0, 0][0, 0] == pytest.approx(100, abs=8)


def test_neighbour_masked_out_of_mask_channel():
    lab = render_disks((60, 80), 1.0, [(30, 30, 10, 1), (30, 50, 9.5, 2)])
    img = intensity_for(lab)
    table = measure_cells(lab, img, pixel_size_um=1.0, image_id="n")
    crops = crop_cells(img, lab, table, pixel_size_um=1.0, config=CropConfig(crop_size_um=60, crop_pixels=60))
    own = crops[0, 1]
    assert own.sum() == pytest.approx(table.area_px.iloc[0], abs=1)
    # neighbour's pixels are visible in the intensity channel but 0 in the mask channel
    neighbour_in_crop = crops[0, 0] > 120
    assert (neighbour_in_crop & (own == 0)).sum() > 200


def test_padding_outside_image_recorded():
    lab = render_disks((50, 50), 1.0, [(8, 25, 6, 1)])
    table, crops = extract_cells(intensity_for(lab), lab, pixel_size_um=1.0,
                                 config={"crop": {"crop_size_um": 40, "crop_pixels": 40, "pad_value": -1.0}})
    assert table.crop_outside_fraction.iloc[0] == pytest.approx(12 / 40, abs=0.03)
    assert (crops[0, 0, :10] == -1.0).all() and (crops[0, 1, :10] == 0).all()
    assert table.crop_pad_value.iloc[0] == -1.0


# ----------------------------------------------------------------------------- store, ids


def test_ids_preserved_table_crops_store(tmp_path):
    lab = render_disks((100, 100), 1.0, [(25, 25, 8, 42), (70, 30, 7, 5), (50, 75, 9, 17)])
    table, crops = extract_cells(intensity_for(lab), lab, pixel_size_um=1.0, image_id="img1",
                                 config={"crop": {"crop_size_um": 32, "crop_pixels": 16}})
    assert table.cell_id.tolist() == [5, 17, 42]
    for i, cid in enumerate(table.cell_id):  # each mask channel holds its own cell
        assert crops[i, 1].sum() > 0
        cy, cx = table.centroid_y_px.iloc[i], table.centroid_x_px.iloc[i]
        assert lab[int(round(cy)), int(round(cx))] == cid
    path = write_crop_store(tmp_path / "crops.zarr", crops, image_ids=table.image_id, cell_ids=table.cell_id,
                            crop_size_um=32, crop_pixels=16, channels=["intensity", "mask"])
    store = read_crop_store(path)
    check_crops_match_table(table, store)
    np.testing.assert_array_equal(store.crops[:], crops)
    assert store.pixel_size_um_of_crop == 2.0 and store.attrs["normalization"] == "none"
    assert store.image_ids.tolist() == ["img1"] * 3
    with pytest.raises(ValueError, match="reordered"):
        check_crops_match_table(table.iloc[::-1].reset_index(drop=True), store)


def test_crop_store_writer_buffers_crops_without_changing_the_store(tmp_path):
    from mechanoscope.io.crop_store import CropStoreWriter

    rng = np.random.default_rng(0)
    parts = [rng.normal(size=(n, 2, 8, 8)).astype(np.float32) for n in (3, 0, 5, 70, 1)]
    stores = {}
    for name, mib in (("each_image", 0.0), ("buffered", 1.0), ("small_buffer", 6 * 2 * 8 * 8 * 4 / 2**20)):
        with CropStoreWriter(tmp_path / f"{name}.zarr", crop_size_um=8, crop_pixels=8, channels=["intensity", "mask"], chunk_cells=4, buffer_mib=mib) as w:
            for k, c in enumerate(q.copy() for q in parts):
                w.append(c, image_id=f"im{k}", cell_ids=np.arange(len(c)) + 10 * k, pad_value=float(k))
                c *= 0  # the caller may reuse its array: what was appended is kept as it was
                assert w.n_crops == sum(len(q) for q in parts[: k + 1])
        stores[name] = read_crop_store(tmp_path / f"{name}.zarr")
    ref = np.concatenate(parts)
    for st in stores.values():
        np.testing.assert_array_equal(st.crops[:], ref)
        assert st.image_ids.tolist() == ["im0"] * 3 + ["im2"] * 5 + ["im3"] * 70 + ["im4"]
        assert st.attrs["n_crops"] == 79 and st.attrs["pad_values"] == [0.0, 1.0, 2.0, 3.0, 4.0]
    np.testing.assert_array_equal(stores["buffered"].cell_ids, stores["each_image"].cell_ids)
    w = CropStoreWriter(tmp_path / "aborted.zarr", crop_size_um=8, crop_pixels=8, channels=["intensity", "mask"])
    w.append(parts[0], image_id="a", cell_ids=np.arange(3))
    w.abort()
    assert not (tmp_path / "aborted.zarr").exists() and not list(tmp_path.glob(".aborted*"))


# ----------------------------------------------------------------------------- bad input


def test_binary_mask_error_and_relabel():
    lab = (render_disks((60, 60), 1.0, [(15, 15, 6, 1), (40, 40, 6, 1)]) > 0).astype(np.uint8) * 255
    img = intensity_for(lab)
    with pytest.raises(LabelImageError, match="binary mask.*relabel"):
        extract_cells(img, lab, pixel_size_um=1.0)
    table, crops = extract_cells(img, lab, pixel_size_um=1.0, config={"relabel": True})
    assert table.cell_id.tolist() == [1, 2] and len(crops) == 2
    # a single object with id 1 is a valid label image
    one = render_disks((60, 60), 1.0, [(30, 30, 6, 1)])
    assert len(extract_cells(img, one, pixel_size_um=1.0)[0]) == 1


def test_shape_mismatch_names_files(tmp_path):
    lab = render_disks((60, 60), 1.0, [(30, 30, 6, 1)])
    img = Image(intensity_for(np.zeros((50, 60))), "YX", 1.0, tmp_path / "cells_a.tif")
    labels = Image(lab, "YX", None, tmp_path / "cells_a_labels.tif")
    with pytest.raises(ShapeMismatchError, match=r"cells_a\.tif.*\(50, 60\).*cells_a_labels\.tif.*\(60, 60\)"):
        extract_cells(img, labels)


def test_nan_and_constant_image_errors():
    lab = render_disks((40, 40), 1.0, [(20, 20, 6, 1)])
    img = intensity_for(lab)
    img[3, 4] = np.nan
    with pytest.raises(ImageReadError, match="NaN"):
        extract_cells(img, lab, pixel_size_um=1.0)
    with pytest.raises(ImageReadError, match="constant"):
        extract_cells(np.ones((40, 40)), lab, pixel_size_um=1.0)


def test_multichannel_needs_channel_and_timelapse_frames():
    lab = render_disks((40, 40), 1.0, [(20, 20, 6, 1)])
    two = np.stack([intensity_for(lab), 2 * intensity_for(lab, 1)])
    with pytest.raises(AxesError, match="axes"):
        extract_cells(two, lab, pixel_size_um=1.0)
    with pytest.raises(AxesError, match="channel"):
        extract_cells(Image(two, "CYX", 1.0), lab)
    t1, _ = extract_cells(Image(two, "CYX", 1.0), lab, config={"channel": 1})
    assert t1.intensity_mean.iloc[0] == pytest.approx(280, abs=2)
    stack = np.stack([lab, render_disks((40, 40), 1.0, [(20, 22, 6, 1), (5, 5, 3, 2)])])
    tt, cc = extract_cells(two, stack, pixel_size_um=1.0, config={"axes": "TYX"})
    assert tt.frame.tolist() == [0, 1, 1] and len(cc) == 3
    with pytest.raises(ConfigError, match="crop_pixels"):
        ExtractConfig.build(crop={"crop_pixels": 0})


# ----------------------------------------------------------------------------- batch + CLI


def _write_pair(folder, name, lab, px=0.5, img=None, label_suffix="_labels"):
    (folder / "images").mkdir(exist_ok=True)
    (folder / "labels").mkdir(exist_ok=True)
    write_image(folder / "images" / f"{name}.tif", intensity_for(lab) if img is None else img, pixel_size_um=px)
    write_label_image(folder / "labels" / f"{name}{label_suffix}.tif", lab, pixel_size_um=px)


def test_batch_skips_bad_pair_keeps_others(tmp_path):
    good_a = render_disks((40, 40), 0.5, [(10, 10, 4, 1), (25, 28, 5, 2)])
    good_b = render_disks((40, 40), 0.5, [(20, 20, 6, 7)])
    _write_pair(tmp_path, "a", good_a)
    _write_pair(tmp_path, "b", good_b, label_suffix="")
    _write_pair(tmp_path, "c", good_b, img=intensity_for(np.zeros((60, 80))))  # shape mismatch
    (tmp_path / "images" / "d.tif").write_bytes(b"not a tiff")  # unreadable, has labels
    write_label_image(tmp_path / "labels" / "d_masks.tif", good_b, pixel_size_um=0.5)
    calls = []
    with pytest.warns(MechanoscopeWarning) as rec:
        res = extract_folder(tmp_path / "images", tmp_path / "labels", tmp_path / "run",
                             ExtractConfig(crop=CropConfig(crop_size_um=20, crop_pixels=16)),
                             progress=lambda i, n: calls.append((i, n)))
    assert res.n_images == 2 and res.n_cells == 3
    assert {"c.tif", "d.tif"} <= {w.message.args[0].split(":")[0].split()[-1] for w in rec}
    assert calls[-1] == (4, 4)
    bad = {e["image"].split("/")[-1] for e in res.errors}
    assert bad == {"c.tif", "d.tif"}
    table = pd.read_parquet(tmp_path / "run" / "cells.parquet")
    assert table.image_id.tolist() == ["a", "a", "b"] and table.cell_id.tolist() == [1, 2, 7]
    store = read_crop_store(tmp_path / "run" / "crops.zarr")
    check_crops_match_table(table, store)
    assert store.crops.shape == (3, 2, 16, 16) and store.attrs["crop_size_um"] == 20
    summary = json.loads((tmp_path / "run" / "extract.json").read_text())
    assert summary["config"]["crop"]["crop_pixels"] == 16
    assert summary["provenance"]["versions"]["mechanoscope"]
    assert len(summary["errors"]) == 2 and [i["image_id"] for i in summary["inputs"]] == ["a", "b"]
    assert not list((tmp_path / "run").glob(".*tmp*"))  # no temp files left
    # a re-run where every pair fails raises and leaves the earlier results untouched
    with pytest.raises(ValueError, match="no image could be extracted.*c.tif"), warnings.catch_warnings():
        warnings.simplefilter("ignore", MechanoscopeWarning)
        extract_folder([tmp_path / "images" / "c.tif"], [tmp_path / "labels" / "c_labels.tif"], tmp_path / "run")
    assert len(pd.read_parquet(tmp_path / "run" / "cells.parquet")) == 3
    assert len(read_crop_store(tmp_path / "run" / "crops.zarr")) == 3


def test_pairing_by_name(tmp_path):
    for n in ("x1.tif", "x2.png", "x1_labels.tif", "x2_instances.png", "x3.tif"):
        (tmp_path / n).write_bytes(b"")
    pairs, problems = pair_images_and_labels(tmp_path, tmp_path)
    assert [(i.name, l.name) for i, l in pairs] == [("x1.tif", "x1_labels.tif"), ("x2.png", "x2_instances.png")]
    assert len(problems) == 1 and "x3" in problems[0]["error"]


def test_cli_extract(tmp_path):
    import typer
    from typer.testing import CliRunner

    from mechanoscope.cli.extract import register

    app = typer.Typer()

    @app.callback()
    def _root() -> None:
        """test app"""

    register(app)
    lab = render_disks((40, 40), 0.5, [(10, 10, 4, 1), (25, 28, 5, 2)])
    _write_pair(tmp_path, "a", lab)
    runner = CliRunner()
    help_out = runner.invoke(app, ["extract", "--help"]).output
    assert "--crop-size-um" in help_out and "64" in help_out and "--relabel" in help_out
    args = ["extract", str(tmp_path / "images"), str(tmp_path / "labels"), "--out", str(tmp_path / "run"),
            "--crop-pixels", "32", "--no-mask-channel"]
    res = runner.invoke(app, args)
    assert res.exit_code == 0, res.output
    store = read_crop_store(tmp_path / "run" / "crops.zarr")
    assert store.crops.shape == (2, 1, 32, 32) and store.channels == ["intensity"]
    bad = runner.invoke(app, args[:3] + ["--out", str(tmp_path / "run2"), "--crop-pixels", "1"])
    assert bad.exit_code == 2 and "crop_pixels" in bad.output
