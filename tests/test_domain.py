"""Applicability domain: reference written at training, score rising with a controlled shift, image-level
evidence (pixel size, native statistics) with reasons, old folders, intervals marked outside the domain."""

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
    OldDomainReferenceWarning,
    crop_statistics,
    domain_columns,
    domain_summary,
    fit_domain_reference,
    image_median_threshold,
)
from mechanoscope.learn.domain_image import conformal_rank_threshold, fit_image_reference, image_statistics
from mechanoscope.learn.predict import load_stiffness_model, predict_cells
from mechanoscope.learn.train import train_model
from tests.test_learn import _cfg, _toy_run


def _with_native_columns(run, pixel_size_um: float = 0.65):
    """Give the toy table what extract measures on the native image: pixel size and the image median."""
    t = pd.read_parquet(run / "cells.parquet")
    t["pixel_size_um"] = pixel_size_um
    t["crop_pad_value"] = 1000.0
    t.to_parquet(run / "cells.parquet", index=False)
    return run


@pytest.fixture(scope="module")
def trained(tmp_path_factory):
    root = tmp_path_factory.mktemp("dom")
    run = _with_native_columns(_toy_run(root / "run", n_images=16, per_image=12))
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
    """predict.json summarises the domain; `mechanoscope explain` writes what the report shows.

    The working command runs in-process (typer's runner: same app, same output); the bad
    one in a subprocess, which is what shows that no traceback reaches the user.
    """
    import subprocess
    import sys

    from typer.testing import CliRunner

    from mechanoscope.cli.main import app
    from mechanoscope.pipeline.evaluation import evaluate_run
    from mechanoscope.pipeline.predict import predict_run
    from mechanoscope.report import write_report

    run, res = trained
    out = tmp_path / "pred"
    info = predict_run(run, [res.model_dir], out)
    assert info["domain"]["models"]["label"]["checked"] is True
    assert info["domain"]["models"]["label"]["n_images"] == 16
    r = CliRunner().invoke(app, ["explain", str(out), "--model", str(res.model_dir), "--per-class", "1"])
    assert r.exit_code == 0, r.output
    assert "of the attribution on the cell" in r.output and "domain:" in r.output
    exp = json.loads((out / "explain" / "explanation.json").read_text())
    a = exp["attributions"][0]
    assert a["method"] == "integrated_gradients" and a["fraction_on_cell_median"] > a["area_fraction_median"]
    assert (out / "explain" / a["figure"]).is_file() and (out / "explain" / "embedding.png").is_file()
    exe = [sys.executable, "-c", "from mechanoscope.cli.main import main; main()"]
    bad = subprocess.run([*exe, "explain", str(out), "--model", str(res.model_dir), "--method", "saliency"], capture_output=True, text=True)
    assert bad.returncode != 0 and "Traceback" not in bad.stderr + bad.stdout and "choose one of" in bad.stderr + bad.stdout
    html = write_report(out, evaluation=evaluate_run(out)).read_text()
    assert "Applicability domain" in html and "Attribution maps: label" in html and "Embedding map" in html
    assert "why flagged" in html


# --------------------------------------------------------------------------- image level
def _native_table(n_images: int, rng, *, pixel_size_um=0.65, noise=1.0, unevenness=0.05, area=1.0, per_image=12):
    """A cell table as extract writes it (native-image columns), with controllable imaging."""
    rows, bg = [], []
    for i in range(n_images):
        level = 100 * rng.uniform(0.9, 1.1)  # exposure varies from image to image: statistics are relative to it
        for j in range(per_image):
            rows.append({"image_id": f"im{i:03d}", "cell_id": j + 1, "pixel_size_um": pixel_size_um, "crop_pad_value": level,
                         "texture_neighbour_contrast": (level * 0.02 * noise) ** 2 * 2 * rng.uniform(0.8, 1.25),
                         "texture_gradient_mean_per_um": level * 0.05 * rng.uniform(0.8, 1.25), "intensity_std": level * 0.1 * rng.uniform(0.8, 1.25),
                         "intensity_min": level * rng.uniform(0.7, 0.8), "intensity_max": level * rng.uniform(1.2, 1.3), "area_um2": 300 * area * rng.uniform(0.7, 1.4)})
            bg.append(level * (1 + unevenness * rng.uniform(-0.5, 0.5)))
    return pd.DataFrame(rows), np.array(bg)


def test_image_level_reference_flags_pixel_size_and_native_statistics_with_reasons():
    rng = np.random.default_rng(3)
    ref = fit_image_reference(image_statistics(*_native_table(60, rng)))
    assert ref.info["level_guaranteed"] and ref.info["n_reference_images"] == 60
    # fresh images imaged like the reference: the leave-one-out conformal rule keeps false flags near alpha = 3 %
    same = ref.judge(image_statistics(*_native_table(400, rng)))
    assert same["in_domain"].mean() >= 0.93 and (same["reason"] == "").equals(same["in_domain"])
    near = ref.judge(image_statistics(*_native_table(20, rng, pixel_size_um=0.69)))  # 6 % off: within the allowed factor 1.1
    assert not near["reason"].str.contains("pixel size").any()
    for kw, words in (({"pixel_size_um": 0.9}, "pixel size 0.9 µm is 1.38×"), ({"noise": 3.0}, "pixel noise higher than in training"),
                      ({"unevenness": 0.6}, "illumination unevenness higher than in training"), ({"area": 0.3}, "typical cell area lower than in training")):
        j = ref.judge(image_statistics(*_native_table(10, rng, **kw)))
        assert (~j["in_domain"]).all() and j["reason"].str.contains(words, regex=False).all(), (kw, j["reason"].iloc[0])
    # missing native columns are not judged rather than flagged
    t, bg = _native_table(5, rng)
    assert ref.judge(image_statistics(t.drop(columns=["texture_neighbour_contrast", "intensity_min"]), bg))["in_domain"].all()


def test_conformal_rank_and_image_median_threshold_hold_their_level():
    s = np.arange(1.0, 40.0)  # 39 scores: rank ceil(40 * 0.95) = 38
    assert conformal_rank_threshold(s, 0.05) == (38.0, True)
    assert conformal_rank_threshold(np.arange(1.0, 11.0), 0.05) == (10.0, False)
    # prediction bound from 12 held-out images: a 13th image exceeds it about alpha = 1 % of the time
    rng = np.random.default_rng(0)
    med = rng.lognormal(0, 0.3, size=(3000, 13))
    exceed = np.mean([med[k, 12] > image_median_threshold(med[k, :12], 0.01) for k in range(len(med))])
    assert exceed <= 0.02
    assert image_median_threshold(np.array([0.5, 0.6, 0.55, 0.52]), 0.01) >= 0.6


def test_prediction_flags_a_pixel_size_change_and_marks_intervals(trained, tmp_path):
    run, res = trained
    data = load_run(run)
    reg = train_model(run, _cfg(target="stiffness_pa", epochs=2, split_from=str(res.model_dir)), tmp_path / "reg")
    meta = json.loads((reg.model_dir / "domain.json").read_text())
    assert meta["domain_version"] == 2 and meta["image_level"]["pixel_size_range_um"] == [0.65, 0.65]
    model = load_stiffness_model(reg.model_dir)
    table = data.table.copy()
    moved = table["image_id"].isin(["img_00", "img_01"]).to_numpy()
    table.loc[moved, "pixel_size_um"] = 0.9  # the same crops, said to come from a 0.9 µm camera: invisible to the crops
    p = predict_cells(model, table, data.crops, channels=data.channels, attrs=data.attrs)
    assert not p["pred_image_in_domain"][moved].any()
    assert p["pred_image_domain_reason"][moved].str.contains("pixel size 0.9 µm").all()
    assert (p["pred_image_domain_score_stiffness_pa"][moved] > 1).all()
    assert not p["pred_interval_calibrated"][moved].any()
    keep = p["pred_in_domain"] & p["pred_image_in_domain"]
    assert p["pred_interval_calibrated"].equals(keep.rename("pred_interval_calibrated")) and keep[~moved].mean() > 0.7
    assert p[["pred_lo_pa", "pred_hi_pa"]].notna().all().all()  # intervals kept, only marked
    s = domain_summary(table.join(p), [model])
    assert s["intervals"]["n_not_calibrated"] == int((~keep).sum())
    assert "pred_interval_calibrated false" in s["note"] and "pixel size" in s["note"]
    from mechanoscope.report.explanation_section import explanation_section_html

    html = explanation_section_html({"domain": s})
    assert "marked as not calibrated" in html and "pixel size 0.9" in html


def test_old_and_damaged_domain_files(trained, tmp_path):
    run, res = trained
    data = load_run(run)
    old = tmp_path / "v1"
    shutil.copytree(res.model_dir, old)
    meta = json.loads((old / "domain.json").read_text())
    meta.pop("domain_version"), meta.pop("image_level")  # what the first domain reference wrote
    (old / "domain.json").write_text(json.dumps(meta))
    with pytest.warns(OldDomainReferenceWarning, match="retrain"):
        model = load_stiffness_model(old)
    assert model.domain.image_reference is None
    p = predict_cells(model, data.table, data.crops, channels=data.channels, attrs=data.attrs)
    assert p["pred_in_domain"].mean() > 0.7 and "pred_image_domain_reason" in p
    (old / "domain.json").write_text(json.dumps({**meta, "domain_version": 99}))
    with pytest.raises(MechanoscopeError, match="newer mechanoscope"):
        load_stiffness_model(old)
    (old / "domain.json").unlink()
    with pytest.raises(MechanoscopeError, match=r"domain\.json is missing.*delete domain\.safetensors"):
        load_stiffness_model(old)
