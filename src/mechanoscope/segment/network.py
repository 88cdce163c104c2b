"""Learned cell segmentation: a small U-Net predicting background / interior / boundary.

Why three classes
-----------------
The network predicts, per pixel, the probability of three classes: *background*,
*cell interior* and *cell boundary* (the outer ``boundary_width_px`` pixels of every
cell, including both sides of every contact line between touching cells). Where two
cells touch, the boundary class forms an explicit line that separates their
interiors, so every connected component of the thresholded interior map is one cell
and serves directly as a watershed marker. The alternative, foreground + distance map
(distance maxima as markers), needs an extra ``h``/min-distance parameter to decide
whether a saddle between two maxima means two cells, over-splits elongated or
irregular cells (spread fibroblasts, migrating cells) and under-splits cells that touch
along a long edge, where the distance map has no saddle; the boundary class is
learned from exactly those contact lines. A three-class softmax is also trained with
one well-behaved loss (Dice + cross-entropy) and blends linearly across tiles.

Pipeline
--------
1. Resample the image to the model's pixel size (``pixel_size_um`` in the model's
   config), so a model trained at 0.65 µm/px applies to images at 1.3 µm/px.
2. Normalise per image between two intensity percentiles (recorded in the model
   folder's ``normalization.json``).
3. Tiled inference (:func:`predict_logits_tiled`): overlapping tiles, linear blending,
   memory bounded by the tile size; the stitched map equals whole-image inference.
4. Instance extraction (:func:`probabilities_to_labels`): markers = connected
   components of ``p(interior) > interior_threshold``; marker-controlled watershed on
   ``1 - p(interior)`` inside the foreground ``p(interior) + p(boundary) >
   foreground_threshold``; foreground parts without a marker become their own cell;
   cells smaller than ``min_cell_area_um2`` are removed.
5. Back to the input's pixel grid: labels have the input image's shape.

The network is MONAI's :class:`~monai.networks.nets.UNet` with strides ``(1, 2, 2,
...)`` (the first level works at full resolution, which keeps thin boundaries
sharp) and *batch* normalisation: instance or group normalisation would make each
tile's output depend on the tile's statistics and cause seams.
"""

from __future__ import annotations

import os
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal

import numpy as np
from pydantic import ValidationError

from mechanoscope.io.images import Image
from mechanoscope.nn.device import select_device
from mechanoscope.nn.precision import inference_precision
from mechanoscope.nn.tiling import predict_logits_tiled, tiling_plan
from mechanoscope.segment.distance_targets import activate, maps_to_labels
from mechanoscope.segment.instances import probabilities_to_labels
from mechanoscope.segment.network_config import (
    ARCHITECTURE,
    CLASSES,
    TASK,
    SegmentationInferenceConfig,
    SegmentationTrainConfig,
    TrainProgress,
    _config_error,
    build_unet,
    receptive_field_radius_px,
)
from mechanoscope.segment.network_prep import (
    _as_2d_float,
    _check_pixel_size,
    normalize_percentile,
    resample_image,
    resample_labels,
    segmentation_targets,
)

# the learned segmenter's public names, wherever they live (training: mechanoscope.segment.network_train)
__all__ = ["CLASSES", "SegmentationInferenceConfig", "SegmentationTrainConfig", "SegmentationModel", "TrainProgress", "load_segmentation_model", "segment_network", "segment_network_with_confidence", "segmentation_confidence", "predict_probabilities", "predict_logits_tiled", "tiling_plan", "probabilities_to_labels", "segmentation_targets", "resample_image", "resample_labels", "normalize_percentile", "build_unet", "receptive_field_radius_px"]


# --------------------------------------------------------------------------- model
@dataclass
class SegmentationModel:
    """A trained segmentation network ready to apply.

    Attributes
    ----------
    net
        The MONAI U-Net in eval mode, on ``device``.
    config
        Its training config (incl. inference defaults).
    pixel_size_um
        Pixel size (µm) the model works at.
    normalization, metrics
        Contents of the model folder's JSON files.
    rf_radius_px
        Receptive-field radius of the network in pixels (at the model's pixel size).
    path
        Model folder it was loaded from, if any.
    """

    net: Any
    config: SegmentationTrainConfig
    pixel_size_um: float
    normalization: dict[str, Any]
    metrics: dict[str, Any] = field(default_factory=dict)
    rf_radius_px: int = 0
    path: Path | None = None
    device: Any = None
    _inference: tuple[Any, Any] | None = field(default=None, repr=False, compare=False)

    @property
    def stride(self) -> int:
        return self.config.stride

    def inference_net(self) -> Any:
        """``net`` prepared for inference: an eval copy with BatchNorm folded into the
        convolutions and, on the CPU, in channels-last memory format (a 752² forward of
        the built-in model on 2 loaded cores: 5.2 s plain, 4.4 s folded, 2.8 s folded +
        channels-last). Outputs equal ``net``'s in eval
        mode up to float rounding. Made once and remade when ``net``'s weights change
        (e.g. fine-tuning), so it never runs stale weights."""
        import torch

        from mechanoscope.nn.inference import fuse_for_inference

        key = (id(self.net), tuple((p.data_ptr(), p._version) for p in self.net.parameters()),
               tuple((b.data_ptr(), b._version) for b in self.net.buffers()))
        if self._inference is None or self._inference[0] != key:
            ready = fuse_for_inference(self.net)
            dev = next(self.net.parameters()).device
            if dev.type == "cpu":
                ready = ready.to(memory_format=torch.channels_last)
            self._inference = (key, ready)
        return self._inference[1]


def load_segmentation_model(
    folder: str | os.PathLike[str], *, device: Literal["auto", "cpu", "cuda"] | None = None
) -> SegmentationModel:
    """Load a segmentation model folder written by :func:`train_segmentation`.

    Parameters
    ----------
    folder
        Model folder.
    device
        Where to run it; default: the device of the stored inference config
        (``"auto"``).

    Raises
    ------
    ModelFolderError
        Missing files, a damaged folder, a folder of another task, or weights that do
        not fit the architecture. :class:`ModelSchemaError` for another schema version.
    """
    from mechanoscope.io.model_folder import ModelFolderError, load_model_folder

    mf = load_model_folder(folder)
    cfg = mf.config
    if cfg.get("task") != TASK:
        raise ModelFolderError(
            f"{mf.path}: is a {cfg.get('task')!r} model, not a segmentation model "
            f"({TASK!r}); pass a model trained with `mechanoscope segment train`"
        )
    if cfg.get("architecture", {}).get("name") != ARCHITECTURE:
        raise ModelFolderError(
            f"{mf.path}: architecture {cfg.get('architecture', {}).get('name')!r} is not "
            f"supported (expected {ARCHITECTURE!r})"
        )
    try:
        train_cfg = SegmentationTrainConfig.model_validate(cfg.get("train_config", {}))
    except ValidationError as exc:
        raise ModelFolderError(f"{mf.path}/config.json: {_config_error(exc, 'train_config')}") from exc
    net = build_unet(train_cfg)
    try:
        net.load_state_dict(mf.state_dict, strict=True)
    except RuntimeError as exc:
        raise ModelFolderError(
            f"{mf.path}/weights.safetensors: weights do not fit the architecture in "
            f"config.json ({str(exc).splitlines()[0]}); the folder is inconsistent, retrain"
        ) from exc
    dev = select_device(device or train_cfg.inference.device)
    net = net.to(dev).eval()
    rf = cfg.get("receptive_field_radius_px")
    if not isinstance(rf, int):
        rf = receptive_field_radius_px(net, train_cfg.stride)
    return SegmentationModel(
        net=net,
        config=train_cfg,
        pixel_size_um=float(cfg["pixel_size_um"]),
        normalization=mf.normalization,
        metrics=mf.metrics,
        rf_radius_px=int(rf),
        path=mf.path,
        device=dev,
    )


def _resolve_model(model: SegmentationModel | str | os.PathLike[str]) -> SegmentationModel:
    if isinstance(model, SegmentationModel):
        return model
    return load_segmentation_model(model)


def _model_grid_probabilities(
    image: np.ndarray,
    pixel_size_um: float,
    model: SegmentationModel,
    inference: SegmentationInferenceConfig,
    progress: Callable[[int, int], None] | None,
) -> np.ndarray:
    pct = tuple(model.normalization.get("percentiles", model.config.normalize_percentiles))
    img_m = resample_image(image, pixel_size_um, model.pixel_size_um)
    norm, _, _ = normalize_percentile(img_m, pct)  # type: ignore[arg-type]
    if inference.test_time_augmentation != "none" and model.config.representation == "hover":
        from mechanoscope.errors import ConfigError

        raise ConfigError(
            "test-time augmentation is not available for 'hover' models (their offset channels "
            "change sign under flips); set test_time_augmentation to 'none'"
        )
    logits = predict_logits_tiled(
        model.inference_net(),
        norm,
        tile_size_px=inference.tile_size_px,
        tile_overlap_px=inference.tile_overlap_px,
        rf_radius_px=model.rf_radius_px,
        stride=model.stride,
        device=model.device,
        tile_batch=inference.tile_batch,
        tta=inference.test_time_augmentation,
        precision=inference_precision(inference.precision),
        progress=progress,
    )
    return activate(logits, model.config.representation)


def _resize_prob(prob: np.ndarray, shape: tuple[int, int]) -> np.ndarray:
    from skimage.transform import resize

    if prob.shape[1:] == tuple(shape):
        return prob
    down = shape[0] < prob.shape[1] or shape[1] < prob.shape[2]
    return np.stack(
        [
            resize(p, shape, order=1, mode="edge", anti_aliasing=down, preserve_range=True)
            for p in prob
        ]
    ).astype(np.float32)


def predict_probabilities(
    image: np.ndarray | Image,
    *,
    pixel_size_um: float,
    model: SegmentationModel | str | os.PathLike[str],
    inference: SegmentationInferenceConfig | None = None,
    progress: Callable[[int, int], None] | None = None,
) -> np.ndarray:
    """Per-pixel class probabilities on the input's pixel grid.

    Parameters
    ----------
    image
        ``(Y, X)`` grey image (any numeric dtype) or an :class:`Image` with one plane.
    pixel_size_um
        Pixel size of ``image`` in µm.
    model
        A loaded model or a model folder.
    inference
        Tiling/threshold settings; default: those stored with the model.
    progress
        ``progress(done, total)`` over tiles.

    Returns
    -------
    np.ndarray
        ``(C, Y, X)`` float32 maps of the model's representation
        (:func:`mechanoscope.segment.distance_targets.activate`): for ``classes3`` the
        probabilities of :data:`CLASSES`; else p(foreground) then distance or offsets.
    """
    m = _resolve_model(model)
    px = _check_pixel_size(pixel_size_um, "image")
    arr = _as_2d_float(image, _where(image))
    inf = inference or m.config.inference
    prob = _model_grid_probabilities(arr, px, m, inf, progress)
    return _resize_prob(prob, arr.shape)


def _where(image: Any) -> str:
    if isinstance(image, Image) and image.path is not None:
        return str(image.path)
    return "image"


def segment_network(
    image: np.ndarray | Image,
    *,
    pixel_size_um: float,
    model: SegmentationModel | str | os.PathLike[str],
    inference: SegmentationInferenceConfig | None = None,
    progress: Callable[[int, int], None] | None = None,
) -> np.ndarray:

# the learned segmenter's public names, wherever they live (training: mechanoscope.segment.network_train)
    """Segment cells with a trained network.

    Parameters
    ----------
    image
        ``(Y, X)`` grey image (any numeric dtype) or an :class:`Image` with one plane.
    pixel_size_um
        Pixel size of ``image`` in µm; the image is resampled to the model's pixel
        size, so any magnification works.
    model
        A model from :func:`load_segmentation_model`, or a model folder.
    inference
        Tiling and instance-extraction settings; default: those stored with the model.
    progress
        ``progress(done, total)`` over tiles.

    Returns
    -------
    np.ndarray
        ``(Y, X)`` int32 labels of the input's shape: 0 = background, ``1..N`` cells.

    Raises
    ------
    AxesError
        ``image`` is not a single 2-D plane.
    ImageReadError
        ``image`` is empty, constant or holds NaN/inf.
    ConfigError
        Bad pixel size or tiling settings.
    """
    return _labels_and_maps(image, pixel_size_um, model, inference, progress)[0]


#: A pixel whose foreground probability lies in this open interval is *undecided*.
UNDECIDED_PROBABILITY = (0.25, 0.75)


def segmentation_confidence(prob: np.ndarray) -> dict[str, float]:
    """How sure the network was about one image: from its foreground probability map.

    ``certainty`` is the mean of ``|2 p − 1|`` over the pixels (1: every pixel decided,
    0: every pixel at 0.5); ``undecided_fraction`` the fraction of pixels with ``p`` in
    :data:`UNDECIDED_PROBABILITY`, both on the model's pixel grid. Measured with the
    built-in model on simulated bright-field fields of 512 px (8 each): imaged like its
    training images, undecided 0.02–0.03; at 1,000 photons/pixel 0.04–0.12 (the model
    before it, not trained on dim fields and drawing objects over their background:
    0.04–0.42). Small fields have more (256 px: 0.07–0.10 and 0.11–0.16). Confident
    mistakes (cells missed under very uneven illumination: 0.01–0.03) do not show here.
    """
    fg = np.asarray(prob[0], dtype=np.float32)
    lo, hi = UNDECIDED_PROBABILITY
    return {"certainty": round(float(np.mean(np.abs(2.0 * fg - 1.0))), 4),
            "undecided_fraction": round(float(np.mean((fg > lo) & (fg < hi))), 4)}


def segment_network_with_confidence(
    image: np.ndarray | Image,
    *,
    pixel_size_um: float,
    model: SegmentationModel | str | os.PathLike[str],
    inference: SegmentationInferenceConfig | None = None,
    progress: Callable[[int, int], None] | None = None,
) -> tuple[np.ndarray, dict[str, float]]:
    """:func:`segment_network` and the network's confidence on the image
    (:func:`segmentation_confidence`), from one pass."""
    labels, prob = _labels_and_maps(image, pixel_size_um, model, inference, progress)
    return labels, segmentation_confidence(prob)


def _labels_and_maps(image: Any, pixel_size_um: float, model: Any, inference: Any, progress: Any) -> tuple[np.ndarray, np.ndarray]:
    """Labels of the input's shape and the network's maps on the model's grid."""
    m = _resolve_model(model)
    px = _check_pixel_size(pixel_size_um, "image")
    arr = _as_2d_float(image, _where(image))
    inf = inference or m.config.inference
    if inf.min_structure_ratio > 0:
        from mechanoscope.segment.network_prep import structure_to_noise_ratio

        ratio = structure_to_noise_ratio(arr)
        if ratio < inf.min_structure_ratio:
            import warnings

            from mechanoscope.errors import MechanoscopeWarning

            warnings.warn(f"segment_network: no cells found in {_where(image)}: it shows no structure beyond camera noise "
                          f"(structure-to-noise ratio {ratio:.2f} < min_structure_ratio={inf.min_structure_ratio}); "
                          "an empty field? Lower min_structure_ratio if it does hold cells.", MechanoscopeWarning, stacklevel=3)
            from mechanoscope.segment.distance_targets import _N_OUT

            prob = np.zeros((_N_OUT[m.config.representation], *arr.shape), dtype=np.float32)
            if m.config.representation == "classes3":
                prob[0] = 1.0  # background, decided
            return np.zeros(arr.shape, dtype=np.int32), prob
    prob = _model_grid_probabilities(arr, px, m, inf, progress)
    kw = dict(
        rep=m.config.representation,
        foreground_threshold=inf.foreground_threshold,
        interior_threshold=inf.interior_threshold,
        min_cell_area_um2=inf.min_cell_area_um2,
    )
    if prob.shape[1:] == arr.shape:
        return maps_to_labels(prob, pixel_size_um=px, **kw), prob
    if px < m.pixel_size_um:
        # the input is finer than the model: extract on the input grid (smooth outlines)
        return maps_to_labels(_resize_prob(prob, arr.shape), pixel_size_um=px, **kw), prob
    # the input is coarser: extract where the boundaries are resolved, then sample down
    from skimage.segmentation import relabel_sequential

    lab = maps_to_labels(prob, pixel_size_um=m.pixel_size_um, **kw)
    lab = resample_labels(lab, arr.shape)
    lab, _, _ = relabel_sequential(lab)
    return lab.astype(np.int32), prob


