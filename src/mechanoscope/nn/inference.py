"""The one batched inference routine of every network, with test-time augmentation.

Cells and label-free images have no preferred orientation, so the 8 views of the
dihedral group (4 rotations by 90°, each with and without a mirror) are equally valid
inputs. :func:`forward_tta` averages a network's outputs over them: for per-image
outputs (class logits, a standardised log-modulus) the outputs are averaged as they
are; for dense outputs (per-pixel logits of the segmentation U-Net) each output is
first turned back to the input's orientation. The cost is 8 forward passes.
:func:`predict_batched` runs one or several networks over an array in batches.

Inference helpers (no change to a network's numbers beyond float rounding):
:func:`fuse_for_inference` folds each convolution's BatchNorm into the convolution of
an eval copy; :func:`forward_tta_capture` also returns the input of one layer (e.g. the
penultimate features) from the same pass; :func:`inference_threads` chooses torch's
intra-op threads for a block (:func:`default_inference_threads`: the cores not busy
with other processes, ``MECHANOSCOPE_INFERENCE_THREADS`` overrides);
:func:`combine_ensemble` is the ensemble mean and spread of regression outputs.
"""

from __future__ import annotations

import contextlib
import itertools
import os
from collections.abc import Iterator
from typing import Any

import numpy as np

__all__ = [
    "DIHEDRAL_VIEWS",
    "THREADS_ENV",
    "TTA_FROM_BOOL",
    "TTA_VIEWS",
    "combine_ensemble",
    "default_inference_threads",
    "forward_tta",
    "forward_tta_capture",
    "fuse_for_inference",
    "inference_threads",
    "predict_batched",
    "tta_views",
]

#: Environment variable that fixes torch's intra-op threads for inference (a positive integer).
THREADS_ENV = "MECHANOSCOPE_INFERENCE_THREADS"

#: The 8 views as (mirror, quarter turns).
DIHEDRAL_VIEWS: tuple[tuple[bool, int], ...] = tuple((flip, k) for flip in (False, True) for k in range(4))

#: Views of each test-time augmentation: ``"dihedral"`` (the 8 views, also ``True``),
#: ``"mirror"`` (the input and its left-right mirror: 2 passes), ``"none"`` (also ``False``).
TTA_VIEWS: dict[str, tuple[tuple[bool, int], ...]] = {"none": ((False, 0),), "mirror": ((False, 0), (True, 0)), "dihedral": DIHEDRAL_VIEWS}

#: What the booleans of older settings mean.
TTA_FROM_BOOL = {True: "dihedral", False: "none"}


def tta_views(tta: bool | str) -> tuple[tuple[bool, int], ...]:
    """The (mirror, quarter turns) views of a test-time augmentation setting."""
    key = TTA_FROM_BOOL[tta] if isinstance(tta, bool) else tta
    if key not in TTA_VIEWS:
        from mechanoscope.errors import ConfigError

        raise ConfigError(f"test-time augmentation {tta!r} is not one of {sorted(TTA_VIEWS)} (or true/false)")
    return TTA_VIEWS[key]


def forward_tta(net: Any, x: Any, tta: bool | str = True, *, dense: bool = False) -> Any:
    """``net(x)``, averaged over the dihedral views of ``x`` that ``tta`` names.

    Parameters
    ----------
    net
        Callable on ``(B, C, H, W)`` tensors.
    x
        ``(B, C, H, W)`` tensor.
    tta
        ``True`` or ``"dihedral"``: average over the 8 views; ``"mirror"``: over ``x``
        and its left-right mirror; ``False`` or ``"none"``: a plain forward pass.
    dense
        The output is an image ``(B, K, H, W)`` aligned with the input: each view's
        output is rotated and mirrored back before averaging. For non-square inputs
        ``H`` and ``W`` must both suit the network (e.g. multiples of its stride).

    Returns
    -------
    Tensor
        The (averaged) output.
    """
    import torch

    views = tta_views(tta)
    if len(views) == 1:
        return net(x)
    acc = None
    for flip, k in views:
        v = torch.flip(x, dims=(3,)) if flip else x
        o = net(torch.rot90(v, k, dims=(2, 3)) if k else v)
        if dense:
            o = torch.rot90(o, -k, dims=(2, 3)) if k else o
            o = torch.flip(o, dims=(3,)) if flip else o
        acc = o if acc is None else acc + o
    return acc / len(views)


def predict_batched(nets: list, x: np.ndarray, batch_size: int = 256, tta: bool = False, device: str = "auto") -> np.ndarray:
    """Raw outputs ``(K, N, n_out)`` of K networks on the inputs ``x`` ``(N, C, H, W)``.

    The networks run on ``device`` (``auto``: the CUDA GPU when there is one) and are
    left there, in eval mode; inputs move ``batch_size`` at a time; the outputs come back
    as a float32 NumPy array.
    """
    import torch

    from mechanoscope.nn.device import select_device

    if batch_size < 1:
        from mechanoscope.errors import ConfigError

        raise ConfigError(f"batch_size must be at least 1, got {batch_size}")
    dev = select_device(device)
    outs = []
    with torch.inference_mode():
        for net in nets:
            net.to(dev).eval()
            parts = [
                forward_tta(net, torch.from_numpy(np.ascontiguousarray(x[s : s + batch_size])).to(dev), tta).float().cpu().numpy()
                for s in range(0, len(x), batch_size)
            ]
            outs.append(np.concatenate(parts) if parts else np.zeros((0, 1), np.float32))
    return np.stack(outs)


def forward_tta_capture(net: Any, x: Any, layer: Any, tta: bool = True) -> tuple[Any, Any]:
    """:func:`forward_tta` that also returns the input of ``layer`` for the plain view.

    One pass instead of two when both the outputs and a layer's input (e.g. the
    penultimate features of the applicability domain) are needed. The captured input is
    that of the identity view (the first of :data:`DIHEDRAL_VIEWS`), i.e. exactly what a
    forward pass without test-time augmentation gives.

    Parameters
    ----------
    net
        A torch module whose forward calls ``layer`` once per input batch.
    x
        ``(B, C, H, W)`` tensor.
    layer
        A submodule of ``net`` (e.g. its last ``nn.Linear``).
    tta
        As in :func:`forward_tta`.

    Returns
    -------
    (output, layer_input)
        ``(B, n_out)`` output (averaged over the views if ``tta``) and the ``(B, F)``
        input of ``layer`` for ``x`` itself.
    """
    assert DIHEDRAL_VIEWS[0] == (False, 0)  # the identity view runs first
    got: list = []

    def hook(_mod: Any, inp: tuple, _out: Any) -> None:
        if not got:
            got.append(inp[0].detach())

    handle = layer.register_forward_hook(hook)
    try:
        out = forward_tta(net, x, tta)
    finally:
        handle.remove()
    if not got:
        from mechanoscope.errors import MechanoscopeError

        raise MechanoscopeError(f"the layer {type(layer).__name__} was not called by the forward pass of {type(net).__name__}; it cannot give its input")
    return out, got[0]


def fuse_for_inference(net: Any) -> Any:
    """An eval-mode copy of ``net`` with each BatchNorm folded into the convolution before it.

    Every ``ConvNd`` or ``ConvTransposeNd`` directly followed by a ``BatchNormNd`` (with
    running statistics) inside an ``nn.Sequential`` — or followed by a Sequential whose
    first layer is that BatchNorm, as in MONAI's ``Convolution`` (conv, then ADN:
    norm, dropout, activation) — becomes one convolution
    (:func:`torch.nn.utils.fusion.fuse_conv_bn_eval`) and the BatchNorm an
    ``nn.Identity``, so the module tree (and e.g. the last linear layer) keeps its
    names. Outputs equal the original's in eval mode up to float rounding (~1e-6
    relative). Networks without such pairs (or objects that are not torch modules,
    e.g. ONNX members) come back as they are (a copy when they are modules). The
    original is not changed.
    """
    import copy

    import torch
    from torch import nn
    from torch.nn.utils.fusion import fuse_conv_bn_eval

    if not isinstance(net, nn.Module):
        return net
    fused = copy.deepcopy(net).eval()
    pairs = ((nn.Conv1d, nn.BatchNorm1d), (nn.Conv2d, nn.BatchNorm2d), (nn.Conv3d, nn.BatchNorm3d),
             (nn.ConvTranspose1d, nn.BatchNorm1d), (nn.ConvTranspose2d, nn.BatchNorm2d), (nn.ConvTranspose3d, nn.BatchNorm3d))

    with torch.no_grad():
        for mod in list(fused.modules()):
            if not isinstance(mod, nn.Sequential):
                continue
            names = list(mod._modules)
            for a, b in itertools.pairwise(names):
                conv, nxt = mod._modules[a], mod._modules[b]
                holder, key = mod, b
                if isinstance(nxt, nn.Sequential):  # conv → Sequential(BN, …), as in MONAI's ADN
                    holder, key = nxt, next(iter(nxt._modules), None)
                    if key is None:
                        continue
                bn = holder._modules[key]
                match = next((c for c, n in pairs if type(conv) is c and type(bn) is n), None)
                if match is not None and bn.track_running_stats and bn.running_mean is not None:
                    transposed = match in (nn.ConvTranspose1d, nn.ConvTranspose2d, nn.ConvTranspose3d)
                    mod._modules[a] = fuse_conv_bn_eval(conv, bn, transpose=transposed)
                    holder._modules[key] = nn.Identity()
    return fused


def default_inference_threads() -> int:
    """torch intra-op threads for inference: ``MECHANOSCOPE_INFERENCE_THREADS`` if set,
    else the cores of this process not kept busy by other processes.

    The cores are those the process may run on (``os.sched_getaffinity``), capped by
    torch's own setting; the busy ones are the 1-minute load average less this process
    (rounded down). On a shared machine more threads than free cores make every thread
    wait on the slowest (measured on 2 cores under a load of 5: 2 threads ran the
    compact CNN ~2× slower than 1, ``benchmarks/throughput.py``); on an idle machine this
    is all cores. At least 1.
    """
    import torch

    env = os.environ.get(THREADS_ENV, "").strip()
    if env:
        try:
            n = int(env)
        except ValueError:
            n = 0
        if n < 1:
            from mechanoscope.errors import ConfigError

            raise ConfigError(f"{THREADS_ENV}={env!r}: expected a positive whole number of threads (or unset it for the automatic choice)")
        return n
    try:
        cores = len(os.sched_getaffinity(0))
    except (AttributeError, OSError):  # pragma: no cover - not Linux
        cores = os.cpu_count() or 1
    cores = max(1, min(cores, torch.get_num_threads()))
    try:
        busy = max(0.0, os.getloadavg()[0] - 1.0)
    except (AttributeError, OSError):  # pragma: no cover - no load average
        busy = 0.0
    return int(max(1, min(cores, cores - int(busy))))


@contextlib.contextmanager
def inference_threads(n: int | None = None) -> Iterator[int]:
    """Run the block with ``n`` torch intra-op threads (``None``: :func:`default_inference_threads`), then restore."""
    import torch

    want = default_inference_threads() if n is None else int(n)
    if want < 1:
        from mechanoscope.errors import ConfigError

        raise ConfigError(f"inference threads must be at least 1, got {n}")
    before = torch.get_num_threads()
    if want != before:
        torch.set_num_threads(want)
    try:
        yield want
    finally:
        if torch.get_num_threads() != before:
            torch.set_num_threads(before)


def combine_ensemble(outs: np.ndarray, gaussian: bool = False) -> tuple[np.ndarray, np.ndarray | None]:
    """Ensemble mean and spread of regression outputs ``(K, N, n_out)`` (standardised units).

    The mean of output 0 over the K members; the spread is the square root of the mean
    predicted variance (``gaussian``: output 1 is a log-variance) plus the members'
    variance (K > 1); ``None`` when there is neither.
    """
    mu = outs[:, :, 0].mean(0)
    var = np.zeros_like(mu)
    have = False
    if gaussian:
        var = var + np.exp(outs[:, :, 1]).mean(0)
        have = True
    if outs.shape[0] > 1:
        var = var + outs[:, :, 0].var(0)
        have = True
    return mu, (np.sqrt(np.maximum(var, 1e-12)) if have else None)
