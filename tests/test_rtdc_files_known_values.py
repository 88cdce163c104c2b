"""Consolidating several RT-DC files copies the crops in chunks: with a chunk smaller than a
file, every row of the run's crop store must still carry the cell id, frame and padding
value of the same row of that file's own import, and the counts must add up per file."""

from __future__ import annotations

import numpy as np
import pandas as pd

from mechanoscope.io.crop_store import read_crop_store
from mechanoscope.mechanics import rtdc_files
from tests.test_rtdc_import import _file


def test_chunked_consolidation_keeps_each_rows_ids_frames_and_padding(tmp_path, monkeypatch):
    a = _file("fmt-hdf5_fl_wide-channel_2023__wide_channel_issue_212.rtdc")
    b = _file("naiad-capture_blood_pipeline.rtdc")  # its events lie outside the look-up table
    monkeypatch.setattr(rtdc_files, "_COPY_CHUNK", 3)  # each file's 4 crops come in two chunks (3 + 1)
    res = rtdc_files.import_rtdc_files([a, b], tmp_path / "run", {"max_events": 4, "crop_pixels": 16})
    run = read_crop_store(tmp_path / "run" / "crops.zarr")
    t = res.table  # the parts' tables, concatenated: row k of the store must describe row k of the table
    np.testing.assert_array_equal(run.image_ids, t["image_id"].to_numpy())
    np.testing.assert_array_equal(run.cell_ids, t["cell_id"].to_numpy())
    np.testing.assert_array_equal(run.frames, t["frame"].to_numpy())
    pad = dict(zip(run.attrs["image_ids"], run.attrs["pad_values"]))  # one image per event
    np.testing.assert_allclose([pad[i] for i in t["image_id"]], t["crop_pad_value"].to_numpy())
    # the first file's first chunk holds padding values 151, 151, 150: the third event's own value must be kept
    assert t["crop_pad_value"].iloc[:3].nunique() == 2
    # counts per file add up: the blood file's 4 events lie outside the table, none of the other's
    assert [r.n_outside_lut for r in res.results] == [0, 4]
    assert res.n_outside_lut == 4 and res.n_events == sum(r.n_events for r in res.results)
    summary = pd.read_json(tmp_path / "run" / "rtdc.json", typ="series")
    assert summary["n_outside_lut"] == 4 and summary["n_imported"] == 8
