"""What the network sees: per-cell attribution maps (captum), their sanity checks, an embedding.

Methods (all from captum, applied to the ensemble-mean output of a model's networks):

* ``integrated_gradients``: :class:`captum.attr.IntegratedGradients` from a fixed
  **baseline of zeros in the network's input space**, i.e. an empty field: relative
  contrast 0 (the crop's background level everywhere) and an empty mask channel;
  ``n_steps`` points on the straight path (Riemann trapezoid rule).
* ``gradcam``: :class:`captum.attr.LayerGradCam` on the output of the network's last
  convolution that is still ≥ 8 px wide (the last one of all sees a 64-px crop at
  4 × 4 px), rectified and upsampled (bilinear) to the crop
  (:meth:`captum.attr.LayerAttribution.interpolate`); one map per crop.
* ``occlusion``: :class:`captum.attr.Occlusion`, a ``window``-pixel square of every
  channel replaced by the same zero baseline, moved by ``window // 2`` pixels.

The explained output is the predicted class's logit (classification; or a given class)
or the standardised log10 modulus (regression, output 0). Maps are summed over the
input channels: ``(N, H, W)``, signed (positive: raises the explained output).

Sanity checks: :func:`mask_mass_fraction` (the share of absolute attribution that lies
on the cell, beside the cell's share of the crop area) and
:func:`model_randomisation_test` (Adebayo et al. 2018, "Sanity checks for saliency
maps": maps of the trained network must differ from maps of the same architecture with
re-initialised weights; a method whose maps survive randomisation shows the input, not
what the network learnt).
"""

from __future__ import annotations

import copy
from dataclasses import dataclass, field

import numpy as np
import pandas as pd

from mechanoscope.errors import MechanoscopeError

__all__ = [
    "ATTRIBUTION_METHODS",
    "BASELINE",
    "CellAttributions",
    "attribute",
    "explain_cells",
    "mask_mass_fraction",
    "model_randomisation_test",
    "class_average_maps",
    "embedding_2d",
    "pick_cells",
    "permutation_importance_features",
]

ATTRIBUTION_METHODS = ("integrated_gradients", "gradcam", "occlusion")
BASELINE = "zeros in the network's input space: relative contrast 0 (background level everywhere) and an empty mask"


class _EnsembleMean:
    """``forward(x)`` = mean output of the networks (a plain callable, as captum accepts)."""

    def __init__(self, nets: list) -> None:
        self.nets = nets

    def __call__(self, x):
        out = self.nets[0](x)
        for net in self.nets[1:]:
            out = out + net(x)
        return out / len(self.nets)


def _gradcam_layer(net, x):
    """The last convolution whose output is still at least 8 px (or a quarter of the crop) wide.

    The very last convolution of the compact CNN sees a 64-px crop at 4 × 4 px, too
    coarse to tell a cell from its surroundings; the last one at ≥ 8 px keeps the
    class-discriminative depth of Grad-CAM at a resolution that can.
    """
    import torch
    from torch import nn

    convs = [m for m in net.modules() if isinstance(m, nn.Conv2d)]
    if not convs:
        raise MechanoscopeError(f"Grad-CAM needs a convolution; the network {type(net).__name__} has none")
    sizes: dict[int, int] = {}
    hooks = [m.register_forward_hook(lambda mod, i, o: sizes.__setitem__(id(mod), min(o.shape[-2:]))) for m in convs]
    try:
        with torch.inference_mode():
            net(torch.zeros((1,) + tuple(x.shape[1:]), device=x.device))
    finally:
        for h in hooks:
            h.remove()
    want = min(8, max(1, min(x.shape[-2:]) // 4))
    ok = [m for m in convs if sizes.get(id(m), 0) >= want]
    return ok[-1] if ok else convs[-1]


def attribute(nets: list, x: np.ndarray, targets: np.ndarray, *, method: str = "integrated_gradients", n_steps: int = 32, window: int = 8, batch_size: int = 32) -> np.ndarray:
    """Attribution maps of normalised crops ``x`` ``(N, C, H, W)`` for output indices ``targets`` ``(N,)``.

    Returns ``(N, H, W)`` float32, summed over channels (Grad-CAM: one map, upsampled).
    Networks are used in eval mode on the CPU or the device of their parameters;
    gradients are computed in float32.
    """
    import torch
    from captum.attr import IntegratedGradients, LayerAttribution, LayerGradCam, Occlusion

    if method not in ATTRIBUTION_METHODS:
        raise MechanoscopeError(f"unknown attribution method {method!r}; choose one of {', '.join(ATTRIBUTION_METHODS)}")
    x = np.asarray(x, dtype=np.float32)
    targets = np.asarray(targets, dtype=np.int64)
    if x.ndim != 4 or len(targets) != len(x):
        raise MechanoscopeError(f"attribution needs crops (N, C, H, W) and one target per crop; got {x.shape} and {targets.shape}")
    for net in nets:
        net.eval()
    dev = next(nets[0].parameters()).device
    fwd = _EnsembleMean(nets)
    out = np.zeros((len(x),) + x.shape[2:], np.float32)
    for s in range(0, len(x), batch_size):
        xb = torch.from_numpy(np.ascontiguousarray(x[s : s + batch_size])).to(dev).requires_grad_(True)
        tb = torch.from_numpy(targets[s : s + batch_size]).to(dev)
        if method == "integrated_gradients":
            a = IntegratedGradients(fwd).attribute(xb, baselines=torch.zeros_like(xb), target=tb, n_steps=n_steps, method="riemann_trapezoid")
            m = a.sum(1)
        elif method == "occlusion":
            c = x.shape[1]
            a = Occlusion(fwd).attribute(xb, sliding_window_shapes=(c, window, window), strides=(c, max(window // 2, 1), max(window // 2, 1)), baselines=0.0, target=tb)
            m = a.sum(1)
        else:
            maps = []
            for net in nets:
                g = LayerGradCam(net, _gradcam_layer(net, xb)).attribute(xb, target=tb, relu_attributions=True)
                maps.append(LayerAttribution.interpolate(g, tuple(x.shape[2:]), interpolate_mode="bilinear"))
            m = torch.stack(maps).mean(0).sum(1)
        out[s : s + len(xb)] = m.detach().float().cpu().numpy()
    return out


def mask_mass_fraction(maps: np.ndarray, masks: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Share of |attribution| on the cell, and the cell's share of the crop, per crop.

    Parameters
    ----------
    maps : (N, H, W) attribution maps.
    masks : (N, H, W) cell masks (non-zero = cell).

    Returns
    -------
    (fraction_on_cell, area_fraction), both ``(N,)``; a map with no mass gives NaN.
    A map that highlights the cell has ``fraction_on_cell`` well above ``area_fraction``
    (a uniform map has them equal).
    """
    a = np.abs(np.asarray(maps, dtype=np.float64))
    m = np.asarray(masks) > 0.5
    total = a.reshape(len(a), -1).sum(1)
    on = (a * m).reshape(len(a), -1).sum(1)
    with np.errstate(invalid="ignore", divide="ignore"):
        frac = np.where(total > 0, on / total, np.nan)
    return frac, m.reshape(len(m), -1).mean(1)


def _randomised(net, seed: int):
    import torch

    rnd = copy.deepcopy(net)
    torch.manual_seed(seed)
    for mod in rnd.modules():
        if hasattr(mod, "reset_parameters"):
            mod.reset_parameters()
        if hasattr(mod, "reset_running_stats"):
            mod.reset_running_stats()
    return rnd.eval()


def model_randomisation_test(nets: list, x: np.ndarray, targets: np.ndarray, *, method: str = "integrated_gradients", seed: int = 0, **kwargs) -> dict:
    """Adebayo et al.'s model-parameter randomisation test of an attribution method.

    Attributions of the trained networks are compared with those of copies whose every
    layer is re-initialised (``reset_parameters``; batch-norm statistics reset): per
    crop the Spearman rank correlation of the absolute maps and the structural
    similarity (SSIM, :func:`skimage.metrics.structural_similarity`) of the maps scaled
    to [0, 1]. A trustworthy method gives low values (the maps depend on what the
    network learnt).

    Returns
    -------
    dict: ``method``, ``n_cells``, ``spearman_median``, ``ssim_median`` and the
    per-cell lists ``spearman``, ``ssim``.
    """
    from scipy.stats import spearmanr
    from skimage.metrics import structural_similarity

    trained = attribute(nets, x, targets, method=method, **kwargs)
    random = attribute([_randomised(n, seed + k) for k, n in enumerate(nets)], x, targets, method=method, **kwargs)
    rho, ssim = [], []
    for a, b in zip(trained, random):
        aa, bb = np.abs(a).ravel(), np.abs(b).ravel()
        rho.append(float(spearmanr(aa, bb).statistic) if aa.std() > 0 and bb.std() > 0 else float("nan"))
        na = np.abs(a) / (np.abs(a).max() or 1.0)
        nb = np.abs(b) / (np.abs(b).max() or 1.0)
        ssim.append(float(structural_similarity(na, nb, data_range=1.0)))
    return {"method": method, "n_cells": len(rho), "spearman_median": float(np.nanmedian(rho)) if rho else None,
            "ssim_median": float(np.nanmedian(ssim)) if ssim else None, "spearman": rho, "ssim": ssim}


def class_average_maps(maps: np.ndarray, labels: np.ndarray) -> dict[str, np.ndarray]:
    """Mean attribution map per label (crops are centred on their cell), ``label -> (H, W)``."""
    labels = np.asarray(labels).astype(str)
    return {c: np.asarray(maps)[labels == c].mean(0) for c in sorted(set(labels))}


def embedding_2d(features: np.ndarray, *, seed: int = 0) -> tuple[np.ndarray, list[float]]:
    """Penultimate features ``(N, F)`` in 2-D: standardised, then PCA (scikit-learn).

    Returns the ``(N, 2)`` coordinates and the share of variance each axis explains.
    """
    from sklearn.decomposition import PCA
    from sklearn.preprocessing import StandardScaler

    f = np.asarray(features, dtype=np.float64)
    if len(f) < 3:
        raise MechanoscopeError(f"an embedding map needs at least 3 cells, got {len(f)}")
    z = StandardScaler().fit_transform(f)
    pca = PCA(n_components=2, random_state=seed).fit(z)
    return pca.transform(z), [float(v) for v in pca.explained_variance_ratio_]


def pick_cells(table: pd.DataFrame, *, by: str, per_group: int = 4, seed: int = 0) -> np.ndarray:
    """Row positions of up to ``per_group`` cells of each value of column ``by`` (QC-passing first)."""
    if by not in table.columns:
        raise MechanoscopeError(f"column {by!r} is not in the cell table; choose one of {', '.join(map(str, table.columns))}")
    rng = np.random.default_rng(seed)
    ok = table["qc_pass"].fillna(False).to_numpy(bool) if "qc_pass" in table.columns else np.ones(len(table), bool)
    keys = table[by].astype(str).to_numpy()
    rows = []
    for v in sorted(set(keys)):
        cand = np.flatnonzero((keys == v) & ok)
        if len(cand) == 0:
            cand = np.flatnonzero(keys == v)
        rows.extend(sorted(rng.choice(cand, size=min(per_group, len(cand)), replace=False)))
    return np.array(rows, dtype=np.int64)


@dataclass
class CellAttributions:
    """Attribution maps of some cells of a run, for one model.

    ``rows`` index the cell table; ``crops`` are the normalised intensity channel,
    ``masks`` the mask channel (or None), ``maps`` the attribution maps, all ``(n, H, W)``.
    """

    model: str
    method: str
    baseline: str
    explained_output: str
    rows: np.ndarray
    targets: list[str]
    crops: np.ndarray
    masks: np.ndarray | None
    maps: np.ndarray
    fraction_on_cell: np.ndarray | None = None
    area_fraction: np.ndarray | None = None
    randomisation: dict | None = None
    info: dict = field(default_factory=dict)

    def summary(self) -> dict:
        """JSON-ready numbers (no arrays of pixels)."""
        out = {"model": self.model, "method": self.method, "baseline": self.baseline, "explained_output": self.explained_output,
               "n_cells": int(len(self.rows)), "rows": [int(r) for r in self.rows], "targets": list(self.targets), **self.info}
        if self.fraction_on_cell is not None:
            out["fraction_on_cell_median"] = float(np.nanmedian(self.fraction_on_cell))
            out["area_fraction_median"] = float(np.nanmedian(self.area_fraction))
        if self.randomisation is not None:
            out["randomisation"] = {k: v for k, v in self.randomisation.items() if k not in ("spearman", "ssim")}
        return out


def explain_cells(model, table: pd.DataFrame, crops: np.ndarray, rows: np.ndarray, *, channels: list[str], method: str = "integrated_gradients",
                  target_class: str | None = None, randomisation: bool = True, seed: int = 0, **kwargs) -> CellAttributions:
    """Attribution maps of the cells ``rows`` of ``table`` (crops row-aligned) for a loaded CNN model.

    Classification explains the predicted class (``pred_label`` of the table, else the
    network's own argmax) unless ``target_class`` is given; regression explains the
    standardised log10 modulus. With ``randomisation`` the model-randomisation test
    runs on the same cells.
    """
    from mechanoscope.learn.data import normalise_crops

    cfg = model.config
    if cfg["model_type"] != "cnn":
        raise MechanoscopeError(f"{model.path}: attribution maps need a CNN model; for the features baseline use permutation importance")
    rows = np.asarray(rows, dtype=np.int64)
    raw = np.stack([np.asarray(crops[int(r)], dtype=np.float32) for r in rows])  # a few cells; crops may be a lazy store
    x = normalise_crops(raw, channels, cfg["channels"], float(model.normalization["contrast_scale"]))
    if cfg["task"] == "classification":
        classes = list(cfg["classes"])
        if target_class is not None:
            if target_class not in classes:
                raise MechanoscopeError(f"class {target_class!r} is not one of the model's classes {classes}")
            names = [target_class] * len(rows)
        elif "pred_label" in table.columns:
            names = table["pred_label"].astype(str).iloc[rows].tolist()
        else:
            import torch

            with torch.inference_mode():
                logits = _EnsembleMean(model.members)(torch.from_numpy(x)).numpy()
            names = [classes[i] for i in logits.argmax(1)]
        targets = np.array([classes.index(n) for n in names])
        explained = "logit of the explained class"
    else:
        targets = np.zeros(len(rows), np.int64)
        names = [cfg["target"]] * len(rows)
        explained = f"standardised log10 {cfg['target']}"
    maps = attribute(model.members, x, targets, method=method, **kwargs)
    masks = x[:, cfg["channels"].index("mask")] if "mask" in cfg["channels"] else None
    inten = x[:, cfg["channels"].index("intensity")] if "intensity" in cfg["channels"] else x[:, 0]
    frac, area = mask_mass_fraction(maps, masks) if masks is not None else (None, None)
    rnd = model_randomisation_test(model.members, x, targets, method=method, seed=seed, **kwargs) if randomisation else None
    return CellAttributions(str(cfg["target"]), method, BASELINE, explained, rows, names, inten, masks, maps, frac, area, rnd)


def permutation_importance_features(model, table: pd.DataFrame, *, target: str | None = None, n_repeats: int = 10, seed: int = 0) -> pd.DataFrame:
    """Permutation importance of the morphology columns of a features-baseline model.

    :func:`sklearn.inspection.permutation_importance` on the cells of ``table`` that
    have a value of the model's target (or ``target``): the drop of the model's score
    (accuracy; R² of the standardised target for regression) when one column is shuffled.
    Returns one row per column, most important first: ``feature``, ``importance_mean``,
    ``importance_sd``.
    """
    from sklearn.inspection import permutation_importance

    cfg = model.config
    if cfg["model_type"] != "features":
        raise MechanoscopeError(f"{model.path}: permutation importance is for the features baseline; use attribution maps for a CNN")
    col = target or cfg["target"]
    if col not in table.columns:
        raise MechanoscopeError(f"the cell table has no column {col!r} with the true values to score against")
    fm = model.members[0]
    keep = table[col].notna().to_numpy()
    sub = table[keep]
    if len(sub) < 5:
        raise MechanoscopeError(f"only {len(sub)} cells have a value of {col!r}; permutation importance needs at least 5")
    xm = fm._matrix(sub)
    if cfg["task"] == "classification":
        classes = list(cfg["classes"])
        y = np.array([classes.index(str(v)) for v in sub[col]])
    else:
        raw = sub[col].to_numpy(dtype=float)
        y = ((np.log10(raw) if cfg.get("log_target") else raw) - float(cfg["target_mean"])) / float(cfg["target_std"])
    r = permutation_importance(fm.estimator, xm, y, n_repeats=n_repeats, random_state=seed)
    return pd.DataFrame({"feature": fm.columns, "importance_mean": r.importances_mean, "importance_sd": r.importances_std}).sort_values("importance_mean", ascending=False, ignore_index=True)
