"""Crop store: single-cell crops ``(N, C, H, W)`` in a Zarr group, row-aligned with the cell table.

Layout of ``crops.zarr`` (a Zarr group; format 3 with zarr-python 3, format 2 with
zarr-python 2):

``crops``        ``(N, C, H, W)`` float32, chunks of whole crops, in cell-table row order
``cell_ids``     ``(N,)`` int64, label id of each crop's cell
``frames``       ``(N,)`` int64, frame (time index) of each crop
``image_index``  ``(N,)`` int32, index into the ``image_ids`` attribute

Group attributes: ``format`` (``"mechanoscope-crops"``), ``format_version``,
``crop_size_um``, ``crop_pixels``, ``pixel_size_um_of_crop``, ``channels``,
``normalization`` (``"none"``: raw intensities), ``padding``, ``image_ids`` (one name
per image, in order of appearance), ``pad_values`` (the constant written outside the
image, per image), ``n_crops`` and anything passed as ``attrs``.

Writing is streaming (one image's crops at a time via :class:`CropStoreWriter`) and
atomic: everything is written to a hidden temporary folder next to the target and
renamed onto it by :meth:`CropStoreWriter.commit`; an existing store is replaced
only then.
"""

from __future__ import annotations

import contextlib
import os
import shutil
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd

from mechanoscope.errors import MechanoscopeError

__all__ = [
    "CropStore",
    "CropStoreWriter",
    "CropStoreError",
    "write_crop_store",
    "read_crop_store",
    "check_crops_match_table",
]

STORE_FORMAT = "mechanoscope-crops"
STORE_FORMAT_VERSION = 1


class CropStoreError(MechanoscopeError):
    """A crop store is missing, corrupt, or does not match its cell table."""


def _create_array(group: Any, name: str, shape: tuple[int, ...], chunks: tuple[int, ...], dtype: Any) -> Any:
    if hasattr(group, "create_array"):  # zarr-python 3
        return group.create_array(name, shape=shape, chunks=chunks, dtype=dtype)
    return group.zeros(name, shape=shape, chunks=chunks, dtype=dtype)  # pragma: no cover - zarr 2


class CropStoreWriter:
    """Write crops image by image into a new Zarr crop store, atomically.

    Parameters
    ----------
    path
        Final store path (``…/crops.zarr``).
    crop_size_um, crop_pixels
        Crop geometry (edge length in µm and in pixels).
    channels
        Channel names, e.g. ``["intensity", "mask"]``.
    attrs
        Extra JSON-serialisable attributes to record.
    chunk_cells
        Number of crops per chunk.
    buffer_mib
        Crops are held in memory up to this size (MiB) and then appended to the store
        at once (0: every image's crops at once); committed or aborted with the store.

    Use as a context manager: on normal exit the store is committed (renamed into
    place), on an exception the temporary folder is removed and an existing store at
    ``path`` is left untouched.
    """

    def __init__(
        self,
        path: str | os.PathLike[str],
        *,
        crop_size_um: float,
        crop_pixels: int,
        channels: list[str] | tuple[str, ...],
        attrs: dict[str, Any] | None = None,
        chunk_cells: int = 64,
        buffer_mib: float = 32.0,
    ) -> None:
        import zarr

        self.path = Path(path)
        self.path.parent.mkdir(parents=True, exist_ok=True)
        self._tmp = self.path.with_name(f".{self.path.stem}.tmp-{os.getpid()}{self.path.suffix}")
        if self._tmp.exists():
            shutil.rmtree(self._tmp)
        self.channels = [str(c) for c in channels]
        self.crop_size_um = float(crop_size_um)
        self.crop_pixels = int(crop_pixels)
        self._image_ids: list[str] = []
        self._pad_values: list[float | None] = []
        self._extra = dict(attrs or {})
        self._done = False
        c, p = len(self.channels), self.crop_pixels
        self._group = zarr.open_group(str(self._tmp), mode="w")
        self._crops = _create_array(self._group, "crops", (0, c, p, p), (chunk_cells, c, p, p), "float32")
        self._cell_ids = _create_array(self._group, "cell_ids", (0,), (4096,), "int64")
        self._frames = _create_array(self._group, "frames", (0,), (4096,), "int64")
        self._image_index = _create_array(self._group, "image_index", (0,), (4096,), "int32")
        # crops wait in memory until ``buffer_cells`` have come, then go to the store in one append: an append per image
        # (a few dozen crops) costs ~10 ms of Zarr metadata and partial-chunk rewrites (8 fields: 0.36 s for 143 crops)
        self._buffer_cells = max(int(buffer_mib * 2**20 // (4 * c * p * p)), 1)
        self._pending: list[tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]] = []
        self._n_pending = 0

    @property
    def n_crops(self) -> int:
        """Number of crops written so far."""
        return int(self._crops.shape[0]) + self._n_pending

    def _flush(self) -> None:
        """Write the crops waiting in memory to the store (one append per array)."""
        if not self._pending:
            return
        crops, ids, frames, index = (np.concatenate(parts) for parts in zip(*self._pending, strict=True))
        self._pending, self._n_pending = [], 0
        self._crops.append(crops, axis=0)
        self._cell_ids.append(ids, axis=0)
        self._frames.append(frames, axis=0)
        self._image_index.append(index, axis=0)

    def append(
        self,
        crops: np.ndarray,
        *,
        image_id: str,
        cell_ids: np.ndarray,
        frames: np.ndarray | None = None,
        pad_value: float | None = None,
    ) -> None:
        """Append the crops of one image.

        Parameters
        ----------
        crops
            ``(n, C, H, W)`` crops of this image, in its cell-table row order.
        image_id
            Image identifier (as in the table's ``image_id`` column).
        cell_ids
            ``(n,)`` cell ids of the crops.
        frames
            ``(n,)`` frame indices; default all 0.
        pad_value
            Intensity used outside the image for this image's crops (recorded).
        """
        if self._done:
            raise CropStoreError(f"{self.path}: store already committed or aborted")
        arr = np.asarray(crops, dtype=np.float32)
        c, p = len(self.channels), self.crop_pixels
        if arr.ndim != 4 or arr.shape[1:] != (c, p, p):
            raise CropStoreError(
                f"{self.path}: crops of {image_id} have shape {arr.shape}, expected (n, {c}, {p}, {p})"
            )
        n = arr.shape[0]
        ids = np.asarray(cell_ids, dtype=np.int64).reshape(-1)
        fr = np.zeros(n, np.int64) if frames is None else np.asarray(frames, dtype=np.int64).reshape(-1)
        if len(ids) != n or len(fr) != n:
            raise CropStoreError(
                f"{self.path}: {image_id}: {n} crops but {len(ids)} cell ids and {len(fr)} frames"
            )
        image_id = str(image_id)
        if image_id in self._image_ids:
            raise CropStoreError(f"{self.path}: image {image_id!r} was already written to this store")
        self._image_ids.append(image_id)
        self._pad_values.append(None if pad_value is None else float(pad_value))
        if n == 0:
            return
        self._pending.append((arr.copy() if arr is crops else arr, ids, fr, np.full(n, len(self._image_ids) - 1, np.int32)))
        self._n_pending += n
        if self._n_pending >= self._buffer_cells:
            self._flush()

    def commit(self) -> Path:
        """Write the attributes and rename the store into place. Returns the final path."""
        if self._done:
            raise CropStoreError(f"{self.path}: store already committed or aborted")
        self._flush()
        attrs = {
            **self._extra,
            "format": STORE_FORMAT,
            "format_version": STORE_FORMAT_VERSION,
            "crop_size_um": self.crop_size_um,
            "crop_pixels": self.crop_pixels,
            "pixel_size_um_of_crop": self.crop_size_um / self.crop_pixels,
            "channels": self.channels,
            "normalization": "none",
            "intensity": "raw image values, no normalization applied at extraction",
            "padding": {
                "mode": "constant",
                "description": "outside the image: intensity = pad_values[image], mask = 0",
            },
            "image_ids": self._image_ids,
            "pad_values": self._pad_values,
            "n_crops": self.n_crops,
        }
        self._group.attrs.update(attrs)
        self._done = True
        _replace_dir(self._tmp, self.path)
        return self.path

    def abort(self) -> None:
        """Discard everything written; leave any existing store untouched."""
        self._done = True
        self._pending, self._n_pending = [], 0
        with contextlib.suppress(FileNotFoundError):
            shutil.rmtree(self._tmp)

    def __enter__(self) -> "CropStoreWriter":
        return self

    def __exit__(self, exc_type: Any, exc: Any, tb: Any) -> None:
        if exc_type is None and not self._done:
            self.commit()
        elif exc_type is not None:
            self.abort()


def _replace_dir(src: Path, dst: Path) -> None:
    """Rename folder ``src`` onto ``dst``, replacing an existing ``dst`` (file or folder)."""
    if not dst.exists():
        os.replace(src, dst)
        return
    old = dst.with_name(f".{dst.stem}.old-{os.getpid()}{dst.suffix}")
    if old.exists():
        shutil.rmtree(old) if old.is_dir() else old.unlink()
    os.replace(dst, old)
    try:
        os.replace(src, dst)
    except BaseException:
        os.replace(old, dst)
        raise
    shutil.rmtree(old) if old.is_dir() else old.unlink()


def write_crop_store(
    path: str | os.PathLike[str],
    crops: np.ndarray,
    *,
    image_ids: np.ndarray | list[str],
    cell_ids: np.ndarray,
    frames: np.ndarray | None = None,
    crop_size_um: float,
    crop_pixels: int,
    channels: list[str] | tuple[str, ...],
    attrs: dict[str, Any] | None = None,
) -> Path:
    """Write a whole ``(N, C, H, W)`` crop array at once (rows of one image must be contiguous).

    ``image_ids`` and ``cell_ids`` are ``(N,)`` per-row arrays. See
    :class:`CropStoreWriter` for streaming writes.
    """
    image_ids = np.asarray(image_ids).astype(str)
    cell_ids = np.asarray(cell_ids)
    frames = np.zeros(len(cell_ids), np.int64) if frames is None else np.asarray(frames)
    if not (len(image_ids) == len(cell_ids) == len(frames) == len(crops)):
        raise CropStoreError(
            f"{path}: {len(crops)} crops but {len(image_ids)} image ids, {len(cell_ids)} cell "
            f"ids and {len(frames)} frames"
        )
    with CropStoreWriter(
        path, crop_size_um=crop_size_um, crop_pixels=crop_pixels, channels=channels, attrs=attrs
    ) as w:
        start = 0
        while start < len(image_ids):
            stop = start + 1
            while stop < len(image_ids) and image_ids[stop] == image_ids[start]:
                stop += 1
            w.append(
                crops[start:stop],
                image_id=image_ids[start],
                cell_ids=cell_ids[start:stop],
                frames=frames[start:stop],
            )
            start = stop
    return Path(path)


@dataclass
class CropStore:
    """A crop store opened for reading.

    Attributes
    ----------
    path
        Store folder.
    crops
        ``(N, C, H, W)`` float32 Zarr array (lazy: index it, e.g. ``crops[i]`` or
        ``crops[:]``, to read).
    image_ids
        ``(N,)`` image id of each row (str).
    cell_ids
        ``(N,)`` int64 cell id of each row.
    frames
        ``(N,)`` int64 frame of each row.
    attrs
        The store attributes (crop geometry, channels, normalization, padding, …).
    """

    path: Path
    crops: Any
    image_ids: np.ndarray
    cell_ids: np.ndarray
    frames: np.ndarray
    attrs: dict[str, Any] = field(default_factory=dict)

    def __len__(self) -> int:
        return int(self.crops.shape[0])

    @property
    def crop_size_um(self) -> float:
        return float(self.attrs["crop_size_um"])

    @property
    def crop_pixels(self) -> int:
        return int(self.attrs["crop_pixels"])

    @property
    def pixel_size_um_of_crop(self) -> float:
        return float(self.attrs["pixel_size_um_of_crop"])

    @property
    def channels(self) -> list[str]:
        return list(self.attrs["channels"])


def read_crop_store(path: str | os.PathLike[str]) -> CropStore:
    """Open a crop store written by :class:`CropStoreWriter`.

    Raises
    ------
    CropStoreError
        Missing folder, not a crop store, or inconsistent array lengths.
    """
    import zarr

    p = Path(path)
    if not p.exists():
        raise CropStoreError(f"{p}: no such crop store")
    try:
        group = zarr.open_group(str(p), mode="r")
        attrs = dict(group.attrs)
    except Exception as exc:
        raise CropStoreError(
            f"{p}: could not be opened as a Zarr crop store ({type(exc).__name__}: {exc})"
        ) from exc
    if attrs.get("format") != STORE_FORMAT:
        raise CropStoreError(
            f"{p}: not a mechanoscope crop store (attribute 'format' is {attrs.get('format')!r}); "
            "write it with 'mechanoscope extract'"
        )
    if int(attrs.get("format_version", 0)) > STORE_FORMAT_VERSION:
        raise CropStoreError(
            f"{p}: crop store format version {attrs.get('format_version')} is newer than this "
            f"mechanoscope reads ({STORE_FORMAT_VERSION}); update mechanoscope"
        )
    try:
        crops = group["crops"]
        cell_ids = np.asarray(group["cell_ids"][:], dtype=np.int64)
        frames = np.asarray(group["frames"][:], dtype=np.int64)
        index = np.asarray(group["image_index"][:], dtype=np.int64)
    except KeyError as exc:
        raise CropStoreError(f"{p}: crop store lacks the array {exc}; the store is incomplete") from exc
    names = np.asarray(attrs.get("image_ids", []), dtype=object)
    n = int(crops.shape[0])
    if not (len(cell_ids) == len(frames) == len(index) == n) or (n and index.max() >= len(names)):
        raise CropStoreError(f"{p}: crop store arrays have inconsistent lengths; the store is corrupt")
    image_ids = names[index] if n else np.zeros(0, dtype=object)
    return CropStore(p, crops, image_ids, cell_ids, frames, attrs)


def check_crops_match_table(table: pd.DataFrame, store: CropStore) -> None:
    """Raise :class:`CropStoreError` unless store rows and table rows name the same cells in order.

    Compares ``image_id``, ``cell_id`` and (if present) ``frame`` row by row.
    """
    if len(table) != len(store):
        raise CropStoreError(
            f"{store.path}: holds {len(store)} crops but the cell table has {len(table)} rows; "
            "they come from different extractions"
        )
    same = (table["image_id"].astype(str).to_numpy() == store.image_ids.astype(str)) & (
        table["cell_id"].to_numpy(dtype=np.int64) == store.cell_ids
    )
    if "frame" in table.columns:
        same &= table["frame"].to_numpy(dtype=np.int64) == store.frames
    if not same.all():
        i = int(np.argmin(same))
        raise CropStoreError(
            f"{store.path}: row {i} is crop of {store.image_ids[i]}/cell {store.cell_ids[i]} but "
            f"the table row is {table['image_id'].iloc[i]}/cell {table['cell_id'].iloc[i]}; "
            "the table was reordered or filtered after extraction — select crops by row instead"
        )
