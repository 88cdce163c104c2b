"""Explain a predicted run: attribution maps of a few cells per class, embedding map, domain summary.

:func:`explain_run` computes (with :mod:`mechanoscope.learn.attribution` and
:mod:`mechanoscope.learn.domain`) and writes ``RUN/explain/explanation.json`` and its
figures, which the report's explanation section shows.
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import Callable

import numpy as np
import pandas as pd

from mechanoscope.errors import MechanoscopeError

__all__ = ["explain_run", "EXPLAIN_FOLDER"]

EXPLAIN_FOLDER = "explain"


def _groups_for(model, table: pd.DataFrame) -> str:
    """The column whose values get their own attribution examples."""
    if model.task == "classification" and "pred_label" in table.columns:
        return "pred_label"
    if "condition" in table.columns:
        return "condition"
    return "_tercile"


def explain_run(
    run_dir: str | os.PathLike[str],
    models: list,
    *,
    out: str | os.PathLike[str] | None = None,
    per_class: int = 4,
    method: str = "integrated_gradients",
    max_embedding_cells: int = 3000,
    seed: int = 0,
    progress: Callable[[str], None] | None = None,
) -> dict:
    """Explain the predictions of ``models`` on a predicted run folder.

    For every CNN model: integrated-gradients (or ``method``) maps of up to
    ``per_class`` QC-passing cells per predicted class (regression: per condition,
    else per tercile of the predicted modulus), the mask-mass fraction and the
    model-randomisation check. For the first CNN model: the 2-D embedding of its
    penultimate features (up to ``max_embedding_cells`` cells), coloured by
    prediction, condition and replicate where the table has them. For the run: the
    applicability-domain summary (:func:`~mechanoscope.learn.domain.domain_summary`).

    Writes ``OUT/explanation.json`` (default ``OUT = RUN/explain``) and PNGs; returns
    the explanation dict.
    """
    from mechanoscope.io import make_output_folder, write_json
    from mechanoscope.io.atomic import atomic_path
    from mechanoscope.io.crop_store import check_crops_match_table, read_crop_store
    from mechanoscope.learn.attribution import embedding_2d, explain_cells, pick_cells
    from mechanoscope.learn.data import load_run, normalise_crops
    from mechanoscope.learn.domain import domain_summary, penultimate_features
    from mechanoscope.learn.predict import load_stiffness_model
    from mechanoscope.report.explanation_section import attribution_gallery_png, embedding_png

    say = progress or (lambda msg: None)
    run = Path(run_dir)
    target = Path(out) if out is not None else run / EXPLAIN_FOLDER
    loaded = [m if hasattr(m, "members") else load_stiffness_model(m) for m in models]
    if not loaded:
        raise MechanoscopeError("no model given; pass the --model folder(s) that predicted the run")
    table = load_run(run, with_crops=False).table.reset_index(drop=True)
    if len(table) == 0:
        raise MechanoscopeError(f"{run / 'cells.parquet'}: no cells to explain")
    store = read_crop_store(run / "crops.zarr")
    check_crops_match_table(table, store)
    make_output_folder(target, "explanation folder (--out)")
    result: dict = {"run": str(run), "models": [m.identity for m in loaded], "attributions": [], "embedding": None, "notes": []}

    def write_png(name: str, data: bytes) -> None:
        with atomic_path(target / name) as tmp:
            tmp.write_bytes(data)

    for k, m in enumerate(loaded):
        if m.config["model_type"] != "cnn":
            result["notes"].append(f"{m.path}: a features baseline has no attribution maps (permutation importance: mechanoscope.learn.attribution.permutation_importance_features)")
            continue
        by = _groups_for(m, table)
        t = table
        if by == "_tercile":
            col = next((c for c in ("pred_stiffness_pa", f"pred_{m.config['target']}") if c in table.columns), None)
            if col is None:
                raise MechanoscopeError(f"{run / 'cells.parquet'}: no predictions of model {m.path}; run `mechanoscope predict` with it first")
            t = table.assign(_tercile=pd.qcut(table[col].rank(method="first"), 3, labels=["lowest third", "middle third", "highest third"]).astype(str))
        rows = pick_cells(t, by=by, per_group=per_class, seed=seed)
        say(f"attribution maps of {len(rows)} cells for {m.config['target']} ({method})")
        att = explain_cells(m, table, store.crops, rows, channels=store.channels, method=method, seed=seed)
        name = f"attribution_{k}_{m.config['target']}.png"
        groups = t[by].astype(str).iloc[rows].tolist()
        titles = [f"{g}: {m.config['target']}" if m.task == "regression" else f"{g}" for g in groups]
        if m.task == "regression" and "pred_stiffness_pa" in table.columns:
            titles = [f"{g}: {v:.0f} Pa" for g, v in zip(groups, table["pred_stiffness_pa"].iloc[rows])]
        write_png(name, attribution_gallery_png(att.crops, att.maps, titles, masks=att.masks))
        result["attributions"].append({**att.summary(), "figure": name, "grouped_by": by if by != "_tercile" else "tercile of the predicted value",
                                       "cells": [{"row": int(r), "image_id": str(table["image_id"].iloc[r]), "cell_id": int(table["cell_id"].iloc[r]), "group": g}
                                                 for r, g in zip(rows, groups)]})
        if result["embedding"] is None:
            rng = np.random.default_rng(seed)
            sel = np.sort(rng.choice(len(table), size=min(max_embedding_cells, len(table)), replace=False))
            say(f"embedding map of {len(sel)} cells")
            feats = []
            for s in range(0, len(sel), 256):
                part = sel[s : s + 256]
                x = normalise_crops(np.asarray(store.crops.oindex[part] if hasattr(store.crops, "oindex") else store.crops[part], dtype=np.float32),
                                    store.channels, m.config["channels"], float(m.normalization["contrast_scale"]))
                feats.append(penultimate_features(m.members[0], x))
            if len(sel) >= 3:
                coords, var = embedding_2d(np.concatenate(feats), seed=seed)
                sub = table.iloc[sel]
                colour = {c: sub[c].to_numpy() for c in ("pred_label", "pred_stiffness_pa", "condition", "replicate") if c in sub.columns}
                if not colour:
                    colour = {"image_id": sub["image_id"].to_numpy()}
                write_png("embedding.png", embedding_png(coords, colour, explained=var))
                result["embedding"] = {"model": str(m.config["target"]), "figure": "embedding.png", "n_cells": int(len(sel)), "explained_variance": var,
                                       "coloured_by": list(colour)}
    result["domain"] = domain_summary(table, loaded)
    write_json(result, target / "explanation.json")
    return result
