"""RunFolder (run.json, resume, temporaries) and kill -9 in the middle of every stage.

The kill tests run the CLI in a subprocess (``python -c`` that plants a pause at one
point of the run and then calls the CLI's ``main``, as tests/test_faults.py does); when
the child reaches that point it writes a marker file and sleeps, and the test kills it
from outside with SIGKILL (no clean-up of any kind). The same command is then run
again (again a subprocess). Its results must equal those of an uninterrupted run:
``cells.parquet``, every label image and every file of ``crops.zarr`` byte for byte
(the outputs hold no time stamps or paths, so equal data give equal bytes), with no
temporary file or folder left behind. ``run.json`` itself differs (timings, command).
"""

from __future__ import annotations

import json
import os
import shutil
import signal
import subprocess
import sys
import textwrap
import time
from pathlib import Path

import numpy as np
import pandas as pd
import pytest

from mechanoscope.errors import MechanoscopeError, OutputFolderError
from mechanoscope.io.run_folder import RunFolder, file_fingerprint, model_identity

N_IMAGES = 3


# ---------------------------------------------------------------------------- RunFolder
def test_an_image_is_finished_only_when_its_status_says_done_and_its_files_exist(tmp_path):
    run = RunFolder.open(tmp_path / "run", "segment", {"a": 1})
    for name in ("x", "y", "z"):
        (run.labels_dir).mkdir(exist_ok=True)
        run.label_path(name).write_bytes(b"labels")
    run.mark_done("x", files=[run.label_path("x")])
    run.mark_done("y", files=[run.label_path("y")])
    run.mark_failed("w", image="w.tif", stage="read", error="w.tif: truncated")
    # z: its label file exists but its status was never written (killed between the two)
    record = json.loads(run.record_path.read_text())
    assert record["schema_version"] == 1 and record["stages"]["segment"]["n_failed"] == 1
    assert record["stages"]["segment"]["images"]["x"]["files"] == ["labels/x.tif"] and not record["stages"]["segment"]["complete"]
    run.label_path("y").unlink()  # a status says done but the file is gone
    (run.labels_dir / ".z.tmp-123.tif").write_bytes(b"half")
    (run.root / ".crops.tmp-123.zarr").mkdir()
    again = RunFolder.open(tmp_path / "run", "segment", {"a": 1})
    assert not (run.labels_dir / ".z.tmp-123.tif").exists() and not (run.root / ".crops.tmp-123.zarr").exists()
    assert [again.finished(i) for i in ("x", "y", "z", "w")] == [True, False, False, False]
    assert again.n_resumed == 1 and list(again.images) == ["x"]


def test_a_changed_input_file_is_redone(tmp_path):
    src = tmp_path / "a.tif"
    src.write_bytes(b"one")
    run = RunFolder.open(tmp_path / "run", "extract", {})
    part = run.part_paths("a")[0]
    part.parent.mkdir(parents=True)
    part.write_bytes(b"rows")
    run.mark_done("a", files=[part], inputs=file_fingerprint([src]))
    assert RunFolder.open(tmp_path / "run", "extract", {}).finished("a", inputs=file_fingerprint([src]))
    src.write_bytes(b"other content")
    assert not RunFolder.open(tmp_path / "run", "extract", {}).finished("a", inputs=file_fingerprint([src]))


def test_other_settings_are_refused_redone_or_overwritten_and_a_failed_run_never_blocks(tmp_path):
    out = tmp_path / "run"
    run = RunFolder.open(out, "segment", {"method": "classical"})
    run.mark_failed("a", image="a.tif", stage="read", error="no pixel size")
    run.save(complete=True)
    # nothing finished: a corrected re-run with other settings simply starts afresh
    run = RunFolder.open(out, "segment", {"method": "classical", "pixel_size_um": 0.5})
    run.label_path("a").parent.mkdir(exist_ok=True)
    run.label_path("a").write_bytes(b"x")
    run.mark_done("a", files=[run.label_path("a")])
    with pytest.raises(OutputFolderError, match=r"different settings \(pixel_size_um: 0.5 → 0.25\).*--overwrite"):
        RunFolder.open(out, "segment", {"method": "classical", "pixel_size_um": 0.25})
    run = RunFolder.open(out, "segment", {"method": "classical", "pixel_size_um": 0.5})
    assert run.finished("a")
    run.save()
    run = RunFolder.open(out, "segment", {"method": "classical", "pixel_size_um": 0.5}, overwrite=True)
    assert not run.finished("a")
    run.mark_done("a", files=[run.label_path("a")])
    # a stage whose results are cheap to remake redoes every image instead of refusing
    assert not RunFolder.open(out, "segment", {"method": "classical", "pixel_size_um": 0.25}, on_other_settings="redo").finished("a")
    # the stages keep their own sections
    RunFolder.open(out, "extract", {"config": 1}).save(complete=True)
    assert set(json.loads((out / "run.json").read_text())["stages"]) == {"segment", "extract"}


def test_outputs_no_run_recorded_are_refused(tmp_path):
    out = tmp_path / "run"
    (out / "labels").mkdir(parents=True)
    (out / "labels" / "a.tif").write_bytes(b"x")
    with pytest.raises(OutputFolderError, match="no segment run of this folder recorded"):
        RunFolder.open(out, "segment", {}, foreign_outputs=lambda root: any((root / "labels").iterdir()))
    RunFolder.open(out, "segment", {}, foreign_outputs=lambda root: True, overwrite=True).save()


def test_a_broken_or_newer_record_is_a_clear_error(tmp_path):
    out = tmp_path / "run"
    out.mkdir()
    (out / "run.json").write_text("{not json")
    with pytest.raises(MechanoscopeError, match="run.json: could not be read.*--overwrite"):
        RunFolder.open(out, "segment", {})
    RunFolder.open(out, "segment", {}, overwrite=True).save()
    (out / "run.json").write_text(json.dumps({"schema_version": 99, "stages": {}}))
    with pytest.raises(MechanoscopeError, match="newer mechanoscope"):
        RunFolder.open(out, "segment", {})


def test_model_identity_changes_when_the_model_is_retrained_in_place(tmp_path):
    folder = tmp_path / "model"
    folder.mkdir()
    (folder / "config.json").write_text(json.dumps({"schema_version": 3, "task": "classification"}))
    (folder / "weights.safetensors").write_bytes(b"\x00" * 64)
    first = model_identity(folder)
    assert first["path"] == str(folder.resolve()) and first["schema_version"] == 3 and len(first["sha256"]) == 64
    (folder / "weights.safetensors").write_bytes(b"\x01" * 64)
    assert model_identity(folder)["sha256"] != first["sha256"]


def test_evaluation_never_scores_predictions_of_models_not_in_the_run(tmp_path):
    from mechanoscope.pipeline.evaluation import evaluate_run

    run = RunFolder.open(tmp_path / "run", "predict", {})
    p = np.linspace(0.05, 0.95, 20)
    pd.DataFrame({
        "image_id": "a", "cell_id": np.arange(20), "qc_pass": True, "label": np.where(p > 0.5, "stiff", "soft"), "stiffness_pa": 1000.0,
        "pred_prob_soft": 1 - p, "pred_prob_stiff": p, "pred_label": np.where(p > 0.5, "stiff", "soft"), "pred_stiffness_pa": 5.0e3,
    }).to_parquet(run.cells_path, index=False)
    run.save(complete=False, columns=["pred_prob_soft", "pred_prob_stiff", "pred_label"])
    with pytest.raises(MechanoscopeError, match="did not finish.*resumes"):
        evaluate_run(run.root, figures=False)
    run.save(complete=True, columns=["pred_prob_soft", "pred_prob_stiff", "pred_label"])
    ev = evaluate_run(run.root, figures=False)
    assert ev["tasks"] == ["classification"] and ev["regression"] is None  # pred_stiffness_pa of another model: not scored
    assert any("pred_stiffness_pa" in n and "not scored" in n for n in ev["notes"])


# ---------------------------------------------------------------------------- kill -9
@pytest.fixture(scope="module")
def sim(tmp_path_factory) -> Path:
    from mechanoscope.simulate import AdherentConfig, simulate_adherent

    return simulate_adherent(AdherentConfig(n_images=N_IMAGES, image_shape_px=(128, 128), cells_per_image=4), tmp_path_factory.mktemp("sim") / "sim", seed=3)


@pytest.fixture(scope="module")
def model(tmp_path_factory) -> Path:
    from threadpoolctl import threadpool_limits

    from tests.test_faults import _features_model

    with threadpool_limits(1):
        return _features_model(tmp_path_factory.mktemp("model"))


@pytest.fixture(scope="module")
def reference(sim, model, tmp_path_factory) -> dict[str, Path]:
    """Uninterrupted runs of the same commands (in this process, through typer's test runner)."""
    from typer.testing import CliRunner

    from mechanoscope.cli.main import app

    root = tmp_path_factory.mktemp("reference")
    refs = {"segment": root / "seg", "extract": root / "ext", "predict_run": root / "pred_run", "predict_images": root / "pred_images"}
    for point, out in refs.items():
        if point == "predict_run":
            shutil.copytree(refs["extract"], out)
        result = CliRunner().invoke(app, _args(point, sim, model, out))
        assert result.exit_code == 0, result.output
    return refs


# where each kill lands: the child writes MARKER and sleeps there until it is killed
_PAUSE = """
    def pause():
        open(os.environ["KILL_MARKER"], "w").close()
        time.sleep(600)
"""

def _kill_in_label_write(k: int) -> str:
    """Child code: pause (to be killed) half-way through writing the k-th label image."""
    return f"""
        import mechanoscope.io.images as images
        from mechanoscope.io import atomic
        real, n = images.write_label_image, [0]
        def write_label_image(path, *a, **k):
            n[0] += 1
            if n[0] == {k}:
                with atomic.atomic_path(path) as tmp:
                    tmp.write_bytes(b"half a label image")
                    pause()
            return real(path, *a, **k)
        images.write_label_image = write_label_image
    """


POINTS = {
    # segment: half-way through writing the 3rd label image (2 done, a temporary file left)
    "segment": (_kill_in_label_write(3), ["labels/.img_0002.tmp-"]),
    # segment: half-way through writing the 1st label image (only a temporary file in labels/, nothing done)
    "segment_first_image": (_kill_in_label_write(1), ["labels/.img_0000.tmp-"]),
    # extract: after the 2nd image's status is written (the 3rd not started)
    "extract_mid_images": ("""
        from mechanoscope.io.run_folder import RunFolder
        real = RunFolder.mark_done
        def mark_done(self, *a, **k):
            entry = real(self, *a, **k)
            if len(self.done) == 2:
                pause()
            return entry
        RunFolder.mark_done = mark_done
    """, []),
    # extract: in the middle of the consolidation of the crop store (the orphan .crops.tmp-*.zarr)
    "extract_mid_consolidation": ("""
        from mechanoscope.io.crop_store import CropStoreWriter
        real, n = CropStoreWriter.append, [0]
        def append(self, *a, **k):
            n[0] += 1
            if n[0] == 2:
                pause()
            return real(self, *a, **k)
        CropStoreWriter.append = append
    """, [".crops.tmp-"]),
    # predict RUN: half-way through rewriting cells.parquet with the predictions
    "predict_run": ("""
        import mechanoscope.io as io
        from mechanoscope.io import atomic
        real = io.write_table
        def write_table(table, path, *a, **k):
            if str(path).endswith("cells.parquet"):
                with atomic.atomic_path(path) as tmp:
                    tmp.write_bytes(b"PAR1 half")
                    pause()
            return real(table, path, *a, **k)
        io.write_table = write_table
    """, [".cells.tmp-"]),
    # a whole run (predict IMAGES: segment, extract, predict per field): after the 2nd field's status
    "predict_images": ("""
        from mechanoscope.io.run_folder import RunFolder
        real = RunFolder.mark_done
        def mark_done(self, *a, **k):
            entry = real(self, *a, **k)
            if len(self.done) == 2:
                pause()
            return entry
        RunFolder.mark_done = mark_done
    """, []),
}


def _args(point: str, sim: Path, model: Path, out: Path) -> list[str]:
    if point.startswith("segment"):
        return ["segment", "run", str(sim / "images"), "--out", str(out)]
    if point.startswith("extract"):
        return ["extract", str(sim / "images"), str(sim / "labels"), "--out", str(out)]
    if point == "predict_run":
        return ["predict", str(out), "--model", str(model), "--out", str(out)]
    return ["predict", str(sim / "images"), "--model", str(model), "--out", str(out)]


def _env() -> dict[str, str]:
    env = {**os.environ, "COLUMNS": "300", "NO_COLOR": "1", "OMP_NUM_THREADS": "1"}
    env.pop("MECHANOSCOPE_DEBUG", None)
    return env


def _temporaries(folder: Path) -> list[str]:
    return sorted(str(p.relative_to(folder)) for p in folder.rglob("*") if ".tmp-" in p.name or ".old-" in p.name)


def _files(folder: Path) -> dict[str, bytes]:
    return {str(p.relative_to(folder)): p.read_bytes() for p in sorted(folder.rglob("*")) if p.is_file()}


def _assert_same_results(ref: Path, out: Path) -> None:
    if (ref / "cells.parquet").exists():
        assert (out / "cells.parquet").read_bytes() == (ref / "cells.parquet").read_bytes()
    for sub in ("labels", "crops.zarr"):
        if (ref / sub).exists():
            a, b = _files(ref / sub), _files(out / sub)
            assert sorted(a) == sorted(b), sub
            assert all(a[k] == b[k] for k in a), [k for k in a if a[k] != b[k]]
    assert not _temporaries(out), _temporaries(out)


@pytest.mark.parametrize("point", sorted(POINTS))
def test_kill_9_in_the_middle_then_the_same_command_gives_the_same_run(point, sim, model, reference, tmp_path):
    code, left = POINTS[point]
    out = tmp_path / "out"
    ref = reference["predict_run" if point == "predict_run" else "extract" if point.startswith("extract") else "segment" if point.startswith("segment") else point]
    if point == "predict_run":  # predict RUN into the run folder extract made
        shutil.copytree(reference["extract"], out)
    marker = tmp_path / "marker"
    script = "import os, sys, time\n" + textwrap.dedent(_PAUSE) + textwrap.dedent(code) + "from mechanoscope.cli.main import main\nmain(sys.argv[1:])\n"
    args = _args(point, sim, model, out)
    proc = subprocess.Popen([sys.executable, "-c", script, *args], env={**_env(), "KILL_MARKER": str(marker)},
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    t0 = time.monotonic()
    while not marker.exists():
        if proc.poll() is not None:
            pytest.fail(f"the run ended before the kill point ({proc.returncode}): {proc.stderr.read()}")
        if time.monotonic() - t0 > 240:
            proc.kill()
            pytest.fail("the kill point was not reached within 240 s")
        time.sleep(0.05)
    os.kill(proc.pid, signal.SIGKILL)
    assert proc.wait(timeout=30) == -signal.SIGKILL
    proc.stdout.close()
    proc.stderr.close()
    for prefix in left:  # the kill did leave its temporary behind
        assert any(t.startswith(prefix) for t in _temporaries(out)), (prefix, _temporaries(out))
    if point == "predict_run":  # the table was never half-written: still extract's
        assert (out / "cells.parquet").read_bytes() == (reference["extract"] / "cells.parquet").read_bytes()
    # the same command again, in this process (typer's runner, as the reference runs were: a fresh interpreter per
    # rerun cost ~3 s each and adds nothing the killed child did not already exercise)
    from typer.testing import CliRunner

    from mechanoscope.cli.main import app

    result = CliRunner().invoke(app, args, env={"COLUMNS": "300", "NO_COLOR": "1"})
    assert result.exit_code == 0, result.output
    assert "Traceback" not in result.output
    _assert_same_results(ref, out)
    record = json.loads((out / "run.json").read_text())
    stage = "segment" if point.startswith("segment") else "extract" if point.startswith("extract") else "predict"
    section = record["stages"][stage]
    assert section["complete"] and section["n_failed"] == 0
    if point != "predict_run":
        assert len(section["images"]) == N_IMAGES and all(e["status"] == "done" for e in section["images"].values())
    if point in ("extract_mid_images", "predict_images"):  # the two finished fields were not redone
        assert json.loads((out / ("extract.json" if stage == "extract" else "predict.json")).read_text())["n_resumed"] == 2
    if point == "extract_mid_consolidation":
        assert json.loads((out / "extract.json").read_text())["n_resumed"] == N_IMAGES
    if point == "segment":
        assert "2 already done" in " ".join(result.output.split())


def test_a_failed_predict_never_blocks_its_corrected_rerun(sim, model, tmp_path):
    import tifffile
    from typer.testing import CliRunner

    from mechanoscope.cli.main import app

    images = tmp_path / "images"
    images.mkdir()
    for p in sorted((sim / "images").iterdir())[:2]:  # the same pixels without a pixel size
        tifffile.imwrite(images / f"{p.stem}.tif", tifffile.imread(p))
    out = tmp_path / "pred"
    first = CliRunner().invoke(app, ["predict", str(images), "--model", str(model), "--out", str(out)])
    assert first.exit_code == 1 and "no image could be processed" in " ".join(first.output.split())
    section = json.loads((out / "run.json").read_text())["stages"]["predict"]
    assert [e["stage"] for e in section["images"].values()] == ["segment: read"] * 2 and not section["complete"]
    second = CliRunner().invoke(app, ["predict", str(images), "--model", str(model), "--out", str(out), "--pixel-size-um", "0.65"])
    assert second.exit_code == 0, second.output
    section = json.loads((out / "run.json").read_text())["stages"]["predict"]
    assert section["complete"] and [e["status"] for e in section["images"].values()] == ["done"] * 2
    assert section["settings"]["pixel_size_um"] == 0.65 and section["models"][0]["sha256"] == model_identity(model)["sha256"]
    # --overwrite redoes every image; another model into the same folder is refused without it
    third = CliRunner().invoke(app, ["predict", str(images), "--model", str(model), "--out", str(out), "--pixel-size-um", "0.6"])
    assert third.exit_code == 2 and "different settings" in " ".join(third.output.split()) and "--overwrite" in third.output
    fourth = CliRunner().invoke(app, ["predict", str(images), "--model", str(model), "--out", str(out), "--pixel-size-um", "0.6", "--overwrite"])
    assert fourth.exit_code == 0, fourth.output
    assert json.loads((out / "predict.json").read_text())["n_resumed"] == 0
