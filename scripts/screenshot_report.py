"""Render a run's HTML report in headless Chromium and write screenshots to look at.

The report is one self-contained HTML file (figures embedded), so a browser that opens it
from disk shows exactly what a user sees. This script renders it at a desktop width, cuts
the trailing blank part of the page and writes the page as a few PNG tiles (one screenful
each) that can be read one by one.

Needs a Chromium binary (Debian: ``apt-get install chromium``); it is a developer tool and
not part of ``make test``.

Usage::

    python scripts/screenshot_report.py RUN/report.html --out /tmp/shots
    python scripts/screenshot_report.py RUN/report.html --out /tmp/shots --width 1280 --tile-height 1600
"""

from __future__ import annotations

import argparse
import json
import shutil
import subprocess
import sys
import tempfile
from pathlib import Path

import numpy as np
from PIL import Image

CANDIDATES = ("chromium", "chromium-browser", "google-chrome", "chrome")


def find_chromium(explicit: str | None) -> str:
    for name in ([explicit] if explicit else CANDIDATES):
        path = shutil.which(name) if name else None
        if path:
            return path
    raise SystemExit("no Chromium found: install it (Debian: apt-get install chromium) or pass --chromium PATH")


def render(html: Path, out_png: Path, chromium: str, width: int, height: int) -> None:
    """One screenshot of ``html`` in a ``width`` × ``height`` window."""
    with tempfile.TemporaryDirectory(prefix="chromium_profile_") as profile:
        cmd = [chromium, "--headless=new", "--no-sandbox", "--disable-gpu", "--hide-scrollbars",
               f"--user-data-dir={profile}", f"--window-size={width},{height}",
               f"--screenshot={out_png}", html.resolve().as_uri()]
        proc = subprocess.run(cmd, check=False, capture_output=True, text=True, timeout=180)
    if proc.returncode != 0 or not out_png.exists():
        raise SystemExit(f"Chromium could not render {html}: {proc.stderr.strip()[-800:]}")


def trim_and_tile(png: Path, out: Path, tile_height: int) -> list[Path]:
    """Cut the blank rows at the bottom of ``png`` and write it as tiles of ``tile_height`` rows."""
    page = np.asarray(Image.open(png).convert("RGB"))
    background = page[-1, 0]
    rows = np.flatnonzero(np.any(np.abs(page.astype(int) - background).sum(axis=2) > 30, axis=1))
    end = int(rows[-1]) + 20 if rows.size else page.shape[0]
    page = page[: min(end, page.shape[0])]
    tiles = []
    for k, top in enumerate(range(0, page.shape[0], tile_height)):
        path = out / f"report_{k + 1:02d}.png"
        Image.fromarray(page[top : top + tile_height]).save(path)
        tiles.append(path)
    return tiles


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("report", type=Path, help="the report.html of a run")
    ap.add_argument("--out", type=Path, required=True, help="folder for the PNG tiles")
    ap.add_argument("--width", type=int, default=1280)
    ap.add_argument("--max-height", type=int, default=16000, help="height of the rendering window (px); the page is cut to its content")
    ap.add_argument("--tile-height", type=int, default=1600)
    ap.add_argument("--chromium", default=None, help="path or name of the Chromium binary")
    args = ap.parse_args(argv)
    if not args.report.is_file():
        raise SystemExit(f"{args.report}: no such report (run `mechanoscope report RUN` first)")
    args.out.mkdir(parents=True, exist_ok=True)
    full = args.out / "report_full.png"
    render(args.report, full, find_chromium(args.chromium), args.width, args.max_height)
    tiles = trim_and_tile(full, args.out, args.tile_height)
    full.unlink()
    print(json.dumps({"report": str(args.report), "tiles": [str(t) for t in tiles], "width_px": args.width}, indent=2))
    return 0


if __name__ == "__main__":
    sys.exit(main())
