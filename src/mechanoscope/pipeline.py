"""End-to-end runs that compose the stages.

``run_demo`` is what ``make demo`` runs: at this stage of the product it simulates
soft and stiff adherent cells, summarises the ground truth and writes figures and a
summary; later stages (segment → extract → train → predict → evaluate → report)
are added to it as they land.
"""

from __future__ import annotations

import os
import time
from pathlib import Path
from typing import Callable

import numpy as np
import pandas as pd

from mechanoscope import __version__
from mechanoscope.io import read_image, read_label_image, write_json
from mechanoscope.simulate import AdherentConfig, simulate_adherent

__all__ = ["run_demo", "summarise_simulation"]


def summarise_simulation(cells: pd.DataFrame) -> dict:
    """Per-population ground-truth summary: counts and medians with units."""
    out: dict = {}
    for label, grp in cells.groupby("label"):
        out[str(label)] = {
            "n_cells": int(len(grp)),
            "stiffness_pa_median": float(grp["stiffness_pa"].median()),
            "stiffness_pa_iqr": [float(grp["stiffness_pa"].quantile(0.25)), float(grp["stiffness_pa"].quantile(0.75))],
            "spread_area_um2_median": float(grp["spread_area_um2"].median()),
            "mean_height_um_median": float(grp["mean_height_um"].median()),
            "aspect_ratio_median": float(grp["aspect_ratio_latent"].median()),
        }
    return out


def run_demo(out: str | os.PathLike[str], *, seed: int = 0, n_images: int = 8, progress: Callable[[str], None] | None = None) -> dict:
    """Run the demo chain on simulated data and return its summary.

    Writes ``out/data`` (the simulated data set), ``out/fields.png`` (one soft and
    one stiff field of view with the true outlines) and ``out/summary.json``.
    """
    say = progress or (lambda msg: None)
    out = Path(out)
    t0 = time.perf_counter()
    config = AdherentConfig(n_images=n_images)
    say(f"simulating {n_images} bright-field fields of view of soft and stiff cells")
    data = simulate_adherent(config, out / "data", seed=seed)
    cells = pd.read_parquet(data / "cells.parquet")
    from mechanoscope.report import field_gallery

    firsts = cells.groupby("label")["image_id"].first()
    imgs, labs, titles = [], [], []
    for label, image_id in firsts.items():
        img = read_image(data / "images" / f"{image_id}.tif")
        imgs.append(img.data)
        labs.append(read_label_image(data / "labels" / f"{image_id}.tif").data)
        med = cells.loc[cells.image_id == image_id, "stiffness_pa"].median()
        titles.append(f"{label}: {image_id}, median E = {med:.0f} Pa")
    field_gallery(imgs, titles, config.optics.pixel_size_um, out / "fields.png", labels=labs)
    summary = {
        "mechanoscope_version": __version__,
        "seed": seed,
        "n_images": n_images,
        "n_cells": int(len(cells)),
        "populations": summarise_simulation(cells),
        "seconds": round(time.perf_counter() - t0, 2),
        "outputs": {"data": str(data), "figure": str(out / "fields.png")},
    }
    write_json(summary, out / "summary.json")
    return summary
