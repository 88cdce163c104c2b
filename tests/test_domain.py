"""Applicability domain: reference written at training, score rising with a controlled shift, old folders."""

import json
import shutil
import warnings

import numpy as np
import pandas as pd
import pytest

from mechanoscope.errors import MechanoscopeError
from mechanoscope.learn.data import load_run
from mechanoscope.learn.domain import (
    NoDomainReferenceWarning,
    crop_statistics,
    domain_columns,
    domain_summary,
    fit_domain_reference,
)
from mechanoscope.learn.predict import load_stiffness_model, predict_cells
from mechanoscope.learn.train import train_model
from tests.test_learn import _cfg, _toy_run


@pytest.fixture(scope="module")
def trained(tmp_path_factory):
    root = tmp_path_factory.mktemp("dom")
    run = _toy_run(root / "run", n_images=20)
    res = train_model(run, _cfg(epochs=3), root / "cls")
    return run, res


def _shifted(crops: np.ndarray, amount: float, kind: str, seed: int = 1) -> np.ndarray:
    c = crops.copy()
    rng = np.random.default_rng(seed)
    if kind == "noise":  # dimmer light: more shot noise relative to the signal
        c[:, 0] *= 1 + amount * rng.standard_normal(c[:, 0].shape)
    else:  # uneven illumination: a ramp across the crop
        ramp = np.linspace(-0.5, 0.5, c.shape[-1])[None, None, :]
        c[:, 0] *= 1 + amount * ramp
    return c


def test_training_writes_a_calibrated_reference(trained):
    run, res = trained
    meta = json.loads((res.model_dir / "domain.json").read_text())
    assert (res.model_dir / "domain.safetensors").is_file()
    assert meta["held_out_splits"] == "val + calibration"
    assert meta["n_reference_cells"] == res.metrics["n_cells"]["train"]
    assert meta["n_held_out_cells"] == res.metrics["n_cells"]["val"] + res.metrics["n_cells"]["calibration"]
    # calibrated at the 95 % quantile of held-out cells: about 5 % of them are flagged
    assert meta["held_out_fraction_flagged"] <= 0.05 + 1e-9
    assert max(meta["held_out_image_median_scores"]) <= meta["image_threshold"]


def test_in_domain_cells_pass_and_score_rises_with_a_controlled_shift(trained):
    run, res = trained
    model = load_stiffness_model(res.model_dir)
    data = load_run(run)
    test = (res.split == "test").to_numpy()
    base = predict_cells(model, data.table, data.crops, channels=data.channels, attrs=data.attrs)
    for col in ("pred_domain_score_label", "pred_in_domain_label", "pred_image_in_domain_label", "pred_in_domain", "pred_image_in_domain"):
        assert col in base.columns
    assert base["pred_in_domain"].to_numpy()[test].mean() >= 0.85  # unseen images imaged alike
    assert base["pred_image_in_domain"].to_numpy()[test].all()
    for kind, amounts in (("noise", [0.01, 0.03, 0.1]), ("ramp", [0.2, 0.5, 1.5])):
        med = [float(base["pred_domain_score_label"][test].median())]
        for a in amounts:
            p = predict_cells(model, data.table, _shifted(data.crops, a, kind), channels=data.channels, attrs=data.attrs)
            med.append(float(p["pred_domain_score_label"][test].median()))
        assert all(b > a for a, b in zip(med, med[1:])), (kind, med)  # monotone in the shift
        assert med[-1] > 2  # a strong shift lies far outside
        assert not p["pred_image_in_domain"].to_numpy()[test].any()
    s = domain_summary(data.table.join(p), [model])
    assert s["models"]["label"]["n_images_out"] == s["models"]["label"]["n_images"]
    assert "look unlike its training images" in s["note"]


def test_a_folder_without_reference_still_predicts_with_a_note(trained, tmp_path):
    run, res = trained
    old = tmp_path / "old"
    shutil.copytree(res.model_dir, old)
    (old / "domain.json").unlink()
    (old / "domain.safetensors").unlink()
    model = load_stiffness_model(old)
    assert model.domain is None
    data = load_run(run)
    with pytest.warns(NoDomainReferenceWarning, match="no domain check was possible"):
        p = predict_cells(model, data.table, data.crops, channels=data.channels, attrs=data.attrs)
    assert "pred_label" in p.columns and not any(c.startswith("pred_domain") for c in p.columns)
    s = domain_summary(data.table.join(p), [model])
    assert s["models"]["label"]["checked"] is False
    assert "no domain check was possible" in s["note"]


def test_mahalanobis_distance_matches_scipy():
    from scipy.spatial.distance import mahalanobis
    from sklearn.covariance import LedoitWolf

    rng = np.random.default_rng(0)
    tr_f, tr_s = rng.normal(size=(200, 5)), rng.normal(size=(200, 3))
    held_f, held_s = rng.normal(size=(60, 5)), rng.normal(size=(60, 3))
    ref = fit_domain_reference(tr_f, tr_s, held_f, held_s, np.repeat(["a", "b", "c"], 20), channels=["intensity"])
    lw = LedoitWolf().fit(tr_f)
    d = ref.distances(held_f, held_s)["features"]
    want = [mahalanobis(v, lw.location_, lw.precision_) for v in held_f]
    np.testing.assert_allclose(d, want, rtol=1e-10)
    s = ref.score(held_f, held_s)
    assert np.mean(s > 1) <= 0.05 + 1e-9 and np.mean(s > 1) >= 0.0
    far = ref.score(held_f + 5, held_s)
    assert (far > 1).all()


def test_too_few_held_out_cells_is_a_clear_error():
    rng = np.random.default_rng(0)
    with pytest.raises(MechanoscopeError, match="calibrate the domain score"):
        fit_domain_reference(rng.normal(size=(50, 4)), rng.normal(size=(50, 2)), rng.normal(size=(5, 4)), rng.normal(size=(5, 2)), np.array(["a"] * 5), channels=["intensity"])


def test_crop_statistics_see_noise_and_slope():
    rng = np.random.default_rng(0)
    yy, xx = np.mgrid[:32, :32]
    mask = (np.hypot(yy - 16, xx - 16) < 6).astype(np.float32)
    quiet = np.stack([rng.normal(0, 0.05, (32, 32)) + 0.5 * mask, mask])[None]
    noisy = np.stack([rng.normal(0, 0.2, (32, 32)) + 0.5 * mask, mask])[None]
    sloped = quiet.copy()
    sloped[0, 0] += 0.02 * (xx - 16)
    sq, sn, ss = (crop_statistics(c, ["intensity", "mask"])[0] for c in (quiet, noisy, sloped))
    assert sq[0] == pytest.approx(0.05, rel=0.25) and sn[0] == pytest.approx(0.2, rel=0.25)
    assert ss[1] == pytest.approx(0.02 * 32, rel=0.1) and sq[1] < 0.1
    assert sq[4] == pytest.approx(0.5, abs=0.05)
    with pytest.raises(MechanoscopeError, match="intensity"):
        crop_statistics(quiet[:, 1:], ["mask"])


def test_combined_flags_need_every_model():
    t = pd.DataFrame({"image_id": ["a", "a", "b"], "pred_in_domain_label": [True, False, True], "pred_image_in_domain_label": [True, True, False]})

    class Ref:
        image_threshold = 1.0

    with warnings.catch_warnings():
        warnings.simplefilter("error")
        out = domain_columns(Ref(), np.array([0.5, 0.9, 3.0]), t, "stiffness_pa")
    assert out["pred_in_domain_stiffness_pa"].tolist() == [True, True, False]
    assert out["pred_in_domain"].tolist() == [True, False, False]
    assert out["pred_image_in_domain_stiffness_pa"].tolist() == [True, True, False]
    assert out["pred_image_in_domain"].tolist() == [True, True, False]


def test_predict_records_the_domain_and_explain_feeds_the_report(trained, tmp_path):
    """predict.json summarises the domain; `mechanoscope explain` (a subprocess) writes what the report shows."""
    import subprocess
    import sys

    from mechanoscope.pipeline.evaluation import evaluate_run
    from mechanoscope.pipeline.predict import predict_run
    from mechanoscope.report import write_report

    run, res = trained
    out = tmp_path / "pred"
    info = predict_run(run, [res.model_dir], out)
    assert info["domain"]["models"]["label"]["checked"] is True
    assert info["domain"]["models"]["label"]["n_images"] == 20
    exe = [sys.executable, "-c", "from mechanoscope.cli.main import main; main()"]
    r = subprocess.run([*exe, "explain", str(out), "--model", str(res.model_dir), "--per-class", "2"], capture_output=True, text=True)
    assert r.returncode == 0, r.stderr
    said = r.stdout + r.stderr
    assert "of the attribution on the cell" in said and "domain:" in said
    exp = json.loads((out / "explain" / "explanation.json").read_text())
    a = exp["attributions"][0]
    assert a["method"] == "integrated_gradients" and a["fraction_on_cell_median"] > a["area_fraction_median"]
    assert (out / "explain" / a["figure"]).is_file() and (out / "explain" / "embedding.png").is_file()
    bad = subprocess.run([*exe, "explain", str(out), "--model", str(res.model_dir), "--method", "saliency"], capture_output=True, text=True)
    assert bad.returncode != 0 and "Traceback" not in bad.stderr + bad.stdout and "choose one of" in bad.stderr + bad.stdout
    html = write_report(out, evaluation=evaluate_run(out)).read_text()
    assert "Applicability domain" in html and "Attribution maps: label" in html and "Embedding map" in html
