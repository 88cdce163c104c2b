"""Label-image series: measuring cells per frame, mask overlaps, reading and relabelling.

A series is a ``(T, Y, X)`` integer array (0 = background); ids need only be unique
within a frame. After tracking, :func:`relabel_series` gives every cell its track id,
so that one cell keeps one id across frames.
"""

from __future__ import annotations

import os
from collections.abc import Callable, Sequence
from pathlib import Path

import numpy as np
import pandas as pd

from mechanoscope.errors import TrackingError

__all__ = ["as_series", "check_ids_unique", "frame_order", "measure_series", "overlap_table", "read_label_series", "relabel_series"]


def as_series(frames: np.ndarray | Sequence[np.ndarray], names: Sequence[str] | None = None) -> np.ndarray:
    """Stack frames into a ``(T, Y, X)`` label series, checking shapes, dtype and length.

    Raises :class:`TrackingError` for frames of different shapes (naming the frame),
    non-integer or negative labels, or fewer than two frames.
    """
    if isinstance(frames, np.ndarray) and frames.ndim == 3:
        series = frames
    else:
        frames = [np.asarray(f) for f in frames]
        for t, f in enumerate(frames):
            where = names[t] if names is not None else f"frame {t}"
            if f.ndim != 2:
                raise TrackingError(f"{where}: a label frame must be 2-D, got shape {f.shape}")
            if f.shape != frames[0].shape:
                first = names[0] if names is not None else "frame 0"
                raise TrackingError(
                    f"{where}: shape {f.shape} differs from {first} ({frames[0].shape}); all frames of a series must have one shape"
                )
        if not frames:
            raise TrackingError("no frames given")
        series = np.stack(frames)
    if series.ndim != 3:
        raise TrackingError(f"expected a (T, Y, X) label series, got shape {series.shape}")
    if not np.issubdtype(series.dtype, np.integer):
        raise TrackingError(f"label images must hold integer ids, got {series.dtype}")
    if series.size and series.min() < 0:
        raise TrackingError("label images hold negative ids")
    if series.shape[0] < 2:
        raise TrackingError(
            f"tracking needs a time series of at least 2 frames, got {series.shape[0]}; if the frames are stacked in "
            "one file, give its time axis (e.g. --axes TYX)"
        )
    return series


def check_ids_unique(series: np.ndarray, min_fraction: float = 0.25, names: Sequence[str] | None = None,
                     progress: Callable[[int, int], None] | None = None) -> None:
    """Reject an id used for two cells in one frame (``progress(done, total)`` after each frame).

    An id whose mask falls into two or more separate regions each at least ``min_fraction``
    of the frame's median cell area is taken as two cells sharing an id (a
    :class:`TrackingError`). Smaller detached pieces are segmentation debris, common in
    real masks, and are kept as part of their cell.
    """
    from skimage.measure import label as connected

    for t in range(series.shape[0]):
        if progress is not None and t:
            progress(t, series.shape[0])
        lab = series[t].astype(np.int64)
        if not lab.any():
            continue
        area = np.bincount(lab.ravel())
        median = float(np.median(area[1:][area[1:] > 0]))
        comp = connected(lab, background=0, connectivity=2)
        k = int(comp.max()) + 1
        pairs, sizes = np.unique(lab[lab > 0] * k + comp[lab > 0], return_counts=True)
        big = sizes >= min_fraction * median
        ids, n_big = np.unique(pairs[big] // k, return_counts=True)
        if (n_big > 1).any():
            u = int(ids[n_big > 1][0])
            where = names[t] if names is not None else f"frame {t}"
            raise TrackingError(
                f"{where}: id {u} is used for {int(n_big[n_big > 1][0])} separate cell-sized regions; "
                "give each cell its own id (e.g. skimage.measure.label on each frame)"
            )
    if progress is not None:
        progress(series.shape[0], series.shape[0])


def measure_series(series: np.ndarray, pixel_size_um: float, intensity: np.ndarray | None = None,
                   progress: Callable[[int, int], None] | None = None) -> pd.DataFrame:
    """One row per cell and frame: ``frame``, ``cell_id``, centroid in px and µm, ``area_um2``.

    ``progress(done, total)`` is called after each frame.

    ``centroid_y_px`` / ``centroid_x_px`` are pixel indices (row, column); µm values are
    those times ``pixel_size_um``. With ``intensity`` (a ``(T, Y, X)`` image series of the
    same shape) ``mean_intensity`` is added.
    """
    if intensity is not None:
        intensity = np.asarray(intensity)
        if intensity.shape != series.shape:
            raise TrackingError(f"intensity images {intensity.shape} and label images {series.shape} differ in shape")
    if not (np.isfinite(pixel_size_um) and pixel_size_um > 0):
        raise TrackingError(f"pixel_size_um must be > 0, got {pixel_size_um}")
    parts = []
    yy, xx = np.indices(series.shape[1:], dtype=np.float64)
    yy, xx = yy.ravel(), xx.ravel()
    for t in range(series.shape[0]):
        if progress is not None and t:
            progress(t, series.shape[0])
        lab = series[t].ravel().astype(np.int64)
        values = None
        if lab.size and lab.max() > 4 * lab.size:  # huge ids: count over consecutive ones
            values, lab = np.unique(lab, return_inverse=True)
        area = np.bincount(lab)
        idx = np.flatnonzero(area)
        idx = idx[(values[idx] if values is not None else idx) > 0]
        if not len(idx):
            continue
        cy = np.bincount(lab, weights=yy)[idx] / area[idx]
        cx = np.bincount(lab, weights=xx)[idx] / area[idx]
        extra = {}
        if intensity is not None:
            extra["mean_intensity"] = np.bincount(lab, weights=intensity[t].ravel().astype(np.float64))[idx] / area[idx]
        area = area[idx]
        ids = values[idx] if values is not None else idx
        parts.append(pd.DataFrame({
            "frame": t, "cell_id": ids.astype(np.int64), "centroid_y_px": cy, "centroid_x_px": cx,
            "centroid_y_um": cy * pixel_size_um, "centroid_x_um": cx * pixel_size_um,
            "area_um2": area * pixel_size_um**2, **extra,
        }))
    if progress is not None:
        progress(series.shape[0], series.shape[0])
    if not parts:
        raise TrackingError("the label series holds no cells (every frame is background)")
    return pd.concat(parts, ignore_index=True)


def overlap_table(series: np.ndarray) -> dict[tuple[int, int, int, int], float]:
    """IoU of every pair of overlapping cells in consecutive frames.

    Returns ``{(t, id_t, t + 1, id_t+1): IoU}``; pairs that do not touch are absent (IoU 0).
    """
    out: dict[tuple[int, int, int, int], float] = {}
    for t in range(series.shape[0] - 1):
        a, b = series[t].ravel().astype(np.int64), series[t + 1].ravel().astype(np.int64)
        area_a = np.bincount(a)
        area_b = np.bincount(b)
        both = (a > 0) & (b > 0)
        if not both.any():
            continue
        k = int(b.max()) + 1
        pairs, inter = np.unique(a[both] * k + b[both], return_counts=True)
        for p, n in zip(pairs, inter):
            i, j = int(p // k), int(p % k)
            out[(t, i, t + 1, j)] = float(n / (area_a[i] + area_b[j] - n))
    return out


def relabel_series(series: np.ndarray, tracked: pd.DataFrame, progress: Callable[[int, int], None] | None = None) -> np.ndarray:
    """Replace each frame's cell ids by their ``track_id``: one cell, one id, every frame.

    Cells missing from ``tracked`` become background. uint16 when the ids fit, else uint32.
    ``progress(done, total)`` is called after each frame that holds cells.
    """
    top = int(tracked["track_id"].max()) if len(tracked) else 0
    out = np.zeros(series.shape, dtype=np.uint16 if top < 2**16 else np.uint32)
    for t, rows in tracked.groupby("frame"):
        lut = np.zeros(int(series[int(t)].max()) + 1, dtype=out.dtype)
        ids = rows["cell_id"].to_numpy().astype(np.int64)
        keep = ids < len(lut)
        lut[ids[keep]] = rows["track_id"].to_numpy()[keep]
        out[int(t)] = lut[series[int(t)]]
        if progress is not None:
            progress(int(t) + 1, series.shape[0])
    if progress is not None:
        progress(series.shape[0], series.shape[0])
    return out


def frame_order(paths: list[Path]) -> list[Path]:
    """The files of a folder of frames in time order, refusing a gap in their numbering.

    When every file name ends in a number (``t1.tif`` … ``t10.tif``, ``frame000.tif`` …) the
    frames are ordered by that number, not by name (``t10`` after ``t9``, not after ``t1``),
    and a missing number (in steps of the smallest difference, so ``t0, t2, t4`` is whole) raises :class:`TrackingError`: taking the next file as the next
    frame would silently shift every later frame in time. Other names keep name order.
    """
    import re

    numbers = [re.search(r"(\d+)$", Path(q).stem) for q in paths]
    if len(paths) < 2 or any(m is None for m in numbers):
        return list(paths)
    index = [int(m.group(1)) for m in numbers]  # type: ignore[union-attr]
    if len(set(index)) != len(index):
        return list(paths)
    order = sorted(range(len(paths)), key=index.__getitem__)
    ranked = [index[i] for i in order]
    step = min(b - a for a, b in zip(ranked, ranked[1:]))  # a regular stride (every 2nd frame saved) is no gap
    missing = sorted(set(range(ranked[0], ranked[-1] + 1, step)) - set(ranked))
    if missing:
        shown = ", ".join(map(str, missing[:10])) + (f", … ({len(missing)} in all)" if len(missing) > 10 else "")
        raise TrackingError(
            f"{Path(paths[0]).parent}: the frame files are numbered {ranked[0]}..{ranked[-1]}"
            f"{f' in steps of {step}' if step > 1 else ''} but frame number(s) "
            f"{shown} are missing; the next file would be taken as the next frame and shift every later one in time. "
            "Restore the missing frame(s), or put an empty (all-zero) label image of the same shape in each place"
        )
    return [paths[i] for i in order]


def read_label_series(
    source: str | os.PathLike[str], *, axes: str | None = None, pixel_size_um: float | None = None,
    progress: Callable[[int, int], None] | None = None,
) -> tuple[np.ndarray, float | None, list[str]]:
    """Read a label series: a folder of label images (one per frame, sorted by name) or one stack file.

    Returns the ``(T, Y, X)`` series, the pixel size from the files' metadata (None if
    absent) and the file names. A stack whose time axis is not named is an error
    that asks for ``axes``. ``progress(done, total)`` is called after each file read.
    """
    from mechanoscope.errors import AxesError
    from mechanoscope.io.images import image_paths, read_label_image

    p = Path(source)
    paths = image_paths(p)
    if len(paths) == 1:
        from mechanoscope.io.images import read_image

        img = read_image(paths[0], axes=axes, pixel_size_um=pixel_size_um, require_pixel_size=False)
        data = img.data
        if data.ndim == 2:
            return as_series([data], [paths[0].name]), img.pixel_size_um, [paths[0].name]
        if "T" not in img.axes:
            raise AxesError(f"{paths[0]}: axes {img.axes!r} have no time axis T; pass the axes (e.g. --axes TYX)")
        data = np.moveaxis(data, img.axes.index("T"), 0)
        if data.ndim != 3:
            raise AxesError(f"{paths[0]}: a label series must be TYX, got axes {img.axes!r}")
        if not np.issubdtype(data.dtype, np.integer):
            raise TrackingError(f"{paths[0]}: a label image must hold integer ids, got {data.dtype}")
        return as_series(data), img.pixel_size_um, [f"{paths[0].name}[T={t}]" for t in range(data.shape[0])]
    paths = frame_order(paths)
    frames, px = [], None
    for k, q in enumerate(paths):
        if progress is not None and k:
            progress(k, len(paths))
        img = read_label_image(q, pixel_size_um=pixel_size_um)
        if img.data.ndim != 2:
            raise TrackingError(f"{q}: in a folder of frames each file must be one 2-D label image, got shape {img.data.shape}")
        frames.append(img.data)
        px = px if px is not None else img.pixel_size_um
    if progress is not None:
        progress(len(paths), len(paths))
    return as_series(frames, [str(q) for q in paths]), px, [str(q) for q in paths]
