"""Learned segmentation: model folders, training, tiled inference, instances, CLI.

Everything runs on tiny synthetic images of disks (some touching) with a tiny U-Net,
so the whole module takes seconds on two CPU cores.
"""

from __future__ import annotations

import json
import struct

import numpy as np
import pytest
import torch
from pydantic import ValidationError
from skimage.draw import disk
from typer.testing import CliRunner

from mechanoscope.errors import ConfigError, MechanoscopeError, OutputFolderError
from mechanoscope.evaluate.segmentation import match_instances, segmentation_scores
from mechanoscope.io.model_folder import (
    MODEL_FILES,
    MODEL_SCHEMA_VERSION,
    ModelFolderError,
    ModelSchemaError,
    load_model_folder,
    provenance,
    save_model_folder,
)
from mechanoscope.segment.network import (
    SegmentationTrainConfig,
    load_segmentation_model,
    predict_logits_tiled,
    predict_probabilities,
    probabilities_to_labels,
    segment_network,
    segmentation_targets,
)
from mechanoscope.segment.network_train import train_segmentation

torch.set_num_threads(1)  # tests run two workers on two cores

TINY = dict(
    epochs=2,
    batch_size=8,
    patch_size_px=48,
    patches_per_epoch=64,
    channels=(8, 16, 32),
    num_res_units=1,
    learning_rate=1e-2,
    validation_fraction=0.25,
    seed=0,
)


def disks(seed: int, size: int = 96) -> tuple[np.ndarray, np.ndarray]:
    """A bright-disk image (uint16) and its labels: one overlapping pair + loose disks."""
    rng = np.random.default_rng(seed)
    lab = np.zeros((size, size), np.int32)
    cy, cx = (int(v) for v in rng.integers(22, size - 22, 2))
    for k, dx in enumerate((-8, 8), start=1):  # two disks sharing a contact line
        rr, cc = disk((cy, cx + dx), 9, shape=lab.shape)
        lab[rr, cc] = k
    k = 2
    for _ in range(8):
        c = tuple(int(v) for v in rng.integers(10, size - 10, 2))
        rr, cc = disk(c, int(rng.integers(6, 11)), shape=lab.shape)
        if (lab[rr, cc] > 0).any():
            continue
        k += 1
        lab[rr, cc] = k
    img = 0.2 + 0.6 * (lab > 0) + rng.normal(0, 0.08, lab.shape)
    return (img * 1000).clip(0, 65535).astype(np.uint16), lab


@pytest.fixture(scope="module")
def trained(tmp_path_factory):
    """A tiny model trained for two epochs; returns (folder, progress records)."""
    data = [disks(s) for s in range(4)]
    records = []
    out = tmp_path_factory.mktemp("seg") / "model"
    path = train_segmentation(
        [d[0] for d in data],
        [d[1] for d in data],
        pixel_sizes_um=1.0,
        config=SegmentationTrainConfig(**TINY),
        out=out,
        progress=lambda e, n, row: records.append((e, n, row)),
    )
    return path, records


# --------------------------------------------------------------------------- model folder
def _tiny_folder(path, **kw):
    net = torch.nn.Conv2d(1, 2, 3)
    args = dict(
        config={"task": "test", "pixel_size_um": 0.65},
        state_dict=net.state_dict(),
        normalization={"method": "percentile", "percentiles": [1, 99.8]},
        metrics={"auc": 0.9, "bad": float("nan")},
        provenance=provenance(seed=3, command="pytest", inputs={"a.tif": "00"}),
        model_card="# test model",
    )
    args.update(kw)
    return save_model_folder(path, **args), net


def test_model_folder_round_trip(tmp_path):
    folder, net = _tiny_folder(tmp_path / "m")
    assert sorted(p.name for p in folder.iterdir()) == sorted(MODEL_FILES)
    mf = load_model_folder(folder)
    assert mf.config["schema_version"] == MODEL_SCHEMA_VERSION
    assert mf.config["mechanoscope_version"] and mf.config["pixel_size_um"] == 0.65
    for k, v in net.state_dict().items():
        assert torch.equal(mf.state_dict[k], v)
    assert mf.metrics == {"auc": 0.9, "bad": None}  # strict JSON: NaN -> null
    prov = mf.provenance
    assert prov["seed"] == 3 and prov["command"] == "pytest" and prov["inputs_sha256"] == {"a.tif": "00"}
    assert prov["versions"]["torch"] and prov["versions"]["monai"] and prov["python"]
    # safetensors, not pickle: 8-byte header length, then a JSON header
    raw = (folder / "weights.safetensors").read_bytes()
    (n,) = struct.unpack("<Q", raw[:8])
    json.loads(raw[8 : 8 + n])
    # no temporary folders left next to it
    assert [p.name for p in tmp_path.iterdir()] == ["m"]


def test_model_folder_refuses_to_overwrite_unless_asked(tmp_path):
    folder, _ = _tiny_folder(tmp_path / "m")
    with pytest.raises(OutputFolderError, match="already exists"):
        _tiny_folder(folder)
    _tiny_folder(folder, model_card="# second", overwrite=True)
    assert load_model_folder(folder).model_card.startswith("# second")
    (tmp_path / "other").mkdir()
    (tmp_path / "other" / "notes.txt").write_text("x")
    with pytest.raises(OutputFolderError, match="not a mechanoscope model folder"):
        _tiny_folder(tmp_path / "other", overwrite=True)


def test_schema_version_mismatch_is_a_loud_error(tmp_path):
    folder, _ = _tiny_folder(tmp_path / "m")
    cfg = json.loads((folder / "config.json").read_text())
    cfg["schema_version"] = 999
    (folder / "config.json").write_text(json.dumps(cfg))
    with pytest.raises(ModelSchemaError) as err:
        load_model_folder(folder)
    msg = str(err.value)
    assert "999" in msg and str(MODEL_SCHEMA_VERSION) in msg and "retrain" in msg


def test_missing_files_are_all_named(tmp_path):
    folder, _ = _tiny_folder(tmp_path / "m")
    (folder / "weights.safetensors").unlink()
    (folder / "metrics.json").unlink()
    with pytest.raises(ModelFolderError) as err:
        load_model_folder(folder)
    assert "weights.safetensors" in str(err.value) and "metrics.json" in str(err.value)
    assert "config.json" not in str(err.value)
    with pytest.raises(ModelFolderError, match="no such model folder"):
        load_model_folder(tmp_path / "nowhere")


def test_segmentation_model_round_trip_gives_identical_predictions(trained, tmp_path):
    path, _ = trained
    m1 = load_segmentation_model(path)
    mf = load_model_folder(path)
    copy = save_model_folder(
        tmp_path / "copy", config=mf.config, state_dict=m1.net.state_dict(),
        normalization=mf.normalization, metrics=mf.metrics, provenance=mf.provenance,
        model_card=mf.model_card,
    )
    m2 = load_segmentation_model(copy)
    img, _ = disks(50)
    p1 = predict_probabilities(img, pixel_size_um=1.0, model=m1)
    p2 = predict_probabilities(img, pixel_size_um=1.0, model=m2)
    assert np.array_equal(p1, p2)
    assert np.array_equal(
        segment_network(img, pixel_size_um=1.0, model=m1), segment_network(img, pixel_size_um=1.0, model=copy)
    )


def test_segmentation_folder_of_another_task_is_rejected(tmp_path):
    folder, _ = _tiny_folder(tmp_path / "m")
    with pytest.raises(ModelFolderError, match="not a segmentation model"):
        load_segmentation_model(folder)


# --------------------------------------------------------------------------- training
def test_config_rejects_unknown_keys_and_bad_patch_size(tmp_path):
    with pytest.raises(ValidationError):
        SegmentationTrainConfig(epochs=2, learning_rat=0.1)
    img, lab = disks(0)
    with pytest.raises(ConfigError, match="multiple of the network's total stride"):
        train_segmentation([img], [lab], pixel_sizes_um=1.0, out=tmp_path / "m",
                           config=SegmentationTrainConfig(**{**TINY, "patch_size_px": 49}))
    with pytest.raises(MechanoscopeError, match="label image"):
        train_segmentation([img, img], [lab], pixel_sizes_um=1.0, out=tmp_path / "m")


def test_two_epochs_learn_to_find_cells(trained):
    path, records = trained
    m = load_segmentation_model(path)
    dices, baselines = [], []
    for seed in (100, 101, 102):
        img, lab = disks(seed)
        pred = segment_network(img, pixel_size_um=1.0, model=m)
        assert pred.shape == lab.shape and pred.dtype == np.int32
        dices.append(segmentation_scores(pred, lab)["dice"])
        f = (lab > 0).mean()
        baselines.append(2 * f / (1 + f))  # Dice of calling every pixel a cell
    # seeds 0..5 give 0.86..0.99 after two epochs; all-foreground gives < 0.3
    assert min(dices) > 0.7, dices
    assert min(dices) > max(baselines) + 0.35
    # epoch log, progress callback and metrics
    assert [r[0] for r in records] == [1, 2] and records[0][1] == 2
    log = (path / "training_log.csv").read_text().splitlines()
    assert log[0].startswith("epoch,train_loss,val_loss") and len(log) == 3
    metrics = json.loads((path / "metrics.json").read_text())
    assert metrics["n_validation_images"] == 1 and metrics["n_train_images"] == 3
    assert metrics["validation_scores"]["dice"] > 0.7
    cfg = json.loads((path / "config.json").read_text())
    assert cfg["task"] == "instance_segmentation" and cfg["pixel_size_um"] == 1.0
    assert cfg["classes"] == ["background", "interior", "boundary"]
    norm = json.loads((path / "normalization.json").read_text())
    assert norm["percentiles"] == [1.0, 99.8]
    assert not path.with_name(path.name + ".partial").exists()


def test_thresholds_are_chosen_on_validation_images_and_stored(trained):
    path, _ = trained
    metrics = json.loads((path / "metrics.json").read_text())
    search = metrics["threshold_search"]
    assert search["n_images"] == 1
    assert search["chosen"]["val_ap_50"] >= search["configured_default"]["val_ap_50"]
    inf = load_segmentation_model(path).config.inference
    for key in ("interior_threshold", "foreground_threshold", "min_cell_area_um2"):
        assert getattr(inf, key) == pytest.approx(search["chosen"][key])
    # the stored validation scores are those of the chosen settings
    assert metrics["validation_scores"]["ap_50"] == pytest.approx(search["chosen"]["val_ap_50"])


def test_training_is_repeatable_with_a_seed(tmp_path):
    data = [disks(s, 64) for s in range(3)]
    cfg = SegmentationTrainConfig(**{**TINY, "epochs": 1, "patches_per_epoch": 16, "patch_size_px": 32})
    a = train_segmentation([d[0] for d in data], [d[1] for d in data], pixel_sizes_um=1.0, config=cfg, out=tmp_path / "a")
    b = train_segmentation([d[0] for d in data], [d[1] for d in data], pixel_sizes_um=1.0, config=cfg, out=tmp_path / "b")
    wa, wb = load_model_folder(a).state_dict, load_model_folder(b).state_dict
    assert wa.keys() == wb.keys() and all(torch.equal(wa[k], wb[k]) for k in wa)


def test_early_stopping_follows_the_validation_loss(tmp_path):
    data = [disks(s, 64) for s in range(3)]
    cfg = SegmentationTrainConfig(**{
        **TINY, "epochs": 8, "early_stopping_patience": 1, "patches_per_epoch": 8,
        "patch_size_px": 32, "learning_rate": 0.3,
    })
    path = train_segmentation([d[0] for d in data], [d[1] for d in data], pixel_sizes_um=1.0,
                              config=cfg, out=tmp_path / "m")
    rows = (path / "training_log.csv").read_text().splitlines()[1:]
    val = [float(r.split(",")[2]) for r in rows]
    best = [min(val[: i + 1]) for i in range(len(val))]
    first_worse = next((i + 1 for i in range(1, len(val)) if val[i] >= best[i - 1]), None)
    metrics = json.loads((path / "metrics.json").read_text())
    # training stops at the first epoch without a lower validation loss (patience 1)
    assert len(rows) == (first_worse or 8) == metrics["epochs_run"]
    assert metrics["best_epoch"] == int(np.argmin(val)) + 1
    assert metrics["stopped_early"] == (first_worse is not None and first_worse < 8)


# --------------------------------------------------------------------------- tiling
def test_tiled_inference_equals_untiled(trained):
    m = load_segmentation_model(trained[0])
    img, _ = disks(7, size=150)
    whole = m.config.inference.model_copy(update={"tile_size_px": 1024})
    tiled = m.config.inference.model_copy(update={"tile_size_px": 48})  # automatic overlap
    p_whole = predict_probabilities(img, pixel_size_um=1.0, model=m, inference=whole)
    shapes = []
    hook = m.inference_net().register_forward_hook(lambda mod, inp, out: shapes.append(tuple(inp[0].shape)))
    try:
        p_tiled = predict_probabilities(img, pixel_size_um=1.0, model=m, inference=tiled)
    finally:
        hook.remove()
    assert len(shapes) > 4 and all(s[-2:] == (48, 48) and s[0] <= tiled.tile_batch for s in shapes)
    assert np.abs(p_tiled - p_whole).max() < 1e-5
    assert np.allclose(p_tiled.sum(axis=0), 1.0, atol=1e-5)
    l_whole = segment_network(img, pixel_size_um=1.0, model=m, inference=whole)
    l_tiled = segment_network(img, pixel_size_um=1.0, model=m, inference=tiled)
    assert np.array_equal(l_whole, l_tiled)


def test_blending_has_no_seams_even_with_a_small_overlap():
    # an identity "network" on a smooth ramp: any weighting error would show as a step
    net = torch.nn.Conv2d(1, 1, 1, bias=False)
    torch.nn.init.ones_(net.weight)
    img = np.add.outer(np.linspace(0, 1, 70), np.linspace(0, 2, 90)).astype(np.float32)
    out = predict_logits_tiled(net.eval(), img, tile_size_px=32, tile_overlap_px=8, rf_radius_px=0, stride=1)
    assert np.abs(out[0] - img).max() < 1e-5
    with pytest.raises(ConfigError, match="tile size"):
        predict_logits_tiled(net, img, tile_size_px=32, tile_overlap_px=40, rf_radius_px=0, stride=1)


# --------------------------------------------------------------------------- instances
def test_instance_extraction_splits_touching_disks_from_perfect_probabilities():
    lab = np.zeros((60, 80), np.int32)
    lab[disk((30, 28), 13, shape=lab.shape)] = 1
    lab[disk((30, 50), 13, shape=lab.shape)] = 2  # overlaps disk 1: a shared contact line
    assert np.count_nonzero((lab == 1)) > 0
    target = segmentation_targets(lab, boundary_width_px=2)
    assert set(np.unique(target)) == {0, 1, 2}
    prob = np.stack([(target == c).astype(np.float32) for c in range(3)])
    pred = probabilities_to_labels(prob, pixel_size_um=1.0, min_cell_area_um2=10)
    assert pred.max() == 2
    match = match_instances(pred, lab, iou_threshold=0.9)
    assert match.tp == 2 and match.fp == 0 and match.fn == 0


def test_small_cells_without_a_marker_are_kept_and_specks_removed():
    prob = np.zeros((3, 40, 40), np.float32)
    prob[0] = 1
    prob[:, 5:10, 5:10] = [[[0]], [[0]], [[1]]]  # 25 px, all boundary: still a cell
    prob[:, 30:32, 30:32] = [[[0]], [[1]], [[0]]]  # 4 px speck
    pred = probabilities_to_labels(prob, pixel_size_um=1.0, min_cell_area_um2=10)
    assert pred.max() == 1 and pred[7, 7] == 1 and pred[31, 31] == 0


# --------------------------------------------------------------------------- resampling
@pytest.mark.parametrize("factor", [0.5, 2.0])
def test_resampling_to_model_pixel_size_keeps_input_shape(trained, factor):
    from skimage.transform import resize

    m = load_segmentation_model(trained[0])  # trained at 1.0 µm/px
    img, lab = disks(103, size=96)
    shape = (int(96 / factor), int(96 / factor))  # same field of view, other pixel size
    img2 = resize(img.astype(np.float32), shape, order=1, preserve_range=True, anti_aliasing=factor > 1)
    lab2 = resize(lab, shape, order=0, preserve_range=True, anti_aliasing=False).astype(np.int32)
    pred = segment_network(img2, pixel_size_um=factor, model=m)
    assert pred.shape == img2.shape
    assert segmentation_scores(pred, lab2)["dice"] > 0.7


# --------------------------------------------------------------------------- CLI
def test_cli_train_and_segment(trained, tmp_path):
    from mechanoscope.cli.main import app
    from mechanoscope.io.images import read_label_image, write_image, write_label_image

    runner = CliRunner()
    imgs, masks = tmp_path / "imgs", tmp_path / "masks"
    for s in range(3):
        img, lab = disks(200 + s, 64)
        write_image(imgs / f"f{s}.tif", img, pixel_size_um=1.0)
        write_label_image(masks / f"f{s}_masks.tif", lab, pixel_size_um=1.0)
    r = runner.invoke(app, [
        "segment", "train", str(imgs), str(masks), "--out", str(tmp_path / "model"), "--epochs", "1",
        "--patch-size-px", "32", "--patches-per-epoch", "8", "--channels", "4,8,16", "--seed", "1",
    ])
    assert r.exit_code == 0, r.output
    assert load_model_folder(tmp_path / "model").config["train_config"]["channels"] == [4, 8, 16]
    r = runner.invoke(app, ["segment", "train", str(imgs), str(masks), "--out", str(tmp_path / "model")])
    assert r.exit_code == 2 and "already exists" in " ".join(r.output.split())

    (imgs / "broken.tif").write_bytes(b"not a tiff")
    run = tmp_path / "run"
    # the form: `segment IMAGES --method MODEL --out RUN`
    r = runner.invoke(app, ["segment", str(imgs), "--method", str(trained[0]), "--out", str(run)])
    assert r.exit_code == 1, r.output  # one image failed: the batch finishes, and says so
    assert "broken.tif" in r.output.replace("\n", "") and "Traceback" not in r.output
    assert r.output.strip().splitlines()[-1].startswith("1 of 4 image(s) failed")
    lab = read_label_image(run / "labels" / "f0.tif")
    assert lab.data.shape == (64, 64) and lab.pixel_size_um == pytest.approx(1.0) and lab.data.max() > 0
    rec = json.loads((run / "segment.json").read_text())
    assert rec["settings"]["method"] == "network" and rec["images"]["broken"]["status"] == "failed"
    assert rec["images"]["f1"]["status"] == "done"
    # re-running skips finished images
    before = (run / "labels" / "f0.tif").stat().st_mtime_ns
    r = runner.invoke(app, ["segment", "run", str(imgs), "--method", str(trained[0]), "--out", str(run)])
    assert r.exit_code == 1 and "3 already done" in " ".join(r.output.split())  # broken.tif is still there
    assert (run / "labels" / "f0.tif").stat().st_mtime_ns == before
    # other settings into the same run folder: refused
    r = runner.invoke(app, ["segment", "run", str(imgs), "--method", "classical", "--out", str(run)])
    assert r.exit_code == 2 and "different settings" in " ".join(r.output.split())
    r = runner.invoke(app, ["segment", "run", str(imgs), "--method", str(tmp_path / "nope"), "--out", str(run)])
    assert r.exit_code == 2 and "no such model folder" in " ".join(r.output.split())


# --------------------------------------------------------------------------- representations
@pytest.mark.parametrize("rep", ["classes3", "distance", "hover"])
def test_perfect_maps_of_every_representation_give_back_the_cells(rep):
    """Targets of a label image with touching disks, read back as if the network had
    predicted them exactly, give every cell back (AP@0.5 = AP@0.9 = 1)."""
    from mechanoscope.segment.distance_targets import maps_to_labels, representation_targets

    _, lab = disks(3)
    t = representation_targets(lab, rep)
    maps = np.stack([(t[0] == c).astype(np.float32) for c in range(3)]) if rep == "classes3" else t
    pred = maps_to_labels(maps, rep, pixel_size_um=1.0, min_cell_area_um2=10)
    sc = segmentation_scores(pred, lab)
    assert pred.max() == lab.max()
    assert sc["ap_50"] == 1.0 and sc["ap_50_95"] > 0.9


def test_distance_target_is_one_at_each_cell_centre_and_zero_outside():
    from mechanoscope.segment.distance_targets import distance_targets

    _, lab = disks(1)
    t = distance_targets(lab)
    for i in range(1, int(lab.max()) + 1):
        assert t[1][lab == i].max() == pytest.approx(1.0)
    assert np.all(t[1][lab == 0] == 0) and np.array_equal(t[0] > 0, lab > 0)


@pytest.mark.parametrize("view", [(1, 0, 0), (0, 1, 0), (0, 0, 1), (1, 1, 0), (1, 1, 1)])
def test_dihedral_views_of_hover_targets_equal_targets_of_the_turned_labels(view):
    from mechanoscope.segment.distance_targets import dihedral_target, hover_targets

    _, lab = disks(2)
    tr, fy, fx = view
    turned = lab.T if tr else lab
    turned = turned[::-1] if fy else turned
    turned = turned[:, ::-1] if fx else turned
    np.testing.assert_allclose(dihedral_target(hover_targets(lab), "hover", *view),
                               hover_targets(np.ascontiguousarray(turned)), atol=1e-5)


def test_distance_representation_trains_and_segments(tmp_path):
    data = [disks(s) for s in range(4)]
    cfg = SegmentationTrainConfig(**TINY, representation="distance", scale_range=(0.8, 1.25), blur_sigma_max_px=1.0)
    out = train_segmentation([d[0] for d in data], [d[1] for d in data], pixel_sizes_um=1.0, config=cfg, out=tmp_path / "m")
    model = load_segmentation_model(out, device="cpu")
    assert model.config.representation == "distance"
    assert json.loads((out / "config.json").read_text())["architecture"]["out_channels"] == 2
    prob = predict_probabilities(data[0][0], pixel_size_um=1.0, model=model)
    assert prob.shape == (2, 96, 96) and 0 <= prob.min() and prob.max() <= 1
    lab = segment_network(data[0][0], pixel_size_um=1.0, model=model)
    assert lab.shape == (96, 96) and lab.dtype == np.int32
