"""``mechanoscope demo``: the whole chain on simulated data."""

from __future__ import annotations

from pathlib import Path

import typer

from mechanoscope.cli._common import console, user_errors


def demo(
    out: Path = typer.Option(Path("demo_output"), "--out", "-o", help="Output folder."),
    seed: int = typer.Option(0, help="Random seed."),
    n_images: int = typer.Option(8, help="Simulated fields of view."),
) -> None:
    """Run the demo on simulated soft and stiff cells and say where the results are."""
    from mechanoscope.pipeline import run_demo

    with user_errors():
        summary = run_demo(out, seed=seed, n_images=n_images, progress=lambda m: console.print(f"[cyan]•[/cyan] {m}"))
    for label, s in summary["populations"].items():
        console.print(f"  {label:>6}: {s['n_cells']} cells, median E {s['stiffness_pa_median']:.0f} Pa, median spread area {s['spread_area_um2_median']:.0f} µm²")
    console.print(f"done in {summary['seconds']} s — results in {out.resolve()} (summary.json, fields.png)")


def register(app: typer.Typer) -> None:
    """Add the ``demo`` verb."""
    app.command("demo")(demo)
