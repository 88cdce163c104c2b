"""One rule that pairs images with their label images by file name, used everywhere.

A label file pairs with image ``NAME.ext`` if its stem is ``NAME`` or ``NAME_<suffix>``
(:data:`LABEL_SUFFIXES`).
"""

from __future__ import annotations

import os
from collections.abc import Sequence
from pathlib import Path

from mechanoscope.io.images import image_paths

__all__ = ["LABEL_SUFFIXES", "pair_images_and_labels"]


LABEL_SUFFIXES = (
    "labels", "label", "masks", "mask", "instances", "instance", "cp_masks", "seg",
    "segmentation", "ids",
)
"""A label file pairs with image ``NAME.ext`` if its stem is ``NAME`` or ``NAME_<suffix>``
(``-`` or ``.`` also accepted as separator; suffix case-insensitive)."""



def _strip_label_suffix(stem: str) -> str | None:
    low = stem.lower()
    for suf in LABEL_SUFFIXES:
        for sep in ("_", "-", "."):
            tail = sep + suf
            if low.endswith(tail) and len(stem) > len(tail):
                return stem[: -len(tail)]
    return None


def _as_paths(source: str | os.PathLike[str] | Sequence[str | os.PathLike[str]]) -> list[Path]:
    if isinstance(source, (str, os.PathLike)):
        return image_paths(source)
    return [Path(p) for p in source]


def pair_images_and_labels(
    images: str | os.PathLike[str] | Sequence[str | os.PathLike[str]],
    labels: str | os.PathLike[str] | Sequence[str | os.PathLike[str]],
) -> tuple[list[tuple[Path, Path]], list[dict[str, str]]]:
    """Pair image files with label files by file name.

    ``images``/``labels`` are a file, a folder or a list of files. An image
    ``NAME.ext`` pairs with the label file whose stem is ``NAME``, or else
    ``NAME_labels``, ``NAME_masks``, ``NAME_instances`` … (:data:`LABEL_SUFFIXES`).
    When both point to the same folder, files with a label suffix are the labels.

    Returns
    -------
    pairs
        ``(image, labels)`` paths, in image order.
    problems
        One dict (``image``, ``labels``, ``error``) per image without a unique label
        file, per label file without an image, and per duplicate image name.
    """
    img_list = _as_paths(images)
    lab_list = _as_paths(labels)
    lab_set = {p.resolve() for p in lab_list}
    if {p.resolve() for p in img_list} & lab_set:
        img_list = [p for p in img_list if _strip_label_suffix(p.stem) is None]
        lab_list = [p for p in lab_list if _strip_label_suffix(p.stem) is not None]
    pairs: list[tuple[Path, Path]] = []
    problems: list[dict[str, str]] = []
    used: set[Path] = set()
    seen: dict[str, Path] = {}
    for img in img_list:
        if img.stem in seen:
            problems.append({
                "image": str(img), "labels": "",
                "error": f"{img}: another image has the same name {img.stem!r} ({seen[img.stem]}); "
                "image names must be unique",
            })
            continue
        seen[img.stem] = img
        cand = [p for p in lab_list if p.stem == img.stem]
        if not cand:
            cand = [p for p in lab_list if _strip_label_suffix(p.stem) == img.stem]
        if len(cand) == 1:
            pairs.append((img, cand[0]))
            used.add(cand[0])
        elif not cand:
            problems.append({
                "image": str(img), "labels": "",
                "error": f"{img}: no label image named {img.stem}.* or {img.stem}_labels.*/"
                f"_masks.*/_instances.* found",
            })
        else:
            problems.append({
                "image": str(img), "labels": ", ".join(str(c) for c in cand),
                "error": f"{img}: several label images match ({', '.join(c.name for c in cand)}); "
                "keep only one",
            })
    for lab in lab_list:
        if lab not in used and not any(str(lab) in p["labels"] for p in problems):
            problems.append({
                "image": "", "labels": str(lab),
                "error": f"{lab}: no image with a matching name; label image ignored",
            })
    return pairs, problems
