"""Fault isolation: the batch verbs never fall over and never show a Python traceback.

The CLI runs in a subprocess (``python -m mechanoscope.cli.main``, what the installed
``mechanoscope`` script calls) over one folder of nine small images, five of them bad
in a different way: a truncated TIFF, a text file named ``.tif``, a 2 × 2 image, a
320-byte TIFF whose header claims 100000 × 100000 pixels and a two-frame stack asked
for ``--frame 5``; the label folder adds a label image with one id of 3·10⁹. The good
images must be complete, the bad ones recorded with file and stage in the run's JSON,
the exit code 1 and the last line must name the count and the JSON file. Every case
also checks that "Traceback" never reaches stderr.
"""

from __future__ import annotations

import json
import os
import resource
import struct
import subprocess
import sys
import textwrap
import time
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
import tifffile

from mechanoscope.errors import MechanoscopeError
from mechanoscope.io.images import write_image, write_label_image

PX_UM = 0.5
GOOD = ["bigid", "good0", "good1", "good2"]
BAD = ["huge_header", "stack", "text", "tiny", "truncated"]
BIG_ID = 3_000_000_000
# the subprocesses that read the batch may not use more than this much address space, so
# a reader that believes the 100000 × 100000 header (10 GB) fails instead of swapping
MEMORY_LIMIT_BYTES = 6 * 2**30


def _field(seed: int, n: int = 96) -> tuple[np.ndarray, np.ndarray]:
    """A noisy bright-field-like field with three bright disks and its label image."""
    rng = np.random.default_rng(seed)
    yy, xx = np.mgrid[:n, :n]
    img = rng.normal(100, 3, (n, n))
    lab = np.zeros((n, n), np.uint32)
    for k, (cy, cx) in enumerate([(25, 25), (25, 70), (70, 45)], 1):
        inside = (yy - cy) ** 2 + (xx - cx) ** 2 < 12**2
        img[inside] += 40 + rng.normal(0, 10, inside.sum())
        lab[inside] = k
    return img.astype(np.uint16), lab


def _huge_header_tiff(path: Path) -> None:
    """A valid 8 × 8 TIFF whose ImageWidth/ImageLength tags are patched to 100000."""
    tifffile.imwrite(path, np.zeros((8, 8), np.uint8), resolution=(1e4 / PX_UM, 1e4 / PX_UM), resolutionunit="CENTIMETER")
    data = bytearray(path.read_bytes())
    with tifffile.TiffFile(path) as tif:
        offsets = [t.valueoffset for t in tif.pages[0].tags.values() if t.name in ("ImageWidth", "ImageLength")]
    assert len(offsets) == 2
    for off in offsets:
        data[off:off + 4] = struct.pack("<I", 100_000)
    path.write_bytes(bytes(data))


@pytest.fixture(scope="module")
def batch(tmp_path_factory) -> Path:
    root = tmp_path_factory.mktemp("faults")
    images, labels = root / "images", root / "labels"
    images.mkdir()
    labels.mkdir()
    for i in range(3):
        img, lab = _field(i)
        write_image(images / f"good{i}.tif", img, pixel_size_um=PX_UM)
        write_label_image(labels / f"good{i}.tif", lab, pixel_size_um=PX_UM)
    img, lab = _field(7)
    lab[lab == 2] = BIG_ID
    write_image(images / "bigid.tif", img, pixel_size_um=PX_UM)
    write_label_image(labels / "bigid.tif", lab, pixel_size_um=PX_UM)
    assert tifffile.imread(labels / "bigid.tif").max() == BIG_ID
    # truncated: an uncompressed TIFF cut in the middle of its pixel data
    img, lab = _field(9)
    write_image(root / "whole.tif", img, pixel_size_um=PX_UM, compression=None)
    whole = (root / "whole.tif").read_bytes()
    (images / "truncated.tif").write_bytes(whole[: len(whole) // 2])
    write_label_image(labels / "truncated.tif", lab, pixel_size_um=PX_UM)
    (images / "text.tif").write_text("sample,stiffness_pa\nA,1200\n")
    write_label_image(labels / "text.tif", lab, pixel_size_um=PX_UM)
    write_image(images / "tiny.tif", np.array([[10, 20], [30, 40]], np.uint16), pixel_size_um=PX_UM)
    write_label_image(labels / "tiny.tif", np.array([[0, 1], [0, 1]], np.uint32), pixel_size_um=PX_UM)
    _huge_header_tiff(images / "huge_header.tif")
    assert (images / "huge_header.tif").stat().st_size < 4096
    write_label_image(labels / "huge_header.tif", lab, pixel_size_um=PX_UM)
    write_image(images / "stack.tif", np.stack([_field(5)[0], _field(6)[0]]), pixel_size_um=PX_UM, axes="TYX")
    write_label_image(labels / "stack.tif", _field(5)[1], pixel_size_um=PX_UM)
    assert sorted(p.stem for p in images.iterdir()) == sorted(GOOD + BAD)
    return root


def _limit_memory() -> None:  # runs in the child before exec
    resource.setrlimit(resource.RLIMIT_AS, (MEMORY_LIMIT_BYTES, MEMORY_LIMIT_BYTES))


def cli(*args: str | Path, code: str | None = None, env: dict | None = None, limit_memory: bool = False) -> subprocess.CompletedProcess:
    """Run ``mechanoscope ARGS`` (or a Python snippet ``code`` ending in main()) in a subprocess."""
    full_env = {**os.environ, "COLUMNS": "300", "NO_COLOR": "1", "OMP_NUM_THREADS": "1", **(env or {})}
    if "MECHANOSCOPE_DEBUG" not in (env or {}):
        full_env.pop("MECHANOSCOPE_DEBUG", None)
    cmd = [sys.executable, "-m", "mechanoscope.cli.main", *map(str, args)] if code is None else [sys.executable, "-c", code, *map(str, args)]
    proc = subprocess.run(cmd, capture_output=True, text=True, env=full_env, timeout=300, preexec_fn=_limit_memory if limit_memory else None)
    if (env or {}).get("MECHANOSCOPE_DEBUG") != "1":
        assert "Traceback" not in proc.stderr, proc.stderr
        assert "Traceback" not in proc.stdout, proc.stdout
    return proc


def last_line(proc: subprocess.CompletedProcess) -> str:
    lines = [ln for ln in proc.stderr.splitlines() if ln.strip()]
    return lines[-1] if lines else ""


def cli_here(*args: str | Path):
    """The same command in this process (typer's test runner): for follow-up calls, to
    spare an interpreter start-up; the first call of each verb runs in a subprocess."""
    from typer.testing import CliRunner

    from mechanoscope.cli.main import app

    result = CliRunner().invoke(app, [str(a) for a in args])
    assert "Traceback" not in result.output, result.output
    assert result.exception is None or isinstance(result.exception, SystemExit), repr(result.exception)
    return result


def _failed(records: list[dict]) -> dict[str, dict]:
    return {Path(r["image"]).stem: r for r in records if r["status"] == "failed"}


# ------------------------------------------------------------------------------ segment
def test_segment_run_records_bad_images_and_finishes_the_good_ones(batch, tmp_path):
    out = tmp_path / "seg"
    proc = cli("segment", "run", batch / "images", "--method", "classical", "--out", out, "--frame", "5", limit_memory=True)
    assert proc.returncode == 1, proc.stderr
    record_path = out / "run.json"
    assert last_line(proc).startswith(f"{len(BAD)} of {len(GOOD) + len(BAD)} image(s) failed")
    assert str(record_path) in last_line(proc)
    record = json.loads(record_path.read_text())["stages"]["segment"]
    for stem in GOOD:
        assert record["images"][stem]["status"] == "done"
        labels = tifffile.imread(out / "labels" / f"{stem}.tif")
        assert labels.shape == (96, 96) and labels.max() >= 1
    assert sorted(p.stem for p in (out / "labels").glob("*.tif")) == GOOD
    failed = {k: v for k, v in record["images"].items() if v["status"] == "failed"}
    assert sorted(failed) == BAD and record["n_failed"] == len(BAD)
    for stem, entry in failed.items():
        assert entry["stage"] == "read"
        assert entry["error"].startswith(str(batch / "images" / f"{stem}.tif")), entry
    assert "100000 × 100000" in failed["huge_header"]["error"] and "--max-pixels" in failed["huge_header"]["error"]
    assert "frame 5" in failed["stack"]["error"] and "2 frames" in failed["stack"]["error"]
    assert "2 × 2" in failed["tiny"]["error"]
    assert "truncated" in failed["truncated"]["error"] and "not a TIFF" in failed["text"]["error"]


def test_segment_exits_1_when_every_image_fails_and_a_failed_run_does_not_block_its_rerun(tmp_path):
    images = tmp_path / "images"
    images.mkdir()
    for i in range(2):  # no pixel size in the metadata
        tifffile.imwrite(images / f"f{i}.tif", _field(i)[0])
    out = tmp_path / "run"
    first = cli("segment", "run", images, "--method", "classical", "--out", out)
    assert first.returncode == 1
    assert last_line(first).startswith("2 of 2 image(s) failed") and "run.json" in last_line(first)
    assert all(v["stage"] == "read" and "pixel size" in v["error"] for v in json.loads((out / "run.json").read_text())["stages"]["segment"]["images"].values())
    assert json.loads((out / "segment.json").read_text())["n_failed"] == 2  # the summary older readers know
    second = cli_here("segment", "run", images, "--method", "classical", "--out", out, "--pixel-size-um", str(PX_UM))
    assert second.exit_code == 0, second.output
    assert sorted(p.name for p in (out / "labels").iterdir()) == ["f0.tif", "f1.tif"]


# ------------------------------------------------------------------------------ extract
def test_extract_records_bad_pairs_and_keeps_huge_label_ids(batch, tmp_path):
    out = tmp_path / "ext"
    proc = cli("extract", batch / "images", batch / "labels", "--out", out, limit_memory=True)
    assert proc.returncode == 1, proc.stderr
    summary_path = out / "run.json"
    summary = json.loads((out / "extract.json").read_text())
    failed = _failed(summary["status"])
    assert _failed(json.loads(summary_path.read_text())["stages"]["extract"]["images"].values()).keys() == failed.keys()
    # the 2 × 2 image is either extracted (one 2-pixel cell, failing QC) or recorded
    assert {"huge_header", "stack", "text", "truncated"} <= set(failed) <= set(BAD)
    n_total = len(GOOD) + len(BAD)
    assert last_line(proc).startswith(f"{len(failed)} of {n_total} image(s) failed") and str(summary_path) in last_line(proc)
    for stem in ("huge_header", "text", "truncated"):
        assert failed[stem]["stage"] == "read image" and failed[stem]["file"] == str(batch / "images" / f"{stem}.tif")
    assert failed["stack"]["stage"] == "extract" and "shape" in failed["stack"]["error"]
    assert "100000 × 100000" in failed["huge_header"]["error"]
    table = pd.read_parquet(out / "cells.parquet")
    done = {Path(r["image"]).stem for r in summary["status"] if r["status"] == "done"}
    assert set(GOOD) <= done and set(table["image_id"]) == done
    assert sorted(table.loc[table["image_id"] == "bigid", "cell_id"]) == [1, 3, BIG_ID]
    for stem in GOOD:
        assert (table["image_id"] == stem).sum() == 3
    big = table[(table["image_id"] == "bigid") & (table["cell_id"] == BIG_ID)].iloc[0]
    assert big["area_px"] == pytest.approx((tifffile.imread(batch / "labels" / "bigid.tif") == BIG_ID).sum())
    if "tiny" in done:
        assert not table.loc[table["image_id"] == "tiny", "qc_pass"].any()


# ------------------------------------------------------------------------------ predict
def _features_model(folder: Path) -> Path:
    """A morphology (gradient boosting) soft/stiff classifier trained on a hand-made table."""
    from mechanoscope.learn.config import TrainConfig
    from mechanoscope.learn.train import train_model

    rng = np.random.default_rng(0)
    rows = []
    for i in range(12):
        label = ["soft", "stiff"][i % 2]
        for j in range(10):
            area = rng.normal(300 if label == "soft" else 600, 40)
            rows.append({"image_id": f"t{i:02d}", "cell_id": j + 1, "label": label, "area_um2": area, "solidity": rng.uniform(0.9, 1.0), "qc_pass": True})
    run = folder / "train_run"
    run.mkdir(parents=True)
    pd.DataFrame(rows).to_parquet(run / "cells.parquet", index=False)
    cfg = TrainConfig.build(target="label", model_type="features", seed=0, min_cells_per_class=5)
    return train_model(run, cfg, folder / "model").model_dir


def test_predict_images_records_bad_images_and_overwrite_reruns(batch, tmp_path):
    from threadpoolctl import threadpool_limits

    with threadpool_limits(1):  # gradient boosting's threads only slow a 2-core test run down
        model = _features_model(tmp_path)
    out = tmp_path / "pred"
    proc = cli("predict", batch / "images", "--model", model, "--out", out, "--segmentation", "classical")
    assert proc.returncode == 1, proc.stderr
    info = json.loads((out / "predict.json").read_text())
    failed = _failed(info["status"])
    assert _failed(json.loads((out / "run.json").read_text())["stages"]["predict"]["images"].values()).keys() == failed.keys()
    assert sorted(failed) == BAD and info["n_failed"] == len(BAD)
    assert all(r["stage"] == "segment: read" and r["image"] == str(batch / "images" / f"{s}.tif") for s, r in failed.items())
    assert last_line(proc).startswith(f"{len(BAD)} of {len(GOOD) + len(BAD)} image(s) failed") and str(out / "run.json") in last_line(proc)
    table = pd.read_parquet(out / "cells.parquet")
    assert set(table["image_id"]) == set(GOOD) and table["pred_label"].notna().all()
    # other segmentation settings into the same folder: refused unless --overwrite (the
    # refusal itself is segment's, tested in test_segment_network), which predict now has
    with threadpool_limits(1):
        redo = cli_here("predict", batch / "images", "--model", model, "--out", out, "--pixel-size-um", "0.25", "--overwrite", "--segmentation", "classical")
    assert redo.exit_code == 1 and json.loads((out / "predict.json").read_text())["n_failed"] == len(BAD)
    assert json.loads((out / "predict.json").read_text())["settings"]["pixel_size_um"] == 0.25


# ------------------------------------------------------------------------------ output paths
def test_an_output_under_a_regular_file_fails_at_once(batch, tmp_path):
    blocker = tmp_path / "notes.txt"
    blocker.write_text("a file, not a folder\n")
    bad_out = blocker / "run"
    proc = cli("segment", "run", batch / "images", "--method", "classical", "--out", bad_out)
    assert proc.returncode == 2, proc.stderr
    assert str(blocker) in last_line(proc) and "regular file" in last_line(proc)
    for args in (("extract", batch / "images", batch / "labels", "--out", bad_out), ("segment", "run", batch / "images", "--method", "classical", "--out", blocker)):
        result = cli_here(*args)
        assert result.exit_code == 2 and str(blocker) in result.output and "file" in result.output
    assert blocker.read_text() == "a file, not a folder\n"


def test_train_checks_its_output_folder_before_training(tmp_path):
    rng = np.random.default_rng(1)
    n = 400
    run = tmp_path / "run"
    run.mkdir()
    pd.DataFrame({
        "image_id": [f"i{k % 40}" for k in range(n)], "cell_id": np.arange(n), "label": np.where(np.arange(n) % 80 < 40, "a", "b"),
        "area_um2": rng.normal(300, 50, n), "solidity": rng.uniform(0.8, 1, n), "qc_pass": True,
    }).to_parquet(run / "cells.parquet", index=False)
    blocker = tmp_path / "blocker"
    blocker.write_text("")
    t0 = time.perf_counter()
    proc = cli("train", run, "--target", "label", "--model-type", "features", "--out", blocker / "model")
    assert proc.returncode == 2 and str(blocker) in proc.stderr and "regular file" in proc.stderr
    assert time.perf_counter() - t0 < 30
    # the same table without qc_pass is an error, not a silent switch to every cell
    pd.read_parquet(run / "cells.parquet").drop(columns="qc_pass").to_parquet(run / "cells.parquet", index=False)
    result = cli_here("train", run, "--target", "label", "--model-type", "features", "--out", tmp_path / "model")
    assert result.exit_code == 2 and "no qc_pass column" in result.output and not (tmp_path / "model").exists()


def test_evaluate_refuses_a_table_without_qc_pass(tmp_path):
    from mechanoscope.pipeline.evaluation import evaluate_run

    run = tmp_path / "run"
    run.mkdir()
    p = np.linspace(0.05, 0.95, 20)
    pd.DataFrame({
        "image_id": "a", "cell_id": np.arange(20), "label": np.where(p > 0.5, "stiff", "soft"),
        "pred_prob_soft": 1 - p, "pred_prob_stiff": p, "pred_label": np.where(p > 0.5, "stiff", "soft"),
    }).to_parquet(run / "cells.parquet", index=False)
    with pytest.raises(MechanoscopeError, match="qc_pass.*--all-cells"):
        evaluate_run(run, figures=False)
    ev = evaluate_run(run, figures=False, all_cells=True)
    assert ev["scope"]["n_cells_in_scope"] == 20 and "QC not applied" in ev["scope"]["cells"]


# ------------------------------------------------------------------------------ safety net
_PLANT = textwrap.dedent("""
    import sys
    import mechanoscope.segment.classical as classical
    original, calls = classical.segment_classical, []
    def planted(image, **kw):
        calls.append(1)
        if {when}:
            raise RuntimeError("planted bug")
        return original(image, **kw)
    classical.segment_classical = planted
    from mechanoscope.cli.main import main
    main(sys.argv[1:])
""")


def test_an_unexpected_error_in_one_image_is_recorded_and_the_batch_goes_on(batch, tmp_path):
    out = tmp_path / "seg"
    proc = cli("segment", "run", batch / "images", "--method", "classical", "--out", out, code=_PLANT.format(when="len(calls) == 1"))
    assert proc.returncode == 1
    record = json.loads((out / "run.json").read_text())["stages"]["segment"]
    first = record["images"]["bigid"]  # images run in name order
    assert first["status"] == "failed" and first["stage"] == "segment" and "RuntimeError: planted bug" in first["error"]
    assert all(record["images"][s]["status"] == "done" for s in GOOD[1:])


def test_an_unexpected_error_in_one_pair_is_recorded_by_extract(batch, tmp_path):
    code = textwrap.dedent("""
        import sys
        import mechanoscope.cells.extract as extract
        original, calls = extract.measure_cells, []
        def planted(*args, **kw):
            calls.append(1)
            if len(calls) == 1:
                raise ZeroDivisionError("planted bug")
            return original(*args, **kw)
        extract.measure_cells = planted
        from mechanoscope.cli.main import main
        main(sys.argv[1:])
    """)
    out = tmp_path / "ext"
    proc = cli("extract", batch / "images", batch / "labels", "--out", out, code=code)
    assert proc.returncode == 1
    failed = _failed(json.loads((out / "extract.json").read_text())["status"])
    assert failed["bigid"]["stage"] == "extract" and "ZeroDivisionError: planted bug" in failed["bigid"]["error"]
    assert set(pd.read_parquet(out / "cells.parquet")["image_id"]) >= set(GOOD[1:])


def test_an_unexpected_error_is_one_line_with_exit_code_3(tmp_path):
    code = textwrap.dedent("""
        import sys
        import mechanoscope.cli.main as m
        def broken(**kw):
            raise KeyError("planted bug outside any verb")
        m.app = broken
        m.main(sys.argv[1:])
    """)
    proc = cli("--version", code=code)
    assert proc.returncode == 3
    assert last_line(proc).startswith("error: KeyError:") and "this is a bug" in last_line(proc)
    assert len([ln for ln in proc.stderr.splitlines() if ln.strip()]) == 1
    debug = cli("--version", code=code, env={"MECHANOSCOPE_DEBUG": "1"})
    assert debug.returncode == 1 and "Traceback" in debug.stderr and "KeyError" in debug.stderr


def test_an_unexpected_error_inside_a_verb_is_one_line_with_exit_code_3(tmp_path):
    images = tmp_path / "images"
    images.mkdir()
    write_image(images / "a.tif", _field(0)[0], pixel_size_um=PX_UM)
    # a bug outside the per-image loop (here: in the record writing) ends the verb cleanly
    code = textwrap.dedent("""
        import sys
        import mechanoscope.io.atomic as atomic
        def broken(obj, path):
            raise AttributeError("planted bug in write_json")
        atomic.write_json = broken
        from mechanoscope.cli.main import main
        main(sys.argv[1:])
    """)
    proc = cli("segment", "run", images, "--method", "classical", "--out", tmp_path / "run", code=code)
    assert proc.returncode == 3, proc.stderr
    assert last_line(proc).startswith("error: AttributeError: planted bug in write_json") and "this is a bug" in last_line(proc)
