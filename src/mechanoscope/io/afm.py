"""Reading AFM force curves with afmformats (never re-implemented here).

Every format afmformats reads is accepted (JPK ``.jpk-force``, force maps
``.jpk-force-map`` and QI ``.jpk-qi-data``/``.jpk-qi-series``, Asylum/Igor ``.ibw``,
AFM Workshop ``.csv``/``.zip``, NT-MDT and Optics11 Chiaro ``.txt``, afmformats' own
``.h5``/``.tab``); a ``.zip`` that afmformats does not read itself (an archive of such
files) is opened member by member. Only force–distance curves are returned; a file with
only creep-compliance or stress-relaxation curves is an error saying so.

Calibration: a file without its cantilever's spring constant (N/m) or its deflection
sensitivity (m/V) is an :class:`~mechanoscope.errors.AFMReadError` that names the
missing metadata and what to pass (``spring_constant_n_per_m``,
``sensitivity_m_per_v``). Values passed are *fallbacks*: they are used for the files
that lack them; files that carry their own calibration keep it.

Positions: ``curve_position_um`` gives the stage position of a curve in µm (afmformats'
``position x``/``position y`` metadata, metres in the file), NaN where the file has none.
"""

from __future__ import annotations

import contextlib
import logging
import os
import tempfile
import zipfile
from collections.abc import Iterable, Iterator, Sequence
from pathlib import Path
from typing import Any

import numpy as np

from mechanoscope.errors import AFMReadError

__all__ = [
    "CALIBRATION_OPTIONS",
    "afm_suffixes",
    "check_curve",
    "curve_position_um",
    "find_afm_files",
    "read_afm_file",
]

#: afmformats metadata key → (option name, unit) a user passes when the file lacks it.
CALIBRATION_OPTIONS = {
    "spring constant": ("spring_constant_n_per_m", "N/m", "--spring-constant-n-per-m"),
    "sensitivity": ("sensitivity_m_per_v", "m/V", "--sensitivity-m-per-v"),
}


def _afmformats() -> Any:
    try:
        import afmformats
    except ImportError as exc:  # pragma: no cover - afm extra missing
        raise AFMReadError("reading AFM curves needs afmformats: pip install 'mechanoscope[afm]'") from exc
    return afmformats


def _afm_exceptions() -> tuple[type[BaseException], ...]:
    """afmformats' errors derive from BaseException, not Exception: catch them by name."""
    err = _afmformats().errors
    return (err.AFMFileFormatError, err.MissingMetaDataError, Exception)


@contextlib.contextmanager
def _quiet_afmformats() -> Iterator[None]:
    """afmformats logs a traceback for every file its loader fails on; we report the
    failure ourselves (one line naming the file), so silence its logger meanwhile."""
    logger = logging.getLogger("afmformats")
    old = logger.level
    logger.setLevel(logging.CRITICAL + 1)  # children ("afmformats.formats") inherit it
    try:
        yield
    finally:
        logger.setLevel(old)


def afm_suffixes() -> list[str]:
    """File suffixes afmformats reads (e.g. ``.jpk-force``, ``.ibw``, ``.h5``)."""
    return list(_afmformats().supported_extensions)


def find_afm_files(paths: str | os.PathLike[str] | Sequence[str | os.PathLike[str]]) -> tuple[list[Path], list[dict[str, str]]]:
    """Expand files and folders into AFM data files.

    Parameters
    ----------
    paths
        Files and/or folders (searched recursively for suffixes afmformats reads).

    Returns
    -------
    files : list of Path
        Files in the order given (folders sorted), without duplicates.
    problems : list of dict
        ``{"file", "error"}`` for paths that do not exist or whose suffix no reader knows.
    """
    if isinstance(paths, (str, os.PathLike)):
        paths = [paths]
    suffixes = set(afm_suffixes())
    files: list[Path] = []
    problems: list[dict[str, str]] = []
    for raw in paths:
        p = Path(raw)
        if p.is_dir():
            with _quiet_afmformats():  # afmformats' detection: files of a known suffix whose content fits
                found = sorted(Path(q) for q in _afmformats().find_data(p))
            if not found:
                problems.append({"file": str(p), "error": f"{p}: folder holds no AFM file ({', '.join(sorted(suffixes))})"})
            files.extend(found)
        elif not p.exists():
            problems.append({"file": str(p), "error": f"{p}: no such file or folder"})
        elif p.suffix not in suffixes:
            problems.append({"file": str(p), "error": f"{p}: not an AFM format afmformats reads (suffix {p.suffix or 'none'!r}; known: {', '.join(sorted(suffixes))})"})
        else:
            files.append(p)
    seen: set[Path] = set()
    unique = []
    for f in files:
        key = f.resolve()
        if key not in seen:
            seen.add(key)
            unique.append(f)
    return unique, problems


def _missing_message(path: Path, keys: Iterable[str]) -> str:
    keys = list(keys)
    what = " and ".join(f"'{k}'" for k in keys)
    how = "; ".join(
        f"pass {CALIBRATION_OPTIONS[k][0]} (CLI {CALIBRATION_OPTIONS[k][2]}, in {CALIBRATION_OPTIONS[k][1]})"
        if k in CALIBRATION_OPTIONS else f"add metadata '{k}'"
        for k in keys
    )
    return f"{path}: the file lacks the calibration metadata {what}; {how}"


def _load(path: Path, meta_override: dict[str, float], data_class: Any) -> list[Any]:
    af = _afmformats()
    kwargs: dict[str, Any] = {"modality": "force-distance"}
    if data_class is not None:
        kwargs["data_classes_by_modality"] = {"force-distance": data_class}
    with _quiet_afmformats():
        return list(af.load_data(path, meta_override=dict(meta_override) or None, **kwargs))


def _modalities(path: Path) -> list[str]:
    try:
        with _quiet_afmformats():
            return sorted({str(c.metadata.get("imaging mode")) for c in _afmformats().load_data(path)})
    except _afm_exceptions():
        return []


def _zip_members(path: Path) -> list[str] | None:
    """Members of a zip archive that afmformats reads, or None if it is not one."""
    try:
        with zipfile.ZipFile(path) as zf:
            names = [n for n in zf.namelist() if not n.endswith("/")]
    except (zipfile.BadZipFile, OSError):
        return None
    suffixes = set(afm_suffixes()) - {".zip"}
    return [n for n in names if Path(n).suffix in suffixes]


def _read_zip_archive(path: Path, members: list[str], fallbacks: dict[str, float], data_class: Any) -> list[Any]:
    """Read each AFM member of an archive; curves are materialised (the temp folder goes)."""
    af = _afmformats()
    cls = data_class or af.AFMForceDistance
    curves: list[Any] = []
    modes: set[str] = set()
    with tempfile.TemporaryDirectory(prefix="mechanoscope-afm-") as tmp, zipfile.ZipFile(path) as zf:
        for name in members:
            target = Path(tmp) / Path(name).name
            target.write_bytes(zf.read(name))
            member = _read_one(target, fallbacks, data_class, shown=Path(f"{path}/{name}"))
            if not member:
                modes.update(m for m in _modalities(target) if m and m != "None")
            for c in member:
                data = {col: np.asarray(c[col]) for col in c.columns if col != "index"}
                meta = {k: v for k, v in dict(c.metadata).items()}
                meta["path"] = Path(f"{path}/{name}")
                curves.append(cls(data=data, metadata=meta))
    if not curves:
        holds = f"only {', '.join(sorted(modes))} curves" if modes else "no curve"
        raise AFMReadError(f"{path}: the archive's {len(members)} AFM file(s) hold {holds}; mechanoscope fits force-distance (indentation) curves")
    return curves


def _read_one(path: Path, fallbacks: dict[str, float], data_class: Any, shown: Path) -> list[Any]:
    err = _afmformats().errors
    try:
        try:
            curves = _load(path, {}, data_class)
        except err.MissingMetaDataError as exc:
            keys = list(getattr(exc, "meta_keys", []) or [])
            missing = [k for k in keys if k not in fallbacks]
            if missing or not keys:
                raise AFMReadError(_missing_message(shown, missing or list(CALIBRATION_OPTIONS))) from None
            curves = _load(path, {k: fallbacks[k] for k in keys}, data_class)
        # loaded, but the spring constant is absent (e.g. AFM Workshop files with forces in nN)
        if curves and "spring constant" in fallbacks and any(_meta(c, "spring constant") is None for c in curves):
            curves = _load(path, {"spring constant": fallbacks["spring constant"]}, data_class)
    except AFMReadError:
        raise
    except err.MissingMetaDataError as exc:
        raise AFMReadError(_missing_message(shown, getattr(exc, "meta_keys", None) or list(CALIBRATION_OPTIONS))) from None
    except err.FileFormatNotSupportedError:
        raise AFMReadError(f"{shown}: not a file afmformats can read (suffix {shown.suffix!r} but its content matches no {shown.suffix} format)") from None
    except _afm_exceptions() as exc:
        raise AFMReadError(f"{shown}: could not be read as an AFM file — empty, truncated or corrupt? ({type(exc).__name__}: {exc})") from None
    return curves


def _meta(curve: Any, key: str) -> Any:
    try:
        value = curve.metadata.get(key)
    except Exception:  # lazy metadata that cannot be computed
        return None
    if value is None or (isinstance(value, float) and not np.isfinite(value)):
        return None
    return value


def read_afm_file(
    path: str | os.PathLike[str],
    *,
    spring_constant_n_per_m: float | None = None,
    sensitivity_m_per_v: float | None = None,
    data_class: Any = None,
) -> list[Any]:
    """Read the force–distance curves of one AFM file with afmformats.

    Parameters
    ----------
    path
        AFM data file in any format afmformats reads.
    spring_constant_n_per_m, sensitivity_m_per_v
        Calibration used where the file lacks it (N/m, m/V).
    data_class
        afmformats data class to build (nanite passes ``nanite.Indentation``);
        default ``afmformats.AFMForceDistance``.

    Returns
    -------
    list
        One afmformats curve object per force–distance curve, in file order.

    Raises
    ------
    AFMReadError
        Missing file, unknown format, corrupt/truncated file, missing calibration
        metadata (naming what to pass), or a file with no force–distance curve.
    """
    p = Path(path)
    if not p.is_file():
        raise AFMReadError(f"{p}: no such AFM file")
    if p.stat().st_size == 0:
        raise AFMReadError(f"{p}: the file is empty")
    if p.suffix not in afm_suffixes():
        raise AFMReadError(f"{p}: not an AFM format afmformats reads (suffix {p.suffix or 'none'!r}; known: {', '.join(afm_suffixes())})")
    fallbacks = {k: float(v) for k, v in (("spring constant", spring_constant_n_per_m), ("sensitivity", sensitivity_m_per_v)) if v is not None}
    for key, value in fallbacks.items():
        if not (np.isfinite(value) and value > 0):
            raise AFMReadError(f"{CALIBRATION_OPTIONS[key][0]} must be a positive number of {CALIBRATION_OPTIONS[key][1]}, got {value}")
    try:
        curves = _read_one(p, fallbacks, data_class, shown=p)
    except AFMReadError as first:
        members = _zip_members(p) if p.suffix == ".zip" else None
        if not members or "calibration metadata" in str(first):
            raise
        curves = _read_zip_archive(p, members, fallbacks, data_class)
    if not curves:
        modes = [m for m in _modalities(p) if m and m != "None"]
        holds = f"only {', '.join(modes)} curves" if modes else "no curve"
        raise AFMReadError(f"{p}: holds {holds}; mechanoscope fits force-distance (indentation) curves")
    return curves


def check_curve(curve: Any, *, label: str, min_approach_points: int = 10, needs_tip_position: bool = True) -> None:
    """Raise :class:`AFMReadError` if a curve cannot be fitted at all.

    Checks that the curve has a force column and an approach segment of at least
    ``min_approach_points`` points, and (``needs_tip_position``) that the spring
    constant needed to compute the tip position is known.

    Parameters
    ----------
    curve
        afmformats force–distance curve.
    label
        ``"file[curve index]"`` used in the message.
    """
    if "force" not in curve:
        raise AFMReadError(f"{label}: the curve has no force column; pass sensitivity_m_per_v and spring_constant_n_per_m (CLI --sensitivity-m-per-v, --spring-constant-n-per-m) so that the deflection can be converted")
    n = len(curve)
    seg = np.asarray(curve["segment"]) if "segment" in curve else np.zeros(n, np.uint8)
    n_appr = int(np.count_nonzero(seg == 0))
    if n_appr < min_approach_points:
        raise AFMReadError(
            f"{label}: no approach segment to fit ({n_appr} approach point(s) of {n}; at least "
            f"{min_approach_points} needed) — the recording is broken or holds only the retract curve"
        )
    if needs_tip_position and "tip position" not in getattr(curve, "columns_innate", ()) and _meta(curve, "spring constant") is None:
        raise AFMReadError(f"{label}: the file lacks the cantilever's spring constant, needed for the tip position; " + _missing_message(Path(label), ["spring constant"]).split("; ", 1)[1])


def curve_position_um(curve: Any) -> tuple[float, float]:
    """Stage position ``(x_um, y_um)`` of a curve in µm, NaN where the file has none."""
    out = []
    for key in ("position x", "position y"):
        v = _meta(curve, key)
        try:
            out.append(float(v) * 1e6 if v is not None else float("nan"))
        except (TypeError, ValueError):
            out.append(float("nan"))
    return out[0], out[1]
