"""Atomic file writing: write to a temporary name in the same folder, then rename.

A crash or an error while writing never leaves a half-written file under the final
name, and never destroys a file that was already there.
"""

from __future__ import annotations

import contextlib
import json
import os
from collections.abc import Iterator
from pathlib import Path
from typing import Any

__all__ = ["atomic_path", "check_output_folder_path", "make_output_folder", "write_json"]


@contextlib.contextmanager
def atomic_path(path: str | os.PathLike[str]) -> Iterator[Path]:
    """Yield a temporary path next to ``path``; rename it to ``path`` on success.

    Parameters
    ----------
    path
        Final destination. Its parent folder is created if missing.

    Yields
    ------
    Path
        Temporary path with the same suffix as ``path`` (so that writers that
        dispatch on the suffix still work). On an exception it is deleted and the
        original file at ``path``, if any, is left untouched.
    """
    final = Path(path)
    final.parent.mkdir(parents=True, exist_ok=True)
    tmp = final.with_name(f".{final.stem}.tmp-{os.getpid()}{final.suffix}")
    try:
        yield tmp
        os.replace(tmp, final)
    except BaseException:
        with contextlib.suppress(FileNotFoundError):
            if tmp.is_dir():
                import shutil

                shutil.rmtree(tmp)
            else:
                tmp.unlink()
        raise


def _json_default(obj: Any) -> Any:
    import numpy as np

    if isinstance(obj, np.integer):
        return int(obj)
    if isinstance(obj, np.floating):
        return float(obj)
    if isinstance(obj, np.ndarray):
        return obj.tolist()
    if isinstance(obj, Path):
        return str(obj)
    raise TypeError(f"cannot write {type(obj).__name__} to JSON")


def write_json(obj: Any, path: str | os.PathLike[str]) -> Path:
    """Write ``obj`` as indented, key-sorted JSON, atomically. Returns the path."""
    with atomic_path(path) as tmp:
        tmp.write_text(json.dumps(obj, indent=2, sort_keys=True, default=_json_default) + "\n")
    return Path(path)


def check_output_folder_path(path: str | os.PathLike[str], what: str = "output folder") -> Path:
    """Check, without creating anything, that a folder can be created or written at ``path``.

    Meant to run before any long work, so that a bad output path fails in a second.
    Walks up to the nearest existing ancestor: it must be a folder (not a regular
    file) where this process may create entries.

    Raises
    ------
    OutputFolderError
        ``path`` is a regular file, lies under a regular file, or is not writable.
    """
    from mechanoscope.errors import OutputFolderError

    final = Path(path)
    if final.exists() and not final.is_dir():
        raise OutputFolderError(
            f"{final}: the {what} is an existing file, not a folder; choose another path (nothing was written)"
        )
    probe = final
    while not probe.exists():
        if probe.parent == probe:
            break
        probe = probe.parent
    if probe.exists() and not probe.is_dir():
        raise OutputFolderError(
            f"{final}: cannot create the {what} because {probe} is a regular file, not a "
            "folder; choose another path (nothing was written)"
        )
    if probe.exists() and not os.access(probe, os.W_OK | os.X_OK):
        raise OutputFolderError(
            f"{final}: no permission to write in {probe}; choose a folder you can write to "
            "(nothing was written)"
        )
    return final


def make_output_folder(path: str | os.PathLike[str], what: str = "output folder") -> Path:
    """Create the folder ``path`` (and its parents) after :func:`check_output_folder_path`.

    An operating-system error (read-only disk, name too long, …) becomes an
    :class:`~mechanoscope.errors.OutputFolderError` naming the folder.
    """
    from mechanoscope.errors import OutputFolderError

    final = check_output_folder_path(path, what)
    try:
        final.mkdir(parents=True, exist_ok=True)
    except OSError as exc:
        raise OutputFolderError(
            f"{final}: could not create the {what} ({exc.strerror or exc}); choose another path"
        ) from None
    return final
