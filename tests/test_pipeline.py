"""End-to-end: simulate → segment → extract → truth → train → predict → evaluate → report."""

import json

import numpy as np
import pandas as pd
import pytest
from typer.testing import CliRunner

from mechanoscope.cells.extract import ExtractConfig, extract_folder
from mechanoscope.cli.main import app
from mechanoscope.errors import ConfigError, MechanoscopeWarning, OutputFolderError
from mechanoscope.pipeline import attach_simulation_truth
from mechanoscope.segment.batch import segment_images
from mechanoscope.simulate import AdherentConfig, simulate_adherent

runner = CliRunner()


def test_chain_on_simulated_images(tmp_path):
    sim = simulate_adherent(AdherentConfig(n_images=16, image_shape_px=(256, 256), cells_per_image=6, afm_fraction=1.0), tmp_path / "sim", seed=4)
    run = tmp_path / "run"
    seg = segment_images(sim / "images", run)
    assert len(seg.labels) == 16 and not seg.errors and seg.n_done == 16
    record = json.loads((run / "segment.json").read_text())
    assert record["settings"]["method"] == "builtin" and all(v["status"] == "done" for v in record["images"].values())  # the default
    again = segment_images(sim / "images", run)  # re-running resumes: nothing redone
    assert again.n_done == 0 and again.n_skipped == 16
    extract_folder(sim / "images", run / "labels", run, ExtractConfig.build(crop={"crop_size_um": 64.0, "crop_pixels": 32}))
    cells = attach_simulation_truth(run, sim)
    assert set(cells.condition) == {"soft", "stiff"}
    # most segmented cells overlap a true cell well, and their truth is the simulated modulus
    assert (cells.truth_iou >= 0.5).mean() > 0.5
    truth = pd.read_parquet(sim / "cells.parquet")
    ok = cells[cells.truth_cell_id > 0].iloc[0]
    assert ok.stiffness_pa == truth[(truth.image_id == ok.image_id) & (truth.cell_id == ok.truth_cell_id)].stiffness_pa.iloc[0]
    # AFM points (one per whole true cell, at its centroid ± 0.5 µm) are attached by position to the
    # segmented cell under them, and every segmented cell with a true match (IoU >= 0.5) and one
    # AFM point under it carries exactly the AFM value of ITS true cell.
    afm = pd.read_parquet(sim / "afm.parquet")
    measured = cells[cells.afm_stiffness_pa.notna()]
    assert len(measured) >= 35 and (measured.afm_n_measurements >= 1).all()
    assert (cells.loc[cells.afm_stiffness_pa.isna(), "afm_n_measurements"] == 0).all()
    with_truth = measured[measured.truth_cell_id > 0]
    assert len(with_truth) >= 25
    own = with_truth.merge(afm, left_on=["image_id", "truth_cell_id"], right_on=["image_id", "truth_cell_id"], how="left")
    assert len(own) == len(with_truth) and own.measured_stiffness_pa.notna().all()
    # a segmented cell that also covers a neighbour's AFM point (two cells merged, IoU >= 0.5 with
    # one of them) carries the geometric mean of both: 1 of 29 with the built-in model on this seed
    single = own[own.afm_n_measurements == 1]
    assert len(single) >= 0.85 * len(own)
    np.testing.assert_allclose(single.afm_stiffness_pa, single.measured_stiffness_pa, rtol=1e-9)
    for _, c in own[own.afm_n_measurements > 1].iterrows():  # the own value is one of the averaged ones
        pts = afm[(afm.image_id == c.image_id)].measured_stiffness_pa
        assert pts.min() <= c.afm_stiffness_pa <= pts.max() and c.afm_stiffness_pa != c.measured_stiffness_pa

    r = runner.invoke(app, ["train", str(run), "--target", "label", "--out", str(tmp_path / "cls"), "--epochs", "1", "--batch-size", "32"])
    assert r.exit_code == 0, r.output
    assert "held-out test metrics" in r.output
    r = runner.invoke(app, ["train", str(run), "--target", "afm_stiffness_pa", "--model-type", "features", "--out", str(tmp_path / "reg"), "--split-from", str(tmp_path / "cls"), "--interval-level", "0.8"])
    assert r.exit_code == 0, r.output
    split_c = json.loads((tmp_path / "cls" / "split.json").read_text())["groups"]
    split_r = json.loads((tmp_path / "reg" / "split.json").read_text())["groups"]
    assert set(split_r["test"]) <= set(split_c["test"])  # shared held-out images

    r = runner.invoke(app, ["predict", str(sim / "images"), "--model", str(tmp_path / "cls"), "--model", str(tmp_path / "reg"), "--out", str(tmp_path / "pred")])
    assert r.exit_code == 0, r.output
    pred = pd.read_parquet(tmp_path / "pred" / "cells.parquet")
    assert {"pred_label", "pred_prob_soft", "pred_prob_stiff", "pred_stiffness_pa", "pred_lo_pa", "pred_hi_pa", "split"} <= set(pred.columns)
    info = json.loads((tmp_path / "pred" / "predict.json").read_text())
    assert info["n_cells"] == len(pred) and info["interval_level"] == 0.8 and len(info["models"]) == 2
    # images the classifier trained on are marked, so evaluation uses held-out cells only
    assert set(pred.loc[pred.image_id.isin(split_c["train"]), "split"]) == {"train"}

    r = runner.invoke(app, ["report", str(tmp_path / "pred")])
    assert r.exit_code == 0, r.output
    html = (tmp_path / "pred" / "report.html").read_text()
    assert html.lstrip().lower().startswith("<!doctype html") and "</html>" in html
    assert "data:image/png;base64," in html  # figures embedded
    # the training folder holds no predictions: report refuses it, says what to do, writes nothing
    r = runner.invoke(app, ["report", str(run)])
    assert r.exit_code == 2 and "mechanoscope predict" in r.output
    assert not (run / "report.html").exists()


def test_predict_on_an_empty_image_writes_an_empty_table(tmp_path):
    from mechanoscope.io import write_image
    from tests.test_learn import _cfg, _toy_run
    from mechanoscope.learn.train import train_model

    toy = _toy_run(tmp_path / "toy", n_images=12, per_image=6)
    train_model(toy, _cfg(model_type="features"), tmp_path / "feat")
    rng = np.random.default_rng(0)
    (tmp_path / "imgs").mkdir()
    write_image(tmp_path / "imgs" / "blank.tif", (1000 + rng.normal(0, 5, (128, 128))).astype(np.uint16), pixel_size_um=0.65)
    r = runner.invoke(app, ["predict", str(tmp_path / "imgs"), "--model", str(tmp_path / "feat"), "--out", str(tmp_path / "pred")])
    assert r.exit_code == 0, r.output
    assert "no cell was found" in r.output
    assert len(pd.read_parquet(tmp_path / "pred" / "cells.parquet")) == 0


def test_segment_images_skips_a_bad_file_and_names_labels_by_stem(tmp_path):
    sim = simulate_adherent(AdherentConfig(n_images=2, image_shape_px=(128, 128), cells_per_image=3), tmp_path / "sim", seed=1)
    src = tmp_path / "src"
    src.mkdir()
    first, second = sorted((sim / "images").iterdir())
    (src / "a.ome.tif").write_bytes(first.read_bytes())
    (src / "b.tif").write_bytes(second.read_bytes()[:300])  # truncated file
    with pytest.warns(MechanoscopeWarning, match="b.tif"):
        seg = segment_images(src, tmp_path / "run")
    assert [p.name for p in seg.labels] == ["a.ome.tif"]  # the stem "a.ome", as `extract` pairs them
    assert len(seg.errors) == 1 and "b.tif" in seg.errors[0]["file"]
    record = json.loads((tmp_path / "run" / "segment.json").read_text())
    assert record["images"]["b"]["status"] == "failed" and record["images"]["a.ome"]["status"] == "done"
    with pytest.raises(OutputFolderError, match="different settings"):
        segment_images(src, tmp_path / "run", settings={"min_cell_area_um2": 100.0})
    with pytest.raises(ConfigError, match="unknown parameter"):
        segment_images(src, tmp_path / "other", settings={"no_such_setting": 1})
