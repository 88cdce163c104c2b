"""`mechanoscope run CONFIG.yaml`: inputs from a run file, images as tasks on a Dask cluster (issue 17)."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
import yaml

from mechanoscope.errors import ConfigError, MechanoscopeError
from mechanoscope.pipeline.run_config import RunConfig, expand_inputs
from tests.test_field import models  # noqa: F401  (the module fixture: a one-epoch CNN classifier and a features regressor)

N_IMAGES = 5


@pytest.fixture(scope="module")
def sim(tmp_path_factory) -> Path:
    from mechanoscope.simulate import AdherentConfig, simulate_adherent

    sim = simulate_adherent(AdherentConfig(n_images=N_IMAGES, image_shape_px=(128, 128), cells_per_image=4), tmp_path_factory.mktemp("sim") / "sim", seed=5)
    # plate-like names: <well>_f<field>.tif
    for k, p in enumerate(sorted((sim / "images").glob("*.tif"))):
        p.rename(p.with_name(f"{'AB'[k % 2]}{k // 2 + 1:02d}_f{k}.tif"))
    return sim


def _cfg(tmp: Path, sim: Path, models, **kw) -> RunConfig:
    base = dict(inputs=[str(sim / "images")], models=[str(m) for m in models], out=str(tmp / "run"), cluster="none",
                layout_pattern=r"(?P<well>[A-H][0-9]{2})_f(?P<field>[0-9]+)")
    base.update(kw)
    return RunConfig.model_validate(base)


def test_run_file_is_validated_and_inputs_expand_in_order(tmp_path, sim, models):
    with pytest.raises(Exception, match="bogus"):
        RunConfig.model_validate({"inputs": ["x"], "models": ["m"], "out": "o", "bogus": 1})
    with pytest.raises(Exception, match="tcp://host:8786"):
        RunConfig.model_validate({"inputs": ["x"], "models": ["m"], "out": "o", "cluster": "somewhere"})
    with pytest.raises(Exception, match="named group"):
        RunConfig.model_validate({"inputs": ["x"], "models": ["m"], "out": "o", "layout_pattern": "[A-H][0-9]+"})
    cfg = _cfg(tmp_path, sim, models, inputs=[str(sim / "images" / "B01_f1.tif"), str(sim / "images" / "*.tif")])
    paths, cols = expand_inputs(cfg)
    names = [p.name for p in paths]
    assert names[0] == "B01_f1.tif" and sorted(names) == sorted(p.name for p in (sim / "images").glob("*.tif")) and len(set(names)) == N_IMAGES
    assert cols["A02_f2"] == {"well": "A02", "field": "2"}
    with pytest.raises(ConfigError, match="matches no part of 5 file name"):
        expand_inputs(_cfg(tmp_path, sim, models, layout_pattern=r"(?P<plate>P[0-9])"))
    with pytest.raises(MechanoscopeError, match="the pattern matches no file"):
        expand_inputs(_cfg(tmp_path, sim, models, inputs=[str(sim / "nothing*.tif")]))
    # relative paths in a run file are relative to the file
    f = tmp_path / "sub" / "run.yaml"
    f.parent.mkdir()
    f.write_text(yaml.safe_dump({"inputs": ["../imgs"], "models": ["m"], "out": "out"}))
    loaded = RunConfig.from_file(f)
    assert loaded.inputs == [str(f.parent / "../imgs")] and loaded.out == str(f.parent / "out")


def _read(run: Path) -> tuple[pd.DataFrame, np.ndarray]:
    import zarr

    table = pd.read_parquet(run / "cells.parquet")
    crops = np.asarray(zarr.open_group(str(run / "crops.zarr"), mode="r")["crops"][:])
    return table, crops


def test_a_local_dask_cluster_gives_the_same_table_as_a_local_run(tmp_path, sim, models):
    from mechanoscope.pipeline.batch_run import run_batch

    local = run_batch(_cfg(tmp_path / "a", sim, models, cluster="none"))
    dask = run_batch(_cfg(tmp_path / "b", sim, models, cluster="local", n_workers=2))
    assert dask["cluster"] == {"kind": "local", "workers": 2} and local["cluster"]["kind"] == "none"
    ta, ca = _read(tmp_path / "a" / "run")
    tb, cb = _read(tmp_path / "b" / "run")
    assert len(ta) > 0 and local["n_cells"] == len(ta) and local["cells_per_second"] > 0
    pd.testing.assert_frame_equal(ta, tb)
    np.testing.assert_array_equal(ca, cb)
    assert list(ta["image_id"].drop_duplicates()) == [p.stem for p in sorted((sim / "images").glob("*.tif")) if p.stem in set(ta["image_id"])]
    assert set(ta["well"]) <= {"A01", "B01", "A02", "B02", "A03"} and (ta["well"] + "_f" + ta["field"] == ta["image_id"]).all()
    assert {"pred_label", "pred_stiffness_pa"} <= set(ta.columns)
    rec = json.loads((tmp_path / "b" / "run" / "run.json").read_text())
    assert sum(e["status"] == "done" for e in rec["stages"]["predict"]["images"].values()) == N_IMAGES
    assert json.loads((tmp_path / "b" / "run" / "run_config.json").read_text())["cluster"] == "local"


def test_a_worker_killed_mid_image_loses_nothing_and_duplicates_nothing(tmp_path, sim, models):
    from distributed import Client, LocalCluster

    from mechanoscope.pipeline import predict_run

    ref = tmp_path / "ref"
    predict_run(sim / "images", [str(m) for m in models], ref)
    marker = tmp_path / "killed-once"
    victim = sorted((sim / "images").glob("*.tif"))[2].stem

    def arm(marker=str(marker), victim=victim):  # runs on every worker: the first to meet the victim image dies
        import os as _os

        import mechanoscope.pipeline.field_run as fr

        real = fr.process_file_to_parts

        def dying(root, path, image_id, **kw):
            if image_id == victim and not _os.path.exists(marker):
                open(marker, "w").close()
                _os._exit(1)  # the worker process dies mid-image (no cleanup, like kill -9)
            return real(root, path, image_id, **kw)

        fr.process_file_to_parts = dying

    with LocalCluster(n_workers=2, threads_per_worker=1, processes=True, dashboard_address=None) as cluster, Client(cluster) as client:
        client.run(arm)
        out = tmp_path / "dask"
        info = predict_run("plate", [str(m) for m in models], out, paths=sorted((sim / "images").glob("*.tif")), client=client)
    assert marker.exists()  # a worker really died
    assert info["n_failed"] == 0 and info["n_images"] == len({*pd.read_parquet(ref / "cells.parquet")["image_id"]})
    ta, ca = _read(ref)
    tb, cb = _read(out)
    pd.testing.assert_frame_equal(ta, tb)
    np.testing.assert_array_equal(ca, cb)
    assert not tb.duplicated(["image_id", "cell_id"]).any()
    leftovers = [p for p in out.rglob("*") if ".tmp-" in p.name]
    assert leftovers == []


def test_cli_run_writes_the_run_and_a_scheduler_that_does_not_answer_is_a_clear_error(tmp_path, sim, models):
    f = tmp_path / "run.yaml"
    f.write_text(yaml.safe_dump({"inputs": [str(sim / "images")], "models": [str(m) for m in models], "out": "out", "cluster": "none",
                                 "layout_pattern": r"(?P<well>[A-H][0-9]{2})_f(?P<field>[0-9]+)"}))
    env = {**os.environ, "COLUMNS": "200"}
    proc = subprocess.run([sys.executable, "-m", "mechanoscope.cli.main", "run", str(f)], capture_output=True, text=True, env=env, timeout=600)
    assert proc.returncode == 0, proc.stdout + proc.stderr
    last = (proc.stdout + proc.stderr).strip().splitlines()[-1]
    assert "cells/s end to end" in last and "cells.parquet" in last
    table = pd.read_parquet(tmp_path / "out" / "cells.parquet")
    assert "well" in table.columns and len(table) > 0
    # again (in this process: the subprocess runs above and below cover the command line): everything was finished, nothing redone
    from typer.testing import CliRunner

    from mechanoscope.cli.main import app

    again = CliRunner().invoke(app, ["run", str(f)], env={"COLUMNS": "200"})
    assert again.exit_code == 0 and f"{N_IMAGES} finished earlier" in " ".join(again.output.split()), again.output
    # a scheduler address where nothing listens (waiting 1 s for it, not the default 10 s)
    f2 = tmp_path / "run2.yaml"
    f2.write_text(yaml.safe_dump({**yaml.safe_load(f.read_text()), "connect_timeout_s": 1.0}))
    proc = subprocess.run([sys.executable, "-m", "mechanoscope.cli.main", "run", str(f2), "--cluster", "tcp://127.0.0.1:9", "--out", str(tmp_path / "o2")],
                          capture_output=True, text=True, env=env, timeout=600)
    text = proc.stdout + proc.stderr
    assert proc.returncode != 0 and "no Dask scheduler answered within 1 s" in text and "Traceback" not in text
    # unknown keys in the run file
    f.write_text(yaml.safe_dump({"inputs": [str(sim / "images")], "models": ["m"], "out": "out", "workers": 3}))
    proc = subprocess.run([sys.executable, "-m", "mechanoscope.cli.main", "run", str(f)], capture_output=True, text=True, env=env, timeout=600)
    text = proc.stdout + proc.stderr
    assert proc.returncode == 2 and "workers: unknown parameter" in text and "Traceback" not in text


def test_segmentation_qc_flags_images_without_cells_and_a_lost_condition(tmp_path, sim, models):
    import shutil

    import tifffile

    from mechanoscope.io.images import read_image
    from mechanoscope.metrics.segmentation_qc import segmentation_qc
    from mechanoscope.pipeline.batch_run import run_batch
    from mechanoscope.pipeline.evaluation import evaluate_run
    from mechanoscope.report.html import write_report

    # by hand: group A has one image with far fewer cells and one with none; group B found nothing anywhere
    qc = segmentation_qc([{"image_id": "a1", "n_cells": 10, "covered_fraction": 0.2}, {"image_id": "a2", "n_cells": 12, "covered_fraction": 0.25},
                          {"image_id": "a3", "n_cells": 11, "covered_fraction": 0.02}, {"image_id": "a4", "n_cells": 2, "covered_fraction": 0.05},
                          {"image_id": "a5", "n_cells": 0, "covered_fraction": 0.0}, {"image_id": "b1", "n_cells": 0}, {"image_id": "b2", "n_cells": 0}],
                         {"a1": "A", "a2": "A", "a3": "A", "a4": "A", "a5": "A", "b1": "B", "b2": "B"})
    assert qc["flagged"] == ["a3", "a4", "a5", "b1", "b2"]
    assert qc["images"]["a3"]["flags"] == ["little area"] and qc["images"]["a4"]["flags"] == ["few cells"]
    assert qc["images"]["a5"]["flags"] == ["no cells"] and qc["lost_groups"] == ["B"]
    assert qc["groups"]["A"] == {"n_images": 5, "n_flagged": 3, "median_cells": 10.5, "lost": False}
    assert "2 cells where comparable images have a median of 10.5" in qc["images"]["a4"]["reason"]

    # through the product: a condition whose dish is blank (no cell to find) is flagged as lost, per image and in the report
    src = tmp_path / "images"
    shutil.copytree(sim / "images", src)
    first = sorted(src.glob("*.tif"))[0]
    px = read_image(first).pixel_size_um
    flat = np.random.default_rng(0).normal(1000, 5, (128, 128)).clip(0).astype(np.uint16)
    for name in ("C01_f8.tif", "C02_f9.tif"):
        tifffile.imwrite(src / name, flat)
    cfg = _cfg(tmp_path, sim, models, inputs=[str(src)], pixel_size_um=px, layout_pattern=r"(?P<condition>[A-H])[0-9]{2}_f(?P<field>[0-9]+)")
    info = run_batch(cfg)
    q = info["segmentation_qc"]
    assert {"C01_f8", "C02_f9"} <= set(q["flagged"]) and q["lost_groups"] == ["C"]
    assert q["images"]["C01_f8"]["reason"] == "segmentation found no cell" and q["settings"]["grouped_by"] == "condition"
    run = Path(cfg.out)
    assert json.loads((run / "run.json").read_text())["stages"]["predict"]["segmentation_qc"]["lost_groups"] == ["C"]
    ev = evaluate_run(run, figures=False)
    assert ev["segmentation_qc"]["lost_groups"] == ["C"]
    html = write_report(run).read_text()
    assert "Segmentation quality control" in html and "Every image of C is flagged" in html and "C02_f9" in html
