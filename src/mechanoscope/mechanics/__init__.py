"""Ground-truth sources of cell mechanics: AFM curve fits (nanite) and AFM measurements matched to cells."""

from mechanoscope.mechanics.afm_match import match_afm_to_cells

__all__ = ["AFMFitConfig", "StageTransform", "fit_afm_files", "match_afm_to_cells", "match_afm_to_run"]


def __getattr__(name: str):  # the fit needs the optional [afm] extra: import it on first use
    if name in ("AFMFitConfig", "fit_afm_files"):
        from mechanoscope.mechanics import afm_fit

        return getattr(afm_fit, name)
    if name in ("StageTransform", "match_afm_to_run"):
        from mechanoscope.mechanics import afm_run

        return getattr(afm_run, name)
    raise AttributeError(name)
