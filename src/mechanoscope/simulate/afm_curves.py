"""Synthetic AFM force–distance curves with known Young's modulus and contact point.

Physics (quasi-static indentation of an elastic half space by a rigid tip on a
cantilever of spring constant ``k``): the cantilever base moves from above the
surface down to the setpoint force and back. At base height ``z`` the tip sits at
``t = z + F/k`` (deflection ``F/k``), the indentation is ``δ = max(0, c − t)`` for the
contact point ``c``, and the force is the contact law of the indenter:

- paraboloid (Hertz): ``F = 4/3 · E/(1 − ν²) · √R · δ^{3/2}``
- cone (Hertz/Sneddon, half-opening angle α): ``F = 2 tan α / π · E/(1 − ν²) · δ²``

written here independently of nanite, so that a fit with nanite checks both nanite's
use and the unit conversions. ``F`` and ``t`` are solved together per point (bisection
on ``δ``, exact to machine precision). The recorded force adds a baseline offset, a
linear baseline tilt along the base height (pN per µm, as drift or a wavy baseline
gives) and Gaussian force noise.

Curves are written with afmformats' own HDF5 export (``AFMForceDistance.export_data``
with ``fmt="hdf5"``), so every afmformats/nanite reader opens them; positions go into the
``position x``/``position y`` metadata (m). A truth table names each curve's file,
index, E, contact point, tilt, noise and position.
"""

from __future__ import annotations

import math
import os
from pathlib import Path
from typing import Any, Literal, Optional

import numpy as np
import pandas as pd
from pydantic import Field

from mechanoscope.config import StrictConfig
from mechanoscope.errors import MechanoscopeError

__all__ = ["AFMCurveSimConfig", "contact_force_n", "simulate_curve", "simulate_afm_curves"]


class AFMCurveSimConfig(StrictConfig):
    """Settings of simulated force curves (SI-derived units in every name)."""

    n_curves: int = Field(20, ge=1, description="Number of curves (ignored when a measurement table gives them).")
    curves_per_file: int = Field(10, ge=1, description="Curves per HDF5 file (a measurement table writes one file per image_id).")
    youngs_modulus_range_pa: tuple[float, float] = Field((300.0, 30000.0), description="E drawn log-uniformly in this range (Pa).")
    indenter: Literal["paraboloid", "cone"] = Field("paraboloid", description="Tip shape: paraboloid (fit with hertz_para) or cone (hertz_cone).")
    tip_radius_um: float = Field(10.0, gt=0, description="Paraboloid tip radius (µm).")
    half_angle_deg: float = Field(25.0, gt=0, lt=90, description="Cone half-opening angle (degrees).")
    poisson_ratio: float = Field(0.5, ge=0, le=0.5, description="Poisson ratio of the sample.")
    spring_constant_n_per_m: float = Field(0.05, gt=0, description="Cantilever spring constant (N/m).")
    sensitivity_m_per_v: float = Field(5e-8, gt=0, description="Deflection sensitivity (m/V), recorded as metadata.")
    setpoint_nn: float = Field(2.0, gt=0, description="Force at the turning point (nN).")
    approach_distance_um: float = Field(3.0, gt=0, description="Base travel above the contact point before touching (µm).")
    points_per_segment: int = Field(1000, ge=50, description="Data points in the approach and in the retract segment each.")
    contact_point_range_um: tuple[float, float] = Field((1.0, 4.0), description="Contact point (tip position, µm) drawn uniformly in this range.")
    baseline_offset_pn: float = Field(50.0, description="Largest force offset of the baseline (pN, drawn in ±).")
    baseline_tilt_pn_per_um: float = Field(0.0, ge=0, description="Largest baseline tilt (pN per µm of base height, drawn in ±).")
    noise_pn: float = Field(0.0, ge=0, description="Standard deviation of Gaussian force noise (pN).")
    field_um: tuple[float, float] = Field((200.0, 200.0), description="Stage area (y, x in µm) positions are drawn in when no table gives them.")
    speed_um_per_s: float = Field(2.0, gt=0, description="Piezo speed (µm/s), for the time column.")


def contact_force_n(indentation_m: np.ndarray, youngs_modulus_pa: float, *, indenter: str = "paraboloid",
                    tip_radius_m: float = 10e-6, half_angle_deg: float = 25.0, poisson_ratio: float = 0.5) -> np.ndarray:
    """Force (N) of a rigid indenter pressed ``indentation_m`` (m, ≥ 0) into an elastic half space."""
    d = np.clip(np.asarray(indentation_m, dtype=float), 0.0, None)
    e_eff = youngs_modulus_pa / (1.0 - poisson_ratio**2)
    if indenter == "paraboloid":
        return 4.0 / 3.0 * e_eff * math.sqrt(tip_radius_m) * d**1.5
    if indenter == "cone":
        return 2.0 * math.tan(math.radians(half_angle_deg)) / math.pi * e_eff * d**2
    raise MechanoscopeError(f"unknown indenter {indenter!r}; use paraboloid or cone")


def _indentation_at_setpoint(force_n: float, e_pa: float, cfg: AFMCurveSimConfig) -> float:
    lo, hi = 0.0, 1e-3
    for _ in range(200):
        mid = 0.5 * (lo + hi)
        if contact_force_n(np.array([mid]), e_pa, **_law(cfg))[0] < force_n:
            lo = mid
        else:
            hi = mid
    return 0.5 * (lo + hi)


def _law(cfg: AFMCurveSimConfig) -> dict[str, Any]:
    return {"indenter": cfg.indenter, "tip_radius_m": cfg.tip_radius_um * 1e-6,
            "half_angle_deg": cfg.half_angle_deg, "poisson_ratio": cfg.poisson_ratio}


def simulate_curve(youngs_modulus_pa: float, contact_point_m: float, cfg: AFMCurveSimConfig,
                   rng: np.random.Generator, *, offset_n: float = 0.0, tilt_n_per_m: float = 0.0) -> dict[str, np.ndarray]:
    """One approach + retract curve as afmformats columns (SI units).

    Returns
    -------
    dict
        ``force`` (N, recorded: contact force + offset + tilt + noise), ``height (measured)``
        and ``height (piezo)`` (base height, m), ``segment`` (0 approach, 1 retract),
        ``time`` (s), and ``force_true`` (N, contact force alone).
    """
    k = cfg.spring_constant_n_per_m
    f_set = cfg.setpoint_nn * 1e-9
    d_set = _indentation_at_setpoint(f_set, youngs_modulus_pa, cfg)
    z_top = contact_point_m + cfg.approach_distance_um * 1e-6
    z_bottom = contact_point_m - d_set - f_set / k  # tip at c − δ_set, deflection F_set/k
    n = cfg.points_per_segment
    z_app = np.linspace(z_top, z_bottom, n)
    z = np.concatenate([z_app, z_app[::-1]])
    # solve δ = c − (z + F(δ)/k) for δ ∈ [0, max(0, c − z)]: g(δ) = δ + F(δ)/k − (c − z) is increasing
    room = np.clip(contact_point_m - z, 0.0, None)
    lo, hi = np.zeros_like(z), room.copy()
    for _ in range(80):
        mid = 0.5 * (lo + hi)
        g = mid + contact_force_n(mid, youngs_modulus_pa, **_law(cfg)) / k - room
        lo = np.where(g < 0, mid, lo)
        hi = np.where(g < 0, hi, mid)
    delta = 0.5 * (lo + hi)
    force_true = contact_force_n(delta, youngs_modulus_pa, **_law(cfg))
    force = force_true + offset_n + tilt_n_per_m * (z - z_top)
    if cfg.noise_pn > 0:
        force = force + rng.normal(0.0, cfg.noise_pn * 1e-12, size=z.shape)
    travel = np.concatenate([[0.0], np.cumsum(np.abs(np.diff(z)))])
    return {
        "force": force, "height (measured)": z, "height (piezo)": z.copy(),
        "segment": np.repeat(np.array([0, 1], np.uint8), n), "time": travel / (cfg.speed_um_per_s * 1e-6),
        "force_true": force_true,
    }


def _write_h5(path: Path, curves: list[tuple[dict[str, np.ndarray], dict[str, Any]]]) -> None:
    import afmformats
    import h5py

    from mechanoscope.io.atomic import atomic_path

    with atomic_path(path) as tmp:
        with h5py.File(tmp, "w") as h5:
            for enum, (data, meta) in enumerate(curves):
                cols = {c: v for c, v in data.items() if c != "force_true"}
                md = {**meta, "enum": enum, "path": path, "imaging mode": "force-distance", "point count": len(cols["force"])}
                afmformats.AFMForceDistance(data=cols, metadata=md).export_data(h5, fmt="hdf5")


def simulate_afm_curves(
    out_dir: str | os.PathLike[str],
    config: AFMCurveSimConfig | None = None,
    *,
    measurements: Optional[pd.DataFrame] = None,
    seed: int = 0,
) -> pd.DataFrame:
    """Write synthetic force curves (afmformats HDF5) and their truth table.

    Parameters
    ----------
    out_dir
        Folder; receives ``curves_NNN.h5`` (or ``<image_id>.h5`` with ``measurements``)
        and ``truth.parquet``.
    config
        Simulation settings.
    measurements
        Optional table with ``image_id``, ``position_y_um``, ``position_x_um`` and
        ``measured_stiffness_pa`` (e.g. ``afm.parquet`` of ``simulate adherent``): one
        curve per row with that E at that position, one file per image.
    seed
        Random seed; same seed and settings → identical curves.

    Returns
    -------
    DataFrame
        Truth: ``file``, ``curve_index``, ``youngs_modulus_pa``, ``contact_point_m``,
        ``baseline_offset_n``, ``baseline_tilt_n_per_m``, ``noise_n``, ``x_um``, ``y_um``,
        ``image_id`` (with measurements), ``spring_constant_n_per_m``, ``indenter``.
    """
    cfg = config or AFMCurveSimConfig()
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    rng = np.random.default_rng(seed)
    if measurements is not None:
        need = ["image_id", "position_y_um", "position_x_um", "measured_stiffness_pa"]
        missing = [c for c in need if c not in measurements.columns]
        if missing:
            raise MechanoscopeError(f"measurement table lacks column(s) {missing}; it needs {need}")
        plan = pd.DataFrame({
            "image_id": measurements["image_id"].astype(str).to_numpy(),
            "youngs_modulus_pa": measurements["measured_stiffness_pa"].to_numpy(float),
            "y_um": measurements["position_y_um"].to_numpy(float), "x_um": measurements["position_x_um"].to_numpy(float),
        })
        plan["file"] = [f"{i}.h5" for i in plan["image_id"]]
    else:
        lo, hi = cfg.youngs_modulus_range_pa
        if not (0 < lo <= hi):
            raise MechanoscopeError(f"youngs_modulus_range_pa must be 0 < low <= high, got {cfg.youngs_modulus_range_pa}")
        n = cfg.n_curves
        plan = pd.DataFrame({
            "youngs_modulus_pa": np.exp(rng.uniform(math.log(lo), math.log(hi), n)),
            "y_um": rng.uniform(0, cfg.field_um[0], n), "x_um": rng.uniform(0, cfg.field_um[1], n),
        })
        plan["file"] = [f"curves_{i // cfg.curves_per_file:03d}.h5" for i in range(n)]
    if (plan["youngs_modulus_pa"] <= 0).any() or not np.isfinite(plan["youngs_modulus_pa"]).all():
        raise MechanoscopeError("every Young's modulus must be a positive number of Pa")
    m = len(plan)
    plan["contact_point_m"] = rng.uniform(*cfg.contact_point_range_um, m) * 1e-6
    plan["baseline_offset_n"] = rng.uniform(-1, 1, m) * cfg.baseline_offset_pn * 1e-12
    plan["baseline_tilt_n_per_m"] = rng.uniform(-1, 1, m) * cfg.baseline_tilt_pn_per_um * 1e-12 / 1e-6
    plan["noise_n"] = cfg.noise_pn * 1e-12
    plan["spring_constant_n_per_m"] = cfg.spring_constant_n_per_m
    plan["indenter"] = cfg.indenter
    plan["curve_index"] = plan.groupby("file", sort=False).cumcount()
    for name, rows in plan.groupby("file", sort=False):
        curves = []
        for r in rows.itertuples():
            data = simulate_curve(r.youngs_modulus_pa, r.contact_point_m, cfg, rng,
                                  offset_n=r.baseline_offset_n, tilt_n_per_m=r.baseline_tilt_n_per_m)
            meta = {"spring constant": cfg.spring_constant_n_per_m, "sensitivity": cfg.sensitivity_m_per_v,
                    "position x": r.x_um * 1e-6, "position y": r.y_um * 1e-6,
                    "speed approach": cfg.speed_um_per_s * 1e-6, "speed retract": cfg.speed_um_per_s * 1e-6,
                    "setpoint": cfg.setpoint_nn * 1e-9}
            curves.append((data, meta))
        _write_h5(out / str(name), curves)
    plan["file"] = [str(out / f) for f in plan["file"]]
    cols = ["file", "curve_index", "youngs_modulus_pa", "contact_point_m", "baseline_offset_n", "baseline_tilt_n_per_m",
            "noise_n", "x_um", "y_um"] + (["image_id"] if "image_id" in plan else []) + ["spring_constant_n_per_m", "indenter"]
    truth = plan[cols].reset_index(drop=True)
    from mechanoscope.io.atomic import write_json
    from mechanoscope.io.tables import write_table

    write_table(truth, out / "truth.parquet")
    write_json({"config": cfg.model_dump(mode="json"), "seed": seed, "n_curves": m,
                "function": "mechanoscope.simulate.afm_curves.simulate_afm_curves"}, out / "simulation.json")
    return truth
