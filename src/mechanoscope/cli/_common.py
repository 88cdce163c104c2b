"""Helpers shared by CLI verbs: turning library errors into clean messages."""

from __future__ import annotations

import contextlib
from collections.abc import Iterator

import typer
from rich.console import Console

from mechanoscope.errors import MechanoscopeError

# soft_wrap: never break long file paths in messages (they must stay copyable and greppable)
console = Console(stderr=True, soft_wrap=True)

__all__ = ["console", "flag_given", "user_errors"]


@contextlib.contextmanager
def user_errors() -> Iterator[None]:
    """Print a :class:`MechanoscopeError` as one red line and exit with status 2."""
    try:
        yield
    except MechanoscopeError as exc:
        console.print(f"[red]error:[/red] {exc}")
        raise typer.Exit(code=2) from None


def flag_given(ctx: typer.Context, name: str) -> bool:
    """Whether option ``name`` was typed on the command line (or came from the environment).

    Used where a ``--config`` file sets the values: only flags the user typed override it,
    not the options' defaults. Compared by name because typer bundles its own copy of
    click, whose ``ParameterSource`` is not ``click.core.ParameterSource``.
    """
    source = ctx.get_parameter_source(name)
    return source is not None and source.name not in ("DEFAULT", "DEFAULT_MAP")
