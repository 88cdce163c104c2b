"""Small real files from ../shared/data (skipped with a reason when the folder is absent)."""

import json

import numpy as np
import pytest

from mechanoscope.cells.extract import ExtractConfig, extract_cells
from mechanoscope.errors import MissingPixelSizeError
from mechanoscope.evaluate.segmentation import segmentation_scores
from mechanoscope.io import read_image, read_label_image
from mechanoscope.segment.classical import segment_classical
from tests.conftest import shared_data

#: estimated from SOURCE.txt optics: 6.5 µm camera pixel × 2 binning / (10× × 1.5)
USIIGACI_PIXEL_UM = 0.8667


@pytest.fixture(scope="module")
def usiigaci():
    folder = shared_data("usiigaci_phase_contrast")
    index = json.loads((folder / "index.json").read_text())
    entry = index[0]
    return folder, entry


def test_real_png_needs_pixel_size_and_masks_match_index(usiigaci):
    folder, entry = usiigaci
    with pytest.raises(MissingPixelSizeError, match=entry["name"]):
        read_image(folder / "images" / f"{entry['name']}.png")
    img = read_image(folder / "images" / f"{entry['name']}.png", pixel_size_um=USIIGACI_PIXEL_UM)
    lab = read_label_image(folder / "masks" / f"{entry['name']}_instances.png").data
    assert img.as_2d().shape == tuple(entry["shape"]) == lab.shape
    assert len(np.unique(lab)) - 1 == entry["n_cells"]


def test_real_cells_have_plausible_morphology(usiigaci):
    folder, entry = usiigaci
    img = read_image(folder / "images" / f"{entry['name']}.png", pixel_size_um=USIIGACI_PIXEL_UM)
    lab = read_label_image(folder / "masks" / f"{entry['name']}_instances.png").data
    table, crops = extract_cells(img, lab, config=ExtractConfig.build(crop={"crop_size_um": 96.0, "crop_pixels": 48}))
    assert len(table) == entry["n_cells"] == len(crops)
    # adherent glioma cells: hundreds to a few thousand µm², elongated, not round
    assert 300 < table["area_um2"].median() < 6000
    assert table["aspect_ratio"].median() > 1.2
    assert set(table["cell_id"]) == set(np.unique(lab)) - {0}


def test_classical_segmentation_finds_real_cells(usiigaci):
    folder, entry = usiigaci
    img = read_image(folder / "images" / f"{entry['name']}.png", pixel_size_um=USIIGACI_PIXEL_UM)
    true = read_label_image(folder / "masks" / f"{entry['name']}_instances.png").data
    pred = segment_classical(img.as_2d(), pixel_size_um=USIIGACI_PIXEL_UM)
    scores = segmentation_scores(pred, true)
    # a label-free baseline on dense real phase contrast (benchmark: AP@0.5 ≈ 0.2–0.27)
    assert scores["n_pred"] > 0.3 * scores["n_true"]
    assert scores["dice"] > 0.6  # the foreground is found even where clusters are not split
