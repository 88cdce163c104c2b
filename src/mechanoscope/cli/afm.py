"""``mechanoscope afm``: fit AFM force curves (afmformats + nanite) and match them to cells."""

from __future__ import annotations

from pathlib import Path
from typing import Optional

import typer
from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeRemainingColumn

from rich.markup import escape

from mechanoscope.cli._common import EXIT_SOME_FAILED, console, typed_options, user_errors

__all__ = ["register", "afm_app"]

afm_app = typer.Typer(help="AFM force curves: fit Young's modulus (nanite) and match measurements to segmented cells.", no_args_is_help=True)


@afm_app.command("fit")
def fit(
    ctx: typer.Context,
    curves: list[Path] = typer.Argument(..., help="AFM files or folders (any format afmformats reads: JPK force/map/QI, Igor ibw, AFM Workshop, NT-MDT, Chiaro, afmformats h5/tab)."),
    out: Path = typer.Option(..., "--out", "-o", help="Table to write, .parquet or .csv (one row per curve); settings and failures go to OUT's stem + .json."),
    model: str = typer.Option("hertz_para", help="nanite model: hertz_para, sneddon_spher_approx, hertz_cone, hertz_pyr3s."),
    tip_radius_um: float = typer.Option(10.0, help="Indenter radius in µm (hertz_para, sneddon_spher_approx)."),
    indenter_angle_deg: Optional[float] = typer.Option(None, help="Cone half-opening angle / pyramid face inclination in degrees (default: nanite's)."),
    poisson_ratio: float = typer.Option(0.5, help="Poisson ratio of the sample."),
    preprocessing: str = typer.Option("compute_tip_position,correct_force_offset,correct_tip_offset", help="Comma-separated nanite preprocessing steps, in order (add correct_force_slope for a tilted baseline)."),
    contact_point_method: str = typer.Option("deviation_from_baseline", help="nanite contact-point method for correct_tip_offset."),
    range_um: tuple[float, float] = typer.Option((0.0, 0.0), help="Fit range on the tip-position axis in µm; 0 0 = whole approach."),
    relative_range: bool = typer.Option(False, "--relative-range", help="range_um is relative to the fitted contact point (e.g. -2 0: first 2 µm of indentation)."),
    weight_contact_point_um: float = typer.Option(1.0, help="Down-weight residuals this close (µm) to the contact point; 0 = off."),
    spring_constant_n_per_m: Optional[float] = typer.Option(None, help="Spring constant (N/m) for files that lack it."),
    sensitivity_m_per_v: Optional[float] = typer.Option(None, help="Deflection sensitivity (m/V) for files that lack it."),
    rating: bool = typer.Option(True, "--rating/--no-rating", help="nanite's quality rating (0-10, zef18 training set; about 0.3 s per curve)."),
    config: Optional[Path] = typer.Option(None, help="JSON/YAML file with AFMFitConfig fields; flags typed explicitly override it."),
) -> None:
    """Fit Young's modulus to every force–distance curve; broken curves are reported, never given a number.

    Exit status 1 when any curve or file failed (the table still lists every curve,
    with the reason in its error column), 2 on bad options.
    """
    from mechanoscope.config import merge_config
    from mechanoscope.mechanics.afm_fit import AFMFitConfig, fit_afm_files, write_fit_result

    with user_errors():
        flags = {
            "model": model, "tip_radius_um": tip_radius_um, "indenter_angle_deg": indenter_angle_deg, "poisson_ratio": poisson_ratio,
            "preprocessing": [s.strip() for s in preprocessing.split(",") if s.strip()], "contact_point_method": contact_point_method,
            "range_um": range_um, "relative_range": "relative_contact_point" if relative_range else "absolute",
            "weight_contact_point_um": weight_contact_point_um, "spring_constant_n_per_m": spring_constant_n_per_m,
            "sensitivity_m_per_v": sensitivity_m_per_v, "rating": rating,
        }
        cfg = merge_config(AFMFitConfig, config, flags, typed=typed_options(ctx, flags), what="AFM fit settings",
                           renames={"model": "model_key", "relative_range": "range_type", "rating": "rate_quality"})
        if out.suffix.lower() not in (".parquet", ".csv"):
            from mechanoscope.errors import ConfigError

            raise ConfigError(f"--out {out}: write the table as .parquet or .csv")
        with Progress(TextColumn("fitting"), BarColumn(), MofNCompleteColumn(), TimeRemainingColumn(), console=console, transient=True) as bar:
            task = bar.add_task("fitting", total=None)
            result = fit_afm_files(curves, cfg, progress=lambda i, n: bar.update(task, completed=i, total=n))
        table_path, side = write_fit_result(result, out)
    failed = result.table[result.table["status"] != "ok"]
    for row in failed.head(20).itertuples():
        console.print(f"[yellow]failed:[/yellow] {escape(str(row.error))}")
    if len(failed) > 20:
        console.print(f"… and {len(failed) - 20} more failures (see {escape(str(side))})")
    if result.n_ok and result.table["nanite_rating"].notna().any():
        console.print(f"median nanite rating {result.table['nanite_rating'].median():.1f} of 10")
    failures = f"{result.n_failed} failed (reasons in the error column and {side.name})" if result.n_failed else "0 failed"
    console.print(escape(
        f"fitted {result.n_ok} of {result.n_curves} curve(s), {failures}, "
        f"{result.curves_per_second:.1f} curves/s → {table_path}"
    ))
    if result.n_failed:
        raise typer.Exit(code=EXIT_SOME_FAILED)


@afm_app.command("match")
def match(
    afm_table: Path = typer.Argument(..., help="Table written by 'mechanoscope afm fit' (.parquet or .csv)."),
    run: Path = typer.Argument(..., help="Run folder with cells.parquet and label images (labels/<image_id>.tif or extract.json inputs)."),
    image_id: Optional[str] = typer.Option(None, help="Image all measurements belong to (default: the table's image_id column, else each curve file's stem)."),
    offset_x_um: float = typer.Option(0.0, help="Image x (µm) of the stage origin."),
    offset_y_um: float = typer.Option(0.0, help="Image y (µm) of the stage origin."),
    scale: float = typer.Option(1.0, help="Image µm per stage µm."),
    rotation_deg: float = typer.Option(0.0, help="Rotation of the stage axes in the image (degrees, counter-clockwise)."),
    flip_y: bool = typer.Option(False, "--flip-y", help="Negate stage y first (stage y up, image y down)."),
    landmarks: Optional[Path] = typer.Option(None, help="CSV/Parquet of landmark pairs (stage_x_um, stage_y_um, image_x_um, image_y_um); fits offset, scale and rotation instead of the options."),
    max_distance_um: float = typer.Option(5.0, help="A measurement on background goes to the nearest cell centroid within this distance (µm); 0 = only inside a cell."),
) -> None:
    """Assign each AFM measurement to the cell under it; writes afm_stiffness_pa into RUN/cells.parquet.

    Measurements outside every cell are counted and listed (all of them in
    RUN/afm_matches.parquet, with the reason).
    """
    from mechanoscope.io.tables import read_table
    from mechanoscope.mechanics.afm_run import StageTransform, match_afm_to_run, transform_from_landmarks

    with user_errors():
        table = read_table(afm_table)
        if landmarks is not None:
            tr, rms = transform_from_landmarks(read_table(landmarks), flip_y=flip_y)
            console.print(f"landmarks: scale {tr.scale:.4g}, rotation {tr.rotation_deg:.2f}°, offset ({tr.offset_x_um:.2f}, {tr.offset_y_um:.2f}) µm, RMS {rms:.3g} µm")
        else:
            tr = StageTransform.build(offset_x_um=offset_x_um, offset_y_um=offset_y_um, scale=scale, rotation_deg=rotation_deg, flip_y=flip_y)
        res = match_afm_to_run(table, run, transform=tr, image_id=image_id, max_distance_um=max_distance_um)
    outside = res.outside
    for r in outside.head(20).itertuples():
        console.print("[yellow]outside every cell:[/yellow] " + escape(f"{r.file}[{r.curve_index}] at image ({r.position_x_um:.1f}, {r.position_y_um:.1f}) µm of {r.image_id}: {r.reason}"))
    if len(outside) > 20:
        console.print(f"… and {len(outside) - 20} more (see {run / 'afm_matches.parquet'})")
    skipped = f"; {res.n_failed_curves} failed curve(s) left out" if res.n_failed_curves else ""
    console.print(escape(
        f"matched {res.n_inside + res.n_nearest} of {len(res.matches)} measurement(s) to {res.n_cells_measured} cell(s) "
        f"({res.n_inside} inside, {res.n_nearest} nearest), {res.n_outside} outside every cell{skipped} → {run / 'cells.parquet'}"
    ))


def register(app: typer.Typer) -> None:
    """Add the ``afm`` verb to the main app."""
    app.add_typer(afm_app, name="afm")
