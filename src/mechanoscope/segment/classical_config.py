"""Settings of the classical label-free segmentation pipeline (segment/classical.py), with units and defaults."""

from __future__ import annotations

import math
from typing import Literal

from pydantic import ConfigDict, Field, model_validator

from mechanoscope.config import StrictConfig

__all__ = ["ClassicalSegmentationConfig"]

#: default erosion of the mask in units of the combined blur of the foreground map
_SHRINK_PER_BLUR = 1.2


class ClassicalSegmentationConfig(StrictConfig):
    """Parameters of :func:`segment_classical`. Lengths in µm, areas in µm².

    Fields left at ``None`` are derived from ``cell_diameter_um`` (each field says
    how; :meth:`resolved` lists the values used), so for most images setting the
    expected cell diameter is enough.
    """

    model_config = ConfigDict(extra="forbid", validate_assignment=True)

    cell_diameter_um: float = Field(
        30.0,
        gt=0,
        le=10000,
        description=(
            "Expected diameter of one cell in µm (diameter of a circle with the cell's "
            "spread area). Sets the default scales of texture, morphology and "
            "watershed splitting."
        ),
    )
    min_cell_area_um2: float | None = Field(
        None,
        ge=0,
        description=(
            "Objects smaller than this area in µm² are removed (debris, noise). "
            "Default: 10 % of the area of a circle of diameter cell_diameter_um."
        ),
    )
    normalize_percentiles: tuple[float, float] = Field(
        (1.0, 99.0),
        description=(
            "Lower and upper intensity percentiles (0-100) mapped to 0 and 1 before "
            "any filtering; values outside are clipped (saturated halos, dust)."
        ),
    )
    smoothing_um: float | None = Field(
        None,
        ge=0,
        description=(
            "Gaussian sigma in µm that suppresses camera noise before texture and "
            "gradient are computed (at least 0.5 pixel is used). "
            "Default: cell_diameter_um / 60."
        ),
    )
    texture_window_um: float | None = Field(
        None,
        gt=0,
        description=(
            "Gaussian sigma in µm of the window over which local texture (standard "
            "deviation) and gradient magnitude are averaged; also the high-pass scale "
            "that removes uneven illumination (at least twice the smoothing and at "
            "least 1 pixel are used). "
            "Default: cell_diameter_um / 25."
        ),
    )
    gradient_weight: float = Field(
        0.5,
        ge=0,
        le=1,
        description=(
            "Weight of the gradient magnitude against the local standard deviation in "
            "the foreground map (weighted geometric mean): 0 = texture only, "
            "1 = gradient only."
        ),
    )
    threshold_method: Literal["otsu", "triangle", "li"] = Field(
        "otsu",
        description=(
            "Automatic threshold of the log foreground map: 'otsu' (default), "
            "'triangle' or 'li' (minimum cross-entropy)."
        ),
    )
    threshold_factor: float = Field(
        1.0,
        gt=0,
        description=(
            "Multiplies the automatic threshold of the foreground map (in linear "
            "texture units): < 1 grows the cells and picks up fainter ones, > 1 "
            "shrinks them and drops textured debris (2-2.5 on debris-rich images)."
        ),
    )
    min_foreground_separation: float = Field(
        3.0,
        ge=0,
        description=(
            "Separation of the two classes of the foreground map split by the "
            "automatic threshold, (mean above − mean below) / pooled standard "
            "deviation. Below it the image is taken to hold no cells and an empty "
            "label image is returned with a warning (flat noise or uneven "
            "illumination alone give about 2.6; images with cells 3.5 and more). "
            "0 disables the check."
        ),
    )
    closing_radius_um: float | None = Field(
        None,
        ge=0,
        description=(
            "Radius in µm of a disk closing that joins fragments of one cell. "
            "Default: cell_diameter_um / 30 (larger values also fill the necks between "
            "touching cells). 0 disables it."
        ),
    )
    max_hole_area_um2: float | None = Field(
        None,
        ge=0,
        description=(
            "Holes in the mask up to this area in µm² are filled (a flat nucleus or "
            "lamella inside a textured rim). Holes touching the image border are never "
            "filled; larger holes are background enclosed by a ring of cells. Default: "
            "the area of one expected cell, π·(cell_diameter_um/2)²."
        ),
    )
    opening_radius_um: float | None = Field(
        None,
        ge=0,
        description=(
            "Radius in µm of a disk opening that removes thin protrusions, noise and "
            "bridges between cells. Default: cell_diameter_um / 10. 0 disables it."
        ),
    )
    boundary_shrink_um: float | None = Field(
        None,
        ge=0,
        description=(
            "The mask is eroded by this distance in µm before splitting: the texture "
            "window and the phase-contrast halo make the raw mask extend beyond the "
            "cell edge. Default: 1.2 × the combined blur of smoothing and texture "
            "window, sqrt(smoothing² + 2·window²), at the scales actually used; raise "
            "it for broad phase-contrast halos. 0 disables it."
        ),
    )
    split_touching: bool = Field(
        True, description="Split touching cells with a marker-controlled watershed."
    )
    split_method: Literal["ridges", "distance"] = Field(
        "ridges",
        description=(
            "How touching cells are split. 'distance': watershed of the distance "
            "transform of the mask (splits only at concave necks). 'ridges': the "
            "distance transform is first lowered along bright or dark border lines "
            "(cell borders, junction halos; Hessian line detector), so that seeds and "
            "watershed lines also separate confluent cells whose common border is "
            "visible."
        ),
    )
    min_separation_um: float | None = Field(
        None,
        gt=0,
        description=(
            "Minimum distance in µm between the seeds of two touching cells; "
            "distance-transform maxima closer than this give one seed. "
            "Default: cell_diameter_um / 2."
        ),
    )
    h_maxima_um: float | None = Field(
        None,
        ge=0,
        description=(
            "Dynamic in µm that a distance-transform maximum needs to seed its own "
            "cell (h-maxima); larger values split less. Default: cell_diameter_um / 15."
        ),
    )
    ridge_scale_um: float | None = Field(
        None,
        gt=0,
        description=(
            "Gaussian scale in µm of the Hessian line detector of "
            "split_method='ridges' (about half the width of a border line). "
            "Default: cell_diameter_um / 30, at least 1 pixel."
        ),
    )
    ridge_threshold_factor: float = Field(
        1.5,
        gt=0,
        description=(
            "Multiplies the Otsu threshold (computed inside the mask) of the line map "
            "above which pixels count as border lines for split_method='ridges'; "
            "smaller values cut more and split more."
        ),
    )

    @model_validator(mode="after")
    def _percentiles(self) -> "ClassicalSegmentationConfig":
        lo, hi = self.normalize_percentiles
        if not (0.0 <= lo < hi <= 100.0):
            raise ValueError(
                f"normalize_percentiles must satisfy 0 <= low < high <= 100, got {(lo, hi)}"
            )
        return self

    def resolved(self, pixel_size_um: float | None = None) -> dict[str, float]:
        """Every length and area with the defaults filled in from ``cell_diameter_um``.

        Parameters
        ----------
        pixel_size_um
            If given, the lengths are those actually used at this pixel size (the
            smoothing is at least 0.5 pixel, the texture window at least 1 pixel and
            twice the smoothing, the line scale at least 1 pixel) and
            ``boundary_shrink_um`` is included.

        Returns
        -------
        dict
            Field name → value in µm (``*_um``) or µm² (``*_um2``).
        """
        d = self.cell_diameter_um

        def pick(value: float | None, default: float) -> float:
            return float(default if value is None else value)

        out = {
            "min_cell_area_um2": pick(self.min_cell_area_um2, 0.1 * math.pi * (d / 2) ** 2),
            "smoothing_um": pick(self.smoothing_um, d / 60.0),
            "texture_window_um": pick(self.texture_window_um, d / 25.0),
            "closing_radius_um": pick(self.closing_radius_um, d / 30.0),
            "max_hole_area_um2": pick(self.max_hole_area_um2, math.pi * (d / 2) ** 2),
            "opening_radius_um": pick(self.opening_radius_um, d / 10.0),
            "min_separation_um": pick(self.min_separation_um, d / 2.0),
            "h_maxima_um": pick(self.h_maxima_um, d / 15.0),
            "ridge_scale_um": pick(self.ridge_scale_um, d / 30.0),
        }
        if pixel_size_um is not None:
            px = float(pixel_size_um)
            out["smoothing_um"] = max(out["smoothing_um"], 0.5 * px)
            out["texture_window_um"] = max(
                out["texture_window_um"], 2.0 * out["smoothing_um"], px
            )
            out["ridge_scale_um"] = max(out["ridge_scale_um"], px)
            # the thresholded map extends beyond the cell edge by about the combined
            # blur of smoothing, band pass and window
            spread = math.hypot(out["smoothing_um"], math.sqrt(2.0) * out["texture_window_um"])
            out["boundary_shrink_um"] = pick(self.boundary_shrink_um, _SHRINK_PER_BLUR * spread)
        return out
