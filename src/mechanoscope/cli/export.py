"""``mechanoscope export``: a model folder as ONNX, TorchScript or a bioimage.io package."""

from __future__ import annotations

from enum import Enum
from pathlib import Path
from typing import List, Optional

import typer
from rich.markup import escape

from mechanoscope.cli._common import console, user_errors


class ExportFormat(str, Enum):
    onnx = "onnx"
    torchscript = "torchscript"
    bioimageio = "bioimageio"


def export(
    model: Path = typer.Argument(..., help="CNN model folder (from `mechanoscope train`)."),
    format: ExportFormat = typer.Option(..., "--format", "-f", help="onnx (.onnx file, runs with onnxruntime and `predict --model FILE.onnx`), torchscript (.pt file) or bioimageio (package folder, or a .zip)."),
    out: Path = typer.Option(..., "--out", "-o", help="File (onnx, torchscript) or package folder / .zip (bioimageio) to write."),
    overwrite: bool = typer.Option(False, help="Replace an existing file or package."),
    author: Optional[List[str]] = typer.Option(None, "--author", help="bioimageio: author name; repeat for several (default: mechanoscope)."),
    license: str = typer.Option("CC-BY-4.0", help="bioimageio: SPDX licence identifier of the model."),
    test: bool = typer.Option(True, "--test/--no-test", help="bioimageio: run bioimageio.core's model test on the package before writing it."),
) -> None:
    """Export a model; the export is checked against PyTorch before it is written.

    Every format holds all ensemble members (and the 8-view test-time augmentation
    when the model uses it) in one graph with a dynamic batch axis: normalised crops
    (batch, channel, y, x) → raw outputs (batch, member, output). The model folder's
    config and normalisation travel inside the file.
    """
    from mechanoscope.learn.export import export_model

    with user_errors():
        kwargs = {"authors": list(author) if author else None, "license": license, "test": test} if format is ExportFormat.bioimageio else {}
        with console.status(f"exporting {model} as {format.value}"):
            res = export_model(model, format.value, out, overwrite=overwrite, **kwargs)
    diffs = ", ".join(f"{k} {v:.2g}" for k, v in res.max_abs_diff.items())
    checked = f"; bioimage.io: {', '.join(f'{k} {v}' for k, v in res.validation.items())}" if res.validation else ""
    console.print(escape(f"exported {model} as {format.value} → {res.path} (largest difference to PyTorch: {diffs}{checked})"))


def register(app: typer.Typer) -> None:
    """Add the ``export`` verb."""
    app.command("export")(export)
