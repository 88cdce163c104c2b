"""Model export: ONNX / TorchScript agree with PyTorch, the bioimage.io package validates and
passes bioimageio.core's test offline, predict runs an ONNX file through onnxruntime."""

import json
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pandas as pd
import pytest

from mechanoscope.errors import MechanoscopeError, OutputFolderError
from mechanoscope.io.crop_store import read_crop_store, write_crop_store
from mechanoscope.learn.config import TrainConfig
from mechanoscope.learn.export import (
    EXPORT_TOLERANCE,
    ExportError,
    ensemble_module,
    example_crops,
    export_model,
)
from mechanoscope.learn.predict import load_stiffness_model, predict_cells
from mechanoscope.learn.train import train_model

PX = 32


def _toy_run(folder: Path, n_images: int = 10, per_image: int = 12, seed: int = 0) -> Path:
    """One disk per crop: 'stiff' large flat disks, 'soft' small bright domes; modulus grows with radius."""
    rng = np.random.default_rng(seed)
    yy, xx = np.mgrid[:PX, :PX] - (PX - 1) / 2
    rows, crops = [], []
    for i in range(n_images):
        cls = ["soft", "stiff"][i % 2]
        for j in range(per_image):
            r = rng.uniform(4, 7) if cls == "soft" else rng.uniform(9, 12)
            d = np.hypot(yy + rng.normal(0, 1), xx + rng.normal(0, 1)) / r
            height = np.clip(1 - d**2, 0, None) * (2.0 if cls == "soft" else 0.7)
            crops.append(np.stack([1000 * (1 + 0.3 * height + rng.normal(0, 0.02, d.shape)), d < 1]).astype(np.float32))
            rows.append({"image_id": f"img_{i:02d}", "cell_id": j + 1, "label": cls, "stiffness_pa": 10 ** (1.5 + 0.15 * r),
                         "area_um2": float((d < 1).sum()), "solidity": 1.0, "qc_pass": True})
    table = pd.DataFrame(rows)
    folder.mkdir(parents=True)
    table.to_parquet(folder / "cells.parquet", index=False)
    write_crop_store(folder / "crops.zarr", np.stack(crops), image_ids=table.image_id.to_numpy(), cell_ids=table.cell_id.to_numpy(),
                     crop_size_um=float(PX), crop_pixels=PX, channels=["intensity", "mask"])
    return folder


def _cfg(**kw):
    base = dict(target="label", epochs=1, batch_size=32, width=4, num_threads=1, seed=0, min_cells_per_class=3)
    base.update(kw)
    return TrainConfig.build(**base)


@pytest.fixture(scope="module")
def models(tmp_path_factory):
    root = tmp_path_factory.mktemp("export")
    run = _toy_run(root / "run")
    cls = train_model(run, _cfg(), root / "cls").model_dir
    # ensemble of 2, Gaussian loss (2 outputs), test-time augmentation: everything the graph must carry
    reg = train_model(run, _cfg(target="stiffness_pa", ensemble_size=2, loss="gaussian", tta=True), root / "reg").model_dir
    return {"root": root, "run": run, "cls": cls, "reg": reg}


@pytest.fixture(scope="module")
def package(models):
    """One bioimage.io package of the classifier (holds the ONNX and TorchScript exports)."""
    return export_model(models["cls"], "bioimageio", models["root"] / "pkg", authors=["Test Author"])


def _crops(run: Path):
    store = read_crop_store(run / "crops.zarr")
    return pd.read_parquet(run / "cells.parquet"), store


def test_bioimageio_package_validates_and_passes_core_test_offline(package):
    from bioimageio.spec import load_description
    from bioimageio.spec.common import InvalidDescr

    from mechanoscope.learn._bioimageio_compat import spec_compat

    assert package.validation == {"format": "valid-format", "test": "passed"}
    folder = package.path
    assert {"rdf.yaml", "model.onnx", "model.pt", "test_input.npy", "test_output.npy", "README.md"} <= {p.name for p in folder.iterdir()}
    with spec_compat():  # read back independently of export_model
        descr = load_description(folder / "rdf.yaml", perform_io_checks=True)
    assert not isinstance(descr, InvalidDescr)
    assert descr.format_version.startswith("0.5")
    assert {"onnx", "torchscript"} <= set(descr.weights.model_fields_set)
    x, y = np.load(folder / "test_input.npy"), np.load(folder / "test_output.npy")
    assert x.shape[1:] == (2, PX, PX) and y.shape == (x.shape[0], 1, 2)  # (batch, member, classes)
    readme = (folder / "README.md").read_text()
    assert "## Validation" in readme and "contrast_scale" not in readme and "softmax" in readme


def test_onnx_weights_match_torch_at_any_batch_size(models, package):
    import onnxruntime as ort
    import torch

    model = load_stiffness_model(models["cls"])
    module = ensemble_module(model)
    sess = ort.InferenceSession(str(package.path / "model.onnx"), providers=["CPUExecutionProvider"])
    tol = EXPORT_TOLERANCE["onnx"]
    for b in (1, 5, 70):  # the batch axis is dynamic
        x = example_crops(model.config, model.normalization, n=b, seed=b)
        with torch.inference_mode():
            ref = module(torch.from_numpy(x)).numpy()
        got = sess.run(None, {"crops": x})[0]
        assert got.shape == (b, 1, 2)
        np.testing.assert_allclose(got, ref, atol=tol["atol"], rtol=tol["rtol"])
    assert 0 <= package.max_abs_diff["onnx"] <= tol["atol"]


def test_predict_through_onnxruntime_equals_the_model_folder(models, package):
    table, store = _crops(models["run"])
    kw = dict(channels=store.channels, attrs=dict(store.attrs), batch_size=29)
    ref = predict_cells(load_stiffness_model(models["cls"]), table, store.crops, **kw)
    onnx_model = load_stiffness_model(package.path / "model.onnx")  # dispatches on the suffix
    assert onnx_model.config["runtime"] == "onnxruntime"
    got = predict_cells(onnx_model, table, store.crops, **kw)
    assert (got["pred_label"] == ref["pred_label"]).all()
    np.testing.assert_allclose(got["pred_prob_stiff"], ref["pred_prob_stiff"], atol=1e-5)
    assert got["pred_prob_stiff"].std() > 0  # not a constant


def test_torchscript_carries_ensemble_and_tta_and_matches(models, tmp_path):
    import torch

    from mechanoscope.learn.train import forward_tta

    res = export_model(models["reg"], "torchscript", tmp_path / "reg.pt")
    extra = {"config.json": "", "export.json": ""}
    ts = torch.jit.load(str(res.path), _extra_files=extra)
    assert json.loads(extra["export.json"])["tta_in_graph"] is True
    model = load_stiffness_model(models["reg"])
    x = torch.from_numpy(example_crops(model.config, model.normalization, n=9, seed=3))
    with torch.inference_mode():
        got = ts(x).numpy()
        ref = np.stack([forward_tta(m, x, True).numpy() for m in model.members], 1)  # predict_cells' path
        plain = np.stack([m(x).numpy() for m in model.members], 1)
    assert got.shape == (9, 2, 2)
    np.testing.assert_allclose(got, ref, atol=EXPORT_TOLERANCE["torchscript"]["atol"], rtol=EXPORT_TOLERANCE["torchscript"]["rtol"])
    assert np.abs(got - plain).max() > 1e-6  # the 8 views really are in the graph
    assert np.abs(got[:, 0] - got[:, 1]).max() > 1e-6  # two different members


def test_export_refuses_bad_input(models, tmp_path):
    existing = tmp_path / "m.onnx"
    existing.write_bytes(b"keep me")
    with pytest.raises(OutputFolderError, match="already exists"):
        export_model(models["cls"], "onnx", existing)
    assert existing.read_bytes() == b"keep me"
    with pytest.raises(ExportError, match="unknown export format"):
        export_model(models["cls"], "tflite", tmp_path / "m.tflite")
    feat = train_model(models["run"], _cfg(model_type="features"), tmp_path / "feat").model_dir
    with pytest.raises(ExportError, match="only CNN models"):
        export_model(feat, "torchscript", tmp_path / "f.pt")
    with pytest.raises(MechanoscopeError, match="no mechanoscope metadata|onnxruntime cannot open"):
        load_stiffness_model(existing)


def test_cli_export_torchscript_and_clean_errors(models, tmp_path):
    env = dict(os.environ, COLUMNS="200", NO_COLOR="1")
    cmd = [sys.executable, "-m", "mechanoscope.cli.main", "export"]
    ok = subprocess.run(cmd + [str(models["cls"]), "--format", "torchscript", "--out", str(tmp_path / "m.pt")], capture_output=True, text=True, env=env)
    assert ok.returncode == 0, ok.stderr
    assert (tmp_path / "m.pt").is_file() and "largest difference to PyTorch" in ok.stderr
    again = subprocess.run(cmd + [str(models["cls"]), "--format", "torchscript", "--out", str(tmp_path / "m.pt")], capture_output=True, text=True, env=env)
    assert again.returncode == 2 and "already exists" in again.stderr and "Traceback" not in again.stderr
    missing = subprocess.run(cmd + [str(tmp_path / "nope"), "--format", "onnx", "--out", str(tmp_path / "x.onnx")], capture_output=True, text=True, env=env)
    assert missing.returncode == 2 and "no such model folder" in missing.stderr and "Traceback" not in missing.stderr
