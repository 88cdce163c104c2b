"""Per-cell quality flags: border contact, size range, likely doublets.

Flags added to the cell table (all boolean):

``edge_touching``
    The cell's bounding box reaches within ``edge_margin_px`` pixels of the image
    border (with the default 0: it touches the first/last row or column). Such
    cells are cut off, so their area and shape are wrong.
``too_small`` / ``too_large``
    ``area_um2`` below ``min_area_um2`` (debris, fragments) or above
    ``max_area_um2`` (clumps, segmentation failures).
``likely_doublet``
    ``area_um2 > doublet_min_area_ratio × median area_um2`` **and**
    ``solidity < min(doublet_max_solidity, median solidity)``, medians over the
    cells of the same image and frame. Two touching cells have about twice the
    typical area and a waist: a tangent pair of equal disks has solidity
    2π/(4+π) ≈ 0.88, while single round cells reach ≈ 0.97. Adherent cells are
    concave and vary in size on their own (median solidity ≈ 0.75 on the Usiigaci
    phase-contrast set), so the solidity limit follows the image's median: a
    doublet must be both clearly larger and less convex than the typical cell of
    its image. With the defaults (1.8, 0.9) about 4 % of manually outlined single
    adherent cells are flagged; round cells in suspension are flagged essentially
    only as true pairs. Set ``doublet_min_area_ratio`` to 0 to let solidity alone
    decide; set ``doublet_max_solidity`` to 0 to switch the flag off. Images with
    very few cells give unreliable medians.
``qc_pass``
    None of the flags above is set.
"""

from __future__ import annotations

import numpy as np
import pandas as pd
from pydantic import BaseModel, ConfigDict, Field, model_validator

from mechanoscope.errors import ConfigError

__all__ = ["QualityConfig", "quality_flags", "QC_COLUMNS"]

QC_COLUMNS = ("edge_touching", "too_small", "too_large", "likely_doublet", "qc_pass")
"""Boolean columns added by :func:`quality_flags`."""


class QualityConfig(BaseModel):
    """Thresholds of the per-cell quality flags (units in the field names)."""

    model_config = ConfigDict(extra="forbid")

    min_area_um2: float = Field(
        20.0, ge=0, description="Cells with a smaller area (µm²) are flagged too_small (debris)."
    )
    max_area_um2: float = Field(
        20000.0,
        gt=0,
        description="Cells with a larger area (µm²) are flagged too_large (clumps, bad masks).",
    )
    doublet_max_solidity: float = Field(
        0.9,
        ge=0,
        le=1,
        description=(
            "A cell is a likely doublet only if its solidity (area / convex hull area) is "
            "below this value and below the median solidity of its image and frame."
        ),
    )
    doublet_min_area_ratio: float = Field(
        1.8,
        ge=0,
        description=(
            "...and only if its area exceeds this multiple of the median cell area of its "
            "image and frame (0 = ignore area)."
        ),
    )
    edge_margin_px: int = Field(
        0,
        ge=0,
        description=(
            "A cell whose bounding box comes within this many pixels of the image border "
            "is flagged edge_touching (0 = touches the border)."
        ),
    )

    @model_validator(mode="after")
    def _check_range(self) -> "QualityConfig":
        if self.min_area_um2 >= self.max_area_um2:
            raise ConfigError(
                f"min_area_um2 ({self.min_area_um2}) must be smaller than max_area_um2 "
                f"({self.max_area_um2})"
            )
        return self


def quality_flags(
    table: pd.DataFrame,
    image_shape: tuple[int, int],
    config: QualityConfig | None = None,
) -> pd.DataFrame:
    """Return a copy of ``table`` with the quality flag columns added.

    Parameters
    ----------
    table
        Cell table of **one** image (any number of frames) with the columns of
        :func:`~mechanoscope.cells.morphology.measure_cells` (bbox in pixels,
        ``area_um2``, ``solidity``; ``image_id``/``frame`` group the doublet median).
    image_shape
        ``(H, W)`` of the image in pixels, for the border test.
    config
        Thresholds; defaults to :class:`QualityConfig()`.

    Returns
    -------
    pandas.DataFrame
        ``table`` plus the boolean columns :data:`QC_COLUMNS`.
    """
    cfg = config or QualityConfig()
    h, w = int(image_shape[0]), int(image_shape[1])
    m = cfg.edge_margin_px
    out = table.copy()
    edge = (
        (out["bbox_y0_px"] <= m)
        | (out["bbox_x0_px"] <= m)
        | (out["bbox_y1_px"] >= h - m)
        | (out["bbox_x1_px"] >= w - m)
    )
    area = out["area_um2"].astype(float)
    solidity = out["solidity"].astype(float)
    group_keys = [c for c in ("image_id", "frame") if c in out.columns]
    if len(out) and group_keys:
        grouped = out.groupby(group_keys, sort=False)
        median_area = grouped["area_um2"].transform("median").astype(float)
        median_solidity = grouped["solidity"].transform("median").astype(float)
    else:
        median_area = pd.Series(np.nanmedian(area) if len(out) else np.nan, index=out.index)
        median_solidity = pd.Series(np.nanmedian(solidity) if len(out) else np.nan, index=out.index)
    solidity_limit = np.minimum(median_solidity, cfg.doublet_max_solidity)
    doublet = (solidity < solidity_limit) & (area > cfg.doublet_min_area_ratio * median_area)
    out["edge_touching"] = edge.astype(bool)
    out["too_small"] = (area < cfg.min_area_um2).astype(bool)
    out["too_large"] = (area > cfg.max_area_um2).astype(bool)
    out["likely_doublet"] = doublet.astype(bool)
    out["qc_pass"] = ~(out["edge_touching"] | out["too_small"] | out["too_large"] | out["likely_doublet"])
    return out
