"""Benchmark of the adherent-cell simulator.

Prints JSON with: cells generated per second, fields of view per second, and the
ROC AUC with which the single best morphology feature (computed from the TRUE masks
with scikit-image) separates the ``soft`` from the ``stiff`` population. This AUC
measures how hard the task is: the issue asks for 0.70–0.85 (learnable, not trivial).

Usage: python benchmarks/simulate.py [--n-images 40] [--seed 0] [--modality brightfield]
"""

from __future__ import annotations

import argparse
import json
import time

import numpy as np
import pandas as pd
from skimage.measure import regionprops_table
from sklearn.metrics import roc_auc_score

from mechanoscope.simulate import AdherentConfig, simulate_field

FEATURES = ["area", "perimeter", "circularity", "aspect_ratio", "solidity", "eccentricity", "extent"]


def mask_features(labels: np.ndarray, pixel_size_um: float) -> pd.DataFrame:
    """Outline features from a label image (areas in µm², lengths in µm)."""
    t = pd.DataFrame(regionprops_table(labels, properties=(
        "label", "area", "perimeter", "axis_major_length", "axis_minor_length",
        "solidity", "eccentricity", "extent", "bbox")))
    t["area"] = t["area"] * pixel_size_um**2
    t["perimeter"] = t["perimeter"] * pixel_size_um
    t["circularity"] = np.clip(4 * np.pi * t["area"] / t["perimeter"] ** 2, 0, 1)
    t["aspect_ratio"] = t["axis_major_length"] / np.maximum(t["axis_minor_length"], 1e-9)
    edge = (t["bbox-0"] == 0) | (t["bbox-1"] == 0) | (t["bbox-2"] == labels.shape[0]) | (t["bbox-3"] == labels.shape[1])
    t["edge_touching"] = edge
    return t.rename(columns={"label": "cell_id"})


def single_feature_auc(table: pd.DataFrame) -> dict[str, float]:
    """ROC AUC of each feature for soft vs stiff, direction-free (max(AUC, 1 − AUC))."""
    y = (table["label"] == "stiff").to_numpy()
    out = {}
    for f in FEATURES:
        auc = roc_auc_score(y, table[f].to_numpy())
        out[f] = float(max(auc, 1 - auc))
    return out


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__)
    ap.add_argument("--n-images", type=int, default=40)
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--modality", default="brightfield", choices=["brightfield", "phase_contrast"])
    args = ap.parse_args()
    config = AdherentConfig(n_images=args.n_images, modality=args.modality)
    seeds = np.random.SeedSequence(args.seed).spawn(args.n_images)
    rows = []
    n_cells = 0
    t0 = time.perf_counter()
    for i in range(args.n_images):
        pop = config.population_names[i % len(config.population_names)]
        fld = simulate_field(config, seeds[i], population=pop, image_id=f"img_{i:04d}")
        n_cells += len(fld.cells)
        feats = mask_features(fld.labels, config.optics.pixel_size_um)
        feats = feats.merge(fld.cells[["cell_id", "label", "stiffness_pa"]], on="cell_id")
        rows.append(feats)
    elapsed = time.perf_counter() - t0
    table = pd.concat(rows, ignore_index=True)
    whole = table[~table["edge_touching"]]
    aucs = single_feature_auc(whole)
    best = max(aucs, key=aucs.get)
    print(json.dumps({
        "benchmark": "simulate_adherent",
        "modality": args.modality,
        "image_shape_px": list(config.image_shape_px),
        "n_images": args.n_images,
        "n_cells": n_cells,
        "n_cells_scored_not_edge": int(len(whole)),
        "seconds": round(elapsed, 3),
        "cells_per_second": round(n_cells / elapsed, 2),
        "fields_per_second": round(args.n_images / elapsed, 3),
        "single_feature_auc": {k: round(v, 4) for k, v in aucs.items()},
        "best_single_feature": best,
        "best_single_feature_auc": round(aucs[best], 4),
        "target_best_auc_range": [0.70, 0.85],
    }, indent=2))


if __name__ == "__main__":
    main()
