"""Export of a stiffness/phenotype model folder: ONNX, TorchScript, bioimage.io package.

What is exported is the model's network part: every ensemble member, with the
test-time augmentation (8 rotations/flips) baked in when the model uses it, as one
graph::

    crops   (batch, C, H, W) float32   normalised crops (see below), batch dynamic
      -> outputs (batch, K, n_out) float32   raw outputs of the K ensemble members

Inputs are crops normalised as in training (``normalization.json``): intensity →
``(I / I_background − 1) / contrast_scale`` with ``I_background`` the median of the
crop border, mask channels as 0/1 (:func:`mechanoscope.learn.data.normalise_crops`).
Outputs are logits (classification; probabilities = softmax of the member mean
divided by the model's ``temperature``) or the standardised log10 target
(regression; value = ``10 ** (z * target_std + target_mean)``, a second output is a
log-variance under the Gaussian loss). The model folder's ``config.json`` and
``normalization.json`` travel inside every exported file (ONNX metadata,
TorchScript extra files, the bioimage.io ``config``), so
:func:`mechanoscope.learn.onnx_predict.load_onnx_model` can apply an ONNX file on
its own, with the same calibration and intervals as the model folder.

Every export is checked before it is written: the exported graph and PyTorch are run
on the same synthetic crops (several batch sizes, so the dynamic batch axis is
exercised) and must agree within :data:`EXPORT_TOLERANCE` (absolute + relative, on
raw outputs of order 1); the measured difference is recorded with the export.
"""

from __future__ import annotations

import contextlib
import json
import logging
import os
import shutil
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from mechanoscope import __version__
from mechanoscope.errors import MechanoscopeError, OutputFolderError
from mechanoscope.io.atomic import atomic_path

__all__ = [
    "EXPORT_FORMATS",
    "EXPORT_TOLERANCE",
    "ONNX_METADATA_KEYS",
    "ExportError",
    "ExportResult",
    "ensemble_module",
    "example_crops",
    "export_bioimageio",
    "export_model",
    "export_onnx",
    "export_torchscript",
]

EXPORT_FORMATS = ("onnx", "torchscript", "bioimageio")

#: Agreement an export must reach with PyTorch on the same crops, per format:
#: ``|exported − torch| <= atol + rtol * |torch|`` element-wise on the raw outputs.
#: Measured on the compact CNN: ONNX (onnxruntime, fused kernels) differs by ~1e-7 to
#: 1e-6, TorchScript by 0.
EXPORT_TOLERANCE: dict[str, dict[str, float]] = {
    "onnx": {"atol": 1e-4, "rtol": 1e-4},
    "torchscript": {"atol": 1e-5, "rtol": 1e-5},
}

#: Keys of the ONNX ``metadata_props`` (and names of the TorchScript extra files).
ONNX_METADATA_KEYS = ("mechanoscope.config", "mechanoscope.normalization", "mechanoscope.export")

#: Batch sizes the check runs (1 and odd sizes exercise the dynamic batch axis).
_CHECK_BATCHES = (1, 3, 16)


class ExportError(MechanoscopeError):
    """A model cannot be exported, or the exported model does not match PyTorch."""


@dataclass
class ExportResult:
    """What :func:`export_model` wrote.

    Attributes
    ----------
    path
        The file (ONNX, TorchScript) or package folder / zip (bioimage.io).
    format
        One of :data:`EXPORT_FORMATS`.
    max_abs_diff
        Largest absolute difference to PyTorch per checked weight format.
    tolerance
        The tolerance each format had to meet (see :data:`EXPORT_TOLERANCE`).
    files
        Files written (for a package: its content).
    validation
        bioimage.io only: ``{"format": status, "test": status}`` of
        ``bioimageio.spec`` validation and of the ``bioimageio.core`` model test.
    """

    path: Path
    format: str
    max_abs_diff: dict[str, float]
    tolerance: dict[str, dict[str, float]]
    files: list[str] = field(default_factory=list)
    validation: dict[str, str] = field(default_factory=dict)


# --------------------------------------------------------------------------- the graph
def _torch():
    import torch

    return torch


def ensemble_module(model: Any):
    """One ``torch.nn.Module`` running all members of a loaded CNN model.

    Parameters
    ----------
    model
        A :class:`~mechanoscope.learn.predict.StiffnessModel` with torch members.

    Returns
    -------
    torch.nn.Module
        In eval mode, on the CPU; ``forward(crops (B, C, H, W)) -> (B, K, n_out)``,
        averaged over the 8 dihedral views when the model's config has ``tta``.
    """
    torch = _torch()
    if model.config.get("model_type") != "cnn":
        raise ExportError(
            f"{model.path}: is a {model.config.get('model_type')!r} model (gradient boosting on the "
            "morphology table); only CNN models can be exported — apply it with `mechanoscope predict`"
        )

    class _Ensemble(torch.nn.Module):
        def __init__(self, members: list, tta: bool) -> None:
            super().__init__()
            self.members = torch.nn.ModuleList(members)
            self.tta = tta

        def forward(self, crops: torch.Tensor) -> torch.Tensor:
            outs = []
            for net in self.members:
                if self.tta:
                    acc = torch.zeros(0)
                    n = 0
                    for flip in (False, True):
                        v = torch.flip(crops, dims=(3,)) if flip else crops
                        for k in range(4):
                            o = net(torch.rot90(v, k, dims=(2, 3)) if k else v)
                            acc = o if n == 0 else acc + o
                            n += 1
                    outs.append(acc / 8)
                else:
                    outs.append(net(crops))
            return torch.stack(outs, 1)

    members = [m.to("cpu").eval() for m in model.members]
    return _Ensemble(members, bool(model.config.get("tta", False))).eval()


def example_crops(config: dict, normalization: dict, n: int = 4, seed: int = 0) -> np.ndarray:
    """Synthetic normalised crops the model accepts: one bright-field-like cell per crop.

    A disk (random radius 12–38 % of the crop edge) with a dome of relative contrast and
    noise on a flat background, its mask, normalised with the model's
    ``contrast_scale``; channels as the model's ``channels``.

    Returns
    -------
    numpy.ndarray
        ``(n, C, H, W)`` float32.
    """
    from mechanoscope.learn.data import normalise_crops

    rng = np.random.default_rng(seed)
    px = int(config["crop_pixels"])
    yy, xx = np.mgrid[:px, :px] - (px - 1) / 2
    raw = np.empty((n, 2, px, px), dtype=np.float32)
    for i in range(n):
        r = px * rng.uniform(0.12, 0.38)
        d = np.hypot(yy + rng.normal(0, 1), xx + rng.normal(0, 1)) / max(r, 1.0)
        height = np.clip(1 - d**2, 0, None) * rng.uniform(0.5, 2.0)
        raw[i, 0] = 1000 * (1 + 0.3 * height + rng.normal(0, 0.02, d.shape))
        raw[i, 1] = d < 1
    return normalise_crops(raw, ["intensity", "mask"], list(config["channels"]), float(normalization.get("contrast_scale", 1.0)))


def _load(model: Any):
    if hasattr(model, "members"):
        return model
    from mechanoscope.learn.predict import load_stiffness_model

    return load_stiffness_model(model)


def _metadata(model: Any, fmt: str, max_abs_diff: dict[str, float]) -> dict[str, str]:
    from mechanoscope.io.model_folder import sha256_file

    cfg = dict(model.config)
    export = {
        "format": fmt,
        "mechanoscope_version": __version__,
        "source_model": str(Path(model.path).resolve()),
        "source_weights_sha256": sha256_file(Path(model.path) / "weights.safetensors") if (Path(model.path) / "weights.safetensors").is_file() else None,
        "input": {"name": "crops", "axes": "batch, channel, y, x", "channels": cfg.get("channels"), "pixels": cfg.get("crop_pixels"), "dtype": "float32", "normalised": True},
        "output": {"name": "outputs", "axes": "batch, member, output", "members": int(cfg.get("ensemble_size", 1)), "n_outputs": int(cfg.get("n_outputs", 0))},
        "tta_in_graph": bool(cfg.get("tta", False)),
        "max_abs_diff_to_torch": max_abs_diff,
        "tolerance": EXPORT_TOLERANCE,
    }
    return {
        "mechanoscope.config": json.dumps(cfg),
        "mechanoscope.normalization": json.dumps(model.normalization),
        "mechanoscope.export": json.dumps(export),
    }


def _check_agreement(fmt: str, run, module, config: dict, normalization: dict, where: Path) -> float:
    """Run the export and PyTorch on the same crops; raise unless they agree."""
    torch = _torch()
    tol = EXPORT_TOLERANCE[fmt]
    worst = 0.0
    for k, b in enumerate(_CHECK_BATCHES):
        x = example_crops(config, normalization, n=b, seed=100 + k)
        with torch.inference_mode():
            ref = module(torch.from_numpy(x)).numpy()
        got = np.asarray(run(x))
        if got.shape != ref.shape:
            raise ExportError(f"{where}: the exported {fmt} model gives outputs of shape {got.shape} for a batch of {b}, PyTorch {ref.shape}; this is a bug, please report it")
        diff = np.abs(got - ref)
        worst = max(worst, float(diff.max()))
        if not np.all(diff <= tol["atol"] + tol["rtol"] * np.abs(ref)):
            raise ExportError(f"{where}: the exported {fmt} model differs from PyTorch by up to {float(diff.max()):.3g} (allowed {tol['atol']} + {tol['rtol']}·|value|) on a batch of {b}; nothing was written")
    return worst


def _target(out: Path, overwrite: bool, what: str) -> Path:
    out = Path(out)
    if out.exists() and not overwrite:
        raise OutputFolderError(f"{out}: already exists; choose another --out or pass --overwrite to replace the {what}")
    if out.exists() and out.is_dir() and what != "bioimage.io package":
        raise OutputFolderError(f"{out}: is a folder; give a file name for the {what} (e.g. {out / ('model.onnx' if what == 'ONNX model' else 'model.pt')})")
    if out.parent.exists() and not out.parent.is_dir():
        raise OutputFolderError(f"{out.parent}: is a file, not a folder; choose another --out")
    return out


@contextlib.contextmanager
def _quiet_exporter():
    """The dynamo exporter logs a warning per torchvision operator it cannot register."""
    loggers = [logging.getLogger(n) for n in ("torch.onnx", "torch.export", "torch._dynamo", "onnxscript")]
    levels = [lg.level for lg in loggers]
    import warnings

    try:
        for lg in loggers:
            lg.setLevel(logging.ERROR)
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", FutureWarning)
            warnings.simplefilter("ignore", DeprecationWarning)
            yield
    finally:
        for lg, lv in zip(loggers, levels):
            lg.setLevel(lv)


def _onnx_bytes(model: Any, module) -> tuple[bytes, float]:
    torch = _torch()
    import onnx
    import onnxruntime as ort

    x = torch.from_numpy(example_crops(model.config, model.normalization, n=4, seed=1))
    batch = torch.export.Dim("batch", min=1, max=1 << 20)
    try:
        with _quiet_exporter():
            prog = torch.onnx.export(module, (x,), dynamo=True, input_names=["crops"], output_names=["outputs"],
                                     dynamic_shapes={"crops": {0: batch}}, optimize=True, verbose=False)
    except Exception as exc:  # the exporter raises many kinds of errors
        raise ExportError(f"{model.path}: the ONNX exporter failed ({type(exc).__name__}: {str(exc).splitlines()[0] if str(exc) else ''}); export as torchscript instead") from exc
    proto = prog.model_proto
    data = proto.SerializeToString()
    sess = ort.InferenceSession(data, providers=["CPUExecutionProvider"])
    diff = _check_agreement("onnx", lambda a: sess.run(None, {"crops": a})[0], module, model.config, model.normalization, Path(model.path))
    for key, value in _metadata(model, "onnx", {"onnx": diff}).items():
        entry = proto.metadata_props.add()
        entry.key, entry.value = key, value
    proto.producer_name = "mechanoscope"
    proto.producer_version = __version__
    onnx.checker.check_model(proto)
    return proto.SerializeToString(), diff


def _torchscript_module(model: Any, module):
    torch = _torch()
    x = torch.from_numpy(example_crops(model.config, model.normalization, n=4, seed=1))
    with _quiet_exporter(), torch.inference_mode():
        ts = torch.jit.trace(module, x, check_trace=False)
    ts.eval()

    def run(a):
        with torch.inference_mode():
            return ts(torch.from_numpy(a)).numpy()

    diff = _check_agreement("torchscript", run, module, model.config, model.normalization, Path(model.path))
    return ts, diff


def export_onnx(model: Any, out: str | os.PathLike[str], *, overwrite: bool = False) -> ExportResult:
    """Export a CNN model folder (or loaded model) to one ONNX file with a dynamic batch axis.

    Uses the dynamo-based exporter (``torch.onnx.export(..., dynamo=True)``, onnxscript).
    The model's config and normalisation are stored in the file's ``metadata_props``
    (:data:`ONNX_METADATA_KEYS`). Checked against PyTorch with onnxruntime before it is
    written (see :data:`EXPORT_TOLERANCE`); written atomically.
    """
    model = _load(model)
    out = _target(Path(out), overwrite, "ONNX model")
    module = ensemble_module(model)
    data, diff = _onnx_bytes(model, module)
    with atomic_path(out) as tmp:
        tmp.write_bytes(data)
    return ExportResult(out, "onnx", {"onnx": diff}, {"onnx": EXPORT_TOLERANCE["onnx"]}, [out.name])


def export_torchscript(model: Any, out: str | os.PathLike[str], *, overwrite: bool = False) -> ExportResult:
    """Export a CNN model folder (or loaded model) to a TorchScript file (``torch.jit.trace``).

    The model folder's ``config.json``, ``normalization.json`` and an ``export.json``
    go in as extra files (``torch.jit.load(path, _extra_files={...})``). A TorchScript
    file is a program: load only files from sources you trust.
    """
    torch = _torch()
    model = _load(model)
    out = _target(Path(out), overwrite, "TorchScript model")
    module = ensemble_module(model)
    ts, diff = _torchscript_module(model, module)
    meta = _metadata(model, "torchscript", {"torchscript": diff})
    extra = {"config.json": meta["mechanoscope.config"], "normalization.json": meta["mechanoscope.normalization"], "export.json": meta["mechanoscope.export"]}
    with atomic_path(out) as tmp, _quiet_exporter():  # torch 2.13 marks torch.jit deprecated
        torch.jit.save(ts, str(tmp), _extra_files=extra)
    return ExportResult(out, "torchscript", {"torchscript": diff}, {"torchscript": EXPORT_TOLERANCE["torchscript"]}, [out.name])


def export_bioimageio(model: Any, out: str | os.PathLike[str], *, overwrite: bool = False, authors: list[str] | None = None,
                      license: str = "CC-BY-4.0", test: bool = True) -> ExportResult:
    """Write a bioimage.io model package (spec 0.5) with ONNX and TorchScript weights.

    See :func:`mechanoscope.learn.export_bioimageio.write_package` for the content.
    ``out`` ending in ``.zip`` gives a zipped package, anything else a folder.
    """
    from mechanoscope.learn.export_bioimageio import write_package

    model = _load(model)
    out = _target(Path(out), overwrite, "bioimage.io package")
    module = ensemble_module(model)
    onnx_data, d_onnx = _onnx_bytes(model, module)
    ts, d_ts = _torchscript_module(model, module)
    diffs = {"onnx": d_onnx, "torchscript": d_ts}
    files, validation = write_package(model, module, out, onnx_data=onnx_data, torchscript=ts, max_abs_diff=diffs,
                                      authors=authors or ["mechanoscope"], license=license, test=test, overwrite=overwrite)
    return ExportResult(out, "bioimageio", diffs, {k: EXPORT_TOLERANCE[k] for k in diffs}, files, validation)


def export_model(model: str | os.PathLike[str] | Any, fmt: str, out: str | os.PathLike[str], *, overwrite: bool = False, **kwargs: Any) -> ExportResult:
    """Export a model folder as ``fmt`` (one of :data:`EXPORT_FORMATS`) to ``out``.

    Parameters
    ----------
    model
        A CNN stiffness/phenotype model folder, or a loaded
        :class:`~mechanoscope.learn.predict.StiffnessModel`.
    fmt
        ``"onnx"`` (a ``.onnx`` file), ``"torchscript"`` (a ``.pt`` file) or
        ``"bioimageio"`` (a package folder, or a ``.zip``).
    out
        Where to write; an existing file is refused unless ``overwrite``.
    kwargs
        For ``bioimageio``: ``authors``, ``license``, ``test``.

    Raises
    ------
    ExportError
        Not a CNN model, the exporter failed, or the export does not match PyTorch.
    OutputFolderError
        ``out`` exists (without ``overwrite``) or cannot be written.
    """
    if fmt not in EXPORT_FORMATS:
        raise ExportError(f"unknown export format {fmt!r}; choose one of {', '.join(EXPORT_FORMATS)} (--format)")
    if fmt == "onnx":
        return export_onnx(model, out, overwrite=overwrite)
    if fmt == "torchscript":
        return export_torchscript(model, out, overwrite=overwrite)
    return export_bioimageio(model, out, overwrite=overwrite, **kwargs)


def _replace(tmp: Path, final: Path) -> None:
    """Put ``tmp`` (file or folder) at ``final``, replacing what is there only at the end."""
    old = None
    if final.exists():
        old = final.with_name(f".{final.name}.old-{os.getpid()}")
        os.replace(final, old)
    os.replace(tmp, final)
    if old is not None:
        if old.is_dir():
            shutil.rmtree(old, ignore_errors=True)
        else:
            old.unlink(missing_ok=True)
