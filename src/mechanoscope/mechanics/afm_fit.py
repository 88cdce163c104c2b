"""Young's modulus from AFM force–indentation curves: nanite's contact models and fits.

The contact models (Hertz paraboloid, Sneddon sphere, Hertz cone, three-sided
pyramid) and the fitting are nanite's (``nanite.Indentation.fit_model``); this module
only chooses the settings from a typed :class:`AFMFitConfig`, checks each curve before
fitting (a broken curve is reported, never given a number) and collects one table row
per curve.

Output table (:func:`fit_afm_curves`), one row per curve:

``file``, ``curve_index``
    The file and the curve's index in it: afmformats' dataset index (``enum``, the
    curve's number in a force map or HDF5 file), else its 0-based position; −1 for a
    file that could not be read at all.
``status``, ``error``
    ``"ok"`` or ``"failed"``, and for a failed curve the reason (file, curve, what to do).
``youngs_modulus_pa``, ``youngs_modulus_stderr_pa``
    Fitted Young's modulus E (Pa) and its standard error from the fit (lmfit's
    covariance estimate; it covers force noise, not model or baseline errors); NaN for
    failed curves.
``contact_point_m``
    Fitted contact point on the tip-position axis (m) after the chosen preprocessing
    (with ``correct_tip_offset`` the tip position is measured from the estimated
    contact point, so the value is a small correction near 0).
``max_indentation_m``
    Largest indentation inside the fit range (m, ≥ 0).
``fit_residual_rms_n``
    Root-mean-square of force − model over the fitted points (N), unweighted.
``fit_points``
    Number of data points fitted.
``nanite_rating``
    nanite's curve quality rating (0 = worst … 10 = best) from its shipped training set
    (``zef18``, zebrafish spinal-cord sections, Extra Trees regressor), when
    ``rate_quality`` is on; a rating is a heuristic learnt from one tissue, not a proof.
``x_um``, ``y_um``
    Stage position of the curve (µm) when the file records one, else NaN.
``spring_constant_n_per_m``, ``model_key``, ``warning``
    Calibration used, the model, and warnings nanite raised during the fit.
"""

from __future__ import annotations

import math
import os
import time
import warnings
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal, Optional

import numpy as np
import pandas as pd
from pydantic import Field, model_validator

from mechanoscope.config import StrictConfig
from mechanoscope.errors import AFMFitError, AFMReadError, ConfigError
from mechanoscope.io.afm import check_curve, curve_position_um, find_afm_files, read_afm_file

__all__ = [
    "AFMFitConfig",
    "AFMFitResult",
    "FIT_COLUMNS",
    "MODEL_KEYS",
    "fit_afm_curves",
    "fit_afm_files",
    "fit_curve",
    "write_fit_result",
]

#: nanite models with a Young's modulus "E" and one geometry parameter.
MODEL_KEYS = ("hertz_para", "sneddon_spher_approx", "hertz_cone", "hertz_pyr3s")
ModelKey = Literal["hertz_para", "sneddon_spher_approx", "hertz_cone", "hertz_pyr3s"]
PreprocStep = Literal[
    "compute_tip_position", "correct_force_offset", "correct_force_slope",
    "correct_tip_offset", "correct_split_approach_retract", "smooth_height",
]
PocMethod = Literal[
    "deviation_from_baseline", "fit_constant_line", "fit_constant_polynomial",
    "fit_line_polynomial", "frechet_direct_path", "gradient_zero_crossing",
]

FIT_COLUMNS = [
    "file", "curve_index", "status", "error", "youngs_modulus_pa", "youngs_modulus_stderr_pa", "contact_point_m",
    "max_indentation_m", "fit_residual_rms_n", "fit_points", "nanite_rating", "x_um", "y_um",
    "spring_constant_n_per_m", "model_key", "warning",
]

ProgressCallback = Callable[[int, int], None]


class AFMFitConfig(StrictConfig):
    """How force curves are preprocessed and fitted (nanite's settings, in SI-derived units).

    The defaults are nanite's: model ``hertz_para`` with a 10 µm tip radius, Poisson
    ratio 0.5, baseline fitted, contact-point weighting over 1 µm, whole approach
    segment; preprocessing as nanite's command-line profile (tip position, force
    offset, contact point by deviation from baseline).
    """

    model_key: ModelKey = Field("hertz_para", description="nanite contact model: hertz_para (paraboloid), sneddon_spher_approx (sphere, Sneddon), hertz_cone (cone), hertz_pyr3s (three-sided pyramid).")
    tip_radius_um: float = Field(10.0, gt=0, description="Indenter radius in µm (hertz_para, sneddon_spher_approx).")
    indenter_angle_deg: Optional[float] = Field(None, gt=0, lt=90, description="Indenter angle in degrees: half-opening angle of the cone (hertz_cone, nanite default 25°) or inclination of the pyramid's face (hertz_pyr3s, nanite default 5°); default: nanite's.")
    poisson_ratio: float = Field(0.5, ge=0, le=0.5, description="Poisson ratio of the sample (dimensionless; 0.5 = incompressible).")
    preprocessing: list[PreprocStep] = Field(
        default_factory=lambda: ["compute_tip_position", "correct_force_offset", "correct_tip_offset"],
        description="nanite preprocessing steps, in order: compute_tip_position (tip-sample separation), correct_force_offset (baseline force to 0), correct_force_slope (baseline tilt), correct_tip_offset (tip position from the estimated contact point), correct_split_approach_retract, smooth_height.",
    )
    contact_point_method: PocMethod = Field("deviation_from_baseline", description="nanite method estimating the contact point (correct_tip_offset step).")
    force_slope_region: Literal["baseline", "approach", "all"] = Field("baseline", description="Where correct_force_slope subtracts the baseline tilt.")
    force_slope_strategy: Literal["drift", "shift"] = Field("shift", description="correct_force_slope: temporal drift or spatial shift correction.")
    segment: Literal["approach", "retract"] = Field("approach", description="Segment of the curve to fit.")
    range_type: Literal["absolute", "relative_contact_point"] = Field("absolute", description="Fit range on the tip-position axis: absolute, or relative to the fitted contact point (nanite's 'relative cp', a multi-pass fit).")
    range_um: tuple[float, float] = Field((0.0, 0.0), description="Fit range (µm) on the tip-position axis; (0, 0) with range_type absolute = the whole segment. Indentation is negative tip position: e.g. (-2, 0) relative to the contact point fits the first 2 µm of indentation.")
    weight_contact_point_um: float = Field(1.0, ge=0, description="Down-weight residuals within this distance (µm) of the contact point (nanite's weight_cp); 0 = no weighting.")
    fit_baseline: bool = Field(True, description="Fit the force baseline (offset) together with E and the contact point.")
    contact_point_initial_um: Optional[float] = Field(None, description="Initial contact point (µm, tip-position axis); default: nanite's estimate.")
    rate_quality: bool = Field(True, description="Add nanite's quality rating (0-10) from its shipped zef18 training set.")
    rating_training_set: str = Field("zef18", description="nanite training set for the rating (a label shipped with nanite or a path).")
    rating_regressor: str = Field("Extra Trees", description="nanite regressor for the rating.")
    min_approach_points: int = Field(10, ge=3, description="A curve with fewer approach points is broken (reported, not fitted).")
    min_contact_snr: float = Field(8.0, ge=0, description="A curve whose approach force rises less than this many times the baseline noise made no contact (reported, not fitted); 0 = no check.")
    spring_constant_n_per_m: Optional[float] = Field(None, gt=0, description="Cantilever spring constant (N/m) for files that lack it; files with their own keep theirs.")
    sensitivity_m_per_v: Optional[float] = Field(None, gt=0, description="Deflection sensitivity (m/V) for files that lack it; files with their own keep theirs.")

    @model_validator(mode="after")
    def _check_steps(self) -> "AFMFitConfig":
        steps = list(self.preprocessing)
        if len(set(steps)) != len(steps):
            raise ValueError(f"preprocessing lists a step twice: {steps}")
        try:
            from nanite import preproc
        except ImportError:  # pragma: no cover - afm extra missing; fitting will say so
            return self
        for i, step in enumerate(steps):
            required = preproc.get_steps_required(step) or []
            missing = [r for r in required if r not in steps[:i]]
            if missing:
                raise ValueError(f"preprocessing step {step!r} needs {missing} before it (got {steps})")
        if "compute_tip_position" not in steps:
            raise ValueError("preprocessing must include 'compute_tip_position' (nanite fits force against tip position)")
        if self.range_um[0] > self.range_um[1]:
            raise ValueError(f"range_um must be (low, high), got {self.range_um}")
        return self


@dataclass
class AFMFitResult:
    """Result of :func:`fit_afm_files`.

    Attributes
    ----------
    table
        One row per curve (columns :data:`FIT_COLUMNS`); failed curves have NaN values.
    n_curves, n_ok, n_failed
        Curves found, fitted, failed (failed files count as one failed row each).
    seconds, curves_per_second
        Wall time of reading + fitting, and curves handled per second.
    config
        The :class:`AFMFitConfig` used.
    """

    table: pd.DataFrame
    n_curves: int
    n_ok: int
    n_failed: int
    seconds: float
    curves_per_second: float
    config: AFMFitConfig
    versions: dict[str, str] = field(default_factory=dict)

    def summary(self) -> dict[str, Any]:
        """JSON-serialisable summary (config, counts, speed, versions, failures)."""
        failed = self.table[self.table["status"] != "ok"]
        return {
            "config": self.config.model_dump(mode="json"),
            "n_curves": self.n_curves,
            "n_ok": self.n_ok,
            "n_failed": self.n_failed,
            "seconds": round(self.seconds, 3),
            "curves_per_second": round(self.curves_per_second, 2),
            "versions": self.versions,
            "failures": [{"file": r.file, "curve_index": int(r.curve_index), "error": r.error} for r in failed.itertuples()],
        }


def _nanite() -> Any:
    try:
        import nanite
    except ImportError as exc:  # pragma: no cover - afm extra missing
        raise AFMFitError("fitting AFM curves needs nanite: pip install 'mechanoscope[afm]'") from exc
    return nanite


def _nanite_errors() -> tuple[type[BaseException], ...]:
    """nanite's fit errors derive from BaseException: catch them by name."""
    from nanite import fit as nfit

    return (nfit.FitKeyError, nfit.FitDataError, Exception)


def _preprocessing_options(cfg: AFMFitConfig) -> dict[str, dict[str, str]]:
    opts: dict[str, dict[str, str]] = {}
    if "correct_tip_offset" in cfg.preprocessing:
        opts["correct_tip_offset"] = {"method": cfg.contact_point_method}
    if "correct_force_slope" in cfg.preprocessing:
        opts["correct_force_slope"] = {"region": cfg.force_slope_region, "strategy": cfg.force_slope_strategy}
    return opts


def _initial_params(curve: Any, cfg: AFMFitConfig) -> Any:
    nanite = _nanite()
    params = nanite.fit.guess_initial_parameters(curve, model_key=cfg.model_key)
    if "R" in params:
        params["R"].set(value=cfg.tip_radius_um * 1e-6, vary=False)
    if "alpha" in params and cfg.indenter_angle_deg is not None:
        params["alpha"].set(value=float(cfg.indenter_angle_deg), vary=False)
    params["nu"].set(value=float(cfg.poisson_ratio), vary=False)
    params["baseline"].set(vary=bool(cfg.fit_baseline))
    if cfg.contact_point_initial_um is not None:
        params["contact_point"].set(value=cfg.contact_point_initial_um * 1e-6)
    for p in params.values():  # float32 data (Igor files) yields numpy scalars nanite cannot hash
        p.set(value=float(p.value))
    return params


def _check_contact(curve: Any, cfg: AFMFitConfig, label: str) -> None:
    """Raise if the approach force never rises clearly above the baseline noise."""
    if cfg.min_contact_snr <= 0:
        return
    nanite = _nanite()
    seg = np.asarray(curve["segment"]) == (0 if cfg.segment == "approach" else 1)
    force = np.asarray(curve["force"], dtype=float)[seg]
    if cfg.segment == "retract":
        force = force[::-1]
    try:
        idp = int(nanite.poc.compute_poc(force=force.copy(), method="deviation_from_baseline"))
    except _nanite_errors():
        idp = 0
    base = force[: max(idp, 10)]
    noise = float(np.median(np.abs(np.diff(base)))) / 0.6745 / math.sqrt(2) if len(base) > 2 else 0.0
    rise = float(np.max(force) - np.median(base))
    if not (rise > cfg.min_contact_snr * noise) or rise <= 0:
        snr = rise / noise if noise > 0 else 0.0
        raise AFMFitError(
            f"{label}: no contact — the {cfg.segment} force rises only {rise:.3g} N above the baseline, "
            f"{snr:.1f}× its noise ({noise:.2g} N; at least {cfg.min_contact_snr:g}× needed); the tip did not "
            "reach the cell, or lower min_contact_snr if the curve is fine"
        )


def fit_curve(curve: Any, config: AFMFitConfig | None = None, *, label: str = "curve") -> dict[str, Any]:
    """Preprocess and fit one nanite ``Indentation`` curve.

    Parameters
    ----------
    curve
        ``nanite.Indentation`` (read with :func:`mechanoscope.io.afm.read_afm_file` and
        ``data_class=nanite.Indentation``).
    config
        Fit settings.
    label
        Name of the curve in messages (``file[index]``).

    Returns
    -------
    dict
        ``youngs_modulus_pa``, ``contact_point_m``, ``max_indentation_m``,
        ``fit_residual_rms_n``, ``fit_points``, ``nanite_rating`` (NaN when off), ``warning``.

    Raises
    ------
    AFMReadError, AFMFitError
        Broken curve (no approach segment, missing spring constant), no contact,
        preprocessing failure or a fit without a finite positive modulus.
    """
    cfg = config or AFMFitConfig()
    check_curve(curve, label=label, min_approach_points=cfg.min_approach_points)
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        try:
            curve.apply_preprocessing(list(cfg.preprocessing), options=_preprocessing_options(cfg))
        except _nanite_errors() as exc:
            raise AFMFitError(f"{label}: preprocessing {list(cfg.preprocessing)} failed ({type(exc).__name__}: {exc})") from None
        _check_contact(curve, cfg, label)
        range_type = "absolute" if cfg.range_type == "absolute" else "relative cp"
        try:
            curve.fit_model(
                model_key=cfg.model_key,
                params_initial=_initial_params(curve, cfg),
                range_x=[cfg.range_um[0] * 1e-6, cfg.range_um[1] * 1e-6],
                range_type=range_type,
                x_axis="tip position",
                y_axis="force",
                segment=0 if cfg.segment == "approach" else 1,
                weight_cp=cfg.weight_contact_point_um * 1e-6 if cfg.weight_contact_point_um > 0 else False,
            )
        except _nanite_errors() as exc:
            raise AFMFitError(f"{label}: the {cfg.model_key} fit failed ({type(exc).__name__}: {exc})") from None
        fp = curve.fit_properties
        if not fp.get("success", False):
            raise AFMFitError(f"{label}: too few points in the fit range {cfg.range_um} µm ({cfg.range_type}) for a {cfg.model_key} fit; widen range_um")
        e_pa = float(fp["params_fitted"]["E"].value)
        e_se = fp["params_fitted"]["E"].stderr
        cp_m = float(fp["params_fitted"]["contact_point"].value)
        in_range = np.asarray(curve["fit range"], dtype=bool)
        x = np.asarray(curve["tip position"], dtype=float)[in_range]
        resid = (np.asarray(curve["force"], dtype=float) - np.asarray(curve["fit"], dtype=float))[in_range]
        depth = float(max(0.0, cp_m - np.min(x))) if len(x) else 0.0
        if not (np.isfinite(e_pa) and e_pa > 0):
            raise AFMFitError(f"{label}: the fit gave no positive finite Young's modulus (E = {e_pa}); check the fit range and preprocessing")
        if depth <= 0:
            raise AFMFitError(f"{label}: no indentation inside the fit range (fitted contact point {cp_m * 1e6:.3g} µm lies below every tip position); the tip made no contact in range_um")
        rating = float("nan")
        if cfg.rate_quality:
            try:
                rating = float(curve.rate_quality(regressor=cfg.rating_regressor, training_set=cfg.rating_training_set))
            except _nanite_errors() as exc:
                warnings.warn(f"nanite rating unavailable ({type(exc).__name__}: {exc})", stacklevel=2)
    msgs = sorted({str(w.message) for w in caught})
    return {
        "youngs_modulus_pa": e_pa,
        "youngs_modulus_stderr_pa": float(e_se) if e_se is not None else float("nan"),
        "contact_point_m": cp_m,
        "max_indentation_m": depth,
        "fit_residual_rms_n": float(np.sqrt(np.mean(resid**2))) if len(resid) else float("nan"),
        "fit_points": int(in_range.sum()),
        "nanite_rating": rating,
        "warning": "; ".join(msgs),
    }


def _row(file: str, index: int, curve: Any | None, cfg: AFMFitConfig) -> dict[str, Any]:
    x_um, y_um = curve_position_um(curve) if curve is not None else (float("nan"), float("nan"))
    k = None
    if curve is not None:
        try:
            k = curve.metadata.get("spring constant")
        except Exception:
            k = None
    return {
        "file": file, "curve_index": int(index), "status": "failed", "error": "",
        "youngs_modulus_pa": np.nan, "youngs_modulus_stderr_pa": np.nan, "contact_point_m": np.nan, "max_indentation_m": np.nan,
        "fit_residual_rms_n": np.nan, "fit_points": 0, "nanite_rating": np.nan,
        "x_um": x_um, "y_um": y_um, "spring_constant_n_per_m": float(k) if k is not None else np.nan,
        "model_key": cfg.model_key, "warning": "",
    }


def fit_afm_curves(
    curves: Sequence[tuple[str, int, Any]],
    config: AFMFitConfig | None = None,
    *,
    progress: ProgressCallback | None = None,
) -> pd.DataFrame:
    """Fit already-read curves; one table row each (columns :data:`FIT_COLUMNS`).

    Parameters
    ----------
    curves
        ``(file, curve_index, nanite.Indentation)`` triples.
    config
        Fit settings.
    progress
        ``progress(done, total)`` after each curve.
    """
    cfg = config or AFMFitConfig()
    rows = []
    for i, (file, index, curve) in enumerate(curves):
        row = _row(str(file), index, curve, cfg)
        try:
            row.update(fit_curve(curve, cfg, label=f"{file}[{index}]"))
            row["status"] = "ok"
        except (AFMReadError, AFMFitError) as exc:
            row["error"] = str(exc)
        rows.append(row)
        if progress is not None:
            progress(i + 1, len(curves))
    return pd.DataFrame(rows, columns=FIT_COLUMNS)


def _indexed(curves: list[Any]) -> list[tuple[int, Any]]:
    """(index, curve) sorted by afmformats' dataset index ``enum`` (the curve's number in its
    file or map; HDF5 files list curves in string order "0", "1", "10", …), or file order."""
    enums = []
    for c in curves:
        try:
            enums.append(int(c.metadata["enum"]))
        except Exception:
            enums = []
            break
    if len(set(enums)) != len(curves):
        return list(enumerate(curves))
    return sorted(zip(enums, curves), key=lambda t: t[0])


def _versions() -> dict[str, str]:
    from mechanoscope import __version__

    out = {"mechanoscope": __version__}
    for mod in ("nanite", "afmformats", "lmfit", "numpy"):
        try:
            out[mod] = str(__import__(mod).__version__)
        except Exception:  # pragma: no cover
            out[mod] = "unknown"
    return out


def fit_afm_files(
    paths: str | os.PathLike[str] | Sequence[str | os.PathLike[str]],
    config: AFMFitConfig | dict[str, Any] | None = None,
    *,
    progress: ProgressCallback | None = None,
) -> AFMFitResult:
    """Read AFM files (afmformats) and fit every force–distance curve (nanite).

    Parameters
    ----------
    paths
        Files and/or folders (searched recursively) in any format afmformats reads.
    config
        :class:`AFMFitConfig` or a dict of its fields.
    progress
        ``progress(done, total)`` after each curve (total = curves found).

    Returns
    -------
    AFMFitResult
        A file that cannot be read at all is one failed row (``curve_index`` −1) whose
        ``error`` says why and what to pass; broken curves are failed rows; nothing
        is skipped silently.

    Raises
    ------
    AFMReadError
        No path names an AFM file at all.
    """
    if config is None:
        cfg = AFMFitConfig()
    elif isinstance(config, AFMFitConfig):
        cfg = config
    else:
        cfg = AFMFitConfig.build(**dict(config))
    nanite = _nanite()
    t0 = time.perf_counter()
    files, problems = find_afm_files(paths)
    if not files and problems:
        shown = "; ".join(p["error"] for p in problems[:3])
        raise AFMReadError(f"no AFM file to fit: {shown}")
    if not files:
        raise AFMReadError("no AFM file to fit (no path given)")
    failed_rows = [{**_row(p["file"], -1, None, cfg), "error": p["error"]} for p in problems]
    curves: list[tuple[str, int, Any]] = []
    for f in files:
        try:
            found = read_afm_file(f, spring_constant_n_per_m=cfg.spring_constant_n_per_m,
                                  sensitivity_m_per_v=cfg.sensitivity_m_per_v, data_class=nanite.Indentation)
        except AFMReadError as exc:
            failed_rows.append({**_row(str(f), -1, None, cfg), "error": str(exc)})
            continue
        curves.extend((str(f), i, c) for i, c in _indexed(found))
    table = fit_afm_curves(curves, cfg, progress=progress)
    if failed_rows:
        table = pd.concat([table, pd.DataFrame(failed_rows, columns=FIT_COLUMNS)], ignore_index=True)
    seconds = time.perf_counter() - t0
    n_ok = int((table["status"] == "ok").sum())
    return AFMFitResult(
        table=table, n_curves=len(table), n_ok=n_ok, n_failed=len(table) - n_ok, seconds=seconds,
        curves_per_second=len(table) / seconds if seconds > 0 else float("inf"), config=cfg, versions=_versions(),
    )


def write_fit_result(result: AFMFitResult, path: str | os.PathLike[str]) -> tuple[Path, Path]:
    """Write the table (``.parquet`` or ``.csv`` by suffix) and ``<stem>.json`` beside it, atomically."""
    from mechanoscope.io.atomic import write_json
    from mechanoscope.io.tables import write_table

    p = Path(path)
    if p.suffix.lower() not in (".parquet", ".csv"):
        raise ConfigError(f"{p}: the AFM table is written as .parquet or .csv, not {p.suffix or 'no suffix'!r}")
    write_table(result.table, p)
    side = p.with_suffix(".json")
    write_json({**result.summary(), "table": p.name, "function": "mechanoscope.mechanics.fit_afm_files"}, side)
    return p, side
