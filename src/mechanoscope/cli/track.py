"""``mechanoscope track SOURCE --out OUT``: link the cells of a label-image series over time."""

from __future__ import annotations

from pathlib import Path
from typing import Optional

import typer
from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn

from mechanoscope.cli._common import console, typed_options, user_errors

__all__ = ["register", "track"]


def _load_source(source: Path, axes: str | None, pixel_size_um: float | None, progress=None):
    """Label series, pixel size, a cell table to carry (or None) and what was read."""
    from mechanoscope.errors import MissingPixelSizeError
    from mechanoscope.io.ctc import is_ctc_folder, read_ctc_folder
    from mechanoscope.track.labels import as_series, read_label_series

    cells_path, names = None, []
    if is_ctc_folder(source):
        labels, _tracks = read_ctc_folder(source)  # checks the track file (file and line on errors)
        series, px, what = as_series(labels), None, f"CTC folder {source}"
    else:
        folder = source / "labels" if (source / "labels").is_dir() else source
        if folder != source and (source / "cells.parquet").is_file():
            cells_path = source / "cells.parquet"
        series, px, names = read_label_series(folder, axes=axes, pixel_size_um=pixel_size_um, progress=progress)
        what = str(folder)
    px = pixel_size_um if pixel_size_um is not None else px
    if px is None:
        raise MissingPixelSizeError(f"{source}: the label images carry no pixel size; pass --pixel-size-um")
    return series, float(px), cells_path, what, names


def _read_intensity(source: Path, axes: str | None, shape: tuple[int, ...]):
    import numpy as np

    from mechanoscope.errors import TrackingError
    from mechanoscope.io.images import image_paths, read_image
    from mechanoscope.track.labels import frame_order

    paths = frame_order(image_paths(source))
    if len(paths) == 1:
        img = read_image(paths[0], axes=axes, require_pixel_size=False)
        data = np.moveaxis(img.data, img.axes.index("T"), 0) if "T" in img.axes else img.data[None]
    else:
        frames = [read_image(p, require_pixel_size=False).data for p in paths]
        data = np.stack(frames) if all(f.shape == tuple(shape[1:]) for f in frames) else None
    if data is None or data.shape != tuple(shape):
        raise TrackingError(f"{source}: intensity images do not match the label series of shape {tuple(shape)} (frames, rows, columns)")
    return data


def track(
    ctx: typer.Context,
    source: Path = typer.Argument(..., help="Label images: a folder of frames (sorted by name), one TYX stack, a folder with labels/ "
                                  "(a run folder or 'simulate timelapse' output; its cells.parquet predictions are carried), or a CTC folder (res_track.txt/man_track.txt + TIFFs)."),
    out: Path = typer.Option(..., "--out", "-o", help="Output folder (cells/lineage/trajectories/tracks.parquet, labels/, ctc/, track.json)."),
    pixel_size_um: Optional[float] = typer.Option(None, help="Pixel size in µm [default: from the files' metadata]."),
    expected_speed_um: float = typer.Option(4.0, "--expected-speed-um", help="Typical displacement of a cell between frames (µm); sets every distance left unset."),
    max_speed_um: Optional[float] = typer.Option(None, "--max-speed-um", help="Largest displacement linked between consecutive frames (µm) [default: 3 x expected speed]."),
    max_gap_frames: int = typer.Option(2, help="Most consecutive frames a cell may be missed and keep its track (0: no gap closing)."),
    cell_diameter_um: float = typer.Option(15.0, help="Typical cell diameter (µm); limits how far daughters may lie from their mother."),
    divisions: bool = typer.Option(True, "--divisions/--no-divisions", help="Detect divisions."),
    gap_divisions: bool = typer.Option(True, "--gap-divisions/--no-gap-divisions", help="Also find divisions whose daughters first appear after missed detections (up to --max-gap-frames; uses cell areas)."),
    area_weight: float = typer.Option(0.0, help="Weight of area change in the linking cost (0: position only)."),
    overlap_weight: float = typer.Option(0.0, help="Weight of mask overlap (1 - IoU) in the linking cost (0: off)."),
    intensity_weight: float = typer.Option(0.0, help="Weight of mean-intensity change in the linking cost (needs --images; 0: off)."),
    images: Optional[Path] = typer.Option(None, help="Intensity images of the series (a folder of frames or one stack, as the labels) for mean_intensity."),
    cells: Optional[Path] = typer.Option(None, help="Cell table (frame, cell_id = label in that frame) whose predictions (pred_stiffness_pa, …) go onto the tracks."),
    axes: Optional[str] = typer.Option(None, help="Axes of a single stack file, e.g. TYX."),
    frame_interval_min: Optional[float] = typer.Option(None, help="Minutes between frames (adds time_min and µm/min speeds)."),
    reference: Optional[Path] = typer.Option(None, help="CTC reference folder (man_track.txt + man_track*.tif, e.g. 01_GT/TRA) to score the tracks against (scores.json)."),
    config: Optional[Path] = typer.Option(None, help="JSON/YAML file with a TrackConfig; flags given explicitly override it."),
) -> None:
    """Track cells through a time series of label images: track ids, divisions, lineages, per-track series."""
    from mechanoscope.config import merge_config
    from mechanoscope.track import TrackConfig, track_label_series, write_track_outputs

    with user_errors():
        from mechanoscope.io.atomic import check_output_folder_path

        check_output_folder_path(out)
        flags = {
            "expected_speed_um": expected_speed_um, "max_speed_um": max_speed_um, "max_gap_frames": max_gap_frames,
            "cell_diameter_um": cell_diameter_um, "divisions": divisions, "gap_divisions": gap_divisions,
            "area_weight": area_weight, "overlap_weight": overlap_weight, "intensity_weight": intensity_weight,
        }
        cfg = merge_config(TrackConfig, config, flags, typed=typed_options(ctx, flags), what="tracking settings",
                           renames={"expected_speed_um": "expected_speed_um_per_frame", "max_speed_um": "max_distance_um"})
        with Progress(TextColumn("{task.description}"), BarColumn(), MofNCompleteColumn(), TimeElapsedColumn(),
                      console=console, transient=True) as bar:
            task = bar.add_task("reading label images", total=None)

            def stage(description: str):
                return lambda done, total: bar.update(task, description=description, completed=done, total=total)

            series, px, cells_path, what, names = _load_source(source, axes, pixel_size_um, stage("reading label images"))
            table = None
            if cells is not None or cells_path is not None:
                from mechanoscope.io.tables import read_table
                from mechanoscope.track import cells_of_frames

                table = cells_of_frames(read_table(cells if cells is not None else cells_path), names)
            intensity = _read_intensity(images, axes, series.shape) if images is not None else None
            result = track_label_series(series, px, cfg, cells=table, intensity=intensity, frame_interval_min=frame_interval_min,
                                        progress=lambda name, done, total: stage(name)(done, total), frame_names=names or None)
            folder = write_track_outputs(result, out, source=what, progress=stage("writing label images"))
        lin = result.lineage
        console.print(
            f"{series.shape[0]} frames, {len(result.cells)} cells → {len(lin)} tracks in {lin['lineage_id'].nunique()} lineages, "
            f"{int(lin['divides'].sum())} divisions ({result.division_repairs.get('gap_divisions', 0)} across missed detections), "
            f"{int((lin['n_missed_frames'] > 0).sum())} closed gaps"
        )
        if reference is not None:
            from mechanoscope.io.atomic import write_json
            from mechanoscope.io.ctc import read_ctc_folder
            from mechanoscope.metrics.tracking import tracking_scores

            ref_labels, ref_tracks = read_ctc_folder(reference)
            comp_labels, comp_tracks = result.ctc()
            scores = tracking_scores(ref_labels, ref_tracks, comp_labels, comp_tracks)
            write_json(scores, folder / "scores.json")
            c = scores["ctc"]
            console.print(
                f"against {reference}: TRA {c['TRA']:.4f}, DET {c['DET']:.4f}, LNK {c['LNK']:.4f}, "
                f"link F1 {scores['linking']['f1']:.4f}, division F1 {scores['divisions']['f1']:.4f}"
            )
    typer.echo(str(folder))


def register(app: typer.Typer) -> None:
    """Add the ``track`` verb to the main app."""
    app.command("track")(track)
