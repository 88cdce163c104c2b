"""Matching AFM measurement positions to segmented cells."""

import numpy as np
import pandas as pd
import pytest

from mechanoscope.errors import MechanoscopeError
from mechanoscope.mechanics import match_afm_to_cells


def _scene():
    lab = np.zeros((50, 50), np.int32)
    lab[5:15, 5:15] = 1
    lab[30:45, 30:45] = 2
    cells = pd.DataFrame({"image_id": "a", "cell_id": [1, 2], "centroid_y_um": [10 * 0.5 - 0.25, 37.0 * 0.5], "centroid_x_um": [10 * 0.5 - 0.25, 37.0 * 0.5]})
    return lab, cells


def test_points_inside_nearby_and_far():
    lab, cells = _scene()
    afm = pd.DataFrame({
        "image_id": "a",
        "position_y_um": [5.0, 5.2, 18.0, 10.0, 24.0],
        "position_x_um": [5.0, 5.2, 18.0, 10.0, 1.0],
        "measured_stiffness_pa": [100.0, 400.0, 1000.0, 50.0, 7.0],
    })
    # px 0.5 µm: (5,5) µm → pixel (10,10) in cell 1 twice; (18,18) → cell 2; (10,10) µm → pixel (20,20) background, 
    # 7.4 µm from cell 1's centroid → too far at 5 µm, nearest at 8 µm; (24, 1) far from all
    out, matches = match_afm_to_cells(cells, afm, {"a": lab}, pixel_size_um=0.5, max_distance_um=5.0)
    assert list(matches["how"]) == ["inside", "inside", "inside", "unmatched", "unmatched"]
    assert out.loc[0, "afm_stiffness_pa"] == pytest.approx(200.0)  # geometric mean of 100 and 400
    assert out.loc[0, "afm_n_measurements"] == 2
    assert out.loc[1, "afm_stiffness_pa"] == pytest.approx(1000.0)
    out2, m2 = match_afm_to_cells(cells, afm.iloc[[3]], {"a": lab}, pixel_size_um=0.5, max_distance_um=8.0)
    assert list(m2["how"]) == ["nearest"] and out2.loc[0, "afm_stiffness_pa"] == pytest.approx(50.0)
    assert np.isnan(out2.loc[1, "afm_stiffness_pa"])


def test_bad_afm_tables():
    lab, cells = _scene()
    with pytest.raises(MechanoscopeError, match="lacks column"):
        match_afm_to_cells(cells, pd.DataFrame({"image_id": ["a"]}), {"a": lab}, pixel_size_um=0.5)
    bad = pd.DataFrame({"image_id": ["a"], "position_y_um": [1.0], "position_x_um": [1.0], "measured_stiffness_pa": [-3.0]})
    with pytest.raises(MechanoscopeError, match="non-positive"):
        match_afm_to_cells(cells, bad, {"a": lab}, pixel_size_um=0.5)
    other = bad.assign(image_id="zz", measured_stiffness_pa=5.0)
    with pytest.raises(MechanoscopeError, match="'zz'"):
        match_afm_to_cells(cells, other, {"a": lab}, pixel_size_um=0.5)
