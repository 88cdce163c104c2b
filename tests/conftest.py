"""Shared test set-up."""

import os
from pathlib import Path

import pytest
from hypothesis import HealthCheck, settings

# Property-based tests: reproducible in CI (a failure seen once is seen again), no example
# database written into the repository, no wall-clock deadline on a loaded 2-core machine.
# `HYPOTHESIS_PROFILE=explore` draws fresh random examples (more of them) when hunting bugs.
settings.register_profile(
    "ci", derandomize=True, database=None, deadline=None, print_blob=True,
    suppress_health_check=[HealthCheck.too_slow, HealthCheck.function_scoped_fixture],
)
settings.register_profile("explore", parent=settings.get_profile("ci"), derandomize=False, max_examples=1000)
settings.load_profile(os.environ.get("HYPOTHESIS_PROFILE", "ci"))

#: Real data beside the project (never copied into it); tests needing it skip without it.
SHARED_DATA = Path(__file__).resolve().parents[1].parent / "shared" / "data"


#: Test files that train networks or run whole chains (seconds per test). Under mutation
#: testing (`make mutation`, mutmut sets MUTANT_UNDER_TEST) they run after the unit and
#: property tests, so that a mutant a fast test kills costs a fraction of a second (mutmut
#: stops at the first failing test); they still run for the mutants nothing else kills.
SLOW_TEST_FILES = (
    "test_pipeline.py", "test_learn.py", "test_report.py", "test_segment_network.py",
    "test_realdata.py", "test_evaluate_stiffness.py", "test_cli.py", "test_simulate_adherent.py",
)


def pytest_collection_modifyitems(config, items):
    if "MUTANT_UNDER_TEST" in os.environ or os.environ.get("MECHANOSCOPE_FAST_TESTS_FIRST"):
        items.sort(key=lambda item: Path(str(item.fspath)).name in SLOW_TEST_FILES)  # stable: order kept within each group


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
