"""``mechanoscope run CONFIG.yaml``: a batch run described by one file, locally or on a Dask cluster."""

from __future__ import annotations

import shlex
import sys
import warnings
from pathlib import Path
from typing import Optional

import typer
from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn, TimeRemainingColumn

from mechanoscope.cli._common import console, finish_batch, print_segmentation_qc, print_warnings_and_failures, user_errors


def run(
    config: Path = typer.Argument(..., help="YAML/JSON run file (inputs, layout_pattern, segmentation, models, out, cluster …)."),
    cluster: Optional[str] = typer.Option(None, help="Overrides the file: local (embedded Dask cluster), none (this process) or tcp://host:port."),
    n_workers: Optional[int] = typer.Option(None, min=1, help="Overrides the file: worker processes of the local cluster."),
    out: Optional[Path] = typer.Option(None, "--out", "-o", help="Overrides the file: the run folder."),
    overwrite: bool = typer.Option(False, help="Redo every image, also when the run folder holds results made with other settings."),
) -> None:
    """Segment, extract and predict every image of a run file, one field of view per task, resumably.

    The run folder gets labels/, parts/, crops.zarr, cells.parquet (with the columns parsed
    from file names), run.json (settings, models, per-image status) and run_config.json.
    A bad image is recorded and skipped (exit status 1); a killed run, started again,
    skips finished images.
    """
    from mechanoscope.config import merge_config
    from mechanoscope.pipeline.batch_run import run_batch
    from mechanoscope.pipeline.run_config import RunConfig

    with user_errors(), warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        flags = {"cluster": cluster, "n_workers": n_workers, "out": str(out.resolve()) if out is not None else None, "overwrite": overwrite}
        typed = {k for k, v in flags.items() if v is not None and v is not False}  # these options have no default that could override the file
        cfg = merge_config(RunConfig, config, flags, typed=typed, what="run settings").resolved(config.resolve().parent)
        with Progress(TextColumn("{task.description}"), BarColumn(), MofNCompleteColumn(), TimeElapsedColumn(), TimeRemainingColumn(),
                      console=console, transient=True) as bar:
            tid = bar.add_task("starting", total=1)
            info = run_batch(cfg, progress=lambda stage, i, n: bar.update(tid, description=stage, completed=i, total=n),
                             command=shlex.join(["mechanoscope"] + sys.argv[1:]), source=config)
    failed = print_warnings_and_failures(caught, info.get("status", []))
    where = info["cluster"]["kind"] + (f", {info['cluster']['workers']} workers" if info["cluster"]["workers"] else "")
    summary = (f"{info['n_cells']} cells in {info['n_images']} of {info['n_input_images']} images ({info['cells_per_second']} cells/s end to end, "
               f"{where}; {info['n_resumed'] or 0} finished earlier) → {Path(cfg.out) / 'cells.parquet'}")
    print_segmentation_qc(info.get("segmentation_qc"))
    finish_batch(len(failed), len(info.get("status", [])), info.get("record_path", Path(cfg.out) / "run.json"), summary)


def register(app: typer.Typer) -> None:
    """Add the ``run`` verb."""
    app.command("run")(run)
