"""Reading and writing microscope images with their axes and pixel size.

Supported inputs: TIFF and OME-TIFF (via tifffile), PNG/JPEG (via imageio) and
OME-Zarr (via zarr). The pixel size comes from the file's metadata (ImageJ
``unit`` + resolution tags, OME ``PhysicalSizeX``, or TIFF resolution tags in
centimetre/inch) or from an explicit override; it is never guessed silently.

Axes use single letters: ``T`` time, ``C`` channel, ``Z`` depth, ``Y``, ``X``.
An image with more than two dimensions whose axes the file does not name is an
error that says which ``axes=`` option to pass.
"""

from __future__ import annotations

import contextlib
import logging
import os
import re
import warnings
from dataclasses import dataclass, field
from pathlib import Path
from collections.abc import Iterator
from typing import Any

import numpy as np

from mechanoscope.errors import (
    AxesError,
    ImageReadError,
    ImageTooLargeError,
    MechanoscopeError,
    MechanoscopeWarning,
    MissingPixelSizeError,
)
from mechanoscope.io.atomic import atomic_path

__all__ = [
    "Image",
    "read_image",
    "write_image",
    "read_label_image",
    "write_label_image",
    "check_image_values",
    "image_paths",
    "IMAGE_SUFFIXES",
    "DEFAULT_MAX_PIXELS",
    "max_pixels_limit",
]

IMAGE_SUFFIXES = (".tif", ".tiff", ".png", ".jpg", ".jpeg", ".zarr")
DEFAULT_MAX_PIXELS = 200_000_000
"""Default limit on the number of values (pixels × frames × channels) of one image file,
checked from the file header before any pixel is read; ``MECHANOSCOPE_MAX_PIXELS`` in the
environment or the ``max_pixels`` argument (CLI: ``--max-pixels``) change it."""
_VALID_AXES = set("TCZYX")
# plausible range of a light-microscope pixel size; outside it a resolution tag is
# almost certainly a print resolution (72 dpi ...) and not a physical pixel size
_PLAUSIBLE_PIXEL_UM = (1e-3, 100.0)
_UNIT_TO_UM = {
    "um": 1.0, "µm": 1.0, "\u03bcm": 1.0, "micron": 1.0, "microns": 1.0, "micrometer": 1.0,
    "micrometre": 1.0, "\\u00B5m": 1.0, "nm": 1e-3, "nanometer": 1e-3, "mm": 1e3,
    "millimeter": 1e3, "cm": 1e4, "m": 1e6,
}


@dataclass(frozen=True)
class Image:
    """An image array with its axes and physical pixel size.

    Attributes
    ----------
    data
        Pixel array, one dimension per letter of ``axes``.
    axes
        Axis letters, e.g. ``"YX"``, ``"TYX"``, ``"CYX"``.
    pixel_size_um
        Edge length of one pixel in µm (square pixels), or ``None`` if unknown.
    path
        File the image was read from, if any.
    pixel_size_source
        Where the pixel size came from: ``"metadata"``, ``"override"`` or ``"none"``.
    """

    data: np.ndarray
    axes: str
    pixel_size_um: float | None
    path: Path | None = None
    pixel_size_source: str = "none"
    metadata: dict[str, Any] = field(default_factory=dict)

    def __post_init__(self) -> None:
        if len(self.axes) != self.data.ndim:
            raise AxesError(
                f"axes {self.axes!r} have {len(self.axes)} letters but the image has "
                f"{self.data.ndim} dimensions (shape {self.data.shape})"
            )

    @property
    def name(self) -> str:
        """Stem of the source file, or ``"image"``."""
        return self.path.stem if self.path is not None else "image"

    def plane(self, **index: int) -> "Image":
        """Select one index along non-spatial axes, e.g. ``img.plane(T=0, C=1)``."""
        data = self.data
        axes = self.axes
        for ax, i in index.items():
            if ax not in axes:
                raise AxesError(f"{self._where()}: no axis {ax!r} in axes {axes!r}")
            k = axes.index(ax)
            n = data.shape[k]
            if not -n <= int(i) < n:
                what = {"T": "frame", "C": "channel", "Z": "plane"}.get(ax, f"index along axis {ax}")
                option = {"T": " (--frame)", "C": " (--channel)"}.get(ax, "")
                raise AxesError(
                    f"{self._where()}: {what} {i}{option} is out of range: the image has {n} "
                    f"{what.split()[0]}{'s' if n != 1 else ''} along axis {ax!r} (0..{n - 1})"
                )
            data = np.take(data, int(i), axis=k)
            axes = axes[:k] + axes[k + 1 :]
        return Image(data, axes, self.pixel_size_um, self.path, self.pixel_size_source, self.metadata)

    def as_2d(self) -> np.ndarray:
        """Return the ``YX`` array; error if the image has other axes of length > 1."""
        extra = [(a, n) for a, n in zip(self.axes, self.data.shape) if a not in "YX" and n > 1]
        if extra:
            desc = ", ".join(f"{a}={n}" for a, n in extra)
            raise AxesError(
                f"{self._where()}: expected a single 2-D plane but the image has axes "
                f"{self.axes!r} with {desc}; select a plane (e.g. --channel/--frame) first"
            )
        keep = [i for i, a in enumerate(self.axes) if a in "YX"]
        squeeze = tuple(i for i in range(self.data.ndim) if i not in keep)
        arr = self.data.squeeze(axis=squeeze) if squeeze else self.data
        if self.axes.index("Y") > self.axes.index("X"):
            arr = arr.T
        return arr

    def _where(self) -> str:
        return str(self.path) if self.path is not None else "image"


def image_paths(source: str | os.PathLike[str]) -> list[Path]:
    """List image files: ``source`` itself if it is a file, else the images in the folder.

    Sorted by name. Raises :class:`ImageReadError` if nothing is found.
    """
    p = Path(source)
    if not p.exists():
        raise ImageReadError(f"{p}: no such file or folder")
    if p.is_file() or p.suffix.lower() == ".zarr":
        return [p]
    found = sorted(
        q for q in p.iterdir() if q.suffix.lower() in IMAGE_SUFFIXES and not q.name.startswith(".")
    )
    if not found:
        raise ImageReadError(
            f"{p}: folder holds no images (looked for {', '.join(IMAGE_SUFFIXES)})"
        )
    return found


def _check_axes(axes: str, ndim: int, path: Path) -> str:
    axes = axes.upper()
    if len(axes) != ndim:
        raise AxesError(
            f"{path}: axes={axes!r} has {len(axes)} letters but the image has {ndim} dimensions"
        )
    if set(axes) - _VALID_AXES or len(set(axes)) != len(axes) or not {"Y", "X"} <= set(axes):
        raise AxesError(
            f"{path}: axes={axes!r} is not valid; use distinct letters from T, C, Z, Y, X "
            "including Y and X"
        )
    return axes


def _ambiguous(path: Path, shape: tuple[int, ...], found: str | None) -> AxesError:
    hint = {3: '"TYX" (time-lapse), "CYX" (channels) or "ZYX" (stack)', 4: '"TCYX" or "CZYX"'}
    ex = hint.get(len(shape), "e.g. " + '"' + "TCZYX"[5 - len(shape):] + '"')
    found_txt = f" (the file says {found!r}, which does not name every axis)" if found else ""
    return AxesError(
        f"{path}: image of shape {shape} has {len(shape)} dimensions and its axes are not "
        f"named in the metadata{found_txt}; pass the axes explicitly, e.g. axes={ex} "
        "(CLI: --axes)"
    )


def _normalise_tiff_axes(axes: str) -> str:
    # tifffile letters: S = samples (RGB), I/Q = unknown sequence
    return axes.replace("S", "C")


def _tiff_pixel_size(tif: Any, page: Any) -> float | None:
    """Pixel size in µm from OME, ImageJ or TIFF resolution tags, else None."""
    # OME-XML
    if tif.is_ome and tif.ome_metadata:
        m = re.search(r'PhysicalSizeX="([0-9.eE+-]+)"', tif.ome_metadata)
        if m:
            unit_m = re.search(r'PhysicalSizeXUnit="([^"]+)"', tif.ome_metadata)
            unit = unit_m.group(1) if unit_m else "µm"
            factor = _UNIT_TO_UM.get(unit, _UNIT_TO_UM.get(unit.lower()))
            if factor is not None:
                return float(m.group(1)) * factor
    tags = page.tags
    xres = tags.get("XResolution")
    if xres is None:
        return None
    num, den = xres.value
    if num == 0:
        return None
    per_unit = num / den  # pixels per unit
    if tif.is_imagej and tif.imagej_metadata:
        unit = str(tif.imagej_metadata.get("unit", "")).strip()
        factor = _UNIT_TO_UM.get(unit, _UNIT_TO_UM.get(unit.lower()))
        if factor is not None:
            return factor / per_unit
        if unit:
            return None
    unit_tag = tags.get("ResolutionUnit")
    unit_val = int(unit_tag.value) if unit_tag is not None else 2
    factor = {2: 25400.0, 3: 10000.0}.get(unit_val)
    if factor is None:
        return None
    size = factor / per_unit
    lo, hi = _PLAUSIBLE_PIXEL_UM
    return size if lo <= size <= hi else None


def _ignored_resolution(path: Path) -> str:
    """Why a TIFF's resolution tags gave no pixel size, when they hold an implausible one ('' otherwise)."""
    if path.suffix.lower() not in (".tif", ".tiff"):
        return ""
    try:
        import tifffile

        with _tifffile_quiet(), tifffile.TiffFile(path) as tif:
            tags = tif.pages[0].tags
            num, den = tags["XResolution"].value
            unit = int(tags["ResolutionUnit"].value) if "ResolutionUnit" in tags else 2
    except Exception:  # no tags, or unreadable: nothing to add
        return ""
    factor = {2: 25400.0, 3: 10000.0}.get(unit)
    if factor is None or not num or not den:
        return ""
    size = factor * den / num
    lo, hi = _PLAUSIBLE_PIXEL_UM
    if lo <= size <= hi:
        return ""
    return (f" (its resolution tags say {size:.4g} µm per pixel, in {'inch' if unit == 2 else 'cm'} units, outside the "
            f"plausible {lo:g}–{hi:g} µm of a microscope, so they were ignored)")


def max_pixels_limit(max_pixels: int | None = None) -> int:
    """The pixel-count limit in force: ``max_pixels``, else ``MECHANOSCOPE_MAX_PIXELS``, else the default."""
    if max_pixels is None:
        env = os.environ.get("MECHANOSCOPE_MAX_PIXELS", "").strip()
        if env:
            try:
                max_pixels = int(float(env))
            except ValueError:
                raise MechanoscopeError(
                    f"MECHANOSCOPE_MAX_PIXELS={env!r} is not a number; set it to a pixel count, e.g. 200000000"
                ) from None
        else:
            max_pixels = DEFAULT_MAX_PIXELS
    if max_pixels < 1:
        raise MechanoscopeError(f"max_pixels must be at least 1, got {max_pixels}")
    return int(max_pixels)


def _check_pixel_count(path: Path, shape: tuple[int, ...], max_pixels: int) -> None:
    """Refuse, before reading, an image whose header claims more values than ``max_pixels``."""
    n = int(np.prod([int(d) for d in shape], dtype=object)) if shape else 0
    if n > max_pixels:
        dims = " × ".join(str(int(d)) for d in shape)
        raise ImageTooLargeError(
            f"{path}: the file header says the image is {dims} = {n:,} pixels, more than the "
            f"limit of {max_pixels:,} per image; crop or tile it first, or raise the limit with "
            "--max-pixels (or MECHANOSCOPE_MAX_PIXELS) if this machine has the memory "
            "(segmentation needs roughly 50 bytes per pixel)"
        )


@contextlib.contextmanager
def _tifffile_quiet() -> Iterator[None]:
    """Keep tifffile's log warnings about damaged files off the terminal while reading: the
    reader raises its own error naming the file and what to do (``MECHANOSCOPE_DEBUG=1`` shows them)."""
    log = logging.getLogger("tifffile")
    before = log.level
    if os.environ.get("MECHANOSCOPE_DEBUG", "").strip().lower() in ("", "0", "false", "no"):
        log.setLevel(logging.CRITICAL)
    try:
        yield
    finally:
        log.setLevel(before)


def _read_tiff(path: Path, max_pixels: int) -> tuple[np.ndarray, str | None, float | None]:
    import tifffile

    with _tifffile_quiet(), tifffile.TiffFile(path) as tif:
        if not tif.series:
            raise ImageReadError(f"{path}: TIFF holds no image data")
        series = tif.series[0]
        _check_pixel_count(path, tuple(series.shape), max_pixels)
        data = series.asarray()
        axes = series.axes
        # only ImageJ and OME metadata name the axes reliably; a generic 'shaped' or
        # multi-page TIFF does not (tifffile then guesses Q/I/S letters)
        if not (tif.is_imagej or tif.is_ome) and axes not in ("YX", "YXS"):
            axes = None
        elif axes == "YXS":
            data, axes = np.moveaxis(data, -1, 0), "SYX"
        px = _tiff_pixel_size(tif, series.pages[0] if series.pages else tif.pages[0])
    return data, axes, px


def _read_png(path: Path, max_pixels: int) -> tuple[np.ndarray, str | None, float | None]:
    import imageio.v3 as iio

    _check_pixel_count(path, tuple(iio.improps(path).shape), max_pixels)
    data = np.asarray(iio.imread(path))
    if data.ndim == 3:
        if data.shape[-1] == 4:  # drop alpha
            data = data[..., :3]
        if all(np.array_equal(data[..., 0], data[..., k]) for k in range(1, data.shape[-1])):
            data = data[..., 0]  # grey image stored as RGB
            return data, "YX", None
        return np.moveaxis(data, -1, 0), "CYX", None
    return data, "YX" if data.ndim == 2 else None, None


def _read_zarr(path: Path, max_pixels: int) -> tuple[np.ndarray, str | None, float | None]:
    import zarr

    group = zarr.open(str(path), mode="r")
    attrs = dict(group.attrs)
    ms = attrs.get("multiscales") or attrs.get("ome", {}).get("multiscales")
    if not ms:
        if hasattr(group, "shape"):
            _check_pixel_count(path, tuple(group.shape), max_pixels)
            return np.asarray(group[...]), None, None
        raise ImageReadError(f"{path}: Zarr store has no OME 'multiscales' metadata")
    ms0 = ms[0]
    axes_meta = ms0.get("axes", [])
    axes = "".join((a["name"] if isinstance(a, dict) else a).upper() for a in axes_meta) or None
    ds0 = ms0["datasets"][0]
    array = group[ds0["path"]]
    _check_pixel_count(path, tuple(array.shape), max_pixels)
    data = np.asarray(array[...])
    px = None
    if axes and "X" in axes:
        for tr in ds0.get("coordinateTransformations", []):
            if tr.get("type") == "scale":
                px = float(tr["scale"][axes.index("X")])
                unit = next(
                    (a.get("unit") for a in axes_meta if isinstance(a, dict) and a["name"].upper() == "X"),
                    "micrometer",
                )
                px *= _UNIT_TO_UM.get(unit or "micrometer", 1.0)
    return data, axes, px


def read_image(
    path: str | os.PathLike[str],
    *,
    axes: str | None = None,
    pixel_size_um: float | None = None,
    require_pixel_size: bool = True,
    max_pixels: int | None = None,
) -> Image:
    """Read a microscope image with its axes and pixel size.

    Parameters
    ----------
    path
        TIFF/OME-TIFF, PNG/JPEG or OME-Zarr file.
    axes
        Axis letters (e.g. ``"TYX"``) overriding what the file says. Needed for
        files with more than two dimensions whose metadata does not name the axes.
    pixel_size_um
        Pixel size in µm overriding the metadata. If it differs from the metadata by
        more than 1 % a :class:`MechanoscopeWarning` says so.
    require_pixel_size
        If true (default) an image without a pixel size in its metadata and without
        ``pixel_size_um`` raises :class:`MissingPixelSizeError`.
    max_pixels
        Largest number of values (Y × X × frames × channels …) accepted, checked from
        the file header before any pixel is read; default :func:`max_pixels_limit`.

    Returns
    -------
    Image
        ``data`` keeps the file's dtype. RGB files of a grey image become ``YX``;
        colour files become ``CYX``.

    Raises
    ------
    ImageReadError
        Missing, empty, corrupt or truncated file, or an unsupported format.
    ImageTooLargeError
        The header claims more than ``max_pixels`` values.
    AxesError
        Axes not given and not determinable, or ``axes`` not matching the data.
    MissingPixelSizeError
        See ``require_pixel_size``.
    """
    p = Path(path)
    if not p.exists():
        raise ImageReadError(f"{p}: no such file")
    if p.is_file() and p.stat().st_size == 0:
        raise ImageReadError(f"{p}: file is empty (0 bytes)")
    if pixel_size_um is not None and not (np.isfinite(pixel_size_um) and pixel_size_um > 0):
        raise MechanoscopeError(f"pixel_size_um must be a positive number of µm, got {pixel_size_um}")
    suffix = p.suffix.lower()
    limit = max_pixels_limit(max_pixels)
    try:
        if suffix in (".tif", ".tiff"):
            data, file_axes, meta_px = _read_tiff(p, limit)
            file_axes = _normalise_tiff_axes(file_axes) if file_axes else None
        elif suffix in (".png", ".jpg", ".jpeg"):
            data, file_axes, meta_px = _read_png(p, limit)
        elif suffix == ".zarr":
            data, file_axes, meta_px = _read_zarr(p, limit)
        else:
            raise ImageReadError(
                f"{p}: unsupported file type {suffix!r}; use TIFF, OME-TIFF, PNG or OME-Zarr"
            )
    except MechanoscopeError:
        raise
    except MemoryError:
        raise ImageReadError(
            f"{p}: not enough memory to read this image; crop or tile it, or lower --max-pixels "
            "so that such files are refused before reading"
        ) from None
    except Exception as exc:  # corrupt/truncated files raise many different errors
        raise ImageReadError(
            f"{p}: could not be read as an image ({type(exc).__name__}: {exc}); the file may "
            "be corrupt or truncated"
        ) from exc
    if data.size == 0:
        raise ImageReadError(f"{p}: image has no pixels (shape {data.shape})")

    if axes is not None:
        # allow a squeezed file: drop length-1 axes the user named but the data lacks
        final_axes = _check_axes(axes, data.ndim, p) if len(axes) == data.ndim else None
        if final_axes is None:
            squeezed = np.squeeze(data)
            if len(axes) == squeezed.ndim:
                data = squeezed
                final_axes = _check_axes(axes, data.ndim, p)
            else:
                raise AxesError(
                    f"{p}: axes={axes!r} has {len(axes)} letters but the image has shape "
                    f"{data.shape}"
                )
    else:
        if data.ndim == 2:
            final_axes = "YX"
        else:
            known = file_axes is not None and set(file_axes) <= _VALID_AXES and len(file_axes) == data.ndim
            if not known:
                # drop singleton dimensions before giving up
                squeezed = np.squeeze(data)
                if squeezed.ndim == 2:
                    data, final_axes = squeezed, "YX"
                else:
                    raise _ambiguous(p, data.shape, file_axes)
            else:
                final_axes = file_axes  # type: ignore[assignment]

    if pixel_size_um is not None:
        if meta_px is not None and abs(meta_px - pixel_size_um) > 0.01 * pixel_size_um:
            warnings.warn(
                f"{p}: pixel size {pixel_size_um} µm given explicitly overrides "
                f"{meta_px:.4g} µm from the file's metadata",
                MechanoscopeWarning,
                stacklevel=2,
            )
        px, source = float(pixel_size_um), "override"
    elif meta_px is not None:
        px, source = float(meta_px), "metadata"
    else:
        if require_pixel_size:
            raise MissingPixelSizeError(
                f"{p}: the file's metadata gives no pixel size{_ignored_resolution(p)}; pass it explicitly, e.g. "
                "pixel_size_um=0.65 (CLI: --pixel-size-um 0.65), with the value for your "
                "camera and objective"
            )
        px, source = None, "none"
    return Image(data=data, axes=final_axes, pixel_size_um=px, path=p, pixel_size_source=source)


def check_image_values(data: np.ndarray, where: str = "image") -> None:
    """Raise a clear error for images no stage can work with.

    Rejects empty arrays, non-finite values (NaN/inf) and constant images.
    """
    if data.size == 0:
        raise ImageReadError(f"{where}: image is empty (shape {data.shape})")
    if np.issubdtype(data.dtype, np.floating) and not np.all(np.isfinite(data)):
        n = int(np.size(data) - np.count_nonzero(np.isfinite(data)))
        raise ImageReadError(
            f"{where}: image contains {n} NaN or infinite pixel values; fix or mask them "
            "before analysis"
        )
    if data.min() == data.max():
        raise ImageReadError(
            f"{where}: image is constant (every pixel is {data.flat[0]}); it holds no cells"
        )


def _imagej_ok(data: np.ndarray) -> bool:
    return data.dtype in (np.uint8, np.uint16, np.float32)


def write_image(
    path: str | os.PathLike[str],
    data: np.ndarray,
    *,
    pixel_size_um: float,
    axes: str = "YX",
    compression: str | None = "zlib",
) -> Path:
    """Write an image as TIFF with its pixel size and axes in the metadata, atomically.

    uint8/uint16/float32 images are written ImageJ-style (``unit=um`` and resolution
    tags), which ImageJ/Fiji, tifffile and mechanoscope all read back. Other dtypes
    are written as plain TIFF with resolution in pixels per centimetre. Output is
    deterministic: the same array gives the same bytes.
    """
    import tifffile

    if not (np.isfinite(pixel_size_um) and pixel_size_um > 0):
        raise MechanoscopeError(f"pixel_size_um must be > 0 µm, got {pixel_size_um}")
    axes = axes.upper()
    if len(axes) != data.ndim:
        raise AxesError(f"{path}: axes {axes!r} do not match data of shape {data.shape}")
    per_um = 1.0 / pixel_size_um
    with atomic_path(path) as tmp:
        if _imagej_ok(data) and axes in ("YX", "TYX", "CYX", "ZYX", "TCYX", "TZCYX", "ZCYX"):
            tifffile.imwrite(
                tmp,
                data,
                imagej=True,
                resolution=(per_um, per_um),
                metadata={"unit": "um", "axes": axes},
                compression=compression,
            )
        else:
            per_cm = per_um * 1e4
            tifffile.imwrite(
                tmp,
                data,
                resolution=(per_cm, per_cm),
                resolutionunit="CENTIMETER",
                metadata={"axes": axes},
                compression=compression,
            )
    return Path(path)


def write_label_image(
    path: str | os.PathLike[str], labels: np.ndarray, *, pixel_size_um: float
) -> Path:
    """Write an integer label image (0 = background) as TIFF, atomically.

    Stored as uint16 when the largest id fits, else uint32.
    """
    if not np.issubdtype(labels.dtype, np.integer):
        raise MechanoscopeError(f"{path}: label image must be integer, got {labels.dtype}")
    if labels.size and labels.min() < 0:
        raise MechanoscopeError(f"{path}: label image has negative ids")
    dtype = np.uint16 if (labels.size == 0 or labels.max() < 2**16) else np.uint32
    return write_image(path, labels.astype(dtype), pixel_size_um=pixel_size_um, axes="YX")


def read_label_image(
    path: str | os.PathLike[str], *, pixel_size_um: float | None = None, max_pixels: int | None = None
) -> Image:
    """Read a label image (integer ids, 0 = background).

    The pixel size is optional here (labels are usually paired with an image that
    has one). Raises :class:`ImageReadError` if the data is not integer.
    """
    img = read_image(path, pixel_size_um=pixel_size_um, require_pixel_size=False, max_pixels=max_pixels)
    data = img.data
    if not np.issubdtype(data.dtype, np.integer):
        if np.issubdtype(data.dtype, np.floating) and np.all(np.isfinite(data)) and np.all(data == np.round(data)) and data.min() >= 0:
            data = data.astype(np.int64)
        else:
            raise ImageReadError(
                f"{path}: a label image must hold non-negative integer ids, got {data.dtype}"
            )
    if data.min() < 0:
        raise ImageReadError(f"{path}: label image holds negative ids")
    return Image(data, img.axes, img.pixel_size_um, img.path, img.pixel_size_source)
