"""Shared test set-up."""

import os
from pathlib import Path

import pytest

#: Real data beside the project (never copied into it); tests needing it skip without it.
SHARED_DATA = Path(__file__).resolve().parents[1].parent / "shared" / "data"


@pytest.fixture(autouse=True)
def _wide_terminal(monkeypatch):
    """Help and error texts are checked by content: render them on a wide terminal
    whatever the width of the terminal (or CI log) running the tests."""
    monkeypatch.setenv("COLUMNS", "200")
    monkeypatch.setenv("TERMINAL_WIDTH", "200")
    monkeypatch.setenv("NO_COLOR", "1")


def shared_data(name: str) -> Path:
    """Path of a folder of ../shared/data, or skip the test with the reason."""
    p = SHARED_DATA / name
    if not p.exists():
        pytest.skip(f"real data folder {p} is absent (see DESIGN.md: ../shared/data)")
    return p
