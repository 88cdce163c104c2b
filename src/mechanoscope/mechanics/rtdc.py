"""RT-DC events → a run folder: cell table with dclab's Young's modulus, and crops.

The apparent Young's modulus comes from dclab's finite-element look-up tables
(``dclab.features.emodulus.get_emodulus``; never re-implemented here) with the file's
medium, channel width, flow rate, temperature (per event where the file records it)
and pixel size, each overridable, and a named viscosity model. Events outside the
table's range get NaN and are counted, not raised.

The run folder is what ``mechanoscope extract`` writes, so ``train``, ``predict``,
``evaluate`` and ``report`` work on it unchanged: ``cells.parquet`` (one row per
event; each event is its own ``image_id`` ``<file stem>_<event>`` because RT-DC events
are independent cells and splits are drawn by image), ``crops.zarr`` (crops of the
event image around its mask, via :func:`mechanoscope.cells.extract.extract_cells`)
and ``rtdc.json`` (settings, provenance, counts).

RT-DC columns added to the cell table: ``rtdc_event`` (index in the file),
``rtdc_mask_objects`` (objects in the event's mask; only the largest is the cell),
``rtdc_deform`` (deformation, 1 − circularity), ``rtdc_area_um2`` (dclab's convex-hull
area), ``rtdc_bright_avg`` (mean brightness inside the contour, when recorded),
``rtdc_youngs_modulus_pa``, ``rtdc_lut``, ``rtdc_viscosity_model``, ``rtdc_medium``,
``rtdc_temperature_c``, ``rtdc_channel_width_um``, ``rtdc_flow_rate_ul_s``, ``rtdc_file``.
"""

from __future__ import annotations

import os
import time
import warnings
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal, Optional

import numpy as np
import pandas as pd
from pydantic import Field

from mechanoscope.config import StrictConfig
from mechanoscope.io.rtdc import RTDCReadError, open_rtdc, rtdc_setup

__all__ = ["RTDCImportConfig", "RTDCImportResult", "import_rtdc", "lut_coverage_note", "rtdc_youngs_modulus_pa"]


class RTDCImportConfig(StrictConfig):
    """How RT-DC events become a run folder; overrides default to the file's own metadata."""

    lut: Literal["LE-2D-FEM-19", "HE-2D-FEM-22", "HE-3D-FEM-22"] = Field("LE-2D-FEM-19", description="dclab look-up table: LE-2D-FEM-19 (linear elastic, Mokbel 2017), HE-2D-FEM-22 / HE-3D-FEM-22 (hyperelastic, Wittwer 2023).")
    viscosity_model: Literal["buyukurganci-2022", "herold-2017"] = Field("buyukurganci-2022", description="dclab model of the medium's viscosity (MC-PBS media, CellCarrier); herold-2017 is the older one many files' stored moduli used.")
    medium: Optional[str] = Field(None, description="Medium (e.g. CellCarrierB, 0.59% MC-PBS); default: the file's.")
    viscosity_mpa_s: Optional[float] = Field(None, gt=0, description="Viscosity (mPa·s) for a medium dclab does not know; replaces medium and viscosity model.")
    channel_width_um: Optional[float] = Field(None, gt=0, description="Channel width (µm); default: the file's.")
    flow_rate_ul_s: Optional[float] = Field(None, gt=0, description="Total flow rate (µL/s); default: the file's.")
    temperature_c: Optional[float] = Field(None, description="Temperature (°C) for every event; default: per-event 'temp' feature, else the file's setup temperature.")
    pixel_size_um: Optional[float] = Field(None, gt=0, description="Pixel size (µm) for the pixelation correction and crops; default: the file's.")
    crop_size_um: float = Field(25.0, gt=0, description="Edge length of each square crop (µm).")
    crop_pixels: int = Field(64, ge=8, description="Edge length of each crop (pixels).")
    max_events: Optional[int] = Field(None, ge=1, description="Import only the first N events.")
    require_modulus: bool = Field(False, description="Fail when the file lacks metadata the look-up needs; default: import the events with a NaN modulus and say what to pass.")


def rtdc_youngs_modulus_pa(area_um2: np.ndarray, deform: np.ndarray, *, medium: str | float, channel_width_um: float,
                           flow_rate_ul_s: float, pixel_size_um: float, temperature_c: float | np.ndarray | None,
                           lut: str = "LE-2D-FEM-19", viscosity_model: str | None = "buyukurganci-2022",
                           notes: list[str] | None = None) -> np.ndarray:
    """dclab's apparent Young's modulus (Pa) per event; NaN outside the look-up table.

    ``medium`` is a name dclab knows or a viscosity in mPa·s (then ``temperature_c``
    and ``viscosity_model`` are not used). dclab's warning that the temperature lies
    outside the viscosity model's range is appended to ``notes`` when given.
    """
    from dclab.features.emodulus import get_emodulus

    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")  # dclab warns per call about values outside the table: we count them
        kpa = get_emodulus(
            area_um=np.asarray(area_um2, dtype=float), deform=np.asarray(deform, dtype=float), medium=medium,
            channel_width=float(channel_width_um), flow_rate=float(flow_rate_ul_s), px_um=float(pixel_size_um),
            temperature=None if isinstance(medium, float) else temperature_c, lut_data=lut,
            visc_model=None if isinstance(medium, float) else viscosity_model,
        )
    if notes is not None:
        notes.extend(sorted({f"viscosity: {w.message}" for w in caught if type(w.message).__name__ == "TemperatureOutOfRangeWarning"}))
    return np.asarray(kpa, dtype=float) * 1e3


def lut_coverage_note(path: Path, area_um2: np.ndarray, deform: np.ndarray, emod_pa: np.ndarray, settings: dict[str, Any]) -> str:
    """Why events have no modulus: counts beyond the table's area / deformation and what to check.

    Empty when every event has a modulus. When most events are outside, the channel
    settings (width, flow rate, medium) or the table are the likely cause and the note
    says which options to pass.
    """
    from dclab.features.emodulus.load import load_lut
    from dclab.features.emodulus.scale_linear import scale_area_um

    out = ~np.isfinite(emod_pa)
    n, k = int(out.size), int(out.sum())
    if k == 0:
        return ""
    lut, meta = load_lut(settings["lut"])
    a_max = float(scale_area_um(np.array([lut[:, 0].max()]), channel_width_in=meta["channel_width"],
                                channel_width_out=settings["channel_width_um"])[0])
    big = int(np.count_nonzero(out & (area_um2 > a_max)))
    deformed = int(np.count_nonzero(out & (area_um2 <= a_max) & (deform > lut[:, 1].max())))
    rest = k - big - deformed
    parts = [f"{big} larger than the table's largest cell ({a_max:.0f} µm² in a {settings['channel_width_um']:g} µm channel)"] if big else []
    if deformed:
        parts.append(f"{deformed} more deformed than its most deformed cell ({lut[:, 1].max():.3f})")
    if rest:
        parts.append(f"{rest} stiffer or softer than the table covers at their size")
    msg = (f"{path}: {k} of {n} event(s) lie outside the look-up table {settings['lut']} for a {settings['channel_width_um']:g} µm channel "
           f"at {settings['flow_rate_ul_s']:g} µL/s ({'; '.join(parts)}); their modulus is NaN")
    if k >= 0.5 * n:
        msg += ("; with most events outside, check the channel width, flow rate and medium the file records "
                "(pass --channel-width-um, --flow-rate-ul-s, --medium or --viscosity-mpa-s) or choose another --lut")
    return msg


@dataclass
class RTDCImportResult:
    """What :func:`import_rtdc` wrote."""

    out_dir: Path
    table: pd.DataFrame
    n_events: int
    n_imported: int
    n_outside_lut: int
    n_skipped: int
    events_per_second: float
    settings: dict[str, Any]
    no_modulus: str = ""
    """Why no event has a modulus (metadata missing, with what to pass); empty when computed."""
    notes: list[str] = field(default_factory=list)
    """Events outside the look-up table (counts, likely cause, what to pass), temperature outside the viscosity model."""


def _settings(ds: Any, path: Path, cfg: RTDCImportConfig) -> dict[str, Any]:
    from dclab.features.emodulus.viscosity import KNOWN_MEDIA

    s = rtdc_setup(ds)
    missing = []
    width = cfg.channel_width_um or s.channel_width_um
    flow = cfg.flow_rate_ul_s or s.flow_rate_ul_s
    px = cfg.pixel_size_um or s.pixel_size_um
    medium: str | float | None = cfg.viscosity_mpa_s if cfg.viscosity_mpa_s is not None else (cfg.medium or s.medium)
    for value, name, flag in ((width, "channel width", "--channel-width-um"), (flow, "flow rate", "--flow-rate-ul-s"),
                              (px, "pixel size", "--pixel-size-um")):
        if value is None:
            missing.append(f"{name} ({flag})")
    if medium is None:
        missing.append("medium (--medium, or --viscosity-mpa-s for another medium)")
    elif isinstance(medium, str) and medium not in KNOWN_MEDIA:
        raise RTDCReadError(f"{path}: medium {medium!r} is not one dclab knows ({', '.join(sorted(set(m for m in KNOWN_MEDIA if m[0].isupper() or m == 'water')))}); pass --medium or --viscosity-mpa-s")
    temp_source = "override"
    if cfg.temperature_c is not None:
        temp: Any = float(cfg.temperature_c)
    elif s.has_temperature_feature:
        temp, temp_source = np.asarray(ds["temp"][:], dtype=float), "per-event feature 'temp'"
    elif s.temperature_c is not None:
        temp, temp_source = s.temperature_c, "setup temperature"
    elif isinstance(medium, float):
        temp, temp_source = None, "not needed (viscosity given)"
    else:
        temp = None
        missing.append("temperature (--temperature-c)")
    if missing:
        raise RTDCReadError(f"{path}: the file does not record the {', '.join(missing)} that the Young's-modulus look-up needs; pass them")
    return {"channel_width_um": float(width), "flow_rate_ul_s": float(flow), "pixel_size_um": float(px), "medium": medium,
            "temperature": temp, "temperature_source": temp_source, "lut": cfg.lut,
            "viscosity_model": None if isinstance(medium, float) else cfg.viscosity_model}


def _labels_for(labels: pd.DataFrame, path: Path) -> pd.DataFrame:
    """The rows of a per-event table that belong to ``path`` (checked before any work is done)."""
    if "rtdc_event" not in labels.columns:
        raise RTDCReadError(f"{path}: the labels table has no 'rtdc_event' column (the event index in the file); it has {list(labels.columns)}")
    lab = labels
    if "file" in lab.columns:
        lab = lab[lab["file"].astype(str).map(lambda f: Path(f).name) == path.name].drop(columns=["file"])
        if lab.empty:
            raise RTDCReadError(f"{path}: the labels table lists no event of this file (its 'file' column names {sorted(set(map(str, labels['file'])))[:5]})")
    if lab["rtdc_event"].duplicated().any():
        raise RTDCReadError(f"{path}: the labels table lists an event more than once (rtdc_event {int(lab.loc[lab['rtdc_event'].duplicated(), 'rtdc_event'].iloc[0])})")
    return lab


def _attach_labels(cells: pd.DataFrame, lab: pd.DataFrame, path: Path) -> pd.DataFrame:
    """Join this file's rows of a per-event table on ``rtdc_event``."""
    clash = sorted(set(lab.columns) & set(cells.columns) - {"rtdc_event"})
    if clash:
        raise RTDCReadError(f"{path}: labels column(s) {clash} would replace columns of the RT-DC cell table; rename them")
    lab = lab.assign(rtdc_event=lab["rtdc_event"].astype(np.int64))
    return cells.merge(lab, on="rtdc_event", how="left", validate="one_to_one")


def import_rtdc(
    path: str | os.PathLike[str],
    out_dir: str | os.PathLike[str],
    config: RTDCImportConfig | dict[str, Any] | None = None,
    *,
    labels: pd.DataFrame | None = None,
    progress: Callable[[int, int], None] | None = None,
) -> RTDCImportResult:
    """Import an RT-DC file's events into a run folder (cell table + crop store).

    ``labels`` is an optional per-event table (e.g. ``truth.parquet`` of ``simulate
    channel``, or reference values, classes, condition and replicate of each event) with
    an ``rtdc_event`` column (the event's index in the file) and, when it lists several
    files, a ``file`` column naming them; its other columns are added to the cells
    (``stiffness_pa``, ``label``, ``condition``, …). Events it does not list get NaN.

    Raises
    ------
    RTDCReadError
        Unreadable file, no event images or masks, no pixel size, a labels table
        without ``rtdc_event`` or whose columns clash with RT-DC ones; missing metadata the
        look-up needs only with ``require_modulus`` (else the events are imported with a
        NaN modulus and ``no_modulus`` says what to pass). Events outside the look-up
        table get NaN and are counted.
    """
    from mechanoscope import __version__
    from mechanoscope.cells.extract import ExtractConfig, extract_cells
    from mechanoscope.io.crop_store import CropStoreWriter
    from mechanoscope.io.atomic import write_json
    from mechanoscope.io.tables import write_table
    from skimage.measure import label

    cfg = config if isinstance(config, RTDCImportConfig) else RTDCImportConfig.build(**dict(config or {}))
    p = Path(path)
    t0 = time.perf_counter()
    lab = _labels_for(labels, p) if labels is not None else None
    ds = open_rtdc(p)
    feats = set(ds.features_innate)
    for need, why in (("image", "event images (crops)"), ("mask", "event masks (the cell outline)"),
                      ("deform", "deformation"), ("area_um", "area")):
        if need not in ds.features:
            raise RTDCReadError(f"{p}: the file holds no '{need}' feature ({why}); it cannot be imported as cells — export it with images and masks")
    n_all = len(ds)
    n = min(n_all, cfg.max_events or n_all)
    area, deform = np.asarray(ds["area_um"][:n], float), np.asarray(ds["deform"][:n], float)
    no_modulus = ""
    try:
        st = _settings(ds, p, cfg)
    except RTDCReadError as exc:
        if cfg.require_modulus:
            raise
        # import the events anyway (images, deformation, area); the modulus stays NaN and the result says why
        no_modulus = str(exc)
        s = rtdc_setup(ds)
        px = cfg.pixel_size_um or s.pixel_size_um
        if px is None:
            raise RTDCReadError(f"{p}: the file records no pixel size; pass --pixel-size-um") from None
        st = {"channel_width_um": cfg.channel_width_um or s.channel_width_um, "flow_rate_ul_s": cfg.flow_rate_ul_s or s.flow_rate_ul_s,
              "pixel_size_um": float(px), "medium": cfg.medium or s.medium, "temperature": cfg.temperature_c or s.temperature_c,
              "temperature_source": "missing", "lut": cfg.lut, "viscosity_model": cfg.viscosity_model}
    temp = st["temperature"][:n] if isinstance(st["temperature"], np.ndarray) else st["temperature"]
    notes: list[str] = []
    if no_modulus:
        emod = np.full(n, np.nan)
    else:
        emod = rtdc_youngs_modulus_pa(area, deform, medium=st["medium"], channel_width_um=st["channel_width_um"],
                                      flow_rate_ul_s=st["flow_rate_ul_s"], pixel_size_um=st["pixel_size_um"],
                                      temperature_c=temp, lut=st["lut"], viscosity_model=st["viscosity_model"], notes=notes)
        note = lut_coverage_note(p, area, deform, emod, st)
        if note:
            notes.insert(0, note)
    bright = np.asarray(ds["bright_avg"][:n], float) if "bright_avg" in ds.features else np.full(n, np.nan)
    ecfg = ExtractConfig.build(crop={"crop_size_um": cfg.crop_size_um, "crop_pixels": cfg.crop_pixels})
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    rows: list[pd.DataFrame] = []
    skipped: list[dict[str, Any]] = []
    with CropStoreWriter(out / "crops.zarr", crop_size_um=cfg.crop_size_um, crop_pixels=cfg.crop_pixels,
                         channels=ecfg.crop.channels, attrs={"source": str(p), "mechanoscope_version": __version__}) as writer:
        for i in range(n):
            image_id = f"{p.stem}_{i:06d}"
            mask = np.asarray(ds["mask"][i]).astype(np.int32)
            if not mask.any():
                skipped.append({"event": i, "error": "empty mask"})
                continue
            image = np.asarray(ds["image"][i], dtype=np.float32)
            parts = label(mask > 0)
            n_parts = int(parts.max())
            if n_parts > 1:  # an event is one cell: keep the largest object of its mask (debris, artefacts go)
                parts = (parts == 1 + int(np.argmax(np.bincount(parts.ravel())[1:]))).astype(np.int32)
            table, crops = extract_cells(image, (parts > 0).astype(np.int32), pixel_size_um=st["pixel_size_um"],
                                         config=ecfg, image_id=image_id)
            writer.append(crops, image_id=image_id, cell_ids=table["cell_id"].to_numpy(), frames=table["frame"].to_numpy(),
                          pad_value=float(table["crop_pad_value"].iloc[0]) if len(table) else None)
            table = table.assign(rtdc_event=i, rtdc_mask_objects=n_parts, rtdc_deform=deform[i], rtdc_area_um2=area[i], rtdc_bright_avg=bright[i],
                                 rtdc_youngs_modulus_pa=emod[i],
                                 rtdc_temperature_c=float(temp[i]) if isinstance(temp, np.ndarray) else temp)
            rows.append(table)
            if progress is not None:
                progress(i + 1, n)
        if not rows:
            writer.abort()
            raise RTDCReadError(f"{p}: none of its {n} event(s) has a non-empty mask; nothing imported")
    cells = pd.concat(rows, ignore_index=True)
    if lab is not None:
        cells = _attach_labels(cells, lab, p)
    medium_name = f"viscosity {st['medium']} mPa·s" if isinstance(st["medium"], float) else st["medium"]
    cells = cells.assign(rtdc_lut=st["lut"], rtdc_viscosity_model=st["viscosity_model"] or "none", rtdc_medium=str(medium_name),
                         rtdc_channel_width_um=st["channel_width_um"] or np.nan, rtdc_flow_rate_ul_s=st["flow_rate_ul_s"] or np.nan,
                         rtdc_file=str(p))
    write_table(cells, out / "cells.parquet")
    n_out = 0 if no_modulus else int(np.count_nonzero(~np.isfinite(emod)))
    seconds = time.perf_counter() - t0
    settings = {k: v for k, v in st.items() if k != "temperature"}
    settings["temperature_c"] = None if isinstance(st["temperature"], np.ndarray) else st["temperature"]
    summary = {
        "config": cfg.model_dump(mode="json"), "settings": settings, "source": str(p), "n_events": n_all,
        "n_imported": int(len(cells)), "n_outside_lut": n_out, "skipped": skipped, "no_modulus": no_modulus, "notes": notes,
        "events_per_second": round(n / seconds, 2) if seconds > 0 else None,
        "outputs": {"cells": "cells.parquet", "crops": "crops.zarr"},
        "provenance": {"function": "mechanoscope.mechanics.rtdc.import_rtdc", "mechanoscope": __version__,
                       "dclab": __import__("dclab").__version__},
    }
    write_json(summary, out / "rtdc.json")
    return RTDCImportResult(out, cells, n_all, int(len(cells)), n_out, len(skipped), n / seconds if seconds > 0 else float("inf"),
                            settings, no_modulus, notes)
