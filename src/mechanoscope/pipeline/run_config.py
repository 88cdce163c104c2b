"""What ``mechanoscope run CONFIG.yaml`` runs: inputs, segmentation, models, outputs, cluster.

A batch run is described by one YAML/JSON file (:class:`RunConfig`, unknown keys are
refused), e.g.::

    inputs: ["plate1/*.tif", "plate2/"]          # folders, files or glob patterns
    layout_pattern: "(?P<well>[A-H][0-9]{2})_f(?P<field>[0-9]+)"  # optional: columns from file names
    pixel_size_um: 0.65                           # optional: overrides the files' metadata
    segmentation: classical                       # classical, builtin or a segmentation model folder
    models: [models/softstiff, models/modulus]    # stiffness model folders
    out: results/plate1
    cluster: local                                # local (embedded Dask cluster), none, or tcp://host:port
    n_workers: 2

:func:`expand_inputs` turns the inputs into the ordered list of image files and, with a
``layout_pattern``, the per-image columns (plate, well, field, condition …) that join
the cell table.
"""

from __future__ import annotations

import glob
import os
import re
from pathlib import Path
from typing import Any

from pydantic import Field, field_validator

from mechanoscope.config import StrictConfig
from mechanoscope.errors import ConfigError, MechanoscopeError

__all__ = ["RunConfig", "expand_inputs"]


class RunConfig(StrictConfig):
    """A batch run: images in, run folder out, optionally on a Dask cluster."""

    inputs: list[str] = Field(..., min_length=1, description="Image folders, image files or glob patterns (relative paths are relative to the config file).")
    layout_pattern: str | None = Field(
        None,
        description=(
            "Regular expression with named groups matched against each file name (without folder); every group "
            "becomes a column of the cell table (e.g. plate, well, field, condition). A file that does not match is an error."
        ),
    )
    pixel_size_um: float | None = Field(None, gt=0, description="Pixel size in µm for every image; default: each file's metadata.")
    segmentation: str = Field("builtin", description="builtin (the model shipped with mechanoscope), classical, or the folder of a segmentation model.")
    segmentation_settings: dict[str, Any] = Field(default_factory=dict, description="Settings of the segmenter (its config's fields).")
    models: list[str] = Field(..., min_length=1, description="Stiffness model folders (classifier and/or regressor).")
    extract: dict[str, Any] = Field(default_factory=dict, description="Extraction settings (ExtractConfig fields); the crop geometry comes from the first CNN model.")
    out: str = Field(..., description="Run folder to write (relative to the config file).")
    batch_size: int = Field(256, ge=1, description="Crops per network pass.")
    max_pixels: int | None = Field(None, ge=1, description="Largest image (pixels) read; default: the reader's limit.")
    cluster: str = Field(
        "local",
        description="'local': an embedded Dask cluster on this machine; 'none': in this process, one image after another; "
        "'tcp://host:port': an existing Dask scheduler (e.g. started by dask-jobqueue on SLURM/PBS).",
    )
    n_workers: int = Field(2, ge=1, description="Worker processes of the embedded local cluster.")
    threads_per_worker: int = Field(1, ge=1, description="Threads per worker of the embedded local cluster (each worker handles one image at a time).")
    memory_limit: str = Field("auto", description="Memory limit per local worker (Dask syntax, e.g. '4GiB').")
    connect_timeout_s: float = Field(10.0, gt=0, description="How long to wait for a scheduler given as tcp://host:port.")
    overwrite: bool = Field(False, description="Redo every image, also when out holds results made with other settings.")

    @field_validator("cluster")
    @classmethod
    def _cluster(cls, v: str) -> str:
        if v in ("local", "none") or re.match(r"^(tcp|tls|inproc|ucx)://", v):
            return v
        raise ValueError("use 'local', 'none' or a scheduler address such as tcp://host:8786")

    @field_validator("layout_pattern")
    @classmethod
    def _pattern(cls, v: str | None) -> str | None:
        if v is None:
            return v
        try:
            compiled = re.compile(v)
        except re.error as exc:
            raise ValueError(f"not a regular expression ({exc})") from None
        if not compiled.groupindex:
            raise ValueError("has no named group such as (?P<well>[A-H][0-9]{2}); each named group becomes a column")
        return v

    @classmethod
    def from_file(cls, path: str | os.PathLike[str]) -> RunConfig:
        """Load a run file; relative ``inputs``, ``models``, ``out`` and a segmentation folder are taken relative to it."""
        cfg = super().from_file(path)
        base = Path(path).resolve().parent
        return cfg.resolved(base)

    def resolved(self, base: Path) -> RunConfig:
        """Paths made absolute against ``base`` (what :meth:`from_file` does with the file's folder)."""

        def absolute(p: str) -> str:
            return p if os.path.isabs(os.path.expanduser(p)) else str(base / p)

        seg = self.segmentation
        if seg.lower() not in ("classical", "builtin"):
            seg = absolute(seg)
        return self.model_copy(update={
            "inputs": [absolute(p) for p in self.inputs],
            "models": [absolute(p) for p in self.models],
            "out": absolute(self.out),
            "segmentation": seg,
        })


def expand_inputs(cfg: RunConfig) -> tuple[list[Path], dict[str, dict[str, str]]]:
    """The image files of ``cfg.inputs`` in a stable order, and the columns parsed from their names.

    Folders contribute their image files (:func:`mechanoscope.io.images.image_paths`),
    glob patterns their matches, files themselves; each file appears once, in the order
    of the inputs and, within one input, sorted by name.

    Returns
    -------
    paths, columns
        ``columns[image_id]`` holds the named groups of ``layout_pattern`` (empty without one).

    Raises
    ------
    MechanoscopeError
        An input that is neither a file, a folder nor a pattern that matches anything; a
        file name the layout pattern does not match (all of them are listed).
    """
    from mechanoscope.io.images import image_paths

    paths: list[Path] = []
    seen: set[Path] = set()
    problems: list[str] = []
    for item in cfg.inputs:
        p = Path(os.path.expanduser(item))
        if p.is_dir():
            found = image_paths(p)
        elif p.is_file():
            found = [p]
        elif glob.has_magic(item):
            found = sorted(Path(m) for m in glob.glob(os.path.expanduser(item), recursive=True) if Path(m).is_file())
            if not found:
                problems.append(f"{item}: the pattern matches no file")
        else:
            problems.append(f"{item}: no such file or folder")
            found = []
        for f in found:
            key = f.resolve()
            if key not in seen:
                seen.add(key)
                paths.append(f)
    if problems:
        raise MechanoscopeError("inputs: " + "; ".join(problems) + " (check the inputs of the run file)")
    if not paths:
        raise MechanoscopeError("inputs: no image file found in " + ", ".join(cfg.inputs))
    columns: dict[str, dict[str, str]] = {}
    if cfg.layout_pattern:
        rx = re.compile(cfg.layout_pattern)
        unmatched = []
        for f in paths:
            m = rx.search(f.name)
            if m is None:
                unmatched.append(f.name)
                continue
            columns[f.stem] = {k: v for k, v in m.groupdict().items() if v is not None}
        if unmatched:
            shown = ", ".join(unmatched[:5]) + (f" and {len(unmatched) - 5} more" if len(unmatched) > 5 else "")
            raise ConfigError(f"layout_pattern {cfg.layout_pattern!r} matches no part of {len(unmatched)} file name(s): {shown}; fix the pattern or the inputs")
    return paths, columns
