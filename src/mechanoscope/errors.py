"""Error and warning hierarchy.

Every error names what was wrong (file, parameter, axis, unit) and what to do about it.
All errors derive from :class:`MechanoscopeError`, which is a :class:`ValueError`, so
callers that only know about ``ValueError`` still catch them.
"""

from __future__ import annotations

import os

__all__ = [
    "failure_message",
    "MechanoscopeError",
    "ImageReadError",
    "ImageTooLargeError",
    "MissingPixelSizeError",
    "AxesError",
    "ConfigError",
    "OutputFolderError",
    "BatchFailedError",
    "MechanoscopeWarning",
    "SkippedInputWarning",
    "AFMReadError",
    "AFMFitError",
    "CTCFormatError",
    "TrackingError",
]


class MechanoscopeError(ValueError):
    """Base class of all errors raised by mechanoscope on bad input."""


class ImageReadError(MechanoscopeError):
    """A file could not be read as an image (missing, corrupt, truncated, unsupported)."""


class ImageTooLargeError(ImageReadError):
    """An image has more pixels than the configured limit (checked from the file header, before reading)."""


class MissingPixelSizeError(MechanoscopeError):
    """An image carries no pixel size and none was given explicitly."""


class AxesError(MechanoscopeError):
    """The axes of an image are ambiguous or do not fit what a stage needs."""


class ConfigError(MechanoscopeError):
    """A configuration value is out of its allowed range."""


class OutputFolderError(MechanoscopeError):
    """An output folder cannot be used: it holds results of a different run, lies under a
    regular file, or cannot be created or written."""


class BatchFailedError(MechanoscopeError):
    """No item of a batch could be processed; ``errors`` holds one record per item.

    Each record is a dict with at least ``file``, ``stage`` and ``error``.
    """

    def __init__(self, message: str, errors: list[dict] | None = None) -> None:
        super().__init__(message)
        self.errors: list[dict] = list(errors or [])


class MechanoscopeWarning(UserWarning):
    """Base class of warnings about data that is usable but suspicious."""


class SkippedInputWarning(MechanoscopeWarning):
    """A batch skipped one input item; the batch also returns and records it as an error."""


class AFMReadError(MechanoscopeError):
    """An AFM file or curve cannot be read, or lacks the calibration metadata a fit needs."""


class AFMFitError(MechanoscopeError):
    """A force curve cannot be fitted (no contact, too few points, fit did not converge)."""


class CTCFormatError(MechanoscopeError):
    """A Cell Tracking Challenge folder or track file (``man_track.txt``/``res_track.txt``) is malformed
    or disagrees with its label images; the message names the file and line."""


class TrackingError(MechanoscopeError):
    """A time series cannot be tracked as given: frames of different shapes, a single frame,
    reused ids, a gap between frames larger than allowed, missing columns."""


def failure_message(exc: BaseException, path: str | os.PathLike[str]) -> str:
    """One line for a per-item failure in a batch: the file first, then what went wrong.

    A :class:`MechanoscopeError` speaks for itself; any other exception (a bug, or a
    resource limit such as memory) is shown with its type so that it can be reported.
    """
    text = str(exc).strip()
    if not isinstance(exc, MechanoscopeError):
        text = f"{type(exc).__name__}: {text}" if text else type(exc).__name__
    return text if str(path) in text else f"{path}: {text}"
