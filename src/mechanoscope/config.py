"""Base class for typed configurations.

Every configuration in mechanoscope is a pydantic model that rejects unknown keys,
carries a description for every field, loads from YAML/JSON, and is written into
every output so that a result says how it was made.
"""

from __future__ import annotations

import json
import os
from pathlib import Path
from typing import Any, TypeVar

from pydantic import BaseModel, ConfigDict, ValidationError

from mechanoscope.errors import ConfigError

__all__ = ["StrictConfig", "load_config", "validation_message"]

T = TypeVar("T", bound="StrictConfig")


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


def load_config(cls: type[T], path: str | os.PathLike[str]) -> T:
    """Load a configuration of type ``cls`` from JSON or YAML, with clear errors."""
    p = Path(path)
    if not p.exists():
        raise ConfigError(f"{p}: no such configuration file")
    text = p.read_text()
    if p.suffix.lower() in (".yaml", ".yml"):
        import yaml

        data = yaml.safe_load(text) or {}
    else:
        data = json.loads(text)
    if not isinstance(data, dict):
        raise ConfigError(f"{p}: a configuration file must hold a mapping of parameters")
    try:
        return cls(**data)
    except ValidationError as exc:
        raise ConfigError(f"{p}: " + validation_message(cls, exc)) from None
