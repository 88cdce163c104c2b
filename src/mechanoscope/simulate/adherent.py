"""Fields of view of adherent cells whose Young's modulus is known.

Mechanics → morphology model
----------------------------
Each cell gets a Young's modulus ``E`` (Pa), either from a named population
(log-normal around a median) or log-uniform over a range. With
``x = log10(E / E_ref)`` (``E_ref`` = ``reference_stiffness_pa``, the geometric
mean of the soft and stiff medians by default) the cell's shape follows:

* **Spread area** ``A = A_ref · (V/V_ref)^(2/3) · 10^(area_coupling·x) · ε_A``.
  Rationale: cortical and stress-fibre tension that makes a cell stiff is the
  same actomyosin machinery that pulls it flat over the substrate; cell stiffness
  and spread area rise together on stiffer substrates (Solon et al. 2007,
  Discher et al. 2005). Volume ``V`` is drawn independently of E (log-normal).
* **Height**: volume is conserved, so the mean height is ``V/A`` — stiff cells are
  flatter, soft cells rounder and taller. The height profile is a dome
  ``(1 − ρ²)^q`` (ρ the normalised radius) plus a nuclear bump, rescaled so that
  its integral equals V exactly.
* **Polarisation**: aspect ratio ``1 + ar_base·10^(polarisation_coupling·x)·ε_P``
  — tensed cells elongate along their stress fibres.
* **Stress-fibre texture**: an oriented fine height modulation (fibres parallel to
  the long axis) of relative amplitude ``fibre_base·10^(fibre_coupling·x)·ε_F``.
* **Edge ruffling**: the outline radius carries random harmonics (orders 3–16) of
  relative RMS amplitude ``ruffle_base·10^(−ruffle_coupling·x)·ε_R``; soft cells
  with little cortical tension have ruffled, blebby edges, stiff cells smooth ones.

The ``ε`` are independent log-normal nuisance factors; orientation, nucleus size
and position, dome shape, per-image focus and illumination and camera noise are
independent of E. With the default couplings every single outline feature
(area, aspect ratio, solidity, circularity, ...) overlaps between the ``soft``
and ``stiff`` populations (ROC AUC ≈ 0.7–0.85, see ``benchmarks/simulate.py``),
while the image as a whole (height through phase, texture, edges combined)
carries much more information. Every coupling strength is a config parameter;
set one to 0 to remove that cue.

Conditions and replicates (``AdherentConfig.conditions``, model in
:mod:`mechanoscope.simulate.conditions`): each image is one field of view of one
replicate (well) of one condition; the replicate's median modulus carries a
log-normal replicate effect, its cells scatter log-normally around it.
"""

from __future__ import annotations

import hashlib
import json
import os
from dataclasses import dataclass
from pathlib import Path
from typing import Callable, Literal

import numpy as np
import pandas as pd
from pydantic import Field, field_validator, model_validator
from scipy import ndimage as ndi

from mechanoscope import __version__
from mechanoscope.config import StrictConfig
from mechanoscope.errors import ConfigError, OutputFolderError
from mechanoscope.io import write_image, write_json, write_label_image, write_table
from mechanoscope.simulate.conditions import ConditionsDesign, functional_readout, replicate_medians
from mechanoscope.simulate.optics import (
    CameraConfig,
    OpticsConfig,
    apply_camera,
    illumination_field,
    render_intensity,
)

__all__ = [
    "PopulationSpec",
    "MorphologyCouplings",
    "AdherentConfig",
    "SimulatedField",
    "DEFAULT_POPULATIONS",
    "sample_stiffness",
    "render_cell",
    "simulate_field",
    "simulate_adherent",
    "afm_measurements",
]


class PopulationSpec(StrictConfig):
    """A named population of cells with log-normally distributed Young's modulus."""

    median_pa: float = Field(gt=0, le=1e7, description="Median Young's modulus (Pa).")
    sigma_ln: float = Field(0.47, ge=0, le=3, description="Standard deviation of ln E (log-normal spread).")


# published soft/stiff ranges of MSCs and macrophages: 200 ± 100 Pa and 2 ± 1 kPa
DEFAULT_POPULATIONS: dict[str, PopulationSpec] = {
    "soft": PopulationSpec(median_pa=200.0, sigma_ln=0.47),
    "stiff": PopulationSpec(median_pa=2000.0, sigma_ln=0.47),
    "intermediate": PopulationSpec(median_pa=630.0, sigma_ln=0.47),
}


class MorphologyCouplings(StrictConfig):
    """Strengths of the mechanics → morphology couplings and of the nuisance spreads.

    ``*_coupling`` are exponents per decade of E (0 removes the cue); ``*_noise_ln``
    are standard deviations of independent log-normal nuisance factors.
    """

    reference_stiffness_pa: float = Field(632.5, gt=0, description="E_ref at which a cell has the reference shape (Pa).")
    volume_median_um3: float = Field(1500.0, gt=0, description="Median cell volume V_ref (µm³), independent of E.")
    volume_noise_ln: float = Field(0.35, ge=0, le=2, description="Spread of ln V.")
    area_ref_um2: float = Field(900.0, gt=0, description="Spread area at V = V_ref and E = E_ref (µm²).")
    area_coupling: float = Field(0.15, ge=-2, le=2, description="d log10(area) / d log10(E).")
    area_noise_ln: float = Field(0.30, ge=0, le=2, description="Spread of ln(area) not explained by E or V.")
    ar_base: float = Field(0.45, ge=0, le=5, description="Aspect ratio − 1 at E_ref.")
    polarisation_coupling: float = Field(0.22, ge=-2, le=2, description="d log10(aspect ratio − 1) / d log10(E).")
    polarisation_noise_ln: float = Field(0.55, ge=0, le=3, description="Spread of ln(aspect ratio − 1).")
    fibre_base: float = Field(0.07, ge=0, le=1, description="Relative stress-fibre height modulation at E_ref.")
    fibre_coupling: float = Field(0.9, ge=-3, le=3, description="d log10(fibre amplitude) / d log10(E).")
    fibre_noise_ln: float = Field(0.25, ge=0, le=3, description="Spread of ln(fibre amplitude).")
    ruffle_base: float = Field(0.035, ge=0, le=0.3, description="Relative RMS edge ruffling at E_ref.")
    ruffle_coupling: float = Field(0.20, ge=-3, le=3, description="−d log10(ruffle amplitude) / d log10(E) (positive: soft cells ruffled).")
    ruffle_noise_ln: float = Field(0.5, ge=0, le=3, description="Spread of ln(ruffle amplitude).")
    nucleus_radius_um: float = Field(5.0, gt=0, description="Median nucleus radius (µm), independent of E.")
    nucleus_height_fraction: float = Field(0.35, ge=0, le=2, description="Extra height of the nuclear bump relative to the dome peak.")
    dome_exponent_range: tuple[float, float] = Field((0.6, 1.4), description="Range of the dome exponent q of (1 − ρ²)^q (nuisance).")

    @field_validator("dome_exponent_range")
    @classmethod
    def _range(cls, v: tuple[float, float]) -> tuple[float, float]:
        if not (0 < v[0] <= v[1] <= 5):
            raise ValueError("dome_exponent_range must satisfy 0 < low ≤ high ≤ 5")
        return v


class AdherentConfig(StrictConfig):
    """Everything that defines a simulated adherent-cell data set."""

    n_images: int = Field(8, ge=1, le=100000, description="Number of fields of view.")
    image_shape_px: tuple[int, int] = Field((512, 512), description="Field of view (Y, X) in pixels.")
    cells_per_image: int = Field(12, ge=0, le=500, description="Cells placed per field of view (fewer if they do not fit).")
    touching_fraction: float = Field(0.2, ge=0, le=1, description="Fraction of cells placed in contact with a neighbour.")
    debris_per_image: float = Field(4.0, ge=0, le=200, description="Mean number of debris particles per image (Poisson).")
    modality: Literal["brightfield", "phase_contrast"] = Field("brightfield", description="Imaging modality.")
    defocus_um: float = Field(3.0, ge=-50, le=50, description="Mean defocus Δz (µm); bright-field cells are invisible at 0.")
    defocus_jitter_um: float = Field(0.5, ge=0, le=20, description="Per-image standard deviation of the defocus (focus nuisance).")
    illumination_variation: float = Field(0.15, ge=0, le=1, description="Largest peak-to-peak relative unevenness of the illumination (a field varies by 0.25–1× this, median about 0.7×).")
    stiffness_mode: Literal["populations", "continuous"] = Field("populations", description="Draw E from named populations or log-uniformly over a range.")
    population_names: list[str] = Field(default_factory=lambda: ["soft", "stiff"], description="Populations to simulate (keys of `populations`).")
    populations: dict[str, PopulationSpec] = Field(default_factory=lambda: dict(DEFAULT_POPULATIONS), description="Available populations.")
    population_per_image: bool = Field(True, description="True: each image holds one population (like one well per condition), cycling through them; False: each cell draws one.")
    stiffness_range_pa: tuple[float, float] = Field((100.0, 10000.0), description="Range of the log-uniform E in 'continuous' mode (Pa).")
    couplings: MorphologyCouplings = Field(default_factory=MorphologyCouplings, description="Mechanics → morphology model.")
    optics: OpticsConfig = Field(default_factory=OpticsConfig, description="Microscope optics.")
    camera: CameraConfig = Field(default_factory=CameraConfig, description="Camera.")
    afm_fraction: float = Field(0.3, ge=0, le=1, description="Fraction of whole (not edge-touching) cells with a simulated AFM measurement.")
    afm_error_cv: float = Field(0.25, ge=0, le=2, description="Coefficient of variation of the log-normal AFM measurement error (0.25 = 25 %).")
    conditions: ConditionsDesign | None = Field(None, description="Named conditions with replicates (replaces `population_names`): image i shows replicate unit i mod (conditions × replicates), condition-major; see mechanoscope.simulate.conditions.")

    @field_validator("image_shape_px")
    @classmethod
    def _shape(cls, v: tuple[int, int]) -> tuple[int, int]:
        if min(v) < 32 or max(v) > 16384:
            raise ValueError("image_shape_px must be between 32 and 16384 pixels per side")
        return v

    @field_validator("stiffness_range_pa")
    @classmethod
    def _srange(cls, v: tuple[float, float]) -> tuple[float, float]:
        if not (0 < v[0] < v[1]):
            raise ValueError("stiffness_range_pa must be (low, high) with 0 < low < high (Pa)")
        return v

    @model_validator(mode="after")
    def _names(self) -> "AdherentConfig":
        if self.conditions is not None:
            if self.stiffness_mode != "populations":
                raise ValueError("conditions need stiffness_mode 'populations' (each condition is a population)")
            if self.n_images < self.conditions.n_units:
                raise ValueError(
                    f"n_images ({self.n_images}) is smaller than conditions × replicates ({self.conditions.n_units}); "
                    "every replicate needs at least one field of view"
                )
            return self
        if self.stiffness_mode == "populations":
            if not self.population_names:
                raise ValueError("population_names must name at least one population")
            unknown = [n for n in self.population_names if n not in self.populations]
            if unknown:
                raise ValueError(
                    f"unknown population(s) {unknown}; allowed: {sorted(self.populations)} "
                    "(or define them under `populations`)"
                )
        return self


@dataclass
class SimulatedField:
    """One simulated field of view with its ground truth.

    Attributes
    ----------
    image
        uint16 camera image (Y, X) in ADU.
    labels
        int32 label image (Y, X), 0 = background, one id per cell.
    height_um
        Height map (Y, X) of the cells (µm), without debris.
    cells
        Truth table, one row per cell in ``labels``.
    defocus_um
        Defocus used for this image.
    """

    image: np.ndarray
    labels: np.ndarray
    height_um: np.ndarray
    cells: pd.DataFrame
    defocus_um: float


def sample_stiffness(config: AdherentConfig, n: int, rng: np.random.Generator, population: str | None = None, spec: PopulationSpec | None = None) -> tuple[np.ndarray, list[str]]:
    """Draw ``n`` Young's moduli (Pa) and their population labels.

    In ``populations`` mode with ``population`` given, all cells come from it; else
    each cell draws a population uniformly. In ``continuous`` mode E is log-uniform
    over ``stiffness_range_pa`` and the label is ``"continuous"``. ``spec`` (with
    ``population`` naming it) draws from that distribution instead of a configured
    population, e.g. one replicate's median of a condition.
    """
    if config.stiffness_mode == "continuous":
        lo, hi = np.log(config.stiffness_range_pa)
        return np.exp(rng.uniform(lo, hi, size=n)), ["continuous"] * n
    if spec is not None:
        if population is None:
            raise ConfigError("sample_stiffness: a population spec needs its population name")
        return spec.median_pa * np.exp(spec.sigma_ln * rng.standard_normal(n)), [str(population)] * n
    if population is not None and population not in config.populations:
        raise ConfigError(f"unknown population {population!r}; allowed: {sorted(config.populations)}")
    names = [population] * n if population is not None else list(rng.choice(config.population_names, size=n))
    med = np.array([config.populations[p].median_pa for p in names])
    sig = np.array([config.populations[p].sigma_ln for p in names])
    return med * np.exp(sig * rng.standard_normal(n)), [str(p) for p in names]


def _draw_latents(E: float, c: MorphologyCouplings, rng: np.random.Generator) -> dict[str, float]:
    x = np.log10(E / c.reference_stiffness_pa)
    V = c.volume_median_um3 * np.exp(c.volume_noise_ln * rng.standard_normal())
    A = c.area_ref_um2 * (V / c.volume_median_um3) ** (2 / 3) * 10 ** (c.area_coupling * x) * np.exp(c.area_noise_ln * rng.standard_normal())
    ar = 1 + c.ar_base * 10 ** (c.polarisation_coupling * x) * np.exp(c.polarisation_noise_ln * rng.standard_normal())
    fibre = c.fibre_base * 10 ** (c.fibre_coupling * x) * np.exp(c.fibre_noise_ln * rng.standard_normal())
    ruffle = c.ruffle_base * 10 ** (-c.ruffle_coupling * x) * np.exp(c.ruffle_noise_ln * rng.standard_normal())
    return {
        "stiffness_pa": float(E),
        "volume_um3": float(V),
        "spread_area_um2": float(A),
        "mean_height_um": float(V / A),
        "aspect_ratio_latent": float(min(ar, 6.0)),
        "fibre_amplitude": float(min(fibre, 0.6)),
        "ruffle_amplitude": float(min(ruffle, 0.15)),
        "orientation_rad": float(rng.uniform(0, np.pi)),
        "nucleus_radius_um": float(c.nucleus_radius_um * np.exp(0.15 * rng.standard_normal())),
        "dome_exponent": float(rng.uniform(*c.dome_exponent_range)),
    }


def render_cell(latents: dict[str, float], pixel_size_um: float, couplings: MorphologyCouplings, rng: np.random.Generator) -> tuple[np.ndarray, np.ndarray, tuple[float, float]]:
    """Render one cell's height map in a local box.

    Returns
    -------
    height_um : (h, w) float64
        Height (µm), zero outside the cell; its integral × pixel area equals the volume.
    mask : (h, w) bool
        Cell footprint (height > 0).
    center_px : (cy, cx)
        Sub-pixel position of the cell centre in the box.
    """
    A = latents["spread_area_um2"]
    ar = latents["aspect_ratio_latent"]
    theta0 = latents["orientation_rad"]
    a = np.sqrt(A * ar / np.pi)  # semi-major (µm)
    b = np.sqrt(A / (np.pi * ar))
    ruffle = latents["ruffle_amplitude"]
    # outline harmonics
    orders = np.arange(3, 17)
    amps = rng.standard_normal(orders.size) / np.sqrt(orders)
    amps *= ruffle * np.sqrt(2) / max(np.sqrt(np.sum(amps**2)), 1e-12)
    phases = rng.uniform(0, 2 * np.pi, orders.size)
    r_max_um = a * (1 + 4 * ruffle) + 2
    half = int(np.ceil(r_max_um / pixel_size_um)) + 2
    size = 2 * half + 1
    sub = rng.uniform(-0.5, 0.5, size=2)
    cy, cx = half + sub[0], half + sub[1]
    yy, xx = np.mgrid[0:size, 0:size].astype(np.float64)
    dy = (yy - cy) * pixel_size_um
    dx = (xx - cx) * pixel_size_um
    r = np.hypot(dy, dx)
    phi = np.arctan2(dy, dx)
    tp = phi - theta0
    r_ell = a * b / np.sqrt((b * np.cos(tp)) ** 2 + (a * np.sin(tp)) ** 2)
    wobble = np.tensordot(amps, np.cos(orders[:, None, None] * phi[None] + phases[:, None, None]), axes=1)
    r_edge = r_ell * np.clip(1 + wobble, 0.5, 1.6)
    rho = r / r_edge
    mask = rho < 1.0
    q = latents["dome_exponent"]
    dome = np.where(mask, np.clip(1 - rho**2, 0, None) ** q, 0.0)
    # nucleus: off-centre ellipse along the long axis
    rn = latents["nucleus_radius_um"]
    off = rng.uniform(-0.25, 0.25) * a
    ny_c = np.sin(theta0) * off
    nx_c = np.cos(theta0) * off
    dn = np.hypot((dy - ny_c), (dx - nx_c)) / rn
    nucleus = np.where(dn < 1, np.sqrt(np.clip(1 - dn**2, 0, None)), 0.0) * couplings.nucleus_height_fraction
    height = (dome + nucleus * mask) * mask
    # stress fibres: noise filtered into long thin streaks along the long axis
    fibre = latents["fibre_amplitude"]
    if fibre > 0 and mask.any():
        noise = rng.standard_normal((size, size))
        sig_long = 6.0 / pixel_size_um
        sig_thin = 0.7 / pixel_size_um
        streaks = ndi.gaussian_filter(noise, sigma=(sig_thin, sig_long))  # along x, then rotate
        streaks = ndi.rotate(streaks, -np.degrees(theta0), reshape=False, order=1, mode="reflect")
        s = streaks[mask]
        streaks = (streaks - s.mean()) / max(s.std(), 1e-12)
        height = height * np.clip(1 + fibre * streaks, 0.2, None)
    total = height.sum() * pixel_size_um**2
    if total > 0:
        height *= latents["volume_um3"] / total
    return height, mask, (cy, cx)


def _debris(shape: tuple[int, int], n: int, pixel_size_um: float, occupied: np.ndarray, rng: np.random.Generator) -> tuple[np.ndarray, np.ndarray]:
    """Small irregular particles in the background: (height_um, absorbing thickness_um)."""
    height = np.zeros(shape)
    absorb = np.zeros(shape)
    free = ~ndi.binary_dilation(occupied, iterations=3)
    for _ in range(n):
        rad_um = rng.uniform(0.6, 2.5)
        half = int(np.ceil(2 * rad_um / pixel_size_um)) + 2
        for _try in range(20):
            y = int(rng.integers(half, shape[0] - half))
            x = int(rng.integers(half, shape[1] - half))
            if free[y - half : y + half + 1, x - half : x + half + 1].all():
                break
        else:
            continue
        yy, xx = np.mgrid[-half : half + 1, -half : half + 1] * pixel_size_um
        ecc = rng.uniform(0.5, 1.0)
        d = np.hypot(yy, xx * ecc) / rad_um
        blob = np.clip(1 - d**2, 0, None) * rng.uniform(0.5, 2.0)
        height[y - half : y + half + 1, x - half : x + half + 1] += blob
        absorb[y - half : y + half + 1, x - half : x + half + 1] += blob * rng.uniform(0.5, 3.0)
    return height, absorb


def simulate_field(config: AdherentConfig, seed: int | np.random.SeedSequence, *, population: str | None = None, image_id: str = "img_0000", population_spec: PopulationSpec | None = None) -> SimulatedField:
    """Simulate one field of view.

    Parameters
    ----------
    config
        Data-set configuration (optics, camera, couplings, ...).
    seed
        Seed or SeedSequence; the same seed gives the same field.
    population
        Population of every cell in this image; ``None`` draws one per cell.
    image_id
        Identifier written into the truth table.
    population_spec
        Draw every cell's E from this distribution, labelled ``population`` (used for
        one replicate of a condition, whose median carries the replicate effect).
    """
    rng = np.random.default_rng(seed)
    px = config.optics.pixel_size_um
    shape = tuple(config.image_shape_px)
    labels = np.zeros(shape, dtype=np.int32)
    height = np.zeros(shape, dtype=np.float64)
    E, pops = sample_stiffness(config, config.cells_per_image, rng, population, population_spec)
    rows: list[dict] = []
    centers: list[tuple[float, float, float]] = []  # (y, x, radius px) of placed cells
    next_id = 1
    for i in range(config.cells_per_image):
        lat = _draw_latents(float(E[i]), config.couplings, rng)
        h_loc, m_loc, (cy, cx) = render_cell(lat, px, config.couplings, rng)
        hh, ww = m_loc.shape
        rad_px = 0.5 * np.sqrt(m_loc.sum() / np.pi) * 2
        want_touch = centers and rng.random() < config.touching_fraction
        placed = None
        for attempt in range(60):
            if want_touch and attempt < 30:
                ny, nx, nr = centers[int(rng.integers(len(centers)))]
                ang = rng.uniform(0, 2 * np.pi)
                dist = 0.3 * (nr + rad_px)
                while True:
                    y0 = ny + dist * np.sin(ang)
                    x0 = nx + dist * np.cos(ang)
                    top, left = int(round(y0 - cy)), int(round(x0 - cx))
                    if _fits(labels, m_loc, top, left) or dist > 3 * (nr + rad_px):
                        break
                    dist += 1.0
            else:
                y0 = rng.uniform(0, shape[0])
                x0 = rng.uniform(0, shape[1])
                top, left = int(round(y0 - cy)), int(round(x0 - cx))
            if _fits(labels, m_loc, top, left) and _visible_fraction(shape, m_loc, top, left) > 0.35:
                placed = (top, left)
                break
        if placed is None:
            continue
        top, left = placed
        ys, xs, ly, lx = _overlap_slices(shape, (hh, ww), top, left)
        region = m_loc[ly, lx]
        labels[ys, xs][region] = next_id
        height[ys, xs] += np.where(region, h_loc[ly, lx], 0.0)
        centers.append((top + cy, left + cx, rad_px))
        touches_edge = top < 0 or left < 0 or top + hh > shape[0] or left + ww > shape[1]
        visible = region.sum() / max(m_loc.sum(), 1)
        row = {"image_id": image_id, "cell_id": next_id, "frame": 0, "label": pops[i]}
        row.update(lat)
        row["center_y_px"] = float(top + cy)
        row["center_x_px"] = float(left + cx)
        row["visible_fraction"] = float(visible)
        row["edge_touching_truth"] = bool(touches_edge and visible < 0.999)
        rows.append(row)
        next_id += 1
    # debris and image formation
    d_height, d_abs = _debris(shape, int(rng.poisson(config.debris_per_image)), px, labels > 0, rng)
    defocus = float(config.defocus_um + config.defocus_jitter_um * rng.standard_normal())
    intensity = render_intensity(height + d_height, config.optics, config.modality, defocus, d_abs)
    intensity *= illumination_field(shape, config.illumination_variation, rng)
    image = apply_camera(intensity, config.camera, rng)
    cells = pd.DataFrame(rows)
    if len(cells):
        # centroid of the visible footprint in the label image
        ids = cells["cell_id"].to_numpy()
        com = np.array(ndi.center_of_mass(np.ones(shape), labels, ids)).reshape(-1, 2)
        cells["centroid_y_px"] = com[:, 0]
        cells["centroid_x_px"] = com[:, 1]
        cells["centroid_y_um"] = com[:, 0] * px
        cells["centroid_x_um"] = com[:, 1] * px
        cells["area_px_truth"] = ndi.sum_labels(np.ones(shape), labels, ids).astype(int)
    cells["defocus_um"] = defocus
    cells["modality"] = config.modality
    cells["pixel_size_um"] = px
    return SimulatedField(image=image, labels=labels, height_um=height, cells=cells, defocus_um=defocus)


def _overlap_slices(shape: tuple[int, int], box: tuple[int, int], top: int, left: int):
    hh, ww = box
    y0, x0 = max(top, 0), max(left, 0)
    y1, x1 = min(top + hh, shape[0]), min(left + ww, shape[1])
    return (slice(y0, y1), slice(x0, x1), slice(y0 - top, y1 - top), slice(x0 - left, x1 - left))


def _fits(labels: np.ndarray, mask: np.ndarray, top: int, left: int) -> bool:
    ys, xs, ly, lx = _overlap_slices(labels.shape, mask.shape, top, left)
    if ys.stop <= ys.start or xs.stop <= xs.start:
        return False
    return not np.any(labels[ys, xs][mask[ly, lx]])


def _visible_fraction(shape: tuple[int, int], mask: np.ndarray, top: int, left: int) -> float:
    ys, xs, ly, lx = _overlap_slices(shape, mask.shape, top, left)
    if ys.stop <= ys.start or xs.stop <= xs.start:
        return 0.0
    return float(mask[ly, lx].sum() / max(mask.sum(), 1))


def afm_measurements(cells: pd.DataFrame, config: AdherentConfig, rng: np.random.Generator) -> pd.DataFrame:
    """Simulated AFM: a fraction of whole cells, measured over the nucleus with error.

    The measured modulus is ``E · exp(σ·z)`` with σ = sqrt(ln(1 + CV²)) (median-unbiased
    log-normal error of coefficient of variation ``afm_error_cv``), as repeated AFM
    indentations of one cell scatter. Positions are in µm in the image frame.
    """
    cols = ["image_id", "position_y_um", "position_x_um", "measured_stiffness_pa", "truth_cell_id"]
    if cells.empty or config.afm_fraction == 0:
        return pd.DataFrame({c: pd.Series(dtype=t) for c, t in zip(cols, ["str", "f8", "f8", "f8", "i8"])})
    whole = cells[~cells["edge_touching_truth"]]
    n = int(round(config.afm_fraction * len(whole)))
    pick = np.sort(rng.choice(len(whole), size=n, replace=False)) if n else np.array([], dtype=int)
    sel = whole.iloc[pick]
    sigma = np.sqrt(np.log1p(config.afm_error_cv**2))
    measured = sel["stiffness_pa"].to_numpy() * np.exp(sigma * rng.standard_normal(len(sel)))
    jitter = rng.normal(0, 0.5, size=(len(sel), 2))
    return pd.DataFrame({
        "image_id": sel["image_id"].to_numpy(),
        "position_y_um": sel["centroid_y_um"].to_numpy() + jitter[:, 0],
        "position_x_um": sel["centroid_x_um"].to_numpy() + jitter[:, 1],
        "measured_stiffness_pa": measured,
        "truth_cell_id": sel["cell_id"].to_numpy().astype(np.int64),
    })


def _config_digest(config: AdherentConfig, seed: int) -> str:
    dumped = config.model_dump(mode="json")
    if dumped.get("conditions") is None:  # folders simulated before conditions existed keep their digest
        dumped.pop("conditions", None)
    payload = json.dumps({"config": dumped, "seed": seed}, sort_keys=True)
    return hashlib.sha256(payload.encode()).hexdigest()


def simulate_adherent(
    config: AdherentConfig,
    out_dir: str | os.PathLike[str],
    *,
    seed: int = 0,
    overwrite: bool = False,
    progress: Callable[[int, int], None] | None = None,
) -> Path:
    """Simulate a data set and write it to ``out_dir``.

    Writes ``images/<id>.tif`` (uint16, pixel size in the metadata),
    ``labels/<id>.tif``, ``cells.parquet`` (truth), ``afm.parquet`` (simulated AFM
    measurements) and ``simulation.json`` (every parameter, the seed, the package
    version). Same config + seed → byte-identical files.

    With ``config.conditions`` the cell table also has ``condition``, ``replicate``,
    ``condition_median_pa`` and ``replicate_median_pa`` (``label`` = condition), and
    ``replicates.parquet`` holds each replicate's true median (and the functional
    readout, also written as ``functional.parquet`` keyed by condition and replicate).

    Raises
    ------
    OutputFolderError
        ``out_dir`` holds a simulation with other parameters (pass ``overwrite=True``
        or choose another folder).
    """
    out = Path(out_dir)
    meta_path = out / "simulation.json"
    digest = _config_digest(config, seed)
    if meta_path.exists() and not overwrite:
        try:
            old = json.loads(meta_path.read_text())
        except json.JSONDecodeError:
            old = {}
        if old.get("digest") != digest:
            raise OutputFolderError(
                f"{out}: folder holds a different simulation (other parameters or seed); "
                "choose a new --out folder or pass --overwrite"
            )
    elif out.exists() and any(out.iterdir()) and not meta_path.exists() and not overwrite:
        raise OutputFolderError(
            f"{out}: folder is not empty and holds no simulation.json; choose an empty "
            "--out folder or pass --overwrite"
        )
    out.mkdir(parents=True, exist_ok=True)
    root = np.random.SeedSequence(seed)
    children = root.spawn(config.n_images + 2)  # images, AFM, replicate effects
    design = config.conditions
    reps = None
    if design is not None:
        rep_rng = np.random.default_rng(children[config.n_images + 1])
        reps = replicate_medians(design, rep_rng)
        if design.functional is not None:
            reps[design.functional.name] = functional_readout(reps, design.functional, rep_rng)[design.functional.name].to_numpy()
    tables = []
    for i in range(config.n_images):
        image_id = f"img_{i:04d}"
        population, spec, unit = None, None, None
        if reps is not None:
            unit = reps.iloc[i % len(reps)]
            population = str(unit["condition"])
            spec = PopulationSpec(median_pa=float(unit["replicate_median_pa"]), sigma_ln=design.cell_sigma_ln)
        elif config.stiffness_mode == "populations" and config.population_per_image:
            population = config.population_names[i % len(config.population_names)]
        fld = simulate_field(config, children[i], population=population, image_id=image_id, population_spec=spec)
        if unit is not None:
            for col in ("condition", "replicate", "condition_median_pa", "replicate_median_pa"):
                fld.cells[col] = unit[col]
        write_image(out / "images" / f"{image_id}.tif", fld.image, pixel_size_um=config.optics.pixel_size_um)
        write_label_image(out / "labels" / f"{image_id}.tif", fld.labels, pixel_size_um=config.optics.pixel_size_um)
        tables.append(fld.cells)
        if progress is not None:
            progress(i + 1, config.n_images)
    cells = pd.concat(tables, ignore_index=True) if tables else pd.DataFrame()
    write_table(cells, out / "cells.parquet")
    afm = afm_measurements(cells, config, np.random.default_rng(children[config.n_images]))
    write_table(afm, out / "afm.parquet")
    if reps is not None:
        write_table(reps, out / "replicates.parquet")
        if design.functional is not None:
            write_table(reps[["condition", "replicate", design.functional.name]], out / "functional.parquet")
    write_json(
        {
            "kind": "mechanoscope.simulate.adherent",
            "mechanoscope_version": __version__,
            "seed": seed,
            "digest": digest,
            "config": config.model_dump(mode="json"),
            "n_cells": int(len(cells)),
            "n_afm": int(len(afm)),
        },
        meta_path,
    )
    return out
