"""Ground-truth sources of cell mechanics: AFM measurements matched to cells."""

from mechanoscope.mechanics.afm_match import match_afm_to_cells

__all__ = ["match_afm_to_cells"]
