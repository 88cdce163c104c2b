"""Train the built-in segmentation model shipped in ``src/mechanoscope/segment/builtin/``.

Reproducible (fixed seeds; CPU runs repeat exactly), prints one JSON record and keeps it
in the model folder (``metrics.json`` → ``builtin_training``), and writes the model card
with the data, its licence and citation, the settings and the scores.

Data
----
* The 45 Usiigaci phase-contrast images with manual whole-cell masks
  (``../shared/data/usiigaci_phase_contrast``; MIT licence, (c) 2018 OIST;
  Tsai et al., SoftwareX 9:230-237, 2019, doi:10.1016/j.softx.2019.02.007). Their pixel
  size is not recorded; 0.8667 µm/px is an estimate from the optics, and scale
  augmentation covers an error of ±25 %.
* Simulated bright-field and phase-contrast fields of adherent cells with their true
  masks (``mechanoscope.simulate``; seeds 5000.. and 6000.., never those of the
  benchmark's test fields 2000.. and 4000..).

Validation: 4 real and 1 simulated image per modality are held out (early stopping and
the threshold search); test scores on fresh simulated fields (the benchmark's seeds) and
the speed of the model beside the classical pipeline are measured after training.
Cross-validation figures are the job of ``benchmarks/segment.py --parts cv``; pass its
JSON with ``--cv-json`` to put them into the model card.

Usage::

    python scripts/train_builtin_segmenter.py --quick --out /tmp/m     # < 1 min smoke run
    nice python scripts/train_builtin_segmenter.py --overwrite          # the shipped model
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
DEFAULT_OUT = REPO / "src" / "mechanoscope" / "segment" / "builtin"
USIIGACI_PX_UM = 6.5 * 2 / (10 * 1.5)  # estimate, see the module docstring
SIM_TRAIN_SEEDS = {"brightfield": 5000, "phase_contrast": 6000}
SIM_TEST_SEEDS = {"brightfield": 2000, "phase_contrast": 4000}  # those of benchmarks/segment.py
T98G_FOLDER = "usiigaci_T98G_timelapse"  # beside usiigaci_phase_contrast in ../shared/data
T98G_PX_UM = 0.87  # from its usiigaci_experiment_parameters.csv
CITATION = ("Tsai, H.-F., Gajda, J., Sloan, T. F. W., Rares, A., Shen, A. Q. (2019). Usiigaci: Instance-aware "
            "cell tracking in stain-free phase contrast microscopy enabled by machine learning. SoftwareX 9, "
            "230-237. doi:10.1016/j.softx.2019.02.007")


def log(msg: str) -> None:
    print(f"[{time.strftime('%H:%M:%S')}] {msg}", file=sys.stderr, flush=True)


#: Imaging variation of the simulated training fields (``--vary-imaging``): exposure
#: (photons per pixel at background, log-uniform) and illumination unevenness
#: (peak-to-peak, uniform), drawn per field from its own seed. The defaults of the
#: simulator are 5,000 photons and 0.15; a user's dim or unevenly lit dish lies inside.
IMAGING_VARIATION = {"photons_per_pixel": (500.0, 10000.0), "illumination_variation": (0.05, 0.8)}


def imaging_of(seed: int) -> dict[str, Any]:
    """The exposure and illumination unevenness of simulated training field ``seed``."""
    rng = np.random.default_rng([seed, 7919])
    lo, hi = IMAGING_VARIATION["photons_per_pixel"]
    photons = float(np.exp(rng.uniform(np.log(lo), np.log(hi))))
    uneven = float(rng.uniform(*IMAGING_VARIATION["illumination_variation"]))
    return {"camera": {"photons_per_pixel": round(photons, 1)}, "illumination_variation": round(uneven, 3)}


def simulate(modality: str, n: int, seed0: int, size: int, vary_imaging: bool = False) -> tuple[list[np.ndarray], list[np.ndarray], float]:
    from mechanoscope.simulate import AdherentConfig, simulate_field

    kw: dict[str, Any] = {"defocus_um": 0.0} if modality == "phase_contrast" else {}
    images, labels, px = [], [], 0.0
    for i in range(n):
        extra = imaging_of(seed0 + i) if vary_imaging else {}
        cfg = AdherentConfig(modality=modality, image_shape_px=(size, size), n_images=max(n, 1), **kw, **extra)
        f = simulate_field(cfg, seed0 + i, population=cfg.population_names[i % 2], image_id=f"{modality}_{seed0 + i}")
        images.append(f.image)
        labels.append(f.labels.astype(np.int32))
        px = float(cfg.optics.pixel_size_um)
    if not n:
        px = float(AdherentConfig(modality=modality).optics.pixel_size_um)
    return images, labels, px


def read_real(data: Path, limit: int | None) -> tuple[list[np.ndarray], list[np.ndarray], list[str], list[Path]]:
    from mechanoscope.io import read_image, read_label_image

    names = sorted(e["name"] for e in json.loads((data / "index.json").read_text()))[:limit]
    images, labels, paths = [], [], []
    for n in names:
        ip, mp = data / "images" / f"{n}.png", data / "masks" / f"{n}_instances.png"
        images.append(read_image(ip, pixel_size_um=USIIGACI_PX_UM).as_2d())
        labels.append(read_label_image(mp).as_2d().astype(np.int32))
        paths += [ip, mp]
    return images, labels, names, paths


def read_t98g_peer(folder: Path, quick: bool) -> tuple[list[np.ndarray], list[np.ndarray]]:
    """Every 6th frame of the Usiigaci T98G time-lapse (never trained on) and Usiigaci's own
    Mask R-CNN masks of it: agreement with a peer, not accuracy against manual truth."""
    from mechanoscope.io import read_image, read_label_image

    frames = sorted((folder / "frames_8bit").glob("*.png"))[:: 18 if quick else 6]
    peer = sorted((folder / "usiigaci_masks_avg").glob("*.png"))[:: 18 if quick else 6]
    if not frames or len(frames) != len(peer):
        raise SystemExit(f"{folder}: T98G frames and Usiigaci masks not found or unpaired")
    crop = (slice(0, 256), slice(0, 256)) if quick else (slice(None), slice(None))
    return ([read_image(f, pixel_size_um=T98G_PX_UM).as_2d()[crop] for f in frames],
            [read_label_image(m).as_2d().astype(np.int32)[crop] for m in peer])


def inference_record(model: Any) -> dict[str, Any]:
    return model.config.inference.model_dump(
        mode="json", include={"interior_threshold", "foreground_threshold", "min_cell_area_um2", "test_time_augmentation"})


def set_test_time_augmentation(out: Path, tta: str) -> None:
    """Store ``tta`` as the default test-time augmentation of the model folder ``out``."""
    from mechanoscope.io.atomic import atomic_path

    cfg = json.loads((out / "config.json").read_text())
    cfg["train_config"]["inference"]["test_time_augmentation"] = tta
    with atomic_path(out / "config.json") as p:
        p.write_text(json.dumps(cfg, indent=2) + "\n")


def write_record(out: Path, metrics: dict[str, Any]) -> None:
    """metrics.json (with the script's record under ``builtin_training``) and MODEL_CARD.md."""
    from mechanoscope.io.atomic import atomic_path

    with atomic_path(out / "metrics.json") as p:
        p.write_text(json.dumps(metrics, indent=2, default=str) + "\n")
    with atomic_path(out / "MODEL_CARD.md") as p:
        p.write_text(model_card(metrics["builtin_training"]))


def score(fn, images, labels, px) -> dict[str, Any]:
    from mechanoscope.evaluate.segmentation import segmentation_scores
    from mechanoscope.evaluate.segmentation_pooled import aggregate_segmentation_scores

    fn(images[0], px)  # warm-up
    per, secs = [], 0.0
    for img, lab in zip(images, labels):
        t0 = time.perf_counter()
        pred = fn(img, px)
        secs += time.perf_counter() - t0
        per.append(segmentation_scores(pred, lab))
    agg = aggregate_segmentation_scores(per)
    mp = sum(i.size for i in images) / 1e6
    out = {k: round(float(agg[k]), 4) for k in ("ap_50", "ap_75", "ap_50_95", "f1_50")}
    return {**out, "n_images": len(images), "n_true": int(agg["n_true"]), "megapixels_per_s": round(mp / secs, 3)}


#: Script arguments that do not change the model (where it goes, how the run is done).
NOT_MODEL_ARGS = {"quick", "out", "overwrite", "data", "update_card", "cv_json", "threads", "rescore"}


def rerun_flags(script_args: dict[str, Any]) -> str:
    """The command-line flags (those that differ from the defaults) that repeat a run."""
    defaults = vars(build_parser().parse_args([]))
    flags = []
    for key, value in script_args.items():
        if key in NOT_MODEL_ARGS or key not in defaults or value == defaults[key]:
            continue
        flag = "--" + key.replace("_", "-")
        flags.append(flag if value is True else f"{flag} {value}")
    return "".join(" " + f for f in flags)


def stop_reason(rec: dict[str, Any]) -> str:
    """Why training stopped: early stopping (repeats exactly) or the time limit."""
    t = rec["training"]
    asked = rec["settings"]["epochs"]
    patience = rec["settings"].get("early_stopping_patience")
    if t.get("epochs_run") == asked:
        return f"all {asked} epochs ran"
    if patience and t.get("best_epoch") is not None and t["epochs_run"] - t["best_epoch"] >= patience:
        return f"early stopping after {t['epochs_run']} epochs ({patience} without a better validation loss)"
    return (f"the original run stopped at its time limit of {rec.get('script_args', {}).get('max_minutes')} min "
            f"after {t['epochs_run']} epochs: pass --epochs {t['epochs_run']} to repeat it")


def model_card(rec: dict[str, Any]) -> str:
    s, d = rec["settings"], rec["data"]
    lines = [
        "# mechanoscope built-in cell segmentation model (`builtin`)",
        "",
        "Instance segmentation of adherent cells in label-free **phase-contrast and bright-field** images. "
        "Selected with `--method builtin` (CLI) or `build_segmenter(\"builtin\")`; fine-tune on your own masks "
        "with `mechanoscope segment train IMAGES MASKS --init builtin --out MODEL`.",
        "",
        "## Model",
        "",
        f"- Architecture: MONAI UNet, channels {s['channels']}, {s['num_res_units']} residual unit(s) per level, "
        "batch normalisation, 1 input channel.",
        f"- Instance representation: `{s['representation']}` (see `mechanoscope.segment.distance_targets`); "
        "cells are marker-controlled watershed regions.",
        f"- Works at {s['pixel_size_um']} µm/px; images are resampled to it (give the image's true pixel size).",
        f"- Normalisation: per image, percentiles {s['normalize_percentiles']} mapped to 0 and 1 (normalization.json).",
        f"- Inference defaults (chosen on the validation images): {json.dumps(rec['inference'])}.",
        "",
        "## Training data",
        "",
        f"- **Usiigaci phase-contrast images**: {d['real']['n_images']} images with manual whole-cell instance masks "
        f"({d['real']['n_cells']} cells), {d['real']['source']}. "
        "**Licence: MIT** (c) 2018 OIST (Okinawa Institute of Science and Technology). "
        f"Pixel size {d['real']['pixel_size_um']:.4f} µm/px is an estimate from the optics (not recorded in the files).",
        f"- **Citation:** {CITATION}",
        f"- **Simulated fields** (mechanoscope.simulate, adherent cells with true masks): "
        f"{d['simulated']['n_per_modality']} bright-field and {d['simulated']['n_per_modality']} phase-contrast fields of "
        f"{d['simulated']['size_px']} px at {d['simulated']['pixel_size_um']} µm/px, seeds {d['simulated']['seeds']}"
        + (f"; each field's exposure (photons/pixel, log-uniform) and illumination unevenness (uniform) drawn from "
           f"{d['simulated']['imaging_variation']}." if d['simulated'].get('imaging_variation') else "."),
        f"- Validation (held out of the gradient steps; early stopping, threshold search): {d['validation']}.",
        "",
        "## Training settings",
        "",
        f"- {s['epochs']} epochs × {s['patches_per_epoch']} patches of {s['patch_size_px']} px, batch {s['batch_size']}, "
        f"AdamW lr {s['learning_rate']}, seed {s['seed']}; ran {rec['training']['epochs_run']} epochs "
        f"(best {rec['training']['best_epoch']}) in {rec['training']['wall_time_s']} s on {rec['training']['device']}.",
        f"- Augmentation: dihedral views, scale {s['scale_range']}, gamma {s['gamma_range']}, intensity "
        f"{s['intensity_scale_range']}, blur up to σ = {s['blur_sigma_max_px']} px, Gaussian noise up to {s['noise_std']}.",
        f"- Rerun: `python scripts/train_builtin_segmenter.py --overwrite{rerun_flags(rec.get('script_args', {}))}` "
        f"repeats this model on a CPU (same seeds; {stop_reason(rec)}). "
        "Its JSON record is in metrics.json.",
        "",
        "## Scores (AP at IoU 0.5, AP@[.5:.95], F1@0.5; pooled over images)",
        "",
        "| data | model | AP@0.5 | AP@0.75 | AP@[.5:.95] | F1@0.5 | MP/s |",
        "|---|---|---|---|---|---|---|",
    ]
    for name, sc in rec["scores"].items():
        for meth in ("builtin", "classical"):
            if meth in sc:
                v = sc[meth]
                lines.append(f"| {name} | {meth} | {v['ap_50']} | {v['ap_75']} | {v['ap_50_95']} | {v['f1_50']} | {v['megapixels_per_s']} |")
    cv = rec.get("cross_validation")
    lines += ["", f"Scores at the model's default test-time augmentation (`{rec['inference'].get('test_time_augmentation', 'none')}`). "
              "t98g_vs_usiigaci_peer: agreement with Usiigaci's own Mask R-CNN masks on every 6th frame of its T98G "
              "time-lapse (never trained on; a peer's segmentation, not manual truth)."]
    lines += ["", "Real validation images: 4 Usiigaci images held out of this training (small; flatters the model). "
              f"MP/s: input megapixels per second on {rec.get('cpu_count')} CPU cores at the end of training "
              f"(load average {rec.get('load_average')}; other jobs shared the cores), at the inference settings of "
              "that time; `benchmarks/segment.py` measures speed on its own."]
    if cv:
        lines += ["", f"{cv.get('k')}-fold cross-validation by image over the 45 real images of the same recipe and "
                  f"representation (`{cv.get('representation')}`), each fold's model trained without its test images "
                  f"on a much shorter CPU budget than this model ({cv.get('budget')}; real images only): "
                  + (f"pooled AP@0.5 {cv['pooled']['ap_50']}, AP@0.75 {cv['pooled']['ap_75']}, AP@[.5:.95] "
                     f"{cv['pooled']['ap_50_95']}, F1 {cv['pooled']['f1_50']}; " if cv.get("pooled") else "")
                  + "over folds " + "; ".join(f"{k} {v}" for k, v in cv["over_folds"].items())
                  + ". The shipped model itself has not been cross-validated."]
    lines += [
        "",
        "## Intended use and limits",
        "",
        "Adherent, spread cells in phase contrast (10× class objectives) and bright field. Trained on one lab's "
        "images of glioblastoma/fibroblast-type lines plus simulations: check a few outlines on your own images "
        "(e.g. `mechanoscope segment IMAGES --method builtin --out RUN`) and fine-tune with `--init builtin` when "
        "they are off. Not trained on fluorescence, suspended cells or RT-DC channel images.",
        "",
    ]
    return "\n".join(lines)


def cv_summary(path: Path) -> dict[str, Any]:
    """The figures of a ``benchmarks/segment.py --parts cv`` JSON that go into the card."""
    cvr = json.loads(Path(path).read_text()).get("cross_validation", {})
    cfg = cvr.get("config", {})
    return {"pooled": cvr.get("pooled"), "over_folds": cvr.get("over_folds"), "folds_run": cvr.get("folds_run"),
            "k": cvr.get("k"), "representation": cvr.get("representation"), "source": str(path),
            "budget": f"{cfg.get('epochs')} epochs x {cfg.get('patches_per_epoch')} patches per fold, {cvr.get('folds_run')} of {cvr.get('k')} folds run"}


def update_card(out: Path, cv_json: Path | None) -> None:
    """Add cross-validation figures to a trained model's record and rewrite its card."""

    metrics = json.loads((out / "metrics.json").read_text())
    rec = metrics["builtin_training"]
    if cv_json is not None:
        rec["cross_validation"] = cv_summary(cv_json)
    write_record(out, metrics)
    print(json.dumps(rec.get("cross_validation"), indent=2))


def build_parser() -> argparse.ArgumentParser:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--quick", action="store_true", help="smoke run (< 1 min): 3 real + 2 simulated images, 1 epoch")
    ap.add_argument("--out", type=Path, default=None, help=f"model folder (default {DEFAULT_OUT}; quick: a temp folder)")
    ap.add_argument("--overwrite", action="store_true", help="replace an existing model folder")
    ap.add_argument("--data", type=Path, default=DEFAULT_DATA)
    ap.add_argument("--representation", default="distance", help="chosen by benchmarks/segment.py --parts cv and the validation scores")
    ap.add_argument("--epochs", type=int, default=300)
    ap.add_argument("--patches-per-epoch", type=int, default=64)
    ap.add_argument("--batch-size", type=int, default=8)
    ap.add_argument("--patch-size-px", type=int, default=128)
    ap.add_argument("--learning-rate", type=float, default=2e-3)
    ap.add_argument("--patience", type=int, default=40)
    ap.add_argument("--channels", default="8,16,32,64,128")
    ap.add_argument("--res-units", type=int, default=1)
    ap.add_argument("--model-px-um", type=float, default=1.3)
    ap.add_argument("--sim-per-modality", type=int, default=8)
    ap.add_argument("--sim-size", type=int, default=384)
    ap.add_argument("--sim-test", type=int, default=12, help="simulated test fields per modality")
    ap.add_argument("--vary-imaging", action="store_true",
                    help=f"draw each simulated training field's exposure and illumination unevenness from {IMAGING_VARIATION}")
    ap.add_argument("--cv-json", type=Path, default=None, help="benchmarks/segment.py --parts cv output for the card")
    ap.add_argument("--max-minutes", type=float, default=None, help="stop starting epochs after this training time")
    ap.add_argument("--update-card", action="store_true",
                    help="no training: add --cv-json to the record of the model at --out and rewrite its card")
    ap.add_argument("--test-time-augmentation", default="mirror", choices=["none", "mirror", "dihedral"],
                    help="the model's default test-time augmentation (views averaged per tile)")
    ap.add_argument("--rescore", action="store_true",
                    help="no training: set --test-time-augmentation on the model at --out, score it again, rewrite its record and card")
    ap.add_argument("--threads", type=int, default=1)
    ap.add_argument("--seed", type=int, default=0)
    return ap


def main() -> None:
    ap = build_parser()
    args = ap.parse_args()

    import torch

    from mechanoscope import __version__
    from mechanoscope.segment.classical import ClassicalSegmentationConfig, segment_classical
    from mechanoscope.segment.network import SegmentationInferenceConfig, SegmentationTrainConfig, load_segmentation_model, segment_network
    from mechanoscope.segment.network_train import train_segmentation

    torch.set_num_threads(args.threads)
    if args.update_card:
        update_card(Path(args.out or DEFAULT_OUT), args.cv_json)
        return
    t_start = time.perf_counter()
    tmp = None
    if args.quick:
        args.epochs, args.patches_per_epoch, args.sim_per_modality, args.sim_size, args.sim_test = 1, 8, 1, 160, 1
        args.channels, args.patch_size_px = "8,16,32", 64
        if args.out is None:
            tmp = tempfile.TemporaryDirectory(prefix="builtin_quick_")
            args.out = Path(tmp.name) / "model"
    out = args.out or DEFAULT_OUT

    real_i, real_l, names, paths = read_real(args.data, 3 if args.quick else None) if (args.data / "index.json").exists() else ([], [], [], [])
    if not real_i:
        raise SystemExit(f"{args.data}: Usiigaci data not found; pass --data")
    if args.quick:
        real_i = [im[:256, :256] for im in real_i]
        real_l = [lb[:256, :256] for lb in real_l]
    images, labels, pxs, kinds = list(real_i), list(real_l), [USIIGACI_PX_UM] * len(real_i), ["real"] * len(real_i)
    sim_px = None
    for mod, seed0 in SIM_TRAIN_SEEDS.items():
        ims, labs, sim_px = simulate(mod, args.sim_per_modality, seed0, args.sim_size, vary_imaging=args.vary_imaging)
        images += ims
        labels += labs
        pxs += [sim_px] * len(ims)
        kinds += [mod] * len(ims)
    # validation: 4 real (every 11th of the sorted names) + the first simulated field of each modality
    n_real = len(real_i)
    val_real = list(range(5, n_real, 11))[:4] if n_real > 8 else [n_real - 1]
    val = val_real + [kinds.index(m) for m in SIM_TRAIN_SEEDS] if not args.quick else val_real
    cfg = SegmentationTrainConfig(
        epochs=args.epochs, batch_size=args.batch_size, patch_size_px=args.patch_size_px,
        patches_per_epoch=args.patches_per_epoch, learning_rate=args.learning_rate,
        early_stopping_patience=args.patience, max_validation_patches=32, seed=args.seed,
        pixel_size_um=args.model_px_um, channels=tuple(int(c) for c in args.channels.split(",")),
        num_res_units=args.res_units, representation=args.representation, scale_range=(0.8, 1.25),
        gamma_range=(0.6, 1.6), intensity_scale_range=(0.75, 1.33), blur_sigma_max_px=1.5, noise_std=0.05,
        device="cpu", optimize_thresholds=not args.quick,
        inference=SegmentationInferenceConfig(device="cpu", test_time_augmentation=args.test_time_augmentation),
    )

    def progress(epoch: int, epochs: int, row: dict) -> None:
        log(f"epoch {epoch}/{epochs} train {row['train_loss']} val {row['val_loss']} ({row['seconds']} s){' *' if row['best'] else ''}")

    t0 = time.perf_counter()
    if args.rescore:
        set_test_time_augmentation(Path(out), args.test_time_augmentation)
    else:
        log(f"training on {len(images)} images ({n_real} real, {len(images) - n_real} simulated), validation {val}")
        train_segmentation(images, labels, pixel_sizes_um=pxs, config=cfg, out=out, progress=progress,
                           input_paths=paths, command=sys.argv, overwrite=args.overwrite or args.quick, validation_indices=val,
                           max_train_seconds=None if args.max_minutes is None else 60 * args.max_minutes)
    wall = time.perf_counter() - t0
    model = load_segmentation_model(out, device="cpu")

    builtin = lambda img, px: segment_network(img, pixel_size_um=px, model=model)  # noqa: E731
    scores: dict[str, Any] = {}
    train_areas = np.concatenate([np.bincount(l.ravel())[1:] for l in real_l]) * USIIGACI_PX_UM ** 2
    diam = float(np.median(2 * np.sqrt(train_areas[train_areas > 0] / np.pi)))
    vi = [images[i] for i in val_real]
    vl = [labels[i] for i in val_real]
    scores["real_validation"] = {"builtin": score(builtin, vi, vl, USIIGACI_PX_UM)}
    classical = ClassicalSegmentationConfig(cell_diameter_um=round(diam, 1))
    scores["real_validation"]["classical"] = score(lambda i, p: segment_classical(i, pixel_size_um=p, config=classical), vi, vl, USIIGACI_PX_UM)
    for mod, seed0 in SIM_TEST_SEEDS.items():
        ti, tl, spx = simulate(mod, args.sim_test, seed0, 384 if not args.quick else 160)
        sim_areas = np.concatenate([np.bincount(l.ravel())[1:] for l in labels[n_real:]]) * spx ** 2
        sd = float(np.median(2 * np.sqrt(sim_areas[sim_areas > 0] / np.pi)))
        ccfg = ClassicalSegmentationConfig(cell_diameter_um=round(sd, 1))
        scores[f"simulated_{mod}"] = {"builtin": score(builtin, ti, tl, spx),
                                      "classical": score(lambda i, p: segment_classical(i, pixel_size_um=p, config=ccfg), ti, tl, spx)}
    scores["t98g_vs_usiigaci_peer"] = {"builtin": score(builtin, *read_t98g_peer(args.data.parent / T98G_FOLDER, args.quick), T98G_PX_UM)}
    m = model.metrics
    if args.rescore:  # the training record stays; the scores, the inference settings and the flags are new
        rec = m["builtin_training"]
        rec["script_args"].update(test_time_augmentation=args.test_time_augmentation, sim_test=args.sim_test)
        rec["data"]["simulated"]["test_seeds"] = {k: [v, v + args.sim_test - 1] for k, v in SIM_TEST_SEEDS.items()}
        rec.update(scores=scores, inference=inference_record(model), cpu_count=os.cpu_count(),
                   load_average=[round(x, 2) for x in os.getloadavg()], rescored=time.strftime("%Y-%m-%d"))
        write_record(Path(out), {**m, "builtin_training": rec})
        print(json.dumps(rec, indent=2, default=str))
        return
    rec: dict[str, Any] = {
        "script": "scripts/train_builtin_segmenter.py",
        "quick": args.quick,
        "out": str(out),
        "data": {
            "real": {"source": "Usiigaci (github.com/oist/Usiigaci, commit 9501d80, 'Mask R-CNN/train/set1..45')",
                     "folder": str(args.data), "n_images": n_real, "names": names,
                     "n_cells": int(sum(int(l.max()) for l in real_l)), "pixel_size_um": USIIGACI_PX_UM,
                     "licence": "MIT, (c) 2018 OIST", "citation": CITATION},
            "simulated": {"n_per_modality": args.sim_per_modality, "size_px": args.sim_size, "pixel_size_um": sim_px,
                          "seeds": {k: [v, v + args.sim_per_modality - 1] for k, v in SIM_TRAIN_SEEDS.items()},
                          "imaging_variation": IMAGING_VARIATION if args.vary_imaging else None,
                          "test_seeds": {k: [v, v + args.sim_test - 1] for k, v in SIM_TEST_SEEDS.items()}},
            "validation": [f"{kinds[i]}:{names[i] if i < n_real else i - n_real}" for i in val],
        },
        "settings": model.config.model_dump(mode="json", exclude={"inference"}),
        "script_args": {k: str(v) if isinstance(v, Path) else v for k, v in vars(args).items()},
        "inference": inference_record(model),
        "training": {"wall_time_s": round(wall, 1), "epochs_run": m.get("epochs_run"), "best_epoch": m.get("best_epoch"),
                     "best_val_loss": m.get("best_val_loss"), "device": "cpu", "torch_threads": torch.get_num_threads(),
                     "validation_scores": m.get("validation_scores")},
        "scores": scores,
        "weights_mb": round((Path(out) / "weights.safetensors").stat().st_size / 1e6, 3),
        "versions": {"mechanoscope": __version__, "torch": torch.__version__, "python": platform.python_version()},
        "cpu_count": os.cpu_count(),
        "load_average": [round(x, 2) for x in os.getloadavg()],
    }
    if args.cv_json:
        rec["cross_validation"] = cv_summary(args.cv_json)
    rec["total_wall_time_s"] = round(time.perf_counter() - t_start, 1)
    write_record(Path(out), {**m, "builtin_training": rec})
    print(json.dumps(rec, indent=2, default=str))
    if tmp is not None:
        tmp.cleanup()


if __name__ == "__main__":
    main()
