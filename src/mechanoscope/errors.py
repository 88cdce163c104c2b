"""Error and warning hierarchy.

Every error names what was wrong (file, parameter, axis, unit) and what to do about it.
All errors derive from :class:`MechanoscopeError`, which is a :class:`ValueError`, so
callers that only know about ``ValueError`` still catch them.
"""

from __future__ import annotations

__all__ = [
    "MechanoscopeError",
    "ImageReadError",
    "MissingPixelSizeError",
    "AxesError",
    "ConfigError",
    "OutputFolderError",
    "MechanoscopeWarning",
    "SkippedInputWarning",
]


class MechanoscopeError(ValueError):
    """Base class of all errors raised by mechanoscope on bad input."""


class ImageReadError(MechanoscopeError):
    """A file could not be read as an image (missing, corrupt, truncated, unsupported)."""


class MissingPixelSizeError(MechanoscopeError):
    """An image carries no pixel size and none was given explicitly."""


class AxesError(MechanoscopeError):
    """The axes of an image are ambiguous or do not fit what a stage needs."""


class ConfigError(MechanoscopeError):
    """A configuration value is out of its allowed range."""


class OutputFolderError(MechanoscopeError):
    """An output folder holds results of a different run."""


class MechanoscopeWarning(UserWarning):
    """Base class of warnings about data that is usable but suspicious."""


class SkippedInputWarning(MechanoscopeWarning):
    """A batch skipped one input item; the batch also returns and records it as an error."""
