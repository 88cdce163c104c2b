"""``mechanoscope compare RUN --by condition``: compare conditions with biological replicates as the unit."""

from __future__ import annotations

from pathlib import Path
from typing import Optional

import typer

from mechanoscope.cli._common import console, flag_given, user_errors

__all__ = ["compare", "register"]


def _read_cells(run: Path):
    from mechanoscope.errors import MechanoscopeError
    from mechanoscope.io.tables import read_table

    if run.is_dir():
        if not (run / "cells.parquet").is_file():
            raise MechanoscopeError(f"{run}: folder holds no cells.parquet; pass a run or simulation folder, or a cell table (.parquet/.csv)")
        return read_table(run / "cells.parquet")
    return read_table(run)


def compare(
    ctx: typer.Context,
    run: Path = typer.Argument(..., help="Run folder (cells.parquet; e.g. from 'predict', or a 'simulate adherent' folder) or a cell table (.parquet/.csv)."),
    out: Optional[Path] = typer.Option(None, "--out", "-o", help="Output folder: comparison.json, summary/pairwise/replicates .csv and .parquet, superplot.png [default: RUN/comparison, which 'mechanoscope report RUN' shows]."),
    by: str = typer.Option("condition", "--by", help="Column naming each cell's condition."),
    replicate: Optional[str] = typer.Option(None, "--replicate", help="Column naming each cell's biological replicate (well, dish, donor) [default: 'replicate' if the table has it]."),
    order: Optional[str] = typer.Option(None, "--order", help="Comma-separated conditions in their natural order (e.g. P3,P5,P7,P9): adds a trend test; others are left out."),
    functional: Optional[Path] = typer.Option(None, "--functional", help="Table of a functional readout keyed by condition (+ replicate), or image_id + cell_id; every other numeric column is correlated with the value."),
    value: str = typer.Option("pred_stiffness_pa", "--value", help="Per-cell value to compare (pred_stiffness_pa, afm_stiffness_pa, stiffness_pa, ...)."),
    linear: bool = typer.Option(False, "--linear", help="Analyse the value on its linear scale instead of ln (for values that are not log-normal)."),
    all_cells: bool = typer.Option(False, "--all-cells", help="Include cells failing quality control (qc_pass false)."),
    n_bootstrap: int = typer.Option(2000, help="Bootstrap resamples of the median confidence intervals."),
    seed: int = typer.Option(0, help="Seed of the bootstrap; same seed → same intervals."),
) -> None:
    """Compare a per-cell value across conditions: replicate-level tests, a mixed model, Holm-corrected pairs, trend, SuperPlot.

    Thousands of cells from three wells are three observations: the tests use the
    biological replicate as the unit. The cell-level test is printed beside them only
    to show how much treating cells as independent would overstate the evidence.
    """
    from mechanoscope.io import write_json, write_table
    from mechanoscope.io.atomic import check_output_folder_path
    from mechanoscope.metrics.conditions import ComparisonConfig, compare_replicated_conditions
    from mechanoscope.report.superplot import superplot_png

    with user_errors():
        if out is None:
            if not run.is_dir():
                from mechanoscope.errors import MechanoscopeError

                raise MechanoscopeError(f"{run} is a table, not a run folder: give the output folder with --out")
            out = run / "comparison"
        check_output_folder_path(out)
        cells = _read_cells(run)
        rep_col = replicate
        notes = []
        if not flag_given(ctx, "replicate"):
            rep_col = "replicate" if "replicate" in cells.columns else None
        cfg = ComparisonConfig.build(
            value=value, by=by, replicate=rep_col,
            order=[c.strip() for c in order.split(",") if c.strip()] if order else None,
            log_scale=not linear, qc_only=not all_cells, n_bootstrap=n_bootstrap, seed=seed,
        )
        func_table = None
        if functional is not None:
            from mechanoscope.io.tables import read_table

            func_table = read_table(functional)
        result = compare_replicated_conditions(cells, cfg, functional=func_table)
        out.mkdir(parents=True, exist_ok=True)
        for name, table in (("summary", result.summary), ("pairwise", result.pairwise), ("replicates", result.replicates)):
            write_table(table, out / f"{name}.csv")
            write_table(table, out / f"{name}.parquet")
        payload = result.to_dict()
        payload["source"] = str(run)
        write_json(payload, out / "comparison.json")
        superplot_png(result, out / "superplot.png", seed=seed)
    _print(result, notes)
    console.print(f"wrote comparison.json, summary/pairwise/replicates tables and superplot.png to {out}")


def _print(result, notes: list[str]) -> None:
    from rich.markup import escape
    from rich.table import Table

    def p(v) -> str:
        return "n/a" if v is None or v != v else (f"{v:.3g}" if v >= 1e-4 else f"{v:.1e}")

    t = Table(title=f"{result.config.value} by {result.config.by}")
    for col in ("condition", "cells", "replicates", "median", f"{int(result.config.ci_level * 100)} % CI"):
        t.add_column(col)
    for r in result.summary.itertuples():
        t.add_row(escape(str(r.condition)), str(r.n_cells), str(r.n_replicates), f"{r.median:.4g}", f"{r.ci_low:.4g} – {r.ci_high:.4g}")
    console.print(t)
    tests = result.tests
    for key in ("replicate_level", "mixed_model"):
        res = tests.get(key)
        if res:
            test = res["test"] if key == "replicate_level" else "mixed model (replicate random intercept), " + res["omnibus"]["test"]
            pv = res["p_value"] if key == "replicate_level" else res["omnibus"]["p_value"]
            console.print(f"{escape(test)}: p = {p(pv)}")
    trend = tests.get("trend") or {}
    for key, res in trend.items():
        if isinstance(res, dict):
            console.print(f"trend, {escape(res.get('test', key))} ({res['direction']}): p = {p(res['p_value'])}")
    if result.functional:
        f = result.functional
        for name, r in f["readouts"].items():
            if "pearson_r" in r:
                console.print(f"{escape(name)} vs {escape(f['x'])}, per {f['level']} (n = {r['n']}): Pearson r = {r['pearson_r']:.3f} "
                              f"(p = {p(r['pearson_p'])}), Spearman ρ = {r['spearman_rho']:.3f} (p = {p(r['spearman_p'])})")
            else:
                console.print(f"{escape(name)}: {escape(r['note'])}")
    console.print(f"[dim]{escape(tests['cell_level']['test'])}: p = {p(tests['cell_level']['p_value'])}[/dim]")
    for m in result.messages + notes:
        console.print(f"[yellow]note:[/yellow] {escape(m)}")


def register(app: typer.Typer) -> None:
    """Add the ``compare`` verb to the main app."""
    app.command("compare")(compare)
