"""Helpers shared by CLI verbs: turning library errors into clean messages and exit codes.

Exit codes of every verb:

* 0 — everything done;
* 1 — a batch ran but some (or all) of its images failed; each is recorded in the
  run's JSON file, which the last line printed names;
* 2 — bad input or usage (a :class:`~mechanoscope.errors.MechanoscopeError`, an
  operating-system error on a path, or a wrong option);
* 3 — an unexpected error, i.e. a bug: one line, no traceback (set
  ``MECHANOSCOPE_DEBUG=1`` to see it).
"""

from __future__ import annotations

import contextlib
import os
from collections.abc import Iterable, Iterator
from typing import Any
from pathlib import Path

import typer
from typer.exceptions import Abort, Exit, TyperException
from rich.console import Console
from rich.markup import escape

from mechanoscope.errors import BatchFailedError, MechanoscopeError

# soft_wrap: never break long file paths in messages (they must stay copyable and greppable)
console = Console(stderr=True, soft_wrap=True)

__all__ = [
    "BUG_REPORT_HINT",
    "EXIT_BUG",
    "EXIT_SOME_FAILED",
    "EXIT_USAGE",
    "console",
    "debug_enabled",
    "finish_batch",
    "flag_given",
    "os_error_message",
    "unexpected_error_message",
    "user_errors",
]

EXIT_SOME_FAILED = 1
EXIT_USAGE = 2
EXIT_BUG = 3
BUG_REPORT_HINT = (
    "this is a bug; please report it with the command you ran and this message "
    "(MECHANOSCOPE_DEBUG=1 shows the traceback)"
)


def debug_enabled() -> bool:
    """Whether ``MECHANOSCOPE_DEBUG`` asks for tracebacks instead of one-line errors."""
    return os.environ.get("MECHANOSCOPE_DEBUG", "").strip().lower() not in ("", "0", "false", "no")


def os_error_message(exc: OSError) -> str:
    """An operating-system error as the user would say it: what, on which path."""
    what = exc.strerror or str(exc) or type(exc).__name__
    paths = [p for p in (exc.filename, exc.filename2) if p]
    where = " → ".join(str(p) for p in paths)
    return f"{where}: {what}" if where else what


def unexpected_error_message(exc: BaseException) -> str:
    """One line for an exception nobody expected."""
    text = str(exc).strip().splitlines()[0] if str(exc).strip() else ""
    return f"{type(exc).__name__}: {text} ({BUG_REPORT_HINT})" if text else f"{type(exc).__name__} ({BUG_REPORT_HINT})"


@contextlib.contextmanager
def user_errors() -> Iterator[None]:
    """Turn exceptions into one red line and an exit code (see the module docstring).

    A :class:`BatchFailedError` (no image of a batch could be used) lists each failure
    and exits with 1; a :class:`MechanoscopeError` or an ``OSError`` exits with 2; any
    other exception exits with 3 without a traceback unless ``MECHANOSCOPE_DEBUG`` is set.
    """
    try:
        yield
    except (Exit, Abort, TyperException):  # typer's own exits and usage errors
        raise
    except BatchFailedError as exc:
        for err in exc.errors:
            console.print(f"[yellow]skipped:[/yellow] {escape(str(err.get('error', err)))}")
        console.print(f"[red]error:[/red] {escape(str(exc))}")
        raise typer.Exit(code=EXIT_SOME_FAILED) from None
    except MechanoscopeError as exc:
        console.print(f"[red]error:[/red] {escape(str(exc))}")
        raise typer.Exit(code=EXIT_USAGE) from None
    except OSError as exc:
        if debug_enabled():
            raise
        console.print(f"[red]error:[/red] {escape(os_error_message(exc))}")
        raise typer.Exit(code=EXIT_USAGE) from None
    except Exception as exc:
        if debug_enabled():
            raise
        console.print(f"[red]error:[/red] {escape(unexpected_error_message(exc))}")
        raise typer.Exit(code=EXIT_BUG) from None


def finish_batch(n_failed: int, n_total: int, record: Path | str, summary: str) -> None:
    """Print the batch's last line and exit with 1 when any image failed.

    ``summary`` says what was done; when ``n_failed`` > 0 the last line says how many
    images failed and names the JSON file ``record`` that holds their details.
    """
    if n_failed:
        console.print(escape(summary))
        console.print(
            f"[red]{n_failed} of {n_total} image(s) failed[/red]; details (file, stage, message) in {escape(str(record))}"
        )
        raise typer.Exit(code=EXIT_SOME_FAILED)
    console.print(escape(summary))


def flag_given(ctx: typer.Context, name: str) -> bool:
    """Whether option ``name`` was typed on the command line (or came from the environment).

    Used where a ``--config`` file sets the values: only flags the user typed override it,
    not the options' defaults. Compared by name because typer bundles its own copy of
    click, whose ``ParameterSource`` is not ``click.core.ParameterSource``.
    """
    source = ctx.get_parameter_source(name)
    return source is not None and source.name not in ("DEFAULT", "DEFAULT_MAP")


def typed_options(ctx: typer.Context, names: Iterable[str]) -> set[str]:
    """The options among ``names`` that the user typed (see :func:`flag_given`), for :func:`mechanoscope.config.merge_config`."""
    return {n for n in names if flag_given(ctx, n)}


def print_segmentation_qc(qc: dict | None, limit: int = 10) -> None:
    """Say which images (and conditions) segmentation found nothing or far too little in, before a batch's last line."""
    if not qc or not qc.get("flagged"):
        return
    for image_id in qc["flagged"][:limit]:
        e = qc["images"][image_id]
        console.print(f"[yellow]segmentation QC:[/yellow] {escape(image_id)}: {escape(e['reason'])}")
    if len(qc["flagged"]) > limit:
        console.print(f"[yellow]segmentation QC:[/yellow] … and {len(qc['flagged']) - limit} more image(s) (segmentation_qc in run.json)")
    for g in qc.get("lost_groups", []):
        s = qc["groups"][g]
        console.print(f"[red]segmentation QC:[/red] every image of {escape(g) if g != 'all' else 'the run'} ({s['n_images']}) is flagged: "
                      "its cells were not found, so comparisons with it are not meaningful (check exposure, focus or segmentation)")


def print_warnings_and_failures(caught: Iterable[Any], status: Iterable[dict]) -> list[dict]:
    """Print a batch's warnings once each and every failed image once; return the failed entries."""
    failed = [e for e in status if e["status"] == "failed"]
    seen: set[str] = set()
    for w in caught:  # failures are listed once below; other warnings once each
        text = str(w.message)
        if text not in seen and not any(e["error"] in text for e in failed):
            seen.add(text)
            console.print(f"[yellow]warning:[/yellow] {escape(text)}")
    for e in failed:
        console.print(f"[yellow]skipped:[/yellow] {escape(e['error'])}")
    return failed

