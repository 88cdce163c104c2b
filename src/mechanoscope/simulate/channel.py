"""Simulated real-time deformability cytometry (RT-DC): cells deformed in a channel, known E.

Generative model (one event = one cell)
---------------------------------------
1. **Truth**: each cell has a Young's modulus ``E`` (Pa; log-uniform in a range, or from
   a :class:`~mechanoscope.simulate.conditions.ConditionsDesign` with conditions and
   replicates) and a size (projected area ``A = π (d/2)²`` from a normal diameter).
2. **Deformation**: the steady-state deformation ``D`` that dclab's finite-element
   look-up table (``LE-2D-FEM-19`` by default) assigns to ``(A, E)`` for the channel
   width, flow rate, medium, temperature and viscosity model: the table is *inverted
   numerically* with dclab's own ``get_emodulus`` (a dense scan of D at fixed A, linear
   interpolation at the crossing) — the FEM is never re-implemented
   here. ``D`` is the physical (pixelation-free) deformation: ``px_um=0`` in the scan.
   Cells whose ``(A, E)`` the table does not cover are left out and counted.
3. **Contour**: an ellipse ``x = k cos θ``, ``y = sin θ / k · (1 + s (k − 1) cos θ)``
   elongated along the flow (x), with a bullet-like fore/aft asymmetry ``s`` that grows
   with the elongation; ``k`` is solved so that
   ``1 − 2√(π A_cvx)/P_cvx`` of its convex hull equals ``D``, then it is scaled to the
   convex-hull area ``A`` (deformation and area as RT-DC defines them).
4. **Image**: the cell is a thin phase/absorption object of thickness
   ``h = 2 R √(1 − ρ²)`` (``R = √(A/π)``, ``ρ`` the radius relative to the contour in
   each direction) with a weak random texture, inside a channel whose walls are
   absorbing bands at ±width/2; bright-field rendering with
   :func:`mechanoscope.simulate.optics.render_brightfield`, the camera model of
   :func:`~mechanoscope.simulate.optics.apply_camera` (shot and read noise) at the
   instrument's pixel size, 8-bit like RT-DC cameras. The background image (the channel
   without the cell, no noise) is stored as ``image_bg``.
5. **Mask and features, as the instrument does**: the mask is segmented from the event
   image (darker than ``image_bg`` by ``threshold_gray`` gray levels, holes filled, largest object;
   ``mask="true"`` stores the rasterised true contour instead). From the mask, dclab's
   ``get_contour`` and the convex hull give ``area_cvx`` (px), ``area_um``, ``circ``
   and ``deform`` — the pixelated quantities whose bias dclab's pixelation correction
   removes again on import.

Files: one ``.rtdc`` (HDF5 written by ``dclab.RTDCWriter``) per sample — ``channel.rtdc``
or ``<condition>_r<replicate>.rtdc`` with conditions — plus ``truth.parquet`` (one row
per event: ``file``, ``rtdc_event``, ``stiffness_pa``, ``area_true_um2``,
``deform_true``, ``diameter_um``, ``condition``, ``replicate``) and ``simulation.json``.
``mechanoscope rtdc import FILE --labels truth.parquet`` attaches the truth to the cells.
"""

from __future__ import annotations

import os
import warnings
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Literal, Optional

import numpy as np
import pandas as pd
from pydantic import Field, model_validator
from scipy import ndimage as ndi

from mechanoscope.config import StrictConfig
from mechanoscope.errors import MechanoscopeError
from mechanoscope.simulate.conditions import ConditionsDesign, replicate_medians
from mechanoscope.simulate.optics import CameraConfig, OpticsConfig, apply_camera, render_brightfield

__all__ = [
    "ChannelSimConfig",
    "ChannelSimulation",
    "contour_deformation",
    "contour_with_deformation",
    "lut_deformation",
    "measure_mask",
    "render_event",
    "segment_event",
    "simulate_channel",
]


def _default_optics() -> OpticsConfig:
    # an RT-DC set-up: 40x-like sampling (0.34 µm), cells in focus, noticeably absorbing/scattering
    return OpticsConfig(pixel_size_um=0.34, objective_na=0.5, condenser_na=0.45, delta_n=0.02, absorption_per_um=0.02)


def _default_camera() -> CameraConfig:
    return CameraConfig(photons_per_pixel=4000.0, gain_adu_per_electron=0.03, read_noise_e=10.0, offset_adu=0.0, bit_depth=8)


class ChannelSimConfig(StrictConfig):
    """Settings of a simulated RT-DC measurement (units in every name)."""

    n_events: int = Field(200, ge=1, description="Events (cells) without conditions; with conditions see events_per_sample.")
    youngs_modulus_range_pa: tuple[float, float] = Field((600.0, 3000.0), description="E drawn log-uniformly in this range (Pa), without conditions.")
    conditions: Optional[ConditionsDesign] = Field(None, description="Named conditions with replicates (one .rtdc file per replicate sample).")
    events_per_sample: int = Field(100, ge=1, description="Events per (condition, replicate) sample, with conditions.")
    cell_diameter_um: float = Field(11.0, gt=2, le=40, description="Mean diameter of the cells' projected area (µm).")
    cell_diameter_cv: float = Field(0.08, ge=0, le=0.5, description="Coefficient of variation of the diameter.")
    channel_width_um: float = Field(20.0, gt=0, description="Channel width (µm), recorded as setup:channel width.")
    flow_rate_ul_s: float = Field(0.04, gt=0, description="Total flow rate (µL/s).")
    medium: str = Field("CellCarrierB", description="Medium dclab knows (CellCarrierB = 0.59% MC-PBS, CellCarrier, 0.83% MC-PBS, water).")
    temperature_c: float = Field(23.0, ge=5, le=45, description="Measurement temperature (°C).")
    viscosity_model: Literal["buyukurganci-2022", "herold-2017"] = Field("buyukurganci-2022", description="dclab viscosity model used for the truth (import with the same one).")
    lut: Literal["LE-2D-FEM-19", "HE-2D-FEM-22", "HE-3D-FEM-22"] = Field("LE-2D-FEM-19", description="dclab look-up table inverted for the deformation.")
    bullet_asymmetry: float = Field(0.25, ge=0, le=0.5, description="Fore/aft asymmetry s of the contour (0: ellipse-like).")
    roi_px: tuple[int, int] = Field((80, 250), description="Event image size (rows, columns) in pixels.")
    defocus_um: float = Field(0.0, ge=-10, le=10, description="Defocus of the bright-field image (µm).")
    texture_amplitude: float = Field(0.08, ge=0, le=0.5, description="Relative amplitude of the cells' internal thickness texture.")
    wall_thickness_um: float = Field(1.0, ge=0, description="Width of each dark channel-wall band (µm).")
    optics: OpticsConfig = Field(default_factory=_default_optics, description="Optics; its pixel_size_um is the instrument's pixel size.")
    camera: CameraConfig = Field(default_factory=_default_camera, description="Camera (8-bit like RT-DC cameras).")
    mask: Literal["segmented", "true"] = Field("segmented", description="segmented: threshold the event image against the background like the instrument; true: the rasterised true contour.")
    threshold_gray: float = Field(6.0, gt=0, description="Segmentation threshold: a mask pixel is darker than the background by more than this (gray levels).")
    frame_rate_hz: float = Field(2000.0, gt=0, description="Camera frame rate (Hz), for metadata and the time feature.")

    @model_validator(mode="after")
    def _check(self) -> "ChannelSimConfig":
        lo, hi = self.youngs_modulus_range_pa
        if not 0 < lo <= hi:
            raise ValueError(f"youngs_modulus_range_pa must be 0 < low ≤ high, got {self.youngs_modulus_range_pa}")
        if min(self.roi_px) < 16:
            raise ValueError(f"roi_px must be at least 16 × 16 pixels, got {self.roi_px}")
        return self


def _lut_call(area_um2: np.ndarray, deform: np.ndarray, cfg: ChannelSimConfig) -> np.ndarray:
    from dclab.features.emodulus import get_emodulus

    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # outside-the-table warnings: NaN is the answer here
        kpa = get_emodulus(deform=np.asarray(deform, float), area_um=np.asarray(area_um2, float), medium=cfg.medium,
                           channel_width=cfg.channel_width_um, flow_rate=cfg.flow_rate_ul_s, px_um=0.0,
                           temperature=cfg.temperature_c, lut_data=cfg.lut, visc_model=cfg.viscosity_model)
    return np.asarray(kpa, float) * 1e3


def lut_deformation(area_um2: np.ndarray, youngs_modulus_pa: np.ndarray, config: ChannelSimConfig | None = None) -> np.ndarray:
    """Physical deformation that dclab's look-up table assigns to each (area, E); NaN outside it.

    Inverts ``dclab.features.emodulus.get_emodulus`` (without pixelation correction) at
    fixed area: E falls with D, so a dense log-spaced scan of D (480 points over the
    table's range) brackets the first crossing, located by linear interpolation (dclab
    interpolates the table linearly too; round-trip error of E well below 1 %).

    Parameters
    ----------
    area_um2
        (N,) projected (convex-hull) areas in µm².
    youngs_modulus_pa
        (N,) Young's moduli in Pa.
    config
        Channel width, flow rate, medium, temperature, viscosity model and table.
    """
    from dclab.features.emodulus.load import load_lut

    cfg = config or ChannelSimConfig()
    area = np.atleast_1d(np.asarray(area_um2, float))
    target = np.atleast_1d(np.asarray(youngs_modulus_pa, float))
    if area.shape != target.shape:
        raise MechanoscopeError(f"area_um2 {area.shape} and youngs_modulus_pa {target.shape} must have one value per cell")
    if not len(area):
        return np.zeros(0)
    lut, _ = load_lut(cfg.lut)
    d_min, d_max = float(lut[:, 1].min()), float(lut[:, 1].max())
    # one call (dclab triangulates the table once per call): a dense log-spaced scan of D per cell
    grid = np.geomspace(max(d_min, 1e-4), d_max, 480)
    e = _lut_call(np.repeat(area, grid.size), np.tile(grid, len(area)), cfg).reshape(len(area), grid.size)
    out = np.full(len(area), np.nan)
    for i in range(len(area)):
        fin = np.isfinite(e[i])
        d, ei = grid[fin], e[i][fin]
        below = np.flatnonzero(ei <= target[i])
        if d.size < 2 or not below.size or below[0] == 0:
            continue  # E above the table's stiffest (or below its softest) cell of this area
        j = below[0]
        w = (ei[j - 1] - target[i]) / (ei[j - 1] - ei[j])
        out[i] = d[j - 1] + w * (d[j] - d[j - 1])
    return out


# ----------------------------------------------------------------------------- contours
def _hull_area_perimeter(xy: np.ndarray) -> tuple[float, float]:
    from scipy.spatial import ConvexHull

    hull = ConvexHull(xy)
    return float(hull.volume), float(hull.area)  # in 2-D: volume = area, area = perimeter


def contour_deformation(xy: np.ndarray) -> tuple[float, float]:
    """Deformation ``1 − 2√(π A)/P`` and area ``A`` of the convex hull of a contour (N, 2)."""
    a, p = _hull_area_perimeter(np.asarray(xy, float))
    return 1.0 - 2.0 * np.sqrt(np.pi * a) / p, a


def _unit_contour(k: float, s: float, theta: np.ndarray) -> np.ndarray:
    # an ellipse of aspect ratio k² (area π), its half-height scaled by 1 + s(k − 1)cos θ: wider at the front (bullet)
    return np.column_stack([k * np.cos(theta), np.sin(theta) / k * (1 + s * (k - 1) * np.cos(theta))])


def contour_with_deformation(area_um2: float, deform: float, asymmetry: float = 0.25, n_points: int = 256) -> np.ndarray:
    """A contour (N, 2) in µm, centred on 0, elongated along x, with the given hull deformation and area.

    Raises
    ------
    MechanoscopeError
        When the shape family cannot reach ``deform`` (above about 0.3).
    """
    from scipy.optimize import brentq

    theta = np.linspace(0, 2 * np.pi, n_points, endpoint=False)
    if deform <= 0:
        xy = _unit_contour(1.0, asymmetry, theta)
    else:
        f = lambda k: contour_deformation(_unit_contour(k, asymmetry, theta))[0] - deform  # noqa: E731
        k_max = 2.0  # aspect ratio 4
        if f(k_max) < 0:
            raise MechanoscopeError(f"deformation {deform:.3f} is beyond the simulated contour family (aspect ratio ≤ 4); lower it")
        xy = _unit_contour(brentq(f, 1.0, k_max, xtol=1e-12), asymmetry, theta)
    _, a = contour_deformation(xy)
    return xy * np.sqrt(area_um2 / a)


# ----------------------------------------------------------------------------- rendering
def _relative_radius(xy_um: np.ndarray, yy: np.ndarray, xx: np.ndarray) -> np.ndarray:
    """ρ = distance / contour radius in the same direction (the contour is star-shaped about 0)."""
    th_c = np.arctan2(xy_um[:, 1], xy_um[:, 0])
    r_c = np.hypot(xy_um[:, 0], xy_um[:, 1])
    order = np.argsort(th_c)
    th_c, r_c = th_c[order], r_c[order]
    th = np.arctan2(yy, xx)
    r_at = np.interp(th, np.concatenate([th_c - 2 * np.pi, th_c, th_c + 2 * np.pi]), np.tile(r_c, 3))
    return np.hypot(yy, xx) / r_at


def _background(cfg: ChannelSimConfig) -> tuple[np.ndarray, np.ndarray]:
    """Height (zeros) and wall absorption map of the empty channel, (Y, X) at the pixel size."""
    ny, nx = cfg.roi_px
    px = cfg.optics.pixel_size_um
    y_um = (np.arange(ny) - (ny - 1) / 2) * px
    half = cfg.channel_width_um / 2
    wall = ((np.abs(y_um) >= half) & (np.abs(y_um) < half + cfg.wall_thickness_um)).astype(float) * 8.0
    wall += (np.abs(y_um) >= half + cfg.wall_thickness_um) * 1.0  # PDMS beyond the wall: slightly darker
    return np.zeros((ny, nx)), np.repeat(wall[:, None], nx, axis=1)


def render_event(contour_um: np.ndarray, center_yx_um: tuple[float, float], cfg: ChannelSimConfig,
                 rng: np.random.Generator) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Render one event: 8-bit image, 8-bit background image, true mask (Y, X).

    ``center_yx_um`` is the contour's centre relative to the image's top-left pixel
    centre (µm). Thickness is supersampled 3× per pixel before the optics.
    """
    ny, nx = cfg.roi_px
    px = cfg.optics.pixel_size_um
    ss = 3
    off = (np.arange(ss) - (ss - 1) / 2) / ss
    yy = (np.arange(ny)[:, None] + off[None, :]).ravel()[:, None] * px - center_yx_um[0]
    xx = (np.arange(nx)[:, None] + off[None, :]).ravel()[None, :] * px - center_yx_um[1]
    rho = _relative_radius(contour_um, yy, xx)
    r_eq = float(np.sqrt(_hull_area_perimeter(contour_um)[0] / np.pi))
    h_ss = 2 * r_eq * np.sqrt(np.clip(1 - rho**2, 0, None))
    height = h_ss.reshape(ny, ss, nx, ss).mean(axis=(1, 3))
    if cfg.texture_amplitude > 0:
        tex = ndi.gaussian_filter(rng.standard_normal((ny, nx)), 1.2 / px * 0.5)
        tex /= max(float(tex.std()), 1e-12)
        height = height * (1 + cfg.texture_amplitude * tex)
    _, wall = _background(cfg)
    bg_int = render_brightfield(np.zeros((ny, nx)), cfg.optics, cfg.defocus_um, wall)
    ev_int = render_brightfield(np.clip(height, 0, None), cfg.optics, cfg.defocus_um, wall)
    image = apply_camera(ev_int, cfg.camera, rng)
    gain = cfg.camera.photons_per_pixel * cfg.camera.gain_adu_per_electron
    background = np.clip(np.rint(cfg.camera.offset_adu + gain * bg_int), 0, 255)
    cy, cx = np.arange(ny)[:, None] * px - center_yx_um[0], np.arange(nx)[None, :] * px - center_yx_um[1]
    mask = _relative_radius(contour_um, cy, cx) < 1
    return np.clip(image, 0, 255).astype(np.uint8), background.astype(np.uint8), mask


def segment_event(image: np.ndarray, background: np.ndarray, threshold_gray: float = 6.0) -> np.ndarray:
    """Instrument-like segmentation: darker than the background by ``threshold_gray``, holes filled, largest object.

    The rule of dcnum's default thresholding segmenter (``image − background < −6``);
    bright diffraction fringes outside the cell are therefore not part of the mask.
    """
    diff = (image.astype(float) - background.astype(float)) < -threshold_gray
    diff = ndi.binary_opening(diff, structure=np.ones((2, 2)))
    lab, n = ndi.label(diff)
    if n == 0:
        return np.zeros(image.shape, bool)
    sizes = np.bincount(lab.ravel())[1:]
    return ndi.binary_fill_holes(lab == 1 + int(np.argmax(sizes)))


def measure_mask(mask: np.ndarray, pixel_size_um: float) -> dict[str, float]:
    """RT-DC features of a mask as the instrument computes them (dclab's contour, its convex hull).

    Returns ``area_cvx`` and ``area_msd`` (px), ``area_um``, ``circ``, ``deform``, ``pos_x``
    and ``pos_y`` (µm, contour centroid), ``size_x`` and ``size_y`` (µm); NaN for an empty mask.
    """
    from dclab.features.contour import get_contour

    nan = {k: float("nan") for k in ("area_cvx", "area_msd", "area_um", "circ", "deform", "pos_x", "pos_y", "size_x", "size_y")}
    if mask.sum() < 3:
        return nan
    try:
        cont = np.asarray(get_contour(mask.astype(bool)), float)  # (N, 2): x, y in pixels
        a_cvx, p_cvx = _hull_area_perimeter(cont)
    except Exception:  # a degenerate (collinear) contour has no hull
        return nan
    x, y = cont[:, 0], cont[:, 1]
    a_msd = 0.5 * abs(float(np.dot(x, np.roll(y, 1)) - np.dot(y, np.roll(x, 1))))
    circ = 2 * np.sqrt(np.pi * a_cvx) / p_cvx
    return {"area_cvx": a_cvx, "area_msd": a_msd, "area_um": a_cvx * pixel_size_um**2, "circ": circ, "deform": 1 - circ,
            "pos_x": float(x.mean()) * pixel_size_um, "pos_y": float(y.mean()) * pixel_size_um,
            "size_x": float(np.ptp(x) + 1) * pixel_size_um, "size_y": float(np.ptp(y) + 1) * pixel_size_um}


# ----------------------------------------------------------------------------- the experiment
@dataclass
class ChannelSimulation:
    """What :func:`simulate_channel` wrote: one ``.rtdc`` per sample and the truth table."""

    out_dir: Path
    files: list[Path]
    truth: pd.DataFrame
    n_outside_lut: int
    config: ChannelSimConfig


def _draw_cells(cfg: ChannelSimConfig, rng: np.random.Generator) -> pd.DataFrame:
    if cfg.conditions is None:
        lo, hi = np.log(cfg.youngs_modulus_range_pa)
        n = cfg.n_events
        e = np.exp(rng.uniform(lo, hi, n))
        table = pd.DataFrame({"sample": "channel", "condition": pd.Series([None] * n, dtype=object),
                              "replicate": np.zeros(n, dtype=np.int64), "stiffness_pa": e})
    else:
        reps = replicate_medians(cfg.conditions, rng)
        n = cfg.events_per_sample
        idx = np.repeat(np.arange(len(reps)), n)
        e = reps["replicate_median_pa"].to_numpy()[idx] * np.exp(cfg.conditions.cell_sigma_ln * rng.standard_normal(idx.size))
        cond = reps["condition"].to_numpy()[idx]
        rep = reps["replicate"].to_numpy()[idx]
        table = pd.DataFrame({"sample": [f"{c}_r{r}" for c, r in zip(cond, rep)], "condition": cond, "replicate": rep,
                              "stiffness_pa": e, "replicate_median_pa": reps["replicate_median_pa"].to_numpy()[idx]})
    d = cfg.cell_diameter_um * np.clip(1 + cfg.cell_diameter_cv * rng.standard_normal(len(table)), 0.3, None)
    return table.assign(diameter_um=d, area_true_um2=np.pi * (d / 2) ** 2)


def _metadata(cfg: ChannelSimConfig, sample: str) -> dict[str, dict[str, Any]]:
    import datetime as _dt

    now = _dt.datetime(2024, 1, 1, 12, 0, 0)  # fixed: same seed → identical metadata
    return {
        "experiment": {"sample": sample, "date": now.strftime("%Y-%m-%d"), "time": now.strftime("%H:%M:%S"), "run index": 1},
        "imaging": {"pixel size": cfg.optics.pixel_size_um, "frame rate": cfg.frame_rate_hz, "roi size x": cfg.roi_px[1],
                    "roi size y": cfg.roi_px[0]},
        "setup": {"channel width": cfg.channel_width_um, "chip region": "channel", "flow rate": cfg.flow_rate_ul_s,
                  "medium": cfg.medium, "temperature": cfg.temperature_c, "software version": "mechanoscope simulate channel"},
    }


def simulate_channel(
    out_dir: str | os.PathLike[str],
    config: ChannelSimConfig | dict[str, Any] | None = None,
    *,
    seed: int = 0,
    overwrite: bool = False,
    progress: Callable[[int, int], None] | None = None,
) -> ChannelSimulation:
    """Simulate an RT-DC experiment with known Young's moduli and write it as ``.rtdc`` files.

    See the module docstring for the model. Same config and seed → identical files.

    Raises
    ------
    MechanoscopeError
        ``out_dir`` already holds ``.rtdc`` files (pass ``overwrite``), or no cell lies
        inside the look-up table for these channel settings.
    """
    from mechanoscope import __version__
    from mechanoscope.io.atomic import write_json
    from mechanoscope.io.rtdc import write_rtdc
    from mechanoscope.io.tables import write_table

    cfg = config if isinstance(config, ChannelSimConfig) else ChannelSimConfig.build(**dict(config or {}))
    out = Path(out_dir)
    if out.is_dir() and any(out.glob("*.rtdc")) and not overwrite:
        raise MechanoscopeError(f"{out} already holds .rtdc files; choose another --out or pass --overwrite")
    out.mkdir(parents=True, exist_ok=True)
    if overwrite:
        for old in out.glob("*.rtdc"):
            old.unlink()
    rng = np.random.default_rng(seed)
    cells = _draw_cells(cfg, rng)
    cells["deform_true"] = lut_deformation(cells["area_true_um2"].to_numpy(), cells["stiffness_pa"].to_numpy(), cfg)
    inside = cells["deform_true"].notna().to_numpy()
    n_out = int((~inside).sum())
    cells = cells[inside].reset_index(drop=True)
    if cells.empty:
        raise MechanoscopeError(f"none of the simulated cells lies inside the look-up table {cfg.lut} for a {cfg.channel_width_um:g} µm channel at "
                                f"{cfg.flow_rate_ul_s:g} µL/s in {cfg.medium}: change the moduli, the cell size, the flow rate or the channel width")
    ny, nx = cfg.roi_px
    px = cfg.optics.pixel_size_um
    files: list[Path] = []
    rows: list[pd.DataFrame] = []
    done = 0
    for sample, sub in cells.groupby("sample", sort=False):
        feats: dict[str, list] = {k: [] for k in ("image", "image_bg", "mask", "area_cvx", "area_msd", "area_um", "circ", "deform",
                                                   "pos_x", "pos_y", "size_x", "size_y", "frame", "time")}
        keep = []
        for k, (_, cell) in enumerate(sub.iterrows()):
            contour = contour_with_deformation(cell.area_true_um2, cell.deform_true, cfg.bullet_asymmetry)
            margin = float(np.abs(contour[:, 0]).max()) + 2.0
            cx = rng.uniform(margin, nx * px - margin) if nx * px > 2 * margin else nx * px / 2
            cy = (ny - 1) * px / 2 + rng.normal(0.0, 0.5)
            image, bg, true_mask = render_event(contour, (cy, cx), cfg, rng)
            mask = true_mask if cfg.mask == "true" else segment_event(image, bg, cfg.threshold_gray)
            m = measure_mask(mask, px)
            done += 1
            if progress is not None:
                progress(done, len(cells))
            if not np.isfinite(m["deform"]):
                continue  # the instrument records no event it cannot segment
            frame = 1 + 7 * k
            for key, val in m.items():
                feats[key].append(val)
            feats["image"].append(image)
            feats["image_bg"].append(bg)
            feats["mask"].append(mask)
            feats["frame"].append(frame)
            feats["time"].append(frame / cfg.frame_rate_hz)
            keep.append({**cell.to_dict(), "rtdc_event": len(keep), "deform_measured": m["deform"], "area_measured_um2": m["area_um"],
                         "center_x_um": cx, "center_y_um": cy})
        if not keep:
            continue
        path = out / f"{sample}.rtdc"
        write_rtdc(path, {k: np.asarray(v) for k, v in feats.items()}, _metadata(cfg, str(sample)))
        files.append(path)
        rows.append(pd.DataFrame(keep).assign(file=path.name))
    truth = pd.concat(rows, ignore_index=True) if rows else pd.DataFrame()
    n_lost = int(len(cells) - len(truth))
    truth = truth.drop(columns=["sample"])
    if cfg.conditions is None:
        truth = truth.drop(columns=["condition", "replicate"])
    write_table(truth, out / "truth.parquet")
    write_json({"config": cfg.model_dump(mode="json"), "seed": seed, "files": [f.name for f in files], "n_events": int(len(truth)),
                "n_outside_lut": n_out, "n_not_segmented": n_lost, "mechanoscope": __version__,
                "dclab": __import__("dclab").__version__, "function": "mechanoscope.simulate.channel.simulate_channel"},
               out / "simulation.json")
    return ChannelSimulation(out, files, truth, n_out, cfg)

