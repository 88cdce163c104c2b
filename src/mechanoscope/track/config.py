"""Tracking parameters: distances in µm, gaps in frames, defaults from an expected cell speed."""

from __future__ import annotations

import math

from pydantic import Field

from mechanoscope.config import StrictConfig

__all__ = ["TrackConfig"]


class TrackConfig(StrictConfig):
    """Parameters of tracking by detection (linear assignment, laptrack).

    Only ``expected_speed_um_per_frame`` and ``cell_diameter_um`` need to fit the cells;
    every distance left at ``None`` is derived from them (see the ``*_used`` methods),
    so that one number typed by the user scales the whole tracker.
    """

    expected_speed_um_per_frame: float = Field(
        4.0, gt=0, description="Typical distance (µm) a cell's centroid moves between consecutive frames."
    )
    cell_diameter_um: float = Field(
        15.0, gt=0, description="Typical cell diameter (µm); sets how far daughters may lie from their mother."
    )
    max_distance_um: float | None = Field(
        None, gt=0,
        description="Largest centroid displacement (µm) linked between consecutive frames "
        "[default: 3 x expected_speed_um_per_frame].",
    )
    max_gap_frames: int = Field(
        2, ge=0, le=50,
        description="Most consecutive frames a cell may be missed (not segmented) and still keep its track; "
        "0 disables gap closing. Also the largest run of frames without any cell that the series may hold.",
    )
    gap_max_distance_um: float | None = Field(
        None, gt=0,
        description="Largest displacement (µm) bridged by gap closing [default: max_distance_um x sqrt(max_gap_frames + 1)].",
    )
    divisions: bool = Field(True, description="Detect divisions (one track splitting into two daughter tracks).")
    division_max_distance_um: float | None = Field(
        None, gt=0,
        description="Largest distance (µm) from a mother's centroid to a daughter's centroid in the next frame "
        "[default: max_distance_um + cell_diameter_um / 2].",
    )
    gap_divisions: bool = Field(
        True,
        description="Also find divisions whose daughters first appear 1..max_gap_frames frames after the mother was last "
        "seen (a missed detection around the division); needs area_um2 (daughters smaller than the mother).",
    )
    check_division_areas: bool = Field(
        True,
        description="Undo a division whose daughters are not both smaller than the mother (area_um2; see "
        "mechanoscope.track.divisions); the farther daughter starts a new track.",
    )
    area_weight: float = Field(
        0.0, ge=0,
        description="Weight of area change in the linking cost: the squared distance is multiplied by "
        "1 + area_weight * |ln(area ratio)| (needs area_um2). 0 = position only.",
    )
    intensity_weight: float = Field(
        0.0, ge=0,
        description="Weight of mean-intensity change in the linking cost: the squared distance is multiplied by "
        "1 + intensity_weight * |ln(intensity ratio)| (needs mean_intensity > 0, e.g. from intensity images). 0 = off.",
    )
    overlap_weight: float = Field(
        0.0, ge=0,
        description="Weight of mask overlap in the linking cost: the squared distance is multiplied by "
        "1 + overlap_weight * (1 - IoU) of the two masks in consecutive frames (needs label images). 0 = off.",
    )
    alternative_cost_factor: float = Field(
        1.05, gt=0, description="laptrack's factor for the cost of starting/ending a track (Jaqaman et al. 2008)."
    )

    def max_distance_um_used(self) -> float:
        """Linking cutoff (µm) between consecutive frames."""
        return self.max_distance_um if self.max_distance_um is not None else 3.0 * self.expected_speed_um_per_frame

    def gap_max_distance_um_used(self) -> float:
        """Gap-closing cutoff (µm)."""
        if self.gap_max_distance_um is not None:
            return self.gap_max_distance_um
        return self.max_distance_um_used() * math.sqrt(self.max_gap_frames + 1)

    def division_max_distance_um_used(self) -> float:
        """Splitting cutoff (µm): mother in frame t to daughter in frame t + 1."""
        if self.division_max_distance_um is not None:
            return self.division_max_distance_um
        return self.max_distance_um_used() + 0.5 * self.cell_diameter_um

    def resolved(self) -> dict:
        """All settings with the derived distances filled in (what is written into outputs)."""
        d = self.model_dump()
        d["max_distance_um"] = self.max_distance_um_used()
        d["gap_max_distance_um"] = self.gap_max_distance_um_used()
        d["division_max_distance_um"] = self.division_max_distance_um_used()
        return d
