"""``mechanoscope predict``: per-cell stiffness (class, modulus, interval) from images or a run."""

from __future__ import annotations

import warnings
from pathlib import Path
from typing import List, Optional

import typer
from rich.markup import escape
from rich.progress import BarColumn, Progress, TextColumn

from mechanoscope.cli._common import console, finish_batch, print_segmentation_qc, print_warnings_and_failures, user_errors


def predict(
    source: Path = typer.Argument(..., help="Images (file or folder) or a run folder with cells.parquet + crops.zarr."),
    model: List[Path] = typer.Option(..., "--model", "-m", help="Model folder; repeat to apply several (e.g. a classifier and a regressor)."),
    out: Path = typer.Option(..., "--out", "-o", help="Run folder to write (may be the input run folder)."),
    segmentation: str = typer.Option("builtin", help="For images: builtin (the model shipped with mechanoscope), classical, or a segmentation model folder."),
    pixel_size_um: Optional[float] = typer.Option(None, help="Pixel size in µm when the images' metadata lacks it."),
    batch_size: int = typer.Option(256, min=1, help="Crops per batch."),
    overwrite: bool = typer.Option(False, help="For images: redo every image, also when --out holds results made with other segmentation, extraction or model settings."),
    max_pixels: Optional[int] = typer.Option(
        None, min=1, help="Refuse images with more pixels than this, checked before reading (default 200000000 or $MECHANOSCOPE_MAX_PIXELS)."
    ),
) -> None:
    """Predict every cell and write the cell table with pred_* columns and run.json.

    From images, each image is read once and processed on its own (segment,
    extract, predict); a bad image is reported, recorded in run.json (file,
    stage, message) and skipped, and the command then exits with status 1. A killed
    run, started again, skips the images it finished and redoes the others; a run
    in which no image finished never blocks its corrected re-run. predict.json
    repeats the summary for older readers.
    """
    from mechanoscope.pipeline import predict_run

    with user_errors(), warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        with Progress(TextColumn("{task.description}"), BarColumn(), TextColumn("{task.completed}/{task.total}"), console=console, transient=True) as bar:
            tid = bar.add_task("loading", total=1)
            info = predict_run(source, [str(m) for m in model], out, segmentation=segmentation, pixel_size_um=pixel_size_um, batch_size=batch_size,
                               overwrite=overwrite, max_pixels=max_pixels,
                               progress=lambda stage, i, n: bar.update(tid, description=stage, completed=i, total=n))
    failed = print_warnings_and_failures(caught, info.get("status", []))
    if info["n_cells"] == 0:
        summary = f"no cell was found; wrote an empty cell table to {out / 'cells.parquet'}"
        if not failed:
            console.print(f"[yellow]no cell was found[/yellow]; wrote an empty cell table to {escape(str(out / 'cells.parquet'))}")
            return
    else:
        summary = f"predicted {info['n_cells']} cells in {info['n_images']} images ({info['crops_per_second']} crops/s) → {out / 'cells.parquet'}"
    if info["n_cells"] and (info.get("domain") or {}).get("note"):
        console.print(f"domain: {escape(info['domain']['note'])}")
    print_segmentation_qc(info.get("segmentation_qc"))
    finish_batch(len(failed), len(info.get("status", [])), info.get("record_path", out / "run.json"), summary)


def register(app: typer.Typer) -> None:
    """Add the ``predict`` verb."""
    app.command("predict")(predict)
