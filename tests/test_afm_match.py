"""Matching AFM positions (µm) to segmented cells: hand-made asymmetric scenes and properties.

Every scene is placed off the diagonal (y != x) with pixel sizes != 1, so a swap of the
two coordinates or a wrong µm → pixel factor puts a point on another cell or nowhere.
"""

from __future__ import annotations

import numpy as np
import pandas as pd
import pytest
from hypothesis import HealthCheck, assume, given, settings, strategies as st

from mechanoscope.cells.morphology import measure_cells
from mechanoscope.errors import MechanoscopeError
from mechanoscope.mechanics import match_afm_to_cells

FAST = settings(max_examples=25, deadline=None, database=None, suppress_health_check=[HealthCheck.too_slow])


def _afm(image_id, yx_um, moduli):
    yx = np.asarray(yx_um, float).reshape(-1, 2)
    return pd.DataFrame({"image_id": image_id, "position_y_um": yx[:, 0], "position_x_um": yx[:, 1],
                         "measured_stiffness_pa": np.asarray(moduli, float)})


def _scene():
    """40 x 60 px at 0.4 µm/px. Cell 3: rows 2..8, cols 30..49 (top right); cell 8: rows 25..35,
    cols 4..14 (bottom left). Pixel (r, c) covers µm [(r ± 0.5)·0.4, (c ± 0.5)·0.4]."""
    lab = np.zeros((40, 60), np.int32)
    lab[2:9, 30:50] = 3
    lab[25:36, 4:15] = 8
    cells = measure_cells(lab, pixel_size_um=0.4, image_id="a")[["image_id", "cell_id", "centroid_y_um", "centroid_x_um"]]
    return lab, cells


def test_asymmetric_scene_by_hand():
    lab, cells = _scene()
    # centroids by hand: cell 3 at (5, 39.5) px = (2.0, 15.8) µm; cell 8 at (30, 9) px = (12.0, 3.6) µm
    assert cells.set_index("cell_id").loc[3, ["centroid_y_um", "centroid_x_um"]].tolist() == pytest.approx([2.0, 15.8])
    pts = [
        (2.0, 16.0),    # pixel (5, 40) → cell 3 (swapped: (40, 5) is off the image)
        (12.0, 3.0),    # pixel (30, 7.5 → 8) → cell 8 (swapped: (8, 30) → cell 3)
        (3.6, 20.4),    # pixel (9, 51): background, hypot(1.6, 4.6) = 4.87 µm from cell 3's centroid
        (3.6, 12.0),    # pixel (9, 30): background, hypot(1.6, 3.8) = 4.12 µm from cell 3's centroid
        (12.4, -0.4),   # pixel (31, −1): off the image, hypot(0.4, 4.0) = 4.02 µm from cell 8's centroid
        (-0.4, 14.0),   # pixel (−1, 35): off the image, hypot(2.4, 1.8) = 3.0 µm from cell 3's centroid
        (14.0, 22.0),   # pixel (35, 55): background, 13.5 µm from cell 3, 18.5 µm from cell 8
    ]
    e = [100.0, 200.0, 300.0, 400.0, 500.0, 600.0, 700.0]
    out, m = match_afm_to_cells(cells, _afm("a", pts, e), {"a": lab}, pixel_size_um=0.4, max_distance_um=4.25)
    assert list(m.columns) == ["image_id", "cell_id", "how", "measured_stiffness_pa"]
    assert m.cell_id.tolist() == [3, 8, -1, 3, 8, 3, -1]
    assert m.how.tolist() == ["inside", "inside", "unmatched", "nearest", "nearest", "nearest", "unmatched"]
    assert m.measured_stiffness_pa.tolist() == e and (m.image_id == "a").all()
    out = out.set_index("cell_id")
    assert out.loc[3, "afm_stiffness_pa"] == pytest.approx((100 * 400 * 600) ** (1 / 3))
    assert out.loc[8, "afm_stiffness_pa"] == pytest.approx(np.sqrt(200 * 500))
    assert out.loc[3, "afm_n_measurements"] == 3 and out.loc[8, "afm_n_measurements"] == 2
    # a reach of 4 µm drops the points 4.12 and 4.02 µm away
    out2, m2 = match_afm_to_cells(cells, _afm("a", pts, e), {"a": lab}, pixel_size_um=0.4, max_distance_um=4.0)
    assert m2.cell_id.tolist() == [3, 8, -1, -1, -1, 3, -1]
    assert out2.set_index("cell_id").afm_stiffness_pa.to_dict() == pytest.approx({3: np.sqrt(100 * 600), 8: 200.0})
    # the default reach is 5 µm: the point 4.87 µm away attaches too
    _, m5 = match_afm_to_cells(cells, _afm("a", pts, e), {"a": lab}, pixel_size_um=0.4)
    assert m5.cell_id.tolist() == [3, 8, 3, 3, 8, 3, -1]


def test_point_off_image_does_not_wrap_around():
    lab = np.zeros((10, 12), np.int32)
    lab[9, :] = 1  # last row
    lab[:, 11] = 2  # last column
    lab[9, 11] = 1
    cells = pd.DataFrame({"image_id": "a", "cell_id": [1, 2], "centroid_y_um": [90.0, 90.0], "centroid_x_um": [90.0, 95.0]})
    pts = [(-1.0, 5.0), (5.0, -1.0), (-1.0, -1.0), (10.0, 5.0), (5.0, 12.0), (9.4, 11.4)]
    _, m = match_afm_to_cells(cells, _afm("a", pts, [1.0] * 6), {"a": lab}, pixel_size_um=1.0)
    assert m.cell_id.tolist() == [-1, -1, -1, -1, -1, 1]
    assert m.how.tolist() == ["unmatched"] * 5 + ["inside"]


def test_nearest_is_the_nearest_centroid_and_limit_is_inclusive():
    lab = np.zeros((30, 30), np.int32)
    lab[0:2, 0:2] = 5
    lab[27:30, 27:30] = 6
    lab[0:2, 27:30] = 7
    cells = pd.DataFrame({"image_id": "a", "cell_id": [5, 6, 7],
                          "centroid_y_um": [4.0, 20.0, 4.0], "centroid_x_um": [4.0, 20.0, 20.0]})
    # 3-4-5 triangles: (8, 7) µm is exactly 5 µm from cell 5 at (4, 4) (13.6 from 7, 17.7 from 6);
    # (17, 16) is exactly 5 µm from cell 6 at (20, 20) (13.6 from 7); (12, 20) is 8 µm from 6 and 7
    pts = [(8.0, 7.0), (8.0, 7.0), (17.0, 16.0), (12.0, 20.0)]
    out, m = match_afm_to_cells(cells, _afm("a", pts, [10.0, 1000.0, 7.0, 3.0]), {"a": lab}, pixel_size_um=0.5,
                                max_distance_um=5.0)
    assert m.cell_id.tolist() == [5, 5, 6, -1] and m.how.tolist() == ["nearest", "nearest", "nearest", "unmatched"]
    assert out.set_index("cell_id").afm_stiffness_pa.to_dict() == pytest.approx({5: 100.0, 6: 7.0, 7: np.nan}, nan_ok=True)
    _, m_just = match_afm_to_cells(cells, _afm("a", pts[:1], [1.0]), {"a": lab}, pixel_size_um=0.5, max_distance_um=4.999)
    assert m_just.how.tolist() == ["unmatched"] and m_just.cell_id.tolist() == [-1]
    # the nearest of several centroids, not the first row of the table
    _, m_near = match_afm_to_cells(cells, _afm("a", [(13.0, 19.0)], [1.0]), {"a": lab}, pixel_size_um=0.5,
                                   max_distance_um=20.0)
    assert m_near.cell_id.tolist() == [6]  # 7.07 µm from cell 6, 9.06 from 7, 17.0 from 5


def test_nearest_uses_only_cells_of_the_same_image():
    lab_a = np.zeros((20, 30), np.int32)
    lab_a[15:20, 25:30] = 1
    lab_b = np.zeros((20, 30), np.int32)
    lab_b[0:3, 0:3] = 4
    cells = pd.DataFrame({"image_id": ["a", "b"], "cell_id": [1, 4],
                          "centroid_y_um": [17.0, 1.0], "centroid_x_um": [27.0, 1.0]})
    _, m = match_afm_to_cells(cells, _afm("a", [(2.0, 2.0)], [5.0]), {"a": lab_a, "b": lab_b}, pixel_size_um=1.0,
                              max_distance_um=5.0)
    assert m.cell_id.tolist() == [-1]  # cell 4 of image b is 1.4 µm away, but in another image
    # an image without any cell: everything unmatched, no error
    _, m0 = match_afm_to_cells(cells, _afm("c", [(2.0, 2.0)], [5.0]), {"c": np.zeros((5, 5), np.int32)}, pixel_size_um=1.0)
    assert m0.how.tolist() == ["unmatched"]


def test_per_image_pixel_sizes():
    """The same µm position is a different pixel in images of different pixel size."""
    lab_a = np.zeros((60, 60), np.int32)
    lab_a[18:23, 38:43] = 1  # (10, 20) µm at 0.5 µm/px is pixel (20, 40)
    lab_b = np.zeros((60, 60), np.int32)
    lab_b[4:7, 9:12] = 2  # (10, 20) µm at 2 µm/px is pixel (5, 10)
    cells = pd.DataFrame({"image_id": ["a", "b"], "cell_id": [1, 2],
                          "centroid_y_um": [10.0, 10.0], "centroid_x_um": [20.0, 20.0]})
    afm = pd.concat([_afm("a", [(10.2, 19.9)], [30.0]), _afm("b", [(10.2, 19.9)], [40.0])])
    out, m = match_afm_to_cells(cells, afm, {"a": lab_a, "b": lab_b}, pixel_size_um={"a": 0.5, "b": 2.0},
                                max_distance_um=0.0)
    assert m.cell_id.tolist() == [1, 2] and m.how.tolist() == ["inside", "inside"]
    assert out.afm_stiffness_pa.tolist() == pytest.approx([30.0, 40.0])
    # one pixel size for both: image b's point lands on background at pixel (20, 40)
    _, m1 = match_afm_to_cells(cells, afm, {"a": lab_a, "b": lab_b}, pixel_size_um=0.5, max_distance_um=0.0)
    assert m1.cell_id.tolist() == [1, -1]


def test_cells_table_order_index_and_dtypes_preserved():
    lab, cells = _scene()
    shuffled = cells.iloc[::-1].set_axis([17, 4]).assign(extra="x")
    shuffled["cell_id"] = shuffled["cell_id"].astype(np.int32)
    out, _ = match_afm_to_cells(shuffled, _afm("a", [(12.0, 3.0)], [42.0]), {"a": lab}, pixel_size_um=0.4,
                                column="e_pa")
    assert out.index.tolist() == [17, 4] and out.cell_id.tolist() == [8, 3] and (out.extra == "x").all()
    assert out.e_pa.tolist()[0] == pytest.approx(42.0) and np.isnan(out.e_pa.tolist()[1])
    assert out.afm_n_measurements.tolist() == [1, 0] and out.afm_n_measurements.dtype.kind == "i"
    assert "afm_stiffness_pa" not in out.columns and "e_pa" not in shuffled.columns  # input not modified


def test_integer_image_ids_and_empty_afm_table():
    lab = np.zeros((10, 10), np.int32)
    lab[2:5, 6:9] = 1
    cells = pd.DataFrame({"image_id": [7], "cell_id": [1], "centroid_y_um": [3.0], "centroid_x_um": [7.0]})
    out, m = match_afm_to_cells(cells, _afm(7, [(3.0, 7.0)], [9.0]), {"7": lab}, pixel_size_um=1.0)
    assert m.cell_id.tolist() == [1] and out.afm_stiffness_pa.tolist() == pytest.approx([9.0])
    out0, m0 = match_afm_to_cells(cells, _afm("7", np.zeros((0, 2)), []), {"7": lab}, pixel_size_um=1.0)
    assert len(m0) == 0 and np.isnan(out0.afm_stiffness_pa).all() and out0.afm_n_measurements.tolist() == [0]
    assert {"image_id", "cell_id", "how", "measured_stiffness_pa"} <= set(m0.columns)


def test_bad_tables_name_the_problem():
    lab, cells = _scene()
    with pytest.raises(MechanoscopeError, match=r"lacks column\(s\) \['position_y_um', 'measured_stiffness_pa'\]"):
        match_afm_to_cells(cells, pd.DataFrame({"image_id": ["a"], "position_x_um": [1.0]}), {"a": lab}, pixel_size_um=0.4)
    for bad in (0.0, -3.0, np.nan, np.inf):
        with pytest.raises(MechanoscopeError, match="non-positive or missing moduli.*remove failed fits"):
            match_afm_to_cells(cells, _afm("a", [(1.0, 1.0), (2.0, 2.0)], [5.0, bad]), {"a": lab}, pixel_size_um=0.4)
    with pytest.raises(MechanoscopeError, match="'zz', which has no label image; segment it first"):
        match_afm_to_cells(cells, _afm("zz", [(1.0, 1.0)], [5.0]), {"a": lab}, pixel_size_um=0.4)


# ============================================================================ properties


@st.composite
def label_scene(draw):
    h, w = draw(st.integers(8, 30)), draw(st.integers(8, 30))
    lab = np.zeros((h, w), np.int32)
    for cid in draw(st.lists(st.integers(1, 500), min_size=1, max_size=4, unique=True)):
        y0, x0 = draw(st.integers(0, h - 2)), draw(st.integers(0, w - 2))
        lab[y0 : y0 + draw(st.integers(1, 8)), x0 : x0 + draw(st.integers(1, 8))] = cid
    assume(lab.any())
    return lab


offsets = st.floats(-0.45, 0.45)


@FAST
@given(label_scene(), st.floats(0.05, 5.0), st.data())
def test_position_in_um_lands_on_its_pixel(lab, px, data):
    """A position within ±0.45 px of pixel (r, c) (in µm: (r + dy)·px) reads lab[r, c]."""
    h, w = lab.shape
    pts, expect = [], []
    for _ in range(6):
        r, c = data.draw(st.integers(0, h - 1)), data.draw(st.integers(0, w - 1))
        pts.append(((r + data.draw(offsets)) * px, (c + data.draw(offsets)) * px))
        expect.append(lab[r, c])
    cells = measure_cells(lab, pixel_size_um=px, image_id="i")
    _, m = match_afm_to_cells(cells, _afm("i", pts, [1.0] * 6), {"i": lab}, pixel_size_um=px, max_distance_um=0.0)
    # on background, at reach 0, only a point exactly on a cell's centroid attaches (as "nearest")
    cy, cx = cells.centroid_y_um.to_numpy(), cells.centroid_x_um.to_numpy()
    for k, (y, x) in enumerate(pts):
        if expect[k] > 0:
            assert (m.cell_id[k], m.how[k]) == (expect[k], "inside")
        else:
            d = np.hypot(cy - y, cx - x)
            want = int(cells.cell_id.iloc[np.argmin(d)]) if d.min() == 0 else -1
            assert (m.cell_id[k], m.how[k]) == (want, "nearest" if want > 0 else "unmatched")


def _transform(kind, h, w):
    """(label transform, point transform in pixel coordinates (r, c) → (r', c'))."""
    if kind == "rot1":
        return (lambda a: np.rot90(a, 1)), (lambda r, c: (w - 1 - c, r))
    if kind == "rot2":
        return (lambda a: np.rot90(a, 2)), (lambda r, c: (h - 1 - r, w - 1 - c))
    if kind == "rot3":
        return (lambda a: np.rot90(a, 3)), (lambda r, c: (c, h - 1 - r))
    if kind == "flip0":
        return (lambda a: np.flip(a, 0)), (lambda r, c: (h - 1 - r, c))
    if kind == "flip1":
        return (lambda a: np.flip(a, 1)), (lambda r, c: (r, w - 1 - c))
    return (lambda a: a.T), (lambda r, c: (c, r))


@FAST
@given(label_scene(), st.floats(0.1, 3.0), st.sampled_from(["rot1", "rot2", "rot3", "flip0", "flip1", "transpose"]),
       st.floats(0.0, 6.0), st.data())
def test_matching_is_equivariant_under_rotation_and_flip(lab, px, kind, reach, data):
    """Rotating/flipping the label image together with the AFM positions and the cell centroids
    leaves every match (cell id and how) unchanged."""
    h, w = lab.shape
    tl, tp = _transform(kind, h, w)
    lab_t = np.ascontiguousarray(tl(lab))
    rr, cc = np.mgrid[0:h, 0:w]
    r2, c2 = tp(rr, cc)
    assert (lab_t[r2, c2] == lab).all()  # the point transform is the label transform

    n = 8
    r = np.array([data.draw(st.integers(-3, h + 2)) + data.draw(offsets) for _ in range(n)])
    c = np.array([data.draw(st.integers(-3, w + 2)) + data.draw(offsets) for _ in range(n)])
    e = np.exp(np.array([data.draw(st.floats(0, 10)) for _ in range(n)]))
    cells = measure_cells(lab, pixel_size_um=px, image_id="i")
    cells_t = measure_cells(lab_t, pixel_size_um=px, image_id="i")
    # skip ties (two centroids at the same distance, or a distance at the reach), rounding decides those
    cy, cx = cells.centroid_y_um.to_numpy(), cells.centroid_x_um.to_numpy()
    for k in range(n):
        d = np.sort(np.hypot(cy - r[k] * px, cx - c[k] * px))
        assume(abs(d[0] - reach) > 1e-6 and (len(d) == 1 or d[1] - d[0] > 1e-6))
    out, m = match_afm_to_cells(cells, _afm("i", np.c_[r, c] * px, e), {"i": lab}, pixel_size_um=px, max_distance_um=reach)
    rt, ct = tp(r, c)
    out_t, m_t = match_afm_to_cells(cells_t, _afm("i", np.c_[rt, ct] * px, e), {"i": lab_t}, pixel_size_um=px,
                                    max_distance_um=reach)
    assert m_t.cell_id.tolist() == m.cell_id.tolist() and m_t.how.tolist() == m.how.tolist()
    a = out.set_index("cell_id")[["afm_stiffness_pa", "afm_n_measurements"]].sort_index()
    b = out_t.set_index("cell_id")[["afm_stiffness_pa", "afm_n_measurements"]].sort_index()
    pd.testing.assert_frame_equal(a, b, rtol=1e-12)


@FAST
@given(st.floats(0.0, 20.0), st.floats(0.0, 2 * np.pi), st.floats(0.5, 15.0), st.floats(0.1, 2.0))
def test_nearest_within_reach_unmatched_beyond(dist, angle, reach, px):
    """One small cell; a background point at a known distance from its centroid."""
    assume(abs(dist - reach) > 1e-6)
    lab = np.zeros((5, 5), np.int32)
    lab[0, 0] = 4  # a one-pixel cell at the corner: centroid (0, 0)
    cells = pd.DataFrame({"image_id": "i", "cell_id": [4], "centroid_y_um": [30.0], "centroid_x_um": [40.0]})
    y, x = 30.0 + dist * np.sin(angle), 40.0 + dist * np.cos(angle)
    # the point lies far outside the 5 x 5 label image at every pixel size here → background
    assume(y / px > 5.5 or x / px > 5.5)
    out, m = match_afm_to_cells(cells, _afm("i", [(y, x)], [77.0]), {"i": lab}, pixel_size_um=px, max_distance_um=reach)
    if dist < reach:
        assert m.how.tolist() == ["nearest"] and m.cell_id.tolist() == [4] and out.afm_stiffness_pa.tolist() == pytest.approx([77.0])
    else:
        assert m.how.tolist() == ["unmatched"] and m.cell_id.tolist() == [-1]
        assert np.isnan(out.afm_stiffness_pa.iloc[0]) and out.afm_n_measurements.tolist() == [0]


@FAST
@given(st.lists(st.lists(st.floats(1.0, 1e6), min_size=0, max_size=5), min_size=3, max_size=3), st.randoms())
def test_geometric_mean_of_repeated_measurements(per_cell, rnd):
    lab = np.zeros((20, 31), np.int32)
    lab[2:8, 3:9], lab[10:18, 4:10], lab[3:9, 20:29] = 1, 2, 3
    where = {1: (5.0, 6.0), 2: (14.0, 7.0), 3: (6.0, 24.0)}  # pixel inside each cell
    cells = measure_cells(lab, pixel_size_um=0.3, image_id="g")
    rows = [(cid, v) for cid, vals in zip((1, 2, 3), per_cell) for v in vals]
    rnd.shuffle(rows)  # measurement order does not matter
    pts = [(where[cid][0] * 0.3, where[cid][1] * 0.3) for cid, _ in rows]
    out, m = match_afm_to_cells(cells, _afm("g", np.array(pts).reshape(-1, 2), [v for _, v in rows]), {"g": lab},
                                pixel_size_um=0.3)
    assert m.cell_id.tolist() == [cid for cid, _ in rows]
    out = out.set_index("cell_id")
    for cid, vals in zip((1, 2, 3), per_cell):
        assert out.loc[cid, "afm_n_measurements"] == len(vals)
        if vals:
            assert out.loc[cid, "afm_stiffness_pa"] == pytest.approx(np.exp(np.mean(np.log(vals))), rel=1e-9)
            assert min(vals) * (1 - 1e-9) <= out.loc[cid, "afm_stiffness_pa"] <= max(vals) * (1 + 1e-9)
        else:
            assert np.isnan(out.loc[cid, "afm_stiffness_pa"])


def test_default_reach_order_index_and_dtypes_of_the_matches():
    lab, cells = _scene()
    lab_b = np.zeros((10, 10), np.int32)
    lab_b[0:4, 0:4] = 2
    cells = pd.concat([cells, pd.DataFrame({"image_id": ["b"], "cell_id": [2], "centroid_y_um": [0.6], "centroid_x_um": [0.6]})],
                      ignore_index=True)
    # image b comes first in the AFM table; (7.5, 15.8) is background 5.5 µm below cell 3's centroid
    afm = pd.concat([_afm("b", [(0.4, 0.4)], [50.0]), _afm("a", [(7.5, 15.8), (2.0, 16.0)], [70.0, 80.0])], ignore_index=True)
    out, m = match_afm_to_cells(cells, afm, {"a": lab, "b": lab_b}, pixel_size_um={"a": 0.4, "b": 0.4})
    assert m.image_id.tolist() == ["b", "a", "a"]  # the AFM table's order, not sorted by image
    assert m.cell_id.tolist() == [2, -1, 3]  # 5.5 µm is beyond the default reach of 5 µm
    assert m.cell_id.dtype == np.int64 and list(m.index) == [0, 1, 2]
    assert out.set_index("cell_id").afm_stiffness_pa.to_dict() == pytest.approx({3: 80.0, 8: np.nan, 2: 50.0}, nan_ok=True)
    _, m6 = match_afm_to_cells(cells, afm, {"a": lab, "b": lab_b}, pixel_size_um=0.4, max_distance_um=6.0)
    assert m6.cell_id.tolist() == [2, 3, 3]


def test_non_positive_moduli_are_refused_with_what_to_do():
    lab, cells = _scene()
    with pytest.raises(MechanoscopeError, match=r"^AFM table holds non-positive or missing moduli; a Young's modulus is > 0 Pa — remove failed fits first$"):
        match_afm_to_cells(cells, _afm("a", [(2.0, 16.0)], [0.0]), {"a": lab}, pixel_size_um=0.4)
