"""Quality flags on hand-made cell tables: every border, every threshold, medians per image and frame.

The cell tables are written by hand (bounding boxes in pixels, areas in µm²), so each
flag's boundary is checked exactly, on a non-square image so that height and width cannot
be swapped unnoticed, and against a brute-force reference on random tables.
"""

from __future__ import annotations

import numpy as np
import pandas as pd
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from mechanoscope.cells import QC_COLUMNS, QualityConfig, quality_flags

H, W = 100, 200  # image height and width in pixels (not square on purpose)


def _table(rows, image_id="img", frame=0):
    base = {"image_id": image_id, "frame": frame, "bbox_y0_px": 40, "bbox_x0_px": 40, "bbox_y1_px": 60,
            "bbox_x1_px": 60, "area_um2": 300.0, "solidity": 0.95}
    return pd.DataFrame([{**base, **r} for r in rows])


@pytest.mark.parametrize(
    ("bbox", "edge"),
    [
        ({}, False),
        ({"bbox_y0_px": 0}, True),
        ({"bbox_y0_px": 1}, False),
        ({"bbox_x0_px": 0}, True),
        ({"bbox_x0_px": 1}, False),
        ({"bbox_y1_px": H}, True),  # bbox end is exclusive: the last row is H - 1
        ({"bbox_y1_px": H - 1}, False),
        ({"bbox_x1_px": W}, True),
        ({"bbox_x1_px": W - 1}, False),
        ({"bbox_x1_px": 150}, False),  # beyond the height, inside the width
        ({"bbox_y1_px": H, "bbox_x1_px": 150}, True),
    ],
)
def test_each_border_alone_flags_edge_touching_with_margin_zero(bbox, edge):
    t = quality_flags(_table([bbox, {}, {}]), (H, W))
    assert bool(t["edge_touching"].iloc[0]) is edge
    assert bool(t["qc_pass"].iloc[0]) is (not edge)
    assert not t["edge_touching"].iloc[1:].any()


@pytest.mark.parametrize(
    ("bbox", "edge"),
    [
        ({"bbox_y0_px": 3}, True), ({"bbox_y0_px": 4}, False),
        ({"bbox_x0_px": 3}, True), ({"bbox_x0_px": 4}, False),
        ({"bbox_y1_px": H - 3}, True), ({"bbox_y1_px": H - 4}, False),
        ({"bbox_x1_px": W - 3}, True), ({"bbox_x1_px": W - 4}, False),
    ],
)
def test_edge_margin_in_pixels(bbox, edge):
    t = quality_flags(_table([bbox]), (H, W), QualityConfig(edge_margin_px=3))
    assert bool(t["edge_touching"].iloc[0]) is edge


def test_size_limits_are_strict_and_in_um2():
    cfg = QualityConfig(min_area_um2=50, max_area_um2=1000, doublet_max_solidity=0)
    t = quality_flags(_table([{"area_um2": a} for a in (49.9, 50.0, 500.0, 1000.0, 1000.1)]), (H, W), cfg)
    assert t["too_small"].tolist() == [True, False, False, False, False]
    assert t["too_large"].tolist() == [False, False, False, False, True]
    assert t["qc_pass"].tolist() == [False, True, True, True, False]


def test_doublet_needs_both_a_large_area_and_a_low_solidity():
    # median area 300 µm², median solidity 0.95 → limits: area > 1.8·300 = 540, solidity < min(0.95, 0.9) = 0.9
    rows = [{}, {}, {}, {},
            {"area_um2": 700.0, "solidity": 0.80},   # doublet
            {"area_um2": 700.0, "solidity": 0.93},   # large but convex
            {"area_um2": 320.0, "solidity": 0.70},   # concave but single-sized
            {"area_um2": 540.0, "solidity": 0.80}]   # exactly 1.8× the median area: not above it
    t = quality_flags(_table(rows), (H, W))
    assert t["likely_doublet"].tolist() == [False] * 4 + [True, False, False, False]
    assert t["qc_pass"].tolist() == [True] * 4 + [False, True, True, True]


def test_doublet_solidity_limit_follows_a_low_image_median():
    # concave adherent cells: median solidity 0.75 < 0.9, so a doublet must be below 0.75
    rows = [{"solidity": 0.75}] * 5 + [{"area_um2": 700.0, "solidity": 0.78}, {"area_um2": 700.0, "solidity": 0.70}]
    t = quality_flags(_table(rows), (H, W))
    assert t["likely_doublet"].tolist() == [False] * 5 + [False, True]


def test_medians_are_taken_per_image_and_frame():
    # the same 700 µm² cell is a doublet among 300 µm² cells and a single among 600 µm² cells
    small = _table([{}, {}, {}, {"area_um2": 700.0, "solidity": 0.8}], image_id="a")
    big = _table([{"area_um2": 600.0}] * 3 + [{"area_um2": 700.0, "solidity": 0.8}], image_id="b")
    later = _table([{"area_um2": 600.0}] * 3 + [{"area_um2": 700.0, "solidity": 0.8}], image_id="a", frame=1)
    t = quality_flags(pd.concat([small, big, later], ignore_index=True), (H, W))
    assert t["likely_doublet"].tolist() == [False, False, False, True] + [False] * 8
    # without image/frame columns the whole table is one group
    t2 = quality_flags(pd.concat([small, big], ignore_index=True).drop(columns=["image_id", "frame"]), (H, W))
    assert t2["likely_doublet"].tolist() == [False] * 8  # median area 450 → limit 810


def test_flags_are_boolean_and_input_is_not_modified():
    tab = _table([{}, {"bbox_y0_px": 0}])
    before = tab.copy()
    t = quality_flags(tab, (H, W))
    pd.testing.assert_frame_equal(tab, before)
    for c in QC_COLUMNS:
        assert t[c].dtype == bool, c
    empty = quality_flags(_table([{}]).iloc[0:0], (H, W))
    assert len(empty) == 0 and set(QC_COLUMNS) <= set(empty.columns)


def _reference(tab: pd.DataFrame, shape, cfg: QualityConfig) -> pd.DataFrame:
    """Brute force, one row at a time."""
    h, w = shape
    m = cfg.edge_margin_px
    out = {c: [] for c in QC_COLUMNS}
    for _, r in tab.iterrows():
        same = tab[(tab.image_id == r.image_id) & (tab.frame == r.frame)]
        edge = r.bbox_y0_px <= m or r.bbox_x0_px <= m or r.bbox_y1_px >= h - m or r.bbox_x1_px >= w - m
        small, large = r.area_um2 < cfg.min_area_um2, r.area_um2 > cfg.max_area_um2
        doublet = (r.solidity < min(np.median(same.solidity), cfg.doublet_max_solidity)
                   and r.area_um2 > cfg.doublet_min_area_ratio * np.median(same.area_um2))
        for c, v in zip(QC_COLUMNS, (edge, small, large, doublet, not (edge or small or large or doublet))):
            out[c].append(bool(v))
    return pd.DataFrame(out, index=tab.index)


@st.composite
def _tables(draw):
    h, w = draw(st.integers(10, 60)), draw(st.integers(10, 60))
    n = draw(st.integers(1, 12))
    rows = []
    for _ in range(n):
        y0, x0 = draw(st.integers(0, h - 1)), draw(st.integers(0, w - 1))
        rows.append({
            "image_id": draw(st.sampled_from(["a", "b"])), "frame": draw(st.integers(0, 1)),
            "bbox_y0_px": y0, "bbox_x0_px": x0,
            "bbox_y1_px": draw(st.integers(y0 + 1, h)), "bbox_x1_px": draw(st.integers(x0 + 1, w)),
            "area_um2": draw(st.floats(1.0, 3000.0)), "solidity": draw(st.floats(0.3, 1.0)),
        })
    cfg = QualityConfig(min_area_um2=draw(st.floats(0, 100)), max_area_um2=draw(st.floats(200, 4000)),
                        doublet_max_solidity=draw(st.floats(0, 1)), doublet_min_area_ratio=draw(st.floats(0, 3)),
                        edge_margin_px=draw(st.integers(0, 3)))
    return pd.DataFrame(rows), (h, w), cfg


@settings(max_examples=40)
@given(_tables())
def test_flags_equal_a_brute_force_reference(case):
    tab, shape, cfg = case
    pd.testing.assert_frame_equal(quality_flags(tab, shape, cfg)[list(QC_COLUMNS)], _reference(tab, shape, cfg))
