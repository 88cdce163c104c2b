"""``mechanoscope segment``: label images from images, classical or with a trained network.

Commands::

    mechanoscope segment run IMAGES --method classical|MODEL_FOLDER --out RUN
    mechanoscope segment IMAGES --method classical|MODEL_FOLDER --out RUN   (same as ``run``)
    mechanoscope segment train IMAGES MASKS --out MODEL [--epochs N ...]

``segment IMAGES ...`` works because the ``segment`` group forwards any first
argument that is not a sub-command name (``run``, ``train``) to ``run``; an image
folder literally named ``run`` or ``train`` needs the explicit ``segment run``.
"""

from __future__ import annotations

import sys
import warnings
from pathlib import Path
from typing import Any, Optional

import click
import typer
from rich.progress import (
    BarColumn,
    MofNCompleteColumn,
    Progress,
    TextColumn,
    TimeElapsedColumn,
    TimeRemainingColumn,
)
from rich.markup import escape
from typer.core import TyperGroup

from mechanoscope.cli._common import console, finish_batch, flag_given, user_errors

__all__ = ["register", "segment_app"]


class _SegmentGroup(TyperGroup):
    """A group that treats ``segment IMAGES ...`` as ``segment run IMAGES ...``."""

    def parse_args(self, ctx: click.Context, args: list[str]) -> list[str]:
        if args and args[0] not in self.commands and args[0] not in ("--help", "-h"):
            args = ["run", *args]
        return super().parse_args(ctx, args)


segment_app = typer.Typer(
    cls=_SegmentGroup,
    help=(
        "Segment cells into label images (classical or learned), or train the segmentation "
        "network. `mechanoscope segment IMAGES --method ... --out RUN` is short for "
        "`mechanoscope segment run ...`."
    ),
    no_args_is_help=True,
)


# --------------------------------------------------------------------------- run
@segment_app.command("run")
def run(
    images: Path = typer.Argument(..., help="Image file or folder of images (TIFF, OME-TIFF, PNG, OME-Zarr)."),
    method: str = typer.Option(
        "builtin", "--method", "-m",
        help="'builtin' (the segmentation model shipped with mechanoscope; see its MODEL_CARD.md), 'classical' "
             "(texture + watershed, no training) or the path of a model folder from `segment train`.",
    ),
    out: Path = typer.Option(..., "--out", "-o", help="Run folder: labels/<name>.tif and run.json (and segment.json, a summary) are written there."),
    pixel_size_um: Optional[float] = typer.Option(
        None, help="Pixel size in µm for all images (default: from each file's metadata)."
    ),
    axes: Optional[str] = typer.Option(None, help="Axes of the images when the files do not name them, e.g. CYX or TYX."),
    channel: Optional[int] = typer.Option(None, help="Channel (0-based) to segment in multichannel images."),
    frame: Optional[int] = typer.Option(None, help="Frame (0-based) to segment in time-lapse images."),
    cell_diameter_um: Optional[float] = typer.Option(
        None, help="Classical method: expected cell diameter in µm (sets its scales)."
    ),
    tile_size_px: Optional[int] = typer.Option(None, help="Model: tile edge length in pixels at the model's pixel size."),
    tile_overlap_px: Optional[int] = typer.Option(
        None, help="Model: tile overlap in pixels (default: automatic, seamless and equal to untiled inference)."
    ),
    min_cell_area_um2: Optional[float] = typer.Option(None, help="Model: remove cells smaller than this (µm²)."),
    test_time_augmentation: Optional[str] = typer.Option(
        None, help="Model: average the network over views of each tile: none (1 pass), mirror (2), dihedral (8); default: the model's."
    ),
    precision: Optional[str] = typer.Option(
        None, help="Model: fp32 or bf16 (faster on CPUs with native bfloat16); default $MECHANOSCOPE_INFERENCE_PRECISION or fp32."
    ),
    device: Optional[str] = typer.Option(None, help="Model: auto, cpu or cuda."),
    config: Optional[Path] = typer.Option(
        None,
        help=(
            "JSON/YAML file with settings: a ClassicalSegmentationConfig for --method classical, "
            "a SegmentationInferenceConfig for a model; flags given explicitly override it."
        ),
    ),
    overwrite: bool = typer.Option(
        False, help="Redo every image, also when --out holds labels from different settings."
    ),
    max_pixels: Optional[int] = typer.Option(
        None, min=1, help="Refuse images with more pixels than this, checked before reading (default 200000000 or $MECHANOSCOPE_MAX_PIXELS)."
    ),
) -> None:
    """Segment every image into a label image (0 = background, one id per cell).

    Writes OUT/labels/<name>.tif (with the image's pixel size) and OUT/run.json
    (method, settings, provenance, per-image status; OUT/segment.json repeats it).
    Re-running (also after a kill) skips the images it finished and redoes the others;
    a bad image is reported, recorded with its stage and skipped, and the command then
    exits with status 1.
    """
    from mechanoscope.config import read_config_mapping
    from mechanoscope.errors import SkippedInputWarning
    from mechanoscope.segment.batch import segment_images

    with user_errors():
        settings = read_config_mapping(config, "segmentation settings") if config else {}
        flags = {"cell_diameter_um": cell_diameter_um} if method.lower() == "classical" else {
            "tile_size_px": tile_size_px, "tile_overlap_px": tile_overlap_px, "min_cell_area_um2": min_cell_area_um2,
            "test_time_augmentation": test_time_augmentation, "precision": precision,
        }
        settings.update({k: v for k, v in flags.items() if v is not None})
        with warnings.catch_warnings(record=True) as caught, Progress(
            TextColumn("segmenting {task.description}"),
            BarColumn(),
            MofNCompleteColumn(),
            TimeElapsedColumn(),
            TimeRemainingColumn(),
            console=console,
            transient=True,
        ) as bar:
            warnings.simplefilter("always")
            task = bar.add_task("", total=None)

            def progress(done: int, total: int, name: str) -> None:
                bar.update(task, completed=done, total=total, description=name)

            result = segment_images(
                images, out, method=method, settings=settings, pixel_size_um=pixel_size_um, axes=axes,
                channel=channel, frame=frame, device=device, overwrite=overwrite, progress=progress, command=sys.argv,
                max_pixels=max_pixels,
            )
    seen = set()
    for w in caught:
        text = str(w.message)
        if text not in seen and not issubclass(w.category, SkippedInputWarning):  # those are listed below
            seen.add(text)
            console.print(f"[yellow]warning:[/yellow] {text}")
    for err in result.errors:
        console.print(f"[yellow]skipped:[/yellow] {escape(err['error'])}")
    finish_batch(
        len(result.errors),
        result.n_done + result.n_skipped + len(result.errors),
        result.record_path or out / "run.json",
        f"segmented {result.n_done} image(s) into {out / 'labels'}"
        + (f", {result.n_skipped} already done" if result.n_skipped else ""),
    )


# --------------------------------------------------------------------------- train
@segment_app.command("train")
def train(
    ctx: typer.Context,
    images: Path = typer.Argument(..., help="Image file or folder of training images."),
    masks: Path = typer.Argument(
        ...,
        help=(
            "Label image file or folder (0 = background, one id per cell), paired with the "
            "images by name: NAME.ext ↔ NAME.* or NAME_labels/_masks/_instances.*"
        ),
    ),
    out: Path = typer.Option(..., "--out", "-o", help="Model folder to write."),
    epochs: int = typer.Option(100, help="Maximum number of epochs."),
    batch_size: int = typer.Option(8, help="Patches per optimisation step."),
    patch_size_px: int = typer.Option(128, help="Training patch edge length in pixels at the model's pixel size."),
    patches_per_epoch: int = typer.Option(256, help="Random patches per epoch."),
    learning_rate: float = typer.Option(1e-3, help="AdamW learning rate."),
    validation_fraction: float = typer.Option(0.2, help="Fraction of the images held out for validation."),
    patience: int = typer.Option(15, help="Early stopping: epochs without a lower validation loss."),
    seed: int = typer.Option(0, help="Random seed; same inputs + seed → same model (on CPU)."),
    channels: str = typer.Option("16,32,64,128,256", help="U-Net feature channels per level, comma-separated."),
    model_pixel_size_um: Optional[float] = typer.Option(
        None, help="Pixel size (µm) the model works at (default: median of the training images)."
    ),
    pixel_size_um: Optional[float] = typer.Option(
        None, help="Pixel size in µm of all training images (default: from each file's metadata)."
    ),
    axes: Optional[str] = typer.Option(None, help="Axes of the images when the files do not name them."),
    channel: Optional[int] = typer.Option(None, help="Channel (0-based) of multichannel images to train on."),
    device: str = typer.Option("auto", help="auto, cpu or cuda."),
    config: Optional[Path] = typer.Option(
        None, help="JSON/YAML file with a SegmentationTrainConfig; flags given explicitly override it."
    ),
    overwrite: bool = typer.Option(False, help="Replace an existing model folder at --out."),
    init: Optional[str] = typer.Option(
        None, "--init",
        help=(
            "Fine-tune: start from this model folder, or 'builtin' for the model shipped with "
            "mechanoscope; its architecture, pixel size and normalisation are kept."
        ),
    ),
) -> None:
    """Train the segmentation network (a U-Net; from scratch or, with --init, fine-tuning a model).

    Writes the model folder OUT (config.json, weights.safetensors, normalization.json,
    metrics.json, provenance.json, MODEL_CARD.md, training_log.csv). Pairs that cannot
    be read are reported and skipped.
    """
    from mechanoscope.io.pairing import pair_images_and_labels
    from mechanoscope.config import read_config_mapping, validate_mapping
    from mechanoscope.errors import ConfigError, MechanoscopeError, failure_message
    from mechanoscope.io.images import read_label_image
    from mechanoscope.io.model_folder import check_output_folder
    from mechanoscope.segment.batch import read_plane
    from mechanoscope.segment.network import SegmentationTrainConfig
    from mechanoscope.segment.network_train import train_segmentation

    with user_errors():
        base = read_config_mapping(config, "training settings") if config else {}
        if "train_config" in base and "schema_version" in base:  # a model's config.json
            base = dict(base["train_config"])
        try:
            ch = tuple(int(c) for c in channels.split(",") if c.strip())
        except ValueError:
            raise ConfigError(f"--channels {channels!r}: expected comma-separated integers, e.g. 16,32,64,128") from None
        for name, key, value in (
            ("epochs", "epochs", epochs),
            ("batch_size", "batch_size", batch_size),
            ("patch_size_px", "patch_size_px", patch_size_px),
            ("patches_per_epoch", "patches_per_epoch", patches_per_epoch),
            ("learning_rate", "learning_rate", learning_rate),
            ("validation_fraction", "validation_fraction", validation_fraction),
            ("patience", "early_stopping_patience", patience),
            ("seed", "seed", seed),
            ("channels", "channels", ch),
            ("model_pixel_size_um", "pixel_size_um", model_pixel_size_um),
            ("device", "device", device),
        ):
            if config is None or flag_given(ctx, name):
                base[key] = value
        cfg = validate_mapping(SegmentationTrainConfig, base)
        check_output_folder(out, overwrite=overwrite)

        pairs, problems = pair_images_and_labels(images, masks)
        msgs = [p["error"] for p in problems]
        arrays, label_arrays, pxs, used = [], [], [], []
        for img_path, lab_path in pairs:
            try:
                arr, px = read_plane(img_path, pixel_size_um=pixel_size_um, axes=axes, channel=channel, frame=None)
                lab = read_label_image(lab_path).as_2d()
                if lab.shape != arr.shape:
                    raise MechanoscopeError(
                        f"{lab_path}: label image shape {lab.shape} differs from image {img_path} "
                        f"shape {arr.shape}"
                    )
            except Exception as exc:  # one bad pair never ends the data loading
                msgs.append(failure_message(exc, img_path))
                continue
            arrays.append(arr)
            label_arrays.append(lab)
            pxs.append(px)
            used += [img_path, lab_path]
        for m in msgs:
            console.print(f"[yellow]skipped:[/yellow] {m}")
        if not arrays:
            raise MechanoscopeError(
                f"{images}: no usable image/label pairs; check the file names and the messages above"
            )
        console.print(
            f"training on {len(arrays)} image(s) at "
            f"{cfg.pixel_size_um or float(sorted(pxs)[len(pxs) // 2]):g} µm/px"
        )
        with warnings.catch_warnings(record=True) as caught, Progress(
            TextColumn("training"),
            BarColumn(),
            MofNCompleteColumn(),
            TextColumn("{task.description}"),
            TimeElapsedColumn(),
            console=console,
            transient=True,
        ) as bar:
            warnings.simplefilter("always")
            task = bar.add_task("", total=cfg.epochs)

            def on_epoch(epoch: int, total: int, row: dict[str, Any]) -> None:
                val = f" val {row['val_loss']:.4f}" if row["val_loss"] != "" else ""
                bar.update(task, completed=epoch, description=f"loss {row['train_loss']:.4f}{val}")

            path = train_segmentation(
                arrays,
                label_arrays,
                pixel_sizes_um=pxs,
                config=cfg,
                out=out,
                progress=on_epoch,
                input_paths=used,
                command=sys.argv,
                overwrite=overwrite,
                init_from=init,
            )
    for w in caught:
        console.print(f"[yellow]warning:[/yellow] {w.message}")
    import json

    metrics = json.loads((path / "metrics.json").read_text())
    val = metrics.get("validation_scores") or {}
    extra = ""
    if val.get("ap_50") is not None:
        extra = f"; validation AP@0.5 {val['ap_50']:.3f}, Dice {val['dice']:.3f}"
    console.print(
        f"wrote model {path} (best epoch {metrics['best_epoch']} of {metrics['epochs_run']}"
        f"{extra})"
    )


def register(app: typer.Typer) -> None:
    """Add the ``segment`` verb (``run``, ``train``) to the main app."""
    app.add_typer(segment_app, name="segment")
