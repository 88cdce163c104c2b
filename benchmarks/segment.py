"""Benchmark of label-free cell segmentation: learned U-Net vs classical pipeline.

Prints JSON (and writes it to ``--out`` if given) with, for both methods:

1. **Simulated** adherent cells (bright-field AND phase contrast, fixed seeds): one
   U-Net is trained on the training images of *both* modalities together; AP@0.5,
   AP@[0.5:0.95] and F1@0.5 on held-out test images, per modality and pooled.
2. **Real** phase-contrast images (Usiigaci, manual whole-cell masks): fixed split by
   file name (``sorted(names)``: first 40 train — the model's own validation images
   are drawn from these — last 5 test); same scores on the 5 test images.
3. **Speed**: megapixels per second of inference of both methods on this machine
   (every test image segmented once after a warm-up call; image sizes reported).
4. The settings: training configs, wall time of each training, simulation seeds,
   data split, classical config, thread count and library versions.

The learned model's instance-extraction thresholds (interior / foreground threshold,
minimum cell area) are chosen on the validation images that the training itself held
out (grid search on pooled AP@0.5, as StarDist's ``optimize_thresholds``); results with
the library's default thresholds are reported too (``learned_default_thresholds``).
The classical pipeline gets one data-derived setting and nothing tuned:
``cell_diameter_um`` = median equivalent-circle diameter of the *training* cells of
the same data set (never of the test cells); everything else is its default.
No setting is tuned on test images.

Usage::

    python benchmarks/segment.py --quick                  # ~2 min smoke run
    python benchmarks/segment.py --out seg.json --figures /tmp/segfig   # full run, ~25 min on 2 cores

The Usiigaci images carry no pixel size; 0.87 µm/px is an *estimate* (6.5 µm camera
pixel × 2 binning / (10× objective × 1.5× tube lens)) and is reported as such.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

import numpy as np

REPO = Path(__file__).resolve().parents[1]
DEFAULT_DATA = REPO.parent / "shared" / "data" / "usiigaci_phase_contrast"
USIIGACI_PX_ESTIMATE_UM = 6.5 * 2 / (10 * 1.5)  # 0.8667 µm/px

# fixed seeds of the simulated fields of view (train and test never share a seed)
SIM_SEEDS = {
    "brightfield": {"train": 1000, "test": 2000},
    "phase_contrast": {"train": 3000, "test": 4000},
}
SCORE_KEYS = ("n_images", "n_true", "n_pred", "ap_50", "ap_75", "ap_50_95", "f1_50",
              "precision_50", "recall_50", "pq", "sq", "dice")


def log(msg: str) -> None:
    print(f"[{time.strftime('%H:%M:%S')}] {msg}", file=sys.stderr, flush=True)


def rnd(v: Any, nd: int = 4) -> Any:
    return round(float(v), nd) if isinstance(v, (float, np.floating)) else v


# --------------------------------------------------------------------------- data
def simulate_set(modality: str, n: int, seed0: int, shape: int) -> tuple[list[np.ndarray], list[np.ndarray], dict]:
    """``n`` fields of view with seeds ``seed0 .. seed0+n-1`` (soft/stiff alternating)."""
    from mechanoscope.simulate import AdherentConfig, simulate_field

    kw: dict[str, Any] = {"defocus_um": 0.0} if modality == "phase_contrast" else {}
    cfg = AdherentConfig(modality=modality, image_shape_px=(shape, shape), n_images=max(n, 1), **kw)
    images, labels = [], []
    for i in range(n):
        pop = cfg.population_names[i % len(cfg.population_names)]
        f = simulate_field(cfg, seed0 + i, population=pop, image_id=f"{modality}_{seed0 + i}")
        images.append(f.image)
        labels.append(f.labels)
    info = {
        "modality": modality,
        "image_shape_px": [shape, shape],
        "pixel_size_um": cfg.optics.pixel_size_um,
        "seeds": [seed0, seed0 + n - 1] if n else [],
        "defocus_um": cfg.defocus_um,
        "cells_per_image": cfg.cells_per_image,
        "touching_fraction": cfg.touching_fraction,
        "populations": "alternating " + "/".join(cfg.population_names),
    }
    return images, labels, info


def usiigaci_split(data: Path, n_test: int = 5) -> tuple[list[str], list[str], str]:
    """Train/test names: index.json's split if it has a held-out split, else sorted names."""
    index = json.loads((data / "index.json").read_text())
    names = sorted(e["name"] for e in index)
    splits = {e["name"]: e.get("split", "train") for e in index}
    held = [n for n in names if splits[n] != "train"]
    if held:
        return [n for n in names if splits[n] == "train"], held, "index.json split"
    return names[:-n_test], names[-n_test:], f"sorted(names): first {len(names) - n_test} train, last {n_test} test"


def read_usiigaci(data: Path, names: list[str], px: float) -> tuple[list[np.ndarray], list[np.ndarray], list[Path]]:
    from mechanoscope.io import read_image, read_label_image

    images, labels, paths = [], [], []
    for n in names:
        ip = data / "images" / f"{n}.png"
        if not ip.exists():
            ip = data / "images_8bit" / f"{n}.png"
        mp = data / "masks" / f"{n}_instances.png"
        images.append(read_image(ip, pixel_size_um=px).as_2d())
        labels.append(read_label_image(mp).as_2d().astype(np.int32))
        paths += [ip, mp]
    return images, labels, paths


def median_cell_diameter_um(labels: list[np.ndarray], px: float) -> float:
    """Median equivalent-circle diameter (µm) of all cells in ``labels``."""
    areas = []
    for lab in labels:
        counts = np.bincount(lab.ravel())[1:]
        areas.append(counts[counts > 0])
    a = np.concatenate(areas) * px * px
    return float(np.median(2.0 * np.sqrt(a / np.pi)))


# --------------------------------------------------------------------------- training
def train(images, labels, px, cfg, out: Path, input_paths=None) -> tuple[Any, dict]:
    from mechanoscope.segment.network import load_segmentation_model
    from mechanoscope.segment.network_train import train_segmentation


    def progress(epoch: int, epochs: int, rec: dict) -> None:
        log(f"  {out.name}: epoch {epoch}/{epochs} train_loss={rec['train_loss']} "
            f"val_loss={rec['val_loss']} ({rec['seconds']} s){' *' if rec['best'] else ''}")

    log(f"training {out.name}: {len(images)} images, {cfg.epochs} epochs x {cfg.patches_per_epoch} "
        f"patches of {cfg.patch_size_px} px at {cfg.pixel_size_um} µm/px")
    t0 = time.perf_counter()
    train_segmentation(images, labels, pixel_sizes_um=px, config=cfg, out=out, progress=progress,
                       input_paths=input_paths, command=sys.argv, overwrite=True)
    wall = time.perf_counter() - t0
    model = load_segmentation_model(out, device="cpu")
    m = model.metrics
    info = {
        "wall_time_s": round(wall, 1),
        "epochs_run": m.get("epochs_run"),
        "best_epoch": m.get("best_epoch"),
        "stopped_early": m.get("stopped_early"),
        "best_val_loss": rnd(m.get("best_val_loss")),
        "final_train_loss": rnd(m.get("final_train_loss")),
        "n_train_images": m.get("n_train_images"),
        "n_validation_images": m.get("n_validation_images"),
        "validation_scores": {k: rnd(v) for k, v in (m.get("validation_scores") or {}).items()},
        "receptive_field_radius_px": model.rf_radius_px,
        "config": cfg.model_dump(mode="json"),
    }
    log(f"trained {out.name} in {wall:.0f} s; validation AP@0.5 = {info['validation_scores'].get('ap_50')}")
    return model, info


# --------------------------------------------------------------------------- evaluation
def summarize(per: list[dict]) -> dict:
    """Scores pooled over images (TP/FP/FN summed, as StarDist's matching_dataset)."""
    from mechanoscope.evaluate.segmentation_pooled import aggregate_segmentation_scores

    agg = aggregate_segmentation_scores(per)
    out = {k: rnd(agg[k]) for k in SCORE_KEYS}
    out["per_image_ap_50"] = [rnd(s["ap_50"], 3) for s in per]
    return out


def evaluate(images, labels, px: float, methods: dict[str, Any]) -> tuple[dict, dict, dict, dict]:
    """Segment every image with every method (after one untimed warm-up call each).

    Returns pooled scores per method, per-image raw scores, timing and the predictions.
    """
    from mechanoscope.evaluate.segmentation import segmentation_scores

    scores, raw, timing, preds = {}, {}, {}, {}
    for name, fn in methods.items():
        fn(images[0], px)  # warm-up: imports, thread pools, allocator
        per, secs, out = [], [], []
        for img, lab in zip(images, labels):
            t0 = time.perf_counter()
            pred = fn(img, px)
            secs.append(time.perf_counter() - t0)
            out.append(pred)
            per.append(segmentation_scores(pred, lab))
        scores[name] = summarize(per)
        raw[name] = per
        mp = sum(im.size for im in images) / 1e6
        timing[name] = {"megapixels": round(mp, 3), "seconds": round(sum(secs), 3),
                        "megapixels_per_s": round(mp / sum(secs), 3)}
        preds[name] = out
    return scores, raw, timing, preds


def overlay_png(path: Path, image: np.ndarray, truth: np.ndarray, preds: dict[str, np.ndarray]) -> None:
    """Side-by-side panels: truth outlines (green), then each method's outlines."""
    import imageio.v3 as iio
    from skimage.segmentation import find_boundaries

    img = image.astype(np.float32)
    lo, hi = np.percentile(img, (0.5, 99.5))
    g = np.clip((img - lo) / max(hi - lo, 1e-9), 0, 1)
    colours = [(0, 255, 0), (255, 40, 40), (40, 160, 255), (255, 200, 0)]
    panels = []
    for k, lab in enumerate([truth, *preds.values()]):
        rgb = (np.repeat(g[..., None], 3, axis=2) * 255).astype(np.uint8)
        b = find_boundaries(lab, mode="inner")
        rgb[b] = colours[k % len(colours)]
        panels.append(rgb)
        panels.append(np.full((img.shape[0], 8, 3), 255, np.uint8))
    path.parent.mkdir(parents=True, exist_ok=True)
    iio.imwrite(path, np.concatenate(panels[:-1], axis=1))


def classical_method(cfg):
    from mechanoscope.segment.classical import segment_classical

    return lambda img, px: segment_classical(img, pixel_size_um=px, config=cfg)


def network_method(model, inference=None):
    from mechanoscope.segment.network import segment_network

    return lambda img, px: segment_network(img, pixel_size_um=px, model=model, inference=inference)


# --------------------------------------------------------------------------- cross-validation
def cv_folds(names: list[str], k: int, seed: int = 0) -> list[list[str]]:
    """``k`` disjoint test folds of image names (seeded permutation of the sorted names)."""
    order = np.random.default_rng(seed).permutation(sorted(names))
    return [sorted(str(n) for n in order[i::k]) for i in range(k)]


def cross_validate(data: Path, names: list[str], px: float, cfg, k: int, work: Path, folds_to_run=None) -> dict:
    """k-fold cross-validation by image: each fold's model never sees its test images.

    The model's thresholds are chosen on validation images drawn from the fold's own
    training images. Scores are pooled over all test images of all folds run (TP/FP/FN
    summed) and given per fold (mean, std, min, max).
    """
    from mechanoscope.evaluate.segmentation import segmentation_scores

    folds = cv_folds(names, k)
    per_all, per_fold, fold_info = [], [], []
    for f, test_names in enumerate(folds):
        if folds_to_run is not None and f not in folds_to_run:
            continue
        train_names = [n for n in sorted(names) if n not in set(test_names)]
        tr_i, tr_l, tr_paths = read_usiigaci(data, train_names, px)
        te_i, te_l, _ = read_usiigaci(data, test_names, px)
        model, tinfo = train(tr_i, tr_l, px, cfg, work / f"cv_{cfg.representation}_fold{f}", input_paths=tr_paths)
        per = [segmentation_scores(segment_network_fn(model)(img, px), lab) for img, lab in zip(te_i, te_l)]
        per_all += per
        sc = summarize(per)
        per_fold.append(sc)
        fold_info.append({"fold": f, "test_images": test_names, "wall_time_s": tinfo["wall_time_s"],
                          "epochs_run": tinfo["epochs_run"], "thresholds": model.config.inference.model_dump(
                              include={"interior_threshold", "foreground_threshold", "min_cell_area_um2"}),
                          "ap_50": sc["ap_50"], "ap_50_95": sc["ap_50_95"], "f1_50": sc["f1_50"]})
        log(f"fold {f} ({cfg.representation}): AP@0.5 {sc['ap_50']} AP@[.5:.95] {sc['ap_50_95']}")
    spread = {}
    for key in ("ap_50", "ap_75", "ap_50_95", "f1_50"):
        v = np.array([s[key] for s in per_fold], float)
        spread[key] = {"mean": rnd(v.mean()), "std": rnd(v.std(ddof=1)) if len(v) > 1 else None,
                       "min": rnd(v.min()), "max": rnd(v.max())}
    pooled = summarize(per_all)
    pooled.pop("per_image_ap_50", None)
    return {"representation": cfg.representation, "k": k, "folds_run": len(per_fold), "pooled": pooled,
            "over_folds": spread, "folds": fold_info, "config": cfg.model_dump(mode="json")}


def segment_network_fn(model):
    return network_method(model, model.config.inference)


# --------------------------------------------------------------------------- main
def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--quick", action="store_true", help="short smoke run (~2 min): few images, 2 epochs")
    ap.add_argument("--epochs", type=int, default=None, help="epochs of both trainings (overrides the two below)")
    ap.add_argument("--sim-epochs", type=int, default=120, help="epochs of the simulated-data training")
    ap.add_argument("--real-epochs", type=int, default=200, help="epochs of the real-data training")
    ap.add_argument("--patches-per-epoch", type=int, default=64)
    ap.add_argument("--batch-size", type=int, default=8)
    ap.add_argument("--patience", type=int, default=40, help="early-stopping patience (epochs)")
    ap.add_argument("--val-patches", type=int, default=48, help="validation patches per epoch")
    ap.add_argument("--patch-size-px", type=int, default=128)
    ap.add_argument("--learning-rate", type=float, default=2e-3)
    ap.add_argument("--channels", default="8,16,32,64,128,256", help="U-Net channels per level")
    ap.add_argument("--res-units", type=int, default=1)
    ap.add_argument("--sim-model-px-um", type=float, default=1.0,
                    help="pixel size the simulated-data model works at (images are 0.65 µm/px)")
    ap.add_argument("--real-model-px-um", type=float, default=1.3,
                    help="pixel size the real-data model works at (images ~0.87 µm/px)")
    ap.add_argument("--sim-train", type=int, default=16, help="training images per modality")
    ap.add_argument("--sim-test", type=int, default=6, help="test images per modality")
    ap.add_argument("--sim-size", type=int, default=384, help="edge of the simulated images (px)")
    ap.add_argument("--data", type=Path, default=DEFAULT_DATA, help="usiigaci_phase_contrast folder")
    ap.add_argument("--real-pixel-size-um", type=float, default=None,
                    help=f"pixel size of the Usiigaci images (default: estimate {USIIGACI_PX_ESTIMATE_UM:.4f})")
    ap.add_argument("--parts", default="sim,real", help="comma list of parts to run: sim, real, cv")
    ap.add_argument("--representation", default="classes3", help="instance representation: classes3, distance, hover")
    ap.add_argument("--cv-folds", type=int, default=5, help="folds of the cross-validation by image (part cv)")
    ap.add_argument("--cv-run-folds", default=None, help="comma list of the folds to run (default: all)")
    ap.add_argument("--cv-epochs", type=int, default=12, help="epochs of each cross-validation fold's training")
    ap.add_argument("--scale-range", default="1,1", help="scale augmentation range lo,hi")
    ap.add_argument("--blur-sigma-max-px", type=float, default=0.0, help="blur augmentation: largest sigma (px)")
    ap.add_argument("--threads", type=int, default=1,
                    help="torch CPU threads (1 is fastest on a shared 2-core machine)")
    ap.add_argument("--seed", type=int, default=0, help="training seed")
    ap.add_argument("--work", type=Path, default=None, help="folder for the model folders (default: temp)")
    ap.add_argument("--figures", type=Path, default=None, help="write overlay PNGs here")
    ap.add_argument("--out", type=Path, default=None, help="also write the JSON here")
    args = ap.parse_args()

    import torch

    torch.set_num_threads(args.threads)
    t_start = time.perf_counter()
    load_start = os.getloadavg()
    if args.quick:
        args.sim_train, args.sim_test, args.sim_size = 4, 2, 256
        args.sim_epochs = args.real_epochs = 2
        args.patches_per_epoch = 16
    if args.epochs is not None:
        args.sim_epochs = args.real_epochs = args.epochs
    parts = {p.strip() for p in args.parts.split(",") if p.strip()}

    from mechanoscope import __version__
    from mechanoscope.segment.network import SegmentationInferenceConfig, SegmentationTrainConfig
    from mechanoscope.segment.classical import ClassicalSegmentationConfig

    work_ctx = tempfile.TemporaryDirectory(prefix="segbench_") if args.work is None else None
    work = Path(work_ctx.name) if work_ctx else args.work
    work.mkdir(parents=True, exist_ok=True)

    def train_config(epochs: int, model_px: float) -> SegmentationTrainConfig:
        return SegmentationTrainConfig(
            epochs=epochs,
            batch_size=args.batch_size,
            patch_size_px=args.patch_size_px,
            patches_per_epoch=args.patches_per_epoch,
            learning_rate=args.learning_rate,
            validation_fraction=0.2,
            early_stopping_patience=args.patience,
            max_validation_patches=args.val_patches,
            seed=args.seed,
            pixel_size_um=model_px,
            channels=tuple(int(c) for c in args.channels.split(",")),
            num_res_units=args.res_units,
            representation=args.representation,
            scale_range=tuple(float(v) for v in args.scale_range.split(",")),
            blur_sigma_max_px=args.blur_sigma_max_px,
            device="cpu",
            inference=SegmentationInferenceConfig(device="cpu"),
        )

    result: dict[str, Any] = {
        "benchmark": "segment_label_free",
        "quick": args.quick,
        "targets": {"simulated_learned_ap_50": 0.95, "real_learned_ap_50": 0.85},
    }
    speed: dict[str, Any] = {}

    # ---------------------------------------------------------------- simulated
    if "sim" in parts:
        log("simulating fields of view")
        tr_i, tr_l, te = [], [], {}
        sim_info = {}
        for mod, seeds in SIM_SEEDS.items():
            ims, labs, info = simulate_set(mod, args.sim_train, seeds["train"], args.sim_size)
            tims, tlabs, tinfo = simulate_set(mod, args.sim_test, seeds["test"], args.sim_size)
            tr_i += ims
            tr_l += labs
            te[mod] = (tims, tlabs)
            sim_px = info["pixel_size_um"]
            sim_info[mod] = {
                "train": {**info, "n_images": len(ims), "n_cells": int(sum(l.max() for l in labs))},
                "test": {"seeds": tinfo["seeds"], "n_images": len(tims),
                         "n_cells": int(sum(l.max() for l in tlabs))},
            }
        model, tinfo = train(tr_i, tr_l, sim_px, train_config(args.sim_epochs, args.sim_model_px_um),
                             work / "sim_model")
        diam = median_cell_diameter_um(tr_l, sim_px)
        ccfg = ClassicalSegmentationConfig(cell_diameter_um=round(diam, 1))
        inf, thr_info = model.config.inference, model.metrics.get("threshold_search")  # chosen on validation images by train_segmentation
        methods = {"learned": network_method(model, inf), "classical": classical_method(ccfg),
                   "learned_default_thresholds": network_method(model, SegmentationInferenceConfig())}
        per_mod: dict[str, Any] = {}
        all_scores: dict[str, list] = {k: [] for k in methods}
        for mod, (tims, tlabs) in te.items():
            log(f"evaluating simulated {mod}")
            sc, raw, tm, preds = evaluate(tims, tlabs, sim_px, methods)
            per_mod[mod] = sc
            speed[f"simulated_{mod}"] = {"image_shape_px": list(tims[0].shape), "n_images": len(tims), **tm}
            if args.figures:
                overlay_png(args.figures / f"sim_{mod}_test0.png", tims[0], tlabs[0],
                            {k: v[0] for k, v in preds.items()})
            for k in all_scores:
                all_scores[k] += raw[k]
        pooled = {k: summarize(v) for k, v in all_scores.items()}
        result["simulated"] = {
            "training": "one U-Net trained on the training images of both modalities together",
            "data": sim_info,
            "model_pixel_size_um": args.sim_model_px_um,
            "train": tinfo,
            "learned_thresholds": thr_info,
            "classical_config": ccfg.model_dump(mode="json"),
            "classical_cell_diameter_from": "median equivalent diameter of the training cells",
            "scores": per_mod,
            "scores_both_modalities": pooled,
        }
        del model

    # ---------------------------------------------------------------- real
    if "real" in parts:
        data = args.data
        if not (data / "index.json").exists():
            result["real"] = {"skipped": f"{data} not found"}
        else:
            px = args.real_pixel_size_um or USIIGACI_PX_ESTIMATE_UM
            px_note = ("given with --real-pixel-size-um" if args.real_pixel_size_um else
                       "ESTIMATE: 6.5 µm camera pixel x 2 binning / (10x objective x 1.5x); files carry none")
            train_names, test_names, rule = usiigaci_split(data)
            if args.quick:
                train_names, test_names = train_names[:6], test_names[:2]
            log(f"reading {len(train_names)} + {len(test_names)} Usiigaci images")
            tr_i, tr_l, tr_paths = read_usiigaci(data, train_names, px)
            te_i, te_l, _ = read_usiigaci(data, test_names, px)
            model, tinfo = train(tr_i, tr_l, px, train_config(args.real_epochs, args.real_model_px_um),
                                 work / "real_model", input_paths=tr_paths)
            diam = median_cell_diameter_um(tr_l, px)
            ccfg = ClassicalSegmentationConfig(cell_diameter_um=round(diam, 1))
            inf, thr_info = model.config.inference, model.metrics.get("threshold_search")  # chosen on validation images by train_segmentation
            methods = {"learned": network_method(model, inf), "classical": classical_method(ccfg),
                       "learned_default_thresholds": network_method(model, SegmentationInferenceConfig())}
            log("evaluating real test images")
            sc, _, tm, preds = evaluate(te_i, te_l, px, methods)
            speed["real_usiigaci"] = {"image_shape_px": list(te_i[0].shape), "n_images": len(te_i), **tm}
            if args.figures:
                for j in range(min(2, len(te_i))):
                    overlay_png(args.figures / f"real_{test_names[j]}.png", te_i[j], te_l[j],
                                {k: v[j] for k, v in preds.items()})
            result["real"] = {
                "data": str(data),
                "split_rule": rule,
                "train_images": train_names,
                "test_images": test_names,
                "image_shape_px": list(te_i[0].shape),
                "n_test_cells": int(sum(int(l.max()) for l in te_l)),
                "pixel_size_um": round(px, 4),
                "pixel_size_note": px_note,
                "model_pixel_size_um": args.real_model_px_um,
                "train": tinfo,
                "learned_thresholds": thr_info,
                "classical_config": ccfg.model_dump(mode="json"),
                "classical_cell_diameter_from": "median equivalent diameter of the training cells",
                "scores": sc,
            }

    # ---------------------------------------------------------------- cross-validation
    if "cv" in parts:
        data = args.data
        if not (data / "index.json").exists():
            result["cross_validation"] = {"skipped": f"{data} not found"}
        else:
            px = args.real_pixel_size_um or USIIGACI_PX_ESTIMATE_UM
            names = sorted(e["name"] for e in json.loads((data / "index.json").read_text()))
            if args.quick:
                names = names[:10]
            run_folds = None if args.cv_run_folds is None else {int(v) for v in args.cv_run_folds.split(",")}
            cfg = train_config(2 if args.quick else args.cv_epochs, args.real_model_px_um)
            cfg = cfg.model_copy(update={"validation_fraction": 0.12})
            result["cross_validation"] = {"data": str(data), "pixel_size_um": round(px, 4), "n_images": len(names),
                                          **cross_validate(data, names, px, cfg, args.cv_folds, work, run_folds)}

    # ---------------------------------------------------------------- speed + settings
    totals = {}
    for meth in ("learned", "classical"):
        mp = sum(v[meth]["megapixels"] for v in speed.values())
        s = sum(v[meth]["seconds"] for v in speed.values())
        if s > 0:
            totals[meth] = {"megapixels": round(mp, 3), "seconds": round(s, 3),
                            "megapixels_per_s": round(mp / s, 3)}
    result["speed"] = {
        "what": "wall time of segmenting each test image once, after one untimed warm-up call; "
                "learned = resample + normalise + tiled U-Net + instance extraction",
        "device": "cpu",
        "torch_threads": torch.get_num_threads(),
        "cpu_count": os.cpu_count(),
        "load_average_at_start": [round(x, 2) for x in load_start],
        "load_average_at_end": [round(x, 2) for x in os.getloadavg()],
        "per_dataset": speed,
        "all": totals,
    }
    result["settings"] = {
        "cli": vars(args) | {"data": str(args.data), "work": str(args.work), "figures": str(args.figures),
                             "out": str(args.out)},
        "versions": {"mechanoscope": __version__, "torch": torch.__version__,
                     "monai": _version("monai"), "scikit-image": _version("skimage"),
                     "numpy": np.__version__, "python": platform.python_version()},
        "platform": platform.platform(),
    }
    result["total_wall_time_s"] = round(time.perf_counter() - t_start, 1)
    text = json.dumps(result, indent=2, default=str)
    print(text)
    if args.out:
        args.out.parent.mkdir(parents=True, exist_ok=True)
        tmp = args.out.with_name(args.out.name + ".tmp")
        tmp.write_text(text + "\n")
        tmp.replace(args.out)
    if work_ctx:
        work_ctx.cleanup()


def _version(mod: str) -> str | None:
    try:
        return __import__(mod).__version__
    except Exception:  # pragma: no cover
        return None


if __name__ == "__main__":
    main()
