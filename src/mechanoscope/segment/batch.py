"""Segmenting many images into a run folder: classical or with a trained network.

One function, :func:`segment_images`, used by ``mechanoscope segment`` and the demo.
It writes ``OUT/labels/<stem>.tif`` (``<stem>`` is the image file's stem, which is how
``extract`` pairs labels with images) and records every image in the run folder's
``OUT/run.json`` (:class:`~mechanoscope.io.run_folder.RunFolder`, stage ``segment``:
method, settings, provenance and a status per image, rewritten after every image).
A re-run with the same settings skips the images whose status is ``done``, whose label
image exists and whose image file is unchanged, and redoes the others (an image a
killed run was writing is redone); different settings are refused unless
``overwrite`` (a run in which no image finished never blocks a corrected re-run). Any
error while reading, segmenting or writing one image is recorded (file, stage,
message) and the image skipped. ``OUT/segment.json`` is written at the end as a
summary for older readers (settings, provenance, per-image status).
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
from mechanoscope.errors import ImageReadError, MechanoscopeError, SkippedInputWarning, failure_message

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
        ``OUT/run.json``, the run's record.
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


#: Planes larger than this (pixels) are segmented by the classical pipeline block by block
#: (:func:`~mechanoscope.segment.blockwise.segment_classical_blockwise`: the same labels as
#: the whole-image pipeline, whose filters on a 20,000² image would need tens of GB).
BLOCKWISE_MIN_PIXELS = 4096 * 4096
BLOCKWISE_BLOCK_PX = 2048


def segment_with_confidence(segmenter: Callable[[np.ndarray, float], np.ndarray], arr: np.ndarray, px: float) -> tuple[np.ndarray, dict[str, float] | None]:
    """Labels, and the segmenter's confidence when it has one (learned models; None for the classical pipeline)."""
    with_confidence = getattr(segmenter, "with_confidence", None)
    if with_confidence is None:
        return np.asarray(segmenter(arr, px)), None
    labels, confidence = with_confidence(arr, px)
    return np.asarray(labels), confidence


#: Per-image run.json fields of :func:`segmentation_fields` (the confidence ones only for learned segmenters).
SEGMENTATION_FIELDS = ("covered_fraction", "segmentation_certainty", "segmentation_undecided_fraction")


def segmentation_fields(labels: np.ndarray, confidence: Mapping[str, float] | None) -> dict[str, float]:
    """What run.json records of one image's segmentation for quality control: the fraction of
    its pixels inside a cell and, for learned segmenters, the network's confidence."""
    out = {"covered_fraction": round(float(np.count_nonzero(labels)) / max(labels.size, 1), 6)}
    if confidence:
        out.update(segmentation_certainty=confidence["certainty"], segmentation_undecided_fraction=confidence["undecided_fraction"])
    return out


def build_segmenter(method: str, settings: Mapping[str, Any] | None = None, device: str | None = None) -> tuple[Callable[[np.ndarray, float], np.ndarray], dict, Any]:
    """A segmenter for ``method`` (``"classical"``, ``"builtin"`` — the model shipped with the package — or a segmentation model folder).

    Returns ``(segment, description, config)``: ``segment(array, pixel_size_um)`` turns a
    ``(H, W)`` plane into a label image; ``description`` says which method/model it is
    (written into run records); ``config`` is the validated settings object.
    """
    settings = dict(settings or {})
    if str(method).lower() == "classical":
        from mechanoscope.segment.classical import ClassicalSegmentationConfig, segment_classical

        cfg = validate_mapping(ClassicalSegmentationConfig, settings)

        def classical(arr: np.ndarray, px: float) -> np.ndarray:
            if arr.size > BLOCKWISE_MIN_PIXELS:  # same labels, memory bounded by the block (segment/blockwise.py)
                from mechanoscope.segment.blockwise import segment_classical_blockwise

                return segment_classical_blockwise(arr, pixel_size_um=px, config=cfg, block_px=BLOCKWISE_BLOCK_PX)
            return segment_classical(arr, pixel_size_um=px, config=cfg)

        return classical, {"method": "classical"}, cfg
    from mechanoscope.io.model_folder import sha256_file
    from mechanoscope.nn.precision import inference_precision
    from mechanoscope.segment.builtin_model import resolve_model_folder
    from mechanoscope.segment.network import SegmentationInferenceConfig, load_segmentation_model

    model_dir = resolve_model_folder(method)
    if not model_dir.exists():
        raise MechanoscopeError(
            f"--method {method!r}: not 'classical' or 'builtin' and no such model folder; pass "
            "--method classical, --method builtin or the folder written by `mechanoscope segment train`"
        )
    model = load_segmentation_model(model_dir, device=device)  # type: ignore[arg-type]
    merged = model.config.inference.model_dump()
    merged.update(settings)
    if device is not None:
        merged["device"] = device
    cfg = validate_mapping(SegmentationInferenceConfig, merged)
    cfg = cfg.model_copy(update={"precision": inference_precision(cfg.precision)})  # the one used goes into the run's settings
    info = {
        "method": "builtin" if str(method).lower() == "builtin" else "network",
        "model": str(model_dir.resolve()),
        "model_weights_sha256": sha256_file(model_dir / "weights.safetensors"),
        "model_pixel_size_um": model.pixel_size_um,
    }
    return NetworkSegmenter(model, cfg), info, cfg


class NetworkSegmenter:
    """``segment(plane, pixel_size_um) → labels`` with a learned model; ``with_confidence``
    also gives the network's confidence on the plane
    (:func:`~mechanoscope.segment.network.segmentation_confidence`), which runs record for
    segmentation quality control."""

    def __init__(self, model: Any, inference: Any) -> None:
        self.model = model
        self.inference = inference

    def __call__(self, arr: np.ndarray, px: float) -> np.ndarray:
        from mechanoscope.segment.network import segment_network

        return segment_network(arr, pixel_size_um=px, model=self.model, inference=self.inference)

    def with_confidence(self, arr: np.ndarray, px: float) -> tuple[np.ndarray, dict[str, float]]:
        from mechanoscope.segment.network import segment_network_with_confidence

        return segment_network_with_confidence(arr, pixel_size_um=px, model=self.model, inference=self.inference)


def segment_images(
    images: str | os.PathLike[str] | list,
    out: str | os.PathLike[str],
    *,
    method: str = "builtin",
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
    """Segment every image into ``out/labels/<stem>.tif`` and record it in ``out/run.json``.

    Parameters
    ----------
    images
        Image file, folder of images, or list of files.
    out
        Run folder.
    method
        ``"builtin"`` (default: the model shipped with the package), ``"classical"`` or the path of a segmentation model folder.
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
    from mechanoscope.io.atomic import check_output_folder_path, write_json
    from mechanoscope.io.images import image_paths, max_pixels_limit, write_label_image
    from mechanoscope.io.model_folder import provenance
    from mechanoscope.io.run_folder import RunFolder, file_fingerprint

    out = check_output_folder_path(out, "run folder (--out)")
    max_pixels_limit(max_pixels)  # a bad limit fails before any work
    paths = image_paths(images) if not isinstance(images, list) else [Path(p) for p in images]
    segment_one, method_info, cfg = build_segmenter(method, dict(settings or {}), device)
    record_settings = {**method_info, "config": cfg.model_dump(mode="json"), "pixel_size_um": pixel_size_um, "axes": axes, "channel": channel, "frame": frame}
    models = [{"path": method_info["model"], "sha256": method_info["model_weights_sha256"], "role": "segmentation"}] if "model" in method_info else None
    run = RunFolder.open(out, "segment", record_settings, overwrite=overwrite, foreign_outputs=_has_labels, legacy=_legacy_segment_record,
                         models=models, command=command)
    record_path = out / "segment.json"  # the summary older readers know; run.json is the record
    result = SegmentRunResult(record_path=run.record_path)

    stems: dict[str, Path] = {}
    for k, p in enumerate(paths):
        if p.stem in stems:
            msg = f"{p}: another image has the same name {p.stem!r} ({stems[p.stem]}); skipped"
            result.errors.append({"file": str(p), "stage": "input", "error": msg})
            run.mark_failed(f"{p.stem}#{k}", image=p, stage="input", error=msg, save=False)
            warnings.warn(msg, SkippedInputWarning, stacklevel=2)
        else:
            stems[p.stem] = p
    for k, (stem, path) in enumerate(stems.items()):
        target = run.label_path(stem)
        if run.finished(stem, inputs=file_fingerprint([path])):
            result.n_skipped += 1
            result.labels.append(target)
            result.images.append(path)
        else:
            t0 = time.perf_counter()
            stage = "read"
            try:
                fingerprint = file_fingerprint([path])
                arr, px = read_plane(path, pixel_size_um=pixel_size_um, axes=axes, channel=channel, frame=frame, max_pixels=max_pixels)
                stage = "segment"
                labels, confidence = segment_with_confidence(segment_one, arr, px)
                stage = "write"
                write_label_image(target, labels, pixel_size_um=px)
            except Exception as exc:  # one image never ends the batch: record it, go on
                msg = failure_message(exc, path)
                result.errors.append({"file": str(path), "stage": stage, "error": msg})
                run.mark_failed(stem, image=path, stage=stage, error=msg, seconds={"total": time.perf_counter() - t0})
                warnings.warn(f"skipped {msg}", SkippedInputWarning, stacklevel=2)
            else:
                result.n_done += 1
                result.labels.append(target)
                result.images.append(path)
                run.mark_done(stem, files=[target], image=path, inputs=fingerprint, seconds={"total": time.perf_counter() - t0},
                              labels=run.relative(target), n_cells=int(labels.max()), pixel_size_um=px, **segmentation_fields(labels, confidence))
        if progress:
            progress(k + 1, len(stems), path.name)
    run.save(complete=True)
    images_status = {key: {k: v for k, v in e.items() if k not in ("files", "inputs")} for key, e in run.images.items()}
    write_json({"settings": run.settings, "provenance": provenance(command=command if command is not None else sys.argv), "images": images_status,
                "n_failed": len(run.failed), "record": run.record_path.name}, record_path)
    return result


def _legacy_segment_record(out: Path) -> dict | None:
    """The segment section of an older run folder's ``segment.json`` (labels it lists are resumed)."""
    path = out / "segment.json"
    try:
        old = json.loads(path.read_text())
    except (OSError, ValueError):
        return None
    if not isinstance(old, dict) or not isinstance(old.get("images"), dict):
        return None
    images = {k: {**v, "files": [v["labels"]]} for k, v in old["images"].items() if isinstance(v, dict) and v.get("status") == "done" and "labels" in v}
    return {"settings": old.get("settings"), "images": images}


def _has_labels(out: Path) -> bool:
    return (out / "labels").is_dir() and any((out / "labels").iterdir())
