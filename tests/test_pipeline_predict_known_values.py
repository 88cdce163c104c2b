"""The ``split`` column predict writes decides which cells evaluation scores: a cell is held out
(``test``) only if no model used its group for training, validation or calibration; groups a
model never saw are ``test``; the most "used" role over all models wins (train > val >
calibration > test). Hand cases, no model files."""

from __future__ import annotations

from types import SimpleNamespace

import pandas as pd

from mechanoscope.pipeline.predict import _split_column


def _model(groups: dict, column: str = "image_id"):
    return SimpleNamespace(split={"group_column": column, "groups": groups})


def test_split_column_by_hand():
    table = pd.DataFrame({"image_id": ["a", "b", "c", "d", "e"], "well": ["w1"] * 5})
    m1 = _model({"train": ["a"], "val": ["b"], "calibration": ["c"], "test": ["d"]})
    assert list(_split_column(table, [m1])) == ["train", "val", "calibration", "test", "test"]  # 'e' never seen: held out
    # a second model calibrated on 'd' and trained on 'c': the more used role wins for every cell
    m2 = _model({"train": ["c"], "calibration": ["d"], "test": ["a", "b", "e"]})
    assert list(_split_column(table, [m1, m2])) == ["train", "val", "train", "calibration", "test"]
    assert list(_split_column(table, [m2, m1])) == ["train", "val", "train", "calibration", "test"]  # order does not matter
    # calibration outranks test, val outranks calibration
    m3 = _model({"val": ["d"], "test": ["c"]})
    assert list(_split_column(table, [m1, m3])) == ["train", "val", "calibration", "val", "test"]
    # a model whose group column the table lacks, or without a split, says nothing
    assert _split_column(table, [_model({"train": ["w1"]}, column="plate"), SimpleNamespace(split=None)]) is None
    assert list(_split_column(table, [_model({"train": ["w1"]}, column="well"), m1])) == ["train"] * 5
