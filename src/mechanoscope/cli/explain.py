"""``mechanoscope explain RUN --model M``: attribution maps, embedding map and the domain summary of a predicted run."""

from __future__ import annotations

from pathlib import Path
from typing import List, Optional

import typer

from mechanoscope.cli._common import console, user_errors

__all__ = ["explain", "register"]


def explain(
    run: Path = typer.Argument(..., help="Predicted run folder (cells.parquet with pred_* columns, crops.zarr), e.g. from 'predict'."),
    model: List[Path] = typer.Option(..., "--model", "-m", help="Model folder(s) that predicted the run (repeat for several)."),
    out: Optional[Path] = typer.Option(None, "--out", "-o", help="Output folder: explanation.json and figures [default: RUN/explain, which 'mechanoscope report RUN' shows]."),
    per_class: int = typer.Option(4, "--per-class", min=1, max=50, help="Cells shown per predicted class (regression: per condition, else per third of the predicted value)."),
    method: str = typer.Option("integrated_gradients", "--method", help="Attribution method: integrated_gradients, gradcam or occlusion (captum)."),
    seed: int = typer.Option(0, help="Seed of the choice of cells and of the randomised network."),
) -> None:
    """Show what the networks look at and where their predictions may not be trusted.

    Attribution maps (captum; integrated gradients from an empty-field baseline by
    default) of a few cells per class with the model-randomisation sanity check, an
    embedding map of the network's penultimate features, and the applicability-domain
    summary (cells and images unlike the training images).
    """
    from rich.markup import escape

    from mechanoscope.errors import MechanoscopeError
    from mechanoscope.learn.attribution import ATTRIBUTION_METHODS
    from mechanoscope.pipeline.explain import explain_run

    with user_errors():
        if method not in ATTRIBUTION_METHODS:
            raise MechanoscopeError(f"unknown --method {method!r}; choose one of {', '.join(ATTRIBUTION_METHODS)}")
        if not (run / "cells.parquet").is_file():
            raise MechanoscopeError(f"{run}: no cells.parquet; pass a run folder that 'mechanoscope predict' wrote")
        res = explain_run(run, list(model), out=out, per_class=per_class, method=method, seed=seed, progress=lambda msg: console.print(f"[dim]{escape(msg)}[/dim]"))
    for a in res["attributions"]:
        line = f"{escape(a['model'])}: {a['n_cells']} cells, {escape(a['method'])}"
        if a.get("fraction_on_cell_median") is not None:
            line += f"; {100 * a['fraction_on_cell_median']:.0f} % of the attribution on the cell ({100 * a['area_fraction_median']:.0f} % of the crop)"
        if a.get("randomisation"):
            line += f"; vs random weights: rank correlation {a['randomisation']['spearman_median']:.2f}"
        console.print(line)
    for n in res["notes"]:
        console.print(f"[yellow]note:[/yellow] {escape(n)}")
    console.print(f"domain: {escape(res['domain']['note'])}")
    console.print(f"wrote explanation.json and figures to {escape(str(out or run / 'explain'))}")


def register(app: typer.Typer) -> None:
    """Add the ``explain`` verb to the main app."""
    app.command("explain")(explain)
