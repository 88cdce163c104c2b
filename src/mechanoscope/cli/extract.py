"""``mechanoscope extract``: cell table, quality flags and crops from images + label images."""

from __future__ import annotations

import sys
import warnings
from pathlib import Path
from typing import Optional

import typer
from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeRemainingColumn

from rich.markup import escape

from mechanoscope.cli._common import console, finish_batch, typed_options, user_errors

__all__ = ["register", "extract"]


def extract(
    ctx: typer.Context,
    images: Path = typer.Argument(..., help="Image file or folder of images (TIFF, OME-TIFF, PNG, OME-Zarr)."),
    labels: Path = typer.Argument(
        ...,
        help=(
            "Label image file or folder (0 = background, one id per cell), paired with the "
            "images by name: NAME.ext ↔ NAME.* or NAME_labels/_masks/_instances.*"
        ),
    ),
    out: Path = typer.Option(
        ..., "--out", "-o", help="Run folder to write cells.parquet, crops.zarr, run.json and extract.json into."
    ),
    crop_size_um: float = typer.Option(64.0, help="Edge length of each square crop in µm."),
    crop_pixels: int = typer.Option(64, help="Edge length of each crop in pixels (crop pixel = size / pixels)."),
    pixel_size_um: Optional[float] = typer.Option(
        None, help="Pixel size in µm for all images (default: from each file's metadata)."
    ),
    mask_channel: bool = typer.Option(
        True, "--mask-channel/--no-mask-channel", help="Add the cell's own mask as crop channel 1."
    ),
    relabel: bool = typer.Option(
        False, "--relabel", help="Give each connected component its own id (for binary masks)."
    ),
    axes: Optional[str] = typer.Option(
        None, help="Axes of the images when the files do not name them, e.g. CYX or TYX (default: from the file)."
    ),
    channel: Optional[int] = typer.Option(
        None, help="Channel (0-based) to crop from multichannel images (required when there is more than one)."
    ),
    min_area_um2: float = typer.Option(20.0, help="Cells smaller than this (µm²) are flagged too_small."),
    max_area_um2: float = typer.Option(20000.0, help="Cells larger than this (µm²) are flagged too_large."),
    config: Optional[Path] = typer.Option(
        None, help="JSON/YAML file with extraction settings (or an extract.json); flags given explicitly override it."
    ),
    max_pixels: Optional[int] = typer.Option(
        None, min=1, help="Refuse images with more pixels than this, checked before reading (default 200000000 or $MECHANOSCOPE_MAX_PIXELS)."
    ),
) -> None:
    """Measure every labelled cell, flag bad ones, and cut fixed-physical-size crops.

    Writes OUT/cells.parquet (one row per cell: morphology in µm, intensity, texture,
    quality flags), OUT/crops.zarr ((N, C, H, W) crops in table row order) and
    OUT/run.json (settings, versions, per-image status; OUT/extract.json repeats the
    summary). A bad image/label pair is reported, recorded with its stage and skipped,
    and the command then exits with status 1. A killed run, started again, skips the
    images it finished and redoes the others.
    """
    from mechanoscope.cells.extract import ExtractConfig, extract_folder
    from mechanoscope.config import merge_config

    with user_errors():
        flags = {"crop_size_um": crop_size_um, "crop_pixels": crop_pixels, "mask_channel": mask_channel, "min_area_um2": min_area_um2,
                 "max_area_um2": max_area_um2, "pixel_size_um": pixel_size_um, "relabel": relabel, "axes": axes, "channel": channel}
        cfg = merge_config(ExtractConfig, config, flags, typed=typed_options(ctx, flags), what="extraction settings",
                           renames={"crop_size_um": "crop.crop_size_um", "crop_pixels": "crop.crop_pixels", "mask_channel": "crop.mask_channel",
                                    "min_area_um2": "quality.min_area_um2", "max_area_um2": "quality.max_area_um2"})

        with warnings.catch_warnings(record=True) as caught, Progress(
            TextColumn("extracting"),
            BarColumn(),
            MofNCompleteColumn(),
            TimeRemainingColumn(),
            console=console,
            transient=True,
        ) as bar:
            warnings.simplefilter("always")
            task = bar.add_task("extract", total=None)
            result = extract_folder(
                images, labels, out, cfg, progress=lambda i, n: bar.update(task, completed=i, total=n),
                max_pixels=max_pixels, command=sys.argv,
            )
    for w in caught:
        if not any(str(w.message).endswith(e["error"]) for e in result.errors):
            console.print(f"[yellow]warning:[/yellow] {escape(str(w.message))}")
    for e in result.errors:
        console.print(f"[yellow]skipped:[/yellow] {escape(e['error'])}")
    n_pass = int(result.table["qc_pass"].sum()) if result.table is not None and len(result.table) else 0
    finish_batch(
        len(result.errors),
        result.n_images + len(result.errors),
        result.record_path or result.summary_path,
        f"extracted {result.n_cells} cells ({n_pass} pass QC) from {result.n_images} images into {out}",
    )


def register(app: typer.Typer) -> None:
    """Add the ``extract`` verb to the main app."""
    app.command("extract")(extract)
