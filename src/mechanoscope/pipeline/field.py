"""One field of view → label image, cell table rows, crops and predictions.

:func:`process_field` is the one function that turns an already read
:class:`~mechanoscope.io.Image` into everything a run keeps of it. The image is
segmented, extracted and predicted from the same array: nothing is written and
nothing read back. The batch runner (:func:`~mechanoscope.pipeline.predict_run`),
the demo, a Dask runner or a viewer call it per field; memory is bounded by one
field (its image, labels and crops).
"""

from __future__ import annotations

import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from typing import Any

import numpy as np
import pandas as pd

from mechanoscope.errors import MechanoscopeError, failure_message
from mechanoscope.io.images import Image

__all__ = ["FieldResult", "FieldError", "process_field", "extract_config_for", "FIELD_STAGES"]

FIELD_STAGES = ("read", "segment", "extract", "predict")
"""Stages of :func:`process_field`, in order (``read``: choosing and checking the plane to segment)."""

Segmenter = Callable[[np.ndarray, float], np.ndarray]
"""``segment(plane (H, W), pixel_size_um) → label image (H, W)``, e.g. from
:func:`~mechanoscope.segment.batch.build_segmenter`."""


@dataclass
class FieldResult:
    """What :func:`process_field` made of one field of view.

    Attributes
    ----------
    image_id
        The field's name (``image_id`` column).
    labels
        ``(H, W)`` integer label image, 0 = background.
    table
        One row per cell: morphology, quality flags (``qc_pass`` …), crop columns and the
        ``pred_*`` columns of every model, in crop order.
    crops
        ``(N, C, P, P)`` float32 crops, row-aligned with ``table``.
    pixel_size_um
        Pixel size of the field (µm).
    seconds
        Wall time per stage (``segment``, ``extract``, ``predict``), in seconds.
    segmentation_confidence
        The learned segmenter's confidence on the field (``certainty``,
        ``undecided_fraction``; :func:`~mechanoscope.segment.network.segmentation_confidence`),
        None for segmenters without one (the classical pipeline).
    """

    image_id: str
    labels: np.ndarray
    table: pd.DataFrame
    crops: np.ndarray
    pixel_size_um: float
    seconds: dict[str, float] = field(default_factory=dict)
    segmentation_confidence: dict[str, float] | None = None


class FieldError(MechanoscopeError):
    """One field failed; ``stage`` (one of :data:`FIELD_STAGES`) says where, the message names the file.

    The original exception is chained (``__cause__``) and kept as ``original``.
    """

    def __init__(self, message: str, stage: str, original: BaseException | None = None) -> None:
        super().__init__(message)
        self.stage = stage
        self.original = original


def extract_config_for(models: Sequence[Any], extract_config: Any = None, *, pixel_size_um: float | None = None) -> Any:
    """The :class:`~mechanoscope.cells.extract.ExtractConfig` to extract for ``models``.

    The crop geometry (µm, pixels) and the mask channel are those the first CNN model
    was trained with; other settings come from ``extract_config`` (a config or a dict
    of its fields); ``pixel_size_um`` overrides the images' metadata.
    """
    from mechanoscope.cells.extract import ExtractConfig

    if isinstance(extract_config, ExtractConfig):
        fields = extract_config.model_dump()
    else:
        fields = dict(extract_config or {})
    cnn = next((m for m in models if m.config.get("model_type") == "cnn"), None)
    if cnn is not None:
        crop = dict(fields.get("crop", {}))
        crop.update(crop_size_um=cnn.config["crop_size_um"], crop_pixels=cnn.config["crop_pixels"], mask_channel="mask" in cnn.config["channels"])
        fields["crop"] = crop
    if pixel_size_um is not None:
        fields["pixel_size_um"] = pixel_size_um
    if isinstance(extract_config, ExtractConfig) and cnn is None and pixel_size_um is None:
        return extract_config
    return ExtractConfig.build(**fields)


def process_field(
    image: Image,
    *,
    image_id: str | None = None,
    segmenter: Segmenter,
    models: Sequence[Any] = (),
    extract_config: Any = None,
    batch_size: int = 256,
    channel: int | None = None,
    frame: int | None = None,
    device: str = "auto",
) -> FieldResult:
    """Segment, extract and predict one field of view.

    Parameters
    ----------
    image
        The field, read once (:func:`~mechanoscope.io.read_image`), with its pixel size.
    image_id
        Value of the ``image_id`` column; default: the file's stem.
    segmenter
        ``segment(plane, pixel_size_um) → labels`` (see
        :func:`~mechanoscope.segment.batch.build_segmenter`).
    models
        Loaded stiffness/phenotype models (:func:`~mechanoscope.learn.predict.load_stiffness_model`);
        their ``pred_*`` columns are added in order (a later model's columns replace
        an earlier one's of the same name). None: no prediction.
    extract_config
        :class:`~mechanoscope.cells.extract.ExtractConfig` (or a dict of its fields):
        crop geometry and channels must be the ones the CNN models expect.
    batch_size
        Crops per forward pass (≥ 1).
    channel, frame
        Plane to segment and extract from multichannel / time-lapse images.
    device
        ``auto``, ``cpu`` or ``cuda`` for the networks.

    Returns
    -------
    FieldResult

    Raises
    ------
    FieldError
        Anything that goes wrong, with the ``stage`` and a message naming the file.
    """
    from mechanoscope.cells.extract import extract_cells
    from mechanoscope.segment.batch import segment_with_confidence, segmentation_plane

    if not isinstance(batch_size, int) or batch_size < 1:
        raise MechanoscopeError(f"batch size must be a whole number of at least 1 crop, got {batch_size!r} (--batch-size)")
    cfg = extract_config_for(models, extract_config)
    where = str(image.path) if image.path is not None else f"image {image_id or image.name}"
    image_id = str(image_id if image_id is not None else image.name)
    seconds: dict[str, float] = {}
    stage = "read"
    try:
        if image.pixel_size_um is None:
            from mechanoscope.errors import MissingPixelSizeError

            raise MissingPixelSizeError(f"{where}: no pixel size known; pass --pixel-size-um (µm per pixel of your camera and objective)")
        px = float(image.pixel_size_um)
        index = {a: i for a, i in (("C", channel), ("T", frame)) if i is not None and a in image.axes}
        field_image = image.plane(**index) if index else image
        plane = segmentation_plane(field_image)
        stage = "segment"
        t = time.perf_counter()
        labels, confidence = segment_with_confidence(segmenter, plane, px)
        seconds["segment"] = time.perf_counter() - t
        stage = "extract"
        t = time.perf_counter()
        table, crops = extract_cells(field_image, labels, config=cfg, image_id=image_id)
        seconds["extract"] = time.perf_counter() - t
        stage = "predict"
        t = time.perf_counter()
        attrs = {"crop_size_um": cfg.crop.crop_size_um}
        for m in models:
            from mechanoscope.learn.predict import predict_cells

            pred = predict_cells(m, table, crops, channels=list(cfg.crop.channels), attrs=attrs, batch_size=batch_size, where=where, device=device)
            table = table.drop(columns=[c for c in pred.columns if c in table.columns]).join(pred)
        seconds["predict"] = time.perf_counter() - t
    except Exception as exc:  # the caller records it and goes on with the next field
        raise FieldError(failure_message(exc, where), stage, exc) from exc
    return FieldResult(image_id, labels, table, np.asarray(crops, dtype=np.float32), px, seconds, confidence)
