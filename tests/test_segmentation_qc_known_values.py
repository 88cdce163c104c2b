"""segmentation_qc's thresholds on hand-made image lists: strict 'fewer than', 'at least min_group', medians over images with cells."""

from mechanoscope.metrics.segmentation_qc import segmentation_qc


def _imgs(counts, areas=None):
    return [{"image_id": f"i{k}", "n_cells": n, **({"covered_fraction": areas[k]} if areas else {})} for k, n in enumerate(counts)]


def test_few_cells_is_strictly_fewer_than_the_fraction_of_the_median():
    q = segmentation_qc(_imgs([10, 10, 10, 5, 4]), min_fraction=0.5)  # median 10: 5 is not fewer than 5, 4 is
    assert q["images"]["i3"]["flags"] == [] and q["images"]["i4"]["flags"] == ["few cells"]
    assert q["flagged"] == ["i4"]


def test_a_group_of_exactly_min_group_images_uses_its_median():
    q = segmentation_qc(_imgs([12, 12, 1]), min_group=3)
    assert q["images"]["i2"]["flags"] == ["few cells"]
    assert segmentation_qc(_imgs([12, 1]), min_group=3)["flagged"] == []  # two images: too few to compare


def test_the_median_is_over_images_with_cells_and_area_uses_the_fraction():
    # images without cells do not pull the median down: median of (2, 10, 10, 12) = 10, 2 < 2.5
    q = segmentation_qc(_imgs([0, 0, 2, 10, 10, 12]))
    assert q["groups"]["all"]["median_cells"] == 10.0
    assert q["images"]["i2"]["flags"] == ["few cells"] and q["images"]["i0"]["flags"] == ["no cells"]
    # covered area: 0.04 is below 0.25 × median 0.2 = 0.05; 0.06 is not (although below the median)
    q = segmentation_qc(_imgs([10, 10, 10, 10, 10], [0.2, 0.2, 0.2, 0.04, 0.06]))
    assert q["images"]["i3"]["flags"] == ["little area"] and q["images"]["i4"]["flags"] == []
