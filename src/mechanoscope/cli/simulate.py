"""``mechanoscope simulate``: synthetic data with known ground truth."""

from __future__ import annotations

from pathlib import Path
from typing import Optional

import typer
from rich.progress import Progress

from mechanoscope.cli._common import console, flag_given, typed_options, user_errors
from mechanoscope.config import merge_config

simulate_app = typer.Typer(help="Simulate microscope images of cells with known stiffness.", no_args_is_help=True)


@simulate_app.command("adherent")
def adherent(
    ctx: typer.Context,
    out: Path = typer.Option(..., "--out", "-o", help="Output folder (images/, labels/, cells.parquet, afm.parquet, simulation.json)."),
    n_images: int = typer.Option(8, help="Number of fields of view."),
    cells_per_image: int = typer.Option(12, help="Cells per field of view."),
    populations: str = typer.Option("soft,stiff", help="Comma-separated population names (soft: 200 Pa, stiff: 2 kPa, intermediate: 630 Pa medians)."),
    continuous: bool = typer.Option(False, help="Draw E log-uniformly over --stiffness-range-pa instead of from populations."),
    stiffness_range_pa: tuple[float, float] = typer.Option((100.0, 10000.0), help="Range of E in Pa for --continuous."),
    modality: str = typer.Option("brightfield", help="brightfield or phase_contrast."),
    defocus_um: Optional[float] = typer.Option(None, help="Mean defocus in µm [default: 3.0 for bright-field, 0.0 for phase contrast]."),
    pixel_size_um: float = typer.Option(0.65, help="Pixel size in µm."),
    image_size_px: int = typer.Option(512, help="Field of view edge length in pixels."),
    afm_fraction: float = typer.Option(0.3, help="Fraction of whole cells with a simulated AFM measurement."),
    afm_error_cv: float = typer.Option(0.25, help="AFM measurement error (coefficient of variation)."),
    conditions: Optional[str] = typer.Option(None, help="Named conditions with replicates instead of --populations: a preset ('passage': P3,P5,P7,P9 rising 300→1100 Pa; 'macrophage': M0,M1,M2 with M1 stiffest) or comma-separated names with --condition-medians-pa."),
    condition_medians_pa: Optional[str] = typer.Option(None, help="Comma-separated median modulus (Pa) of each condition named in --conditions."),
    replicates: int = typer.Option(3, help="Biological replicates (wells) per condition, with --conditions."),
    replicate_sd_ln: float = typer.Option(0.15, help="SD of the log-normal replicate effect on the median modulus (ln scale; 0.15 ≈ 15 %), with --conditions."),
    images_per_replicate: int = typer.Option(1, help="Fields of view per replicate when --n-images is not given, with --conditions."),
    functional: bool = typer.Option(False, help="With --conditions: simulate a per-replicate senescence score rising 0.4 per decade of median modulus (functional.parquet)."),
    config: Optional[Path] = typer.Option(None, help="JSON/YAML file with an AdherentConfig; flags given explicitly override it."),
    seed: int = typer.Option(0, help="Random seed; same seed → identical files."),
    overwrite: bool = typer.Option(False, help="Replace a different simulation already in --out."),
) -> None:
    """Simulate fields of view of adherent cells with known Young's modulus.

    With --conditions every image is one field of view of one replicate of one condition;
    the cell table records condition and replicate.
    """
    from mechanoscope.simulate.adherent import AdherentConfig, simulate_adherent

    with user_errors():
        from_file = AdherentConfig.from_file(config) if config else None
        base = from_file.model_dump() if from_file else {}
        flags = {  # option name → (config key, value)
            "n_images": ("n_images", n_images),
            "cells_per_image": ("cells_per_image", cells_per_image),
            "populations": ("population_names", [p.strip() for p in populations.split(",") if p.strip()]),
            "continuous": ("stiffness_mode", "continuous" if continuous else "populations"),
            "stiffness_range_pa": ("stiffness_range_pa", stiffness_range_pa),
            "modality": ("modality", modality),
            "image_size_px": ("image_shape_px", (image_size_px, image_size_px)),
            "afm_fraction": ("afm_fraction", afm_fraction),
            "afm_error_cv": ("afm_error_cv", afm_error_cv),
        }
        # with a config file, only the flags typed on the command line override it
        base.update({key: value for name, (key, value) in flags.items() if config is None or flag_given(ctx, name)})
        if defocus_um is not None or from_file is None or "defocus_um" not in from_file.model_fields_set:
            base["defocus_um"] = defocus_um if defocus_um is not None else (3.0 if base.get("modality", modality) == "brightfield" else 0.0)
        if config is None or flag_given(ctx, "pixel_size_um"):
            base["optics"] = {**dict(base.get("optics") or {}), "pixel_size_um": pixel_size_um}
        if conditions is not None:
            design = _conditions_design(conditions, condition_medians_pa, replicates, replicate_sd_ln, functional)
            base["conditions"] = design
            if not flag_given(ctx, "n_images"):
                base["n_images"] = design.n_units * images_per_replicate
        cfg = AdherentConfig.build(**base)
        with Progress(console=console, transient=True) as bar:
            task = bar.add_task("simulating", total=cfg.n_images)
            simulate_adherent(cfg, out, seed=seed, overwrite=overwrite, progress=lambda i, n: bar.update(task, completed=i))
    import pandas as pd

    cells = pd.read_parquet(out / "cells.parquet")
    counts = cells["label"].value_counts().to_dict() if len(cells) else {}
    if cfg.conditions is not None:
        counts = {c: int((cells["condition"] == c).sum()) if len(cells) else 0 for c in cfg.conditions.names}
        counts = f"{counts} in {cfg.conditions.replicates} replicate(s) per condition"
    console.print(f"wrote {cfg.n_images} images with {len(cells)} cells {counts} to {out}")


def _conditions_design(names: str, medians: Optional[str], replicates: int, replicate_sd_ln: float, functional: bool):
    from mechanoscope.errors import ConfigError
    from mechanoscope.simulate.conditions import CONDITION_PRESETS, ConditionsDesign, FunctionalReadoutSpec

    extra = {"replicates": replicates, "replicate_sd_ln": replicate_sd_ln}
    if functional:
        extra["functional"] = FunctionalReadoutSpec()
    if names.strip() in CONDITION_PRESETS and medians is None:
        return ConditionsDesign.build(**CONDITION_PRESETS[names.strip()], **extra)
    cond = [c.strip() for c in names.split(",") if c.strip()]
    if medians is None:
        raise ConfigError(f"--conditions {names!r} is not a preset ({', '.join(sorted(CONDITION_PRESETS))}); "
                          "give each condition's median with --condition-medians-pa, e.g. 300,600")
    try:
        med = [float(m) for m in medians.split(",") if m.strip()]
    except ValueError:
        raise ConfigError(f"--condition-medians-pa {medians!r}: expected comma-separated numbers in Pa") from None
    return ConditionsDesign.build(names=cond, medians_pa=med, **extra)


@simulate_app.command("afm")
def afm(
    ctx: typer.Context,
    out: Path = typer.Option(..., "--out", "-o", help="Output folder (afmformats HDF5 curve files, truth.parquet, simulation.json)."),
    n_curves: int = typer.Option(20, help="Number of curves (ignored with --measurements)."),
    measurements: Optional[Path] = typer.Option(None, help="Table with image_id, position_y_um, position_x_um, measured_stiffness_pa (e.g. afm.parquet of 'simulate adherent'): one curve per row, one file per image."),
    youngs_modulus_range_pa: tuple[float, float] = typer.Option((300.0, 30000.0), help="E drawn log-uniformly in this range (Pa)."),
    indenter: str = typer.Option("paraboloid", help="paraboloid (fit with hertz_para) or cone (hertz_cone)."),
    tip_radius_um: float = typer.Option(10.0, help="Paraboloid tip radius (µm)."),
    noise_pn: float = typer.Option(10.0, help="Gaussian force noise (pN)."),
    baseline_tilt_pn_per_um: float = typer.Option(0.0, help="Largest baseline tilt (pN per µm of base height)."),
    config: Optional[Path] = typer.Option(None, help="JSON/YAML file with an AFMCurveSimConfig; flags given explicitly override it."),
    seed: int = typer.Option(0, help="Random seed; same seed → identical files."),
) -> None:
    """Simulate AFM force curves with known Young's modulus, contact point, baseline tilt and noise."""
    from mechanoscope.simulate.afm_curves import AFMCurveSimConfig, simulate_afm_curves

    with user_errors():
        flags = {"n_curves": n_curves, "youngs_modulus_range_pa": youngs_modulus_range_pa, "indenter": indenter,
                 "tip_radius_um": tip_radius_um, "noise_pn": noise_pn, "baseline_tilt_pn_per_um": baseline_tilt_pn_per_um}
        cfg = merge_config(AFMCurveSimConfig, config, flags, typed=typed_options(ctx, flags), what="AFM curve simulation settings")
        table = None
        if measurements is not None:
            from mechanoscope.io.tables import read_table

            table = read_table(measurements)
        truth = simulate_afm_curves(out, cfg, measurements=table, seed=seed)
    console.print(f"wrote {len(truth)} curves in {truth['file'].nunique()} file(s) and truth.parquet to {out}")


@simulate_app.command("channel")
def channel(
    ctx: typer.Context,
    out: Path = typer.Option(..., "--out", "-o", help="Output folder (.rtdc file(s), truth.parquet, simulation.json)."),
    n_events: int = typer.Option(200, help="Events (cells) without --conditions."),
    youngs_modulus_range_pa: tuple[float, float] = typer.Option((600.0, 3000.0), help="E drawn log-uniformly in this range (Pa), without --conditions."),
    conditions: Optional[str] = typer.Option(None, help="Named conditions with replicates, one .rtdc per replicate sample: a preset ('passage', 'macrophage') or comma-separated names with --condition-medians-pa."),
    condition_medians_pa: Optional[str] = typer.Option(None, help="Comma-separated median modulus (Pa) of each condition named in --conditions."),
    replicates: int = typer.Option(3, help="Replicate samples per condition, with --conditions."),
    replicate_sd_ln: float = typer.Option(0.15, help="SD of the log-normal replicate effect on the median modulus, with --conditions."),
    events_per_sample: int = typer.Option(100, help="Events per replicate sample, with --conditions."),
    channel_width_um: float = typer.Option(20.0, help="Channel width (µm)."),
    flow_rate_ul_s: float = typer.Option(0.04, help="Flow rate (µL/s)."),
    medium: str = typer.Option("CellCarrierB", help="Medium dclab knows (CellCarrierB, CellCarrier, 0.83% MC-PBS, water)."),
    temperature_c: float = typer.Option(23.0, help="Temperature (°C)."),
    pixel_size_um: float = typer.Option(0.34, help="Instrument pixel size (µm)."),
    mask: str = typer.Option("segmented", help="segmented (threshold against the background, like the instrument) or true (the true contour)."),
    config: Optional[Path] = typer.Option(None, help="JSON/YAML file with a ChannelSimConfig; flags given explicitly override it."),
    seed: int = typer.Option(0, help="Random seed; same seed → identical files."),
    overwrite: bool = typer.Option(False, help="Replace .rtdc files already in --out."),
) -> None:
    """Simulate an RT-DC measurement: cells with known E deformed as dclab's look-up table says, as .rtdc files.

    Import with 'mechanoscope rtdc import FILE --labels OUT/truth.parquet' to get the
    look-up-table modulus next to the true one.
    """
    from mechanoscope.simulate.channel import ChannelSimConfig, simulate_channel

    with user_errors():
        base = ChannelSimConfig.from_file(config).model_dump() if config else {}
        flags = {"n_events": n_events, "youngs_modulus_range_pa": youngs_modulus_range_pa, "events_per_sample": events_per_sample,
                 "channel_width_um": channel_width_um, "flow_rate_ul_s": flow_rate_ul_s, "medium": medium,
                 "temperature_c": temperature_c, "mask": mask}
        base.update({k: v for k, v in flags.items() if config is None or flag_given(ctx, k)})
        if config is None or flag_given(ctx, "pixel_size_um"):
            base["optics"] = {**dict(base.get("optics") or {}), "pixel_size_um": pixel_size_um}
        if conditions is not None:
            base["conditions"] = _conditions_design(conditions, condition_medians_pa, replicates, replicate_sd_ln, False)
        cfg = ChannelSimConfig.build(**base)
        with Progress(console=console, transient=True) as bar:
            task = bar.add_task("simulating", total=None)
            sim = simulate_channel(out, cfg, seed=seed, overwrite=overwrite, progress=lambda i, n: bar.update(task, completed=i, total=n))
    outside = f" ({sim.n_outside_lut} drawn cell(s) outside the look-up table left out)" if sim.n_outside_lut else ""
    console.print(f"wrote {len(sim.truth)} events in {len(sim.files)} .rtdc file(s) and truth.parquet to {out}{outside}")


@simulate_app.command("timelapse")
def timelapse(
    ctx: typer.Context,
    out: Path = typer.Option(..., "--out", "-o", help="Output folder (images/, labels/, gt/TRA/ in CTC format, cells.parquet, lineage.parquet, simulation.json)."),
    n_frames: int = typer.Option(40, help="Number of frames."),
    n_cells: int = typer.Option(20, help="Cells in the first frame."),
    image_size_px: int = typer.Option(256, help="Frame edge length in pixels."),
    pixel_size_um: float = typer.Option(1.0, help="Pixel size in µm."),
    speed_um_per_frame: float = typer.Option(3.0, help="Root-mean-square cell speed (µm per frame)."),
    division_probability: float = typer.Option(0.015, help="Probability per cell and frame of dividing."),
    miss_probability: float = typer.Option(0.01, help="Probability that a cell is missing from a frame (missed detection)."),
    treatment_frame: Optional[int] = typer.Option(None, help="Frame from which the treated half of the cells stiffens."),
    treatment_fold: float = typer.Option(2.0, help="Stiffening factor of treated cells."),
    config: Optional[Path] = typer.Option(None, help="JSON/YAML file with a TimelapseConfig; flags given explicitly override it."),
    seed: int = typer.Option(0, help="Random seed; same seed → identical files."),
    overwrite: bool = typer.Option(False, help="Replace a different simulation already in --out."),
) -> None:
    """Simulate a time-lapse of moving, dividing cells with known tracks (CTC format) and stiffness."""
    from mechanoscope.simulate.timelapse import TimelapseConfig, simulate_timelapse

    with user_errors():
        flags = {"n_frames": n_frames, "n_cells": n_cells, "image_size_px": (image_size_px, image_size_px),
                 "pixel_size_um": pixel_size_um, "speed_um_per_frame": speed_um_per_frame,
                 "division_probability": division_probability, "miss_probability": miss_probability,
                 "treatment_frame": treatment_frame, "treatment_fold": treatment_fold}
        cfg = merge_config(TimelapseConfig, config, flags, typed=typed_options(ctx, flags), renames={"image_size_px": "image_shape_px"},
                           what="time-lapse simulation settings")
        sim = simulate_timelapse(out, cfg, seed=seed, overwrite=overwrite)
    console.print(f"wrote {sim.config.n_frames} frames, {len(sim.cells)} cells in {len(sim.lineage)} tracks "
                  f"({int(sim.lineage['divides'].sum()) if len(sim.lineage) else 0} divisions) to {out}")


def register(app: typer.Typer) -> None:
    """Add the ``simulate`` verb to the main app."""
    app.add_typer(simulate_app, name="simulate")
