"""Benchmark of time-lapse tracking (laptrack through mechanoscope.track).

Prints JSON with:

- ``simulated``: for each scenario (``default`` = ``TimelapseConfig()`` defaults, the
  "default noise level"; ``dense_fast`` = three times the cells, faster, more missed
  detections; ``division_gaps`` = twice the divisions, and each detection of a division
  — the mother's last, each daughter's first — missed with probability 0.5, so that
  daughters first appear one or two frames after the mother was last seen), over
  ``--seeds`` series: link precision/recall/F1 and division F1 pooled over the seeds,
  CTC TRA/DET/LNK/CHOTA/BC(0) (py-ctcmetrics) mean and minimum. The tracker is given
  the reference markers (the reference label images, ids ignored) and the scenario's
  speed as ``expected_speed_um_per_frame``; everything else is default. Each scenario
  is also tracked with ``laptrack_splits_only`` (``gap_divisions`` and
  ``check_division_areas`` off: laptrack's own splitting, daughters only in the frame
  right after the mother), to show what the division repair adds.
- ``division_f1``: division F1 without gaps (``default``) and with gaps
  (``division_gaps``), with and without the repair.
- ``usiigaci``: the real T98G phase-contrast series (../shared/data, a PEER tool's output,
  not ground truth): our tracks from Usiigaci's masks (``usiigaci_masks_avg``) scored
  against Usiigaci's own tracks (``usiigaci_id_masks``, as the reference) with the
  defaults and with the cell size measured from the masks; divisions found by us (the
  peer tracker does not detect divisions, so every one counts against agreement).
- ``btrack``: btrack's 1399 point detections linked by us (pixel units; divisions on),
  links compared with btrack's own output (a regression reference, not ground truth).
- ``speed``: frames and cells linked per second (measurement + linking + series, after
  a warm-up; imports excluded), per data set.

Usage: python benchmarks/track.py [--seeds 3] [--skip-real]
"""

from __future__ import annotations

import argparse
import json
import time
from pathlib import Path

import numpy as np
import pandas as pd

from mechanoscope.io.ctc import ctc_tracks_from_labels
from mechanoscope.metrics.tracking import ctc_scores, division_scores, edge_scores, linking_scores, table_links
from mechanoscope.simulate.timelapse import TimelapseConfig, render_timelapse
from mechanoscope.track import TrackConfig, link_cells, track_label_series

SHARED = Path(__file__).resolve().parents[1].parent / "shared" / "data"
SCENARIOS = {
    "default": {},
    "dense_fast": {"n_cells": 60, "speed_um_per_frame": 4.0, "miss_probability": 0.03, "division_probability": 0.02},
    "division_gaps": {"division_probability": 0.03, "division_miss_probability": 0.5},
}
LAPTRACK_ONLY = {"gap_divisions": False, "check_division_areas": False}
CTC_KEYS = ("TRA", "DET", "LNK", "CHOTA", "BC(0)", "BC(1)")


def _pool(parts: list[dict]) -> dict:
    tp, fp, fn = (sum(p[k] for p in parts) for k in ("tp", "fp", "fn"))
    precision = tp / (tp + fp) if tp + fp else 1.0
    recall = tp / (tp + fn) if tp + fn else 1.0
    f1 = 2 * precision * recall / (precision + recall) if precision + recall else 0.0
    return {"precision": round(precision, 4), "recall": round(recall, 4), "f1": round(f1, 4), "tp": tp, "fp": fp, "fn": fn}


def simulated(seeds: int) -> dict:
    out = {}
    for name, overrides in SCENARIOS.items():
        cfg = TimelapseConfig(**overrides)
        track_cfg = TrackConfig(expected_speed_um_per_frame=cfg.speed_um_per_frame)
        plain_cfg = track_cfg.model_copy(update=LAPTRACK_ONLY)
        links, divs, ctcs, times, n_cells = [], [], [], [], 0
        plain_links, plain_divs, n_gap, n_ref_gap = [], [], 0, 0
        for seed in range(seeds):
            sim = render_timelapse(cfg, seed=seed)
            t0 = time.perf_counter()
            res = track_label_series(sim.ctc_labels, cfg.pixel_size_um, track_cfg)
            times.append(time.perf_counter() - t0)
            n_cells += len(res.cells)
            n_gap += res.division_repairs.get("gap_divisions", 0)
            n_ref_gap += _divisions_across_gaps(sim.ctc_tracks)
            comp_labels, comp_tracks = res.ctc()
            links.append(linking_scores(sim.ctc_labels, sim.ctc_tracks, comp_labels, comp_tracks))
            divs.append(division_scores(sim.ctc_labels, sim.ctc_tracks, comp_labels, comp_tracks))
            ctcs.append(ctc_scores(sim.ctc_labels, sim.ctc_tracks, comp_labels, comp_tracks))
            plain = track_label_series(sim.ctc_labels, cfg.pixel_size_um, plain_cfg)
            p_labels, p_tracks = plain.ctc()
            plain_links.append(linking_scores(sim.ctc_labels, sim.ctc_tracks, p_labels, p_tracks))
            plain_divs.append(division_scores(sim.ctc_labels, sim.ctc_tracks, p_labels, p_tracks))
        out[name] = {
            "simulation": {k: v for k, v in cfg.model_dump(mode="json").items() if k in (
                "n_frames", "image_shape_px", "n_cells", "speed_um_per_frame", "persistence", "division_probability",
                "miss_probability", "division_miss_probability", "enter_rate_per_frame", "position_noise_um", "cell_radius_um")},
            "seeds": seeds,
            "detections": n_cells,
            "reference_divisions": int(sum(d["n_ref_divisions"] for d in divs)),
            "reference_divisions_across_gaps": n_ref_gap,
            "divisions_found_across_gaps": n_gap,
            "linking": _pool(links),
            "divisions": _pool(divs),
            "laptrack_splits_only": {"linking": _pool(plain_links), "divisions": _pool(plain_divs)},
            "ctc_mean": {k: round(float(np.mean([c[k] for c in ctcs])), 4) for k in CTC_KEYS},
            "ctc_min": {k: round(float(np.min([c[k] for c in ctcs])), 4) for k in CTC_KEYS},
            "frames_per_s": round(seeds * cfg.n_frames / sum(times), 2),
            "cells_linked_per_s": round(n_cells / sum(times), 1),
        }
    return out


def _divisions_across_gaps(tracks: pd.DataFrame) -> int:
    """Reference divisions with a daughter first seen more than one frame after its mother's last frame."""
    end = dict(zip(tracks["label"], tracks["end_frame"]))
    kids = tracks[tracks["parent_label"] > 0]
    n = 0
    for par, g in kids.groupby("parent_label"):
        if len(g) >= 2 and (g["begin_frame"] > end[par] + 1).any():
            n += 1
    return n


def usiigaci() -> dict | None:
    import imageio.v3 as iio

    folder = SHARED / "usiigaci_T98G_timelapse"
    if not folder.is_dir():
        return None
    masks = np.stack([iio.imread(p) for p in sorted((folder / "usiigaci_masks_avg").glob("*.png"))])
    peer = np.stack([iio.imread(p) for p in sorted((folder / "usiigaci_id_masks").glob("*.png"))])
    px = 0.87  # usiigaci_experiment_parameters.csv
    ref_labels, ref_tracks = ctc_tracks_from_labels(peer)
    area = np.bincount(masks[0].ravel())[1:]
    diameter_um = float(2 * np.sqrt(np.median(area[area > 0]) / np.pi) * px)
    out = {"frames": int(masks.shape[0]), "shape_px": list(masks.shape[1:]), "pixel_size_um": px,
           "peer_tracks_ctc": int(len(ref_tracks)), "median_cell_diameter_um": round(diameter_um, 1)}
    settings = {
        "defaults": TrackConfig(),
        "cell_diameter_from_masks": TrackConfig(cell_diameter_um=diameter_um),
        "no_divisions": TrackConfig(divisions=False),
        "laptrack_splits_only": TrackConfig(**LAPTRACK_ONLY),
    }
    for name, cfg in settings.items():
        t0 = time.perf_counter()
        res = track_label_series(masks, px, cfg)
        dt = time.perf_counter() - t0
        comp_labels, comp_tracks = res.ctc()
        c = ctc_scores(ref_labels, ref_tracks, comp_labels, comp_tracks)
        link = linking_scores(ref_labels, ref_tracks, comp_labels, comp_tracks)
        out[name] = {
            "parameters": {k: round(v, 2) if isinstance(v, float) else v for k, v in cfg.resolved().items()
                           if k in ("expected_speed_um_per_frame", "max_distance_um", "cell_diameter_um", "divisions",
                                    "division_max_distance_um", "max_gap_frames")},
            "TRA_vs_peer": round(c["TRA"], 4), "DET_vs_peer": round(c["DET"], 4), "LNK_vs_peer": round(c["LNK"], 4),
            "CHOTA_vs_peer": round(c["CHOTA"], 4),
            "link_f1_vs_peer": round(link["f1"], 4), "link_precision": round(link["precision"], 4),
            "link_recall": round(link["recall"], 4),
            "our_tracks": int(len(res.lineage)), "our_divisions": int(res.lineage["divides"].sum()),
            "frames_per_s": round(masks.shape[0] / dt, 2), "cells_linked_per_s": round(len(res.cells) / dt, 1),
            "timing_s": {k: round(v, 2) for k, v in res.timing_s.items()},
        }
    return out


def btrack() -> dict | None:
    folder = SHARED / "btrack_points_peer"
    if not folder.is_dir():
        return None
    pts = pd.read_csv(folder / "test_data.csv")
    truth = json.loads((folder / "test_ground_truth.json").read_text())
    graph = json.loads((folder / "test_graph.json").read_text())
    ref = pts.assign(node=np.arange(len(pts)), frame=pts["t"].astype(int), track_id=0, parent_track_id=0)
    for tid, rows in truth.items():
        ref.loc[rows, "track_id"] = int(tid)
    for child, (par,) in ((k, v) for k, v in graph.items()):
        ref.loc[ref["track_id"] == int(child), "parent_track_id"] = int(par)
    table = pd.DataFrame({"frame": pts["t"].astype(int), "centroid_y_um": pts["y"], "centroid_x_um": pts["x"], "node": np.arange(len(pts))})
    steps = []
    for _tid, g in ref.sort_values("t").groupby("track_id"):
        steps.extend(np.hypot(np.diff(g["x"]), np.diff(g["y"])) / np.diff(g["t"]))
    speed = float(np.median(steps))
    out = {"detections": int(len(pts)), "frames": int(pts["t"].max() + 1), "btrack_tracks": len(truth),
           "median_step_px": round(speed, 2)}
    for name, cfg in {"defaults": TrackConfig(), "speed_from_btrack": TrackConfig(expected_speed_um_per_frame=speed)}.items():
        t0 = time.perf_counter()
        res = link_cells(table, cfg)
        dt = time.perf_counter() - t0
        s = edge_scores(table_links(ref), table_links(res))
        out[name] = {"expected_speed": round(cfg.expected_speed_um_per_frame, 2),
                     "link_f1_vs_btrack": round(s["f1"], 4), "precision": round(s["precision"], 4), "recall": round(s["recall"], 4),
                     "our_tracks": int(res["track_id"].nunique()), "our_divisions": int((res.groupby("track_id")["parent_track_id"].first().value_counts().drop(0, errors="ignore") >= 2).sum()),
                     "cells_linked_per_s": round(len(pts) / dt, 1)}
    return out


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--seeds", type=int, default=3)
    ap.add_argument("--skip-real", action="store_true")
    args = ap.parse_args()
    warm = render_timelapse(TimelapseConfig(n_frames=4, n_cells=4, image_shape_px=(64, 64)), seed=0)
    track_label_series(warm.labels, 1.0)  # imports (laptrack pulls scikit-learn) outside the timings
    sims = simulated(args.seeds)
    report = {"simulated": sims, "division_f1": {
        "without_gaps": sims["default"]["divisions"]["f1"],
        "with_gaps": sims["division_gaps"]["divisions"]["f1"],
        "with_gaps_laptrack_splits_only": sims["division_gaps"]["laptrack_splits_only"]["divisions"]["f1"],
        "without_gaps_laptrack_splits_only": sims["default"]["laptrack_splits_only"]["divisions"]["f1"],
    }}
    if not args.skip_real:
        report["usiigaci"] = usiigaci()
        report["btrack"] = btrack()
    print(json.dumps(report, indent=2))


if __name__ == "__main__":
    main()
