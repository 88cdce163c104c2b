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
    DomainReference,
    NoDomainReferenceWarning,
    OldDomainReferenceWarning,
    crop_statistics,
    domain_columns,
    domain_summary,
    fit_domain_reference,
    holm_reject,
    image_median_p_value,
    image_median_threshold,
)
from mechanoscope.learn.domain_image import conformal_p_values, conformal_rank_threshold, fit_image_reference, image_statistics
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
    assert meta["held_out_splits"] == "val + calibration + test"
    assert meta["n_reference_cells"] == res.metrics["n_cells"]["train"]
    assert meta["n_held_out_cells"] == res.metrics["n_cells"]["val"] + res.metrics["n_cells"]["calibration"] + res.metrics["n_cells"]["test"]
    # calibrated at the 95 % quantile of held-out cells: about 5 % of them are flagged
    assert meta["held_out_fraction_flagged"] <= 0.05 + 1e-9
    # the images' medians are calibrated on every cell of the held-out images, as prediction computes them
    assert meta["image_medians_of"] == "every cell of the held-out images" and meta["image_alpha"] == 0.05
    held_images = res.split.isin(["val", "calibration", "test"]).groupby(pd.read_parquet(run / "cells.parquet")["image_id"]).any()
    assert meta["n_held_out_images"] == len(meta["held_out_image_median_scores"]) == int(held_images.sum())
    assert meta["image_confidence"] == 0.9
    assert meta["image_threshold"] == pytest.approx(image_median_threshold(np.array(meta["held_out_image_median_scores"]), 0.05 / 2, 0.9))


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


def _ref(medians, image_reference=None, alpha=0.05) -> DomainReference:
    """A reference with only its image-level calibration (the cell-level parts are not used by domain_columns)."""
    ref = DomainReference({}, {}, {}, 1.0, 1.0, ["intensity"], image_reference=image_reference, image_medians=np.asarray(medians, float), image_alpha=alpha)
    ref.image_threshold = image_median_threshold(ref.image_medians, alpha / ref.n_image_criteria, ref.image_confidence)
    return ref


def test_combined_flags_need_every_model():
    t = pd.DataFrame({"image_id": ["a", "a", "b", "b"]})
    ref = _ref(np.exp(np.random.default_rng(0).normal(0, 0.1, 40)))  # held-out medians about 1, sd 0.1 on the log
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        first = domain_columns(ref, np.array([0.5, 0.9, 3.0, 3.0]), t, "stiffness_pa")  # image b: median 3, far above
    assert first["pred_in_domain_stiffness_pa"].tolist() == [True, True, False, False]
    assert first["pred_image_in_domain_stiffness_pa"].tolist() == [True, True, False, False]
    assert first["pred_image_domain_reason"].iloc[2].startswith("median crop domain score 3.00, p = ")
    t2 = t.join(first)
    second = domain_columns(ref, np.array([1.0, 3.0, 0.5, 0.5]), t2, "label")  # this model keeps b's cells but flags a (median 2)
    assert second["pred_in_domain"].tolist() == [True, False, False, False]
    assert second["pred_image_in_domain_label"].tolist() == [False, False, True, True]
    assert second["pred_image_in_domain"].tolist() == [False, False, False, False]
    both = t2.drop(columns=[c for c in second if c in t2]).join(second)
    # the run's p-value is Bonferroni over the two models' crop criteria
    p_a = min(both.loc[0, "pred_image_domain_p_crop_label"], both.loc[0, "pred_image_domain_p_crop_stiffness_pa"])
    assert both.loc[0, "pred_image_domain_p"] == pytest.approx(min(1.0, 2 * p_a))
    summ = domain_summary(both)
    assert summ["run"]["n_images_out"] == 2 and summ["run"]["image_alpha"] == 0.05
    assert "over all models 2 of 2 images are flagged (nominally at most 5 %" in summ["note"]
    from mechanoscope.report.explanation_section import domain_sentences

    assert any(x.startswith("Over all models, 2 of 2 images are flagged") for x in domain_sentences(summ))
    # a median just above one model's own threshold (p between alpha/2 and alpha) is flagged by it, not by the run of two models
    m = image_median_threshold(ref.image_medians, 0.03, 0.9)
    p = image_median_p_value(ref.image_medians, np.array([m]), 0.9)[0]
    assert 0.025 < p < 0.05
    alone = domain_columns(ref, np.full(4, m), t, "label")
    assert not alone["pred_image_in_domain_label"].any() and not alone["pred_image_in_domain"].any()
    two = domain_columns(ref, np.full(4, m), t.join(domain_columns(ref, np.full(4, 0.9), t, "stiffness_pa")), "label")
    assert not two["pred_image_in_domain_label"].any() and two["pred_image_in_domain"].all()


def _holm_reference(p: np.ndarray, alpha: float) -> np.ndarray:
    """Holm (1979) as written: sort, step down, stop at the first p above alpha / (K - rank)."""
    order, out = np.argsort(p), np.zeros(len(p), bool)
    for rank, i in enumerate(order):
        if p[i] > alpha / (len(p) - rank):
            break
        out[i] = True
    return out


def test_holm_matches_the_textbook_procedure():
    rng = np.random.default_rng(1)
    p = rng.uniform(0, 0.08, size=(300, 4)) ** rng.uniform(0.5, 2, size=(300, 1))
    got = holm_reject(p, 0.05)
    np.testing.assert_array_equal(got, np.array([_holm_reference(row, 0.05) for row in p]))
    assert got.any(1).sum() == (p.min(1) <= 0.05 / 4).sum()  # a rejection exactly when Bonferroni's global test rejects
    assert 0 < got.sum(1).max() and (got.sum(1) >= 2).any()  # the step-down rejects more than Bonferroni would
    assert holm_reject(np.array([[0.02, np.nan]]), 0.05).tolist() == [[True, False]]  # NaN: not tested, not counted


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
    assert ref.info["level_reachable"] and ref.info["n_reference_images"] == 60 and ref.info["smallest_p_value"] == pytest.approx(1 / 61)
    # fresh images imaged like the reference: the conformal p-value keeps false flags near alpha = 5 %
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


def test_conformal_rank_and_image_p_values_hold_their_level():
    s = np.arange(1.0, 40.0)  # 39 scores: rank ceil(40 * 0.95) = 38
    assert conformal_rank_threshold(s, 0.05) == (38.0, True)
    assert conformal_rank_threshold(np.arange(1.0, 11.0), 0.05) == (10.0, False)
    np.testing.assert_allclose(conformal_p_values(np.arange(1.0, 10.0), np.array([0.5, 5.0, 9.0, 9.5, np.nan])), [1.0, 0.6, 0.2, 0.1, 1.0])
    rng = np.random.default_rng(0)
    # 4000 calibrations of 28 held-out images each, one fresh image each: P(p <= a) ~ a (exact for log-normal medians)
    med = rng.lognormal(0, 0.3, size=(4000, 29))
    p_t = np.array([image_median_p_value(m[:28], m[28:])[0] for m in med])
    loo = rng.gamma(3.0, size=(4000, 61))
    p_c = np.array([conformal_p_values(v[:60], v[60:])[0] for v in loo])
    for a in (0.01, 0.05, 0.2):
        assert abs(np.mean(p_t <= a) - a) < 3 * np.sqrt(a * (1 - a) / 4000) + 1e-3, (a, np.mean(p_t <= a))
        assert np.mean(p_c <= a) <= a + 3 * np.sqrt(a * (1 - a) / 4000)
        assert np.mean(p_c <= a) >= a - 0.02  # not merely conservative
    # the threshold is where the p-value equals its level
    m = med[0, :28]
    for conf in (None, 0.9):
        assert image_median_p_value(m, np.array([image_median_threshold(m, 0.01, conf)]), conf)[0] == pytest.approx(0.01, rel=1e-6)
    # one reference set at a time: the realised false-flag rate of a level-a test (known normal truth, sd 0.3 on the log)
    from scipy.stats import norm

    def realised(conf):
        thr = np.log([image_median_threshold(row[:28], 0.02, conf) for row in med[:2000]])
        return norm.sf(thr / 0.3)

    marginal, conditional = realised(None), realised(0.9)
    assert abs(marginal.mean() - 0.02) < 0.002  # the prediction bound is right on average ...
    assert np.mean(marginal > 0.02) > 0.35  # ... but exceeds its level for many a reference set
    assert abs(np.mean(conditional > 0.02) - 0.10) < 0.03  # the tolerance limit: at most 1 - confidence of them


def test_run_false_flag_rate_is_within_nominal_on_simulated_images():
    """Two models' crop criteria (correlated) and their shared image criterion, calibrated on
    simulated training experiments: fresh images acquired alike are flagged at no more than
    the nominal 5 % by the run (Holm over three criteria), not at the sum of three levels;
    a controlled shift raises the image score and is flagged."""
    rng = np.random.default_rng(7)
    flagged, n_img, scores = 0, 0, {0.0: [], 0.5: [], 1.5: []}
    for _ in range(40):
        img_ref = fit_image_reference(image_statistics(*_native_table(60, rng)))
        lvl = lambda n: rng.normal(0, 0.25, n)  # noqa: E731  image-to-image level of the crop scores (log), shared by both models
        def cells(level, shift=0.0):
            per = np.repeat(level, 12)
            return np.exp(per[:, None] + shift + rng.normal(0, [0.4, 0.4], size=(len(per), 2)) + rng.normal(0, 0.1, (len(per), 1)))
        held = cells(lvl(28))
        ids = np.repeat(np.arange(28), 12)
        refs = [_ref(pd.Series(held[:, k]).groupby(ids).median().to_numpy(), img_ref) for k in range(2)]
        for shift in scores:
            t, bg = _native_table(30, rng, noise=1.0 + shift)
            sc = cells(lvl(30), shift)
            judged = img_ref.judge(image_statistics(t, bg))
            out = t[["image_id"]]
            for k, target in enumerate(("label", "stiffness_pa")):  # as predict_run joins the models' columns
                new = domain_columns(refs[k], sc[:, k], out, target, image_judgement=judged)
                out = out.drop(columns=[c for c in new if c in out]).join(new)
            img = out.groupby("image_id").first()
            scores[shift].append(-np.log10(img["pred_image_domain_p"].to_numpy()))
            if shift == 0.0:
                flagged += int((~img["pred_image_in_domain"]).sum())
                n_img += len(img)
    rate = flagged / n_img
    # at most the nominal 5 % (measured 2.8 % of 1200: the crop criteria's tolerance limits are conservative and the
    # criteria correlated), far from the 15 % the three levels OR-ed would allow, and not trivially 0
    assert 0.01 <= rate <= 0.06, rate
    s0, s1, s2 = (np.concatenate(v) for v in scores.values())
    assert np.median(s0) < np.median(s1) < np.median(s2)
    assert np.mean(s2 > -np.log10(0.05)) > 0.95


def test_prediction_flags_a_pixel_size_change_and_marks_intervals(trained, tmp_path):
    run, res = trained
    data = load_run(run)
    reg = train_model(run, _cfg(target="stiffness_pa", epochs=2, split_from=str(res.model_dir)), tmp_path / "reg")
    meta = json.loads((reg.model_dir / "domain.json").read_text())
    assert meta["domain_version"] == 3 and meta["image_level"]["pixel_size_range_um"] == [0.65, 0.65]
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
    v2 = {**meta, "domain_version": 2, "image_level": json.loads((res.model_dir / "domain.json").read_text())["image_level"]}
    (old / "domain.json").write_text(json.dumps(v2))
    with pytest.warns(OldDomainReferenceWarning, match="labelled cells only"):
        model2 = load_stiffness_model(old)
    assert model2.domain.image_reference is not None and model2.domain.image_alpha == 0.05
    assert predict_cells(model2, data.table, data.crops, channels=data.channels, attrs=data.attrs)["pred_image_in_domain"].mean() > 0.7
    (old / "domain.json").write_text(json.dumps({**meta, "domain_version": 99}))
    with pytest.raises(MechanoscopeError, match="newer mechanoscope"):
        load_stiffness_model(old)
    (old / "domain.json").unlink()
    with pytest.raises(MechanoscopeError, match=r"domain\.json is missing.*delete domain\.safetensors"):
        load_stiffness_model(old)
