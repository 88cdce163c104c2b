"""``mechanoscope train``: learn a cell-table column from single-cell crops."""

from __future__ import annotations

import json
import shlex
import sys
from pathlib import Path
from typing import Optional

import typer
from rich.progress import BarColumn, Progress, TextColumn, TimeElapsedColumn

from mechanoscope.cli._common import console, typed_options, user_errors


def train(
    ctx: typer.Context,
    run: Path = typer.Argument(..., help="Run folder with cells.parquet and crops.zarr (from `mechanoscope extract`)."),
    target: str = typer.Option(..., "--target", "-t", help="Column to learn: a class column (label, phenotype) or a value (stiffness_pa, afm_stiffness_pa)."),
    out: Path = typer.Option(..., "--out", "-o", help="Model folder to create."),
    task: str = typer.Option("auto", help="auto, classification or regression."),
    model_type: str = typer.Option("cnn", help="cnn (on crops) or features (gradient boosting on the morphology table)."),
    architecture: str = typer.Option("compact", help="compact, resnet, densenet or efficientnet (MONAI, from scratch)."),
    loss: str = typer.Option("mse", help="Regression loss: mse (on log10 E) or gaussian (heteroscedastic)."),
    epochs: int = typer.Option(40, help="Maximum epochs."),
    batch_size: int = typer.Option(64, help="Crops per batch."),
    learning_rate: float = typer.Option(2e-3, help="Learning rate."),
    ensemble: int = typer.Option(1, help="Deep-ensemble size K."),
    tta: bool = typer.Option(False, help="Test-time augmentation (average over 8 rotations/flips)."),
    refit: bool = typer.Option(False, "--refit/--no-refit", help="After the validation images have chosen the epoch, train again on training + validation cells (about 2.4× the time; calibration and test images stay held out)."),
    interval_level: float = typer.Option(0.9, help="Coverage of conformal prediction intervals."),
    group_column: str = typer.Option("image_id", help="Cells sharing this value are never split across train/val/test."),
    split_from: Optional[Path] = typer.Option(None, help="Reuse the image split of this model folder."),
    max_train_seconds: Optional[float] = typer.Option(None, help="Stop training after this many seconds."),
    seed: int = typer.Option(0, help="Random seed."),
    config: Optional[Path] = typer.Option(None, help="JSON/YAML TrainConfig; flags given explicitly override it."),
    overwrite: bool = typer.Option(False, help="Replace an existing model folder."),
) -> None:
    """Train a classifier or regressor and write a model folder with its held-out metrics."""
    from mechanoscope.config import merge_config
    from mechanoscope.learn.config import TrainConfig
    from mechanoscope.learn.train import train_model

    with user_errors():
        flags = dict(task=task, model_type=model_type, architecture=architecture, loss=loss, epochs=epochs, batch_size=batch_size,
                     learning_rate=learning_rate, ensemble=ensemble, tta=tta, refit=refit, interval_level=interval_level, group_column=group_column,
                     split_from=str(split_from) if split_from else None, max_train_seconds=max_train_seconds, seed=seed)
        # a config file sets everything it names; only flags typed on the command line override it
        cfg = merge_config(TrainConfig, config, flags, typed=typed_options(ctx, flags), renames={"ensemble": "ensemble_size"},
                           fixed={"target": target}, what="training settings")
        with Progress(TextColumn("{task.description}"), BarColumn(), TextColumn("{task.completed}/{task.total}"), TimeElapsedColumn(), console=console, transient=True) as bar:
            task_id = bar.add_task("training", total=1)

            def progress(stage: str, done: int, total: int) -> None:
                bar.update(task_id, description=stage, completed=done, total=total)

            result = train_model(run, cfg, out, overwrite=overwrite, progress=progress, command=shlex.join(["mechanoscope"] + sys.argv[1:]))
    test = result.metrics.get("test", {})
    keys = ["auc", "f1", "accuracy", "balanced_accuracy", "ece", "ape_mean_pct", "ape_median_pct", "spearman_rho_log10"]
    shown = {k: round(test[k], 4) for k in keys if isinstance(test.get(k), (int, float))}
    if isinstance(test.get("interval"), dict):
        shown["interval_coverage"] = round(test["interval"]["coverage"], 3)
    console.print(f"cells per split: {result.metrics['n_cells']}")
    console.print(f"held-out test metrics: {json.dumps(shown)}")
    console.print(f"model folder: {result.model_dir} ({result.seconds:.0f} s)")


def register(app: typer.Typer) -> None:
    """Add the ``train`` verb."""
    app.command("train")(train)
