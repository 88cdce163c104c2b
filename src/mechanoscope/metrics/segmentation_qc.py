"""Segmentation quality control of a run: images (and conditions) where segmentation found nothing or far too little.

A dim dish or a failed focus does not raise an error: segmentation simply finds no cell,
or few. :func:`segmentation_qc` compares every image with the comparable images (same
condition, when the run knows conditions; else all images of the run) and flags

* ``no cells``: the image yielded no cell at all;
* ``few cells``: fewer than ``min_fraction`` × the median cell count of its group
  (groups of at least ``min_group`` images with cells);
* ``little area``: cells cover less than ``min_fraction`` × the group's median covered
  area fraction.

A group (condition) in which every image is flagged is *lost*: comparing it with the
others would compare segmentation failures, not cells.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any

import numpy as np

__all__ = ["segmentation_qc"]


def segmentation_qc(
    images: Sequence[Mapping[str, Any]],
    groups: Mapping[str, str] | None = None,
    *,
    min_fraction: float = 0.25,
    min_group: int = 3,
) -> dict[str, Any]:
    """Flag images whose segmentation found nothing or far fewer cells than comparable images.

    Parameters
    ----------
    images
        One entry per processed image with ``image_id``, ``n_cells`` and optionally
        ``covered_fraction`` (fraction of the image's pixels inside a cell).
    groups
        ``image_id -> condition``; images without a group form the group ``"all"``.
    min_fraction
        An image with fewer than this fraction of its group's median cells (or covered
        area) is flagged.
    min_group
        Least number of images a group needs before its median is used for "few cells".

    Returns
    -------
    dict
        ``images``: ``{image_id: {"n_cells", "covered_fraction", "group", "flags": [...], "reason"}}``
        for every image; ``flagged``: image ids with a flag, in input order;
        ``groups``: per group ``n_images``, ``n_flagged``, ``median_cells``, ``lost``;
        ``lost_groups``; ``settings``.
    """
    if not 0 < min_fraction < 1:
        raise ValueError(f"min_fraction must be between 0 and 1, got {min_fraction}")
    groups = dict(groups or {})
    by_group: dict[str, list[Mapping[str, Any]]] = {}
    for e in images:
        by_group.setdefault(str(groups.get(str(e["image_id"]), "all")), []).append(e)
    out_images: dict[str, dict[str, Any]] = {}
    summary: dict[str, dict[str, Any]] = {}
    for g, members in by_group.items():
        counts = np.array([int(e.get("n_cells") or 0) for e in members], dtype=float)
        areas = np.array([float(e["covered_fraction"]) if e.get("covered_fraction") is not None else np.nan for e in members])
        with_cells = counts > 0
        enough = int(with_cells.sum()) >= min_group
        median_cells = float(np.median(counts[with_cells])) if with_cells.any() else 0.0
        area_ok = np.isfinite(areas) & with_cells
        median_area = float(np.median(areas[area_ok])) if area_ok.sum() >= min_group else None
        n_flagged = 0
        for e, n, a in zip(members, counts, areas):
            flags = []
            if n == 0:
                flags.append("no cells")
            elif enough and n < min_fraction * median_cells:
                flags.append("few cells")
            if n > 0 and median_area is not None and np.isfinite(a) and a < min_fraction * median_area:
                flags.append("little area")
            reason = ""
            if "no cells" in flags:
                reason = "segmentation found no cell"
            elif flags:
                parts = []
                if "few cells" in flags:
                    parts.append(f"{int(n)} cells where comparable images have a median of {median_cells:g}")
                if "little area" in flags:
                    parts.append(f"cells cover {a:.1%} of the image where comparable images have {median_area:.1%}")
                reason = "; ".join(parts)
            n_flagged += bool(flags)
            out_images[str(e["image_id"])] = {"n_cells": int(n), "covered_fraction": None if not np.isfinite(a) else round(float(a), 5),
                                              "group": g, "flags": flags, "reason": reason}
        summary[g] = {"n_images": len(members), "n_flagged": n_flagged, "median_cells": median_cells, "lost": n_flagged == len(members)}
    flagged = [str(e["image_id"]) for e in images if out_images[str(e["image_id"])]["flags"]]
    return {
        "images": out_images,
        "flagged": flagged,
        "groups": summary,
        "lost_groups": [g for g, s in summary.items() if s["lost"]],
        "settings": {"min_fraction": min_fraction, "min_group": min_group, "grouped_by": "condition" if groups else None},
    }
