"""Segmenting many images into a run folder: classical or with a trained network."""

from __future__ import annotations

import os
import warnings
from pathlib import Path
from typing import Callable

from mechanoscope.errors import MechanoscopeError, MechanoscopeWarning
from mechanoscope.io import image_paths, read_image, write_label_image

__all__ = ["segment_images"]


def segment_images(
    images: str | os.PathLike[str] | list,
    labels_dir: str | os.PathLike[str],
    *,
    method: str = "classical",
    pixel_size_um: float | None = None,
    progress: Callable[[int, int], None] | None = None,
) -> tuple[list[Path], list[dict]]:
    """Segment every image and write ``labels_dir/<stem>.tif``.

    ``method`` is ``"classical"`` or the path of a segmentation model folder. Images
    whose label file already exists are skipped (re-running resumes). A bad image is
    reported (warning + returned error) and skipped.

    Returns
    -------
    (label paths written or found, errors as ``{"file", "error"}`` dicts)
    """
    paths = image_paths(images) if not isinstance(images, list) else [Path(p) for p in images]
    out = Path(labels_dir)
    out.mkdir(parents=True, exist_ok=True)
    if method == "classical":
        from mechanoscope.segment.classical import segment_classical

        def run(img):
            return segment_classical(img.as_2d(), pixel_size_um=img.pixel_size_um)
    else:
        from mechanoscope.segment.network import load_segmentation_model, segment_network

        model = load_segmentation_model(method)

        def run(img):
            return segment_network(img.as_2d(), pixel_size_um=img.pixel_size_um, model=model)

    done, errors = [], []
    for k, p in enumerate(paths):
        target = out / f"{p.name.split('.')[0]}.tif"
        if target.exists():
            done.append(target)
        else:
            try:
                img = read_image(p, pixel_size_um=pixel_size_um)
                write_label_image(target, run(img), pixel_size_um=img.pixel_size_um)
                done.append(target)
            except MechanoscopeError as exc:
                warnings.warn(f"skipped {p}: {exc}", MechanoscopeWarning, stacklevel=2)
                errors.append({"file": str(p), "error": str(exc)})
        if progress:
            progress(k + 1, len(paths))
    return done, errors
