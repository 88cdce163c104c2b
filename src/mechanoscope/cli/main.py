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


def main() -> None:  # pragma: no cover - entry point
    app()


if __name__ == "__main__":  # pragma: no cover
    main()
