"""Cell Tracking Challenge (CTC) format: track files and label TIFF series.

A CTC tracking result is a folder with one 16-bit label TIFF per frame (``mask000.tif``,
``mask001.tif`` … for results; ``man_track000.tif`` … for reference tracks) and a text
file (``res_track.txt`` / ``man_track.txt``) with one line per track::

    L B E P

``L`` the track's label (> 0) in the TIFFs, ``B`` and ``E`` the first and last frame
(0-based, inclusive) in which the label is present, ``P`` the parent track's label
(0: none). A track is continuous: a cell missed in some frames continues as a new
track whose parent is the track before the gap (a single child); a division gives a
parent two (or more) children.

Reference: Ulman et al., Nat. Methods 14, 1141 (2017); celltrackingchallenge.net.
"""

from __future__ import annotations

import os
import re
from pathlib import Path

import numpy as np
import pandas as pd

from mechanoscope.errors import CTCFormatError
from mechanoscope.io.atomic import atomic_path

__all__ = [
    "CTC_COLUMNS",
    "ctc_tracks_from_labels",
    "check_ctc_consistency",
    "find_ctc_track_file",
    "is_ctc_folder",
    "read_ctc_folder",
    "read_ctc_tracks",
    "write_ctc_folder",
    "write_ctc_tracks",
]

CTC_COLUMNS = ["label", "begin_frame", "end_frame", "parent_label"]
_TRACK_FILES = ("res_track.txt", "man_track.txt")
_MASK_RE = re.compile(r"^(mask|man_track)(\d+)\.tiff?$")


def read_ctc_tracks(path: str | os.PathLike[str]) -> pd.DataFrame:
    """Read a ``man_track.txt`` / ``res_track.txt`` file.

    Returns
    -------
    DataFrame
        Columns ``label``, ``begin_frame``, ``end_frame``, ``parent_label`` (int64), one
        row per track, in file order.

    Raises
    ------
    CTCFormatError
        Naming the file and line: not four integers, label ≤ 0, negative frame,
        end before begin, a label used twice, a track its own parent, or a parent
        label that is not a track of the file.
    """
    p = Path(path)
    if not p.is_file():
        raise CTCFormatError(f"{p}: no such track file")
    try:
        text = p.read_text(encoding="utf-8")
    except UnicodeDecodeError:
        raise CTCFormatError(f"{p}: not a text file (a CTC track file has lines 'L B E P')") from None
    rows: list[tuple[int, int, int, int]] = []
    first_line: dict[int, int] = {}
    for lineno, line in enumerate(text.splitlines(), start=1):
        if not line.strip():
            continue
        parts = line.split()
        where = f"{p}, line {lineno}"
        if len(parts) != 4:
            raise CTCFormatError(f"{where}: expected 4 integers 'L B E P', got {len(parts)} field(s): {line.strip()!r}")
        try:
            lab, b, e, par = (int(x) for x in parts)
        except ValueError:
            raise CTCFormatError(f"{where}: expected 4 integers 'L B E P', got {line.strip()!r}") from None
        if lab <= 0:
            raise CTCFormatError(f"{where}: track label must be > 0, got {lab}")
        if b < 0 or e < 0:
            raise CTCFormatError(f"{where}: frames must be >= 0 (0-based), got B={b} E={e}")
        if e < b:
            raise CTCFormatError(f"{where}: track {lab} ends (E={e}) before it begins (B={b})")
        if par < 0:
            raise CTCFormatError(f"{where}: parent label must be >= 0, got {par}")
        if par == lab:
            raise CTCFormatError(f"{where}: track {lab} is its own parent")
        if lab in first_line:
            raise CTCFormatError(f"{where}: track label {lab} already used on line {first_line[lab]}; labels must be unique")
        first_line[lab] = lineno
        rows.append((lab, b, e, par))
    df = pd.DataFrame(rows, columns=CTC_COLUMNS, dtype="int64")
    ends = dict(zip(df["label"], df["end_frame"]))
    for lab, b, par in zip(df["label"], df["begin_frame"], df["parent_label"]):
        if par == 0:
            continue
        if par not in ends:
            raise CTCFormatError(f"{p}, line {first_line[lab]}: parent {par} of track {lab} is not a track in the file")
        if ends[par] >= b:
            raise CTCFormatError(
                f"{p}, line {first_line[lab]}: track {lab} begins at frame {b} but its parent {par} "
                f"ends at frame {ends[par]}; a child must begin after its parent ends"
            )
    return df


def write_ctc_tracks(tracks: pd.DataFrame, path: str | os.PathLike[str]) -> Path:
    """Write a track table (:data:`CTC_COLUMNS`) as ``L B E P`` lines, atomically."""
    missing = [c for c in CTC_COLUMNS if c not in tracks.columns]
    if missing:
        raise CTCFormatError(f"{path}: track table lacks column(s) {missing}")
    lines = [f"{int(r.label)} {int(r.begin_frame)} {int(r.end_frame)} {int(r.parent_label)}\n" for r in tracks.itertuples()]
    with atomic_path(path) as tmp:
        tmp.write_text("".join(lines), encoding="utf-8")
    return Path(path)


def ctc_tracks_from_labels(labels: np.ndarray, parents: dict[int, int] | None = None) -> tuple[np.ndarray, pd.DataFrame]:
    """CTC tracks of a label series in which one cell keeps one id (gaps allowed).

    A label that is missing in some frames is split at each gap: the part after the
    gap gets a new label whose parent is the part before (CTC convention).

    Parameters
    ----------
    labels
        ``(T, Y, X)`` integer label series; id = track id.
    parents
        ``{track id: parent track id}`` for tracks that start with a division (or any
        parent link); ids not listed have no parent.

    Returns
    -------
    labels_ctc
        ``(T, Y, X)`` uint16/uint32 series with gap-split labels.
    tracks
        Table with :data:`CTC_COLUMNS`.
    """
    labels = np.asarray(labels)
    if labels.ndim != 3:
        raise CTCFormatError(f"expected a (T, Y, X) label series, got shape {labels.shape}")
    parents = dict(parents or {})
    present: dict[int, list[int]] = {}
    for t in range(labels.shape[0]):
        for lab in np.unique(labels[t]):
            if lab:
                present.setdefault(int(lab), []).append(t)
    next_label = (max(present) if present else 0) + 1
    out = labels.astype(np.uint32 if next_label + labels.shape[0] * 2 >= 2**16 else np.uint16, copy=True)
    rows = []
    last_piece: dict[int, int] = {}  # original id -> CTC label of its last piece
    for lab in sorted(present):
        frames = present[lab]
        pieces: list[list[int]] = [[frames[0]]]
        for t in frames[1:]:
            if t == pieces[-1][-1] + 1:
                pieces[-1].append(t)
            else:
                pieces.append([t])
        prev = 0
        for k, piece in enumerate(pieces):
            if k == 0:
                new = lab
            else:
                new = next_label
                next_label += 1
                for t in piece:
                    out[t][labels[t] == lab] = new
            rows.append([new, piece[0], piece[-1], prev, lab, k])
            prev = new
        last_piece[lab] = prev
    tracks = pd.DataFrame(rows, columns=[*CTC_COLUMNS, "_orig", "_piece"])
    first = tracks["_piece"] == 0
    tracks.loc[first, "parent_label"] = [last_piece.get(parents.get(int(o), 0), 0) for o in tracks.loc[first, "_orig"]]
    return out, tracks[CTC_COLUMNS].astype("int64").reset_index(drop=True)


def check_ctc_consistency(labels: np.ndarray, tracks: pd.DataFrame, where: str = "CTC folder") -> None:
    """Check that a label series and its track table agree (as the CTC validator does).

    Every label in the images is a track of the table and is present in exactly the
    frames ``B``..``E``; raises :class:`CTCFormatError` naming the first disagreement.
    """
    rows = {int(r.label): (int(r.begin_frame), int(r.end_frame)) for r in tracks.itertuples()}
    seen: dict[int, list[int]] = {}
    for t in range(labels.shape[0]):
        for lab in np.unique(labels[t]):
            if lab:
                seen.setdefault(int(lab), []).append(t)
    for lab, frames in sorted(seen.items()):
        if lab not in rows:
            raise CTCFormatError(f"{where}: label {lab} is in frame {frames[0]} but not in the track file")
        b, e = rows[lab]
        expected = list(range(b, e + 1))
        if frames != expected:
            missing = sorted(set(expected) - set(frames))
            extra = sorted(set(frames) - set(expected))
            detail = f"missing in frame(s) {missing[:5]}" if missing else f"present outside B..E in frame(s) {extra[:5]}"
            raise CTCFormatError(
                f"{where}: track {lab} (B={b}, E={e}) is {detail}; a CTC track is continuous — "
                "a gap is a new track whose parent is the track before the gap"
            )
    for lab, (b, _e) in rows.items():
        if lab not in seen:
            if b >= labels.shape[0]:
                raise CTCFormatError(f"{where}: track {lab} begins at frame {b} but the series has {labels.shape[0]} frame(s)")
            raise CTCFormatError(f"{where}: track {lab} of the track file is in none of the label images")


def find_ctc_track_file(folder: str | os.PathLike[str]) -> Path | None:
    """``res_track.txt`` or ``man_track.txt`` in ``folder`` (or its ``TRA`` subfolder), else None."""
    p = Path(folder)
    for sub in (p, p / "TRA"):
        for name in _TRACK_FILES:
            if (sub / name).is_file():
                return sub / name
    return None


def is_ctc_folder(folder: str | os.PathLike[str]) -> bool:
    """Whether ``folder`` holds a CTC track file (directly or in ``TRA/``)."""
    return Path(folder).is_dir() and find_ctc_track_file(folder) is not None


def read_ctc_folder(folder: str | os.PathLike[str], *, check: bool = True) -> tuple[np.ndarray, pd.DataFrame]:
    """Read a CTC folder: the label TIFFs (``mask*.tif`` or ``man_track*.tif``) and the track file.

    Returns
    -------
    labels
        ``(T, Y, X)`` label series, frame ``t`` from the file numbered ``t``.
    tracks
        Table with :data:`CTC_COLUMNS`.

    Raises
    ------
    CTCFormatError
        No track file, no label TIFFs, missing frame numbers, frames of different shapes,
        a malformed track file (file and line) or tracks that disagree with the images.
    """
    import tifffile

    track_file = find_ctc_track_file(folder)
    if track_file is None:
        raise CTCFormatError(f"{folder}: no res_track.txt or man_track.txt (looked in the folder and in TRA/)")
    tracks = read_ctc_tracks(track_file)
    masks: dict[int, Path] = {}
    for q in sorted(track_file.parent.iterdir()):
        m = _MASK_RE.match(q.name)
        if m:
            t = int(m.group(2))
            if t in masks:
                raise CTCFormatError(f"{track_file.parent}: two label files for frame {t}: {masks[t].name}, {q.name}")
            masks[t] = q
    if not masks:
        raise CTCFormatError(f"{track_file.parent}: no label TIFFs (mask000.tif … or man_track000.tif …) next to {track_file.name}")
    n = max(masks) + 1
    absent = [t for t in range(n) if t not in masks]
    if absent:
        raise CTCFormatError(f"{track_file.parent}: label TIFF missing for frame(s) {absent[:10]} (files are numbered from 0)")
    frames = []
    for t in range(n):
        try:
            a = tifffile.imread(masks[t])
        except Exception as exc:
            raise CTCFormatError(f"{masks[t]}: cannot read as TIFF ({exc})") from None
        a = np.squeeze(a)
        if a.ndim != 2 or not np.issubdtype(a.dtype, np.integer):
            raise CTCFormatError(f"{masks[t]}: expected a 2-D integer label image, got shape {a.shape} dtype {a.dtype}")
        if frames and a.shape != frames[0].shape:
            raise CTCFormatError(f"{masks[t]}: shape {a.shape} differs from frame 0 ({frames[0].shape}); all frames must have one shape")
        frames.append(a)
    labels = np.stack(frames)
    if check:
        check_ctc_consistency(labels, tracks, where=str(track_file))
    return labels, tracks


def write_ctc_folder(
    folder: str | os.PathLike[str], labels: np.ndarray, tracks: pd.DataFrame, *, kind: str = "res"
) -> Path:
    """Write a label series and its tracks as a CTC folder.

    ``kind="res"`` writes ``mask000.tif`` … + ``res_track.txt`` (a result);
    ``kind="man"`` writes ``man_track000.tif`` … + ``man_track.txt`` (a reference, the
    content of a ``XX_GT/TRA`` folder). Frame numbers have 3 digits (4 from 1000 frames).
    """
    import tifffile

    if kind not in ("res", "man"):
        raise CTCFormatError(f"kind must be 'res' or 'man', got {kind!r}")
    labels = np.asarray(labels)
    if labels.ndim != 3:
        raise CTCFormatError(f"expected a (T, Y, X) label series, got shape {labels.shape}")
    out = Path(folder)
    out.mkdir(parents=True, exist_ok=True)
    digits = 3 if labels.shape[0] <= 1000 else 4
    prefix = "mask" if kind == "res" else "man_track"
    dtype = np.uint16 if labels.max(initial=0) < 2**16 else np.uint32
    for t in range(labels.shape[0]):
        with atomic_path(out / f"{prefix}{t:0{digits}d}.tif") as tmp:
            tifffile.imwrite(tmp, labels[t].astype(dtype), compression="zlib")
    write_ctc_tracks(tracks, out / f"{kind}_track.txt")
    return out
