"""The one batched inference routine of every network, with test-time augmentation.

Cells and label-free images have no preferred orientation, so the 8 views of the
dihedral group (4 rotations by 90°, each with and without a mirror) are equally valid
inputs. :func:`forward_tta` averages a network's outputs over them: for per-image
outputs (class logits, a standardised log-modulus) the outputs are averaged as they
are; for dense outputs (per-pixel logits of the segmentation U-Net) each output is
first turned back to the input's orientation. The cost is 8 forward passes.
:func:`predict_batched` runs one or several networks over an array in batches.
"""

from __future__ import annotations

from typing import Any

import numpy as np

__all__ = ["forward_tta", "predict_batched", "DIHEDRAL_VIEWS"]

#: The 8 views as (mirror, quarter turns).
DIHEDRAL_VIEWS: tuple[tuple[bool, int], ...] = tuple((flip, k) for flip in (False, True) for k in range(4))


def forward_tta(net: Any, x: Any, tta: bool = True, *, dense: bool = False) -> Any:
    """``net(x)``, averaged over the 8 dihedral views of ``x`` if ``tta``.

    Parameters
    ----------
    net
        Callable on ``(B, C, H, W)`` tensors.
    x
        ``(B, C, H, W)`` tensor.
    tta
        Average over the 8 views; ``False`` is a plain forward pass.
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

    if not tta:
        return net(x)
    acc = None
    for flip, k in DIHEDRAL_VIEWS:
        v = torch.flip(x, dims=(3,)) if flip else x
        o = net(torch.rot90(v, k, dims=(2, 3)) if k else v)
        if dense:
            o = torch.rot90(o, -k, dims=(2, 3)) if k else o
            o = torch.flip(o, dims=(3,)) if flip else o
        acc = o if acc is None else acc + o
    return acc / len(DIHEDRAL_VIEWS)


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
