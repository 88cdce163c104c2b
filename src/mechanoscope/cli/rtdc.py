"""``mechanoscope rtdc``: import real-time deformability cytometry files (dclab)."""

from __future__ import annotations

from pathlib import Path
from typing import Optional

import typer
from rich.markup import escape
from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn

from mechanoscope.cli._common import console, typed_options, user_errors

__all__ = ["register", "rtdc_app"]

rtdc_app = typer.Typer(help="RT-DC (.rtdc) files: events → cell table with dclab's Young's modulus, event images → crops.", no_args_is_help=True)


@rtdc_app.command("import")
def import_(
    ctx: typer.Context,
    files: list[Path] = typer.Argument(..., help="RT-DC measurement(s) (.rtdc) with event images and masks; several files go into one run.", metavar="FILE.rtdc..."),
    out: Path = typer.Option(..., "--out", "-o", help="Run folder: cells.parquet, crops.zarr, rtdc.json."),
    lut: str = typer.Option("LE-2D-FEM-19", help="dclab look-up table: LE-2D-FEM-19, HE-2D-FEM-22, HE-3D-FEM-22."),
    viscosity_model: str = typer.Option("buyukurganci-2022", help="Viscosity model of the medium: buyukurganci-2022 or herold-2017."),
    medium: Optional[str] = typer.Option(None, help="Medium (default: the file's), e.g. CellCarrierB, '0.59% MC-PBS'."),
    viscosity_mpa_s: Optional[float] = typer.Option(None, help="Viscosity (mPa·s) of a medium dclab does not know."),
    channel_width_um: Optional[float] = typer.Option(None, help="Channel width in µm (default: the file's)."),
    flow_rate_ul_s: Optional[float] = typer.Option(None, help="Flow rate in µL/s (default: the file's)."),
    temperature_c: Optional[float] = typer.Option(None, help="Temperature in °C (default: per-event 'temp', else the file's)."),
    pixel_size_um: Optional[float] = typer.Option(None, help="Pixel size in µm (default: the file's)."),
    crop_size_um: float = typer.Option(25.0, help="Edge length of each crop in µm."),
    crop_pixels: int = typer.Option(64, help="Edge length of each crop in pixels."),
    max_events: Optional[int] = typer.Option(None, help="Import only the first N events."),
    labels: Optional[Path] = typer.Option(None, help="Per-event table (Parquet/CSV) with rtdc_event (and file) columns whose other columns (e.g. stiffness_pa, condition) are added to the cells, e.g. truth.parquet of 'simulate channel'."),
    require_modulus: bool = typer.Option(False, "--require-modulus", help="Fail when the file lacks metadata the modulus look-up needs (default: import with a NaN modulus and say what to pass)."),
    config: Optional[Path] = typer.Option(None, help="JSON/YAML file with RTDCImportConfig fields; flags typed explicitly override it."),
) -> None:
    """Import RT-DC files so that train, predict, evaluate and report work on their events.

    Events outside the look-up table get NaN in rtdc_youngs_modulus_pa and are counted.
    Of several files, one that cannot be imported is reported and skipped (exit code 1).
    """
    from mechanoscope.config import merge_config
    from mechanoscope.mechanics.rtdc import RTDCImportConfig
    from mechanoscope.mechanics.rtdc_files import import_rtdc_files

    with user_errors():
        flags = {"lut": lut, "viscosity_model": viscosity_model, "medium": medium, "viscosity_mpa_s": viscosity_mpa_s,
                 "channel_width_um": channel_width_um, "flow_rate_ul_s": flow_rate_ul_s, "temperature_c": temperature_c,
                 "pixel_size_um": pixel_size_um, "crop_size_um": crop_size_um, "crop_pixels": crop_pixels, "max_events": max_events,
                 "require_modulus": require_modulus}
        cfg = merge_config(RTDCImportConfig, config, flags, typed=typed_options(ctx, flags), what="RT-DC import settings")
        table = None
        if labels is not None:
            from mechanoscope.io.tables import read_table

            table = read_table(labels)
        with Progress(TextColumn("{task.description}"), BarColumn(), MofNCompleteColumn(), console=console, transient=True) as bar:
            task = bar.add_task("importing", total=None)
            res = import_rtdc_files(files, out, cfg, labels=table,
                                    progress=lambda name, i, n: bar.update(task, description=f"importing {name}", completed=i, total=n))
    several = len(files) > 1
    for one in res.results:
        s = one.settings
        where = f"{Path(one.table['rtdc_file'].iloc[0]).name}: " if several and len(one.table) else ""
        if one.no_modulus:
            console.print("[yellow]no Young's modulus:[/yellow] " + escape(one.no_modulus))
        else:
            console.print(escape(f"{where}look-up {s['lut']}, medium {s['medium']}, viscosity model {s['viscosity_model']}, "
                                 f"channel {s['channel_width_um']:g} µm, flow {s['flow_rate_ul_s']:g} µL/s, temperature: {s['temperature_source']}"))
        for note in one.notes:
            console.print("[yellow]note:[/yellow] " + escape(note))
    for bad in res.failed:
        console.print("[red]failed:[/red] " + escape(bad["error"]))
    n_outside = res.n_outside_lut
    n_skipped = sum(one.n_skipped for one in res.results)
    outside = f"; {n_outside} outside the look-up table (modulus NaN)" if n_outside else ""
    skipped = f"; {n_skipped} skipped (empty mask)" if n_skipped else ""
    files_part = f" from {len(res.results)} of {len(files)} file(s)" if several else ""
    console.print(escape(f"imported {res.n_imported} of {res.n_events} event(s){files_part}{outside}{skipped}, "
                         f"{res.events_per_second:.1f} events/s → {out / 'cells.parquet'}"))
    if res.failed:
        console.print(escape(f"{len(res.failed)} of {len(files)} file(s) failed; details in {out / 'rtdc.json'}"))
        raise typer.Exit(1)


def register(app: typer.Typer) -> None:
    """Add the ``rtdc`` verb to the main app."""
    app.add_typer(rtdc_app, name="rtdc")
