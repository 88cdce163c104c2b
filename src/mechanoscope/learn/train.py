"""Training of stiffness / phenotype models on single-cell crops (and the features baseline).

One entry point, :func:`train_model`, reads a run folder (cell table + crop store),
checks the target, splits cells **by group** (image, well, experiment) into
train / val / calibration / test, trains a CNN (or K for a deep ensemble) with
augmentation, class balancing and early stopping, calibrates (temperature scaling for
classes, split-conformal intervals for values) on the calibration cells, reports
metrics on the held-out test cells and writes a model folder.
"""

from __future__ import annotations

import csv
import io
import json
import os
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable

import numpy as np
import pandas as pd

from mechanoscope import __version__
from mechanoscope.errors import MechanoscopeError
from mechanoscope.learn.config import TrainConfig
from mechanoscope.learn.data import TrainingData, check_target, group_split, load_run, normalise_crops, resolve_task
from mechanoscope.learn.uncertainty import conformal_quantile, expected_calibration_error, fit_temperature, softmax_t
from mechanoscope.nn.inference import combine_ensemble, forward_tta
from mechanoscope.nn.inference import predict_batched as predict_outputs
from mechanoscope.nn.training import EarlyStopping

__all__ = ["train_model", "train_networks", "best_epochs", "EarlyStopping", "TrainResult", "ProgressFn", "forward_tta", "predict_outputs"]

ProgressFn = Callable[[str, int, int], None]
"""progress(stage, done, total)."""


@dataclass
class TrainResult:
    """What :func:`train_model` produced."""

    model_dir: Path
    metrics: dict
    split: pd.Series
    log: pd.DataFrame = field(default_factory=pd.DataFrame)
    seconds: float = 0.0


def _torch():
    import torch

    return torch


def _set_threads(n: int) -> None:
    torch = _torch()
    if n > 0:
        torch.set_num_threads(n)


def _batches(n: int, size: int):
    for s in range(0, n, size):
        yield slice(s, min(s + size, n))


def train_networks(
    x_train: np.ndarray,
    y_train: np.ndarray,
    x_val: np.ndarray,
    y_val: np.ndarray,
    *,
    task: str,
    n_outputs: int,
    config: TrainConfig,
    class_weights: np.ndarray | None = None,
    progress: ProgressFn | None = None,
    keep_epochs: list[int] | None = None,
) -> tuple[list, pd.DataFrame]:
    """Train ``config.ensemble_size`` networks; returns (networks at their best epoch, log).

    ``y`` are class indices (classification) or standardised targets (regression).

    ``keep_epochs`` switches to refitting: network ``k`` (same seed, hence the same
    initialisation and learning-rate schedule as without it) is trained for
    ``keep_epochs[k]`` epochs and the weights of that last epoch are kept, with no
    selection on ``x_val`` (which may be empty) and no time limit.
    """
    torch = _torch()
    from mechanoscope.learn.augment import augment_batch
    from mechanoscope.learn.networks import build_network
    from mechanoscope.nn.device import select_device
    from mechanoscope.nn.training import fit_network

    _set_threads(config.num_threads)
    dev = select_device(config.device)  # crops stay in host memory; each batch moves after augmentation
    nets, rows = [], []
    xt = torch.from_numpy(np.ascontiguousarray(x_train))
    xv = torch.from_numpy(np.ascontiguousarray(x_val))
    if task == "classification":
        yt = torch.from_numpy(y_train.astype(np.int64))
        yv = torch.from_numpy(y_val.astype(np.int64))
        w = torch.tensor(class_weights, dtype=torch.float32, device=dev) if class_weights is not None else None
        loss_fn = torch.nn.CrossEntropyLoss(weight=w)
        val_loss_fn = torch.nn.CrossEntropyLoss()
    else:
        yt = torch.from_numpy(y_train.astype(np.float32))
        yv = torch.from_numpy(y_val.astype(np.float32))

        def loss_fn(out, y):
            if config.loss == "gaussian":
                return torch.nn.functional.gaussian_nll_loss(out[:, 0], y, torch.exp(out[:, 1]).clamp_min(1e-4))
            return torch.nn.functional.mse_loss(out[:, 0], y)

        def val_loss_fn(out, y):
            return torch.nn.functional.mse_loss(out[:, 0], y)

    augment = config.augment.for_task(task)
    t_start = time.perf_counter()
    if keep_epochs is not None and len(keep_epochs) != config.ensemble_size:
        raise ValueError(f"keep_epochs needs one epoch count per network ({config.ensemble_size}), got {len(keep_epochs)}")
    stage = "refitting network" if keep_epochs is not None else "training network"
    total_epochs = config.epochs * config.ensemble_size
    for member in range(config.ensemble_size):
        seed = config.seed * 1000 + member
        torch.manual_seed(seed)
        gen = torch.Generator().manual_seed(seed)
        net = build_network(config.architecture, x_train.shape[1], n_outputs, width=config.width, input_pixels=int(x_train.shape[-1]), pooling=config.pooling_for(task)).to(dev)
        opt = torch.optim.AdamW(net.parameters(), lr=config.learning_rate, weight_decay=config.weight_decay)
        sched = torch.optim.lr_scheduler.OneCycleLR(opt, max_lr=config.learning_rate, total_steps=config.epochs * max(1, -(-len(xt) // config.batch_size)), pct_start=0.15)
        refit = keep_epochs is not None
        n_epochs = config.epochs if not refit else max(1, min(int(keep_epochs[member]), config.epochs))

        def batches(epoch: int, gen=gen):
            perm = torch.randperm(len(xt), generator=gen)
            for sl in _batches(len(xt), config.batch_size):
                idx = perm[sl]
                if len(idx) >= 2:
                    yield augment_batch(xt[idx], augment, gen), yt[idx]

        def validate(net=net) -> dict[str, float]:
            out_v = torch.cat([net(xv[sl].to(dev)).float().cpu() for sl in _batches(len(xv), 256)])
            acc = float((out_v.argmax(1) == yv).float().mean()) if task == "classification" else float("nan")
            return {"val_loss": float(val_loss_fn(out_v, yv)), "val_accuracy": acc}

        def on_epoch(rec, member=member) -> None:
            rows.append({"member": member, "epoch": rec.epoch, "train_loss": rec.train_loss, "val_loss": rec.monitored,
                         "val_accuracy": rec.validation.get("val_accuracy", float("nan")), "seconds": round(time.perf_counter() - t_start, 2)})
            if progress:
                progress(f"{stage} {member + 1}/{config.ensemble_size}", member * config.epochs + rec.epoch, total_epochs)

        fit_network(
            net, train_batches=batches, loss_fn=loss_fn, optimizer=opt, scheduler=sched, epochs=n_epochs, device=dev,
            validate=validate if len(xv) else None,
            stopper=None if refit else EarlyStopping(config.epochs, config.patience),
            keep_best=not refit,
            deadline=None if refit or not config.max_train_seconds else t_start + config.max_train_seconds * (member + 1) / config.ensemble_size,
            on_epoch=on_epoch,
        )
        nets.append(net.cpu())
    return nets, pd.DataFrame(rows)


def best_epochs(log: pd.DataFrame, n_members: int) -> list[int]:
    """The epoch (1-based) each network kept in a selection pass, by :class:`EarlyStopping`'s rule."""
    out = []
    for member in range(n_members):
        rows = log[log["member"] == member]
        best, epoch = np.inf, 1
        for e, v in zip(rows["epoch"], rows["val_loss"]):
            if v < best - 1e-6:
                best, epoch = v, int(e)
        out.append(epoch)
    return out


def _class_weights(y: np.ndarray, n: int) -> np.ndarray:
    counts = np.bincount(y, minlength=n).astype(float)
    w = counts.sum() / np.maximum(counts, 1) / n
    return w.astype(np.float32)


def _combine_regression(outs: np.ndarray, loss: str) -> tuple[np.ndarray, np.ndarray | None]:
    """Ensemble mean and spread (standardised units) from outputs (K, N, n_out): :func:`~mechanoscope.nn.inference.combine_ensemble`."""
    return combine_ensemble(outs, gaussian=loss == "gaussian")


def _metrics_classification(y_idx: np.ndarray, prob: np.ndarray, classes: list[str]) -> dict:
    from mechanoscope.evaluate.stiffness import classification_metrics

    y_names = np.array(classes, dtype=object)[y_idx]
    m = classification_metrics(y_names, prob, classes)
    m.pop("roc_curve", None)
    return m


def _metrics_regression(true: np.ndarray, pred: np.ndarray, lo: np.ndarray | None, hi: np.ndarray | None) -> dict:
    from mechanoscope.evaluate.stiffness import regression_metrics

    return regression_metrics(true, pred, lo, hi)


def _model_card(cfg: dict, metrics: dict, n_split: dict) -> str:
    task = cfg["task"]
    lines = [
        f"# mechanoscope {task} model: `{cfg['target']}`",
        "",
        f"- Model type: {cfg['model_type']} ({cfg.get('architecture', 'gradient boosting on morphology')})",
        f"- Input: single-cell crops of {cfg.get('crop_size_um')} µm ({cfg.get('crop_pixels')} px, "
        f"{cfg.get('pixel_size_um_of_crop')} µm/px), channels {cfg.get('channels')}" if cfg["model_type"] == "cnn" else f"- Input: morphology columns {cfg.get('feature_columns')}",
        f"- Classes: {cfg.get('classes')}" if task == "classification" else f"- Target unit: {cfg.get('target_unit')} (learned on log10)",
        f"- Cells per split: {n_split}",
        f"- Ensemble size: {cfg.get('ensemble_size', 1)}",
        *([f"- Refitted on training + validation cells ({metrics['refit']['cells']} cells; epochs per network {metrics['refit']['epochs_per_network']})"] if "refit" in metrics else []),
        "",
        "## Held-out test metrics (images never seen in training)",
        "",
        "```json",
        json.dumps(metrics.get("test", {}), indent=2, default=str),
        "```",
        "",
        "## Intended use and limits",
        "",
        "Predicts per-cell stiffness from label-free images acquired like the training images",
        "(same modality, similar optics; crops are resampled to the model's pixel size).",
        "Predictions outside the range of the training targets, on other cell types or",
        "imaging conditions are extrapolations: check against a few AFM measurements.",
        "Uncertainty: calibrated class probabilities (temperature scaling) or split-conformal",
        f"intervals at {cfg.get('interval_level')} nominal coverage, calibrated on held-out images.",
    ]
    return "\n".join(lines) + "\n"


def _domain_reference_files(net, x_all: np.ndarray, channels: list[str], fit_rows: np.ndarray, masks: dict, refit: bool, *, sub_groups: np.ndarray,
                            table: pd.DataFrame, raw_crops: np.ndarray, contrast_scale: float) -> dict:
    """``domain.json`` + ``domain.safetensors`` (:mod:`mechanoscope.learn.domain`), or {} with a warning.

    Crop level: reference = the cells the weights learnt from; calibration = the
    held-out cells the weights never saw (validation + calibration + test images;
    calibration + test after a refit: the domain thresholds do not touch the test
    metrics); the images' median scores over every cell of those images. Image level
    (:mod:`mechanoscope.learn.domain_image`, no network involved): every cell of every
    image, calibrated leave-one-image-out.
    """
    import warnings

    from mechanoscope.errors import MechanoscopeWarning
    from mechanoscope.learn.data import crop_background
    from mechanoscope.learn.domain import crop_statistics, fit_domain_reference, penultimate_features
    from mechanoscope.learn.domain_image import fit_image_reference, image_statistics

    # every cell the weights never learnt from (the test cells too: the domain thresholds do not touch the test metrics)
    held = np.concatenate([masks["calibration"], masks["test"]]) if refit else np.concatenate([masks["val"], masks["calibration"], masks["test"]])
    image_ref = None
    if "image_id" in table.columns:
        ids = table["image_id"].astype(str)
        ref_images = set(ids.iloc[np.concatenate([masks[k] for k in ("train", "val", "calibration", "test")])])
        rows = np.flatnonzero(ids.isin(ref_images).to_numpy())
        image_ref = fit_image_reference(image_statistics(table.iloc[rows], crop_background(raw_crops[rows]) if len(rows) else None,
                                                         crop_statistics(x_all[rows], channels)[:, 0] * contrast_scale if len(rows) else None),
                                        images="training + validation + calibration + test")
    # the images' median scores are calibrated on EVERY cell of the held-out images (unlabelled and QC-failing ones too), as prediction scores a new image
    img_ids = table["image_id"].astype(str).to_numpy() if "image_id" in table.columns else np.asarray(sub_groups).astype(str)
    img_rows = np.flatnonzero(np.isin(img_ids, np.unique(img_ids[held])))
    try:
        ref = fit_domain_reference(
            penultimate_features(net, x_all[fit_rows]), crop_statistics(x_all[fit_rows], channels),
            penultimate_features(net, x_all[held]), crop_statistics(x_all[held], channels), sub_groups[held],
            channels=channels, held_out_splits="calibration + test" if refit else "val + calibration + test", image_reference=image_ref,
            image_cells=(penultimate_features(net, x_all[img_rows]), crop_statistics(x_all[img_rows], channels), img_ids[img_rows]))
    except MechanoscopeError as exc:
        warnings.warn(f"no applicability-domain reference written: {exc}; predictions of this model will carry no domain check", MechanoscopeWarning, stacklevel=3)
        return {}
    return ref.to_files()


def _reuse_split(source: str, groups: np.ndarray, fresh: np.ndarray) -> np.ndarray:
    """Take the split of every group listed in ``source`` (model folder or split.json)."""
    p = Path(source)
    p = p / "split.json" if p.is_dir() else p
    if not p.exists():
        raise MechanoscopeError(f"{source}: no split.json to reuse; pass a model folder trained by mechanoscope")
    listed = json.loads(p.read_text()).get("groups", {})
    where = {g: name for name, gs in listed.items() for g in gs}
    return np.array([where.get(g, f) for g, f in zip(groups, fresh)], dtype=object)


def train_model(
    run_dir: str | os.PathLike[str] | TrainingData,
    config: TrainConfig,
    out: str | os.PathLike[str],
    *,
    overwrite: bool = False,
    progress: ProgressFn | None = None,
    command: str | None = None,
) -> TrainResult:
    """Train a model on a run folder and write a model folder to ``out``.

    Parameters
    ----------
    run_dir
        Run folder with ``cells.parquet`` + ``crops.zarr`` (or loaded :class:`TrainingData`).
    config
        :class:`TrainConfig`.
    out
        Model folder to create.

    Returns
    -------
    TrainResult
        Model folder path, metrics (val/calibration/test), the split of every row.
    """
    from mechanoscope.io.model_folder import check_output_folder, provenance, save_model_folder

    t0 = time.perf_counter()
    check_output_folder(out, overwrite=overwrite)
    data = run_dir if isinstance(run_dir, TrainingData) else load_run(run_dir, with_crops=config.model_type == "cnn")
    table = data.table.reset_index(drop=True)
    task = resolve_task(table, config.target, config.task)
    # record the augmentation and pooling actually used (task defaults filled in)
    config = config.model_copy(update={"augment": config.augment.for_task(task), "pooling": config.pooling_for(task)})
    usable, classes = check_target(table, config.target, task, min_cells_per_class=config.min_cells_per_class)
    if config.qc_only:
        if "qc_pass" not in table.columns:
            where = f"{run_dir}/cells.parquet" if not isinstance(run_dir, TrainingData) else "the cell table"
            raise MechanoscopeError(
                f"{where} has no qc_pass column, so cells that fail quality control cannot be left "
                "out; make the table with `mechanoscope extract` (which adds qc_pass), add the "
                "column yourself, or set qc_only: false in a --config file to train on every cell"
            )
        usable = usable & table["qc_pass"].fillna(False).to_numpy(dtype=bool)
    if config.group_column not in table.columns:
        raise MechanoscopeError(f"group column {config.group_column!r} is not in the cell table; pass --group-column with one of {list(table.columns)}")
    if task == "classification":
        # re-check class counts after QC filtering
        check_target(table[usable], config.target, task, min_cells_per_class=config.min_cells_per_class)
    idx = np.flatnonzero(usable)
    sub = table.iloc[idx]
    strat = sub[config.target].astype(str).to_numpy() if task == "classification" else None
    split_sub = group_split(sub[config.group_column].to_numpy(), val_fraction=config.val_fraction, calibration_fraction=config.calibration_fraction, test_fraction=config.test_fraction, seed=config.seed, stratify=strat)
    if config.split_from:
        split_sub = _reuse_split(config.split_from, sub[config.group_column].astype(str).to_numpy(), split_sub)
    split = pd.Series("unused", index=table.index, dtype=object)
    split.iloc[idx] = split_sub
    masks = {name: idx[split_sub == name] for name in ("train", "val", "calibration", "test")}
    n_split = {k: int(len(v)) for k, v in masks.items()}
    refit = bool(config.refit and len(masks["val"]))
    if refit and config.model_type == "cnn" and not len(masks["calibration"]):
        raise MechanoscopeError("refit learns from the validation cells, so calibration (temperature, conformal intervals) needs its own held-out images: set calibration_fraction > 0 or turn refit off")
    # the cells the final model learns from: the training cells, plus the validation cells on a refit
    fit_rows = np.concatenate([masks["train"], masks["val"]]) if refit else masks["train"]
    refit_info: dict = {"epochs_per_network": None, "cells": int(len(fit_rows))}

    if task == "classification":
        cls_index = {c: i for i, c in enumerate(classes)}
        y_all = np.full(len(table), -1, dtype=np.int64)
        y_all[idx] = [cls_index[str(v)] for v in sub[config.target]]
        n_out = len(classes)
        if len(np.unique(y_all[masks["train"]])) < len(classes):
            raise MechanoscopeError("the training split lacks a class; add images of every class or lower the held-out fractions")
    else:
        raw = table[config.target].to_numpy(dtype=float)
        log_t = config.log_target or config.target.endswith("_pa")
        yt = np.log10(raw) if log_t else raw.copy()
        mean, std = float(np.mean(yt[masks["train"]])), float(np.std(yt[masks["train"]]) or 1.0)
        y_all = (yt - mean) / std
        n_out = 2 if config.loss == "gaussian" else 1

    cfg_out: dict = {
        "task": task,
        "target": config.target,
        "model_type": config.model_type,
        "classes": classes,
        "target_unit": ("Pa" if config.target.endswith("_pa") else None) if task == "regression" else None,
        "log_target": bool(task == "regression" and (config.log_target or config.target.endswith("_pa"))),
        "interval_level": config.interval_level,
        "ensemble_size": config.ensemble_size,
        "train_config": config.model_dump(mode="json"),
    }
    normalization: dict = {}
    log = pd.DataFrame()
    state: dict = {}
    if config.model_type == "features":
        from mechanoscope.learn.features import FeatureModel, feature_columns

        cols = feature_columns(table)
        fm = FeatureModel(task=task, columns=cols, seed=config.seed, n_classes=len(classes) if classes else 0)
        fm.fit(table.iloc[fit_rows], y_all[fit_rows])
        raw_out = {k: fm.raw_outputs(table.iloc[v]) for k, v in masks.items()}
        state = fm.state_tensors()
        cfg_out.update({"feature_columns": cols, "architecture": "hist_gradient_boosting"})
    else:
        torch = _torch()
        channels = list(config.channels)
        if "mask" in channels and "mask" not in data.channels:
            channels = [c for c in channels if c != "mask"]
        # relative contrast of every crop once; its std on the training crops sets the scale
        x_all = normalise_crops(data.crops, data.channels, channels, 1.0)
        contrast_scale = 1.0
        if "intensity" in channels and len(masks["train"]):
            k = channels.index("intensity")
            contrast_scale = float(np.std(x_all[masks["train"], k])) or 1.0
            x_all[:, k] /= contrast_scale
        normalization = {"method": "relative_contrast", "description": "intensity → (I / I_background − 1) / contrast_scale; I_background = median of the crop border; mask channels unchanged", "contrast_scale": contrast_scale, "channels": channels}
        cw = _class_weights(y_all[masks["train"]], n_out) if task == "classification" and config.balance_classes else None
        nets, log = train_networks(x_all[masks["train"]], y_all[masks["train"]], x_all[masks["val"]], y_all[masks["val"]], task=task, n_outputs=n_out, config=config, class_weights=cw, progress=progress)
        if refit:
            # same initialisations, epochs chosen above, training + validation cells
            keep = best_epochs(log, config.ensemble_size)
            cw_fit = _class_weights(y_all[fit_rows], n_out) if cw is not None else None
            nets, log_refit = train_networks(x_all[fit_rows], y_all[fit_rows], x_all[:0], y_all[:0], task=task, n_outputs=n_out, config=config, class_weights=cw_fit, progress=progress, keep_epochs=keep)
            log_refit["val_loss"] = np.nan  # no held-out cells in this pass
            log = pd.concat([log.assign(**{"pass": "select"}), log_refit.assign(**{"pass": "refit"})], ignore_index=True)
            refit_info["epochs_per_network"] = keep
        # outputs on the held-out splits only (training-set outputs are never used)
        raw_out = {k: predict_outputs(nets, x_all[v], tta=config.tta) for k, v in masks.items() if k != "train"}
        domain_files = _domain_reference_files(nets[0], x_all, channels, fit_rows, masks, refit, sub_groups=table[config.group_column].astype(str).to_numpy(),
                                               table=table, raw_crops=data.crops, contrast_scale=contrast_scale)
        for k, net in enumerate(nets):
            for name, tensor in net.state_dict().items():
                state[f"member{k}.{name}"] = tensor
        cfg_out.update({
            "architecture": config.architecture,
            "width": config.width,
            "pooling": config.pooling,  # resolved for the task above
            "n_outputs": n_out,
            "in_channels": len(channels),
            "channels": channels,
            "crop_size_um": float(data.attrs.get("crop_size_um", np.nan)),
            "crop_pixels": int(data.attrs.get("crop_pixels", data.crops.shape[-1])),
            "pixel_size_um_of_crop": float(data.attrs.get("pixel_size_um_of_crop", np.nan)),
            "loss": config.loss if task == "regression" else "cross_entropy",
            "tta": config.tta,
        })

    metrics: dict = {"n_cells": n_split, "n_groups": {k: int(sub[config.group_column][split_sub == k].nunique()) for k in ("train", "val", "calibration", "test")}}
    if refit:
        metrics["refit"] = refit_info
    # after a refit the validation cells were learnt from: their metrics would be in-sample
    reported = ("test",) if refit else ("val", "test")
    if task == "classification":
        cal = masks["calibration"] if len(masks["calibration"]) else masks["val"]
        logit_cal = raw_out["calibration" if len(masks["calibration"]) else "val"].mean(0)
        temperature = fit_temperature(logit_cal, y_all[cal]) if config.model_type == "cnn" else 1.0
        cfg_out["temperature"] = temperature
        for name in reported:
            if len(masks[name]) == 0:
                continue
            logits = raw_out[name].mean(0)
            prob_raw = softmax_t(logits, 1.0) if config.model_type == "cnn" else logits
            prob = softmax_t(logits, temperature) if config.model_type == "cnn" else logits
            m = _metrics_classification(y_all[masks[name]], prob, classes)
            m["ece_uncalibrated"] = expected_calibration_error(prob_raw, y_all[masks[name]])
            m["ece"] = expected_calibration_error(prob, y_all[masks[name]])
            metrics[name] = m
    else:
        mu_cal, sd_cal = _combine_regression(raw_out["calibration"], config.loss) if config.model_type == "cnn" else (raw_out["calibration"][0, :, 0], None)
        y_cal = y_all[masks["calibration"]]
        scores = np.abs(y_cal - mu_cal) / (sd_cal if sd_cal is not None else 1.0)
        q = conformal_quantile(scores, config.interval_level)
        cfg_out.update({"conformal_quantile": q, "conformal_scaled": sd_cal is not None, "target_mean": mean, "target_std": std})
        for name in reported:
            if len(masks[name]) == 0:
                continue
            if config.model_type == "cnn":
                mu, sd = _combine_regression(raw_out[name], config.loss)
            else:
                mu, sd = raw_out[name][0, :, 0], None
            width = q * (sd if sd is not None else 1.0)
            to_unit = (lambda v: 10 ** (v * std + mean)) if cfg_out["log_target"] else (lambda v: v * std + mean)
            true = table[config.target].to_numpy(dtype=float)[masks[name]]
            metrics[name] = _metrics_regression(true, to_unit(mu), to_unit(mu - width), to_unit(mu + width))
    normalization.update({"target_mean_log10": cfg_out.get("target_mean"), "target_std_log10": cfg_out.get("target_std")} if task == "regression" else {})

    split_groups = {k: sorted(map(str, sub[config.group_column][split_sub == k].unique())) for k in ("train", "val", "calibration", "test")}
    prov = provenance(seed=config.seed, command=command or " ".join(sys.argv))
    prov["training_data"] = str(data.path) if data.path else None
    prov["group_column"] = config.group_column
    prov["training_seconds"] = round(time.perf_counter() - t0, 2)
    extra = {"split.json": json.dumps({"group_column": config.group_column, "groups": split_groups}, indent=2)}
    if config.model_type == "cnn":
        extra.update(domain_files)
    if len(log):
        buf = io.StringIO()
        log.to_csv(buf, index=False)
        extra["training_log.csv"] = buf.getvalue()
    model_dir = save_model_folder(out, config=cfg_out, state_dict=state, normalization=normalization, metrics=metrics, provenance=prov, model_card=_model_card(cfg_out, metrics, n_split), extra_files=extra, overwrite=overwrite)
    return TrainResult(model_dir=Path(model_dir), metrics=metrics, split=split, log=log, seconds=time.perf_counter() - t0)
