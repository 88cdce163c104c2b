"""Helpers shared by CLI verbs: turning library errors into clean messages."""

from __future__ import annotations

import contextlib
from collections.abc import Iterator

import typer
from rich.console import Console

from mechanoscope.errors import MechanoscopeError

# soft_wrap: never break long file paths in messages (they must stay copyable and greppable)
console = Console(stderr=True, soft_wrap=True)

__all__ = ["console", "user_errors"]


@contextlib.contextmanager
def user_errors() -> Iterator[None]:
    """Print a :class:`MechanoscopeError` as one red line and exit with status 2."""
    try:
        yield
    except MechanoscopeError as exc:
        console.print(f"[red]error:[/red] {exc}")
        raise typer.Exit(code=2) from None
