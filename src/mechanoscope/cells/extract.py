"""Extraction: image + label image → cell table (morphology, quality flags) + crops.

:func:`extract_cells` works on one image (arrays or :class:`~mechanoscope.io.Image`),
:func:`extract_folder` on folders of images and label images paired by file name; it
writes ``cells.parquet``, ``crops.zarr``, the run's ``run.json`` (stage ``extract``)
and ``extract.json`` (a summary for older readers) into a run folder. Any error with
one pair is reported (a :class:`~mechanoscope.errors.MechanoscopeWarning`, an entry in
``run.json``'s per-image status and in ``extract.json``'s ``errors`` and ``status``,
with the file and the stage) and the pair skipped; the other images are still
extracted. The batch resumes: each image's rows and crops are written to
``parts/extract/`` and its status to ``run.json`` as it finishes, so a killed run, run
again, skips the images it finished (same settings, unchanged input files) and redoes
the rest; the parts are consolidated into the table and the crop store at the end.
"""

from __future__ import annotations

import os
import platform
import time
import warnings
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
from pydantic import BaseModel, ConfigDict, Field, ValidationError

from mechanoscope import __version__
from mechanoscope.cells._validate import (
    LabelImageError,
    ShapeMismatchError,
    as_label_array,
    compact_ids,
)
from mechanoscope.cells.crops import CropConfig, crop_cells, crop_outside_fraction
from mechanoscope.cells.morphology import measure_cells
from mechanoscope.cells.quality import QualityConfig, quality_flags
from mechanoscope.errors import AxesError, BatchFailedError, ConfigError, MechanoscopeError, MechanoscopeWarning, failure_message
from mechanoscope.io.atomic import check_output_folder_path, write_json
from mechanoscope.io.pairing import LABEL_SUFFIXES, pair_images_and_labels
from mechanoscope.io.images import (
    Image,
    check_image_values,
    read_image,
    read_label_image,
)
from mechanoscope.io.tables import write_table

__all__ = [
    "ExtractConfig",
    "ExtractResult",
    "extract_cells",
    "extract_folder",
    "pair_images_and_labels",
    "LABEL_SUFFIXES",
    "ProgressCallback",
]

ProgressCallback = Callable[[int, int], None]
"""``progress(done, total)``: called after each image pair of a batch."""

class ExtractConfig(BaseModel):
    """Settings of cell extraction; written into ``extract.json``."""

    model_config = ConfigDict(extra="forbid")

    crop: CropConfig = Field(default_factory=CropConfig, description="Crop geometry and channels.")
    quality: QualityConfig = Field(
        default_factory=QualityConfig, description="Thresholds of the quality flags."
    )
    relabel: bool = Field(
        False,
        description=(
            "Label connected components of the label image first (needed for binary "
            "masks, where all cells share the value 1 or 255)."
        ),
    )
    axes: str | None = Field(
        None,
        description=(
            "Axis letters of the images (e.g. 'CYX', 'TYX') when the files do not name "
            "them; None = from the file."
        ),
    )
    channel: int | None = Field(
        None, ge=0, description="Channel (0-based) to crop from multichannel images."
    )
    pixel_size_um: float | None = Field(
        None, gt=0, description="Pixel size in µm overriding the images' metadata; None = from metadata."
    )

    @classmethod
    def from_file(cls, path: str | os.PathLike[str]) -> "ExtractConfig":
        """Load from a JSON or YAML file (a whole ``extract.json`` works too: its ``config`` is used)."""
        return cls.build(**_load_mapping(path))

    @classmethod
    def build(cls, **fields: Any) -> "ExtractConfig":
        """Validate fields into a config; invalid values raise :class:`ConfigError`."""
        try:
            return cls.model_validate(fields)
        except ValidationError as exc:
            raise ConfigError(f"invalid extraction settings: {_explain(exc)}") from None


def _explain(exc: ValidationError) -> str:
    parts = []
    for err in exc.errors():
        loc = ".".join(str(x) for x in err.get("loc", ())) or "config"
        parts.append(f"{loc}: {err.get('msg', '')}")
    return "; ".join(parts)


def _load_mapping(path: str | os.PathLike[str]) -> dict[str, Any]:
    from mechanoscope.config import read_config_mapping

    data = read_config_mapping(path, "extraction settings")
    if "config" in data and "provenance" in data:  # an extract.json
        data = data["config"]
    return dict(data)


def _as_config(config: ExtractConfig | dict[str, Any] | None) -> ExtractConfig:
    if config is None:
        return ExtractConfig()
    if isinstance(config, ExtractConfig):
        return config
    return ExtractConfig.build(**config)


def _where(obj: Any, fallback: str) -> str:
    if isinstance(obj, Image) and obj.path is not None:
        return str(obj.path)
    return fallback


def _to_tyx(data: np.ndarray, axes: str) -> np.ndarray:
    if "T" not in axes:
        data, axes = data[None], "T" + axes
    return np.transpose(data, [axes.index(a) for a in "TYX"])


def _image_frames(image: Image | np.ndarray, cfg: ExtractConfig, where: str) -> np.ndarray:
    """Return the intensity image as ``(T, H, W)``, selecting channel and checking Z."""
    if isinstance(image, Image):
        data, axes = image.data, image.axes
    else:
        data = np.asarray(image)
        if data.ndim == 2:
            axes = "YX"
        elif cfg.axes is not None:
            axes = cfg.axes.upper()
            if len(axes) != data.ndim or not set(axes) <= set("TCZYX") or not {"Y", "X"} <= set(axes):
                raise AxesError(
                    f"{where}: axes={cfg.axes!r} do not fit an image of shape {data.shape}; use "
                    "one distinct letter of T, C, Z, Y, X per dimension"
                )
        else:
            raise AxesError(
                f"{where}: image of shape {data.shape} has {data.ndim} dimensions; pass the "
                "axes explicitly, e.g. axes='CYX' or 'TYX' (CLI: --axes)"
            )
    if "C" in axes:
        k = axes.index("C")
        n = data.shape[k]
        if cfg.channel is None:
            if n != 1:
                raise AxesError(
                    f"{where}: image has {n} channels (axes {axes!r}); choose the one to crop "
                    "with channel=K (CLI: --channel K, 0-based)"
                )
            ch = 0
        else:
            if cfg.channel >= n:
                raise AxesError(
                    f"{where}: channel={cfg.channel} but the image has only {n} channels "
                    f"(0..{n - 1})"
                )
            ch = cfg.channel
        data, axes = np.take(data, ch, axis=k), axes.replace("C", "")
    elif cfg.channel not in (None, 0):
        raise AxesError(
            f"{where}: channel={cfg.channel} given but the image has no channel axis "
            f"(axes {axes!r}); leave the channel option out"
        )
    if "Z" in axes:
        k = axes.index("Z")
        if data.shape[k] != 1:
            raise AxesError(
                f"{where}: image is a Z stack of {data.shape[k]} planes (axes {axes!r}); "
                "extraction works on 2-D images: project the stack or select one plane first"
            )
        data, axes = np.take(data, 0, axis=k), axes.replace("Z", "")
    return _to_tyx(data, axes)


def _label_frames(labels: Image | np.ndarray, n_frames: int, where: str) -> np.ndarray:
    """Return the labels as ``(T, H, W)``."""
    if isinstance(labels, Image):
        data, axes = labels.data, labels.axes
    else:
        data = np.asarray(labels)
        axes = {2: "YX", 3: "TYX"}.get(data.ndim, "")
        if not axes:
            raise LabelImageError(f"{where}: expected a (H, W) or (T, H, W) label image, got shape {data.shape}")
    for a in "CZ":
        if a in axes:
            k = axes.index(a)
            if data.shape[k] != 1:
                raise LabelImageError(
                    f"{where}: label image has {data.shape[k]} planes along axis {a!r}; a label "
                    "image must be 2-D (or one plane per time frame)"
                )
            data, axes = np.take(data, 0, axis=k), axes.replace(a, "")
    if "T" in axes and data.shape[axes.index("T")] == 1 and n_frames == 1:
        data, axes = np.take(data, 0, axis=axes.index("T")), axes.replace("T", "")
    return _to_tyx(data, axes)


def extract_cells(
    image: Image | np.ndarray,
    labels: Image | np.ndarray,
    *,
    pixel_size_um: float | None = None,
    config: ExtractConfig | dict[str, Any] | None = None,
    image_id: str | None = None,
) -> tuple[pd.DataFrame, np.ndarray]:
    """Measure, flag and crop every cell of one image.

    Parameters
    ----------
    image
        Intensity image: an :class:`~mechanoscope.io.Image` (axes and pixel size
        known) or an array — ``(H, W)``, or with more dimensions together with
        ``config.axes``. A channel axis needs ``config.channel`` unless it has length
        1; a time axis ``T`` is extracted frame by frame (``frame`` column).
    labels
        Label image (0 = background, one id per cell) of the same shape as the
        image's ``(H, W)`` (or ``(T, H, W)``) planes, as :class:`Image` or array.
    pixel_size_um
        Pixel size of the image in µm; required for arrays, overrides an
        :class:`Image`'s own pixel size.
    config
        :class:`ExtractConfig` (or a dict of its fields); defaults to ``ExtractConfig()``.
    image_id
        Value of the ``image_id`` column; default: the image file's stem, else ``"image"``.

    Returns
    -------
    table : pandas.DataFrame
        One row per cell (and frame): morphology and intensity/texture columns
        (:func:`~mechanoscope.cells.morphology.measure_cells`), quality flags
        (:func:`~mechanoscope.cells.quality.quality_flags`), ``pixel_size_um``,
        ``crop_outside_fraction`` and ``crop_pad_value``.
    crops : numpy.ndarray
        ``(N, C, P, P)`` float32 crops in the table's row order
        (:func:`~mechanoscope.cells.crops.crop_cells`).

    Raises
    ------
    ShapeMismatchError
        Image and label shapes differ.
    LabelImageError
        Labels not integer, negative, or a binary mask (pass ``relabel=True``).
    AxesError
        Multichannel image without ``channel``, Z stacks, arrays of more than two
        dimensions without ``axes``.
    ImageReadError
        Empty, constant or NaN-containing image.
    MissingPixelSizeError
        No pixel size known.
    """
    cfg = _as_config(config)
    if image_id is None:
        image_id = image.name if isinstance(image, Image) else "image"
    img_where = _where(image, f"image {image_id}")
    lab_where = _where(labels, f"labels of {image_id}")
    if pixel_size_um is None and isinstance(image, Image):
        pixel_size_um = image.pixel_size_um
    if pixel_size_um is None:
        from mechanoscope.errors import MissingPixelSizeError

        raise MissingPixelSizeError(
            f"{img_where}: no pixel size known; pass pixel_size_um (CLI: --pixel-size-um), the "
            "value in µm for your camera and objective"
        )
    if not (np.isfinite(pixel_size_um) and pixel_size_um > 0):
        raise MechanoscopeError(f"pixel_size_um must be a positive number of µm, got {pixel_size_um}")
    px = float(pixel_size_um)

    img = _image_frames(image, cfg, img_where)
    lab = _label_frames(labels, img.shape[0], lab_where)
    if img.shape != lab.shape:
        def fmt(s: tuple[int, ...]) -> tuple[int, ...]:
            return s[1:] if s[0] == 1 else s

        raise ShapeMismatchError(
            f"{img_where} has shape {fmt(img.shape)} but its label image {lab_where} has shape "
            f"{fmt(lab.shape)}; they must cover the same pixels (check that the right files "
            "are paired and that the labels were made from this image)"
        )
    check_image_values(img, img_where)
    pad = cfg.crop.pad_value if cfg.crop.pad_value is not None else float(np.median(img))

    tables: list[pd.DataFrame] = []
    crops: list[np.ndarray] = []
    for t in range(img.shape[0]):
        lab_t = as_label_array(lab[t], lab_where, relabel_components=cfg.relabel)
        lab_t, original_ids = compact_ids(lab_t)
        tab = measure_cells(lab_t, img[t], pixel_size_um=px, image_id=str(image_id), frame=t)
        tab = quality_flags(tab, lab_t.shape, cfg.quality)
        tab["pixel_size_um"] = px
        tab["crop_outside_fraction"] = crop_outside_fraction(
            tab, lab_t.shape, pixel_size_um=px, config=cfg.crop
        )
        tab["crop_pad_value"] = pad
        crops.append(crop_cells(img[t], lab_t, tab, pixel_size_um=px, config=cfg.crop, pad_value=pad))
        if original_ids is not None:  # back to the ids of the label image
            tab["cell_id"] = original_ids[tab["cell_id"].to_numpy(dtype=np.int64)].astype(np.int64)
        tables.append(tab)
    nonempty = [t for t in tables if len(t)]
    table = pd.concat(nonempty, ignore_index=True) if nonempty else tables[0].reset_index(drop=True)
    crop_arr = np.concatenate(crops, axis=0)
    if len(table) == 0:
        warnings.warn(f"{lab_where}: label image holds no cells", MechanoscopeWarning, stacklevel=2)
    return table, crop_arr


# --------------------------------------------------------------------------- batch


@dataclass
class ExtractResult:
    """What :func:`extract_folder` wrote.

    Attributes
    ----------
    out_dir, table_path, crops_path, summary_path
        The run folder and its ``cells.parquet``, ``crops.zarr``, ``extract.json``.
    n_images
        Images extracted successfully.
    n_cells
        Rows of the cell table (= crops).
    errors
        One dict (``image``, ``labels``, ``file``, ``stage``, ``error``) per skipped image
        or label file; ``stage`` is ``"pair"``, ``"read image"``, ``"read labels"`` or
        ``"extract"``.
    table
        The cell table that was written.
    record_path
        ``run.json``, the run's record (per-image status, settings, versions).
    n_resumed
        Images an interrupted earlier run had finished (not redone).
    """

    out_dir: Path
    table_path: Path
    crops_path: Path
    summary_path: Path
    n_images: int
    n_cells: int
    errors: list[dict[str, str]] = field(default_factory=list)
    table: pd.DataFrame | None = None
    record_path: Path | None = None
    n_resumed: int = 0


def _versions() -> dict[str, str]:
    out = {"mechanoscope": __version__, "python": platform.python_version()}
    for mod in ("numpy", "scipy", "skimage", "pandas", "zarr", "pydantic"):
        try:
            out[mod] = __import__(mod).__version__
        except Exception:  # pragma: no cover - all are dependencies
            out[mod] = "unknown"
    return out


def extract_folder(
    images: str | os.PathLike[str] | Sequence[str | os.PathLike[str]],
    labels: str | os.PathLike[str] | Sequence[str | os.PathLike[str]],
    out_dir: str | os.PathLike[str],
    config: ExtractConfig | dict[str, Any] | None = None,
    progress: ProgressCallback | None = None,
    *,
    max_pixels: int | None = None,
    command: str | Sequence[str] | None = None,
) -> ExtractResult:
    """Extract cells from many images, writing a run folder.

    Parameters
    ----------
    images, labels
        Image and label files (a file, a folder, or a list of files), paired by name
        (:func:`pair_images_and_labels`).
    out_dir
        Run folder; receives ``cells.parquet`` (cell table), ``crops.zarr`` (crop
        store, rows = table rows), ``run.json`` (settings, versions, per-image status),
        ``parts/extract/`` (per-image rows and crops, for resuming) and
        ``extract.json`` (config, provenance, inputs, errors). The table and the store
        are replaced atomically at the end.
    config
        :class:`ExtractConfig` or a dict of its fields.
    progress
        ``progress(done, total)`` after each image pair (skipped ones included).
    max_pixels
        Largest image (values per file) read; default
        :func:`~mechanoscope.io.images.max_pixels_limit`.
    command
        Command line for the provenance in ``run.json`` (default ``sys.argv``).

    Returns
    -------
    ExtractResult

    Notes
    -----
    A pair that fails for any reason (unreadable file, shape mismatch, binary mask,
    missing pixel size, an unexpected error, …) is reported with a
    :class:`MechanoscopeWarning` and in ``errors`` of the result, ``run.json`` and
    ``extract.json`` (as ``failed`` in the per-image status), and skipped. If no pair at
    all can be extracted a :class:`~mechanoscope.errors.BatchFailedError` listing the
    problems is raised and the table and crop store in ``out_dir`` are left untouched
    (the failures are recorded in ``run.json``). A re-run resumes: images finished by
    an earlier run with the same settings and unchanged files are not redone; with
    other settings every image is redone (extraction is cheap and its results are
    remade from the inputs alone).
    """
    from mechanoscope.io.images import max_pixels_limit
    from mechanoscope.io.run_folder import RunFolder, file_fingerprint

    cfg = _as_config(config)
    check_output_folder_path(out_dir, "run folder (--out)")
    max_pixels_limit(max_pixels)  # a bad limit fails before any work
    pairs, errors = pair_images_and_labels(images, labels)
    run = RunFolder.open(out_dir, "extract", {"config": cfg.model_dump(mode="json")}, on_other_settings="redo", command=command)
    out = run.root
    for k, prob in enumerate(errors):
        prob.setdefault("file", prob["image"] or prob["labels"])
        prob.setdefault("stage", "pair")
        run.mark_failed(f"{Path(prob['file']).stem}#pair{k}", image=prob["image"], file=prob["file"], stage="pair", error=prob["error"], labels=prob["labels"], save=False)
        warnings.warn(prob["error"], MechanoscopeWarning, stacklevel=2)

    table_path, crops_path, summary_path = run.cells_path, run.crops_path, out / "extract.json"
    inputs: list[dict[str, Any]] = []
    total = len(pairs)
    for i, (img_path, lab_path) in enumerate(pairs):
        image_id = img_path.stem
        stage, where = "read image", img_path
        if run.finished(image_id, inputs=file_fingerprint([img_path, lab_path])):
            inputs.append(run.images[image_id]["input"])
        else:
            t0 = time.perf_counter()
            try:
                fingerprint = file_fingerprint([img_path, lab_path])
                img = read_image(img_path, axes=cfg.axes, pixel_size_um=cfg.pixel_size_um, max_pixels=max_pixels)
                stage, where = "read labels", lab_path
                lab = read_label_image(lab_path, max_pixels=max_pixels)
                stage, where = "extract", img_path
                if (
                    lab.pixel_size_um is not None
                    and img.pixel_size_um is not None
                    and abs(lab.pixel_size_um - img.pixel_size_um) > 0.01 * img.pixel_size_um
                ):
                    warnings.warn(
                        f"{lab_path}: pixel size {lab.pixel_size_um:.4g} µm differs from "
                        f"{img.pixel_size_um:.4g} µm of {img_path}; using the image's",
                        MechanoscopeWarning,
                        stacklevel=2,
                    )
                table, crops = extract_cells(img, lab, config=cfg, image_id=image_id)
                stage, where = "write", out
                rows_path, crops_part = run.part_paths(image_id)
                run.save_crops(crops_part, crops)
                write_table(table, rows_path)  # written last of the two: the part is complete
            except Exception as exc:  # one pair never ends the batch: record it, go on
                msg = failure_message(exc, where)
                warnings.warn(f"skipped {img_path.name}: {msg}", MechanoscopeWarning, stacklevel=2)
                errors.append({"image": str(img_path), "labels": str(lab_path), "file": str(where), "stage": stage, "error": msg})
                run.mark_failed(image_id, image=img_path, file=where, stage=stage, error=msg, labels=str(lab_path), seconds={"total": time.perf_counter() - t0})
            else:
                item = {
                    "image": str(img_path),
                    "labels": str(lab_path),
                    "image_id": image_id,
                    "n_cells": int(len(table)),
                    "n_qc_pass": int(table["qc_pass"].sum()) if len(table) else 0,
                    "shape": list(img.data.shape),
                    "axes": img.axes,
                    "pixel_size_um": img.pixel_size_um,
                    "pixel_size_source": img.pixel_size_source,
                }
                inputs.append(item)
                run.mark_done(image_id, files=[rows_path, crops_part], image=img_path, inputs=fingerprint, labels=str(lab_path),
                              seconds={"total": time.perf_counter() - t0}, input=item)
                del crops, img, lab
        if progress is not None:
            progress(i + 1, total)
    if not inputs:
        run.save(complete=True)
        shown = "; ".join(e["error"] for e in errors[:3]) + (" …" if len(errors) > 3 else "")
        raise BatchFailedError(
            f"no image could be extracted ({len(pairs)} image/label pair(s), {len(errors)} "
            f"problem(s)); {table_path.name} and {crops_path.name} in {out} were left as they were "
            f"(details in {run.record_path}). {shown}",
            errors,
        )
    full = run.consolidate(
        [e["image_id"] for e in inputs],
        crop_size_um=cfg.crop.crop_size_um,
        crop_pixels=cfg.crop.crop_pixels,
        channels=cfg.crop.channels,
        attrs={"anti_aliasing": cfg.crop.anti_aliasing, "mechanoscope_version": __version__},
    )
    write_table(full, table_path)
    run.save(complete=True, n_cells=int(len(full)), outputs={"cells": table_path.name, "crops": crops_path.name})
    errors = [{k: e.get(k, "") for k in ("image", "labels", "file", "stage", "error")} for e in run.failed]
    summary = {
        "config": cfg.model_dump(mode="json"),
        "provenance": {"versions": _versions(), "function": "mechanoscope.cells.extract_folder"},
        "record": run.record_path.name,
        "inputs": inputs,
        "errors": errors,
        "n_failed": len(errors),
        "n_resumed": run.n_resumed,
        "status": [
            {"image": e["image"], "labels": e["labels"], "image_id": e["image_id"], "status": "done"} for e in inputs
        ] + [
            {"image": e["image"], "labels": e["labels"], "file": e["file"], "status": "failed", "stage": e["stage"], "error": e["error"]}
            for e in errors
        ],
        "n_images": len(inputs),
        "n_cells": int(len(full)),
        "outputs": {"cells": table_path.name, "crops": crops_path.name},
        "crops": {
            "crop_size_um": cfg.crop.crop_size_um,
            "crop_pixels": cfg.crop.crop_pixels,
            "pixel_size_um_of_crop": cfg.crop.pixel_size_um_of_crop,
            "channels": cfg.crop.channels,
            "normalization": "none",
        },
    }
    write_json(summary, summary_path)
    return ExtractResult(out, table_path, crops_path, summary_path, len(inputs), int(len(full)), errors, full, run.record_path, run.n_resumed)
