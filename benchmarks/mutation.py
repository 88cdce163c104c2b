"""Mutation score of the numerical core (mutmut), printed as JSON.

mutmut changes the core's code one small edit at a time (``<`` → ``<=``, ``1.96`` →
``2.96``, ``x`` → ``y`` …) and runs the tests that cover the changed function; a mutant
the tests do not notice *survived*. The core (metrics, uncertainty and calibration,
data splits and class weights, crops and morphology, AFM matching, optics and camera)
is listed under ``[tool.mutmut] only_mutate`` in ``pyproject.toml``.

Survivors that cannot change any result (*equivalent*) or that we decided not to test
are listed, each with its reason, in ``benchmarks/mutation_equivalents.json``: the
mutant's name, the changed line as ``mutmut show`` prints it, the kind
(``"equivalent"`` or ``"not worth a test"``) and the reason. An entry whose changed line
no longer matches (the code moved) is reported as stale and not counted.

Score = killed / (all mutants − equivalent ones); "not worth a test" survivors, mutants
without a covering test and mutants not yet checked count against it. Timeouts and
crashes count as killed (the test run noticed the change).

Usage::

    python benchmarks/mutation.py            # run mutmut (resumes; ~1 h on 2 cores), then summarise
    python benchmarks/mutation.py --no-run   # summarise the last run (mutants/)
    python benchmarks/mutation.py --max-children 2 --out mutation.json
    python benchmarks/mutation.py --no-run --recheck

``--recheck`` runs every unexplained survivor of the last run again against today's
code and tests, without a whole mutmut run: in a copy of ``src/`` and ``tests/`` the
mutant's changed line replaces the original line (a mutant whose line cannot be found
once in its module is left as it was), the unit and property test files of its module
(``RECHECK_TESTS``) run with ``-x``, and the outcome is kept in ``mutants/recheck.json``,
which later summaries fold in. The unchanged copy must pass those tests first.

``make mutation`` runs the first form. It is not part of ``make test``.
"""

from __future__ import annotations

import argparse
import json
import subprocess
import sys
import time
from collections import Counter, defaultdict
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
EQUIVALENTS = ROOT / "benchmarks" / "mutation_equivalents.json"

#: mutmut's meaning of a mutant's exit code (mutmut/stats.py), folded into our three outcomes.
KILLED_CODES = {1, 3, 36, 24, -24, 152, 255, -11, -9, 37}
SURVIVED_CODES = {0}
NO_TEST_CODES = {5, 33}


def _mutmut() -> list[str]:
    exe = Path(sys.executable).with_name("mutmut")
    return [str(exe)] if exe.exists() else [sys.executable, "-m", "mutmut"]


def run_mutmut(max_children: int | None) -> float:
    """Run ``mutmut run`` in the repository root; return its wall time in s."""
    cmd = [*_mutmut(), "run"]
    if max_children:
        cmd += ["--max-children", str(max_children)]
    t0 = time.perf_counter()
    proc = subprocess.run(cmd, cwd=ROOT, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True)
    if proc.returncode not in (0, 1):  # mutmut exits 1 when mutants survived? keep its stderr
        sys.stderr.write(proc.stderr[-4000:])
        raise SystemExit(f"mutmut run failed with exit code {proc.returncode}")
    return time.perf_counter() - t0


def read_results() -> dict[str, int | None]:
    """Exit code of every mutant from ``mutants/**/*.meta`` (None = not checked)."""
    metas = sorted((ROOT / "mutants").rglob("*.py.meta"))
    if not metas:
        raise SystemExit("no mutmut results under mutants/: run `make mutation` (or this script without --no-run) first")
    codes: dict[str, int | None] = {}
    for meta in metas:
        data = json.loads(meta.read_text())
        codes.update(data.get("exit_code_by_key", {}))
    return codes


def module_of(mutant: str) -> str:
    """``mechanoscope.learn.uncertainty.x_fit__mutmut_3`` → ``mechanoscope.learn.uncertainty``."""
    head = mutant.split("__mutmut_")[0]
    return head.rsplit(".", 1)[0]


def function_of(mutant: str) -> str:
    name = mutant.split("__mutmut_")[0].rsplit(".", 1)[1]
    name = name[2:] if name.startswith("x_") else name.lstrip("x")
    return name.replace("ǁ", ".").strip(".")


_SOURCES: dict[Path, dict[str, list[str]]] = {}


def _functions_of(path: Path) -> dict[str, list[str]]:
    """Source lines of every (mutant) function defined in a file mutmut wrote."""
    if path not in _SOURCES:
        import ast

        text = path.read_text()
        lines = text.splitlines()
        found: dict[str, list[str]] = {}
        for node in ast.walk(ast.parse(text)):
            if isinstance(node, (ast.FunctionDef, ast.AsyncFunctionDef)) and "__mutmut_" in node.name:
                found[node.name] = lines[node.lineno - 1 : node.end_lineno][1:]  # body without the def line
        _SOURCES[path] = found
    return _SOURCES[path]


def changed_lines(mutant: str) -> list[str]:
    """The ``-``/``+`` lines that turn the original function into ``mutant`` (as ``mutmut show``)."""
    import difflib

    module, func = mutant.split("__mutmut_")[0].rsplit(".", 1)
    number = mutant.rsplit("__mutmut_", 1)[1]
    path = ROOT / "mutants" / "src" / Path(*module.split(".")).with_suffix(".py")
    funcs = _functions_of(path) if path.exists() else {}
    orig, mut = funcs.get(f"{func}__mutmut_orig"), funcs.get(f"{func}__mutmut_{number}")
    if orig is None or mut is None:  # layout of another mutmut version: ask mutmut itself
        out = subprocess.run([*_mutmut(), "show", mutant], cwd=ROOT, capture_output=True, text=True).stdout
        return [ln for ln in out.splitlines() if ln[:1] in "+-" and not ln.startswith(("+++", "---"))]
    diff = difflib.unified_diff(orig, mut, lineterm="", n=0)
    return [ln for ln in diff if ln[:1] in "+-" and not ln.startswith(("+++", "---"))]


RECHECK = ROOT / "mutants" / "recheck.json"

#: The fast test files that check each core module (for --recheck).
RECHECK_TESTS = {
    "mechanoscope.evaluate.segmentation": ["tests/test_evaluate_segmentation.py", "tests/test_evaluate_segmentation_properties.py"],
    "mechanoscope.evaluate.segmentation_pooled": ["tests/test_evaluate_segmentation.py", "tests/test_evaluate_segmentation_properties.py"],
    "mechanoscope.evaluate.stiffness": ["tests/test_stiffness_metrics_properties.py", "tests/test_evaluate_stiffness.py"],
    "mechanoscope.evaluate.conditions": ["tests/test_stiffness_metrics_properties.py", "tests/test_evaluate_stiffness.py"],
    "mechanoscope.learn.uncertainty": ["tests/test_uncertainty.py"],
    "mechanoscope.learn.data": ["tests/test_learn_units.py"],
    "mechanoscope.cells.crops": ["tests/test_cells_properties.py", "tests/test_cells.py"],
    "mechanoscope.cells.morphology": ["tests/test_cells_properties.py", "tests/test_cells.py"],
    "mechanoscope.mechanics.afm_match": ["tests/test_afm_match.py"],
    "mechanoscope.simulate.optics": ["tests/test_optics_properties.py", "tests/test_optics.py"],
}


def _module_path(mutant: str, root: Path) -> Path:
    module = mutant.split("__mutmut_")[0].rsplit(".", 1)[0]
    return root / "src" / Path(*module.split(".")).with_suffix(".py")


def _function_span(text: str, qualname: str) -> tuple[int, int]:
    """Character span of function ``qualname`` (``f`` or ``Class.f``) in module source ``text``."""
    import ast

    tree = ast.parse(text)
    starts = [0] + [i + 1 for i, ch in enumerate(text) if ch == "\n"]
    parts = qualname.split(".")
    nodes = tree.body
    for k, name in enumerate(parts):
        node = next((n for n in nodes if isinstance(n, (ast.FunctionDef, ast.AsyncFunctionDef, ast.ClassDef)) and n.name == name), None)
        if node is None:
            return 0, 0
        nodes = node.body
    return starts[node.lineno - 1], starts[node.end_lineno] if node.end_lineno < len(starts) else len(text)


def recheck(codes: dict[str, int | None], equivalents: list[dict]) -> dict[str, dict]:
    """Run the unexplained survivors again on a copy of today's tree; return {mutant: outcome}."""
    import os
    import shutil
    import tempfile

    known = {e["mutant"] for e in equivalents}
    done: dict[str, dict] = json.loads(RECHECK.read_text()) if RECHECK.exists() else {}
    todo = [m for m, c in sorted(codes.items())
            if c in SURVIVED_CODES and m not in known and done.get(m, {}).get("status") != "killed"]
    with tempfile.TemporaryDirectory() as tmp:
        tree = Path(tmp)
        shutil.copytree(ROOT / "src", tree / "src")
        shutil.copytree(ROOT / "tests", tree / "tests")
        shutil.copy2(ROOT / "pyproject.toml", tree / "pyproject.toml")
        env = dict(os.environ, PYTHONPATH=str(tree / "src"), HYPOTHESIS_PROFILE=os.environ.get("HYPOTHESIS_PROFILE", "ci"))

        def run(test_files: list[str]) -> int:
            cmd = [sys.executable, "-m", "pytest", "-x", "-q", "-p", "no:cacheprovider", *test_files]
            return subprocess.run(cmd, cwd=tree, env=env, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, timeout=900).returncode

        for module in sorted({module_of(m) for m in todo}):
            if run(RECHECK_TESTS[module]) != 0:
                raise SystemExit(f"recheck: the unchanged tree fails {RECHECK_TESTS[module]}; fix that first")
        for m in todo:
            test_files = RECHECK_TESTS[module_of(m)]
            diff = changed_lines(m)
            minus = [ln[1:] for ln in diff if ln.startswith("-")]
            plus = [ln[1:] for ln in diff if ln.startswith("+")]
            path = _module_path(m, tree)
            text = path.read_text()
            a, b = _function_span(text, function_of(m))
            body = text[a:b]
            if len(minus) != 1 or len(plus) != 1 or body.count(minus[0] + "\n") != 1:
                done[m] = {"status": "not rechecked", "why": "changed line not found once in today's function"}
                continue
            path.write_text(text[:a] + body.replace(minus[0] + "\n", plus[0] + "\n") + text[b:])
            try:
                code = run(test_files)
            finally:
                path.write_text(text)
            done[m] = {"status": "killed" if code in KILLED_CODES else "survived" if code == 0 else f"exit code {code}",
                       "exit_code": code, "tests": test_files}
            RECHECK.write_text(json.dumps(done, indent=1))
    return done


def summarise(codes: dict[str, int | None], equivalents: list[dict]) -> dict:
    known = {e["mutant"]: e for e in equivalents}
    per_module: dict[str, Counter] = defaultdict(Counter)
    survivors, stale = [], []
    for name, code in sorted(codes.items()):
        mod = module_of(name)
        per_module[mod]["total"] += 1
        if code in KILLED_CODES:
            per_module[mod]["killed"] += 1
            if name in known:
                stale.append({"mutant": name, "why": "listed as surviving but now killed"})
            continue
        if code is None:
            status = "not checked"
        elif code in SURVIVED_CODES:
            status = "survived"
        elif code in NO_TEST_CODES:
            status = "no tests"
        else:
            status = f"exit code {code}"
        diff = changed_lines(name)
        entry = known.get(name)
        if entry is not None and entry.get("mutation") and entry["mutation"] not in diff:
            stale.append({"mutant": name, "why": "the changed line differs from the listed one (code moved)", "listed": entry["mutation"], "now": diff})
            entry = None
        if entry is not None and entry.get("kind") == "equivalent":
            per_module[mod]["equivalent"] += 1
        else:
            per_module[mod]["survived" if status == "survived" else status.replace(" ", "_")] += 1
        survivors.append({
            "mutant": name,
            "function": f"{mod}.{function_of(name)}",
            "status": status,
            "change": diff,
            "kind": entry["kind"] if entry else "unexplained",
            "reason": entry["reason"] if entry else None,
        })
    modules = {}
    for mod, c in sorted(per_module.items()):
        denom = c["total"] - c["equivalent"]
        modules[mod] = dict(c) | {"score": round(c["killed"] / denom, 4) if denom else None}
    total = sum((c for c in per_module.values()), Counter())
    denom = total["total"] - total["equivalent"]
    return {
        "benchmark": "mutation score of the numerical core (mutmut)",
        "score": round(total["killed"] / denom, 4) if denom else None,
        "target": 0.90,
        "totals": dict(total),
        "modules": modules,
        "survivors": survivors,
        "unexplained_survivors": sum(s["kind"] == "unexplained" for s in survivors),
        "stale_equivalents": stale,
    }


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--no-run", action="store_true", help="only summarise the results already in mutants/")
    ap.add_argument("--max-children", type=int, default=None, help="parallel mutant workers (default: mutmut's, the CPU count)")
    ap.add_argument("--out", type=Path, default=None, help="also write the JSON to this file")
    ap.add_argument("--recheck", action="store_true",
                    help="run the unexplained survivors again against today's code and their modules' test files")
    args = ap.parse_args(argv)
    wall = None if args.no_run else run_mutmut(args.max_children)
    equivalents = json.loads(EQUIVALENTS.read_text()) if EQUIVALENTS.exists() else []
    codes = read_results()
    if args.recheck:
        recheck(codes, equivalents)
    rechecked = json.loads(RECHECK.read_text()) if RECHECK.exists() else {}
    for m, r in rechecked.items():  # a survivor killed by a test added since the run counts as killed
        if codes.get(m) in SURVIVED_CODES and r.get("status") == "killed":
            codes[m] = r["exit_code"]
    result = summarise(codes, equivalents)
    result["rechecked_killed"] = sorted(m for m, r in rechecked.items() if r.get("status") == "killed")
    result["mutmut_wall_s"] = None if wall is None else round(wall, 1)
    text = json.dumps(result, indent=2, ensure_ascii=False)
    print(text)
    if args.out:
        args.out.write_text(text + "\n")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
