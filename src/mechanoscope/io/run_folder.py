"""The run folder: one type that owns a run's layout and its ``run.json``.

Every stage that writes into a run folder (``segment``, ``extract``, ``predict``)
opens it through :meth:`RunFolder.open` with the settings its results depend on, and
records each image as it finishes (:meth:`RunFolder.mark_done`) or fails
(:meth:`RunFolder.mark_failed`). ``run.json`` is rewritten atomically after every
image, so a run killed at any point (even with ``kill -9``) resumes:

* an image counts as finished only when its status says ``done`` *and* every file
  the status names exists (and, where the stage gives them, its input files have the
  size and modification time they had): a partial image is redone, never mistaken for
  a finished one;
* temporaries a killed run left under a temporary name (``.NAME.tmp-PID…``,
  ``.NAME.old-PID…``, e.g. the orphan ``.crops.tmp-PID.zarr`` of an interrupted
  consolidation) are removed when the folder is opened;
* per-image results (``parts/<stage>/<image_id>.parquet`` and ``.crops.npy``) are
  consolidated into ``crops.zarr`` and the cell table at the end and on every resume
  (:meth:`RunFolder.consolidate`), in the order of the images, so the result does not
  depend on where a run was interrupted.

Layout::

    RUN/run.json                      parameters, versions, models, per-image status
    RUN/labels/<image_id>.tif         label images
    RUN/parts/<stage>/<image_id>.*    per-image cell rows and crops of a stage
    RUN/cells.parquet                 the cell table
    RUN/crops.zarr                    crops in the table's row order
    RUN/figures/, RUN/evaluation.json, RUN/report.html

``run.json``::

    {"schema_version": 1, "kind": "mechanoscope run", "versions": {...},
     "provenance": {...}, "models": [...],
     "stages": {"segment": {"settings": ..., "complete": ..., "n_failed": ...,
                            "images": {image_id: {"status": "done"|"failed",
                                                  "files": [...], "stage": ..., "error": ...,
                                                  "seconds": {...}, ...}}},
                "extract": {...}, "predict": {..., "models": [...], "columns": [...]}}}

A re-run with other settings is refused (or, for stages whose outputs are cheap to
remake, redone: ``on_other_settings="redo"``) unless ``overwrite``; a run in which no
image finished never blocks its own corrected re-run.
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import os
import platform
import shutil
import sys
import time
from collections.abc import Callable, Iterable, Mapping, Sequence
from pathlib import Path
from typing import Any, Literal

import numpy as np

from mechanoscope.errors import MechanoscopeError, OutputFolderError
from mechanoscope.io import atomic

__all__ = ["RUN_RECORD", "SCHEMA_VERSION", "STAGES", "RunFolder", "file_fingerprint", "model_identity", "read_run_record", "software_versions"]

RUN_RECORD = "run.json"
SCHEMA_VERSION = 1
STAGES = ("segment", "extract", "predict")
"""Stages that record per-image status in ``run.json``."""


def software_versions() -> dict[str, str]:
    """Versions of mechanoscope, Python and the libraries results depend on."""
    from mechanoscope import __version__

    out = {"mechanoscope": __version__, "python": platform.python_version()}
    for mod in ("numpy", "scipy", "skimage", "pandas", "pyarrow", "zarr", "pydantic", "tifffile", "torch"):
        m = sys.modules.get(mod)
        if m is None:
            continue  # only what this process uses: importing torch just to name it costs seconds
        out[mod] = str(getattr(m, "__version__", "unknown"))
    return out


def _sha256(path: Path) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as fh:
        for block in iter(lambda: fh.read(1 << 20), b""):
            h.update(block)
    return h.hexdigest()


def model_identity(path: str | os.PathLike[str]) -> dict[str, Any]:
    """Identity of a model folder: its path, a digest of its files and its version fields.

    ``sha256`` is the SHA-256 of the sorted ``(relative path, SHA-256)`` of every
    regular file under the folder, so a model retrained into the same folder has another
    identity (and predictions of the old one are never taken for the new one's).
    """
    root = Path(path)
    if not root.is_dir():
        raise MechanoscopeError(f"{root}: no such model folder")
    h = hashlib.sha256()
    for p in sorted(q for q in root.rglob("*") if q.is_file() and not q.name.startswith(".")):
        h.update(f"{p.relative_to(root).as_posix()}\0{_sha256(p)}\n".encode())
    info: dict[str, Any] = {"path": str(root.resolve()), "sha256": h.hexdigest()}
    cfg = root / "config.json"
    if cfg.is_file():
        with contextlib.suppress(OSError, ValueError):
            data = json.loads(cfg.read_text())
            for key in ("schema_version", "mechanoscope_version", "task", "target", "model_type", "architecture"):
                if isinstance(data, dict) and key in data:
                    info[key] = data[key]
    return info


def file_fingerprint(paths: Iterable[str | os.PathLike[str]]) -> dict[str, list[int]]:
    """``{path: [size in bytes, modification time in ns]}``: an input changed since it was used?"""
    out: dict[str, list[int]] = {}
    for p in paths:
        st = os.stat(p)
        out[str(p)] = [int(st.st_size), int(st.st_mtime_ns)]
    return out


def read_run_record(root: str | os.PathLike[str]) -> dict[str, Any] | None:
    """The ``run.json`` of ``root`` (``None`` if there is none).

    Raises
    ------
    MechanoscopeError
        The file exists but is not a JSON object of a known schema version.
    """
    path = Path(root) / RUN_RECORD
    if not path.is_file():
        return None
    try:
        data = json.loads(path.read_text())
    except (OSError, ValueError) as exc:
        raise MechanoscopeError(f"{path}: could not be read as JSON ({exc}); run the stage again with --overwrite") from None
    if not isinstance(data, dict) or not isinstance(data.get("stages", {}), dict):
        raise MechanoscopeError(f"{path}: not a mechanoscope run record; choose another --out or pass --overwrite")
    if data.get("schema_version", SCHEMA_VERSION) > SCHEMA_VERSION:
        raise MechanoscopeError(
            f"{path}: written by a newer mechanoscope (run.json schema {data.get('schema_version')}, this one reads "
            f"{SCHEMA_VERSION}); update mechanoscope or use another --out"
        )
    return data


def _is_temporary(name: str) -> bool:
    return name.startswith(".") and (".tmp-" in name or ".old-" in name)


class RunFolder:
    """A run folder opened by one stage (see the module docstring).

    Create it with :meth:`open`; the constructor only wraps an already checked record.

    Attributes
    ----------
    root
        The run folder.
    stage
        The stage that opened it (one of :data:`STAGES`).
    settings
        What this stage's results depend on.
    n_resumed
        Images an earlier run had finished that this one skipped (counted by :meth:`finished`).
    """

    def __init__(self, root: Path, stage: str, record: dict[str, Any], settings: Mapping[str, Any]) -> None:
        self.root = root
        self.stage = stage
        self.record = record
        self.settings = dict(settings)
        self.n_resumed = 0
        self._previous: dict[str, dict] = dict(record["stages"].get(stage, {}).get("images", {}))
        self._images: dict[str, dict] = {}

    # ------------------------------------------------------------------ layout
    @property
    def record_path(self) -> Path:
        return self.root / RUN_RECORD

    @property
    def labels_dir(self) -> Path:
        return self.root / "labels"

    @property
    def parts_dir(self) -> Path:
        """``parts/<stage>/``: this stage's per-image rows and crops."""
        return self.root / "parts" / self.stage

    @property
    def cells_path(self) -> Path:
        return self.root / "cells.parquet"

    @property
    def crops_path(self) -> Path:
        return self.root / "crops.zarr"

    @property
    def figures_dir(self) -> Path:
        return self.root / "figures"

    @property
    def report_path(self) -> Path:
        return self.root / "report.html"

    def label_path(self, image_id: str) -> Path:
        return self.labels_dir / f"{image_id}.tif"

    def part_paths(self, image_id: str) -> tuple[Path, Path]:
        """``(rows .parquet, crops .crops.npy)`` of one image of this stage."""
        return self.parts_dir / f"{image_id}.parquet", self.parts_dir / f"{image_id}.crops.npy"

    def relative(self, path: Path) -> str:
        return Path(path).relative_to(self.root).as_posix()

    # ------------------------------------------------------------------ opening
    @classmethod
    def open(
        cls,
        root: str | os.PathLike[str],
        stage: str,
        settings: Mapping[str, Any],
        *,
        overwrite: bool = False,
        on_other_settings: Literal["refuse", "redo"] = "refuse",
        foreign_outputs: Callable[[Path], bool] | None = None,
        legacy: Callable[[Path], dict | None] | None = None,
        models: Sequence[Mapping[str, Any]] | None = None,
        command: str | Sequence[str] | None = None,
        what: str = "run folder (--out)",
    ) -> RunFolder:
        """Open (create) ``root`` for ``stage``: check it, decide what to resume, remove temporaries.

        Parameters
        ----------
        root
            The run folder; created (an unusable path is an
            :class:`~mechanoscope.errors.OutputFolderError` before any work).
        stage
            One of :data:`STAGES`.
        settings
            JSON-ready settings the stage's results depend on (compared on resume).
        overwrite
            Forget every earlier result of this stage: every image is redone.
        on_other_settings
            When the folder holds finished images of this stage made with other
            settings: ``"refuse"`` (an :class:`OutputFolderError` that says to pass
            ``--overwrite`` or use another folder) or ``"redo"`` every image.
        foreign_outputs
            ``foreign_outputs(root) → bool``: the folder holds outputs of this kind
            that no run of this stage recorded (e.g. label images of another tool):
            refused unless ``overwrite``.
        legacy
            ``legacy(root) → section or None``: a stage section converted from an older
            record (e.g. ``segment.json``) when ``run.json`` has none.
        models
            Identity of the models this stage uses (:func:`model_identity`).
        command
            Command line for the provenance (default ``sys.argv``).
        """
        if stage not in STAGES:
            raise ValueError(f"unknown stage {stage!r}; one of {STAGES}")
        root = atomic.make_output_folder(root, what)
        record = read_run_record(root) if not overwrite else None
        if overwrite and (root / RUN_RECORD).is_file():
            with contextlib.suppress(MechanoscopeError):
                record = read_run_record(root)
        if record is None:
            record = {"schema_version": SCHEMA_VERSION, "kind": "mechanoscope run", "stages": {}}
        record.setdefault("stages", {})
        section = record["stages"].get(stage)
        if section is None and legacy is not None and not overwrite:
            section = legacy(root)
        settings = json.loads(json.dumps(dict(settings), default=atomic._json_default))  # as it reads back
        cls(root, stage, record, settings).remove_temporaries()  # a killed run's half-written files are nobody's outputs
        done = bool(section) and any(isinstance(e, dict) and e.get("status") == "done" for e in section.get("images", {}).values())
        where = f"{root}"
        if overwrite:
            section = None
        elif section is None:
            if foreign_outputs is not None and foreign_outputs(root):
                raise OutputFolderError(
                    f"{where}: holds {stage} outputs that no {stage} run of this folder recorded in {RUN_RECORD}; "
                    "use another --out, or pass --overwrite to redo every image here"
                )
        elif section.get("settings") != settings:
            if done and on_other_settings == "refuse":
                raise OutputFolderError(
                    f"{where}: holds {stage} results made with different settings ({_first_difference(section.get('settings'), settings)}); "
                    "use another --out, or pass --overwrite to redo every image with these settings"
                )
            section = None  # no image finished (a failed run never blocks its corrected re-run), or redo
        record["stages"][stage] = {
            "settings": settings,
            "images": dict(section.get("images", {})) if section else {},
            "complete": False,
            "started": time.strftime("%Y-%m-%dT%H:%M:%S%z"),
        }
        if models is not None:
            record["stages"][stage]["models"] = [dict(m) for m in models]
            record["models"] = [dict(m) for m in models]
        record["versions"] = software_versions()
        record.setdefault("provenance", {})
        record["provenance"][stage] = {"command": list(command) if isinstance(command, (list, tuple)) else (command if command is not None else list(sys.argv)),
                                       "created": record["stages"][stage]["started"]}
        folder = cls(root, stage, record, settings)
        folder._previous = record["stages"][stage]["images"]
        folder.save()  # from now on the folder says which stage is under way, also if killed before the first image
        return folder

    def remove_temporaries(self) -> list[Path]:
        """Delete what a killed run left under a temporary name; returns what was removed."""
        removed: list[Path] = []
        folders = [self.root, self.labels_dir, self.figures_dir, self.root / "parts"]
        if (self.root / "parts").is_dir():
            folders += [p for p in (self.root / "parts").iterdir() if p.is_dir() and not _is_temporary(p.name)]
        for folder in folders:
            if not folder.is_dir():
                continue
            for p in folder.iterdir():
                if _is_temporary(p.name):
                    with contextlib.suppress(FileNotFoundError):
                        shutil.rmtree(p) if p.is_dir() and not p.is_symlink() else p.unlink()
                    removed.append(p)
        return removed

    # ------------------------------------------------------------------ status
    def settings_match(self, settings: Mapping[str, Any]) -> bool:
        """Whether ``settings`` are those this stage runs with (as they read back from JSON)."""
        return json.loads(json.dumps(dict(settings), default=atomic._json_default)) == self.settings

    def previous(self, image_id: str) -> dict | None:
        """The status an earlier run recorded for ``image_id`` (``None``: none)."""
        return self._previous.get(image_id)

    def finished(self, image_id: str, *, inputs: Mapping[str, Sequence[int]] | None = None) -> bool:
        """Whether an earlier run finished ``image_id``: status ``done``, its files exist, its inputs unchanged.

        ``inputs`` (:func:`file_fingerprint` of the image's input files) is compared with
        the fingerprint recorded when the image was done (records of older versions
        have none: then only status and files count).

        A finished image's status is carried into this run (and counted in
        :attr:`n_resumed`); anything else is to be redone.
        """
        entry = self._previous.get(image_id)
        ok = (
            isinstance(entry, dict)
            and entry.get("status") == "done"
            and all((self.root / f).is_file() for f in entry.get("files", []))
            and bool(entry.get("files"))
            and (inputs is None or "inputs" not in entry or entry["inputs"] == {k: list(v) for k, v in inputs.items()})
        )
        if ok:
            self._images[image_id] = entry  # type: ignore[assignment]
            self.n_resumed += 1
        return bool(ok)

    def mark_done(self, image_id: str, *, files: Sequence[Path], image: str | os.PathLike[str] | None = None,
                  inputs: Mapping[str, Sequence[int]] | None = None, seconds: Mapping[str, float] | None = None, **info: Any) -> dict:
        """Record ``image_id`` as finished (after its ``files`` were written) and rewrite ``run.json``."""
        entry: dict[str, Any] = {"image_id": image_id, "status": "done", "files": [self.relative(Path(f)) for f in files]}
        if image is not None:
            entry["image"] = str(image)
        if inputs is not None:
            entry["inputs"] = {k: list(v) for k, v in inputs.items()}
        if seconds is not None:
            entry["seconds"] = {k: round(float(v), 4) for k, v in seconds.items()}
        entry.update(info)
        self._images[image_id] = entry
        self.save()
        return entry

    def mark_failed(self, key: str, *, image: str | os.PathLike[str], stage: str, error: str, file: str | os.PathLike[str] | None = None,
                    seconds: Mapping[str, float] | None = None, save: bool = True, **info: Any) -> dict:
        """Record that ``key`` (an image id) failed at ``stage`` with ``error``; rewrite ``run.json``."""
        entry: dict[str, Any] = {"image_id": key.split("#")[0], "status": "failed", "image": str(image), "file": str(file if file is not None else image),
                                 "stage": stage, "error": error}
        if seconds is not None:
            entry["seconds"] = {k: round(float(v), 4) for k, v in seconds.items()}
        entry.update(info)
        self._images[key] = entry
        if save:
            self.save()
        return entry

    @property
    def images(self) -> dict[str, dict]:
        """This run's per-image status, in the order the images were met."""
        return dict(self._images)

    @property
    def done(self) -> list[str]:
        return [k for k, e in self._images.items() if e["status"] == "done"]

    @property
    def failed(self) -> list[dict]:
        return [e for e in self._images.values() if e["status"] == "failed"]

    def save(self, *, complete: bool = False, **extra: Any) -> Path:
        """Rewrite ``run.json`` atomically with this stage's status (``extra``: more keys of its section)."""
        section = self.record["stages"][self.stage]
        section.update(extra)
        if complete:
            section["images"] = self._images
        else:  # while under way, what an earlier run finished stays on record (a kill now loses nothing)
            section["images"] = {**self._images, **{k: v for k, v in self._previous.items() if k not in self._images}}
        section["n_failed"] = len(self.failed)
        section["complete"] = bool(complete)
        if complete:
            section["finished"] = time.strftime("%Y-%m-%dT%H:%M:%S%z")
        return atomic.write_json(self.record, self.record_path)

    # ------------------------------------------------------------------ results
    def save_crops(self, path: Path, crops: np.ndarray) -> None:
        """Write one image's ``(n, C, P, P)`` crops to ``path`` (``.npy``), atomically."""
        with atomic.atomic_path(path) as tmp, open(tmp, "wb") as fh:
            np.save(fh, np.asarray(crops, dtype=np.float32), allow_pickle=False)

    def consolidate(self, image_ids: Sequence[str], *, crop_size_um: float, crop_pixels: int, channels: Sequence[str], attrs: Mapping[str, Any] | None = None) -> Any:
        """Join the parts of ``image_ids`` (in this order): crops into ``crops.zarr``, rows into the returned table.

        The crops are streamed into the store one image at a time; the store appears by
        rename. The caller writes the table (``cells.parquet``) after adding run-wide
        columns; a kill between the two leaves a table that does not match the store,
        which the next run (a resume) consolidates again.
        """
        import pandas as pd

        from mechanoscope.io.crop_store import CropStoreWriter
        from mechanoscope.io.tables import read_table

        tables: list[Any] = []
        with CropStoreWriter(self.crops_path, crop_size_um=crop_size_um, crop_pixels=crop_pixels, channels=list(channels), attrs=dict(attrs or {})) as writer:
            for image_id in image_ids:
                rows_path, crops_path = self.part_paths(image_id)
                table = read_table(rows_path)
                crops = np.load(crops_path, allow_pickle=False)
                if len(crops) != len(table):
                    raise MechanoscopeError(f"{self.parts_dir}: {image_id} has {len(table)} cell rows but {len(crops)} crops; rerun with --overwrite")
                writer.append(crops, image_id=image_id, cell_ids=table["cell_id"].to_numpy(), frames=table["frame"].to_numpy(),
                              pad_value=float(table["crop_pad_value"].iloc[0]) if len(table) and "crop_pad_value" in table else None)
                tables.append(table)
                del crops
        nonempty = [t for t in tables if len(t)]
        if nonempty:
            return pd.concat(nonempty, ignore_index=True)
        return tables[0].reset_index(drop=True) if tables else pd.DataFrame()


def _first_difference(old: Any, new: Any, path: str = "") -> str:
    """Where two settings differ, in words (``method: 'classical' → 'network'``)."""
    if isinstance(old, dict) and isinstance(new, dict):
        for k in sorted(set(old) | set(new), key=str):
            if old.get(k) != new.get(k):
                return _first_difference(old.get(k), new.get(k), f"{path}.{k}" if path else str(k))
        return path or "settings"
    def short(v: Any) -> str:
        text = json.dumps(v, default=str)
        return text if len(text) <= 60 else text[:57] + "…"
    return f"{path or 'settings'}: {short(old)} → {short(new)}"
