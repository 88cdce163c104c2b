"""What the simulated RT-DC files record against the settings that made them: the time feature
is frame / frame rate, the ROI size is (x = columns, y = rows), and with conditions the cells
scatter log-normally around their replicate's median with the configured sigma."""

from __future__ import annotations

import numpy as np

from mechanoscope.simulate.channel import ChannelSimConfig, _draw_cells, _metadata
from mechanoscope.simulate.conditions import ConditionsDesign


def test_time_and_roi_are_the_configured_ones(tmp_path, monkeypatch):
    import dclab

    from mechanoscope.simulate import channel

    # the look-up table's inversion (11 s of scipy griddata) is tested elsewhere: a fixed deformation here
    monkeypatch.setattr(channel, "lut_deformation", lambda area, e, cfg: np.full(len(area), 0.03))
    cfg = ChannelSimConfig(n_events=2, roi_px=(64, 120), frame_rate_hz=4000.0, texture_amplitude=0.0, youngs_modulus_range_pa=(1200.0, 1500.0))
    sim = channel.simulate_channel(tmp_path / "sim", cfg, seed=4)
    with dclab.new_dataset(sim.files[0]) as ds:
        assert ds.config["imaging"]["roi size x"] == 120 and ds.config["imaging"]["roi size y"] == 64
        assert ds["image"].shape[1:] == (64, 120)
        assert len(ds) == 2 and list(ds["frame"]) == [1, 8]  # frame 1 + 7 k
        np.testing.assert_allclose(ds["time"], ds["frame"] / 4000.0)
    meta = _metadata(ChannelSimConfig(roi_px=(30, 70)), "s")["imaging"]
    assert (meta["roi size x"], meta["roi size y"], meta["pixel size"]) == (70, 30, 0.34)


def test_cells_scatter_around_their_replicate_median_with_the_configured_sigma():
    design = ConditionsDesign(names=["A", "B"], medians_pa=[1000.0, 2000.0], replicates=2, replicate_sd_ln=0.1, cell_sigma_ln=0.4)
    cells = _draw_cells(ChannelSimConfig(conditions=design, events_per_sample=500), np.random.default_rng(0))
    assert len(cells) == 2000 and sorted(cells["sample"].unique()) == ["A_r1", "A_r2", "B_r1", "B_r2"]
    ln = np.log(cells["stiffness_pa"] / cells["replicate_median_pa"])
    for _, g in ln.groupby(cells["sample"]):
        assert abs(g.mean()) < 0.06 and 0.36 < g.std() < 0.44  # N(0, 0.4²): se of the sd 0.013
    d = cells["diameter_um"]
    np.testing.assert_allclose(cells["area_true_um2"], np.pi * (d / 2) ** 2)
    assert abs(d.mean() - 11.0) < 0.1 and abs(d.std() / d.mean() - 0.08) < 0.01
