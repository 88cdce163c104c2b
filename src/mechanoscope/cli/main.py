"""The ``mechanoscope`` command. Each verb lives in its own module and is registered here."""

from __future__ import annotations

import typer

from mechanoscope import __version__

app = typer.Typer(
    name="mechanoscope",
    help=(
        "Single-cell mechanics from label-free microscope images: simulate, segment, "
        "extract, train, predict, evaluate, report."
    ),
    no_args_is_help=True,
    add_completion=False,
    pretty_exceptions_enable=False,
)


def _version(value: bool) -> None:
    if value:
        typer.echo(f"mechanoscope {__version__}")
        raise typer.Exit()


@app.callback()
def _root(
    version: bool = typer.Option(
        False, "--version", callback=_version, is_eager=True, help="Print the version and exit."
    ),
) -> None:
    """mechanoscope: cell stiffness from ordinary microscope images."""


# --- verb registration: each module exposes ``register(app)`` ---------------------------
from mechanoscope.cli import simulate as _simulate  # noqa: E402

_simulate.register(app)
from mechanoscope.cli import demo as _demo  # noqa: E402

_demo.register(app)
from mechanoscope.cli import evaluate as _evaluate  # noqa: E402

_evaluate.register(app)
from mechanoscope.cli import extract as _extract  # noqa: E402

_extract.register(app)
from mechanoscope.cli import segment as _segment  # noqa: E402

_segment.register(app)
from mechanoscope.cli import report as _report  # noqa: E402

_report.register(app)
from mechanoscope.cli import train as _train  # noqa: E402

_train.register(app)
from mechanoscope.cli import predict as _predict  # noqa: E402

_predict.register(app)
from mechanoscope.cli import afm as _afm  # noqa: E402

_afm.register(app)
from mechanoscope.cli import rtdc as _rtdc  # noqa: E402

_rtdc.register(app)
from mechanoscope.cli import track as _track  # noqa: E402

_track.register(app)
from mechanoscope.cli import compare as _compare; _compare.register(app)  # noqa: E402, E702
from mechanoscope.cli import export as _export; _export.register(app)  # noqa: E402, E702
from mechanoscope.cli import explain as _explain; _explain.register(app)  # noqa: E402, E702
from mechanoscope.cli import run as _run; _run.register(app)  # noqa: E402, E702


INTERRUPTED_MESSAGE = "[red]interrupted[/red]; what was finished is kept, run the same command again to resume"


def _one_line_warning(message, category, filename, lineno, line=None) -> str:  # noqa: ANN001
    """A warning that escapes a verb, as the user should see it: one line, no source file or code."""
    return f"warning: {message}\n"


def _quiet_library_chatter() -> None:
    """Warnings that escape a verb print as one line, not as Python's ``file:line: Category``
    and a line of source code (``MECHANOSCOPE_DEBUG=1`` keeps Python's format)."""
    import warnings

    from mechanoscope.cli._common import debug_enabled

    if debug_enabled():
        return
    warnings.formatwarning = _one_line_warning


def main(argv: list[str] | None = None) -> None:
    """The ``mechanoscope`` command with a safety net: never a Python traceback.

    Errors the verbs expect are handled inside them (exit 1 or 2, see
    :mod:`mechanoscope.cli._common`); anything else that escapes is printed as one line
    ending in "this is a bug; please report it" and exits with 3. ``MECHANOSCOPE_DEBUG=1``
    lets the traceback through. Ctrl-C exits with 130 and one line.
    """
    import sys

    from mechanoscope.cli._common import EXIT_BUG, console, debug_enabled, unexpected_error_message

    _quiet_library_chatter()
    try:
        app(args=argv, prog_name="mechanoscope")
    except SystemExit as exc:
        if exc.code == 130:  # typer turns Ctrl-C inside a verb into Exit(130) without a word
            console.print(INTERRUPTED_MESSAGE)
        raise
    except KeyboardInterrupt:
        if debug_enabled():
            raise
        console.print(INTERRUPTED_MESSAGE)
        sys.exit(130)
    except Exception as exc:  # the last line of defence: one line, no traceback
        if debug_enabled():
            raise
        from rich.markup import escape

        console.print(f"[red]error:[/red] {escape(unexpected_error_message(exc))}")
        sys.exit(EXIT_BUG)


if __name__ == "__main__":  # pragma: no cover
    main()
