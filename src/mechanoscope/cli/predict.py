"""``mechanoscope predict``: per-cell stiffness (class, modulus, interval) from images or a run."""

from __future__ import annotations

from pathlib import Path
from typing import List, Optional

import typer
from rich.progress import BarColumn, Progress, TextColumn

from mechanoscope.cli._common import console, user_errors


def predict(
    source: Path = typer.Argument(..., help="Images (file or folder) or a run folder with cells.parquet + crops.zarr."),
    model: List[Path] = typer.Option(..., "--model", "-m", help="Model folder; repeat to apply several (e.g. a classifier and a regressor)."),
    out: Path = typer.Option(..., "--out", "-o", help="Run folder to write (may be the input run folder)."),
    segmentation: str = typer.Option("classical", help="For images: classical, or a segmentation model folder."),
    pixel_size_um: Optional[float] = typer.Option(None, help="Pixel size in µm when the images' metadata lacks it."),
    batch_size: int = typer.Option(256, help="Crops per batch."),
) -> None:
    """Predict every cell and write the cell table with pred_* columns and predict.json."""
    from mechanoscope.pipeline import predict_run

    with user_errors():
        with Progress(TextColumn("{task.description}"), BarColumn(), TextColumn("{task.completed}/{task.total}"), console=console, transient=True) as bar:
            tid = bar.add_task("loading", total=1)
            info = predict_run(source, [str(m) for m in model], out, segmentation=segmentation, pixel_size_um=pixel_size_um, batch_size=batch_size,
                               progress=lambda stage, i, n: bar.update(tid, description=stage, completed=i, total=n))
    if info["n_cells"] == 0:
        console.print(f"[yellow]no cell was found[/yellow]; wrote an empty cell table to {out / 'cells.parquet'}")
    else:
        console.print(f"predicted {info['n_cells']} cells in {info['n_images']} images ({info['crops_per_second']} crops/s) → {out / 'cells.parquet'}")


def register(app: typer.Typer) -> None:
    """Add the ``predict`` verb."""
    app.command("predict")(predict)
