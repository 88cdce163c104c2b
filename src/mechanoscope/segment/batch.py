"""Segmenting many images into a run folder: classical or with a trained network.

One function, :func:`segment_images`, used by ``mechanoscope segment``, ``predict``
from raw images and the demo. It writes ``OUT/labels/<stem>.tif`` (``<stem>`` is the
image file's stem, which is how ``extract`` pairs labels with images) and
``OUT/segment.json``: method, settings, provenance and a status per image. Re-running
with the same settings skips images whose labels exist; different settings are
refused unless ``overwrite`` (a record in which no image finished never blocks a
corrected re-run); any error while reading, segmenting or writing one image is recorded
(file, stage, message) and the image skipped, and the record is rewritten after every
image so nothing finished is lost.
"""

from __future__ import annotations

import json
import os
import sys
import time
import warnings
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable, Mapping

import numpy as np

from mechanoscope.config import validate_mapping
from mechanoscope.errors import ImageReadError, MechanoscopeError, OutputFolderError, SkippedInputWarning, failure_message

__all__ = ["segment_images", "SegmentRunResult", "read_plane", "segmentation_plane", "build_segmenter", "MIN_IMAGE_SIZE_PX"]

MIN_IMAGE_SIZE_PX = 8
"""Smallest edge length (pixels) of an image that is segmented; smaller ones are an error."""


@dataclass
class SegmentRunResult:
    """What :func:`segment_images` did.

    Attributes
    ----------
    labels
        Label files written or found, in input order (failed images left out).
    images
        The image file of each entry of ``labels``.
    errors
        ``{"file", "stage", "error"}`` for every image that was skipped (``stage``:
        ``"input"``, ``"read"``, ``"segment"`` or ``"write"``).
    n_done, n_skipped
        Images segmented now / already segmented by an earlier run.
    record_path
        ``OUT/segment.json``.
    """

    labels: list[Path] = field(default_factory=list)
    images: list[Path] = field(default_factory=list)
    errors: list[dict] = field(default_factory=list)
    n_done: int = 0
    n_skipped: int = 0
    record_path: Path | None = None


def read_plane(path: str | os.PathLike[str], *, pixel_size_um: float | None = None, axes: str | None = None, channel: int | None = None, frame: int | None = None, max_pixels: int | None = None) -> tuple[np.ndarray, float]:
    """Read one 2-D plane (Y, X) to segment and its pixel size (µm).

    ``channel`` / ``frame`` pick a plane of multichannel / time-lapse files (an index
    out of range is an :class:`~mechanoscope.errors.AxesError`); an image that is
    still not 2-D, is smaller than :data:`MIN_IMAGE_SIZE_PX` on a side, has
    NaN/constant values, or whose header claims more than ``max_pixels`` values is a
    clear error naming the file.
    """
    from mechanoscope.io.images import read_image

    img = read_image(path, pixel_size_um=pixel_size_um, axes=axes, max_pixels=max_pixels)
    return segmentation_plane(img, channel=channel, frame=frame), float(img.pixel_size_um)  # type: ignore[arg-type]


def segmentation_plane(img: Any, *, channel: int | None = None, frame: int | None = None) -> np.ndarray:
    """The 2-D plane ``(Y, X)`` of an already read :class:`~mechanoscope.io.Image` to segment.

    The checks of :func:`read_plane` without reading: ``channel`` / ``frame`` select a
    plane (out of range: :class:`~mechanoscope.errors.AxesError`); a plane smaller than
    :data:`MIN_IMAGE_SIZE_PX` on a side or with NaN/constant values is an error naming
    the file.
    """
    from mechanoscope.io.images import check_image_values

    where = str(img.path) if img.path is not None else "image"
    index = {}
    if channel is not None and "C" in img.axes:
        index["C"] = channel
    if frame is not None and "T" in img.axes:
        index["T"] = frame
    if index:
        img = img.plane(**index)
    arr = img.as_2d()
    if min(arr.shape) < MIN_IMAGE_SIZE_PX:
        raise ImageReadError(
            f"{where}: image is only {arr.shape[0]} × {arr.shape[1]} pixels; segmentation needs at "
            f"least {MIN_IMAGE_SIZE_PX} × {MIN_IMAGE_SIZE_PX} (is this the right file?)"
        )
    check_image_values(arr, where)
    return arr


def build_segmenter(method: str, settings: Mapping[str, Any] | None = None, device: str | None = None) -> tuple[Callable[[np.ndarray, float], np.ndarray], dict, Any]:
    """A segmenter for ``method`` (``"classical"`` or a segmentation model folder).

    Returns ``(segment, description, config)``: ``segment(array, pixel_size_um)`` turns a
    ``(H, W)`` plane into a label image; ``description`` says which method/model it is
    (written into run records); ``config`` is the validated settings object.
    """
    settings = dict(settings or {})
    if str(method).lower() == "classical":
        from mechanoscope.segment.classical import ClassicalSegmentationConfig, segment_classical

        cfg = validate_mapping(ClassicalSegmentationConfig, settings)
        return (lambda arr, px: segment_classical(arr, pixel_size_um=px, config=cfg)), {"method": "classical"}, cfg
    from mechanoscope.io.model_folder import sha256_file
    from mechanoscope.segment.network import SegmentationInferenceConfig, load_segmentation_model, segment_network

    model_dir = Path(method)
    if not model_dir.exists():
        raise MechanoscopeError(
            f"--method {method!r}: not 'classical' and no such model folder; pass "
            "--method classical or the folder written by `mechanoscope segment train`"
        )
    model = load_segmentation_model(model_dir, device=device)  # type: ignore[arg-type]
    merged = model.config.inference.model_dump()
    merged.update(settings)
    if device is not None:
        merged["device"] = device
    cfg = validate_mapping(SegmentationInferenceConfig, merged)
    info = {
        "method": "network",
        "model": str(model_dir.resolve()),
        "model_weights_sha256": sha256_file(model_dir / "weights.safetensors"),
        "model_pixel_size_um": model.pixel_size_um,
    }
    return (lambda arr, px: segment_network(arr, pixel_size_um=px, model=model, inference=cfg)), info, cfg


def segment_images(
    images: str | os.PathLike[str] | list,
    out: str | os.PathLike[str],
    *,
    method: str = "classical",
    settings: Mapping[str, Any] | None = None,
    pixel_size_um: float | None = None,
    axes: str | None = None,
    channel: int | None = None,
    frame: int | None = None,
    device: str | None = None,
    overwrite: bool = False,
    progress: Callable[[int, int, str], None] | None = None,
    command: list[str] | str | None = None,
    max_pixels: int | None = None,
) -> SegmentRunResult:
    """Segment every image into ``out/labels/<stem>.tif`` and record it in ``out/segment.json``.

    Parameters
    ----------
    images
        Image file, folder of images, or list of files.
    out
        Run folder.
    method
        ``"classical"`` or the path of a segmentation model folder.
    settings
        Overrides of the method's config (``ClassicalSegmentationConfig`` fields, or
        ``SegmentationInferenceConfig`` fields on top of those stored with the model);
        unknown keys are an error.
    pixel_size_um, axes, channel, frame
        How to read the images (default: from each file's metadata).
    overwrite
        Redo every image, also when ``out`` holds labels from other settings.
    max_pixels
        Largest image (values per file) read; default
        :func:`~mechanoscope.io.images.max_pixels_limit`.
    progress
        ``progress(done, total, file_name)`` after each image.

    Returns
    -------
    SegmentRunResult
    """
    from mechanoscope.io.atomic import check_output_folder_path, make_output_folder, write_json
    from mechanoscope.io.images import image_paths, max_pixels_limit, write_label_image
    from mechanoscope.io.model_folder import provenance

    out = check_output_folder_path(out, "run folder (--out)")
    max_pixels_limit(max_pixels)  # a bad limit fails before any work
    paths = image_paths(images) if not isinstance(images, list) else [Path(p) for p in images]
    segment_one, method_info, cfg = build_segmenter(method, dict(settings or {}), device)
    record_settings = {**method_info, "config": cfg.model_dump(mode="json"), "pixel_size_um": pixel_size_um, "axes": axes, "channel": channel, "frame": frame}
    record_path = out / "segment.json"
    previous: dict[str, Any] = {}
    if record_path.is_file():
        try:
            previous = json.loads(record_path.read_text())
        except (OSError, ValueError):
            previous = {}
        finished = any(isinstance(v, dict) and v.get("status") == "done" for v in dict(previous.get("images") or {}).values())
        if not finished and not _has_labels(out):
            previous = {}  # no image finished: a corrected re-run simply starts afresh
        elif previous.get("settings") != record_settings and not overwrite:
            raise OutputFolderError(
                f"{out}: holds labels from a segmentation with different settings "
                f"(method {previous.get('settings', {}).get('method')!r}); use another "
                "--out, or pass --overwrite to redo every image with the new settings"
            )
    elif _has_labels(out) and not overwrite:
        raise OutputFolderError(
            f"{out}: has a labels/ folder but no segment.json, so it is not a segment run; "
            "use another --out or pass --overwrite"
        )
    make_output_folder(out / "labels", "labels folder")
    results: dict[str, Any] = dict(previous.get("images", {})) if not overwrite else {}
    record = {"settings": record_settings, "provenance": provenance(command=command if command is not None else sys.argv), "images": results}
    result = SegmentRunResult(record_path=record_path)

    stems: dict[str, Path] = {}
    for p in paths:
        if p.stem in stems:
            msg = f"{p}: another image has the same name {p.stem!r} ({stems[p.stem]}); skipped"
            result.errors.append({"file": str(p), "stage": "input", "error": msg})
            results[p.name] = {"image": str(p), "status": "failed", "stage": "input", "error": msg}
            warnings.warn(msg, SkippedInputWarning, stacklevel=2)
        else:
            stems[p.stem] = p
    for k, (stem, path) in enumerate(stems.items()):
        target = out / "labels" / f"{stem}.tif"
        if target.is_file() and not overwrite:
            result.n_skipped += 1
            result.labels.append(target)
            result.images.append(path)
            results.setdefault(stem, {"image": str(path), "labels": f"labels/{stem}.tif", "status": "done"})
        else:
            t0 = time.perf_counter()
            stage = "read"
            try:
                arr, px = read_plane(path, pixel_size_um=pixel_size_um, axes=axes, channel=channel, frame=frame, max_pixels=max_pixels)
                stage = "segment"
                labels = segment_one(arr, px)
                stage = "write"
                write_label_image(target, labels, pixel_size_um=px)
            except Exception as exc:  # one image never ends the batch: record it, go on
                msg = failure_message(exc, path)
                result.errors.append({"file": str(path), "stage": stage, "error": msg})
                results[stem] = {"image": str(path), "status": "failed", "stage": stage, "error": msg}
                warnings.warn(f"skipped {msg}", SkippedInputWarning, stacklevel=2)
            else:
                result.n_done += 1
                result.labels.append(target)
                result.images.append(path)
                results[stem] = {"image": str(path), "labels": f"labels/{stem}.tif", "status": "done", "n_cells": int(labels.max()), "pixel_size_um": px, "seconds": round(time.perf_counter() - t0, 3)}
            record["n_failed"] = sum(1 for v in results.values() if v.get("status") == "failed")
            write_json(record, record_path)
        if progress:
            progress(k + 1, len(stems), path.name)
    record["n_failed"] = sum(1 for v in results.values() if v.get("status") == "failed")
    write_json(record, record_path)
    return result


def _has_labels(out: Path) -> bool:
    return (out / "labels").is_dir() and any((out / "labels").iterdir())
