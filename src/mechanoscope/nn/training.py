"""The one training loop of every network (segmentation U-Net, stiffness CNNs).

:func:`fit_network` runs epochs of mini-batch gradient descent, validates after each
epoch, keeps the weights of the best epoch, stops early by :class:`EarlyStopping`'s
rule or at a deadline, and reports every epoch to a callback. What differs between
networks is passed in: where the batches come from (augmentation, patch sampling),
the loss, the optimiser and learning-rate schedule, and how validation is scored.

Mixed precision: on a CUDA GPU the forward pass and loss run under
``torch.autocast`` (bfloat16 where the GPU supports it, else float16 with a gradient
scaler); on the CPU training stays in float32 (bfloat16 autocast on CPUs is slower
than float32 for these small networks and changes the numbers).
"""

from __future__ import annotations

import contextlib
import math
import time
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field
from typing import Any

__all__ = ["EarlyStopping", "EpochRecord", "FitResult", "fit_network", "autocast_dtype"]


class EarlyStopping:
    """Keep the best epoch; stop after ``patience`` epochs without improvement.

    Parameters
    ----------
    epochs
        Planned number of epochs.
    patience
        Epochs without improvement after which training stops.
    count_after_fraction
        Epochs without improvement are counted only after this fraction of ``epochs``
        (the stiffness networks use 0.6: before that the one-cycle learning rate is
        still high and the validation loss noisy, and a lucky early epoch must not end
        training before the rate has annealed); 0 counts from the first epoch.
    min_delta
        A loss counts as an improvement only if it is lower than the best by more
        than this.
    """

    def __init__(self, epochs: int, patience: int, *, count_after_fraction: float = 0.6, min_delta: float = 1e-6) -> None:
        self.anneal_start = int(count_after_fraction * epochs)
        self.patience = patience
        self.min_delta = min_delta
        self.best = math.inf
        self.stale = 0
        self.epoch = 0

    def update(self, val_loss: float) -> tuple[bool, bool]:
        """Record one epoch's validation loss; returns (improved, stop)."""
        self.epoch += 1
        improved = val_loss < self.best - self.min_delta
        if improved:
            self.best, self.stale = val_loss, 0
        elif self.epoch > self.anneal_start:
            self.stale += 1
        return improved, self.stale >= self.patience


@dataclass
class EpochRecord:
    """One epoch of :func:`fit_network`.

    Attributes
    ----------
    epoch
        1-based epoch number.
    train_loss
        Mean training loss of the epoch, weighted by batch size.
    validation
        What ``validate`` returned (e.g. ``val_loss``, ``val_accuracy``); empty without it.
    monitored
        The loss early stopping and the best-epoch choice looked at: ``validation["val_loss"]``
        with a validation, else the training loss.
    improved
        Whether this epoch is the best so far.
    seconds
        Wall time of this epoch (training and validation).
    """

    epoch: int
    train_loss: float
    validation: dict[str, float]
    monitored: float
    improved: bool
    seconds: float


@dataclass
class FitResult:
    """What :func:`fit_network` did: ``records`` per epoch, the kept ``best_epoch`` and whether it ``stopped_early``."""

    records: list[EpochRecord] = field(default_factory=list)
    best_epoch: int = 0
    stopped_early: bool = False


def autocast_dtype(device: Any) -> Any | None:
    """The mixed-precision dtype for ``device``: bfloat16/float16 on CUDA, ``None`` (float32) on the CPU."""
    import torch

    if getattr(device, "type", str(device)) != "cuda":
        return None
    return torch.bfloat16 if torch.cuda.is_bf16_supported() else torch.float16


def fit_network(
    net: Any,
    *,
    train_batches: Callable[[int], Iterable[tuple[Any, Any]]],
    loss_fn: Callable[[Any, Any], Any],
    optimizer: Any,
    epochs: int,
    device: Any,
    scheduler: Any | None = None,
    validate: Callable[[], dict[str, float]] | None = None,
    stopper: EarlyStopping | None = None,
    keep_best: bool = True,
    deadline: float | None = None,
    on_epoch: Callable[[EpochRecord], None] | None = None,
    mixed_precision: bool = True,
) -> FitResult:
    """Train ``net`` in place for up to ``epochs`` epochs.

    Parameters
    ----------
    net
        A ``torch.nn.Module`` already on ``device``.
    train_batches
        ``train_batches(epoch)`` yields the epoch's ``(x, y)`` batches (tensors on any
        device; they are moved to ``device``). Shuffling and augmentation happen there,
        with the caller's seeded generators, so runs are reproducible.
    loss_fn
        ``loss_fn(net(x), y)`` → scalar tensor.
    optimizer, scheduler
        A torch optimiser, and optionally a learning-rate scheduler stepped after every batch.
    epochs
        Most epochs to run.
    device
        ``torch.device`` the network is on.
    validate
        Called after every epoch with the network in eval mode and without gradients;
        returns scores, of which ``val_loss`` is monitored. ``None``: the training loss
        is monitored.
    stopper
        Early-stopping rule; ``None`` runs all epochs.
    keep_best
        Load the weights of the best (monitored) epoch at the end; ``False`` keeps the
        last epoch's weights (refitting for a fixed number of epochs).
    deadline
        ``time.perf_counter()`` value after which no new epoch starts.
    on_epoch
        Called with each :class:`EpochRecord`.
    mixed_precision
        Use autocast on CUDA (see the module docstring); no effect on the CPU.

    Returns
    -------
    FitResult
    """
    import torch

    amp_dtype = autocast_dtype(device) if mixed_precision else None
    scaler = torch.amp.GradScaler("cuda") if amp_dtype is torch.float16 else None

    def autocast() -> Any:
        if amp_dtype is None:
            return contextlib.nullcontext()
        return torch.autocast(device_type="cuda", dtype=amp_dtype)

    result = FitResult()
    best_state: dict[str, Any] | None = None
    for epoch in range(1, epochs + 1):
        t0 = time.perf_counter()
        net.train()
        total, count = 0.0, 0
        for xb, yb in train_batches(epoch):
            xb = xb.to(device, non_blocking=True)
            yb = yb.to(device, non_blocking=True)
            optimizer.zero_grad(set_to_none=True)
            with autocast():
                loss = loss_fn(net(xb), yb)
            if scaler is not None:
                scaler.scale(loss).backward()
                scaler.step(optimizer)
                scaler.update()
            else:
                loss.backward()
                optimizer.step()
            if scheduler is not None:
                scheduler.step()
            total += float(loss.detach()) * len(xb)
            count += len(xb)
        train_loss = total / max(count, 1)
        validation: dict[str, float] = {}
        if validate is not None:
            net.eval()
            with torch.inference_mode(), autocast():
                validation = dict(validate())
        monitored = float(validation["val_loss"]) if validate is not None else train_loss
        if stopper is not None:
            improved, stop = stopper.update(monitored)
        else:
            improved, stop = (not result.records or monitored < min(r.monitored for r in result.records)), False
        if improved:
            result.best_epoch = epoch
            if keep_best:
                best_state = {k: v.detach().cpu().clone() for k, v in net.state_dict().items()}
        record = EpochRecord(epoch, train_loss, validation, monitored, improved, time.perf_counter() - t0)
        result.records.append(record)
        if on_epoch is not None:
            on_epoch(record)
        if stop:
            result.stopped_early = epoch < epochs
            break
        if deadline is not None and time.perf_counter() > deadline:
            result.stopped_early = epoch < epochs
            break
    if keep_best and best_state is not None:
        net.load_state_dict(best_state)
    net.eval()
    return result
