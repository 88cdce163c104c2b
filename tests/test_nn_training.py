"""The one training loop (nn.training.fit_network) and its early-stopping rule."""

from __future__ import annotations

import time

import numpy as np
import pytest
import torch

from mechanoscope.nn.training import EarlyStopping, autocast_dtype, fit_network


def _linear_problem(n=64, seed=0):
    g = torch.Generator().manual_seed(seed)
    x = torch.randn(n, 3, generator=g)
    w = torch.tensor([[1.5], [-2.0], [0.5]])
    return x, x @ w + 0.25


def _batches(x, y, size=16):
    def gen(epoch):
        for s in range(0, len(x), size):
            yield x[s : s + size], y[s : s + size]

    return gen


def test_fit_recovers_a_linear_model_and_reports_every_epoch():
    torch.manual_seed(0)
    x, y = _linear_problem()
    net = torch.nn.Linear(3, 1)
    opt = torch.optim.SGD(net.parameters(), lr=0.1)
    seen = []
    res = fit_network(net, train_batches=_batches(x, y), loss_fn=torch.nn.functional.mse_loss, optimizer=opt, epochs=60,
                      device=torch.device("cpu"), on_epoch=seen.append)
    assert [r.epoch for r in seen] == list(range(1, 61)) and res.records == seen
    assert net.weight.detach().numpy().ravel() == pytest.approx([1.5, -2.0, 0.5], abs=1e-3)
    assert float(net.bias) == pytest.approx(0.25, abs=1e-3)
    # the training loss is the batch-size weighted mean over the epoch: check the last epoch against a recomputation
    # (weights change within an epoch, so only the final loss is checked loosely; it must be near 0)
    assert seen[-1].train_loss < 1e-5 and seen[0].train_loss > 1.0
    assert res.best_epoch > 30 and not res.stopped_early and not net.training  # (at the noise floor later epochs may tie)


def test_the_best_epoch_is_kept_and_early_stopping_counts_from_the_start():
    x, y = _linear_problem()
    net = torch.nn.Linear(3, 1)
    opt = torch.optim.SGD(net.parameters(), lr=0.05)
    scripted = iter([3.0, 1.0, 2.0, 1.5, 0.5])
    weights = {}

    def validate():
        return {"val_loss": next(scripted)}

    def on_epoch(rec):
        weights[rec.epoch] = net.weight.detach().clone()

    res = fit_network(net, train_batches=_batches(x, y), loss_fn=torch.nn.functional.mse_loss, optimizer=opt, epochs=5,
                      device=torch.device("cpu"), validate=validate,
                      stopper=EarlyStopping(5, patience=2, count_after_fraction=0.0, min_delta=0.0), on_epoch=on_epoch)
    # epochs 3 and 4 do not beat epoch 2: patience 2 stops after epoch 4; epoch 2's weights are loaded back
    assert [r.monitored for r in res.records] == [3.0, 1.0, 2.0, 1.5]
    assert [r.improved for r in res.records] == [True, True, False, False]
    assert res.best_epoch == 2 and res.stopped_early
    assert torch.equal(net.weight.detach(), weights[2]) and not torch.equal(weights[2], weights[4])


def test_keep_last_weights_and_deadline():
    x, y = _linear_problem()
    net = torch.nn.Linear(3, 1)
    opt = torch.optim.SGD(net.parameters(), lr=0.05)
    losses = iter([1.0, 2.0, 3.0])
    res = fit_network(net, train_batches=_batches(x, y), loss_fn=torch.nn.functional.mse_loss, optimizer=opt, epochs=3,
                      device=torch.device("cpu"), validate=lambda: {"val_loss": next(losses)}, keep_best=False)
    last = net.weight.detach().clone()
    assert res.best_epoch == 1 and len(res.records) == 3  # best noted, but the last weights are kept
    # a deadline already passed: one epoch runs, then training stops
    net2 = torch.nn.Linear(3, 1)
    res2 = fit_network(net2, train_batches=_batches(x, y), loss_fn=torch.nn.functional.mse_loss,
                       optimizer=torch.optim.SGD(net2.parameters(), lr=0.05), epochs=10, device=torch.device("cpu"),
                       deadline=time.perf_counter() - 1.0)
    assert len(res2.records) == 1 and res2.stopped_early
    assert not torch.equal(last, torch.zeros_like(last))


def test_stiffness_rule_counts_stale_epochs_only_after_annealing():
    s = EarlyStopping(epochs=10, patience=2)  # count_after_fraction 0.6: stale epochs count from epoch 7 on
    out = [s.update(v) for v in [1.0, 2.0, 2.0, 2.0, 2.0, 2.0, 2.0, 2.0]]
    assert out[0] == (True, False)
    assert [stop for _, stop in out] == [False] * 7 + [True]
    t = EarlyStopping(epochs=10, patience=1, min_delta=0.1)
    assert t.update(1.0) == (True, False) and t.update(0.95)[0] is False  # within min_delta: not an improvement


def test_mixed_precision_is_off_on_the_cpu():
    assert autocast_dtype(torch.device("cpu")) is None
    if torch.cuda.is_available():  # pragma: no cover - GPU machines only
        assert autocast_dtype(torch.device("cuda")) in (torch.bfloat16, torch.float16)


def test_batches_move_to_the_device_and_seeded_runs_repeat():
    x, y = _linear_problem(32, seed=3)

    def run():
        torch.manual_seed(5)
        net = torch.nn.Sequential(torch.nn.Linear(3, 8), torch.nn.ReLU(), torch.nn.Linear(8, 1))
        fit_network(net, train_batches=_batches(x, y, 8), loss_fn=torch.nn.functional.mse_loss,
                    optimizer=torch.optim.Adam(net.parameters(), lr=1e-2), epochs=3, device=torch.device("cpu"))
        return np.concatenate([p.detach().numpy().ravel() for p in net.parameters()])

    np.testing.assert_array_equal(run(), run())
