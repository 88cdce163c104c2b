"""Applicability-domain verdicts: the domain columns of a prediction and the run's summary.

Split from :mod:`mechanoscope.learn.domain` (which re-exports everything here): the
per-model and run-level image tests (Holm over p-values, see that module's docstring)
and :func:`domain_summary` for the CLI's last lines and the report.
"""

from __future__ import annotations

import warnings
from typing import TYPE_CHECKING

import numpy as np
import pandas as pd

if TYPE_CHECKING:
    from mechanoscope.learn.domain import DomainReference

__all__ = ["domain_columns", "domain_summary", "holm_reject", "judge_images"]


def holm_reject(p: np.ndarray, alpha: float) -> np.ndarray:
    """Holm's step-down procedure on each row of ``p`` ``(N, K)``: which of the K hypotheses are rejected at family-wise level ``alpha``.

    NaN p-values are not tested (and do not count in K). A row has a rejection
    exactly when its smallest p-value ≤ ``alpha`` / K (Bonferroni's test of the
    global null); Holm then rejects the next ones at ``alpha`` / (K − 1), … .
    """
    p = np.atleast_2d(np.asarray(p, dtype=float))
    out = np.zeros(p.shape, dtype=bool)
    if not p.size:
        return out
    k = np.isfinite(p).sum(1)
    order = np.argsort(np.where(np.isfinite(p), p, np.inf), axis=1, kind="stable")
    srt = np.take_along_axis(np.where(np.isfinite(p), p, np.inf), order, 1)
    level = alpha / np.maximum(k[:, None] - np.arange(p.shape[1])[None, :], 1)
    ok = np.cumprod(srt <= level, axis=1).astype(bool)
    np.put_along_axis(out, order, ok, 1)
    return out


def judge_images(reference: DomainReference | None, table: pd.DataFrame, local_background: np.ndarray | None = None,
                 background_noise: np.ndarray | None = None) -> pd.DataFrame | None:
    """Image-level verdict (:meth:`ImageDomainReference.judge`) per ``image_id`` of ``table``, or None without an image-level reference."""
    if reference is None or reference.image_reference is None or not len(table):
        return None
    from mechanoscope.learn.domain_image import image_statistics

    return reference.image_reference.judge(image_statistics(table, local_background, background_noise))


_CROP_REASON = "median crop domain score"


def domain_columns(reference: DomainReference | None, scores: np.ndarray | None, table: pd.DataFrame, target: str, *, where: str = "model",
                   image_judgement: pd.DataFrame | None = None) -> pd.DataFrame:
    """Domain columns of one model's predictions, row-aligned with ``table``.

    Per model: ``pred_domain_score_<target>`` (> 1: out of domain),
    ``pred_in_domain_<target>``; the image-level p-values
    ``pred_image_domain_p_crop_<target>`` (median score of the image's cells against
    the held-out images') and, with ``image_judgement`` (:func:`judge_images`),
    ``pred_image_domain_p_image_<target>`` (native statistics, 0 for a pixel size
    outside the training range); ``pred_image_in_domain_<target>`` (Holm over this
    model's criteria rejects none at its ``image_alpha``),
    ``pred_image_domain_reason_<target>`` (the rejected criteria; empty when in) and
    ``pred_image_domain_score_<target>`` (log of the model's Bonferroni-adjusted
    p-value over log ``image_alpha``: > 1 out of domain). Then the run's columns over
    every model in ``table`` (this one included): ``pred_in_domain`` (every model
    keeps the cell), ``pred_image_domain_p`` (Bonferroni-adjusted smallest p-value
    over all models' criteria, a shared image criterion counted once),
    ``pred_image_in_domain`` (Holm over that family rejects none at ``image_alpha``)
    and ``pred_image_domain_reason`` (the criteria it rejects). Without a reference a
    :class:`NoDomainReferenceWarning` is issued and only the run's columns of other
    models are carried.
    """
    from mechanoscope.learn.domain import NoDomainReferenceWarning  # defined there, which imports this module at its end

    cols: dict[str, np.ndarray] = {}  # built as arrays, made a frame once (a frame's column insertions cost ~0.3 ms each, per field)
    alpha = float(getattr(reference, "image_alpha", 0.05)) if reference is not None else 0.05
    groups = table["image_id"].astype(str).to_numpy() if "image_id" in table.columns else np.zeros(len(table), dtype=str)
    if reference is None or scores is None:
        warnings.warn(f"{where}: the model folder has no applicability-domain reference (a features baseline, a CNN trained before mechanoscope had one, or one trained without held-out images); no domain check was possible for its predictions — retrain a CNN with validation/calibration images to get one", NoDomainReferenceWarning, stacklevel=3)
    else:
        from mechanoscope.learn.domain_image import _Groups

        s = np.asarray(scores, dtype=float)
        cols[f"pred_domain_score_{target}"] = s
        cols[f"pred_in_domain_{target}"] = s <= 1.0
        names, inv = np.unique(groups, return_inverse=True)
        inv = inv.reshape(-1)
        med = _Groups(inv, len(names)).median(s)[inv] if len(s) else np.zeros(0)  # the median of each cell's image
        p_crop = reference.image_crop_p(med)
        thr = float(reference.image_threshold)
        crop_reason = np.array([f"{_CROP_REASON} {m:.2f}, p = {q:.2g} against the held-out images (threshold {thr:.2f}, the cells look unlike the training cells)"
                                for m, q in zip(med, p_crop, strict=True)], dtype=object)
        pmat, texts = [p_crop], [crop_reason]
        cols[f"pred_image_domain_p_crop_{target}"] = p_crop
        if image_judgement is not None and len(image_judgement):
            j = image_judgement.reindex(groups)
            p_img = j["p_value"].fillna(1.0).to_numpy(float) if "p_value" in j else np.where(j["in_domain"].fillna(True).to_numpy(bool), 1.0, 0.0)
            cols[f"pred_image_domain_p_image_{target}"] = p_img
            pmat.append(p_img)
            texts.append(j["reason"].fillna("").to_numpy(dtype=object))
        pm = np.column_stack(pmat)
        rej = holm_reject(pm, alpha)
        reason = np.array(["; ".join(t[i] for t, r in zip(texts, rej[i], strict=True) if r and t[i]) for i in range(len(pm))], dtype=object)
        p_adj = np.minimum(1.0, pm.min(1) * pm.shape[1]) if len(pm) else np.zeros(0)
        cols[f"pred_image_domain_score_{target}"] = np.log(np.maximum(p_adj, 1e-300)) / np.log(alpha)
        cols[f"pred_image_in_domain_{target}"] = ~rej.any(1)
        cols[f"pred_image_domain_reason_{target}"] = reason
    out = pd.DataFrame(cols, index=table.index)
    # the run's columns read only the other models' pred_ columns: the rest of the table is left out of this frame
    earlier = [c for c in table.columns if str(c).startswith("pred_") and c not in cols]
    both = pd.concat([table[earlier], out], axis=1)
    run: dict[str, object] = {}
    in_cols = [c for c in both.columns if str(c).startswith("pred_in_domain_")]
    if in_cols:
        run["pred_in_domain"] = np.logical_and.reduce([both[c].to_numpy(dtype=bool) for c in in_cols])
    family = _image_family(both)
    if family:
        pm = np.column_stack([both[c].to_numpy(float) for c, _ in family])
        rej = holm_reject(pm, alpha)
        run["pred_image_domain_p"] = np.minimum(1.0, np.nanmin(pm, axis=1) * pm.shape[1])
        run["pred_image_in_domain"] = ~rej.any(1)
        run["pred_image_domain_reason"] = _run_reason(both, family, rej)
    if run:
        out = pd.concat([out, pd.DataFrame(run, index=table.index)], axis=1)
    return out


def _image_family(both: pd.DataFrame) -> list[tuple[str, str]]:
    """The image-level criteria of all models in a table: ``(p column, its model's reason column)``; image criteria with the same p-values in every row (the same training images; equal within 1e-9 relative) once."""
    family: list[tuple[str, str]] = []
    seen: list[np.ndarray] = []
    for c in both.columns:
        c = str(c)
        for kind in ("pred_image_domain_p_crop_", "pred_image_domain_p_image_"):
            if c.startswith(kind):
                v = both[c].to_numpy(float)
                if kind.endswith("image_"):
                    if any(np.allclose(v, w, rtol=1e-9, atol=0.0, equal_nan=True) for w in seen):
                        continue
                    seen.append(v)
                family.append((c, "pred_image_domain_reason_" + c[len(kind):]))
    return family


def _run_reason(both: pd.DataFrame, family: list[tuple[str, str]], rejected: np.ndarray) -> list[str]:
    """Per row, the reasons of the criteria the run's Holm procedure rejects (parts of the models' reasons, each once)."""
    texts = [both[rcol].to_numpy(dtype=object) if rcol in both.columns else np.full(len(both), "", dtype=object) for _, rcol in family]
    crop = [("_p_crop_" in pcol) for pcol, _ in family]
    memo: dict = {}
    out = []
    for i in range(len(both)):
        key = tuple(t[i] if r else None for t, r in zip(texts, rejected[i], strict=True))
        if key not in memo:
            parts: dict[str, None] = {}
            for text, is_crop in zip(key, crop, strict=True):
                if isinstance(text, str):
                    parts.update((part, None) for part in text.split("; ") if part and part.startswith(_CROP_REASON) == is_crop)
            memo[key] = "; ".join(parts)
        out.append(memo[key])
    return out


def domain_summary(table: pd.DataFrame, models: list | None = None) -> dict:
    """Per model and per image: how many cells and images lie outside the training domain.

    Parameters
    ----------
    table : the cell table with ``pred_domain_score_<target>`` columns.
    models : the loaded models of the run (their ``target`` and whether they have a
        reference); default: every target with domain columns in the table.

    Returns
    -------
    dict with ``models`` (per target: ``checked``, ``n_cells``, ``n_cells_out``,
    ``fraction_cells_out``, ``n_images``, ``images_out`` (ids), ``median_score``),
    ``images`` (per image: cells, fraction of cells out, in domain for all models,
    ``reason``), ``run`` (images flagged by the run's test over all models,
    ``pred_image_in_domain``, and its nominal false-flag rate ``image_alpha``; None
    without a checked model), ``intervals`` (how many cells have
    ``pred_interval_calibrated`` false; None without a regression model) and ``note``:
    plain sentences for the CLI's last lines and the report.
    """
    targets: list[tuple[str, bool]] = []
    if models is not None:
        for m in models:
            t = m.config["target"]
            targets.append((t, getattr(m, "domain", None) is not None and f"pred_domain_score_{t}" in table.columns))
    else:
        targets = [(str(c)[len("pred_domain_score_"):], True) for c in table.columns if str(c).startswith("pred_domain_score_")]
    per_model: dict = {}
    notes: list[str] = []
    for t, checked in targets:
        if not checked:
            per_model[t] = {"checked": False, "note": f"model {t}: no applicability-domain reference in its folder, so no domain check was possible"}
            notes.append(per_model[t]["note"])
            continue
        s = table[f"pred_domain_score_{t}"].to_numpy(dtype=float)
        img_ok = table.groupby("image_id")[f"pred_image_in_domain_{t}"].first() if len(table) else pd.Series(dtype=bool)
        out_imgs = sorted(map(str, img_ok.index[~img_ok.astype(bool)]))
        rc = f"pred_image_domain_reason_{t}"
        why = table.groupby("image_id")[rc].first() if rc in table.columns and len(table) else pd.Series(dtype=object)
        per_model[t] = {
            "checked": True,
            "n_cells": int(len(s)),
            "n_cells_out": int((s > 1).sum()),
            "fraction_cells_out": float(np.mean(s > 1)) if len(s) else None,
            "median_score": float(np.median(s)) if len(s) else None,
            "n_images": int(len(img_ok)),
            "n_images_out": len(out_imgs),
            "images_out": out_imgs,
            "reasons": {i: str(why.get(i, "")) for i in out_imgs} if len(why) else {},
        }
        if out_imgs:
            first = per_model[t]["reasons"].get(out_imgs[0]) if per_model[t]["reasons"] else None
            notes.append(f"model {t}: {len(out_imgs)} of {len(img_ok)} images look unlike its training images; predictions there are extrapolations and their intervals are not calibrated"
                         + (f" (e.g. {out_imgs[0]}: {first})" if first else ""))
    images: list[dict] = []
    if len(table) and "pred_in_domain" in table.columns:
        for image_id, grp in table.groupby("image_id", sort=True):
            images.append({"image_id": str(image_id), "n_cells": int(len(grp)), "fraction_cells_out": float(1 - grp["pred_in_domain"].astype(bool).mean()),
                           "in_domain": bool(grp["pred_image_in_domain"].astype(bool).all()) if "pred_image_in_domain" in grp else None,
                           "reason": str(grp["pred_image_domain_reason"].iloc[0]) if "pred_image_domain_reason" in grp else ""})
    run = None
    if images and images[0]["in_domain"] is not None:
        alphas = [float(m.domain.image_alpha) for m in (models or []) if getattr(m, "domain", None) is not None]
        out_ids = [r["image_id"] for r in images if not r["in_domain"]]
        run = {"n_images": len(images), "n_images_out": len(out_ids), "images_out": out_ids, "image_alpha": min(alphas) if alphas else 0.05,
               "meaning": "the run's verdict (pred_image_in_domain): Holm's procedure over the image tests of every model; an image acquired like the training images is flagged with probability at most image_alpha"}
        if len([t for t, c in targets if c]) > 1:
            notes.append(f"over all models {len(out_ids)} of {len(images)} images are flagged (nominally at most {100 * run['image_alpha']:.0f} % of images acquired like the training images would be)")
    intervals = None
    if len(table) and "pred_interval_calibrated" in table.columns:
        ok = table["pred_interval_calibrated"].astype(bool)
        intervals = {"n_cells": int(len(ok)), "n_not_calibrated": int((~ok).sum()),
                     "meaning": "pred_interval_calibrated is false where the cell or its image lies outside the regression model's training domain (or no domain check was possible): the interval columns are kept, but their nominal coverage is not claimed there"}
        if (~ok).any():
            notes.append(f"{int((~ok).sum())} of {len(ok)} cells have intervals marked not calibrated (pred_interval_calibrated false) because they or their image lie outside the training domain")
    if not notes and any(v.get("checked") for v in per_model.values()):
        notes.append("every image lies within the training domain of the models")
    return {"models": per_model, "images": images, "run": run, "intervals": intervals, "note": "; ".join(notes) if notes else "no model to check"}
