"""Benchmark of memory: peak RSS of ``mechanoscope predict IMAGES`` over N and 10 × N images.

``predict`` processes one field of view at a time (read once → segment → extract →
predict → write its parts), so its peak memory should be flat: set by one field and
the models, not by the number of images. This script simulates small bright-field
fields (``simulate_adherent``), trains a tiny CNN soft/stiff classifier for one epoch
on a few of them, then runs ``python -m mechanoscope.cli.main predict`` in a fresh
subprocess over N and over 10 × N images and reads that subprocess's peak resident
set size with ``resource.getrusage(RUSAGE_CHILDREN)`` (each measurement in its own
wrapper process, so that the numbers do not mix).

Prints JSON with, per data set (``1n``, ``10n``, … images): images, cells, the size
of all of its crops (what a run that held every crop in memory would add), peak RSS
in MiB, seconds; and ``rss_growth_mib`` (largest minus smallest data set) next to
``crops_growth_mib``. Measured: the loop over fields is flat; consolidating the crop
store adds a bounded ~15-20 MiB (zarr/allocator caches that stop growing after a few
thousand crops), which is what a small data set shows as "growth".

Usage: python benchmarks/memory.py [--n-images 8] [--size-px 256] [--cells 16] [--seed 0] [--factors 1 10]
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import subprocess
import sys
import tempfile
import time
import warnings
from pathlib import Path

WRAPPER = """
import resource, subprocess, sys
proc = subprocess.run(sys.argv[1:], capture_output=True, text=True)
peak_kib = resource.getrusage(resource.RUSAGE_CHILDREN).ru_maxrss  # KiB on Linux
print(proc.returncode, peak_kib)
sys.stderr.write(proc.stderr[-2000:])
"""


def _train_tiny_cnn(root: Path, size_px: int, cells: int, seed: int) -> Path:
    from mechanoscope.cells.extract import ExtractConfig, extract_folder
    from mechanoscope.learn.config import TrainConfig
    from mechanoscope.learn.train import train_model
    from mechanoscope.pipeline import attach_simulation_truth
    from mechanoscope.segment.batch import segment_images
    from mechanoscope.simulate import AdherentConfig, simulate_adherent

    sim = simulate_adherent(AdherentConfig(n_images=8, image_shape_px=(size_px, size_px), cells_per_image=cells), root / "train_sim", seed=seed + 1)
    run = root / "train_run"
    segment_images(sim / "images", run)
    extract_folder(sim / "images", run / "labels", run, ExtractConfig.build(crop={"crop_size_um": 80.0, "crop_pixels": 64}))
    attach_simulation_truth(run, sim)
    cfg = TrainConfig.build(target="label", epochs=1, width=8, batch_size=32, seed=seed, num_threads=1, min_cells_per_class=3)
    return train_model(run, cfg, root / "model").model_dir


def _measure(images: Path, model: Path, out: Path) -> dict:
    env = {**os.environ, "OMP_NUM_THREADS": "1", "MKL_NUM_THREADS": "1"}
    cmd = [sys.executable, "-c", WRAPPER, sys.executable, "-m", "mechanoscope.cli.main", "predict", str(images), "--model", str(model), "--out", str(out)]
    t0 = time.perf_counter()
    proc = subprocess.run(cmd, capture_output=True, text=True, env=env, timeout=1800)
    seconds = time.perf_counter() - t0
    code, peak_kib = (int(v) for v in proc.stdout.split()[-2:])
    if code != 0:
        raise SystemExit(f"predict failed ({code}): {proc.stderr}")
    info = json.loads((out / "predict.json").read_text())
    crops = 0
    for part in (out / "parts").glob("*.crops.npy"):
        crops += part.stat().st_size
    return {
        "images": len(info["status"]),
        "cells": info["n_cells"],
        "crops_mib": round(crops / 2**20, 1),
        "peak_rss_mib": round(peak_kib / 1024, 1),
        "seconds": round(seconds, 1),
    }


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--n-images", type=int, default=8)
    ap.add_argument("--size-px", type=int, default=256)
    ap.add_argument("--cells", type=int, default=16)
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--factors", type=int, nargs="+", default=[1, 10], help="data set sizes as multiples of --n-images")
    args = ap.parse_args()
    warnings.simplefilter("ignore")
    from mechanoscope.simulate import AdherentConfig, simulate_adherent

    with tempfile.TemporaryDirectory(prefix="mechanoscope-memory-") as tmp:
        root = Path(tmp)
        model = _train_tiny_cnn(root, args.size_px, args.cells, args.seed)
        n_big = max(args.factors) * args.n_images
        sim = simulate_adherent(AdherentConfig(n_images=n_big, image_shape_px=(args.size_px, args.size_px), cells_per_image=args.cells), root / "sim", seed=args.seed)
        runs = {}
        for f in sorted(set(args.factors)):
            images = root / f"images_{f}n"
            images.mkdir()
            for p in sorted((sim / "images").iterdir())[: f * args.n_images]:
                shutil.copy2(p, images / p.name)
            runs[f"{f}n"] = _measure(images, model, root / f"pred_{f}n")
    first, last = runs[min(runs, key=lambda k: int(k[:-1]))], runs[max(runs, key=lambda k: int(k[:-1]))]
    result = {
        "benchmark": "predict IMAGES peak memory (one field of view at a time)",
        "image_px": [args.size_px, args.size_px],
        "cells_per_image": args.cells,
        "n_images": args.n_images,
        "model": "tiny CNN classifier (width 8, 1 epoch), crops 64 px / 80 µm, intensity + mask",
        "runs": runs,
        "rss_growth_mib": round(last["peak_rss_mib"] - first["peak_rss_mib"], 1),
        "crops_growth_mib": round(last["crops_mib"] - first["crops_mib"], 1),
        "measured_with": "resource.getrusage(RUSAGE_CHILDREN).ru_maxrss of a wrapper around the predict subprocess",
    }
    print(json.dumps(result, indent=2))


if __name__ == "__main__":
    main()
