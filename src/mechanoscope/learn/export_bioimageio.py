"""bioimage.io model packages (spec 0.5) of mechanoscope CNN models.

A package folder holds::

    rdf.yaml            the description (format 0.5): inputs, outputs, weights, test tensors,
                        the model folder's config and normalisation under config.mechanoscope
    model.onnx          ONNX weights (dynamic batch axis)
    model.pt            TorchScript weights
    test_input.npy      synthetic normalised crops (float32, (B, C, H, W))
    test_output.npy     PyTorch's outputs on them (float32, (B, K, n_out))
    README.md           the model card, plus how to normalise inputs and read outputs

It is validated with ``bioimageio.spec`` and, with ``test=True``, tested with
``bioimageio.core`` (both weight formats are run on the test input and compared
with the test output) before it is put in place. Both run offline: the package
references no web resource except the citation's DOI, which is not resolved.
"""

from __future__ import annotations

import contextlib
import io
import os
import shutil
from pathlib import Path
from typing import Any

import numpy as np

from mechanoscope import __version__
from mechanoscope.learn._bioimageio_compat import spec_compat as _spec_compat

__all__ = ["DEFAULT_CITE", "validate_package", "write_package"]

#: The citation a package carries unless the caller gives its own (the format it follows).
DEFAULT_CITE = [{
    "text": "Ouyang W. et al. BioImage Model Zoo: a community-driven resource for accessible deep learning "
            "in bioimage analysis (bioRxiv, 2022); package written by mechanoscope — cite the study the model "
            "comes from as well",
    "doi": "10.1101/2022.06.07.495102",
}]


def _output_names(config: dict) -> list[str]:
    if config["task"] == "classification":
        return [f"logit_{c}" for c in config["classes"]]
    names = [f"z_log10_{config['target']}" if config.get("log_target") else f"z_{config['target']}"]
    if int(config.get("n_outputs", 1)) > 1:
        names.append("log_variance")
    return names[: int(config.get("n_outputs", 1))]


def _readme(model: Any, max_abs_diff: dict[str, float]) -> str:
    cfg = model.config
    card_path = Path(model.path) / "MODEL_CARD.md"
    card = card_path.read_text() if card_path.is_file() else f"# mechanoscope model {cfg['task']} of {cfg['target']}\n"
    if cfg["task"] == "classification":
        read = (f"Outputs are logits of the classes {', '.join(map(str, cfg['classes']))} per ensemble member. "
                f"Calibrated probabilities: softmax(mean over members / T) with T = {float(cfg.get('temperature', 1.0)):.6g}.")
    else:
        read = (f"Outputs are the standardised {'log10 ' if cfg.get('log_target') else ''}{cfg['target']} per ensemble member, z. "
                f"Value = {'10 ** ' if cfg.get('log_target') else ''}(z * {float(cfg['target_std']):.6g} + {float(cfg['target_mean']):.6g})"
                f"{' Pa' if str(cfg['target']).endswith('_pa') else ''}; the split-conformal {float(cfg.get('interval_level', 0.9)):.0%} "
                f"interval is mean z ± {float(cfg.get('conformal_quantile', float('nan'))):.6g}"
                f"{' × the spread' if cfg.get('conformal_scaled') else ''} (in z units).")
    return (
        f"{card.rstrip()}\n\n## bioimage.io package (mechanoscope {__version__})\n\n"
        f"Input `crops`: (batch, channel, y, x) float32, channels {', '.join(cfg['channels'])}, "
        f"{cfg['crop_pixels']}×{cfg['crop_pixels']} px covering {cfg.get('crop_size_um')} µm "
        f"({cfg.get('pixel_size_um_of_crop')} µm/px), one cell centred per crop. Normalise as in training: intensity → "
        f"(I / I_background − 1) / {float(model.normalization.get('contrast_scale', 1.0)):.6g} with I_background the median of "
        "the crop's border pixels; mask channel 0/1. `mechanoscope extract` writes such crops.\n\n"
        f"Output `outputs`: (batch, member, channel), {int(cfg.get('ensemble_size', 1))} ensemble member(s)"
        f"{', averaged over the 8 rotations/flips of each crop' if cfg.get('tta') else ''}. {read}\n\n"
        f"Largest difference to PyTorch when exported: {', '.join(f'{k} {v:.2g}' for k, v in max_abs_diff.items())}.\n\n"
        f"## Validation\n\nHeld-out metrics of the model folder (metrics.json; images never used for training):\n\n{_metrics_text(model)}\n"
    )


def _metrics_text(model: Any) -> str:
    import json

    p = Path(model.path) / "metrics.json"
    if not p.is_file():
        return "(no metrics.json in the model folder)"
    metrics = json.loads(p.read_text())
    lines = []
    for split in ("val", "test"):
        m = metrics.get(split)
        if isinstance(m, dict):
            vals = ", ".join(f"{k} {v:.3g}" for k, v in m.items() if isinstance(v, (int, float)) and not isinstance(v, bool))
            lines.append(f"- {split}: {vals}")
    return "\n".join(lines) or "(no held-out metrics recorded)"


def _rdf(model: Any, *, opset: int, n_test: int, max_abs_diff: dict[str, float], authors: list[str], license: str, cite: list[dict]) -> dict:
    import torch
    from bioimageio.spec.model.v0_5 import ModelDescr

    from mechanoscope.io.model_folder import _finite

    cfg = model.config
    px = int(cfg["crop_pixels"])
    pixel_um = cfg.get("pixel_size_um_of_crop")
    scale = float(pixel_um) if pixel_um is not None and np.isfinite(float(pixel_um)) and float(pixel_um) > 0 else 1.0
    unit = {"unit": "micrometer"} if scale != 1.0 or pixel_um is not None else {}
    k = int(cfg.get("ensemble_size", 1))
    what = f"{cfg['task']} of {cfg['target']}"
    desc = (f"mechanoscope {cfg.get('architecture', 'cnn')} CNN ({k} member(s)) for the {what} of single cells from "
            f"{px}-px crops of label-free microscope images (channels {', '.join(cfg['channels'])}).")
    return {
        "type": "model",
        "format_version": str(ModelDescr.implemented_format_version),
        "name": f"mechanoscope {cfg['task']} {cfg['target']}".replace("_", "-")[:64],
        "description": desc,
        "authors": [{"name": a} for a in authors],
        "cite": cite,
        "license": license,
        "documentation": {"source": "README.md"},
        "tags": ["mechanobiology", "cell-stiffness", "single-cell", "label-free", "2d", "classification" if cfg["task"] == "classification" else "regression"],
        "version": "0.1.0",
        "inputs": [{
            "id": "crops",
            "description": "normalised single-cell crops (see README.md)",
            "axes": [
                {"type": "batch"},
                {"type": "channel", "channel_names": list(cfg["channels"])},
                {"type": "space", "id": "y", "size": px, "scale": scale, **unit},
                {"type": "space", "id": "x", "size": px, "scale": scale, **unit},
            ],
            "test_tensor": {"source": "test_input.npy"},
            "data": {"type": "float32"},
        }],
        "outputs": [{
            "id": "outputs",
            "description": "raw network outputs per ensemble member (see README.md for the calibration)",
            "axes": [
                {"type": "batch"},
                {"type": "index", "id": "member", "size": k},
                {"type": "channel", "channel_names": _output_names(cfg)},
            ],
            "test_tensor": {"source": "test_output.npy"},
            "data": {"type": "float32"},
        }],
        "weights": {
            # both come from the same PyTorch network; the spec wants one entry without a parent
            "onnx": {"source": "model.onnx", "opset_version": int(opset), "parent": "torchscript"},
            "torchscript": {"source": "model.pt", "pytorch_version": torch.__version__.split("+")[0]},
        },
        "config": {"mechanoscope": _finite({"config": dict(cfg), "normalization": dict(model.normalization), "max_abs_diff_to_torch": max_abs_diff,
                                            "exported_with": __version__, "n_test_crops": n_test})},
    }


def validate_package(rdf: str | os.PathLike[str], *, test: bool = True) -> dict[str, str]:
    """Validate a package with ``bioimageio.spec`` and test it with ``bioimageio.core``.

    Returns
    -------
    dict
        ``{"format": status}`` (and ``"test": status`` when ``test``), status being
        ``"valid-format"``/``"passed"``; a failure raises.

    Raises
    ------
    ExportError
        The description is invalid or a weight format fails its test; the message
        lists the errors.
    """
    from bioimageio.spec import load_description
    from bioimageio.spec.common import InvalidDescr

    from mechanoscope.learn.export import ExportError

    with _quiet(), _spec_compat():
        descr = load_description(Path(rdf), perform_io_checks=True)
    if isinstance(descr, InvalidDescr):
        raise ExportError(f"{rdf}: bioimage.io validation failed: {_errors(descr.validation_summary)}")
    status = {"format": str(descr.validation_summary.status)}
    if test:
        from bioimageio.core import test_model

        with _quiet(), _spec_compat():
            summary = test_model(Path(rdf))
        if summary.status not in ("passed", "valid-format"):
            raise ExportError(f"{rdf}: bioimage.io model test failed: {_errors(summary)}")
        status["test"] = str(summary.status)
    return status


def _errors(summary) -> str:
    lines = []
    for d in summary.details:
        for e in d.errors:
            lines.append(f"{'.'.join(map(str, e.loc))}: {e.msg}")
    return "; ".join(lines[:8]) or str(summary.status)


@contextlib.contextmanager
def _quiet():
    """bioimageio logs through loguru and prints progress; keep the user's terminal clean."""
    import warnings

    with contextlib.redirect_stdout(io.StringIO()), contextlib.redirect_stderr(io.StringIO()), warnings.catch_warnings():
        warnings.simplefilter("ignore")
        try:
            from loguru import logger
        except ImportError:  # pragma: no cover
            logger = None
        if logger is not None:
            logger.disable("bioimageio")
        try:
            yield
        finally:
            if logger is not None:
                logger.enable("bioimageio")


def write_package(model: Any, module, out: Path, *, onnx_data: bytes, torchscript, max_abs_diff: dict[str, float], authors: list[str],
                  license: str = "CC-BY-4.0", cite: list[dict] | None = None, test: bool = True, overwrite: bool = False,
                  n_test: int = 4) -> tuple[list[str], dict[str, str]]:
    """Write, validate and test a package; put it at ``out`` (folder, or ``.zip``) only if all pass.

    Returns
    -------
    (files, validation)
        Names of the package's files and the validation statuses.
    """
    import torch
    import yaml

    from mechanoscope.learn.export import _quiet_exporter, _replace, example_crops

    out = Path(out)
    out.parent.mkdir(parents=True, exist_ok=True)
    work = out.with_name(f".{out.name}.tmp-{os.getpid()}")
    if work.exists():
        shutil.rmtree(work)
    work.mkdir()
    try:
        x = example_crops(model.config, model.normalization, n=n_test, seed=7)
        with torch.inference_mode():
            y = module(torch.from_numpy(x)).numpy().astype(np.float32)
        np.save(work / "test_input.npy", x.astype(np.float32))
        np.save(work / "test_output.npy", y)
        (work / "model.onnx").write_bytes(onnx_data)
        with _quiet_exporter():
            torch.jit.save(torchscript, str(work / "model.pt"))
        (work / "README.md").write_text(_readme(model, max_abs_diff))
        import onnx

        opset = max(o.version for o in onnx.load_from_string(onnx_data).opset_import if o.domain in ("", "ai.onnx"))
        rdf = _rdf(model, opset=opset, n_test=n_test, max_abs_diff=max_abs_diff, authors=authors, license=license, cite=cite or DEFAULT_CITE)
        (work / "rdf.yaml").write_text(yaml.safe_dump(rdf, sort_keys=False, allow_unicode=True))
        validation = validate_package(work / "rdf.yaml", test=test)
        files = sorted(p.name for p in work.iterdir())
        if out.suffix == ".zip":
            from bioimageio.spec import save_bioimageio_package

            tmp_zip = out.with_name(f".{out.stem}.tmp-{os.getpid()}.zip")
            with _quiet(), _spec_compat():
                save_bioimageio_package(work / "rdf.yaml", output_path=tmp_zip)
            _replace(tmp_zip, out)
            shutil.rmtree(work, ignore_errors=True)
        else:
            _replace(work, out)
    except BaseException:
        shutil.rmtree(work, ignore_errors=True)
        raise
    return files, validation
