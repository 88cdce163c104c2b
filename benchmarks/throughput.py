"""Benchmark of throughput: the CNN alone, single-cell latency, and files → cell table end to end.

Prints one JSON object:

* ``machine``: CPU count, torch threads, the CPU capability torch sees (AVX2/AVX512…),
  whether mkldnn and bf16 are available, GPU (if any); ``uptime`` before and after each
  part (the cores may be shared: read every figure next to the load).
* ``cnn``: crops/s of the default compact CNN (width 16, 2 channels, 64-px crops) at
  batch 256 in fp32, channels-last fp32, bf16 autocast (channels-last), what
  ``predict_cells`` runs (BatchNorm folded, channels-last) at 1 and all torch threads
  (with the thread count its automatic choice gives now), the same under bf16 autocast
  (``precision="bf16"``; ``fused_channels_last_bf16_*``), onnxruntime, and with
  ``--compile`` torch.compile at 1 thread (``compile_*_seconds``, ``compiled_*``).
* ``latency``: one crop at a time (batch 1), p50 / p99 in ms, torch and onnxruntime.
* ``end_to_end``: ``predict_run`` (the product's default path: built-in segmentation
  model → crops → one classifier + one regressor → written cell table) over simulated
  16-bit bright-field fields at ≥ 60 cells per megapixel; cells/s, the time to only
  read the images (I/O floor) and the ratio, ``outside_fields_seconds`` (model loading,
  run.json, consolidation, the table); with ``--bf16-end-to-end`` the same run in bf16
  (``end_to_end_bf16``); with ``--profile`` the hot spots
  (cProfile, functions by own time and by cumulative time).
* ``memory``: peak RSS of ``mechanoscope predict`` in a fresh process over 1×, 10× and
  100× ``--memory-images`` fields (as ``benchmarks/memory.py``).

The two models are trained for one epoch on separate simulated fields (speed does not
depend on how well they are trained, only on their architecture).

Usage: nice python benchmarks/throughput.py [--images 8] [--size-px 512] [--cells 20]
       [--memory-images 1] [--memory-factors 1 10 100] [--profile] [--skip-memory]
       [--compile] [--bf16-end-to-end]

Measured 2026-12-01 on the 2-core AVX2 machine (no native bf16) while it ran other jobs
(load average 5–12, i.e. 2.5–6 runnable processes per core; the figures are far below
what the idle machine gives and only comparable to each other): CNN at batch 256 fp32
102 crops/s, channels-last 159, bf16 autocast 23 (emulated bf16 on AVX2: slower, logits
differ by 2e-4), onnxruntime 275; batch-1 latency torch p50 100 ms / p99 1.24 s,
onnxruntime p50 1.9 ms / p99 38 ms; end to end 8 fields of 512² px, 151 cells (72 per
MP): 2.9 cells/s, reading alone 0.07 s (ratio 728), of 51 s: predict 39 s (two models,
each network run twice per field: outputs, then the applicability-domain features),
segment 8.2 s, extract 3.0 s; peak RSS 440 / 448 / 465 MiB for 2 / 20 / 200 fields
(--memory-images 2) while the cells grew 10 / 95 / 938.

After one pass per network (domain features by a forward hook), BatchNorm folded,
channels-last, free-core threads and a loop-free ``crop_statistics`` (2026-12-02, same
machine, load 6–9, ``--skip-memory --profile``): the fused channels-last CNN 323 crops/s
at 1 thread, 254 at 2 (fp32 126, channels-last 207 in the same run; folded logits within
4e-9); end to end 151 cells in 11.2 s: 13.4 cells/s (before, at load 8: 58.6 s, 2.6
cells/s), stages predict 3.6 s / segment 4.6 s / extract 1.6 s (before 34.6 / 14.4 /
4.7: predict fell from 2.4× to 0.8× the segmentation time, which now leads).

With the built-in segmentation model as the default (BatchNorm folded, channels-last,
1024-px tiles), 2026-12-02 on a 2-core AVX512 machine with native bf16, nearly idle
(load 1.3–1.6): end to end 143 cells on 8 fields of 512² px in 2.49 s = 57.5 cells/s
(stages read 0.02 / segment 0.56 / extract 0.45 / predict 0.69 / write 0.09 s; I/O floor
ratio 146); CNN at batch 256: fp32 743, channels-last 1,144, bf16 channels-last 1,852,
folded channels-last 866 (1 thread) / 1,521 (2 threads), onnxruntime 3,184 crops/s;
batch-1 latency torch p50 2.7 / p99 4.9 ms, onnxruntime p50 0.43 / p99 0.96 ms; peak RSS
542 / 548 / 561 MiB for 1 / 10 / 100 fields.

With the applicability domain's per-field costs cut (NumPy per-image statistics,
matrix-vector plane fits, frames built once) and the crop store appended in 32-MiB
buffers, 2026-12-02 on the same AVX512-BF16 machine while other sessions' jobs ran
(load 3.6–4.8, so about 1 of the 2 cores for this run; ``--skip-memory --profile
--bf16-end-to-end --compile``): end to end 143 cells in 8.19 s = 17.5 cells/s, stages
segment 5.92 / extract 0.68 / predict 0.89 / write 0.14 s, 0.54 s outside the fields
(before, the same command at load 3.2–5.1: 7.70 s, 18.6 cells/s, segment 4.83 / extract
0.65 / predict 1.26 / write 0.15 s: the learned segmentation, which other sessions were
retraining on the same cores, sets the figure under load); with
MECHANOSCOPE_INFERENCE_PRECISION=bf16 6.38 s (22.4 cells/s, predict 0.70 s) in the
same run. Measured apart at load ~4: predict stage of the 8 fields 0.62 → 0.46 s,
consolidating the crop store 0.36 → 0.19–0.25 s. CNN at batch 256: fp32 263,
channels-last 441, bf16 channels-last 534, folded channels-last fp32 1,314 (1 thread) /
758 (2), folded bf16 (``precision="bf16"``) 1,932 / 1,110, torch.compile at 1 thread
fp32 1,520 (7.1 s to compile) / bf16 3,031, onnxruntime 2,262 crops/s; batch-1
latency torch p50 5.7 / p99 272 ms, onnxruntime p50 0.27 / p99 8.5 ms (p99 is the
load's). bf16 stays opt-in (:mod:`mechanoscope.nn.precision`: probabilities ≤ 4e-3,
moduli ≤ 0.2 %, domain scores ≤ 0.7 % from fp32 for 15-epoch models, but up to 39 %
for these 1-epoch ones); compiling does not pay for a run of this size.

The same code with the built-in segmenter's mirror test-time augmentation as its default,
2026-12-02, the other jobs paused (load 1.6–1.7; ``--skip-memory --bf16-end-to-end``):
end to end 143 cells in 2.07 s = 69.1 cells/s (stages read 0.02 / segment 0.74 / extract
0.49 / predict 0.44 / write 0.12 s, 0.26 s outside the fields; I/O floor ratio 129);
with bf16 69.9 cells/s (segment 0.69 s); CNN at batch 256: fp32 727, channels-last
1,236, bf16 channels-last 2,200, folded channels-last fp32 1,035 (1 thread) / 1,604 (2),
folded bf16 1,819 / 2,585, onnxruntime 4,991 crops/s; batch-1 latency torch p50 1.96 /
p99 3.69 ms, onnxruntime p50 0.24 / p99 0.38 ms. The profile is flat: the U-Net's
convolutions 0.27 s, Gaussian and Sobel filters of the intensity features and the
structure check 0.17 s, resampling 0.08 s, medians 0.07 s, copying the networks for
BatchNorm folding 0.07 s, watershed 0.05 s.
"""

from __future__ import annotations

import argparse
import cProfile
import io
import json
import os
import pstats
import shutil
import subprocess
import sys
import tempfile
import time
import warnings
from pathlib import Path

import numpy as np


def _uptime() -> str:
    try:
        return " ".join(Path("/proc/loadavg").read_text().split()[:3])
    except OSError:  # pragma: no cover
        return "n/a"


def _machine() -> dict:
    import torch

    cap = torch.backends.cpu.get_cpu_capability()
    bf16 = bool(getattr(torch.cpu, "_is_avx512_bf16_supported", lambda: False)()) or bool(getattr(torch.cpu, "_is_amx_tile_supported", lambda: False)())
    return {
        "cpus": os.cpu_count(),
        "torch_threads": torch.get_num_threads(),
        "torch": torch.__version__,
        "cpu_capability": cap,
        "mkldnn": bool(torch.backends.mkldnn.is_available()),
        "native_bf16": bf16,
        "cuda": torch.cuda.get_device_name(0) if torch.cuda.is_available() else None,
    }


def _rate(fn, n_items: int, min_seconds: float = 3.0, warmup: int = 2) -> float:
    for _ in range(warmup):
        fn()
    count, t0 = 0, time.perf_counter()
    while True:
        fn()
        count += 1
        dt = time.perf_counter() - t0
        if dt >= min_seconds and count >= 3:
            return n_items * count / dt


def _onnx_session(net, x):
    import onnxruntime as ort
    import torch

    from mechanoscope.learn.export import _quiet_exporter

    batch = torch.export.Dim("batch", min=1, max=1 << 20)
    with _quiet_exporter():
        prog = torch.onnx.export(net, (x,), dynamo=True, input_names=["crops"], output_names=["outputs"], dynamic_shapes={"x": {0: batch}}, optimize=True, verbose=False)
    opts = ort.SessionOptions()
    opts.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_ALL
    return ort.InferenceSession(prog.model_proto.SerializeToString(), sess_options=opts, providers=["CPUExecutionProvider"])


def bench_cnn(batch: int, crop_px: int, width: int, seconds: float, compile_: bool = False) -> tuple[dict, dict]:
    """Crops/s at ``batch`` and batch-1 latency of the compact CNN in several modes."""
    import torch

    from mechanoscope.learn.networks import build_network

    net = build_network("compact", 2, 2, width=width, input_pixels=crop_px, pooling="max").eval()
    x = torch.randn(batch, 2, crop_px, crop_px)
    out: dict = {"batch": batch, "crop_pixels": crop_px, "width": width, "load_before": _uptime()}
    with torch.inference_mode():
        ref = net(x)
        out["fp32_crops_per_s"] = round(_rate(lambda: net(x), batch, seconds))
        net_cl = net.to(memory_format=torch.channels_last)
        x_cl = x.contiguous(memory_format=torch.channels_last)
        out["channels_last_fp32_crops_per_s"] = round(_rate(lambda: net_cl(x_cl), batch, seconds))
        try:
            with torch.autocast("cpu", dtype=torch.bfloat16):
                got = net_cl(x_cl).float()
                out["bf16_channels_last_crops_per_s"] = round(_rate(lambda: net_cl(x_cl), batch, seconds))
            out["bf16_max_abs_diff_logits"] = float((got - ref).abs().max())
        except RuntimeError as exc:  # pragma: no cover
            out["bf16_channels_last_crops_per_s"] = f"unavailable: {exc}"
        net = net.to(memory_format=torch.contiguous_format)
        # what predict_cells runs: BatchNorm folded into the convolutions, channels-last, at each thread count
        from mechanoscope.nn.inference import (
            default_inference_threads,
            fuse_for_inference,
            inference_threads,
        )

        fused = fuse_for_inference(net).to(memory_format=torch.channels_last)
        out["fused_max_abs_diff_logits"] = float((fused(x_cl) - ref).abs().max())
        out["fused_channels_last_fp32_crops_per_s_by_threads"] = {}
        for t in sorted({1, torch.get_num_threads()}):
            with inference_threads(t):
                out["fused_channels_last_fp32_crops_per_s_by_threads"][str(t)] = round(_rate(lambda: fused(x_cl), batch, seconds))
        out["default_inference_threads_now"] = default_inference_threads()
        # predict_cells(precision="bf16") / MECHANOSCOPE_INFERENCE_PRECISION=bf16: the folded channels-last network under bf16 autocast
        from mechanoscope.nn.precision import inference_autocast, native_bf16

        out["native_bf16"] = native_bf16("cpu")
        with inference_autocast(torch.device("cpu"), "bf16"):
            out["fused_bf16_max_abs_diff_logits"] = float((fused(x_cl).float() - ref).abs().max())
            out["fused_channels_last_bf16_crops_per_s_by_threads"] = {}
            for t in sorted({1, torch.get_num_threads()}):
                with inference_threads(t):
                    out["fused_channels_last_bf16_crops_per_s_by_threads"][str(t)] = round(_rate(lambda: fused(x_cl), batch, seconds))
        if compile_:
            # torch.compile (inductor) of the folded channels-last network at 1 thread: compile time against the gain
            with inference_threads(1):
                for name, prec in (("fp32", "fp32"), ("bf16", "bf16")):
                    with inference_autocast(torch.device("cpu"), prec):
                        t0 = time.perf_counter()
                        comp = torch.compile(fused, dynamic=False)
                        comp(x_cl)
                        out[f"compile_{name}_seconds"] = round(time.perf_counter() - t0, 1)
                        out[f"compiled_{name}_crops_per_s_1_thread"] = round(_rate(lambda: comp(x_cl), batch, seconds))
    sess = _onnx_session(net, x[:4])
    xa = x.numpy()
    out["onnxruntime_crops_per_s"] = round(_rate(lambda: sess.run(None, {"crops": xa}), batch, seconds))
    out["load_after"] = _uptime()

    lat: dict = {"load_before": _uptime()}
    one = torch.randn(1, 2, crop_px, crop_px)
    with torch.inference_mode():
        lat["torch"] = _latency(lambda: net(one))
    one_a = one.numpy()
    lat["onnxruntime"] = _latency(lambda: sess.run(None, {"crops": one_a}))
    lat["load_after"] = _uptime()
    return out, lat


def _latency(fn, n: int = 2000, warmup: int = 100) -> dict:
    for _ in range(warmup):
        fn()
    t = np.empty(n)
    for i in range(n):
        t0 = time.perf_counter()
        fn()
        t[i] = time.perf_counter() - t0
    return {"p50_ms": round(float(np.percentile(t, 50)) * 1e3, 3), "p99_ms": round(float(np.percentile(t, 99)) * 1e3, 3), "n": n}


def _train_models(root: Path, seed: int, size_px: int = 512, cells: int = 20) -> list[Path]:
    from mechanoscope.cells.extract import ExtractConfig, extract_folder
    from mechanoscope.learn.config import TrainConfig
    from mechanoscope.learn.train import train_model
    from mechanoscope.pipeline import attach_simulation_truth
    from mechanoscope.segment.batch import segment_images
    from mechanoscope.simulate import AdherentConfig, simulate_adherent

    sim = simulate_adherent(AdherentConfig(n_images=12, image_shape_px=(size_px, size_px), cells_per_image=cells), root / "train_sim", seed=seed + 1)
    run = root / "train_run"
    segment_images(sim / "images", run)
    extract_folder(sim / "images", run / "labels", run, ExtractConfig.build(crop={"crop_size_um": 80.0, "crop_pixels": 64}))
    attach_simulation_truth(run, sim)
    common = dict(epochs=1, batch_size=64, seed=seed, min_cells_per_class=3, val_fraction=0.2, calibration_fraction=0.2, test_fraction=0.2)
    cls = train_model(run, TrainConfig.build(target="label", **common), root / "classifier").model_dir
    reg = train_model(run, TrainConfig.build(target="stiffness_pa", **common), root / "regressor").model_dir
    return [cls, reg]


def _simulate(root: Path, name: str, n: int, size_px: int, cells: int, seed: int) -> Path:
    from mechanoscope.simulate import AdherentConfig, simulate_adherent

    return simulate_adherent(AdherentConfig(n_images=n, image_shape_px=(size_px, size_px), cells_per_image=cells), root / name, seed=seed) / "images"


def _top(prof: cProfile.Profile, key: str, n: int = 12) -> list[dict]:
    st = pstats.Stats(prof, stream=io.StringIO())
    rows = []
    for (file, line, func), (cc, nc, tt, ct, _) in st.stats.items():
        rows.append({"function": f"{Path(file).name}:{line}({func})", "calls": nc, "own_s": round(tt, 3), "cumulative_s": round(ct, 3)})
    rows.sort(key=lambda r: r["own_s" if key == "own" else "cumulative_s"], reverse=True)
    return rows[:n]


def bench_end_to_end(root: Path, models: list[Path], n: int, size_px: int, cells: int, seed: int, profile: bool) -> dict:
    from mechanoscope.io import read_image
    from mechanoscope.io.images import image_paths
    from mechanoscope.pipeline import predict_run

    images = _simulate(root, "e2e_sim", n, size_px, cells, seed)
    paths = image_paths(images)
    megapixels = n * size_px * size_px / 1e6
    res: dict = {"images": n, "image_shape_px": [size_px, size_px], "dtype": str(read_image(paths[0]).data.dtype), "load_before": _uptime()}
    t0 = time.perf_counter()
    for p in paths:
        read_image(p).data.sum()
    io_s = time.perf_counter() - t0
    prof = cProfile.Profile() if profile else None
    t0 = time.perf_counter()
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        if prof:
            prof.enable()
        info = predict_run(images, [str(m) for m in models], root / "e2e_out")
        if prof:
            prof.disable()
    total = time.perf_counter() - t0
    n_cells = int(info["n_cells"])
    seconds = {}
    for e in info.get("status", []):
        for k, v in (e.get("seconds") or {}).items():
            seconds[k] = seconds.get(k, 0.0) + float(v)
    res["outside_fields_seconds"] = round(total - seconds.get("total", 0.0), 2)  # model loading, run.json, consolidation, the table
    res.update({
        "cells": n_cells,
        "cells_per_megapixel": round(n_cells / megapixels, 1),
        "seconds": round(total, 2),
        "cells_per_s": round(n_cells / total, 1),
        "io_floor_seconds": round(io_s, 3),
        "io_floor_cells_per_s": round(n_cells / io_s, 1) if io_s > 0 else None,
        "ratio_to_io_floor": round(total / io_s, 1) if io_s > 0 else None,
        "stage_seconds": {k: round(v, 2) for k, v in seconds.items()},
        "profiled": bool(profile),
        "load_after": _uptime(),
    })
    if prof:
        res["hot_spots_own_time"] = _top(prof, "own")
        res["hot_spots_cumulative"] = _top(prof, "cumulative")
    return res


WRAPPER = """
import resource, subprocess, sys
proc = subprocess.run(sys.argv[1:], capture_output=True, text=True)
peak_kib = resource.getrusage(resource.RUSAGE_CHILDREN).ru_maxrss  # KiB on Linux
print(proc.returncode, peak_kib)
sys.stderr.write(proc.stderr[-2000:])
"""


def bench_memory(root: Path, models: list[Path], base: int, factors: list[int], size_px: int, cells: int, seed: int) -> dict:
    out: dict = {"base_images": base, "image_shape_px": [size_px, size_px], "runs": {}}
    biggest = _simulate(root, "mem_sim", base * max(factors), size_px, cells, seed + 7)
    all_paths = sorted(biggest.glob("*.tif"))
    for f in factors:
        folder = root / f"mem_{f}x"
        folder.mkdir()
        for p in all_paths[: base * f]:
            os.symlink(p, folder / p.name)
        cmd = [sys.executable, "-c", WRAPPER, sys.executable, "-m", "mechanoscope.cli.main", "predict", str(folder)]
        for m in models:
            cmd += ["--model", str(m)]
        cmd += ["--out", str(root / f"mem_out_{f}x")]
        load = _uptime()
        t0 = time.perf_counter()
        proc = subprocess.run(cmd, capture_output=True, text=True, timeout=3600)
        code, peak_kib = (int(v) for v in proc.stdout.split()[-2:])
        if code != 0:
            raise SystemExit(f"predict failed ({code}): {proc.stderr}")
        info = json.loads((root / f"mem_out_{f}x" / "predict.json").read_text())
        out["runs"][f"{f}x"] = {"images": base * f, "cells": info["n_cells"], "peak_rss_mib": round(peak_kib / 1024, 1),
                                "seconds": round(time.perf_counter() - t0, 1), "load_before": load}
    rss = [r["peak_rss_mib"] for r in out["runs"].values()]
    out["rss_growth_mib"] = round(max(rss) - min(rss), 1)
    return out


def main(argv: list[str] | None = None) -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--images", type=int, default=8, help="fields for the end-to-end figure")
    ap.add_argument("--size-px", type=int, default=512)
    ap.add_argument("--cells", type=int, default=20, help="cells placed per field (20 in 512² px = 76 per MP if all fit)")
    ap.add_argument("--batch", type=int, default=256)
    ap.add_argument("--cnn-seconds", type=float, default=3.0)
    ap.add_argument("--memory-images", type=int, default=1, help="fields of the 1x memory run (10x and 100x this follow)")
    ap.add_argument("--memory-size-px", type=int, default=256)
    ap.add_argument("--memory-cells", type=int, default=5)
    ap.add_argument("--memory-factors", type=int, nargs="+", default=[1, 10, 100])
    ap.add_argument("--skip-memory", action="store_true")
    ap.add_argument("--skip-cnn", action="store_true")
    ap.add_argument("--profile", action="store_true", help="profile the end-to-end run (cProfile; slows it a little)")
    ap.add_argument("--compile", action="store_true", help="also time torch.compile of the CNN (fp32, bf16; ~10-30 s of compiling each)")
    ap.add_argument("--bf16-end-to-end", action="store_true", help="also run end to end with MECHANOSCOPE_INFERENCE_PRECISION=bf16 (key end_to_end_bf16)")
    ap.add_argument("--seed", type=int, default=0)
    args = ap.parse_args(argv)

    result: dict = {"machine": _machine(), "load_start": _uptime()}
    if not args.skip_cnn:
        result["cnn"], result["latency"] = bench_cnn(args.batch, 64, 16, args.cnn_seconds, args.compile)
    root = Path(tempfile.mkdtemp(prefix="mechanoscope-throughput-"))
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            models = _train_models(root, args.seed)
        result["end_to_end"] = bench_end_to_end(root, models, args.images, args.size_px, args.cells, args.seed, args.profile)
        if args.bf16_end_to_end:
            from mechanoscope.nn.precision import PRECISION_ENV

            os.environ[PRECISION_ENV] = "bf16"
            try:
                result["end_to_end_bf16"] = bench_end_to_end(root / "bf16", models, args.images, args.size_px, args.cells, args.seed, False)
            finally:
                del os.environ[PRECISION_ENV]
        if not args.skip_memory:
            result["memory"] = bench_memory(root, models, args.memory_images, args.memory_factors, args.memory_size_px, args.memory_cells, args.seed)
    finally:
        shutil.rmtree(root, ignore_errors=True)
    result["load_end"] = _uptime()
    print(json.dumps(result, indent=2))


if __name__ == "__main__":
    main()
