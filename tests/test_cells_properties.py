"""Property and hand-computed tests of cells.morphology and cells.crops.

Scenes are deliberately asymmetric (cells off the diagonal, y != x everywhere, pixel
sizes != 1) so that swapped axes, a wrong pixel-size factor or an off-by-one in the
crop grid changes a number that is known by hand or from scikit-image.
"""

from __future__ import annotations

import numpy as np
import pandas as pd
import pytest
from hypothesis import HealthCheck, assume, given, settings, strategies as st
from hypothesis.extra import numpy as hnp
from scipy import ndimage as ndi
from skimage.filters import gaussian
from skimage.measure import regionprops

from mechanoscope.cells import crops as crops_mod
from mechanoscope.cells.crops import CropConfig, crop_cells, crop_grid_px, crop_outside_fraction
from mechanoscope.cells.morphology import INTENSITY_COLUMNS, MORPHOLOGY_COLUMNS, measure_cells
from mechanoscope.errors import MechanoscopeError

FAST = settings(max_examples=40, deadline=None, database=None, suppress_health_check=[HealthCheck.too_slow])
pixel_sizes = st.floats(0.05, 5.0, allow_nan=False, allow_infinity=False)


# ============================================================================ morphology: by hand


def _two_cell_scene():
    """Cell 9: rows 3..9 x cols 10..24 (7 x 15 px); cell 4: an L of rows 20..29 x cols 2..4
    plus rows 27..29 x cols 5..11 (30 + 21 px)."""
    lab = np.zeros((34, 41), np.int32)
    lab[3:10, 10:25] = 9
    lab[20:30, 2:5] = 4
    lab[27:30, 5:12] = 4
    return lab


def test_asymmetric_scene_centroids_bbox_area_by_hand():
    px = 0.37
    t = measure_cells(_two_cell_scene(), pixel_size_um=px, image_id="scene", frame=3)
    assert list(t.columns) == list(MORPHOLOGY_COLUMNS)
    assert t.cell_id.tolist() == [4, 9]  # sorted by id
    assert t.image_id.tolist() == ["scene", "scene"] and t.frame.tolist() == [3, 3]
    l_shape, rect = t.iloc[0], t.iloc[1]
    # rectangle: centre (6, 17) px
    assert (rect.centroid_y_px, rect.centroid_x_px) == pytest.approx((6.0, 17.0))
    assert (rect.centroid_y_um, rect.centroid_x_um) == pytest.approx((6.0 * px, 17.0 * px))
    assert (rect.bbox_y0_px, rect.bbox_x0_px, rect.bbox_y1_px, rect.bbox_x1_px) == (3, 10, 10, 25)
    assert rect.area_px == 105 and rect.area_um2 == pytest.approx(105 * px**2)
    # L: vertical bar 10 x 3 px centred (24.5, 3), foot 3 x 7 px centred (28, 8)
    cy = (30 * 24.5 + 21 * 28.0) / 51
    cx = (30 * 3.0 + 21 * 8.0) / 51
    assert (l_shape.centroid_y_px, l_shape.centroid_x_px) == pytest.approx((cy, cx))
    assert (l_shape.centroid_y_um, l_shape.centroid_x_um) == pytest.approx((cy * px, cx * px))
    assert (l_shape.bbox_y0_px, l_shape.bbox_x0_px, l_shape.bbox_y1_px, l_shape.bbox_x1_px) == (20, 2, 30, 12)
    assert l_shape.area_px == 51 and l_shape.area_um2 == pytest.approx(51 * px**2)
    # rectangle moments: axis length 4 sqrt((n^2 - 1) / 12) along each side, major along x
    major, minor = 4 * np.sqrt((15**2 - 1) / 12), 4 * np.sqrt((7**2 - 1) / 12)
    assert rect.major_axis_um == pytest.approx(major * px) and rect.minor_axis_um == pytest.approx(minor * px)
    assert rect.aspect_ratio == pytest.approx(major / minor)
    assert abs(rect.orientation_rad) == pytest.approx(np.pi / 2)
    assert rect.eccentricity == pytest.approx(np.sqrt(1 - (minor / major) ** 2))
    assert rect.solidity == pytest.approx(1.0)
    assert rect.equivalent_diameter_um == pytest.approx(2 * np.sqrt(105 / np.pi) * px)
    assert l_shape.solidity < 0.8  # concave


def test_dtypes_and_empty_label_image():
    t = measure_cells(_two_cell_scene(), pixel_size_um=0.5, image_id="s")
    for c in ("cell_id", "frame", "bbox_y0_px", "bbox_x0_px", "bbox_y1_px", "bbox_x1_px"):
        assert t[c].dtype == np.int64, c
    for c in ("centroid_y_px", "centroid_x_px", "area_px", "area_um2", "perimeter_um", "circularity"):
        assert t[c].dtype == np.float64, c
    assert t.image_id.dtype == object
    empty = measure_cells(np.zeros((10, 12), np.int32), np.ones((10, 12)), pixel_size_um=0.5, image_id="e")
    assert len(empty) == 0 and list(empty.columns) == list(MORPHOLOGY_COLUMNS) + list(INTENSITY_COLUMNS)


def test_thin_and_single_pixel_cells():
    lab = np.zeros((12, 20), np.int32)
    lab[2, 3:15] = 1  # one pixel thin: minor axis 0 → aspect NaN
    lab[8, 17] = 2  # single pixel
    t = measure_cells(lab, pixel_size_um=0.8, image_id="thin").set_index("cell_id")
    assert np.isnan(t.loc[1, "aspect_ratio"]) and t.loc[1, "minor_axis_um"] == 0.0
    assert t.loc[1, "major_axis_um"] == pytest.approx(4 * np.sqrt((12**2 - 1) / 12) * 0.8)
    # a single pixel: Crofton perimeter 2.68 px → 4 π A / P² = 1.75, clipped to 1
    r = regionprops((lab == 2).astype(int))[0]
    assert 4 * np.pi / r.perimeter_crofton**2 > 1
    assert t.loc[2, "circularity"] == 1.0 and t.loc[2, "perimeter_um"] == pytest.approx(r.perimeter_crofton * 0.8)


@pytest.mark.parametrize("px", [0.0, -1.0, np.nan, np.inf, None])
def test_bad_pixel_size(px):
    with pytest.raises(MechanoscopeError, match="pixel_size_um must be a positive"):
        measure_cells(_two_cell_scene(), pixel_size_um=px, image_id="s")


def test_bad_intensity_image():
    lab = _two_cell_scene()
    with pytest.raises(MechanoscopeError, match=r"img7: expected a 2-D intensity image.*\(2, 34, 41\)"):
        measure_cells(lab, np.zeros((2,) + lab.shape), pixel_size_um=1.0, image_id="img7")
    with pytest.raises(MechanoscopeError, match=r"img7"):
        measure_cells(lab, np.zeros((34, 40)), pixel_size_um=1.0, image_id="img7")


# ============================================================================ morphology: properties


@st.composite
def rect_scene(draw):
    h, w = draw(st.integers(5, 40)), draw(st.integers(5, 40))
    rh, rw = draw(st.integers(1, h)), draw(st.integers(1, w))
    y0, x0 = draw(st.integers(0, h - rh)), draw(st.integers(0, w - rw))
    cid = draw(st.integers(1, 70000))
    return h, w, y0, x0, rh, rw, cid


@FAST
@given(rect_scene(), pixel_sizes)
def test_rectangle_by_hand_any_pixel_size(scene, px):
    h, w, y0, x0, rh, rw, cid = scene
    lab = np.zeros((h, w), np.int32)
    lab[y0 : y0 + rh, x0 : x0 + rw] = cid
    row = measure_cells(lab, pixel_size_um=px, image_id="r").iloc[0]
    assert row.cell_id == cid
    cy, cx = y0 + (rh - 1) / 2, x0 + (rw - 1) / 2
    assert row.centroid_y_px == pytest.approx(cy) and row.centroid_x_px == pytest.approx(cx)
    assert row.centroid_y_um == pytest.approx(cy * px) and row.centroid_x_um == pytest.approx(cx * px)
    assert (row.bbox_y0_px, row.bbox_x0_px, row.bbox_y1_px, row.bbox_x1_px) == (y0, x0, y0 + rh, x0 + rw)
    assert row.area_px == rh * rw and row.area_um2 == pytest.approx(rh * rw * px**2)
    big, small = max(rh, rw), min(rh, rw)
    assert row.major_axis_um == pytest.approx(4 * np.sqrt((big**2 - 1) / 12) * px, abs=1e-9)
    assert row.minor_axis_um == pytest.approx(4 * np.sqrt((small**2 - 1) / 12) * px, abs=1e-9)
    if small > 1:
        assert row.aspect_ratio == pytest.approx(np.sqrt((big**2 - 1) / (small**2 - 1)))
        # Crofton estimate of a pixelised rectangle: 80-95 % of the outer edge length 2 (h + w)
        assert 0.8 * 2 * (rh + rw) * px <= row.perimeter_um <= 0.95 * 2 * (rh + rw) * px
    else:
        assert np.isnan(row.aspect_ratio)
    if rh != rw and small > 1:
        assert abs(row.orientation_rad) == pytest.approx(0.0 if rh > rw else np.pi / 2, abs=1e-9)


@FAST
@given(
    st.floats(7, 20), st.floats(7, 20), st.floats(0.0, 1.0), st.floats(0.0, 1.0), pixel_sizes,
)
def test_axis_aligned_ellipse(a, b, fy, fx, px):
    """Semi-axes a (along y) and b (along x) in px, centre at a random sub-pixel position."""
    assume(max(a, b) / min(a, b) > 1.3)
    h, w = int(2 * a + 12), int(3 * b + 12)
    cy, cx = a + 4 + fy, b + 5 + fx * b
    yy, xx = np.mgrid[0:h, 0:w]
    mask = ((yy - cy) / a) ** 2 + ((xx - cx) / b) ** 2 <= 1
    row = measure_cells(mask.astype(np.uint16) * 2, pixel_size_um=px, image_id="e").iloc[0]
    ys, xs = np.nonzero(mask)
    assert row.area_px == mask.sum() and row.area_um2 == pytest.approx(mask.sum() * px**2)
    assert row.centroid_y_px == pytest.approx(ys.mean()) and row.centroid_x_px == pytest.approx(xs.mean())
    assert row.centroid_y_um == pytest.approx(ys.mean() * px) and row.centroid_x_um == pytest.approx(xs.mean() * px)
    assert row.centroid_y_px == pytest.approx(cy, abs=0.2) and row.centroid_x_px == pytest.approx(cx, abs=0.2)
    assert (row.bbox_y0_px, row.bbox_x0_px) == (ys.min(), xs.min())
    assert (row.bbox_y1_px, row.bbox_x1_px) == (ys.max() + 1, xs.max() + 1)
    assert row.aspect_ratio == pytest.approx(max(a, b) / min(a, b), rel=0.08)
    assert row.major_axis_um == pytest.approx(2 * max(a, b) * px, rel=0.05)
    assert row.minor_axis_um == pytest.approx(2 * min(a, b) * px, rel=0.08)
    assert abs(row.orientation_rad) == pytest.approx(0.0 if a > b else np.pi / 2, abs=0.15)  # pixelised outline tilts it a little
    ellipse_perimeter = np.pi * (3 * (a + b) - np.sqrt((3 * a + b) * (a + 3 * b)))  # Ramanujan
    assert row.perimeter_um == pytest.approx(ellipse_perimeter * px, rel=0.06)
    assert row.circularity == pytest.approx(min(1.0, 4 * np.pi * row.area_um2 / row.perimeter_um**2))
    if max(a, b) / min(a, b) > 1.6:
        assert row.circularity < 0.99


@FAST
@given(
    hnp.arrays(np.int32, st.tuples(st.integers(3, 14), st.integers(3, 14)), elements=st.sampled_from([0, 2, 3, 6])),  # no 1: binary-mask guard
    pixel_sizes,
)
def test_against_skimage_regionprops(lab, px):
    t = measure_cells(lab, pixel_size_um=px, image_id="rp")
    props = regionprops(lab)
    assert t.cell_id.tolist() == [p.label for p in props]
    for row, p in zip(t.itertuples(), props):
        assert row.area_px == p.area and row.area_um2 == pytest.approx(p.area * px**2)
        assert row.area_um2 == pytest.approx((lab == p.label).sum() * px**2)
        assert (row.centroid_y_um, row.centroid_x_um) == pytest.approx((p.centroid[0] * px, p.centroid[1] * px))
        assert (row.bbox_y0_px, row.bbox_x0_px, row.bbox_y1_px, row.bbox_x1_px) == p.bbox
        assert row.perimeter_um == pytest.approx(p.perimeter_crofton * px)
        circ = 4 * np.pi * p.area / p.perimeter_crofton**2
        assert row.circularity == pytest.approx(min(circ, 1.0)) and row.circularity <= 1.0
        assert row.solidity == pytest.approx(p.solidity) and row.eccentricity == pytest.approx(p.eccentricity)
        assert row.orientation_rad == pytest.approx(p.orientation)
        assert row.major_axis_um == pytest.approx(p.axis_major_length * px)
        assert row.minor_axis_um == pytest.approx(p.axis_minor_length * px)
        assert row.equivalent_diameter_um == pytest.approx(p.equivalent_diameter_area * px)
        if p.axis_minor_length > 0:
            assert row.aspect_ratio == pytest.approx(p.axis_major_length / p.axis_minor_length)
        else:
            assert np.isnan(row.aspect_ratio)


# ============================================================================ intensity and texture


def _brute_texture(lab, img, cid):
    d2 = []
    h, w = lab.shape
    for y in range(h):
        for x in range(w):
            if lab[y, x] != cid:
                continue
            if x + 1 < w and lab[y, x + 1] == cid:
                d2.append((img[y, x] - img[y, x + 1]) ** 2)
            if y + 1 < h and lab[y + 1, x] == cid:
                d2.append((img[y, x] - img[y + 1, x]) ** 2)
    return np.mean(d2) if d2 else np.nan


@FAST
@given(
    hnp.arrays(np.int32, st.tuples(st.integers(3, 10), st.integers(3, 10)), elements=st.sampled_from([0, 2, 5, 11])),
    st.integers(0, 2**31),
    pixel_sizes,
)
def test_intensity_features_against_brute_force(lab, seed, px):
    img = np.random.default_rng(seed).normal(50.0, 10.0, lab.shape).round(1)
    t = measure_cells(lab, img, pixel_size_um=px, image_id="i")
    assert list(t.columns) == list(MORPHOLOGY_COLUMNS) + list(INTENSITY_COLUMNS)
    for row in t.itertuples():
        v = img[lab == row.cell_id]
        assert row.intensity_mean == pytest.approx(v.mean())
        assert row.intensity_std == pytest.approx(v.std(), abs=1e-9)
        assert row.intensity_min == v.min() and row.intensity_max == v.max()
        contrast = _brute_texture(lab, img, row.cell_id)
        if np.isnan(contrast):
            assert np.isnan(row.texture_neighbour_contrast)
        else:
            assert row.texture_neighbour_contrast == pytest.approx(contrast)
        if v.std() > 1e-9 and not np.isnan(contrast):
            assert row.texture_smoothness_geary == pytest.approx(contrast / (2 * v.var()))
        elif v.std() == 0:
            assert np.isnan(row.texture_smoothness_geary)


@FAST
@given(st.floats(-5, 5), st.floats(-5, 5), pixel_sizes)
def test_gradient_of_a_ramp_per_um(a, b, px):
    """Intensity a·y + b·x (per pixel): Sobel gradient magnitude hypot(a, b) per px = hypot(a, b)/px per µm."""
    yy, xx = np.mgrid[0:20, 0:27].astype(float)
    img = 100 + a * yy + b * xx
    lab = np.zeros(img.shape, np.int32)
    lab[3:12, 5:20] = 1  # ≥ 2 px from the border: the Sobel window sees only the ramp
    lab[14:18, 2:6] = 3
    t = measure_cells(lab, img, pixel_size_um=px, image_id="g")
    assert t.texture_gradient_mean_per_um.to_numpy() == pytest.approx([np.hypot(a, b) / px] * 2, abs=1e-9)
    # neighbour contrast of a ramp: half the pairs differ by a, half by b (per pixel pair counts)
    n_h, n_v = 9 * 14, 8 * 15
    assert t.texture_neighbour_contrast.iloc[0] == pytest.approx((n_h * b**2 + n_v * a**2) / (n_h + n_v), abs=1e-9)


def test_constant_and_single_pixel_cells_give_nan_texture():
    lab = np.zeros((8, 9), np.int32)
    lab[1:4, 1:5] = 1
    lab[6, 7] = 2
    img = np.full(lab.shape, 7.0)
    img[6, 7] = 3.0
    t = measure_cells(lab, img, pixel_size_um=0.5, image_id="c").set_index("cell_id")
    assert t.loc[1, "texture_neighbour_contrast"] == 0 and np.isnan(t.loc[1, "texture_smoothness_geary"])
    assert np.isnan(t.loc[2, "texture_neighbour_contrast"]) and t.loc[2, "intensity_mean"] == 3.0
    assert t.loc[2, "intensity_std"] == 0 and t.loc[2, "intensity_min"] == t.loc[2, "intensity_max"] == 3.0


# ============================================================================ crops: grid


@FAST
@given(
    st.lists(st.tuples(st.floats(-50, 300), st.floats(-50, 300)), min_size=1, max_size=4),
    pixel_sizes,
    st.floats(1.0, 100.0),
    st.integers(2, 40),
)
def test_crop_grid_physical_size_and_centre(cents, px, size_um, p):
    cfg = CropConfig(crop_size_um=size_um, crop_pixels=p)
    c = np.array(cents)
    g = crop_grid_px(c, pixel_size_um=px, config=cfg)
    assert g.shape == (2, len(c), p, p) and g.dtype == np.float64
    step = size_um / p / px  # crop pixel in image pixels
    for k, (cy, cx) in enumerate(c):
        yy, xx = g[0, k], g[1, k]
        # y varies along rows only, x along columns only, by one crop pixel per step
        assert np.allclose(np.diff(yy, axis=0), step) and np.allclose(np.diff(yy, axis=1), 0)
        assert np.allclose(np.diff(xx, axis=1), step) and np.allclose(np.diff(xx, axis=0), 0)
        # the crop spans crop_size_um: (P - 1) steps between the outer pixel centres + one pixel
        assert (yy[-1, 0] - yy[0, 0] + step) * px == pytest.approx(size_um)
        assert (xx[0, -1] - xx[0, 0] + step) * px == pytest.approx(size_um)
        # the centroid lies at the crop centre ((P - 1) / 2, (P - 1) / 2)
        assert yy.mean() == pytest.approx(cy, abs=1e-9) and xx.mean() == pytest.approx(cx, abs=1e-9)
        assert yy[0, 0] == pytest.approx(cy - (p - 1) / 2 * step) and xx[0, 0] == pytest.approx(cx - (p - 1) / 2 * step)
        if p % 2:
            assert (yy[p // 2, p // 2], xx[p // 2, p // 2]) == pytest.approx((cy, cx))


@pytest.mark.parametrize("px", [0.0, -0.5, np.nan])
def test_crop_grid_bad_pixel_size(px):
    with pytest.raises(MechanoscopeError, match="pixel_size_um must be a positive"):
        crop_grid_px(np.zeros((1, 2)), pixel_size_um=px, config=CropConfig())


def test_crop_config():
    cfg = CropConfig(crop_size_um=30, crop_pixels=12)
    assert cfg.pixel_size_um_of_crop == 2.5 and cfg.channels == ["intensity", "mask"]
    assert CropConfig(mask_channel=False).channels == ["intensity"]
    d = CropConfig()
    assert (d.crop_size_um, d.crop_pixels, d.mask_channel, d.pad_value, d.anti_aliasing) == (64.0, 64, True, None, True)
    for bad in ({"crop_pixels": 1}, {"crop_pixels": 2049}, {"crop_size_um": 0}, {"crop_um": 3}):
        with pytest.raises(ValueError):
            CropConfig(**bad)
    assert CropConfig(crop_pixels=2).crop_pixels == 2 and CropConfig(crop_pixels=2048).crop_pixels == 2048


# ============================================================================ crops: content


def _table(cents, ids=None):
    cents = np.asarray(cents, float).reshape(-1, 2)
    ids = np.arange(1, len(cents) + 1) if ids is None else ids
    return pd.DataFrame({"cell_id": ids, "centroid_y_px": cents[:, 0], "centroid_x_px": cents[:, 1]})


@FAST
@given(st.integers(0, 39), st.integers(0, 52), pixel_sizes, st.floats(1.0, 60.0), st.integers(1, 20))
def test_bright_pixel_at_centroid_lands_on_crop_centre(r, c, px, size_um, half):
    p = 2 * half + 1
    img = np.zeros((40, 53))
    img[r, c] = 1000.0
    lab = np.zeros(img.shape, np.int32)
    lab[r, c] = 7
    cfg = CropConfig(crop_size_um=size_um, crop_pixels=p, anti_aliasing=False)
    out = crop_cells(img, lab, _table([(r, c)], [7]), pixel_size_um=px, config=cfg, pad_value=-3.0)
    assert out.shape == (1, 2, p, p) and out.dtype == np.float32
    assert out[0, 0, half, half] == 1000.0 and out[0, 1, half, half] == 1.0
    assert out[0, 0].max() == 1000.0
    # samples a pixel or more away from the bright pixel see 0 inside the image, the pad value outside
    g = crop_grid_px(np.array([[r, c]]), pixel_size_um=px, config=cfg)[:, 0]
    outside = (g[0] < -0.5) | (g[0] > 39.5) | (g[1] < -0.5) | (g[1] > 52.5)
    far = (np.abs(g[0] - r) >= 1) | (np.abs(g[1] - c) >= 1)
    assert (out[0, 0][outside] == -3.0).all() and (out[0, 1][outside] == 0).all()
    assert (out[0, 0][far & ~outside] == 0).all() and (out[0, 1][far] == 0).all()
    assert (out[0, 0][~outside] >= 0).all()


@FAST
@given(st.floats(0.2, 3.0), st.floats(2.0, 30.0), st.integers(2, 24), st.floats(0, 1), st.floats(0, 1),
       st.floats(-2, 2), st.floats(-2, 2), st.booleans())
def test_ramp_in_um_is_sampled_at_crop_pixel_centres(px, size_um, p, fy, fx, a, b, anti_aliasing):
    """Intensity = a·y_µm + b·x_µm (bilinear sampling of a linear ramp is exact): crop pixel (i, j)
    shows the ramp at centroid + ((i, j) − (P − 1)/2) · crop pixel size in µm — whatever the image's
    pixel size. Upsampling (crop pixel < image pixel) is never smoothed."""
    step = size_um / p / px
    assume(not anti_aliasing or step <= 1.0)
    half_px = (p - 1) / 2 * step
    h = w = int(2 * half_px + 8)
    cy, cx = half_px + 2 + fy * 2, half_px + 2 + fx * 2
    yy, xx = np.mgrid[0:h, 0:w] * px
    img = a * yy + b * xx
    cfg = CropConfig(crop_size_um=size_um, crop_pixels=p, mask_channel=False, anti_aliasing=anti_aliasing)
    out = crop_cells(img, None, _table([(cy, cx)]), pixel_size_um=px, config=cfg)
    assert out.shape == (1, 1, p, p)
    off = (np.arange(p) - (p - 1) / 2) * (size_um / p)
    expect = a * (cy * px + off[:, None]) + b * (cx * px + off[None, :])
    np.testing.assert_allclose(out[0, 0], expect, atol=2e-3 * (1 + abs(a) + abs(b)) * (h * px + 1))


def test_anti_aliasing_sigma_as_skimage_resize():
    """Downsampling by 3 (crop pixel 3 µm, image pixel 1 µm): the image is smoothed with
    σ = (3 − 1)/2 = 1 px before sampling; on integer sample positions the crop equals the
    smoothed image there."""
    rng = np.random.default_rng(3)
    img = rng.normal(100, 20, (60, 70))
    cfg = CropConfig(crop_size_um=24, crop_pixels=8)  # step 3 px
    cy, cx = 29.5, 34.5  # grid = centroid + (i − 3.5)·3 → integer positions 19, 22, …, 40 / 24, …, 45
    out = crop_cells(img, None, _table([(cy, cx)]), pixel_size_um=1.0, config=cfg.model_copy(update={"mask_channel": False}))
    ref = gaussian(img, sigma=1.0, mode="nearest", preserve_range=True)
    rows, cols = np.arange(19, 41, 3), np.arange(24, 46, 3)
    np.testing.assert_allclose(out[0, 0], ref[np.ix_(rows, cols)], rtol=1e-5)
    raw = crop_cells(img, None, _table([(cy, cx)]), pixel_size_um=1.0,
                     config=cfg.model_copy(update={"mask_channel": False, "anti_aliasing": False}))
    np.testing.assert_allclose(raw[0, 0], img[np.ix_(rows, cols)], rtol=1e-5)
    # σ is in image pixels: the same geometry at 0.5 µm/px is a step of 6 px → σ = 2.5 px
    big = np.kron(img, np.ones((2, 2)))
    out2 = crop_cells(big, None, _table([(2 * cy + 0.5, 2 * cx + 0.5)]), pixel_size_um=0.5,
                      config=cfg.model_copy(update={"mask_channel": False}))
    ref2 = ndi.gaussian_filter(big, 2.5, mode="nearest")
    # a crop pixel 1.5 image pixels wide: σ = 0.25 px; a crop at the corner: the filter extends
    # the border pixels ("nearest"), as the sampling does
    cfg15 = CropConfig(crop_size_um=12, crop_pixels=8, mask_channel=False)
    out15 = crop_cells(img, None, _table([(2.25, 3.25)]), pixel_size_um=1.0, config=cfg15)
    g15 = crop_grid_px(np.array([[2.25, 3.25]]), pixel_size_um=1.0, config=cfg15)[:, 0]
    ref15 = ndi.map_coordinates(gaussian(img, sigma=0.25, mode="nearest", preserve_range=True), g15, order=1, mode="nearest")
    ref15[(g15[0] < -0.5) | (g15[1] < -0.5)] = np.median(img)
    np.testing.assert_allclose(out15[0, 0], ref15, rtol=1e-5)
    out3 = crop_cells(img, None, _table([(1.0, 2.0)]), pixel_size_um=1.0, config=cfg.model_copy(update={"mask_channel": False}))
    g3 = crop_grid_px(np.array([[1.0, 2.0]]), pixel_size_um=1.0, config=cfg)[:, 0]
    ref3 = ndi.map_coordinates(ref, g3, order=1, mode="nearest")
    ref3[(g3[0] < -0.5) | (g3[1] < -0.5)] = np.median(img)
    np.testing.assert_allclose(out3[0, 0], ref3, rtol=1e-5)
    grid = np.stack(np.meshgrid(2 * rows + 0.5, 2 * cols + 0.5, indexing="ij"))
    np.testing.assert_allclose(out2[0, 0], ndi.map_coordinates(ref2, grid, order=1), rtol=1e-5)


def _outside_1d(c, p, step, n):
    pos = c + (np.arange(p) - (p - 1) / 2) * step
    return ((pos < -0.5) | (pos > n - 0.5)).sum()


def test_outside_fraction_by_hand():
    # 50 x 50 image, 1 µm/px, 40 µm crop of 40 px: rows at y = 8 + (i − 19.5) = i − 11.5 → i = 0..10 outside
    cfg = CropConfig(crop_size_um=40, crop_pixels=40)
    f = crop_outside_fraction(_table([(8.0, 25.0)]), (50, 50), pixel_size_um=1.0, config=cfg)
    assert f == pytest.approx([11 / 40])
    # 0.5 µm/px, 20 µm crop of 10 px: crop pixel 2 µm = 4 image px; 30 × 80 px image.
    # centroid (3, 76): y = 3 + (i − 4.5)·4 = −15, −11, −7, −3, 1, … → 4 rows outside;
    # x = 76 + (j − 4.5)·4 = 58, …, 78, 82, 86, 90, 94 → 4 columns > 79.5 → 1 − 6·6/100.
    # centroid (15, 40): y = −3, 1, …, 29, 33 → 2 rows outside, x = 22 … 58 inside → 1 − 8·10/100
    cfg2 = CropConfig(crop_size_um=20, crop_pixels=10)
    f2 = crop_outside_fraction(_table([(3.0, 76.0), (15.0, 40.0)]), (30, 80), pixel_size_um=0.5, config=cfg2)
    assert f2 == pytest.approx([1 - 36 / 100, 1 - 80 / 100])
    # a sample exactly on the outer edge of a border pixel (−0.5 or H − 0.5) is inside
    cfg3 = CropConfig(crop_size_um=2, crop_pixels=4)  # step 0.5 px: offsets −0.75, −0.25, 0.25, 0.75
    assert crop_outside_fraction(_table([(0.25, 8.75)]), (10, 10), pixel_size_um=1.0, config=cfg3) == pytest.approx([0.0])
    assert crop_outside_fraction(_table([(8.75, 0.25)]), (10, 10), pixel_size_um=1.0, config=cfg3) == pytest.approx([0.0])
    assert crop_outside_fraction(_table([(0.2, 8.8)]), (10, 10), pixel_size_um=1.0, config=cfg3) == pytest.approx([1 - 9 / 16])
    assert crop_outside_fraction(_table([(8.8, 0.2)]), (10, 10), pixel_size_um=1.0, config=cfg3) == pytest.approx([1 - 9 / 16])


def test_mask_reaches_the_outer_edge_of_border_pixels():
    """A sample between the centre and the outer edge of a border pixel (−0.5 < y < 0) is inside
    the image and takes that pixel's label and intensity."""
    lab = np.zeros((6, 7), np.int32)
    lab[0, 0] = 7
    img = np.full(lab.shape, 2.0)
    img[0, 0] = 9.0
    cfg = CropConfig(crop_size_um=2, crop_pixels=4, anti_aliasing=False)  # samples at ±0.25, ±0.75 px
    out = crop_cells(img, lab, _table([(0.5, 0.5)], [7]), pixel_size_um=1.0, config=cfg, pad_value=-1.0)
    # rows/cols at −0.25 (inside, pixel 0), 0.25, 0.75, 1.25
    assert out[0, 1, 0, 0] == 1.0 and out[0, 1, 0, 1] == 1.0 and out[0, 1, 1, 0] == 1.0
    assert out[0, 0, 0, 0] == 9.0 and out[0, 1, 3, 3] == 0.0


@FAST
@given(
    st.lists(st.tuples(st.floats(-30, 60), st.floats(-30, 90)), min_size=1, max_size=5),
    st.integers(5, 50), st.integers(5, 70), pixel_sizes, st.floats(1, 80), st.integers(2, 30),
)
def test_outside_fraction_is_separable_count(cents, h, w, px, size_um, p):
    cfg = CropConfig(crop_size_um=size_um, crop_pixels=p)
    f = crop_outside_fraction(_table(cents), (h, w), pixel_size_um=px, config=cfg)
    step = size_um / p / px
    for k, (cy, cx) in enumerate(cents):
        ny, nx = _outside_1d(cy, p, step, h), _outside_1d(cx, p, step, w)
        assert f[k] == pytest.approx(1 - (p - ny) * (p - nx) / p**2)


def test_batches_give_the_same_crops(monkeypatch):
    lab = np.zeros((40, 60), np.int32)
    cents = []
    for k in range(7):
        y, x = 4 + 5 * k, 5 + 8 * k
        lab[y - 2 : y + 3, x - 3 : x + 4] = k + 1
        cents.append((y, x))
    img = np.random.default_rng(0).normal(100, 10, lab.shape)
    table = _table(cents)
    cfg = CropConfig(crop_size_um=12, crop_pixels=9)
    full = crop_cells(img, lab, table, pixel_size_um=0.7, config=cfg)
    frac = crop_outside_fraction(table, lab.shape, pixel_size_um=0.7, config=cfg)
    singles = np.concatenate([crop_cells(img, lab, table.iloc[[k]], pixel_size_um=0.7, config=cfg) for k in range(7)])
    np.testing.assert_array_equal(full, singles)
    monkeypatch.setattr(crops_mod, "_BATCH_CELLS", 3)
    poison = np.full_like(full, np.nan)  # freed memory that np.empty may hand out again
    del poison
    np.testing.assert_array_equal(crop_cells(img, lab, table, pixel_size_um=0.7, config=cfg), full)
    np.testing.assert_array_equal(crop_outside_fraction(table, lab.shape, pixel_size_um=0.7, config=cfg), frac)
    assert (frac[[0, 6]] > 0).all() and frac[3] == 0


@FAST
@given(pixel_sizes.filter(lambda v: 0.2 <= v <= 2.0), st.floats(0, 1), st.floats(0, 1))
def test_mask_channel_own_cell_only_area_in_um(px, fy, fx):
    """Two touching rectangles of known µm size; the mask of each crop holds only its own cell,
    and its area in crop pixels (1 µm²) equals the cell's area in µm² within the rim."""
    hy, wx = int(round(60 / px)), int(round(80 / px))
    lab = np.zeros((hy, wx), np.int32)
    y0, x0 = int(round((20 + 3 * fy) / px)), int(round((20 + 3 * fx) / px))
    ny, nx1, nx2 = int(round(12 / px)), int(round(10 / px)), int(round(16 / px))
    lab[y0 : y0 + ny, x0 : x0 + nx1] = 3
    lab[y0 : y0 + ny, x0 + nx1 : x0 + nx1 + nx2] = 8
    img = 100.0 + 50 * (lab > 0)
    t = measure_cells(lab, img, pixel_size_um=px, image_id="m")
    cfg = CropConfig(crop_size_um=48, crop_pixels=48)
    out = crop_cells(img, lab, t, pixel_size_um=px, config=cfg)
    for k, row in enumerate(t.itertuples()):
        m = out[k, 1]
        assert set(np.unique(m)) <= {0.0, 1.0}
        assert m.sum() == pytest.approx(row.area_um2, abs=2 * (row.perimeter_um + 4))
        # the mask's own centre of mass is the crop centre
        yy, xx = np.mgrid[0:48, 0:48]
        assert (m * yy).sum() / m.sum() == pytest.approx(23.5, abs=0.8)
        assert (m * xx).sum() / m.sum() == pytest.approx(23.5, abs=0.8)
        # intensity channel shows both cells; the neighbour is not in the mask
        assert ((out[k, 0] > 140) & (m == 0)).sum() > 0.5 * min(t.area_um2)


def test_pad_value_precedence_and_errors():
    img = np.arange(100, dtype=float).reshape(10, 10)
    lab = np.zeros((10, 10), np.int32)
    lab[4:6, 4:6] = 1
    t = _table([(0.0, 0.0)])
    cfg = CropConfig(crop_size_um=4, crop_pixels=4)
    corner = (0, 0)  # at y = x = −1.5 + 0 = −1.5 → outside
    assert crop_cells(img, lab, t, pixel_size_um=1, config=cfg)[0, 0][corner] == 49.5  # median
    cfg_pad = cfg.model_copy(update={"pad_value": -7.0})
    assert crop_cells(img, lab, t, pixel_size_um=1, config=cfg_pad)[0, 0][corner] == -7.0
    assert crop_cells(img, lab, t, pixel_size_um=1, config=cfg_pad, pad_value=5.0)[0, 0][corner] == 5.0
    # inside: raw values, no normalisation: samples at −0.5 (the edge of pixel 0), 0.5, 1.5
    o = crop_cells(img, lab, t, pixel_size_um=1, config=cfg)
    assert o[0, 0, 1, 1] == 0.0 and o[0, 0, 2, 2] == 5.5 and o[0, 0, 3, 3] == 16.5 and o[0, 0, 1, 3] == 1.5
    with pytest.raises(MechanoscopeError, match=r"2-D \(H, W\) image.*\(1, 10, 10\)"):
        crop_cells(img[None], lab, t, pixel_size_um=1, config=cfg)
    with pytest.raises(MechanoscopeError, match=r"^crop_cells: mask_channel=True needs the label image$"):
        crop_cells(img, None, t, pixel_size_um=1, config=cfg)
    with pytest.raises(MechanoscopeError, match=r"^image has shape \(10, 10\) but its label image labels has shape \(9, 10\)"):
        crop_cells(img, lab[:9], t, pixel_size_um=1, config=cfg)
    no_mask = crop_cells(img, None, t, pixel_size_um=1, config=cfg.model_copy(update={"mask_channel": False}))
    assert no_mask.shape == (1, 1, 4, 4)
    default = crop_cells(img, lab, t, pixel_size_um=1)
    assert default.shape == (1, 2, 64, 64)
    assert crop_cells(img, lab, t.iloc[:0], pixel_size_um=1, config=cfg).shape == (0, 2, 4, 4)


def test_texture_of_a_flat_cell_is_nan_without_a_runtime_warning():
    import warnings

    from mechanoscope.cells.morphology import measure_cells

    lab = np.zeros((12, 14), np.int32)
    lab[2:6, 3:8] = 5  # uniform intensity: variance 0, neighbour contrast 0 -> Geary's ratio 0/0
    lab[7:11, 6:12] = 9
    img = np.where(lab == 5, 40.0, 0.0) + np.where(lab == 9, np.arange(14)[None, :] * 2.0, 0.0)
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        t = measure_cells(lab, img, pixel_size_um=0.5, image_id="flat")
    flat, ramp = t.set_index("cell_id").loc[5], t.set_index("cell_id").loc[9]
    assert flat["intensity_std"] == 0.0 and flat["texture_neighbour_contrast"] == 0.0
    assert np.isnan(flat["texture_smoothness_geary"])
    # the ramp: neighbour differences 2 along x (5 pairs per row of 6), 0 along y -> contrast 4·20/38
    assert ramp["texture_neighbour_contrast"] == pytest.approx(4.0 * 20 / 38)
    # a faint cell (variance well below 1) still has a Geary ratio: scaling the image scales
    # contrast and variance alike
    t_faint = measure_cells(lab, img / 100.0, pixel_size_um=0.5, image_id="faint").set_index("cell_id").loc[9]
    assert t_faint["intensity_std"] ** 2 < 0.01
    assert t_faint["texture_smoothness_geary"] == pytest.approx(ramp["texture_smoothness_geary"], rel=1e-9)


def test_measure_cells_defaults_names_and_thin_cells():
    from mechanoscope.cells.morphology import measure_cells
    from mechanoscope.errors import MechanoscopeError

    lab = np.zeros((12, 12), np.int32)
    lab[4, 2:6] = 2            # one pixel thin: minor axis 0 -> aspect ratio NaN
    lab[7, 7] = lab[7, 8] = lab[8, 9] = 3  # a bent triple: minor axis 0.84 px, in (0, 1]
    t = measure_cells(lab, pixel_size_um=1.0, image_id="img7").set_index("cell_id")
    assert (t["frame"] == 0).all() and t["frame"].dtype == np.int64  # the default frame is 0
    assert np.isnan(t.loc[2, "aspect_ratio"])
    r = regionprops(lab)[1]
    assert 0 < r.axis_minor_length <= 1
    assert t.loc[3, "aspect_ratio"] == pytest.approx(r.axis_major_length / r.axis_minor_length)
    assert t.loc[3, "circularity"] <= 1.0
    # errors name the image they are about
    with pytest.raises(MechanoscopeError, match="labels of img7"):
        measure_cells(lab.astype(float) + 0.5, pixel_size_um=1.0, image_id="img7")
    with pytest.raises(MechanoscopeError, match=r"image img7.*labels of img7|labels of img7.*image img7"):
        measure_cells(lab, np.zeros((12, 13)), pixel_size_um=1.0, image_id="img7")
