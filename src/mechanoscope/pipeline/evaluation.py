"""Evaluation of a predicted run folder: ``RUN/evaluation.json`` and ``RUN/figures/*.png``.

:func:`evaluate_run` reads what ``mechanoscope predict`` wrote (``cells.parquet``,
the ``predict`` stage of ``run.json`` or an older ``predict.json``, ``crops.zarr``),
keeps the held-out, quality-passing cells, scores them with the metrics of
:mod:`mechanoscope.evaluate.stiffness` and draws the figures of
:mod:`mechanoscope.report.stiffness_figures`. Prediction columns that the models of
the run did not write are left out, never scored.
"""

from __future__ import annotations

import datetime as _dt
import json
import os
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd

from mechanoscope.errors import MechanoscopeError
from mechanoscope.evaluate.conditions import _class_by_condition_test, compare_conditions, summarize_by_condition
from mechanoscope.evaluate.stiffness import (
    _PROB_PREFIX,
    FIGURE_NAMES,
    _as_float,
    _as_labels,
    _check_positive,
    _jsonable,
    _none_if_nan,
    classification_metrics,
    regression_metrics,
)

__all__ = ["evaluate_run"]

def _read_predict_json(run: Path) -> tuple[dict[str, Any], list[str]]:
    """What the prediction recorded: the ``predict`` section of ``run.json``, else an older ``predict.json``."""
    from mechanoscope.io.run_folder import read_run_record

    record = read_run_record(run)
    section = (record or {}).get("stages", {}).get("predict")
    if isinstance(section, dict):
        if not section.get("complete"):
            raise MechanoscopeError(
                f"{run / 'run.json'}: the prediction into this folder did not finish; run `mechanoscope predict` "
                "again with the same arguments (it resumes) before evaluating"
            )
        return section, []
    path = run / "predict.json"
    if not path.exists():
        return {}, ["run.json has no prediction and predict.json was not found: model identity and interval level unknown"]
    try:
        data = json.loads(path.read_text())
    except (OSError, ValueError) as exc:
        raise MechanoscopeError(f"{path}: could not be read as JSON ({exc}); re-run mechanoscope predict") from None
    if not isinstance(data, dict):
        raise MechanoscopeError(f"{path}: expected a JSON object at the top level")
    return data, []


def _drop_foreign_predictions(table: pd.DataFrame, predict: Mapping[str, Any], notes: list[str]) -> pd.DataFrame:
    """Remove ``pred_*`` columns the models of this run did not write (never scored).

    ``predict["columns"]`` (written by ``mechanoscope predict`` since ``run.json``) lists
    the prediction columns of the run's models; a table column ``pred_*`` that is not
    among them comes from elsewhere (an earlier prediction, another tool) and is left
    out with a note. Without that list (older records) the table is taken as it is.
    """
    made = predict.get("columns")
    if not isinstance(made, list):
        return table
    foreign = [c for c in table.columns if str(c).startswith("pred_") and c not in made]
    if foreign:
        notes.append(
            f"column(s) {', '.join(map(str, foreign))} were not written by the models of this run "
            "(see run.json); they are left out and not scored"
        )
        table = table.drop(columns=foreign)
    return table


def _open_crops(run: Path, n_rows: int) -> tuple[Any | None, str | None]:
    path = run / "crops.zarr"
    if not path.exists():
        return None, "crops.zarr not found: no example-cell gallery"
    try:
        import zarr

        store = zarr.open(str(path), mode="r")
        arr = store["crops"] if hasattr(store, "group_keys") or not hasattr(store, "shape") else store
    except Exception as exc:  # noqa: BLE001 - any reader failure only drops the gallery
        return None, f"crops.zarr could not be read ({type(exc).__name__}: {exc}): no gallery"
    shape = tuple(arr.shape)
    if len(shape) not in (3, 4):
        return None, f"crops.zarr holds an array of shape {shape}, expected (N, C, H, W): no gallery"
    if shape[0] != n_rows:
        return None, (
            f"crops.zarr holds {shape[0]} crops but cells.parquet has {n_rows} rows: they do not "
            "belong together, so no gallery is drawn"
        )
    return arr, None


def _classes_from(table: pd.DataFrame, predict: Mapping[str, Any]) -> list[str]:
    from_cols = [c[len(_PROB_PREFIX):] for c in table.columns if str(c).startswith(_PROB_PREFIX)]
    for key in ("classes",):
        cand = predict.get(key)
        if cand is None and isinstance(predict.get("model"), Mapping):
            cand = predict["model"].get(key)
        if isinstance(cand, list) and sorted(map(str, cand)) == sorted(from_cols):
            return [str(c) for c in cand]
    return from_cols


def _summary_pa(v: np.ndarray) -> dict[str, Any]:
    v = v[np.isfinite(v)]
    if not v.size:
        return {"n": 0}
    q25, med, q75 = np.percentile(v, [25, 50, 75])
    return {"n": int(v.size), "median_pa": float(med), "q25_pa": float(q25), "q75_pa": float(q75), "iqr_pa": float(q75 - q25)}


def _model_identity(predict: Mapping[str, Any]) -> dict[str, Any]:
    keys = ("model", "model_dir", "model_path", "model_name", "model_id", "model_hash", "task",
            "architecture", "classes", "target", "interval_level", "interval_method",
            "mechanoscope_version", "created", "date", "ensemble_size")
    out: dict[str, Any] = {}
    for k in keys:
        if k in predict:
            v = predict[k]
            if isinstance(v, Mapping):
                v = {kk: vv for kk, vv in v.items() if isinstance(vv, (str, int, float, bool)) or vv is None}
            out[k] = v
    return out


def evaluate_run(run_dir: str | os.PathLike[str], *, figures: bool = True, all_cells: bool = False) -> dict[str, Any]:
    """Evaluate the predictions of a run folder; write ``evaluation.json`` and figures.

    Reads ``RUN/cells.parquet`` (predictions, and truth where known),
    ``RUN/run.json`` (its ``predict`` stage: model identity, ``interval_level``, the
    prediction columns of the run's models; an older ``RUN/predict.json`` is read when
    there is no ``run.json``) and ``RUN/crops.zarr``
    (for the example-cell gallery). What is computed depends on the columns present:

    * ``pred_prob_<class>`` (+ ``pred_label``) and ``label``: :func:`classification_metrics`;
    * ``pred_stiffness_pa`` (+ ``pred_lo_pa``, ``pred_hi_pa``) and ``stiffness_pa``:
      :func:`regression_metrics`;
    * ``condition``: per-condition summaries and a rank test between conditions.

    Cells with ``qc_pass == False`` are left out; a table without a ``qc_pass`` column
    is an error unless ``all_cells`` (then every cell is scored, QC or not). When the
    table has a ``split``
    column, only cells with ``split == "test"`` are scored (``scope`` in the result
    says which cells were used).

    Parameters
    ----------
    run_dir
        Run folder.
    figures
        Also write ``RUN/figures/<name>.png`` (names in :data:`FIGURE_NAMES`).
    all_cells
        Score every cell, also those failing quality control (and tables without a
        ``qc_pass`` column).

    Returns
    -------
    dict
        The JSON-ready content written to ``RUN/evaluation.json``.

    Raises
    ------
    MechanoscopeError
        No run folder or cell table, no prediction columns, or invalid values (e.g. a
        non-positive modulus).
    """
    from mechanoscope import __version__
    from mechanoscope.io import atomic_path, read_table, write_json
    from mechanoscope.report.stiffness_figures import (
        bland_altman_png,
        class_fraction_png,
        condition_distribution_png,
        confusion_matrix_png,
        crop_gallery_png,
        predicted_vs_measured_png,
        reliability_png,
        roc_png,
        stiffness_gallery_png,
    )

    run = Path(run_dir)
    if not run.is_dir():
        raise MechanoscopeError(
            f"{run}: no such run folder; give the folder written by `mechanoscope predict`"
        )
    table_path = run / "cells.parquet"
    if not table_path.exists():
        raise MechanoscopeError(
            f"{table_path}: no cell table in this run folder; run `mechanoscope predict` into it first"
        )
    table = read_table(table_path).reset_index(drop=True)
    predict, notes = _read_predict_json(run)
    table = _drop_foreign_predictions(table, predict, notes)
    cols = set(map(str, table.columns))
    classes = _classes_from(table, predict)
    has_cls = len(classes) >= 2
    has_reg = "pred_stiffness_pa" in cols
    if len(classes) == 1:
        notes.append(f"only one probability column ({_PROB_PREFIX}{classes[0]}): classification skipped")
    if not has_cls and not has_reg:
        raise MechanoscopeError(
            f"{table_path}: no prediction columns (pred_prob_<class> for each class, or "
            "pred_stiffness_pa); run `mechanoscope predict` on this folder first"
        )
    try:
        interval_level = _none_if_nan(predict.get("interval_level"))
    except (TypeError, ValueError):
        interval_level = None
        notes.append(f"predict.json: interval_level {predict.get('interval_level')!r} is not a number")

    # ------------------------------------------------------------------ scope
    n_all = len(table)
    scope = np.ones(n_all, bool)
    scope_info: dict[str, Any] = {"n_cells_total": n_all}
    if "qc_pass" not in cols and not all_cells:
        raise MechanoscopeError(
            f"{table_path}: the cell table has no qc_pass column, so cells that fail quality "
            "control cannot be left out; make the table with `mechanoscope extract` (which adds "
            "qc_pass), add the column yourself, or pass --all-cells to score every cell"
        )
    if "qc_pass" in cols and not all_cells:
        qc = table["qc_pass"].astype("boolean").fillna(False).to_numpy(dtype=bool)
        scope &= qc
        scope_info["n_failed_qc_excluded"] = int((~qc).sum())
    if "split" in cols:
        split = table["split"].astype(object).map(lambda v: "" if pd.isna(v) else str(v).strip().lower()).to_numpy()
        is_test = split == "test"
        scope_info["split_counts"] = {str(k): int(v) for k, v in pd.Series(split).value_counts().items()}
        scope &= is_test
        scope_info["cells"] = "test split only (split == 'test')" + (", all cells (QC not applied)" if all_cells else ", QC-passing")
        if not is_test.any():
            notes.append(
                "the table has a split column but no 'test' cells: metrics are computed on test "
                "cells only, so none are reported (cells the model was trained on would give "
                "optimistic numbers)"
            )
    else:
        scope_info["cells"] = "all cells (QC not applied)" if all_cells else "all QC-passing cells"
    scope_info["n_cells_in_scope"] = int(scope.sum())
    sub = table.loc[scope].reset_index(drop=True)
    rows_in_full = np.flatnonzero(scope)

    result: dict[str, Any] = {
        "kind": "mechanoscope evaluation",
        "mechanoscope_version": __version__,
        "created": _dt.datetime.now(_dt.timezone.utc).isoformat(timespec="seconds"),
        "run_dir": str(run),
        "model": _model_identity(predict),
        "interval_level": interval_level,
        "n_cells": n_all,
        "n_images": int(table["image_id"].nunique()) if "image_id" in cols else None,
        "tasks": [t for t, h in (("classification", has_cls), ("regression", has_reg)) if h],
        "scope": scope_info,
        "truth": {"classification": False, "regression": False},
        "classification": None,
        "regression": None,
        "predictions": {},
        "conditions": None,
        "figures": {},
        "notes": notes,
        # images/conditions where segmentation found nothing or far too little (metrics/segmentation_qc.py), as predict recorded it
        "segmentation_qc": predict.get("segmentation_qc"),
    }
    figs: dict[str, bytes] = {}
    captions: dict[str, str] = {}

    # --------------------------------------------------------- classification
    prob = pred_lab = None
    if has_cls:
        prob_cols = [f"{_PROB_PREFIX}{c}" for c in classes]
        prob = sub[prob_cols].apply(pd.to_numeric, errors="coerce").to_numpy(dtype=float, na_value=np.nan)
        if "pred_label" in cols:
            pred_lab, pl_miss = _as_labels(sub["pred_label"])
            unknown = sorted(set(pred_lab[~pl_miss]) - set(classes))
            if unknown:
                raise MechanoscopeError(
                    f"{table_path}: column pred_label holds {unknown}, which have no "
                    f"{_PROB_PREFIX}<class> column (classes: {classes})"
                )
            pred_lab = np.where(pl_miss, None, pred_lab)
        else:
            argmax = np.argmax(np.nan_to_num(prob, nan=-1.0), axis=1)
            pred_lab = np.array([classes[i] for i in argmax], dtype=object)
        has_prob = np.isfinite(prob).all(axis=1)
        pred_lab = np.where(has_prob, pred_lab, None)
        positive = "stiff" if len(classes) == 2 and "stiff" in classes else classes[1] if len(classes) == 2 else None
        counts = pd.Series(pred_lab).dropna().astype(str).value_counts()
        result["predictions"]["classes"] = classes
        result["predictions"]["positive_class"] = positive
        result["predictions"]["class_counts"] = {c: int(counts.get(c, 0)) for c in classes}
        result["predictions"]["n_without_class_prediction"] = int((~has_prob).sum())
        if "label" in cols:
            lab, lab_miss = _as_labels(sub["label"])
            known = np.isin(lab, classes)
            unknown_truth = sorted(set(lab[~lab_miss & ~known]))
            use = ~lab_miss & known & has_prob & pd.notna(pred_lab)
            if unknown_truth:
                notes.append(
                    f"{int((~lab_miss & ~known).sum())} cell(s) with true classes {unknown_truth} not "
                    f"among the model's classes {classes} are left out of the classification metrics"
                )
            if use.any():
                m = classification_metrics(lab[use], prob[use], classes, y_pred=pred_lab[use], positive=positive)
                m["n_missing_truth"] = int(lab_miss.sum())
                m["n_unknown_truth_class"] = int((~lab_miss & ~known).sum())
                m["n_missing_prediction"] = int((~lab_miss & known & ~has_prob).sum())
                result["classification"] = m
                result["truth"]["classification"] = True
                if figures:
                    y, pr, pl = lab[use], prob[use], pred_lab[use]
                    if m["roc"]:
                        figs["roc"] = roc_png(y, pr, classes, positive=positive)
                        captions["roc"] = (
                            "Sensitivity against 1 − specificity as the probability threshold moves; "
                            "the area under the curve (AUC) is 0.5 for guessing and 1 for a perfect ranking."
                        )
                    figs["confusion_matrix"] = confusion_matrix_png(y, pl, classes)
                    captions["confusion_matrix"] = (
                        "Cells counted by true class (rows) and predicted class (columns); "
                        "percentages are of each true class."
                    )
                    figs["reliability"] = reliability_png(y, pr, classes, y_pred=pl)
                    captions["reliability"] = (
                        "Fraction of correct predictions against the model's confidence; a "
                        "calibrated model follows the diagonal. Bottom: cells per confidence bin."
                    )

    # ------------------------------------------------------------- regression
    if has_reg:
        e_pred = _as_float(sub["pred_stiffness_pa"], "pred_stiffness_pa")
        where = f"{table_path}: column "
        _check_positive(e_pred, "pred_stiffness_pa", where)
        lo = hi = e_true = None
        if "pred_lo_pa" in cols and "pred_hi_pa" in cols:
            lo = _as_float(sub["pred_lo_pa"], "pred_lo_pa")
            hi = _as_float(sub["pred_hi_pa"], "pred_hi_pa")
            _check_positive(lo, "pred_lo_pa", where)
            _check_positive(hi, "pred_hi_pa", where)
        if "stiffness_pa" in cols:
            e_true = _as_float(sub["stiffness_pa"], "stiffness_pa")
            _check_positive(e_true, "stiffness_pa", where)
        result["predictions"]["stiffness_pa"] = _summary_pa(e_pred)
        if e_true is not None and (np.isfinite(e_true) & np.isfinite(e_pred)).any():
            try:
                m = regression_metrics(e_true, e_pred, lo, hi)
            except MechanoscopeError as exc:
                raise MechanoscopeError(f"{table_path}: {exc}") from None
            if m["interval"] is not None:
                m["interval"]["nominal_level"] = interval_level
            result["regression"] = m
            result["truth"]["regression"] = True
            if figures:
                figs["predicted_vs_measured"] = predicted_vs_measured_png(e_true, e_pred, lo, hi)
                captions["predicted_vs_measured"] = (
                    "Each dot is a cell with a measured modulus; solid line: perfect agreement, "
                    "dotted: 2-fold off" + ("; grey bars: prediction intervals." if lo is not None else ".")
                )
                figs["bland_altman"] = bland_altman_png(e_true, e_pred)
                captions["bland_altman"] = (
                    "Ratio predicted/measured against the cell's mean stiffness; red line: average "
                    "bias, dashed: range holding 95 % of cells. A trend means the error depends on stiffness."
                )

    # ------------------------------------------------------------- conditions
    if "condition" in cols and sub["condition"].notna().any():
        cond = sub["condition"]
        e_vals = sub["pred_stiffness_pa"] if has_reg else None
        summaries = summarize_by_condition(cond, e_vals, pred_lab if has_cls else None, classes if has_cls else None)
        comparison = None
        if has_reg:
            comparison = compare_conditions(e_vals, cond)
            if comparison is not None:
                comparison["value"] = "pred_stiffness_pa"
        class_test = _class_by_condition_test(pred_lab, cond) if has_cls else None
        result["conditions"] = {
            "column": "condition",
            "n_without_condition": int(cond.isna().sum()),
            "summaries": summaries,
            "comparison": comparison,
            "class_comparison": class_test,
        }
    if figures:
        cond_arg = sub["condition"] if "condition" in cols and sub["condition"].notna().any() else None
        if has_reg and np.isfinite(_as_float(sub["pred_stiffness_pa"], "pred_stiffness_pa")).any():
            figs["stiffness_by_condition"] = condition_distribution_png(sub["pred_stiffness_pa"], cond_arg)
            captions["stiffness_by_condition"] = (
                "Predicted Young's modulus of every cell" + (" per condition" if cond_arg is not None else "")
                + " (log scale); boxes span the middle half of the cells, red line: median."
            )
        if has_cls and pd.notna(pred_lab).any():
            figs["class_by_condition"] = class_fraction_png(pred_lab, cond_arg, classes)
            captions["class_by_condition"] = "Fraction of cells assigned to each class" + (
                " per condition." if cond_arg is not None else "."
            )

        # --------------------------------------------------------------- gallery
        if len(sub):
            crops, why = _open_crops(run, n_all)
            if why:
                notes.append(why)
            else:
                view = _RowView(crops, rows_in_full)
                if has_cls and pd.notna(pred_lab).any():
                    conf = np.full(len(sub), np.nan)
                    lut = {c: i for i, c in enumerate(classes)}
                    for i, pl in enumerate(pred_lab):
                        if pl is not None and np.isfinite(prob[i]).all():
                            conf[i] = prob[i, lut[pl]]
                    truth = sub["label"] if "label" in cols and sub["label"].notna().any() else None
                    figs["crop_gallery"] = crop_gallery_png(view, pred_lab, conf, truth, classes=classes)
                    captions["crop_gallery"] = (
                        "Intensity crops of the cells the model was most confident about, per predicted class"
                        + (", correct and wrong." if truth is not None else ".")
                    )
                elif has_reg:
                    truth_pa = sub["stiffness_pa"] if "stiffness_pa" in cols else None
                    figs["crop_gallery"] = stiffness_gallery_png(view, sub["pred_stiffness_pa"], truth_pa)
                    captions["crop_gallery"] = "Intensity crops of the cells predicted softest and stiffest."

        fig_dir = run / "figures"
        for name in FIGURE_NAMES:  # remove figures of an earlier evaluation that no longer apply
            stale = fig_dir / f"{name}.png"
            if name not in figs and stale.exists():
                stale.unlink()
        for name, png in figs.items():
            with atomic_path(fig_dir / f"{name}.png") as tmp:
                tmp.write_bytes(png)
            result["figures"][name] = {
                "file": f"figures/{name}.png",
                "title": FIGURE_NAMES[name],
                "caption": captions.get(name, ""),
            }

    if not result["truth"]["classification"] and not result["truth"]["regression"]:
        notes.append("no measured stiffness in this run: metrics need truth; figures show predictions only")
    out = _jsonable(result)
    write_json(out, run / "evaluation.json")
    return out


class _RowView:
    """Index a crop array through a row mapping (scope rows → full-table rows)."""

    def __init__(self, arr: Any, rows: np.ndarray) -> None:
        self._arr, self._rows = arr, rows

    def __getitem__(self, i: int) -> np.ndarray:
        return np.asarray(self._arr[int(self._rows[int(i)])])

    def __len__(self) -> int:
        return len(self._rows)
