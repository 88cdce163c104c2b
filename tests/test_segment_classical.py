"""Classical label-free segmentation on synthetic phase objects rendered here.

The scene: one isolated cell and a pair of touching cells (centres 0.85 diameters
apart), each a smooth dome carrying fine texture (random 2-4 µm sinusoids), on a flat
background with camera noise. The same scene renders dark cells with a bright halo
(positive phase contrast) or bright cells with a dark rim, at any pixel size (the
texture is defined in µm, so the scene is the same at every sampling).
"""

from __future__ import annotations

import warnings

import numpy as np
import pytest
from pydantic import ValidationError
from scipy import ndimage as ndi

from mechanoscope.errors import AxesError, ConfigError, ImageReadError, MechanoscopeError
from mechanoscope.segment import ClassicalSegmentationConfig, foreground_map, segment_classical

FIELD_UM = 100.0
DIAMETER_UM = 20.0
ISOLATED = (25.0, 25.0)
PAIR = ((70.0, 50.0), (70.0, 67.0))  # 17 µm apart: touching, overlapping by 3 µm
CELLS_UM = [(*ISOLATED, 10.0), (*PAIR[0], 10.0), (*PAIR[1], 10.0)]


def render_scene(
    pixel_size_um: float,
    *,
    polarity: int = -1,
    halo: bool = True,
    seed: int = 0,
    noise: float = 0.01,
) -> tuple[np.ndarray, np.ndarray]:
    """Return ``(image float32, truth int32)`` of the test scene.

    ``polarity=-1``: cells darker than the background with a bright halo outside
    (phase contrast); ``+1``: cells brighter with a dark rim (defocused bright-field).
    Truth: pixels inside each cell's disk; the overlap of the pair goes to the
    nearer centre.
    """
    rng = np.random.default_rng(seed)
    n = int(round(FIELD_UM / pixel_size_um))
    c = (np.arange(n) + 0.5) * pixel_size_um
    yy, xx = np.meshgrid(c, c, indexing="ij")
    rel = np.stack([np.hypot(yy - y, xx - x) / r for y, x, r in CELLS_UM])
    owner = np.argmin(rel, axis=0)
    rho = np.take_along_axis(rel, owner[None], 0)[0]
    inside = rho < 1
    truth = np.where(inside, owner + 1, 0).astype(np.int32)
    dome = np.clip(1 - rho**2, 0, None) ** 0.7
    texture = np.zeros_like(yy)
    for _ in range(24):
        theta, lam, phase = rng.uniform(0, np.pi), rng.uniform(2.0, 4.0), rng.uniform(0, 2 * np.pi)
        texture += np.cos(2 * np.pi * (xx * np.cos(theta) + yy * np.sin(theta)) / lam + phase)
    texture /= np.sqrt(12)
    img = 1.0 + polarity * 0.3 * dome * (1 + 0.3 * texture)
    if halo:
        blur = ndi.gaussian_filter(inside.astype(float), 1.5 / pixel_size_um)
        img -= polarity * 0.25 * blur * ~inside
    img += noise * rng.standard_normal(img.shape)
    return img.astype(np.float32), truth


def assert_three_cells_found(labels: np.ndarray, truth: np.ndarray, min_iou: float) -> None:
    """Exactly three objects, each true cell matched by its own object with IoU > min_iou."""
    match = best_iou(labels, truth)
    assert labels.max() == 3
    assert min(iou for _, iou in match.values()) > min_iou
    assert len({pid for pid, _ in match.values()}) == 3


def best_iou(labels: np.ndarray, truth: np.ndarray) -> dict[int, tuple[int, float]]:
    """For each true id: (best predicted id, its IoU)."""
    out = {}
    for t in range(1, int(truth.max()) + 1):
        tm = truth == t
        ids, counts = np.unique(labels[tm], return_counts=True)
        best = (0, 0.0)
        for i, inter in zip(ids, counts):
            if i == 0:
                continue
            iou = inter / np.count_nonzero(tm | (labels == i))
            if iou > best[1]:
                best = (int(i), float(iou))
        out[t] = best
    return out


CFG = ClassicalSegmentationConfig(cell_diameter_um=DIAMETER_UM)


@pytest.mark.parametrize("polarity", [-1, 1], ids=["dark_cells_bright_halo", "bright_cells_dark_rim"])
@pytest.mark.parametrize("split_method", ["ridges", "distance"])
def test_cells_found_and_touching_pair_split(polarity: int, split_method: str) -> None:
    img, truth = render_scene(0.5, polarity=polarity, halo=True)
    cfg = CFG.model_copy(update={"split_method": split_method})
    labels = segment_classical(img, pixel_size_um=0.5, config=cfg)
    assert labels.max() == 3, f"expected 3 cells, got {labels.max()}"
    match = best_iou(labels, truth)
    for t, (pid, iou) in match.items():
        assert iou > 0.8, f"true cell {t}: best IoU {iou:.2f}"
    # the two cells of the touching pair went to two different labels
    assert match[2][0] != match[3][0]


@pytest.mark.parametrize("polarity", [-1, 1])
def test_without_halo_both_polarities(polarity: int) -> None:
    img, truth = render_scene(0.5, polarity=polarity, halo=False, seed=3)
    labels = segment_classical(img, pixel_size_um=0.5, config=CFG)
    assert_three_cells_found(labels, truth, min_iou=0.85)


def test_pair_stays_merged_without_splitting() -> None:
    """The split comes from the watershed: switched off, the pair is one object."""
    img, truth = render_scene(0.5)
    labels = segment_classical(
        img, pixel_size_um=0.5, config=CFG.model_copy(update={"split_touching": False})
    )
    match = best_iou(labels, truth)
    assert labels.max() == 2
    assert match[2][0] == match[3][0]


@pytest.mark.parametrize("method", ["triangle", "li"])
def test_other_threshold_methods(method: str) -> None:
    img, truth = render_scene(0.5)
    cfg = CFG.model_copy(update={"threshold_method": method})
    labels = segment_classical(img, pixel_size_um=0.5, config=cfg)
    assert_three_cells_found(labels, truth, min_iou=0.7)


def test_pixel_size_scaling() -> None:
    """The same scene sampled at twice the pixel size gives the same cells in µm²."""
    fine_img, fine_truth = render_scene(0.4, halo=True, seed=1)
    coarse_img, coarse_truth = render_scene(0.8, halo=True, seed=1)
    fine = segment_classical(fine_img, pixel_size_um=0.4, config=CFG)
    coarse = segment_classical(coarse_img, pixel_size_um=0.8, config=CFG)
    assert fine.max() == coarse.max() == 3
    for labels, truth in ((fine, fine_truth), (coarse, coarse_truth)):
        match = best_iou(labels, truth)
        assert min(iou for _, iou in match.values()) > 0.75
        assert len({pid for pid, _ in match.values()}) == 3
    area_fine = np.sort(np.bincount(fine.ravel())[1:]) * 0.4**2
    area_coarse = np.sort(np.bincount(coarse.ravel())[1:]) * 0.8**2
    np.testing.assert_allclose(area_coarse, area_fine, rtol=0.2)


def test_wrong_pixel_size_changes_result() -> None:
    """Lengths really are in µm: a 4x wrong pixel size loses the cells' scale."""
    img, _ = render_scene(0.5)
    right = segment_classical(img, pixel_size_um=0.5, config=CFG)
    wrong = segment_classical(img, pixel_size_um=0.125, config=CFG)
    assert right.max() == 3
    assert wrong.max() != 3 or not np.array_equal(right > 0, wrong > 0)


def test_output_contract_and_determinism() -> None:
    img, _ = render_scene(0.5)
    a = segment_classical((img * 4000).astype(np.uint16), pixel_size_um=0.5, config=CFG)
    b = segment_classical((img * 4000).astype(np.uint16), pixel_size_um=0.5, config=CFG)
    assert a.dtype == np.int32 and a.shape == img.shape
    np.testing.assert_array_equal(a, b)
    ids = np.unique(a)
    np.testing.assert_array_equal(ids, np.arange(0, a.max() + 1))  # 0 + consecutive ids
    # ids in raster order of each object's first pixel
    first = [np.flatnonzero(a.ravel() == i)[0] for i in ids[1:]]
    assert first == sorted(first)


def test_min_area_removes_small_objects() -> None:
    img, _ = render_scene(0.5)
    big = 2 * np.pi * 10.0**2  # twice a cell's area
    labels = segment_classical(
        img, pixel_size_um=0.5, config=CFG.model_copy(update={"min_cell_area_um2": big})
    )
    assert labels.max() == 0


def test_flat_background_gives_no_cells_with_warning() -> None:
    rng = np.random.default_rng(0)
    yy, xx = np.mgrid[:200, :200]
    img = 1.0 + 0.2 * xx / 200 + 0.01 * rng.standard_normal((200, 200))
    with pytest.warns(UserWarning, match="no cells found"):
        labels = segment_classical(img, pixel_size_um=0.5, config=CFG)
    assert labels.shape == img.shape and labels.max() == 0
    # the same check passes silently on an image that holds cells
    cells, _ = render_scene(0.5)
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        assert segment_classical(cells, pixel_size_um=0.5, config=CFG).max() == 3


def test_foreground_map_is_sign_blind() -> None:
    """Inverting the image contrast leaves the texture map unchanged."""
    img, truth = render_scene(0.5, halo=False)
    f = foreground_map(img, pixel_size_um=0.5, config=CFG)
    f_inv = foreground_map(2.0 - img, pixel_size_um=0.5, config=CFG)
    inside = ndi.binary_erosion(truth > 0, iterations=6)
    outside = ~ndi.binary_dilation(truth > 0, iterations=10)
    assert np.median(f[inside]) > np.median(f[outside]) + 1.0
    np.testing.assert_allclose(f, f_inv, atol=0.05)


# ----------------------------------------------------------------------- bad inputs
def test_nan_image_rejected() -> None:
    img, _ = render_scene(0.5)
    img[3, 4] = np.nan
    with pytest.raises(ImageReadError, match="NaN"):
        segment_classical(img, pixel_size_um=0.5)


def test_constant_image_rejected() -> None:
    with pytest.raises(ImageReadError, match="constant"):
        segment_classical(np.full((64, 64), 7, dtype=np.uint16), pixel_size_um=0.5)


def test_empty_image_rejected() -> None:
    with pytest.raises(ImageReadError, match="empty"):
        segment_classical(np.zeros((0, 0)), pixel_size_um=0.5)


@pytest.mark.parametrize(
    ("shape", "hint"),
    [((3, 64, 64), "select one plane"), ((64, 64, 3), "colour"), ((1, 64, 64), "squeeze"), ((64,), "2-D")],
)
def test_not_2d_rejected(shape: tuple[int, ...], hint: str) -> None:
    img = np.random.default_rng(0).random(shape)
    with pytest.raises(AxesError, match="2-D") as exc:
        segment_classical(img, pixel_size_um=0.5)
    assert hint in str(exc.value)
    assert str(shape) in str(exc.value)


@pytest.mark.parametrize("px", [0, -0.5, float("nan"), float("inf"), "0.5", None, True])
def test_bad_pixel_size_rejected(px: object) -> None:
    img, _ = render_scene(1.0)
    with pytest.raises(ConfigError, match="pixel_size_um"):
        segment_classical(img, pixel_size_um=px)  # type: ignore[arg-type]


def test_errors_are_mechanoscope_errors() -> None:
    with pytest.raises(MechanoscopeError):
        segment_classical(np.ones((8, 8, 8)), pixel_size_um=1.0)


def test_config_rejects_unknown_and_invalid_values() -> None:
    with pytest.raises(ValidationError, match="extra"):
        ClassicalSegmentationConfig(cell_diameter=20)  # type: ignore[call-arg]
    with pytest.raises(ValidationError):
        ClassicalSegmentationConfig(cell_diameter_um=0)
    with pytest.raises(ValidationError, match="normalize_percentiles"):
        ClassicalSegmentationConfig(normalize_percentiles=(99, 1))
    with pytest.raises(ValidationError):
        ClassicalSegmentationConfig(threshold_method="magic")  # type: ignore[arg-type]
    with pytest.raises(ConfigError, match="cell_diameter_um"):
        ClassicalSegmentationConfig.build(cell_diameter_um=-3)


def test_config_fields_documented_and_resolved_in_um() -> None:
    for name, field in ClassicalSegmentationConfig.model_fields.items():
        assert field.description, f"{name} has no description"
    cfg = ClassicalSegmentationConfig(cell_diameter_um=30)
    r = cfg.resolved()
    assert r["min_separation_um"] == pytest.approx(15.0)
    assert r["min_cell_area_um2"] == pytest.approx(0.1 * np.pi * 15.0**2)
    # at a coarse pixel size the smoothing and window are clamped to the pixel grid
    coarse = cfg.resolved(pixel_size_um=2.0)
    assert coarse["smoothing_um"] == pytest.approx(1.0)
    assert coarse["texture_window_um"] >= 2.0
    assert coarse["boundary_shrink_um"] > 0
    # round-trips through JSON (written into outputs)
    again = ClassicalSegmentationConfig.model_validate_json(cfg.model_dump_json())
    assert again == cfg
