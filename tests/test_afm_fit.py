"""AFM force curves: reading (afmformats), fitting (nanite), simulation, matching to cells, CLI.

Reference: nanite's own test (AFM-analysis/nanite tests/test_fit.py::test_fit_range) fits
``fmt-jpk-fd_spot3-0192.jpk-force`` with hertz_para after ``compute_tip_position`` only,
initial contact point 18 µm, baseline varied, no contact-point weighting, whole approach:
E = 14741.958 Pa (atol 1 Pa), contact point 1.8029310201193193e-05 m; range 17–19 µm:
E = 14838.892 Pa (atol 3 Pa), contact point 1.8028461828272924e-05 m.
"""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import numpy as np
import pandas as pd
import pytest

pytest.importorskip("nanite")
pytest.importorskip("afmformats")

from mechanoscope.errors import AFMReadError, ConfigError  # noqa: E402
from mechanoscope.mechanics.afm_fit import AFMFitConfig, fit_afm_files  # noqa: E402
from mechanoscope.mechanics.afm_run import StageTransform, match_afm_to_run, transform_from_landmarks  # noqa: E402
from mechanoscope.simulate.afm_curves import AFMCurveSimConfig, simulate_afm_curves  # noqa: E402
from tests.conftest import shared_data  # noqa: E402

NANITE_REFERENCE = dict(preprocessing=["compute_tip_position"], contact_point_initial_um=18.0,
                        weight_contact_point_um=0.0, fit_baseline=True, rate_quality=False)
RAW_FRAME = ["compute_tip_position", "correct_force_offset"]  # contact point stays in the simulator's frame


def _afm(name: str) -> Path:
    root = shared_data("afm_force_curves")
    hits = sorted(root.rglob(name))
    if not hits:
        pytest.skip(f"{name} is not in {root}")
    return hits[0]


def _cli(*args: str, cwd: Path) -> subprocess.CompletedProcess:
    code = "import sys; from mechanoscope.cli.main import main; main()"
    return subprocess.run([sys.executable, "-c", code, *args], cwd=cwd, capture_output=True, text=True, timeout=120)


# --- nanite's reference result ---------------------------------------------------------

def test_reproduces_nanites_reference_fit():
    path = _afm("fmt-jpk-fd_spot3-0192.jpk-force")
    full = fit_afm_files(path, AFMFitConfig(**NANITE_REFERENCE)).table.iloc[0]
    assert full.status == "ok", full.error
    assert abs(full.youngs_modulus_pa - 14741.958242422093) < 1.0
    assert full.contact_point_m == pytest.approx(1.8029310201193193e-05, rel=1e-5)
    short = fit_afm_files(path, AFMFitConfig(**NANITE_REFERENCE, range_um=(17.0, 19.0))).table.iloc[0]
    assert abs(short.youngs_modulus_pa - 14838.89245576058) < 3.0
    assert short.contact_point_m == pytest.approx(1.8028461828272924e-05, rel=1e-5)
    # position from the file's metadata (m → µm), file and index, no rating asked for
    assert (full.x_um, full.y_um) == pytest.approx((-16.6667, -16.6667), abs=1e-3)
    assert full.curve_index == 0 and full.file == str(path) and np.isnan(full.nanite_rating)
    assert full.fit_points == 2000 and 0 < full.fit_residual_rms_n < 1e-10


def test_rating_is_nanites():
    path = _afm("fmt-jpk-fd_spot3-0192.jpk-force")
    row = fit_afm_files(path, AFMFitConfig(rate_quality=True)).table.iloc[0]
    assert 0 <= row.nanite_rating <= 10


# --- synthetic curves with known truth ---------------------------------------------------

def _recover(tmp_path, sim: dict, fit: dict, n: int = 12, seed: int = 3, per_file: int = 6):
    truth = simulate_afm_curves(tmp_path / "sim", AFMCurveSimConfig(n_curves=n, curves_per_file=per_file, **sim), seed=seed)
    res = fit_afm_files(tmp_path / "sim", AFMFitConfig(rate_quality=False, **fit))
    tab = res.table.merge(truth, on=["file", "curve_index"], suffixes=("", "_true"))
    assert len(tab) == n and (tab.status == "ok").all(), tab.error.tolist()
    return tab, np.abs(tab.youngs_modulus_pa / tab.youngs_modulus_pa_true - 1)


@pytest.mark.parametrize("indenter, fit", [
    ("paraboloid", {"model_key": "hertz_para", "tip_radius_um": 10.0}),
    ("cone", {"model_key": "hertz_cone", "indenter_angle_deg": 25.0}),
])
def test_noise_free_curves_recover_e_and_contact_point(tmp_path, indenter, fit):
    tab, ape = _recover(tmp_path, {"indenter": indenter, "noise_pn": 0.0}, {**fit, "preprocessing": RAW_FRAME})
    assert ape.max() < 0.02
    assert np.abs(tab.contact_point_m - tab.contact_point_m_true).max() < 5e-9
    assert np.allclose(tab[["x_um", "y_um"]].to_numpy(), tab[["x_um_true", "y_um_true"]].to_numpy())


def test_wrong_radius_is_not_recovered(tmp_path):
    """The geometry reaches nanite: fitting a 10 µm tip as 2.5 µm doubles E (E ∝ R^-1/2)."""
    tab, _ = _recover(tmp_path, {"noise_pn": 0.0}, {"tip_radius_um": 2.5}, n=4)
    assert np.allclose(tab.youngs_modulus_pa / tab.youngs_modulus_pa_true, 2.0, rtol=0.01)


def test_noisy_curves_scatter_as_the_fit_says(tmp_path):
    # 18 curves in one HDF5 file: afmformats lists them "0", "1", "10", … — curve_index is the curve's own
    tab, ape = _recover(tmp_path, {"noise_pn": 10.0}, {}, n=18, per_file=18)
    z = (tab.youngs_modulus_pa - tab.youngs_modulus_pa_true) / tab.youngs_modulus_stderr_pa
    assert (np.abs(z) < 4).mean() >= 0.85, z.round(2).tolist()
    assert ape.median() < 0.03 and ape.max() < 0.25


def test_tilted_baseline_needs_slope_correction(tmp_path):
    sim = {"noise_pn": 5.0, "baseline_tilt_pn_per_um": 100.0}
    _, plain = _recover(tmp_path / "a", sim, {}, n=8)
    steps = ["compute_tip_position", "correct_tip_offset", "correct_force_slope", "correct_force_offset"]
    _, corrected = _recover(tmp_path / "b", sim, {"preprocessing": steps}, n=8)
    assert corrected.median() < 0.05 and corrected.median() < plain.median()


# --- broken input ------------------------------------------------------------------------

@pytest.mark.parametrize("name, words", [
    ("fmt-jpk-fd_single_bad_2017-01-16_2.jpk-force", ["no approach segment", "1 approach point"]),
    ("fmt-jpk-fd_single_bad_bead7_2017-04-27.jpk-force", ["no approach segment"]),
    ("fmt-jpk-fd_map_bad_2013-05-27_1.jpk-force-map", ["no contact"]),
    ("fmt-jpk-fd_single_bad_2017-01-16_1.jpk-force", ["no contact"]),
    ("fmt-jpk-fd_single-modified_2023.jpk-force", ["'spring constant'", "--spring-constant-n-per-m"]),
    ("fmt-jpk-cl_calibration_force-save-2015-02-04.jpk-force", ["'sensitivity'", "--sensitivity-m-per-v"]),
    ("fmt-afm-workshop-fd_single_2021-10-22_14.16.csv", ["spring constant", "--spring-constant-n-per-m"]),
    ("fmt-jpk-cc_pr14-brain-2021.06.30.jpk-force", ["creep-compliance"]),
    ("rate-export_1.7.8.h5", ["not a file afmformats can read"]),
])
def test_broken_curves_are_reported_never_given_a_number(name, words):
    path = _afm(name)
    tab = fit_afm_files(path, AFMFitConfig(rate_quality=False)).table
    assert (tab.status == "failed").all() and tab.youngs_modulus_pa.isna().all()
    for err in tab.error:
        assert name in err and all(w in err for w in words), err


def test_calibration_passed_is_used_where_the_file_lacks_it():
    path = _afm("fmt-jpk-fd_single-modified_2023.jpk-force")
    row = fit_afm_files(path, AFMFitConfig(rate_quality=False, spring_constant_n_per_m=0.05)).table.iloc[0]
    # read now; this curve (its metadata stripped by afmformats' authors) then turns out to have no contact
    assert row.spring_constant_n_per_m == 0.05 and "calibration" not in row.error and "no contact" in row.error
    own = _afm("fmt-jpk-fd_spot3-0192.jpk-force")  # a file with its own calibration keeps it
    row = fit_afm_files(own, AFMFitConfig(rate_quality=False, spring_constant_n_per_m=0.05)).table.iloc[0]
    assert row.spring_constant_n_per_m == pytest.approx(0.043493666407368466)


def test_every_format_afmformats_reads_is_read():
    from mechanoscope.io.afm import read_afm_file

    names = ["fmt-jpk-fd_map2x2_extracted.jpk-force-map", "fmt-jpk-fd_2020.02.07-16.29.05.036.jpk-qi-data",
             "fmt-jpk-fd_qi-data-2021.04.13.jpk-qi-series", "fmt-igor-fd_SiN_FD_plot.ibw", "fmt-hdf5-fd_version_0.13.3.h5",
             "fmt-tab-fd_version_0.13.3.tab", "fmt-afm-workshop-fd_mapping_16_2018-08-01_13.07.zip",
             "fmt-ntmdt-txt-fd_2015_01_17_gel4-0,1_mQ_adh_6B_Curve_DFL_Height_51.txt", "fmt-chiaro-txt_AEBP1_Indentation_002.zip"]
    counts = {n: len(read_afm_file(_afm(n), spring_constant_n_per_m=0.05, sensitivity_m_per_v=5e-8)) for n in names}
    assert counts["fmt-jpk-fd_map2x2_extracted.jpk-force-map"] == 4
    assert counts["fmt-afm-workshop-fd_mapping_16_2018-08-01_13.07.zip"] == 16
    assert all(c >= 1 for c in counts.values())


def test_bad_paths_and_config(tmp_path):
    from mechanoscope.io.afm import read_afm_file

    empty = tmp_path / "x.jpk-force"
    empty.write_bytes(b"")
    with pytest.raises(AFMReadError, match="empty"):
        read_afm_file(empty)
    (tmp_path / "y.jpk-force").write_bytes(b"not a zip at all")
    with pytest.raises(AFMReadError, match="y.jpk-force"):
        read_afm_file(tmp_path / "y.jpk-force")
    with pytest.raises(AFMReadError, match="no such"):
        fit_afm_files(tmp_path / "missing.jpk-force")
    with pytest.raises(ConfigError, match="allowed parameters"):
        AFMFitConfig.build(radius=3)
    with pytest.raises(ConfigError, match="needs"):
        AFMFitConfig.build(preprocessing=["correct_tip_offset", "compute_tip_position"])


# --- matching to a run's cells -----------------------------------------------------------

def _run_folder(tmp_path: Path) -> Path:
    from mechanoscope.cells.morphology import measure_cells
    from mechanoscope.io.images import write_label_image
    from mechanoscope.io.tables import write_table

    run = tmp_path / "run"
    lab = np.zeros((60, 90), np.int32)
    lab[5:20, 50:80] = 3   # top right
    lab[35:55, 5:25] = 7   # bottom left
    write_label_image(run / "labels" / "field.tif", lab, pixel_size_um=0.5)
    cells = measure_cells(lab, pixel_size_um=0.5, image_id="field")
    cells["pixel_size_um"] = 0.5
    write_table(cells, run / "cells.parquet")
    return run


def test_simulated_curves_fitted_and_matched_to_cells(tmp_path):
    run = _run_folder(tmp_path)
    tr = StageTransform(offset_x_um=100.0, offset_y_um=-20.0, scale=1.0, rotation_deg=90.0)
    # image (x, y) µm of the points: cell 3 twice, cell 7 once, background far away, off the image
    img_xy = np.array([[32.0, 6.0], [36.0, 8.0], [7.0, 22.0], [30.0, 27.0], [60.0, 10.0]])
    # invert the 90° rotation: x_img = 100 - y_stage, y_img = -20 + x_stage
    stage = np.c_[img_xy[:, 1] + 20.0, 100.0 - img_xy[:, 0]]
    e = np.array([1000.0, 4000.0, 300.0, 500.0, 800.0])
    meas = pd.DataFrame({"image_id": "field", "position_x_um": stage[:, 0], "position_y_um": stage[:, 1], "measured_stiffness_pa": e})
    simulate_afm_curves(tmp_path / "curves", AFMCurveSimConfig(noise_pn=0.0), measurements=meas, seed=0)
    fitted = fit_afm_files(tmp_path / "curves", AFMFitConfig(rate_quality=False)).table
    assert np.allclose(fitted.youngs_modulus_pa, e, rtol=0.02)
    res = match_afm_to_run(fitted, run, transform=tr, max_distance_um=2.0)
    cells = res.cells.set_index("cell_id")
    assert cells.loc[3, "afm_stiffness_pa"] == pytest.approx(2000.0, rel=0.02)  # geometric mean of 1 and 4 kPa
    assert cells.loc[7, "afm_stiffness_pa"] == pytest.approx(300.0, rel=0.02)
    assert (res.n_inside, res.n_outside) == (3, 2)
    assert sorted(res.outside.reason) == ["on background, no cell within max_distance_um", "outside the image"]
    on_disk = pd.read_parquet(run / "cells.parquet").set_index("cell_id")
    assert on_disk.loc[3, "afm_n_measurements"] == 2 and len(pd.read_parquet(run / "afm_matches.parquet")) == 5


def test_landmarks_recover_the_transform():
    truth = StageTransform(offset_x_um=12.0, offset_y_um=-7.0, scale=1.3, rotation_deg=-25.0, flip_y=True)
    rng = np.random.default_rng(0)
    sx, sy = rng.uniform(-50, 50, 5), rng.uniform(-50, 50, 5)
    ix, iy = truth.apply(sx, sy)
    fit, rms = transform_from_landmarks(pd.DataFrame({"stage_x_um": sx, "stage_y_um": sy, "image_x_um": ix, "image_y_um": iy}), flip_y=True)
    assert rms < 1e-9
    assert (fit.offset_x_um, fit.offset_y_um, fit.scale, fit.rotation_deg) == pytest.approx((12.0, -7.0, 1.3, -25.0))


# --- command line ------------------------------------------------------------------------

def test_cli_fit_in_a_subprocess(tmp_path):
    """One subprocess (the CLI's import costs seconds): a good and a broken file together."""
    bad = _afm("fmt-jpk-fd_single_bad_2017-01-16_2.jpk-force")
    simulate_afm_curves(tmp_path / "sim", AFMCurveSimConfig(n_curves=3, noise_pn=5.0), seed=0)
    r = _cli("afm", "fit", "sim", str(bad), "--out", "fit.parquet", "--no-rating", cwd=tmp_path)
    assert r.returncode == 1 and "Traceback" not in r.stderr, r.stderr
    last = r.stderr.strip().splitlines()[-1]
    assert last.startswith("fitted 3 of 4 curve(s), 1 failed") and "curves/s" in last, last
    assert "no approach segment" in r.stderr and bad.name in r.stderr
    tab = pd.read_parquet(tmp_path / "fit.parquet")
    assert list(tab.status) == ["ok"] * 3 + ["failed"] and (tmp_path / "fit.json").is_file()


def test_cli_simulate_fit_match(tmp_path, monkeypatch):
    from typer.testing import CliRunner

    from mechanoscope.cli.main import app

    monkeypatch.chdir(tmp_path)
    runner = CliRunner()
    r = runner.invoke(app, ["simulate", "afm", "--out", "sim", "--n-curves", "3", "--noise-pn", "5"])
    assert r.exit_code == 0, r.output
    r = runner.invoke(app, ["afm", "fit", "sim", "--out", "fit.csv", "--no-rating"])
    assert r.exit_code == 0 and "fitted 3 of 3 curve(s), 0 failed" in r.output, r.output
    run = _run_folder(tmp_path)
    r = runner.invoke(app, ["afm", "match", "fit.csv", str(run), "--image-id", "field", "--max-distance-um", "0"])
    assert r.exit_code == 0 and "outside every cell" in r.output.strip().splitlines()[-1], r.output
    assert "afm_stiffness_pa" in pd.read_parquet(run / "cells.parquet")
    r = runner.invoke(app, ["afm", "match", "fit.csv", str(run)])  # file stems name no image of the run
    assert r.exit_code == 2 and "--image-id" in r.output
    r = runner.invoke(app, ["afm", "fit", "sim", "--out", "fit.txt"])
    assert r.exit_code == 2 and ".parquet or .csv" in r.output
