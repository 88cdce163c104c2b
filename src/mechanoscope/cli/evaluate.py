"""``mechanoscope evaluate``: score results against ground truth.

``mechanoscope evaluate segmentation PRED TRUE`` compares predicted label images
with true ones (files, or folders whose files are paired by name).
"""

from __future__ import annotations

from pathlib import Path
from typing import Any, Optional

import numpy as np
import typer
from rich.console import Console
from rich.table import Table

from mechanoscope import __version__
from mechanoscope.cli._common import console as err_console
from mechanoscope.cli._common import user_errors
from mechanoscope.errors import MechanoscopeError
from mechanoscope.evaluate.segmentation import segmentation_scores
from mechanoscope.evaluate.segmentation_pooled import aggregate_segmentation_scores, segmentation_table
from mechanoscope.io import image_paths, read_label_image, write_json, write_table

__all__ = ["evaluate_app", "register", "pair_label_files"]

evaluate_app = typer.Typer(
    name="evaluate",
    help="Score segmentations and predictions against ground truth.",
    no_args_is_help=True,
)


def register(app: typer.Typer) -> None:
    """Add the ``evaluate`` command group to the main ``mechanoscope`` app."""
    app.add_typer(evaluate_app, name="evaluate")


_MULTI_SUFFIXES = (".ome.tiff", ".ome.tif", ".ome.zarr")


def _stem(path: Path) -> str:
    name = path.name
    for suffix in _MULTI_SUFFIXES:
        if name.lower().endswith(suffix):
            return name[: -len(suffix)]
    return path.stem


def _by_stem(paths: list[Path], role: str) -> dict[str, Path]:
    out: dict[str, Path] = {}
    for p in paths:
        key = _stem(p)
        if key in out:
            raise MechanoscopeError(
                f"{role}: {out[key].name} and {p.name} have the same name {key!r}; files are "
                "paired by name, so keep only one of them in the folder"
            )
        out[key] = p
    return out


def pair_label_files(
    pred: Path, true: Path
) -> tuple[list[tuple[str, Path, Path]], list[Path], list[Path]]:
    """Pair predicted and true label-image files.

    Two files are paired with each other whatever their names; otherwise (folders, or a
    file and a folder) files are paired by name without suffix (``img01.tif`` with
    ``img01.png``; ``.ome.tif`` counts as one suffix).

    Returns
    -------
    pairs
        ``(name, pred_path, true_path)`` sorted by name.
    unpaired_pred, unpaired_true
        Files found on one side only.

    Raises
    ------
    MechanoscopeError
        A path does not exist, holds no images, two files share a name, or no name is
        found on both sides.
    """
    pred_files = image_paths(pred)
    true_files = image_paths(true)
    if pred.is_file() and true.is_file():
        return [(_stem(pred), pred, true)], [], []
    pm, tm = _by_stem(pred_files, "PRED"), _by_stem(true_files, "TRUE")
    names = sorted(pm.keys() & tm.keys())
    if not names:
        def few(keys: Any) -> str:
            keys = sorted(keys)
            return ", ".join(keys[:5]) + (f", ... ({len(keys)} in all)" if len(keys) > 5 else "")

        raise MechanoscopeError(
            f"no file in {pred} has the same name as a file in {true} "
            f"(PRED has: {few(pm)}; TRUE has: {few(tm)}); predicted and true label "
            "images are paired by file name without suffix, so rename them to match"
        )
    pairs = [(n, pm[n], tm[n]) for n in names]
    return (
        pairs,
        [pm[n] for n in sorted(pm.keys() - tm.keys())],
        [tm[n] for n in sorted(tm.keys() - pm.keys())],
    )


def _labels(path: Path) -> np.ndarray:
    img = read_label_image(path)
    if set(img.axes) <= set("ZYX"):
        return img.data  # 2-D or 3-D instances
    return img.as_2d()  # squeezes length-1 T/C axes, clear error otherwise


def _fmt(x: float | None) -> str:
    return "–" if x is None else f"{x:.3f}"


def _print_table(per_image: dict[str, dict[str, Any]], pooled: dict[str, Any]) -> None:
    table = Table(title="Segmentation scores", show_lines=False)
    table.add_column("image")
    for col in ("true", "pred", "AP@0.5", "AP@[.5:.95]", "F1@0.5", "PQ", "Dice"):
        table.add_column(col, justify="right")

    def row(name: str, s: dict[str, Any], style: str | None = None) -> None:
        table.add_row(
            name,
            str(s["n_true"]),
            str(s["n_pred"]),
            _fmt(s["ap_50"]),
            _fmt(s["ap_50_95"]),
            _fmt(s["f1_50"]),
            _fmt(s["pq"]),
            _fmt(s["dice"]),
            style=style,
        )

    for name, s in per_image.items():
        row(name, s)
    if len(per_image) > 1:
        table.add_section()
        row(f"all {len(per_image)} (pooled)", pooled, style="bold")
    Console().print(table)


@evaluate_app.command("segmentation")
def segmentation(
    pred: Path = typer.Argument(
        ..., help="Predicted label image, or a folder of them (paired with TRUE by file name)."
    ),
    true: Path = typer.Argument(..., help="True label image, or a folder of them."),
    out: Optional[Path] = typer.Option(
        None, "--out", "-o", help="Write all scores (per image and pooled) to this JSON file."
    ),
    table_path: Optional[Path] = typer.Option(
        None, "--table", help="Write one row of scores per image to this .csv or .parquet file."
    ),
) -> None:
    """Score predicted instance label images against true ones.

    Reports StarDist/Cellpose average precision AP = TP/(TP+FP+FN) at IoU 0.5 and
    averaged over IoU 0.5-0.95, F1 and panoptic quality at IoU 0.5, and foreground Dice.
    Over several images TP/FP/FN are pooled before the ratios are taken.
    """
    with user_errors():
        if out is not None and out.suffix.lower() != ".json":
            raise MechanoscopeError(f"--out {out}: give a file name ending in .json")
        if table_path is not None and table_path.suffix.lower() not in (".csv", ".parquet"):
            raise MechanoscopeError(f"--table {table_path}: give a file name ending in .csv or .parquet")
        pairs, unpaired_pred, unpaired_true = pair_label_files(pred, true)
        for role, files, other in (("PRED", unpaired_pred, true), ("TRUE", unpaired_true, pred)):
            if files:
                names = ", ".join(p.name for p in files)
                err_console.print(
                    f"[yellow]warning:[/yellow] {len(files)} {role} file(s) without a "
                    f"same-named file in {other}, not scored: {names}"
                )
        per_image: dict[str, dict[str, Any]] = {}
        skipped: dict[str, str] = {}
        for name, p, t in pairs:
            try:
                p_lab, t_lab = _labels(p), _labels(t)
                if p_lab.shape != t_lab.shape:
                    raise MechanoscopeError(
                        f"{p} has shape {p_lab.shape} but {t} has shape {t_lab.shape}; a "
                        "prediction must cover the same pixels as its ground truth"
                    )
                per_image[name] = segmentation_scores(p_lab, t_lab)
            except MechanoscopeError as exc:
                reason = str(exc)
                skipped[name] = reason
                err_console.print(f"[yellow]skipped {name}:[/yellow] {reason}")
        if not per_image:
            raise MechanoscopeError(
                f"none of the {len(pairs)} pair(s) could be scored; see the messages above"
            )
        pooled = aggregate_segmentation_scores(list(per_image.values()))
        _print_table(per_image, pooled)
        if out is not None:
            result = {
                "command": "mechanoscope evaluate segmentation",
                "mechanoscope_version": __version__,
                "pred": str(pred),
                "true": str(true),
                "pairs": {n: {"pred": str(p), "true": str(t)} for n, p, t in pairs},
                "unpaired_pred": [str(p) for p in unpaired_pred],
                "unpaired_true": [str(p) for p in unpaired_true],
                "skipped": skipped,
                "images": per_image,
                "pooled": pooled,
            }
            write_json(result, out)
            err_console.print(f"scores written to {out}")
        if table_path is not None:
            write_table(segmentation_table(per_image), table_path)
            err_console.print(f"per-image table written to {table_path}")


# --- ``mechanoscope evaluate run RUN`` (and the shorthand ``mechanoscope evaluate RUN``) ----
import os as _os  # noqa: E402

from typer.core import TyperGroup as _TyperGroup  # noqa: E402


class _EvaluateGroup(_TyperGroup):
    """The ``evaluate`` group: a first argument that is a folder, not a command, means ``run``.

    ``mechanoscope evaluate RUN`` is read as ``mechanoscope evaluate run RUN`` when RUN
    is not a command name and is an existing folder or a path with a separator
    (``./RUN``); anything else goes to the commands as usual, so a mistyped command
    still gets click's "No such command" message.
    """

    def parse_args(self, ctx: Any, args: list[str]) -> list[str]:
        if args and args[0] not in self.commands and not args[0].startswith("-"):
            first = args[0]
            if Path(first).is_dir() or _os.sep in first or (_os.altsep and _os.altsep in first):
                args = ["run", *args]
        return super().parse_args(ctx, args)


@evaluate_app.callback(
    cls=_EvaluateGroup,
    epilog="A run folder can be given directly: 'mechanoscope evaluate RUN' is 'mechanoscope evaluate run RUN'.",
)
def _evaluate_group() -> None:
    """Score segmentations and predictions against ground truth."""


def _print_evaluation(ev: dict[str, Any], run_dir: Path) -> None:
    from mechanoscope.report.html import NO_TRUTH_SENTENCE, metric_rows

    out = Console()
    scope = ev["scope"]
    out.print(
        f"[bold]{run_dir}[/bold]: {ev['n_cells']} cells"
        + (f" in {ev['n_images']} images" if ev.get("n_images") is not None else "")
        + f"; scored {scope['n_cells_in_scope']} ({scope['cells']})"
    )
    rows = metric_rows(ev)
    if rows:
        table = Table(title="Headline metrics")
        for col, kw in (("task", {}), ("metric", {}), ("value", {"justify": "right"}), ("unit", {})):
            table.add_column(col, **kw)
        last = None
        for r in rows:
            if last is not None and r["section"] != last:
                table.add_section()
            table.add_row(r["section"] if r["section"] != last else "", r["metric"], r["value"], r["unit"])
            last = r["section"]
        out.print(table)
    cond = ev.get("conditions")
    if cond:
        ct = Table(title="Predictions per condition")
        ct.add_column("condition")
        ct.add_column("cells", justify="right")
        has_pa = any("median_pa" in s for s in cond["summaries"].values())
        if has_pa:
            ct.add_column("median E (Pa)", justify="right")
            ct.add_column("IQR (Pa)", justify="right")
        classes = (ev.get("predictions") or {}).get("classes") or []
        for c in classes:
            ct.add_column(f"% {c}", justify="right")
        for name, s in cond["summaries"].items():
            cells = [name, str(s["n_cells"])]
            if has_pa:
                cells += (
                    [f"{s['median_pa']:.0f}", f"{s['q25_pa']:.0f}–{s['q75_pa']:.0f}"]
                    if s.get("median_pa") is not None
                    else ["–", "–"]
                )
            frac = s.get("class_fraction") or {}
            cells += ["–" if frac.get(c) is None else f"{100 * frac[c]:.0f}" for c in classes]
            ct.add_row(*cells)
        out.print(ct)
        comp = cond.get("comparison")
        if comp:
            p = comp.get("p")
            ptxt = "–" if p is None else ("< 0.001" if p < 0.001 else f"{p:.3g}")
            out.print(f"{comp['test']} on predicted E: p {ptxt} (cells treated as independent)")
    for note in ev.get("notes", []):
        style = "yellow" if note != NO_TRUTH_SENTENCE else "bold yellow"
        err_console.print(f"[{style}]note:[/{style}] {note}")


@evaluate_app.command("run")
def run(
    run_dir: Path = typer.Argument(
        ..., help="Run folder written by 'mechanoscope predict' (cells.parquet, predict.json, crops.zarr)."
    ),
    figures: bool = typer.Option(True, "--figures/--no-figures", help="Also write RUN/figures/*.png."),
    all_cells: bool = typer.Option(False, "--all-cells", help="Score every cell, also those failing QC (needed for a table without a qc_pass column)."),
) -> None:
    """Score a run folder's predictions against the truth in its cell table.

    Classification (AUC, F1, accuracy, balanced accuracy, calibration) when the table
    has pred_prob_<class> and label columns; regression (percentage error, log
    correlation, Bland-Altman, interval coverage) when it has pred_stiffness_pa and
    stiffness_pa (Pa). With a split column only test cells are scored. Writes
    RUN/evaluation.json and RUN/figures/*.png.
    """
    from mechanoscope.pipeline.evaluation import evaluate_run

    with user_errors():
        ev = evaluate_run(run_dir, figures=figures, all_cells=all_cells)
    _print_evaluation(ev, run_dir)
    n_fig = len(ev.get("figures") or {})
    err_console.print(
        f"evaluation written to {run_dir / 'evaluation.json'}"
        + (f"; {n_fig} figure(s) in {run_dir / 'figures'}" if n_fig else "")
    )
