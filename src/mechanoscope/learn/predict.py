"""Applying a trained model folder to cells: batched, with calibrated uncertainty."""

from __future__ import annotations

import os
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable

import numpy as np
import pandas as pd

from mechanoscope.errors import ConfigError, MechanoscopeError

__all__ = ["StiffnessModel", "load_stiffness_model", "predict_cells"]


@dataclass
class StiffnessModel:
    """A loaded model folder ready to predict."""

    path: Path
    config: dict
    normalization: dict
    members: list  # torch networks (cnn) or [FeatureModel]
    split: dict | None = None
    domain: object | None = None  # learn.domain.DomainReference; None: no domain check possible
    _inference: dict = field(default_factory=dict, repr=False, compare=False)  # (device, fuse, channels_last) → (members' state, networks ready for inference)

    @property
    def task(self) -> str:
        return self.config["task"]

    @property
    def identity(self) -> dict:
        """What to write next to predictions so that they say which model made them."""
        return {
            "model_path": str(self.path),
            "task": self.task,
            "target": self.config["target"],
            "model_type": self.config["model_type"],
            "architecture": self.config.get("architecture"),
            "schema_version": self.config.get("schema_version"),
            "trained_with_mechanoscope": self.config.get("mechanoscope_version"),
        }


def load_stiffness_model(folder: str | os.PathLike[str]) -> StiffnessModel:
    """Load a model folder written by :func:`mechanoscope.learn.train.train_model`.

    A ``.onnx`` file exported by ``mechanoscope export`` loads through
    :func:`mechanoscope.learn.onnx_predict.load_onnx_model` (runs on onnxruntime).
    """
    import json

    from mechanoscope.io.model_folder import load_model_folder

    if Path(folder).suffix.lower() == ".onnx" and Path(folder).is_file():
        from mechanoscope.learn.onnx_predict import load_onnx_model

        return load_onnx_model(folder)

    mf = load_model_folder(folder)
    cfg = mf.config
    if "task" not in cfg or cfg.get("task") not in ("classification", "regression") or "target" not in cfg:
        raise MechanoscopeError(f"{folder}: not a stiffness/phenotype model folder (config.json has no classification/regression task); a segmentation model goes to `mechanoscope segment`")
    need = {"features": ("feature_columns",), "cnn": ("architecture", "in_channels", "n_outputs", "channels", "crop_pixels", "crop_size_um")}
    if cfg.get("model_type") not in need:
        raise MechanoscopeError(f"{folder}/config.json: model_type {cfg.get('model_type')!r} is not 'cnn' or 'features'; the folder is damaged or was edited — copy it again or retrain")
    lacking = [k for k in need[cfg["model_type"]] if k not in cfg]
    if lacking:
        raise MechanoscopeError(f"{folder}/config.json: lacks {', '.join(lacking)} that a {cfg['model_type']} model needs; the folder is damaged or was edited — copy it again or retrain")
    members: list = []
    if cfg["model_type"] == "features":
        from mechanoscope.learn.features import FeatureModel

        tcfg = cfg.get("train_config", {})
        members = [FeatureModel.from_state(mf.state_dict, cfg["task"], cfg["feature_columns"], int(tcfg.get("seed", 0)), len(cfg.get("classes") or []))]
    else:
        from mechanoscope.learn.networks import build_network

        for k in range(int(cfg.get("ensemble_size", 1))):
            prefix = f"member{k}."
            sd = {name[len(prefix):]: t for name, t in mf.state_dict.items() if name.startswith(prefix)}
            if not sd:
                raise MechanoscopeError(f"{folder}: weights of ensemble member {k} are missing from weights.safetensors; the folder is damaged — copy it again or retrain")
            try:
                net = build_network(cfg["architecture"], int(cfg["in_channels"]), int(cfg["n_outputs"]), width=int(cfg.get("width", 24)), input_pixels=int(cfg.get("crop_pixels", 64)), pooling=str(cfg.get("pooling", "max")))
            except ConfigError as exc:
                raise MechanoscopeError(f"{folder}: config.json describes a network this version cannot build ({exc}); the folder is damaged or was edited") from exc
            try:
                net.load_state_dict(sd)
            except RuntimeError as exc:
                raise MechanoscopeError(f"{folder}: weights do not fit the {cfg['architecture']} network described in config.json ({str(exc).splitlines()[0]}); the folder is damaged or was edited") from exc
            net.eval()
            members.append(net)
    split = None
    sp = Path(folder) / "split.json"
    if sp.exists():
        split = json.loads(sp.read_text())
    from mechanoscope.learn.domain import load_domain_reference

    domain = load_domain_reference(folder) if cfg["model_type"] == "cnn" else None
    return StiffnessModel(Path(folder), cfg, mf.normalization, members, split, domain)


def _check_crops(model: StiffnessModel, crops: np.ndarray, channels: list[str], attrs: dict, where: str) -> None:
    cfg = model.config
    want_px = int(cfg["crop_pixels"])
    if crops.ndim != 4 or crops.shape[-1] != want_px or crops.shape[-2] != want_px:
        raise MechanoscopeError(
            f"{where}: crops are {tuple(crops.shape[-2:])} px but the model expects {want_px}×{want_px} px; "
            f"re-extract with --crop-pixels {want_px} --crop-size-um {cfg['crop_size_um']}"
        )
    have_um = attrs.get("crop_size_um")
    if have_um is not None and not np.isclose(float(have_um), float(cfg["crop_size_um"]), rtol=1e-3):
        raise MechanoscopeError(
            f"{where}: crops cover {have_um} µm but the model was trained on {cfg['crop_size_um']} µm crops "
            f"({cfg['pixel_size_um_of_crop']} µm/px); re-extract with --crop-size-um {cfg['crop_size_um']} --crop-pixels {want_px}"
        )
    missing = [c for c in cfg["channels"] if c not in channels]
    if missing:
        raise MechanoscopeError(f"{where}: crop channel(s) {missing} needed by the model are missing (store has {channels}); re-extract with --mask-channel")


def _softmax(logits: np.ndarray, temperature: float) -> np.ndarray:
    """Softmax of ``logits / T`` along the last axis, float64 (as ``learn.uncertainty.softmax_t``,
    without importing SciPy's optimiser for it)."""
    z = np.asarray(logits, dtype=np.float64) / temperature
    e = np.exp(z - z.max(axis=-1, keepdims=True))
    return e / e.sum(axis=-1, keepdims=True)


def _inference_members(model: StiffnessModel, dev, fuse: bool, channels_last: bool) -> list:
    """The model's networks on ``dev`` in eval mode, BatchNorm folded (``fuse``) and in
    channels-last format (``channels_last``); made once per setting and kept on ``model``."""
    import copy

    import torch

    from mechanoscope.nn.inference import fuse_for_inference

    # a member whose weights change in place (tensor version counters) or that is replaced gets a new copy
    state = tuple((id(m), tuple(t._version for t in (*m.parameters(), *m.buffers()))) if isinstance(m, torch.nn.Module) else (id(m),) for m in model.members)
    key = (str(dev), bool(fuse), bool(channels_last))
    got = model._inference.get(key)
    if got is None or got[0] != state:
        nets = []
        for m in model.members:
            if not isinstance(m, torch.nn.Module):  # e.g. an ONNX member: runs where onnxruntime runs
                nets.append(m)
                continue
            net = fuse_for_inference(m) if fuse else (copy.deepcopy(m) if channels_last else m)
            net = net.to(dev).eval()
            if channels_last:
                net = net.to(memory_format=torch.channels_last)
            nets.append(net)
        got = model._inference[key] = (state, nets)
    return got[1]


def predict_cells(
    model: StiffnessModel,
    table: pd.DataFrame,
    crops: np.ndarray | None = None,
    *,
    channels: list[str] | None = None,
    attrs: dict | None = None,
    batch_size: int = 256,
    progress: Callable[[int, int], None] | None = None,
    where: str = "input",
    device: str = "auto",
    threads: int | None = None,
    fuse: bool = True,
    channels_last: bool = True,
    precision: str | None = None,
) -> pd.DataFrame:
    """Predict every row of ``table`` (crops row-aligned) and return the prediction columns.

    The networks run on ``device`` (``auto``: the CUDA GPU when there is one, else the
    CPU); crops are read and normalised ``batch_size`` at a time. Each batch runs once
    through each network (with the model's test-time augmentation, if any); the
    applicability domain takes the first network's penultimate features from that same
    pass. On the CPU, ``threads`` torch intra-op threads run it (``None``:
    :func:`mechanoscope.nn.inference.default_inference_threads`, the free cores or
    ``MECHANOSCOPE_INFERENCE_THREADS``); torch's setting is restored afterwards.
    ``fuse`` folds BatchNorm into the convolutions of eval copies of the networks
    (:func:`~mechanoscope.nn.inference.fuse_for_inference`; made once per model and
    device); ``channels_last`` runs them in channels-last memory format (measured on the
    2-core AVX2 machine, compact CNN at batch 256, 1 thread: 185 → 344 crops/s fused,
    174 → 302 unfused; folding alone +6 %). Neither changes a prediction beyond float rounding
    (``tests/test_predict_speed.py``: probabilities within 1e-5, moduli within 1e-5
    relative, domain scores within 1e-4 relative). ``precision``: ``"fp32"`` (default)
    or ``"bf16"`` autocast (:mod:`mechanoscope.nn.precision`; ``None``: the
    ``MECHANOSCOPE_INFERENCE_PRECISION`` environment variable, else fp32): 1.3–1.6× the
    crops/s on a CPU with native bfloat16; probabilities within 1e-2 and moduli within
    1 % of fp32 (measured ≤ 4e-3 and ≤ 0.2 %), domain scores of a well-trained model
    within ~1 % (a barely trained one's can move far more, see that module).

    Classification: ``pred_label``, ``pred_prob_<class>`` (temperature-calibrated),
    ``pred_confidence``. Regression: ``pred_<target>`` (e.g. ``pred_stiffness_pa``),
    ``pred_lo_pa``/``pred_hi_pa`` (split-conformal interval at the model's level),
    ``pred_log10_sd`` when an ensemble or Gaussian loss gives a spread.
    Applicability domain (CNN models with a reference, :mod:`mechanoscope.learn.domain`):
    ``pred_domain_score_<target>`` (> 1: unlike the training cells),
    ``pred_in_domain_<target>``, ``pred_image_in_domain_<target>``,
    ``pred_image_domain_reason_<target>``, the image-level p-values
    ``pred_image_domain_p_crop_<target>`` / ``pred_image_domain_p_image_<target>``
    and the run's ``pred_in_domain`` / ``pred_image_domain_p`` /
    ``pred_image_in_domain`` / ``pred_image_domain_reason`` (Holm over every model's
    image tests, :func:`mechanoscope.learn.domain.domain_columns`). Regression adds
    ``pred_interval_calibrated``: true only where the cell and its image lie inside the
    model's domain (false, too, when no domain check was possible); the interval
    columns are kept for every cell.
    """
    from mechanoscope.learn.data import crop_background, normalise_crops
    from mechanoscope.learn.domain import domain_columns, feature_layer, judge_images
    from mechanoscope.nn.inference import combine_ensemble, forward_tta, forward_tta_capture

    cfg = model.config
    n = len(table)
    out = pd.DataFrame(index=table.index)
    dom: list[np.ndarray] = []
    local_bg: list[np.ndarray] = []  # each cell's raw background level and noise, for the image-level domain check
    bg_noise: list[np.ndarray] = []
    if cfg["model_type"] == "features":
        raw = model.members[0].raw_outputs(table) if n else None
    else:
        if crops is None:
            raise MechanoscopeError(f"{where}: this CNN model needs the crops (crops.zarr) of the cells")
        _check_crops(model, crops, channels or [], attrs or {}, where)
        import contextlib

        import torch

        from mechanoscope.nn.device import select_device
        from mechanoscope.nn.inference import inference_threads
        from mechanoscope.nn.precision import inference_autocast, inference_precision

        prec = inference_precision(precision)
        dev = select_device(device)
        cl = bool(channels_last)
        members = _inference_members(model, dev, fuse, cl)
        layer = feature_layer(members[0]) if model.domain is not None else None
        tta = bool(cfg.get("tta", False))
        outs = []
        done = 0
        threads_ctx = inference_threads(threads) if dev.type == "cpu" else contextlib.nullcontext()
        with threads_ctx, torch.inference_mode(), inference_autocast(dev, prec):
            for s in range(0, n, batch_size):
                raw_batch = np.asarray(crops[s : s + batch_size], dtype=np.float32)
                x = normalise_crops(raw_batch, channels, cfg["channels"], float(model.normalization["contrast_scale"]))
                xt = torch.from_numpy(x).to(dev)
                xn = xt.contiguous(memory_format=torch.channels_last) if cl else xt
                feats = None
                res = []
                for k, m in enumerate(members):
                    if k == 0 and layer is not None:
                        o, feats = forward_tta_capture(m, xn, layer, tta)
                    else:
                        o = forward_tta(m, xn, tta)
                    res.append(o.float().cpu().numpy())
                outs.append(np.stack(res))
                if model.domain is not None:
                    score, cstats = model.domain.score_crops(members[0], xt, with_stats=True, features=feats)
                    dom.append(score)
                    local_bg.append(crop_background(raw_batch))
                    bg_noise.append(cstats[:, 0] * float(model.normalization["contrast_scale"]))  # relative to the crop's background
                done += len(x)
                if progress:
                    progress(done, n)
        raw = np.concatenate(outs, axis=1) if outs else None
    scores = (np.concatenate(dom) if dom else np.zeros(0)) if model.domain is not None else None
    judged = judge_images(model.domain, table, np.concatenate(local_bg) if local_bg else None, np.concatenate(bg_noise) if bg_noise else None) if model.domain is not None else None
    with_domain = lambda o: o.join(domain_columns(model.domain, scores, table, cfg["target"], where=str(model.path), image_judgement=judged))  # noqa: E731
    if cfg["task"] == "classification":
        classes = cfg["classes"]
        if n == 0:
            prob = np.zeros((0, len(classes)))
        elif cfg["model_type"] == "features":
            prob = raw[0]
        else:
            prob = _softmax(raw.mean(0), float(cfg.get("temperature", 1.0)))
        out["pred_label"] = np.array(classes, dtype=object)[prob.argmax(1)] if n else pd.Series(dtype=object)
        for k, c in enumerate(classes):
            out[f"pred_prob_{c}"] = prob[:, k]
        out["pred_confidence"] = prob.max(1) if n else pd.Series(dtype=float)
        return with_domain(out)
    target = cfg["target"]
    mean, std = float(cfg["target_mean"]), float(cfg["target_std"])
    to_unit = (lambda v: 10 ** (v * std + mean)) if cfg["log_target"] else (lambda v: v * std + mean)
    if n == 0:
        mu, sd = np.zeros(0), None
    elif cfg["model_type"] == "features":
        mu, sd = raw[0, :, 0], None
    else:
        mu, sd = combine_ensemble(raw, gaussian=cfg.get("loss", "mse") == "gaussian")
    q = float(cfg["conformal_quantile"])
    width = q * (sd if (sd is not None and cfg.get("conformal_scaled")) else 1.0)
    pred_col = f"pred_{target}" if not target.startswith("pred_") else target
    if target.endswith("_pa") and target != "stiffness_pa":
        pred_col = "pred_stiffness_pa"  # e.g. afm_stiffness_pa → the product's standard column
    out[pred_col] = to_unit(mu)
    unit = "pa" if target.endswith("_pa") else "value"
    out[f"pred_lo_{unit}"] = to_unit(mu - width)
    out[f"pred_hi_{unit}"] = to_unit(mu + width)
    if sd is not None:
        out["pred_log10_sd"] = sd * std
    out = with_domain(out)
    # the conformal interval's coverage holds for cells like the calibration cells: claimed only inside the domain
    t = cfg["target"]
    inside = out[f"pred_in_domain_{t}"].astype(bool) & out[f"pred_image_in_domain_{t}"].astype(bool) if f"pred_in_domain_{t}" in out else pd.Series(False, index=out.index)
    out["pred_interval_calibrated"] = inside.to_numpy(dtype=bool)
    return out
