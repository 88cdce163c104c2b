"""``mechanoscope report RUN``: a self-contained HTML report of a run folder."""

from __future__ import annotations

from pathlib import Path
from typing import Optional

import typer

from mechanoscope.cli._common import console, user_errors

__all__ = ["register", "report"]


def report(
    run_dir: Path = typer.Argument(
        ..., help="Run folder written by 'mechanoscope predict' (cells.parquet, predict.json, crops.zarr)."
    ),
    out: Optional[Path] = typer.Option(
        None, "--out", "-o", help="Report file [default: RUN/report.html]."
    ),
) -> None:
    """Evaluate a run folder and write a single-file HTML report (figures embedded).

    Also (re)writes RUN/evaluation.json and RUN/figures/*.png. Prints the report's path.
    """
    from mechanoscope.pipeline.evaluation import evaluate_run
    from mechanoscope.report.html import write_report

    with user_errors():
        path = write_report(run_dir, out, evaluation=evaluate_run(run_dir, figures=True))
    console.print("[green]report written[/green]")
    typer.echo(str(path))


def register(app: typer.Typer) -> None:
    """Add the ``report`` verb to the main app."""
    app.command("report")(report)
