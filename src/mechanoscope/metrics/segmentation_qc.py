"""Segmentation quality control of a run: images (and conditions) where segmentation found nothing or far too little.

A dim dish or a failed focus does not raise an error: segmentation simply finds no cell,
or few. :func:`segmentation_qc` compares every image with the comparable images (same
condition, when the run knows conditions; else all images of the run) and flags

* ``no cells``: the image yielded no cell at all;
* ``few cells``: fewer than ``min_fraction`` × the median cell count of its group
  (groups of at least ``min_group`` images with cells);
* ``little area``: cells cover less than ``min_fraction`` × the group's median covered
  area fraction;
* ``uncertain``: a learned segmenter left more than ``max_undecided_fraction`` of the
  image's pixels undecided (foreground probability between 0.25 and 0.75;
  :func:`~mechanoscope.segment.network.segmentation_confidence`). This catches what
  counting misses: a dim dish where the network, unsure, draws objects over the
  background (an earlier built-in model on simulated bright-field fields of 512 px:
  0.02–0.03 of the pixels imaged as in training, 0.04–0.42 at 1,000 photons/pixel, half
  of them above the default 0.15; the shipped one, trained on dim fields too, stays at
  0.04–0.12 there and loses no dim image).

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
    max_undecided_fraction: float = 0.15,
) -> dict[str, Any]:
    """Flag images whose segmentation found nothing or far fewer cells than comparable images.

    Parameters
    ----------
    images
        One entry per processed image with ``image_id``, ``n_cells`` and optionally
        ``covered_fraction`` (fraction of the image's pixels inside a cell) and
        ``segmentation_undecided_fraction`` (learned segmenters).
    groups
        ``image_id -> condition``; images without a group form the group ``"all"``.
    min_fraction
        An image with fewer than this fraction of its group's median cells (or covered
        area) is flagged.
    min_group
        Least number of images a group needs before its median is used for "few cells".
    max_undecided_fraction
        An image with more undecided pixels than this is flagged ``uncertain``.

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
    if not 0 < max_undecided_fraction < 1:
        raise ValueError(f"max_undecided_fraction must be between 0 and 1, got {max_undecided_fraction}")
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
            undecided = e.get("segmentation_undecided_fraction")
            if n == 0:
                flags.append("no cells")
            elif enough and n < min_fraction * median_cells:
                flags.append("few cells")
            if n > 0 and median_area is not None and np.isfinite(a) and a < min_fraction * median_area:
                flags.append("little area")
            if undecided is not None and float(undecided) > max_undecided_fraction:
                flags.append("uncertain")
            reason = ""
            if "no cells" in flags:
                reason = "segmentation found no cell"
            elif flags:
                parts = []
                if "few cells" in flags:
                    parts.append(f"{int(n)} cells where comparable images have a median of {median_cells:g}")
                if "little area" in flags:
                    parts.append(f"cells cover {a:.1%} of the image where comparable images have {median_area:.1%}")
                if "uncertain" in flags:
                    parts.append(f"the segmentation network left {float(undecided):.0%} of the pixels undecided (more than "
                                 f"{max_undecided_fraction:.0%}: images unlike its training images, e.g. too dim; check the outlines)")
                reason = "; ".join(parts)
            n_flagged += bool(flags)
            out_images[str(e["image_id"])] = {"n_cells": int(n), "covered_fraction": None if not np.isfinite(a) else round(float(a), 5),
                                              "undecided_fraction": None if undecided is None else float(undecided),
                                              "group": g, "flags": flags, "reason": reason}
        summary[g] = {"n_images": len(members), "n_flagged": n_flagged, "median_cells": median_cells, "lost": n_flagged == len(members)}
    flagged = [str(e["image_id"]) for e in images if out_images[str(e["image_id"])]["flags"]]
    return {
        "images": out_images,
        "flagged": flagged,
        "groups": summary,
        "lost_groups": [g for g, s in summary.items() if s["lost"]],
        "settings": {"min_fraction": min_fraction, "min_group": min_group, "max_undecided_fraction": max_undecided_fraction,
                     "grouped_by": "condition" if groups else None},
    }
