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
    args = ap.parse_args(argv)
    wall = None if args.no_run else run_mutmut(args.max_children)
    equivalents = json.loads(EQUIVALENTS.read_text()) if EQUIVALENTS.exists() else []
    result = summarise(read_results(), equivalents)
    result["mutmut_wall_s"] = None if wall is None else round(wall, 1)
    text = json.dumps(result, indent=2, ensure_ascii=False)
    print(text)
    if args.out:
        args.out.write_text(text + "\n")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
