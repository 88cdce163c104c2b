"""Training the segmentation network: patches, augmentation, the training loop, threshold search on validation images, the model folder and its card."""

from __future__ import annotations

import csv
import io
import math
import os
import time
import warnings
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from mechanoscope.errors import (
    ConfigError,
    MechanoscopeError,
    MechanoscopeWarning,
)
from mechanoscope.io.images import Image
from mechanoscope.nn.device import select_device
from mechanoscope.nn.tiling import _round_up
from mechanoscope.nn.training import EarlyStopping, EpochRecord, fit_network
from mechanoscope.segment.distance_targets import maps_to_labels, representation_loss, representation_targets, threshold_grid
from mechanoscope.segment.network_augment import sample_batch as _sample_batch
from mechanoscope.segment.network_augment import validation_patches as _validation_patches
from mechanoscope.segment.network import (
    SegmentationModel,
    _where,
    predict_probabilities,
    segment_network,
)
from mechanoscope.segment.network_config import (
    CLASSES,
    TASK,
    SegmentationInferenceConfig,
    SegmentationTrainConfig,
    TrainProgress,
    _architecture,
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

__all__ = ["train_segmentation", "optimize_thresholds"]


# --------------------------------------------------------------------------- training
@dataclass
class _Prepared:
    image: np.ndarray  # normalised, model grid, float32
    target: np.ndarray  # (C, Y, X) float32 target of the representation
    labels: np.ndarray  # instance labels on the model grid
    lo: float
    hi: float


def _prepare(
    image: Any, labels: Any, px: float, cfg: SegmentationTrainConfig, target_px: float, i: int
) -> _Prepared:
    where = _where(image) if isinstance(image, Image) else f"training image {i}"
    arr = _as_2d_float(image, where)
    lab = labels.as_2d() if isinstance(labels, Image) else np.asarray(labels)
    if lab.shape != arr.shape:
        raise MechanoscopeError(
            f"{where}: image shape {arr.shape} differs from its label image shape "
            f"{lab.shape}; pair each image with its own mask"
        )
    if not np.issubdtype(lab.dtype, np.integer) or (lab.size and lab.min() < 0):
        raise MechanoscopeError(
            f"{where}: labels must be non-negative integer ids (0 = background), got {lab.dtype}"
        )
    img_m = resample_image(arr, px, target_px)
    lab_m = resample_labels(lab, img_m.shape)
    norm, lo, hi = normalize_percentile(img_m, cfg.normalize_percentiles)
    return _Prepared(norm, representation_targets(lab_m, cfg.representation, cfg.boundary_width_px), lab_m, lo, hi)


def _pad_to(a: np.ndarray, size: int) -> np.ndarray:
    ph, pw = max(0, size - a.shape[-2]), max(0, size - a.shape[-1])
    if ph == 0 and pw == 0:
        return a
    pad = [(0, 0)] * (a.ndim - 2) + [(0, ph), (0, pw)]
    return np.pad(a, pad, mode="reflect" if min(a.shape[-2:]) > 1 else "edge")


def _write_log(path: Path, rows: list[dict[str, Any]]) -> str:
    buf = io.StringIO()
    if rows:
        writer = csv.DictWriter(buf, fieldnames=list(rows[0]), lineterminator="\n")
        writer.writeheader()
        writer.writerows(rows)
    text = buf.getvalue()
    from mechanoscope.io.atomic import atomic_path

    with atomic_path(path) as tmp:
        tmp.write_text(text)
    return text


def _hash_array(a: np.ndarray) -> str:
    import hashlib

    h = hashlib.sha256()
    h.update(str((a.shape, a.dtype.str)).encode())
    h.update(np.ascontiguousarray(a).tobytes())
    return h.hexdigest()


#: candidates of the threshold search on the validation images (classes3; see distance_targets.threshold_grid)
THRESHOLD_GRID = threshold_grid("classes3")


def optimize_thresholds(
    model: SegmentationModel, images: list[Any], labels: list[Any], pxs: list[float]
) -> tuple[SegmentationInferenceConfig, dict[str, Any]]:
    """Instance-extraction settings with the best pooled AP@0.5 on held-out images.

    Probabilities are computed once per image; only the extraction is repeated over
    the representation's :func:`~mechanoscope.segment.distance_targets.threshold_grid` and two minimum areas (the configured one and a quarter of
    the median true cell area). Ties keep the configured defaults (tried first).
    """
    import itertools

    from mechanoscope.evaluate.segmentation import segmentation_scores
    from mechanoscope.evaluate.segmentation_pooled import aggregate_segmentation_scores

    trues = [lab.as_2d() if isinstance(lab, Image) else np.asarray(lab) for lab in labels]
    probs = [predict_probabilities(img, pixel_size_um=px, model=model) for img, px in zip(images, pxs)]
    areas = np.concatenate([np.bincount(t.ravel().astype(np.int64))[1:] * px * px for t, px in zip(trues, pxs)])
    areas = areas[areas > 0]
    default = model.config.inference
    min_areas = [default.min_cell_area_um2]
    if areas.size:
        min_areas.append(round(float(0.25 * np.median(areas)), 1))
    combos = [(default.interior_threshold, default.foreground_threshold, default.min_cell_area_um2)]
    rep = model.config.representation
    grid = threshold_grid(rep)
    combos += [c for c in itertools.product(grid["interior_threshold"], grid["foreground_threshold"], min_areas) if c not in combos]
    table = []
    for it, ft, ma in combos:
        per = [
            segmentation_scores(maps_to_labels(p, rep, pixel_size_um=px, interior_threshold=it, foreground_threshold=ft, min_cell_area_um2=ma), t)
            for p, t, px in zip(probs, trues, pxs)
        ]
        table.append({"interior_threshold": it, "foreground_threshold": ft, "min_cell_area_um2": ma, "val_ap_50": aggregate_segmentation_scores(per)["ap_50"]})
    best = max(range(len(table)), key=lambda k: (table[k]["val_ap_50"], -k))
    chosen = {k: table[best][k] for k in ("interior_threshold", "foreground_threshold", "min_cell_area_um2")}
    record = {"objective": "pooled AP@0.5 on the validation images", "chosen": table[best], "configured_default": table[0], "n_images": len(images)}
    return default.model_copy(update=chosen), record


def _validation_scores(
    model: SegmentationModel, images: list[Any], labels: list[Any], pxs: list[float]
) -> dict[str, Any]:
    """Instance scores on the validation images (needs mechanoscope.evaluate)."""
    try:
        from mechanoscope.evaluate.segmentation import segmentation_scores
        from mechanoscope.evaluate.segmentation_pooled import aggregate_segmentation_scores
    except ImportError:  # pragma: no cover - evaluate is part of the product
        return {}
    per = []
    for img, lab, px in zip(images, labels, pxs):
        pred = segment_network(img, pixel_size_um=px, model=model)
        true = lab.as_2d() if isinstance(lab, Image) else np.asarray(lab)
        per.append(segmentation_scores(pred, true))
    agg = aggregate_segmentation_scores(per)
    keys = ("n_images", "n_true", "n_pred", "ap_50", "ap_75", "ap_50_95", "f1_50",
            "precision_50", "recall_50", "pq", "sq", "dice", "jaccard")
    return {k: agg.get(k) for k in keys}


def _model_card(
    cfg: SegmentationTrainConfig, px: float, n_train: int, n_val: int, metrics: dict[str, Any]
) -> str:
    val = metrics.get("validation_scores") or {}

    def fmt(v: Any) -> str:
        return f"{v:.3f}" if isinstance(v, float) else str(v)

    lines = [
        "# Cell segmentation network (mechanoscope)",
        "",
        "**Task:** instance segmentation of cells in label-free (bright-field / phase-contrast) "
        f"images. Instance representation: `{cfg.representation}` (mechanoscope.segment.distance_targets); "
        "cells are watershed regions grown from marker components.",
        "",
        f"**Architecture:** MONAI UNet, channels {list(cfg.channels)}, "
        f"{cfg.num_res_units} residual unit(s) per level, batch normalisation, 1 input channel.",
        "",
        f"**Pixel size:** {px:g} µm/px. Images at other pixel sizes are resampled to it "
        "before prediction and the labels are returned on the input's grid.",
        "",
        f"**Normalisation:** per image, intensity percentiles {list(cfg.normalize_percentiles)} "
        "mapped to 0 and 1 (see normalization.json).",
        "",
        f"**Training data:** {n_train} training image(s), {n_val} validation image(s) "
        "(split by image). Provenance and input hashes: provenance.json.",
        "",
        "## Validation metrics",
        "",
        f"- best validation loss (Dice + cross-entropy): {fmt(metrics.get('best_val_loss'))} "
        f"at epoch {metrics.get('best_epoch')} of {metrics.get('epochs_run')}",
    ]
    for k in ("ap_50", "ap_75", "ap_50_95", "f1_50", "dice"):
        if k in val:
            lines.append(f"- {k}: {fmt(val[k])}")
    lines += [
        "",
        "## Intended use and limits",
        "",
        "Segmenting cells that look like the training images (modality, cell type, "
        "confluence, focus). Check a few predictions against your own images before "
        "trusting morphology or stiffness estimates built on them; retrain or fine-tune "
        "for other modalities. Validation metrics come from held-out images of the same "
        "data set and overstate performance on other data.",
        "",
    ]
    return "\n".join(lines)


def _init_model(init_from: Any) -> SegmentationModel | None:
    if init_from is None or isinstance(init_from, SegmentationModel):
        return init_from
    from mechanoscope.segment.builtin_model import resolve_model_folder
    from mechanoscope.segment.network import load_segmentation_model

    return load_segmentation_model(resolve_model_folder(init_from), device="cpu")


def train_segmentation(
    images: Sequence[np.ndarray | Image],
    labels: Sequence[np.ndarray | Image],
    *,
    pixel_sizes_um: float | Sequence[float],
    config: SegmentationTrainConfig | None = None,
    out: str | os.PathLike[str],
    progress: TrainProgress | None = None,
    input_paths: Sequence[str | os.PathLike[str]] | None = None,
    command: str | Sequence[str] | None = None,
    overwrite: bool = False,
    init_from: SegmentationModel | str | os.PathLike[str] | None = None,
    validation_indices: Sequence[int] | None = None,
    max_train_seconds: float | None = None,
) -> Path:
    """Train the segmentation network and write a model folder.

    Parameters
    ----------
    images
        ``(Y, X)`` grey images (any numeric dtype) or single-plane :class:`Image`\\ s.
    labels
        Instance label images of the same shapes (0 = background, one id per cell).
    pixel_sizes_um
        Pixel size in µm of every image, or one value for all.
    config
        Training parameters; defaults if ``None``.
    out
        Model folder to write (see :mod:`mechanoscope.io.model_folder`), plus
        ``training_log.csv`` (one row per epoch). While training, the log is kept
        up to date in ``<out>.partial/`` which is removed at the end.
    progress
        ``progress(epoch, epochs, record)`` after every epoch.
    input_paths
        Files the images and labels came from; their SHA-256 goes into
        ``provenance.json`` (else the arrays are hashed).
    command
        Command line recorded in the provenance (default ``sys.argv``).
    overwrite
        Replace an existing model folder at ``out``.
    init_from
        Fine-tune: start from this model's weights (a loaded model, a model folder, or
        ``"builtin"`` for the model shipped with the package). Its architecture,
        representation, pixel size, normalisation and inference defaults replace those
        of ``config``; the training settings of ``config`` apply.
    max_train_seconds
        No new epoch starts after this much training time (the epochs run are recorded
        in ``metrics.json``); ``None`` = no limit.
    validation_indices
        Images held out for validation (early stopping, threshold search); default: a
        seeded random ``validation_fraction`` of the images.

    Returns
    -------
    Path
        The model folder.

    Raises
    ------
    MechanoscopeError
        No images, mismatched counts/shapes, bad pixel sizes or labels.
    ConfigError
        Inconsistent configuration (e.g. patch size not a multiple of the stride).
    OutputFolderError
        ``out`` exists (and ``overwrite`` is false) or is not a model folder.
    """
    import torch

    from mechanoscope.io.model_folder import check_output_folder, save_model_folder
    from mechanoscope.io.model_folder import provenance as collect_provenance

    cfg = config or SegmentationTrainConfig()
    out = Path(out)
    images, labels = list(images), list(labels)
    if not images:
        raise MechanoscopeError("no training images given; pass at least one image and its labels")
    if len(images) != len(labels):
        raise MechanoscopeError(
            f"got {len(images)} images but {len(labels)} label images; pass one label image per image"
        )
    if isinstance(pixel_sizes_um, (int, float)):
        pxs = [float(pixel_sizes_um)] * len(images)
    else:
        pxs = list(pixel_sizes_um)
        if len(pxs) != len(images):
            raise MechanoscopeError(
                f"got {len(pxs)} pixel sizes for {len(images)} images; pass one per image or a single value"
            )
    pxs = [_check_pixel_size(p, f"training image {i}") for i, p in enumerate(pxs)]
    init = _init_model(init_from)
    if init is not None:
        keep = ("channels", "num_res_units", "representation", "normalize_percentiles", "boundary_width_px", "inference")
        cfg = cfg.model_copy(update={k: getattr(init.config, k) for k in keep} | {"pixel_size_um": init.pixel_size_um})
    if cfg.patch_size_px % cfg.stride:
        raise ConfigError(
            f"patch_size_px={cfg.patch_size_px} is not a multiple of the network's total "
            f"stride {cfg.stride} (channels {list(cfg.channels)}); use e.g. "
            f"{_round_up(cfg.patch_size_px, cfg.stride)}"
        )
    check_output_folder(out, overwrite=overwrite)
    target_px = float(cfg.pixel_size_um) if cfg.pixel_size_um else float(np.median(pxs))
    cfg = cfg.model_copy(update={"pixel_size_um": target_px})
    device = select_device(cfg.device)
    rng = np.random.default_rng(cfg.seed)

    prepared = [_prepare(im, lb, px, cfg, target_px, i) for i, (im, lb, px) in enumerate(zip(images, labels, pxs))]
    for d in prepared:
        d.image = _pad_to(d.image, cfg.patch_size_px)
        d.target = _pad_to(d.target, cfg.patch_size_px)

    n = len(images)
    order = rng.permutation(n)
    n_val = 0
    if cfg.validation_fraction > 0:
        if n >= 2:
            n_val = min(n - 1, max(1, int(round(cfg.validation_fraction * n))))
        else:
            warnings.warn(
                "only one training image: no image can be held out for validation, so early "
                "stopping uses the training loss; give more images for a real validation",
                MechanoscopeWarning,
                stacklevel=2,
            )
    val_idx = sorted(int(i) for i in order[:n_val])
    if validation_indices is not None:
        val_idx = sorted({int(i) for i in validation_indices})
        if any(not 0 <= i < n for i in val_idx) or len(val_idx) >= n:
            raise MechanoscopeError(f"validation_indices {val_idx} must name some, not all, of the {n} images")
    train_idx = [i for i in range(n) if i not in set(val_idx)]
    train_data = [prepared[i] for i in train_idx]
    val_data = [prepared[i] for i in val_idx]
    val_batch = _validation_patches(val_data, cfg, rng)

    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(cfg.seed)
        net = build_unet(cfg)
    if init is not None:
        net.load_state_dict({k: v.detach().cpu() for k, v in init.net.state_dict().items()})
    rf = receptive_field_radius_px(net, cfg.stride)
    net = net.to(device)
    if device.type == "cuda":
        torch.backends.cudnn.deterministic = True
        torch.backends.cudnn.benchmark = False
    loss_fn = representation_loss(cfg.representation)
    opt = torch.optim.AdamW(net.parameters(), lr=cfg.learning_rate, weight_decay=cfg.weight_decay)

    partial = out.with_name(out.name + ".partial")
    partial.mkdir(parents=True, exist_ok=True)
    log_path = partial / "training_log.csv"
    rows: list[dict[str, Any]] = []
    steps = int(math.ceil(cfg.patches_per_epoch / cfg.batch_size))

    def batches(epoch: int):
        for _ in range(steps):
            xb, yb = _sample_batch(train_data, cfg.batch_size, rng, cfg)
            yield torch.from_numpy(xb), torch.from_numpy(yb)

    def validate() -> dict[str, float]:
        total, count = 0.0, 0
        for b in range(0, len(val_batch[0]), cfg.batch_size):
            x = torch.from_numpy(val_batch[0][b : b + cfg.batch_size]).to(device)
            y = torch.from_numpy(val_batch[1][b : b + cfg.batch_size]).to(device)
            total += float(loss_fn(net(x), y)) * len(x)
            count += len(x)
        return {"val_loss": total / max(count, 1)}

    log_text = ""

    def on_epoch(rec: EpochRecord) -> None:
        nonlocal log_text
        val_loss = rec.validation.get("val_loss", float("nan"))
        row = {
            "epoch": rec.epoch,
            "train_loss": round(rec.train_loss, 6),
            "val_loss": round(val_loss, 6) if math.isfinite(val_loss) else "",
            "best": rec.improved,
            "learning_rate": cfg.learning_rate,
            "seconds": round(rec.seconds, 3),
        }
        rows.append(row)
        log_text = _write_log(log_path, rows)
        if progress is not None:
            progress(rec.epoch, cfg.epochs, dict(row))

    fit = fit_network(
        net, train_batches=batches, loss_fn=loss_fn, optimizer=opt, epochs=cfg.epochs, device=device,
        validate=validate if val_batch is not None else None,
        stopper=EarlyStopping(cfg.epochs, cfg.early_stopping_patience, count_after_fraction=0.0, min_delta=0.0),
        on_epoch=on_epoch,
        deadline=None if max_train_seconds is None else time.perf_counter() + float(max_train_seconds),
    )
    best_epoch, stopped_early = fit.best_epoch, fit.stopped_early
    best_loss = fit.records[best_epoch - 1].monitored if best_epoch else math.nan
    model = SegmentationModel(
        net=net, config=cfg, pixel_size_um=target_px, normalization={}, rf_radius_px=rf,
        device=device,
    )
    normalization = {
        "method": "percentile",
        "scope": "per_image",
        "percentiles": list(cfg.normalize_percentiles),
        "clip": False,
        "applied_after": "resampling to the model pixel size",
        "formula": "(x - p_low) / (p_high - p_low)",
        "input_channels": 1,
        "training_percentile_values": {
            "p_low_median": float(np.median([d.lo for d in prepared])),
            "p_high_median": float(np.median([d.hi for d in prepared])),
        },
    }
    model.normalization = normalization
    threshold_search = None
    if cfg.optimize_thresholds and val_idx:
        inf, threshold_search = optimize_thresholds(
            model, [images[i] for i in val_idx], [labels[i] for i in val_idx], [pxs[i] for i in val_idx]
        )
        cfg = cfg.model_copy(update={"inference": inf})
        model.config = cfg
    val_scores = _validation_scores(
        model, [images[i] for i in val_idx], [labels[i] for i in val_idx], [pxs[i] for i in val_idx]
    ) if val_idx else {}
    metrics = {
        "best_epoch": best_epoch,
        "best_val_loss": best_loss if val_batch is not None else None,
        "best_train_loss": best_loss if val_batch is None else None,
        "monitored": "val_loss" if val_batch is not None else "train_loss",
        "epochs_run": len(rows),
        "stopped_early": stopped_early,
        "final_train_loss": rows[-1]["train_loss"],
        "n_train_images": len(train_idx),
        "n_validation_images": len(val_idx),
        "validation_scores": val_scores,
        "threshold_search": threshold_search,
    }
    config_json = {
        "task": TASK,
        "architecture": _architecture(cfg),
        "classes": list(CLASSES),
        "input_channels": 1,
        "input_size_px": cfg.patch_size_px,
        "pixel_size_um": target_px,
        "receptive_field_radius_px": rf,
        "train_config": cfg.model_dump(mode="json"),
    }
    if input_paths is not None:
        inputs: Any = [Path(p) for p in input_paths]
    else:
        inputs = {f"image[{i}]": _hash_array(np.asarray(im.data if isinstance(im, Image) else im)) for i, im in enumerate(images)}
        inputs.update({f"labels[{i}]": _hash_array(np.asarray(lb.data if isinstance(lb, Image) else lb)) for i, lb in enumerate(labels)})
    prov = collect_provenance(
        seed=cfg.seed,
        command=command,
        inputs=inputs,
        extra={
            "initialised_from": str(init.path) if init is not None and init.path is not None else None,
            "training_images": n,
            "train_image_indices": train_idx,
            "validation_image_indices": val_idx,
            "input_pixel_sizes_um": pxs,
        },
    )
    save_model_folder(
        out,
        config=config_json,
        state_dict={k: v.detach().cpu() for k, v in net.state_dict().items()},
        normalization=normalization,
        metrics=metrics,
        provenance=prov,
        model_card=_model_card(cfg, target_px, len(train_idx), len(val_idx), metrics),
        extra_files={"training_log.csv": log_text},
        overwrite=overwrite,
    )
    import shutil

    shutil.rmtree(partial, ignore_errors=True)
    return out
