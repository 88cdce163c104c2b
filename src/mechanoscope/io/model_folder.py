"""Model folders: the one on-disk format of every trained mechanoscope model.

A model folder holds everything needed to apply a model and to judge it::

    MODEL/
      config.json           schema_version, mechanoscope_version, task, architecture,
                            input size, pixel size, classes or target unit, ...
      weights.safetensors   network weights (safetensors: plain tensors, never pickle)
      normalization.json    how input images are normalised before the network
      metrics.json          validation / test metrics of the saved weights
      provenance.json       versions (python, torch, monai, mechanoscope, ...), seed,
                            command line, sha256 of the input files
      MODEL_CARD.md         human-readable description: intended use, data, limits

The folder is written atomically: everything goes into a temporary folder next to
the destination, which is renamed into place only when complete, so a crash never
leaves a half-written model behind and never destroys a model already there.

:func:`load_model_folder` checks that every file exists and that the folder's
``schema_version`` equals :data:`MODEL_SCHEMA_VERSION`; anything else is a loud
:class:`ModelFolderError` that says what to do. Weights are read with
``safetensors`` only, so loading a folder from an untrusted source cannot run code.

The module is task-agnostic: segmentation networks, stiffness classifiers and
modulus regressors all use it and put their own keys into ``config``.
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import math
import os
import platform
import shutil
import sys
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field
from datetime import datetime, timezone
from pathlib import Path
from typing import Any

from mechanoscope import __version__
from mechanoscope.errors import MechanoscopeError, OutputFolderError
from mechanoscope.io.atomic import atomic_path, write_json

__all__ = [
    "MODEL_SCHEMA_VERSION",
    "MODEL_FILES",
    "ModelFolder",
    "ModelFolderError",
    "ModelSchemaError",
    "save_model_folder",
    "check_output_folder",
    "load_model_folder",
    "provenance",
    "sha256_file",
]

#: Version of the model-folder layout and of the meaning of its keys. Bump it when a
#: change makes old folders unreadable or subtly different (e.g. a new normalisation).
MODEL_SCHEMA_VERSION = 1

#: Files every model folder holds.
MODEL_FILES: tuple[str, ...] = (
    "config.json",
    "weights.safetensors",
    "normalization.json",
    "metrics.json",
    "provenance.json",
    "MODEL_CARD.md",
)


class ModelFolderError(MechanoscopeError):
    """A model folder is missing, incomplete, corrupt or of another schema version."""


class ModelSchemaError(ModelFolderError):
    """A model folder was written with a different model-folder schema version."""


@dataclass
class ModelFolder:
    """A loaded model folder.

    Attributes
    ----------
    path
        The folder.
    config
        Contents of ``config.json`` (includes ``schema_version`` and
        ``mechanoscope_version``).
    state_dict
        Network weights, ``name -> torch.Tensor`` on the CPU.
    normalization, metrics, provenance
        Contents of the JSON files of the same names.
    model_card
        Text of ``MODEL_CARD.md``.
    """

    path: Path
    config: dict[str, Any]
    state_dict: dict[str, Any]
    normalization: dict[str, Any]
    metrics: dict[str, Any]
    provenance: dict[str, Any]
    model_card: str = ""
    extra_files: list[str] = field(default_factory=list)


# --------------------------------------------------------------------------- provenance
def sha256_file(path: str | os.PathLike[str], chunk_bytes: int = 1 << 20) -> str:
    """Hex SHA-256 of a file (or, for a folder such as OME-Zarr, of its files in order)."""
    p = Path(path)
    h = hashlib.sha256()
    files = sorted(q for q in p.rglob("*") if q.is_file()) if p.is_dir() else [p]
    for q in files:
        if p.is_dir():
            h.update(str(q.relative_to(p)).encode())
        with open(q, "rb") as fh:
            while chunk := fh.read(chunk_bytes):
                h.update(chunk)
    return h.hexdigest()


def _version_of(module: str) -> str | None:
    try:
        from importlib.metadata import version

        return version(module)
    except Exception:  # not installed / no metadata
        return None


def provenance(
    *,
    seed: int | None = None,
    command: str | Iterable[str] | None = None,
    inputs: Iterable[str | os.PathLike[str]] | Mapping[str, str] | None = None,
    extra: Mapping[str, Any] | None = None,
) -> dict[str, Any]:
    """Collect what is needed to reproduce a result.

    Parameters
    ----------
    seed
        Random seed used.
    command
        Command line (string or argv list); defaults to ``sys.argv``.
    inputs
        Input files to hash (paths; hashed with SHA-256), or a ready mapping
        ``name -> sha256``.
    extra
        Further JSON-ready entries (e.g. the training config).

    Returns
    -------
    dict
        ``created_utc``, ``mechanoscope_version``, ``python``, ``platform``,
        ``versions`` (torch, monai, numpy, scikit-image, safetensors, ... that are
        installed), ``device`` (CUDA device name or ``"cpu"``), ``seed``,
        ``command`` and ``inputs_sha256``.
    """
    versions = {
        name: _version_of(name)
        for name in ("torch", "monai", "numpy", "scipy", "scikit-image", "safetensors", "pydantic")
    }
    device = "cpu"
    # only a process that has loaded torch can have used a GPU: a classical segmentation or a
    # features model never imports it (3 s of start-up) just to write "cpu" here
    if "torch" in sys.modules:
        with contextlib.suppress(Exception):
            import torch

            if torch.cuda.is_available():
                device = f"cuda ({torch.cuda.get_device_name(0)})"
    if command is None:
        command = sys.argv
    if not isinstance(command, str):
        command = " ".join(str(c) for c in command)
    hashes: dict[str, str] = {}
    if inputs is not None:
        if isinstance(inputs, Mapping):
            hashes = {str(k): str(v) for k, v in inputs.items()}
        else:
            for p in inputs:
                hashes[str(p)] = sha256_file(p)
    out: dict[str, Any] = {
        "created_utc": datetime.now(timezone.utc).isoformat(timespec="seconds"),
        "mechanoscope_version": __version__,
        "python": platform.python_version(),
        "platform": platform.platform(),
        "versions": versions,
        "device": device,
        "seed": seed,
        "command": command,
        "inputs_sha256": hashes,
    }
    if extra:
        out.update(dict(extra))
    return out


# --------------------------------------------------------------------------- saving
def _finite(obj: Any) -> Any:
    """Replace NaN/inf by None so that the JSON files are strict JSON."""
    if isinstance(obj, float) and not math.isfinite(obj):
        return None
    if isinstance(obj, Mapping):
        return {str(k): _finite(v) for k, v in obj.items()}
    if isinstance(obj, (list, tuple)):
        return [_finite(v) for v in obj]
    try:
        import numpy as np

        if isinstance(obj, np.floating):
            return _finite(float(obj))
        if isinstance(obj, np.ndarray):
            return _finite(obj.tolist())
    except ImportError:  # pragma: no cover
        pass
    return obj


def _is_model_folder(path: Path) -> bool:
    return path.is_dir() and (path / "config.json").is_file()


def check_output_folder(folder: str | os.PathLike[str], *, overwrite: bool = False) -> None:
    """Raise :class:`OutputFolderError` unless a model folder may be written to ``folder``.

    Allowed: a path that does not exist but can be created (not under a regular file,
    in a writable folder), an empty folder, or (with ``overwrite``) an existing model
    folder. Call it before a long training so that a bad output path fails at once
    rather than after hours.
    """
    from mechanoscope.io.atomic import check_output_folder_path

    final = check_output_folder_path(folder, "model folder (--out)")
    if not final.exists():
        return
    if final.is_dir() and not any(final.iterdir()):
        return
    if not _is_model_folder(final):
        raise OutputFolderError(
            f"{final}: exists and is not a mechanoscope model folder; choose another "
            "output folder (nothing was written)"
        )
    if not overwrite:
        raise OutputFolderError(
            f"{final}: a model folder already exists there; choose another output "
            "folder or pass overwrite=True (CLI: --overwrite) to replace it"
        )


def save_model_folder(
    folder: str | os.PathLike[str],
    *,
    config: Mapping[str, Any],
    state_dict: Mapping[str, Any],
    normalization: Mapping[str, Any],
    metrics: Mapping[str, Any],
    provenance: Mapping[str, Any],
    model_card: str,
    extra_files: Mapping[str, str | bytes] | None = None,
    overwrite: bool = False,
) -> Path:
    """Write a model folder atomically.

    Parameters
    ----------
    folder
        Destination folder. Must not exist, unless ``overwrite`` is true and it is a
        model folder (then it is replaced as a whole, only after the new one is
        complete).
    config
        JSON-ready description of the model (task, architecture, input size, pixel
        size in µm, classes or target unit, ...). ``schema_version`` and
        ``mechanoscope_version`` are added.
    state_dict
        ``name -> torch.Tensor`` (e.g. ``net.state_dict()``); written with
        ``safetensors.torch`` (tensors are copied to the CPU).
    normalization, metrics, provenance
        JSON-ready dicts written to the files of the same names (NaN/inf become
        ``null``). See :func:`provenance` for the latter.
    model_card
        Markdown text of ``MODEL_CARD.md``.
    extra_files
        Further files to put into the folder, ``name -> text or bytes`` (e.g. a
        training log). Names must be plain file names.
    overwrite
        Replace an existing model folder.

    Returns
    -------
    Path
        ``folder``.

    Raises
    ------
    OutputFolderError
        ``folder`` exists and ``overwrite`` is false, or it exists and is not a model
        folder.
    ModelFolderError
        A value cannot be written (e.g. a config that is not JSON-ready).
    """
    import torch
    from safetensors.torch import save_file

    final = Path(folder)
    check_output_folder(final, overwrite=overwrite)
    names = set(MODEL_FILES)
    for name in extra_files or {}:
        if Path(name).name != name or name in names or name.startswith("."):
            raise ModelFolderError(
                f"extra file name {name!r} is not a plain file name or clashes with a model "
                "folder file; use a different name"
            )

    cfg = dict(_finite(dict(config)))
    cfg["schema_version"] = MODEL_SCHEMA_VERSION
    cfg["mechanoscope_version"] = __version__
    tensors: dict[str, torch.Tensor] = {}
    for key, value in state_dict.items():
        if not isinstance(value, torch.Tensor):
            raise ModelFolderError(
                f"state_dict entry {key!r} is a {type(value).__name__}, not a tensor; "
                "pass net.state_dict() and put other values into config"
            )
        tensors[str(key)] = value.detach().to("cpu").clone().contiguous()

    old: Path | None = None
    with atomic_path(final) as tmp:
        tmp.mkdir()
        try:
            write_json(cfg, tmp / "config.json")
            write_json(_finite(dict(normalization)), tmp / "normalization.json")
            write_json(_finite(dict(metrics)), tmp / "metrics.json")
            write_json(_finite(dict(provenance)), tmp / "provenance.json")
        except TypeError as exc:
            raise ModelFolderError(f"{final}: a value is not JSON-ready ({exc})") from exc
        save_file(
            tensors,
            str(tmp / "weights.safetensors"),
            metadata={"format": "pt", "mechanoscope_version": __version__,
                      "schema_version": str(MODEL_SCHEMA_VERSION)},
        )
        (tmp / "MODEL_CARD.md").write_text(model_card if model_card.endswith("\n") else model_card + "\n")
        for name, content in (extra_files or {}).items():
            if isinstance(content, bytes):
                (tmp / name).write_bytes(content)
            else:
                (tmp / name).write_text(content)
        if final.exists():
            # move the old folder aside; atomic_path renames tmp into place next
            old = final.with_name(f".{final.name}.old-{os.getpid()}")
            os.replace(final, old)
    if old is not None:
        shutil.rmtree(old, ignore_errors=True)
    return final


# --------------------------------------------------------------------------- loading
def _read_json(path: Path) -> dict[str, Any]:
    try:
        data = json.loads(path.read_text())
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as exc:
        raise ModelFolderError(
            f"{path}: could not be read as JSON ({exc}); the model folder is damaged, copy "
            "it again or retrain the model"
        ) from exc
    if not isinstance(data, dict):
        raise ModelFolderError(f"{path}: expected a JSON object, got {type(data).__name__}")
    return data


def load_model_folder(folder: str | os.PathLike[str]) -> ModelFolder:
    """Load and check a model folder written by :func:`save_model_folder`.

    Parameters
    ----------
    folder
        The model folder.

    Returns
    -------
    ModelFolder
        Config, weights (CPU tensors), normalisation, metrics, provenance, card.

    Raises
    ------
    ModelFolderError
        The folder does not exist, lacks files (all missing ones are named), or a
        file is damaged.
    ModelSchemaError
        ``config.json`` has a ``schema_version`` other than
        :data:`MODEL_SCHEMA_VERSION`.
    """
    from safetensors import SafetensorError
    from safetensors.torch import load_file

    p = Path(folder)
    if not p.exists():
        raise ModelFolderError(f"{p}: no such model folder; check the path")
    if not p.is_dir():
        raise ModelFolderError(
            f"{p}: is a file, but a model is a folder holding {', '.join(MODEL_FILES)}; "
            "pass the folder"
        )
    missing = [name for name in MODEL_FILES if not (p / name).is_file()]
    if missing:
        raise ModelFolderError(
            f"{p}: model folder is incomplete, missing {', '.join(missing)}; it was not "
            "written by mechanoscope or was copied only in part — copy the whole folder "
            "again or retrain the model"
        )
    config = _read_json(p / "config.json")
    found = config.get("schema_version")
    if found != MODEL_SCHEMA_VERSION:
        written_by = config.get("mechanoscope_version", "an unknown version")
        raise ModelSchemaError(
            f"{p}: model folder has schema version {found!r} (written by mechanoscope "
            f"{written_by}) but this mechanoscope {__version__} reads schema version "
            f"{MODEL_SCHEMA_VERSION}; retrain the model with this version, or use "
            f"mechanoscope {written_by} to apply it"
        )
    try:
        state_dict = load_file(str(p / "weights.safetensors"), device="cpu")
    except (SafetensorError, OSError, ValueError) as exc:
        raise ModelFolderError(
            f"{p / 'weights.safetensors'}: could not be read ({exc}); the file is damaged, "
            "copy the model folder again or retrain"
        ) from exc
    extra = sorted(q.name for q in p.iterdir() if q.is_file() and q.name not in MODEL_FILES)
    return ModelFolder(
        path=p,
        config=config,
        state_dict=state_dict,
        normalization=_read_json(p / "normalization.json"),
        metrics=_read_json(p / "metrics.json"),
        provenance=_read_json(p / "provenance.json"),
        model_card=(p / "MODEL_CARD.md").read_text(),
        extra_files=extra,
    )
