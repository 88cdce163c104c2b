"""Base class for typed configurations.

Every configuration in mechanoscope is a pydantic model that rejects unknown keys,
carries a description for every field, loads from YAML/JSON, and is written into
every output so that a result says how it was made.
"""

from __future__ import annotations

import os
from collections.abc import Iterable, Mapping
from pathlib import Path
from typing import Any, TypeVar

from pydantic import BaseModel, ConfigDict, ValidationError

from mechanoscope.errors import ConfigError

__all__ = ["StrictConfig", "load_config", "merge_config", "read_config_mapping", "validate_mapping", "validation_message"]

T = TypeVar("T", bound="StrictConfig")
M = TypeVar("M", bound=BaseModel)


class StrictConfig(BaseModel):
    """A pydantic model that forbids unknown keys and validates on assignment."""

    model_config = ConfigDict(extra="forbid", validate_assignment=True, frozen=False)

    @classmethod
    def build(cls: type[T], **values: Any) -> T:
        """Construct and turn validation errors into a readable :class:`ConfigError`."""
        try:
            return cls(**values)
        except ValidationError as exc:
            raise ConfigError(validation_message(cls, exc)) from None

    @classmethod
    def from_file(cls: type[T], path: str | os.PathLike[str]) -> T:
        """Load from a ``.json`` or ``.yaml``/``.yml`` file."""
        return load_config(cls, path)


def validation_message(cls: type[BaseModel], exc: ValidationError) -> str:
    """One line per invalid field: the parameter, the value and the allowed range."""
    lines = [f"invalid {cls.__name__}:"]
    for err in exc.errors():
        loc = ".".join(str(p) for p in err["loc"]) or "(root)"
        msg = err["msg"]
        if err["type"] == "extra_forbidden":
            allowed = ", ".join(sorted(cls.model_fields))
            msg = f"unknown parameter; allowed parameters are: {allowed}"
        value = err.get("input")
        shown = "" if isinstance(value, dict) else f" (got {value!r})"
        lines.append(f"  {loc}: {msg}{shown}")
    return "\n".join(lines)


def validate_mapping(cls: type[M], data: Mapping[str, Any]) -> M:
    """Validate a mapping (from a file and/or CLI flags) into ``cls``; readable :class:`ConfigError` if invalid."""
    try:
        return cls.model_validate(dict(data))
    except ValidationError as exc:
        raise ConfigError(validation_message(cls, exc)) from None


def read_config_mapping(path: str | os.PathLike[str], what: str = "parameters") -> dict[str, Any]:
    """Read a JSON or YAML file holding a mapping of settings, with clear errors."""
    import yaml

    p = Path(path)
    if not p.is_file():
        raise ConfigError(f"{p}: no such config file")
    try:
        data = yaml.safe_load(p.read_text())  # YAML is a superset of JSON
    except Exception as exc:
        raise ConfigError(f"{p}: not valid JSON/YAML ({exc})") from None
    if data is None:
        data = {}
    if not isinstance(data, dict):
        raise ConfigError(f"{p}: expected a mapping of {what}")
    return dict(data)


def load_config(cls: type[T], path: str | os.PathLike[str]) -> T:
    """Load a configuration of type ``cls`` from JSON or YAML, with clear errors."""
    data = read_config_mapping(path)
    try:
        return cls(**data)
    except ValidationError as exc:
        raise ConfigError(f"{path}: " + validation_message(cls, exc)) from None


def merge_config(
    cls: type[M],
    path: str | os.PathLike[str] | None,
    flags: Mapping[str, Any],
    *,
    typed: Iterable[str] | None = None,
    renames: Mapping[str, str] | None = None,
    fixed: Mapping[str, Any] | None = None,
    what: str = "settings",
) -> M:
    """The one merge of a config file with the flags typed on the command line.

    Parameters
    ----------
    cls
        The configuration type (a pydantic model that rejects unknown keys).
    path
        JSON/YAML file with some of ``cls``'s fields, or ``None``.
    flags
        Command-line options, ``option name -> value``.
    typed
        Names of the options the user typed. With a file, only these override it (an
        option's default never overrides a value from the file); without a file every
        option's value is used, defaults included. ``None``: all options count as typed.
    renames
        ``option name -> config field`` where an option's name differs from the field it sets;
        a dotted field (``crop.crop_pixels``) sets a field of a nested section, keeping the
        section's other values from the file.
    fixed
        Values that always apply (e.g. a required positional argument), after the flags.
    what
        What the file holds, for error messages.

    Returns
    -------
    cls
        The validated configuration.

    Raises
    ------
    ConfigError
        The file is missing or not a mapping, or the merged values are invalid (the
        message names the file, the parameter and the allowed values).
    """
    base = read_config_mapping(path, what) if path is not None else {}
    typed_names = None if typed is None else set(typed)
    for name, value in flags.items():
        if path is None or typed_names is None or name in typed_names:
            *sections, leaf = (renames or {}).get(name, name).split(".")
            target = base
            for sec in sections:
                target[sec] = dict(target.get(sec) or {})
                target = target[sec]
            target[leaf] = value
    base.update(fixed or {})
    try:
        return cls.model_validate(base)
    except ValidationError as exc:
        prefix = f"{path}: " if path is not None else ""
        raise ConfigError(prefix + validation_message(cls, exc)) from None

