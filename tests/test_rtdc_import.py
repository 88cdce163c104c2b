"""RT-DC import: real .rtdc files → cell table with dclab's Young's modulus and a crop store.

Reference: ``fmt-hdf5_fl_wide-channel_2023__wide_channel_issue_212.rtdc`` (dclab's test data)
stores dclab's own 'emodulus' feature (LE-2D-FEM-19, CellCarrierB, 30 µm channel,
0.16 µL/s, per-event temperature, herold-2017 viscosity, pixelation-corrected).
"""

from __future__ import annotations

import numpy as np
import pandas as pd
import pytest

pytest.importorskip("dclab")

from pathlib import Path  # noqa: E402

from mechanoscope.io.rtdc import RTDCReadError  # noqa: E402
from mechanoscope.mechanics.rtdc import import_rtdc  # noqa: E402
from tests.conftest import shared_data  # noqa: E402


def _file(name: str):
    hits = sorted(shared_data("rtdc_real").rglob(name))
    if not hits:
        pytest.skip(f"{name} is not in ../shared/data/rtdc_real")
    return hits[0]


def test_import_agrees_with_dclabs_stored_modulus_and_loads_as_a_run(tmp_path):
    import dclab

    from mechanoscope.learn.data import load_run

    path = _file("fmt-hdf5_fl_wide-channel_2023__wide_channel_issue_212.rtdc")
    res = import_rtdc(path, tmp_path / "run", {"viscosity_model": "herold-2017"})
    stored = np.asarray(dclab.new_dataset(path)["emodulus"][:], float) * 1e3  # kPa → Pa
    cells = res.table.sort_values("rtdc_event")
    assert res.n_imported == res.n_events == 10 and res.n_outside_lut == 0
    assert np.allclose(cells.rtdc_youngs_modulus_pa.to_numpy(), stored, rtol=1e-6)
    assert (cells.rtdc_viscosity_model == "herold-2017").all() and (cells.rtdc_lut == "LE-2D-FEM-19").all()
    assert cells.image_id.is_unique and (cells.rtdc_channel_width_um == 30.0).all()
    data = load_run(tmp_path / "run")  # what train/predict read: table and crops belong together
    assert len(data.table) == 10 and data.crops.shape[1:] == (2, 64, 64)
    assert pd.read_json(tmp_path / "run" / "rtdc.json", typ="series")["n_outside_lut"] == 0


@pytest.mark.parametrize("name, words", [
    ("fmt-hdf5_raw-cytoshot-exported__cytoshot_shapeout_export.rtdc", ["no 'mask' feature"]),
    ("fmt-hdf5_cytoshot_extended-moments-features.rtdc", ["no 'image' feature"]),
])
def test_files_without_images_or_masks_are_refused(tmp_path, name, words):
    with pytest.raises(RTDCReadError) as err:
        import_rtdc(_file(name), tmp_path / "run")
    assert name in str(err.value) and all(w in str(err.value) for w in words)
    assert not (tmp_path / "run" / "cells.parquet").exists()


def test_missing_lookup_metadata_imports_events_and_says_what_to_pass(tmp_path):
    path = _file("fmt-hdf5_fl_2018__calibration_beads.rtdc")  # no temperature recorded
    res = import_rtdc(path, tmp_path / "run")
    assert res.n_imported == 7 and res.table.rtdc_youngs_modulus_pa.isna().all()
    assert path.name in res.no_modulus and "--temperature-c" in res.no_modulus
    assert res.table.rtdc_deform.notna().all()
    with pytest.raises(RTDCReadError, match="--temperature-c"):
        import_rtdc(path, tmp_path / "run2", {"require_modulus": True})


def test_unreadable_file(tmp_path):
    bad = tmp_path / "x.rtdc"
    bad.write_bytes(b"\x89HDF truncated")
    with pytest.raises(RTDCReadError, match="x.rtdc"):
        import_rtdc(bad, tmp_path / "run")


def test_cli_rtdc_import(tmp_path):
    from typer.testing import CliRunner

    from mechanoscope.cli.main import app

    path = _file("fmt-hdf5_fl_2018__calibration_beads.rtdc")
    r = CliRunner().invoke(app, ["rtdc", "import", str(path), "--out", str(tmp_path / "run"), "--crop-pixels", "32"])
    assert r.exit_code == 0, r.output
    assert "--temperature-c" in r.output and r.output.strip().splitlines()[-1].startswith("imported 7 of 7 event(s)")
    r = CliRunner().invoke(app, ["rtdc", "import", str(path), "--out", str(tmp_path / "run"), "--require-modulus"])
    assert r.exit_code == 2 and "--temperature-c" in r.output


def test_mask_with_artefact_keeps_the_cell(tmp_path):
    path = _file("fmt-hdf5_fl-no-contour_2019__mask_with_artefact.rtdc")
    res = import_rtdc(path, tmp_path / "run")
    assert res.n_imported == 10 and (res.table.rtdc_mask_objects > 1).any()
    assert (res.table.groupby("image_id").size() == 1).all()  # one row per event


def test_events_outside_the_table_are_counted_with_what_to_check(tmp_path):
    path = _file("naiad-capture_blood_pipeline.rtdc")  # blood cells, far more deformed than the table's cells
    res = import_rtdc(path, tmp_path / "run", {"max_events": 6, "crop_pixels": 16})
    assert res.n_outside_lut == 6 and res.table.rtdc_youngs_modulus_pa.isna().all()
    note = res.notes[0]
    assert path.name in note and "6 of 6 event(s)" in note and "more deformed" in note
    assert "--channel-width-um" in note and "--flow-rate-ul-s" in note and "--lut" in note
    assert pd.read_json(tmp_path / "run" / "rtdc.json", typ="series")["notes"] == res.notes


def test_labels_table_is_joined_by_event_and_bad_tables_are_refused(tmp_path):
    path = _file("fmt-hdf5_fl_wide-channel_2023__wide_channel_issue_212.rtdc")
    labels = pd.DataFrame({"file": [path.name, path.name, "other.rtdc"], "rtdc_event": [0, 3, 0], "reference_pa": [1.0, 2.0, 9.0]})
    res = import_rtdc(path, tmp_path / "run", {"max_events": 4, "crop_pixels": 16}, labels=labels)
    got = res.table.set_index("rtdc_event")["reference_pa"]
    assert got[0] == 1.0 and got[3] == 2.0 and got[[1, 2]].isna().all()
    for bad, words in ((labels.drop(columns="rtdc_event"), "no 'rtdc_event'"), (labels.assign(file="x.rtdc"), "no event of this file"),
                       (labels.assign(rtdc_deform=0.1), "would replace"), (pd.concat([labels, labels]), "more than once")):
        with pytest.raises(RTDCReadError, match=words):
            import_rtdc(path, tmp_path / "bad", {"max_events": 2, "crop_pixels": 16}, labels=bad)


def test_several_files_go_into_one_run_and_a_bad_file_is_recorded_and_skipped(tmp_path):
    from mechanoscope.learn.data import load_run
    from mechanoscope.mechanics.rtdc_files import import_rtdc_files

    a = _file("fmt-hdf5_fl_wide-channel_2023__wide_channel_issue_212.rtdc")
    b = _file("fmt-hdf5_fl-no-contour_2019__mask_with_artefact.rtdc")
    bad = tmp_path / "broken.rtdc"
    bad.write_bytes(b"\x89HDF truncated")
    alone = {p.name: import_rtdc(p, tmp_path / p.stem, {"max_events": 5, "crop_pixels": 16}).table for p in (a, b)}
    res = import_rtdc_files([a, bad, b], tmp_path / "run", {"max_events": 5, "crop_pixels": 16})
    assert [f["status"] for f in res.files] == ["imported", "failed", "imported"]
    assert len(res.failed) == 1 and "broken.rtdc" in res.failed[0]["error"]
    assert res.n_imported == len(res.table) == 10 and res.n_events == 20  # both files hold 10 events; 5 each imported
    data = load_run(tmp_path / "run")  # the consolidated table and crops belong together, row by row
    assert len(data.table) == 10 and data.table.image_id.is_unique
    for name, one in alone.items():  # each file's rows and crops are those of importing it alone
        rows = data.table.index[data.table.rtdc_file.map(lambda f: f.endswith(name))]
        assert list(data.table.loc[rows, "image_id"]) == list(one.image_id)
        np.testing.assert_allclose(data.table.loc[rows, "rtdc_deform"].to_numpy(), one.rtdc_deform.to_numpy())
        single = load_run(tmp_path / Path(name).stem)
        np.testing.assert_array_equal(np.asarray(data.crops)[rows], np.asarray(single.crops))
    summary = pd.read_json(tmp_path / "run" / "rtdc.json", typ="series")
    assert summary["n_failed"] == 1 and summary["n_files"] == 3 and not (tmp_path / "run" / "parts").exists()


def test_several_files_with_one_name_or_labels_without_file_column_are_refused(tmp_path):
    from mechanoscope.mechanics.rtdc_files import import_rtdc_files

    a = _file("fmt-hdf5_fl_wide-channel_2023__wide_channel_issue_212.rtdc")
    (tmp_path / "x").mkdir()
    twin = tmp_path / "x" / a.name
    twin.write_bytes(a.read_bytes())
    with pytest.raises(RTDCReadError, match="same name"):
        import_rtdc_files([a, twin], tmp_path / "run")
    b = _file("fmt-hdf5_fl-no-contour_2019__mask_with_artefact.rtdc")
    with pytest.raises(RTDCReadError, match="no 'file' column"):
        import_rtdc_files([a, b], tmp_path / "run", labels=pd.DataFrame({"rtdc_event": [0], "reference_pa": [1.0]}))
    with pytest.raises(RTDCReadError, match="no RT-DC file could be imported"):
        bad = tmp_path / "bad.rtdc"
        bad.write_text("not hdf5")
        import_rtdc_files([bad, tmp_path / "missing.rtdc"], tmp_path / "run")
    assert not (tmp_path / "run" / "cells.parquet").exists()


def test_cli_imports_several_files_and_exits_1_when_one_fails(tmp_path):
    import subprocess
    import sys

    a = _file("fmt-hdf5_fl_2018__calibration_beads.rtdc")
    b = _file("fmt-hdf5_fl-no-contour_2019__mask_with_artefact.rtdc")
    bad = tmp_path / "broken.rtdc"
    bad.write_bytes(b"\x89HDF truncated")
    proc = subprocess.run([sys.executable, "-m", "mechanoscope.cli.main", "rtdc", "import", str(a), str(bad), str(b),
                           "--out", str(tmp_path / "run"), "--crop-pixels", "16"], capture_output=True, text=True, timeout=300,
                          env={**__import__("os").environ, "COLUMNS": "250"})
    text = proc.stdout + proc.stderr
    assert proc.returncode == 1 and "Traceback" not in text, text
    lines = text.strip().splitlines()
    assert "imported 17 of 17 event(s) from 2 of 3 file(s)" in lines[-2] and "broken.rtdc" in text
    assert lines[-1].startswith("1 of 3 file(s) failed; details in") and "rtdc.json" in lines[-1]
