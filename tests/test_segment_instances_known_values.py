"""From class probabilities to cells, and resampling for the network, on hand-made maps whose
answer is known pixel for pixel: the minimum area in µm² at a pixel size other than 1 µm, the
marker cut at a quarter of it, the strict foreground threshold, flooding from the markers down the
interior probability, and the output shape of a non-square image.
"""

from __future__ import annotations

import numpy as np
import pytest

from mechanoscope.segment.instances import probabilities_to_labels
from mechanoscope.segment.network_prep import resample_image


def _prob(interior: np.ndarray, boundary: np.ndarray) -> np.ndarray:
    """(3, Y, X) float32 probabilities from the interior and boundary maps (background is the rest)."""
    interior = interior.astype(np.float32)
    boundary = boundary.astype(np.float32)
    return np.stack([1.0 - interior - boundary, interior, boundary]).astype(np.float32)


def _squares(shape: tuple[int, int], boxes: list[tuple[int, int, int, int]], p_interior: float = 0.9):
    interior = np.zeros(shape, np.float32)
    for y0, x0, h, w in boxes:
        interior[y0:y0 + h, x0:x0 + w] = p_interior
    boundary = np.where(interior > 0, 0.05, 0.0).astype(np.float32)
    return _prob(interior, boundary)


def test_min_area_in_um2_uses_the_squared_pixel_size():
    # 0.5 µm pixels: 20 µm² is 80 px. A 10 x 10 cell (25 µm²) stays, 8 x 8 (16 µm²) goes,
    # and 8 x 10 = 80 px (exactly 20 µm²) stays: "smaller than the minimum" is strict.
    prob = _squares((40, 60), [(2, 2, 10, 10), (2, 20, 8, 8), (20, 2, 8, 10)])
    labels = probabilities_to_labels(prob, pixel_size_um=0.5, min_cell_area_um2=20.0)
    areas = sorted(np.bincount(labels.ravel())[1:].tolist())
    assert areas == [80, 100]
    assert labels[5, 23] == 0  # the 16 µm² cell was dropped
    assert labels[24, 5] > 0 and labels[5, 5] > 0 and labels[24, 5] != labels[5, 5]


def test_markers_of_a_quarter_of_the_minimum_area_still_seed_their_own_cell():
    # One foreground block of two 12 x 12 cells; each has a 5 x 5 = 25 px core above the interior
    # threshold, the rest is boundary-like. Minimum area 80 px, so markers under 20 px are dropped:
    # 25 px cores stay and split the block in two (a cut at half the minimum, 40 px, would leave
    # no marker and one 288 px cell).
    interior = np.zeros((20, 30), np.float32)
    boundary = np.zeros((20, 30), np.float32)
    interior[4:16, 3:27], boundary[4:16, 3:27] = 0.3, 0.6
    interior[8:13, 6:11] = 0.9
    interior[8:13, 19:24] = 0.9
    boundary[8:13, 6:11] = boundary[8:13, 19:24] = 0.05
    labels = probabilities_to_labels(_prob(interior, boundary), pixel_size_um=1.0, min_cell_area_um2=80.0)
    areas = np.bincount(labels.ravel())[1:]
    assert len(areas) == 2, areas
    assert labels[10, 8] != labels[10, 21]
    assert areas.sum() == 12 * 24 and areas.min() >= 100


def test_foreground_threshold_is_strict():
    # a disk of cell surrounded by a 2 px ring where p(interior) + p(boundary) is exactly 0.5:
    # the ring is background at the default threshold 0.5 ("> threshold").
    yy, xx = np.mgrid[:40, :40]
    r = np.hypot(yy - 20, xx - 20)
    interior = np.where(r <= 8, 0.9, np.where(r <= 10, 0.25, 0.0)).astype(np.float32)
    boundary = np.where(r <= 8, 0.05, np.where(r <= 10, 0.25, 0.0)).astype(np.float32)
    labels = probabilities_to_labels(_prob(interior, boundary), pixel_size_um=1.0, min_cell_area_um2=10.0)
    assert int((labels > 0).sum()) == int((r <= 8).sum())


def test_cells_grow_from_their_markers_down_the_interior_probability():
    # along x: cell A's core (p=0.9) x 0..9, then A's weaker interior (p=0.45, below the marker
    # threshold) x 10..19, a boundary valley (p=0.05) x 20..21, then cell B's core x 22..31.
    # Flooding 1 - p(interior) from the markers gives all of A's weak part to A; the valley is
    # where they meet.
    interior = np.zeros((10, 32), np.float32)
    boundary = np.zeros((10, 32), np.float32)
    interior[:, 0:10], boundary[:, 0:10] = 0.9, 0.05
    interior[:, 10:20], boundary[:, 10:20] = 0.45, 0.45
    interior[:, 20:22], boundary[:, 20:22] = 0.05, 0.9
    interior[:, 22:32], boundary[:, 22:32] = 0.9, 0.05
    labels = probabilities_to_labels(_prob(interior, boundary), pixel_size_um=1.0, min_cell_area_um2=20.0)
    a, b = labels[5, 0], labels[5, 31]
    assert a > 0 and b > 0 and a != b
    assert (labels[:, 0:20] == a).all()
    assert (labels[:, 22:32] == b).all()


@pytest.mark.parametrize("shape", [(10, 20), (20, 10)])
def test_resample_a_non_square_image_keeps_both_axes(shape):
    # halving the resolution (0.5 -> 1.0 µm) of a ramp along the long axis: each axis halves, and
    # output pixel j sits at input coordinate 2j + 0.5, where the (linear) ramp has that value.
    ramp = np.arange(max(shape), dtype=np.float32)
    image = np.broadcast_to(ramp[None, :] if shape[1] > shape[0] else ramp[:, None], shape)
    out = resample_image(image, 0.5, 1.0)
    assert out.shape == (shape[0] // 2, shape[1] // 2)
    line = out[2] if shape[1] > shape[0] else out[:, 2]
    j = np.arange(2, 8)
    np.testing.assert_allclose(line[2:8], 2 * j + 0.5, atol=1e-3)
