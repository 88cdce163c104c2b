"""process_field (one field of view) and predict IMAGES as a resumable, streaming run."""

from __future__ import annotations

import json
import subprocess
import sys
import textwrap
from pathlib import Path

import numpy as np
import pandas as pd
import pytest

from mechanoscope.io.crop_store import read_crop_store

N_IMAGES = 4


@pytest.fixture(scope="module")
def sim(tmp_path_factory) -> Path:
    from mechanoscope.simulate import AdherentConfig, simulate_adherent

    return simulate_adherent(AdherentConfig(n_images=N_IMAGES, image_shape_px=(128, 128), cells_per_image=4), tmp_path_factory.mktemp("sim") / "sim", seed=3)


@pytest.fixture(scope="module")
def models(tmp_path_factory) -> tuple[Path, Path]:
    """A one-epoch CNN classifier (crops with a mask channel) and a features regressor."""
    from tests.test_learn import _cfg, _toy_run
    from mechanoscope.learn.train import train_model

    root = tmp_path_factory.mktemp("models")
    toy = _toy_run(root / "toy", n_images=12, per_image=6)
    cnn = train_model(toy, _cfg(epochs=1), root / "cnn").model_dir
    feat = train_model(toy, _cfg(target="stiffness_pa", model_type="features"), root / "feat").model_dir
    return cnn, feat


def test_process_field_equals_extract_then_predict(sim, models, tmp_path):
    from mechanoscope.cells.extract import extract_cells
    from mechanoscope.io.images import read_image, read_label_image, write_label_image
    from mechanoscope.learn.predict import load_stiffness_model, predict_cells
    from mechanoscope.pipeline.field import extract_config_for, process_field
    from mechanoscope.segment.batch import build_segmenter, read_plane

    loaded = [load_stiffness_model(m) for m in models]
    segment, _, _ = build_segmenter("classical")
    path = sorted((sim / "images").iterdir())[0]
    res = process_field(read_image(path), image_id=path.stem, segmenter=segment, models=loaded, batch_size=5)
    assert set(res.seconds) == {"segment", "extract", "predict"}
    # the old chain: read a plane, segment, write + read the label image, read the image again, extract, predict
    arr, px = read_plane(path)
    write_label_image(tmp_path / "labels.tif", segment(arr, px), pixel_size_um=px)
    labels = read_label_image(tmp_path / "labels.tif")
    cfg = extract_config_for(loaded)
    table, crops = extract_cells(read_image(path), labels, config=cfg, image_id=path.stem)
    for m in loaded:
        pred = predict_cells(m, table, crops, channels=cfg.crop.channels, attrs={"crop_size_um": cfg.crop.crop_size_um})
        table = table.drop(columns=[c for c in pred.columns if c in table.columns]).join(pred)
    assert len(table) >= 2 and {"pred_label", "pred_prob_soft", "pred_stiffness_pa", "pred_lo_pa", "qc_pass", "area_um2"} <= set(res.table.columns)
    np.testing.assert_array_equal(res.labels, labels.data)
    np.testing.assert_array_equal(res.crops, crops)
    assert res.crops.dtype == np.float32 and res.crops.shape[1] == 2  # the CNN wants a mask channel
    pd.testing.assert_frame_equal(res.table, table, check_exact=False, rtol=1e-5)


def test_process_field_names_the_failing_stage(sim, tmp_path):
    from mechanoscope.io.images import read_image
    from mechanoscope.pipeline.field import FieldError, process_field

    def broken(arr, px):
        raise RuntimeError("planted")

    path = sorted((sim / "images").iterdir())[0]
    with pytest.raises(FieldError) as info:
        process_field(read_image(path), segmenter=broken)
    assert info.value.stage == "segment" and str(path) in str(info.value) and "RuntimeError: planted" in str(info.value)


def test_predict_images_equals_the_folder_to_folder_chain(sim, models, tmp_path):
    """Same cells, crops and predictions as segment → extract → predict RUN (the old path)."""
    from mechanoscope.cells.extract import extract_folder
    from mechanoscope.learn.predict import load_stiffness_model
    from mechanoscope.pipeline import predict_run
    from mechanoscope.pipeline.field import extract_config_for
    from mechanoscope.segment.batch import segment_images

    old = tmp_path / "old"
    segment_images(sim / "images", old)
    extract_folder(sim / "images", old / "labels", old, extract_config_for([load_stiffness_model(m) for m in models]))
    predict_run(old, list(models), old)
    new = tmp_path / "new"
    info = predict_run(sim / "images", list(models), new, batch_size=3)
    a, b = pd.read_parquet(old / "cells.parquet"), pd.read_parquet(new / "cells.parquet")
    assert len(a) > N_IMAGES
    pd.testing.assert_frame_equal(a, b, check_exact=False, rtol=1e-5)
    sa, sb = read_crop_store(old / "crops.zarr"), read_crop_store(new / "crops.zarr")
    np.testing.assert_array_equal(sa.crops[:], sb.crops[:])
    assert list(sa.image_ids) == list(sb.image_ids) and sa.attrs["image_ids"] == sb.attrs["image_ids"]
    for p in sorted((old / "labels").glob("*.tif")):
        assert (new / "labels" / p.name).read_bytes() == p.read_bytes()
    assert info["n_failed"] == 0 and info["complete"] and [e["status"] for e in info["status"]] == ["done"] * N_IMAGES
    assert info["n_cells"] == len(b) and info["crops_per_second"] and len(info["models"]) == 2
    # throughput is cells per second of prediction (both stored rounded: 0.001 s and 0.1 cells/s)
    assert info["crops_per_second"] == pytest.approx(info["n_cells"] / info["prediction_seconds"], rel=0.05, abs=0.1)
    assert all({"read", "segment", "extract", "predict", "write", "total"} <= set(e["seconds"]) for e in info["status"])


def _temporaries(folder: Path) -> list[str]:
    return sorted(str(p.relative_to(folder)) for p in folder.rglob("*") if ".tmp-" in p.name or ".old-" in p.name)


def _same_run(a: Path, b: Path) -> None:
    assert (a / "cells.parquet").read_bytes() == (b / "cells.parquet").read_bytes()
    assert sorted(p.name for p in (a / "labels").iterdir()) == sorted(p.name for p in (b / "labels").iterdir())
    for p in (a / "labels").iterdir():
        assert (b / "labels" / p.name).read_bytes() == p.read_bytes()
    sa, sb = read_crop_store(a / "crops.zarr"), read_crop_store(b / "crops.zarr")
    np.testing.assert_array_equal(sa.crops[:], sb.crops[:])
    assert list(sa.image_ids) == list(sb.image_ids) and list(sa.cell_ids) == list(sb.cell_ids)
    assert not _temporaries(b), _temporaries(b)


@pytest.fixture(scope="module")
def reference(sim, models, tmp_path_factory) -> Path:
    from mechanoscope.pipeline import predict_run

    out = tmp_path_factory.mktemp("ref") / "pred"
    predict_run(sim / "images", [models[1]], out)
    return out


def test_an_interrupted_predict_resumes_to_the_same_run(sim, models, reference, tmp_path):
    from mechanoscope.pipeline import predict_run

    out = tmp_path / "pred"
    calls: list[int] = []

    def stop_after_two(stage, i, n):
        calls.append(i)
        if i == 2:
            raise KeyboardInterrupt

    with pytest.raises(KeyboardInterrupt):
        predict_run(sim / "images", [models[1]], out, progress=stop_after_two)
    record = json.loads((out / "run.json").read_text())["stages"]["predict"]
    assert [e["status"] for e in record["images"].values()] == ["done", "done"] and not record["complete"]
    assert not (out / "cells.parquet").exists() and not _temporaries(out)
    done = []
    info = predict_run(sim / "images", [models[1]], out, progress=lambda stage, i, n: done.append(i))
    assert info["complete"] and info["n_failed"] == 0 and len(info["status"]) == N_IMAGES
    assert info["n_resumed"] == 2  # the two finished images were not redone
    _same_run(reference, out)


# a process killed with SIGKILL (no clean-up of any kind) at three points: right after
# the 2nd image's status is written; half-way through writing the 3rd image's crops
# (its label image already written, a temporary file left); in the middle of the
# consolidation of the crop store (a temporary store left)
KILL = {
    "after_status": """
        from mechanoscope.io.run_folder import RunFolder
        real = RunFolder.mark_done
        def mark_done(self, *a, **k):
            entry = real(self, *a, **k)
            if len(self.done) == 2:
                os.kill(os.getpid(), signal.SIGKILL)
            return entry
        RunFolder.mark_done = mark_done
    """,
    "mid_part": """
        from mechanoscope.io import atomic
        from mechanoscope.io.run_folder import RunFolder
        real = RunFolder.save_crops
        n = [0]
        def save(self, path, arr):
            n[0] += 1
            if n[0] == 3:
                with atomic.atomic_path(path) as tmp:
                    tmp.write_bytes(b"half")
                    os.kill(os.getpid(), signal.SIGKILL)
            real(self, path, arr)
        RunFolder.save_crops = save
    """,
    "mid_consolidation": """
        from mechanoscope.io.crop_store import CropStoreWriter
        real = CropStoreWriter.append
        n = [0]
        def append(self, *a, **k):
            n[0] += 1
            if n[0] == 3:
                os.kill(os.getpid(), signal.SIGKILL)
            real(self, *a, **k)
        CropStoreWriter.append = append
    """,
}


@pytest.mark.parametrize("where", sorted(KILL))
def test_predict_killed_with_sigkill_resumes_to_the_same_run(where, sim, models, reference, tmp_path):
    from mechanoscope.pipeline import predict_run

    out = tmp_path / "pred"
    code = "import os, signal, sys\n" + textwrap.dedent(KILL[where]) + textwrap.dedent(f"""
        from mechanoscope.pipeline import predict_run
        predict_run({str(sim / 'images')!r}, [{str(models[1])!r}], {str(out)!r})
    """)
    proc = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=300)
    assert proc.returncode == -9, proc.stderr
    if where == "mid_part":
        assert _temporaries(out)  # the kill did leave a temporary file behind
    if where == "mid_consolidation":
        assert any(".crops.tmp-" in t for t in _temporaries(out))
    info = predict_run(sim / "images", [models[1]], out)
    assert info["complete"] and info["n_failed"] == 0
    _same_run(reference, out)


def test_a_rerun_with_other_models_is_refused_unless_overwrite(sim, models, reference, tmp_path):
    import shutil

    from mechanoscope.errors import OutputFolderError
    from mechanoscope.pipeline import predict_run

    out = tmp_path / "pred"
    shutil.copytree(reference, out)
    with pytest.raises(OutputFolderError, match="different settings"):
        predict_run(sim / "images", [models[0]], out)
    info = predict_run(sim / "images", [models[0]], out, overwrite=True)
    table = pd.read_parquet(out / "cells.parquet")
    assert "pred_label" in table.columns and "pred_stiffness_pa" not in table.columns  # no stale predictions
    assert info["n_cells"] == len(table)


def test_predict_run_drops_the_predictions_of_models_not_in_this_run(sim, models, tmp_path):
    from mechanoscope.errors import MechanoscopeWarning
    from mechanoscope.pipeline import predict_run

    run = tmp_path / "run"
    predict_run(sim / "images", list(models), run)  # pred_* of the classifier and the regressor
    with pytest.warns(MechanoscopeWarning, match="pred_stiffness_pa"):
        predict_run(run, [models[0]], tmp_path / "cls")
    table = pd.read_parquet(tmp_path / "cls" / "cells.parquet")
    assert "pred_label" in table.columns and not any(c.startswith("pred_stiffness") or c.startswith("pred_lo") for c in table.columns)
