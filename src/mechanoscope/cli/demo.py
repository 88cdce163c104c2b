"""``mechanoscope demo``: the whole chain on simulated data."""

from __future__ import annotations

from pathlib import Path

import typer

from mechanoscope.cli._common import console, user_errors


def demo(
    out: Path = typer.Option(Path("demo_output"), "--out", "-o", help="Output folder."),
    seed: int = typer.Option(0, help="Random seed."),
    n_images: int = typer.Option(96, help="Simulated fields of view."),
    epochs: int = typer.Option(40, help="Maximum training epochs per model."),
    max_train_seconds: float = typer.Option(180.0, help="Time limit of each training (s)."),
    afm_fraction: float = typer.Option(0.5, help="Fraction of whole cells with a simulated AFM measurement (the regressor's labels)."),
) -> None:
    """Run the demo on simulated soft and stiff cells and say where the results are."""
    from mechanoscope.pipeline import run_demo

    with user_errors():
        summary = run_demo(out, seed=seed, n_images=n_images, epochs=epochs, max_train_seconds=max_train_seconds, afm_fraction=afm_fraction, progress=lambda m: console.print(f"[cyan]•[/cyan] {m}"))
    ct = summary.get("classifier_test", {})
    rt = summary.get("regressor_test", {})
    console.print(f"  classifier on held-out images: AUC {ct.get('auc', float('nan')):.3f}, F1 {ct.get('f1', float('nan')):.3f}, accuracy {ct.get('accuracy', float('nan')):.3f}")
    console.print(f"  regressor on held-out AFM cells: mean APE {rt.get('ape_mean_pct', float('nan')):.0f} %, median APE {rt.get('ape_median_pct', float('nan')):.0f} %, interval coverage {(rt.get('interval') or {}).get('coverage', float('nan')):.2f}")
    console.print(f"done in {summary['seconds']:.0f} s; report: {summary['outputs']['report']}")


def register(app: typer.Typer) -> None:
    """Add the ``demo`` verb."""
    app.command("demo")(demo)
