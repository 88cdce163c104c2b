"""Experimental designs with named conditions and biological replicates.

Generative model
----------------
A design names ``K`` ordered conditions ``c`` with a median Young's modulus
``M_c`` (Pa) and ``R`` biological replicates (wells, dishes, donors) per condition.
Replicate ``r`` of condition ``c`` has its own median

    M_cr = M_c · exp(replicate_sd_ln · z_cr),   z_cr ~ N(0, 1) independent,

i.e. a log-normal replicate effect whose standard deviation on the natural-log
scale is ``replicate_sd_ln`` (0.15 ≈ 15 % well-to-well variation of the median).
Replicates are *nested* in conditions: replicate 1 of P3 and replicate 1 of P5 are
different wells (no pairing). Cell ``i`` of replicate ``cr`` then has

    E_cri = M_cr · exp(cell_sigma_ln · ε_cri),   ε_cri ~ N(0, 1).

An optional functional readout (e.g. a senescence score measured once per well)
follows a known linear relation to the replicate's log-median modulus:

    F_cr = intercept + slope_per_decade · log10(M_cr / reference_pa) + noise_sd · η_cr.

``simulate adherent`` renders images from this model (one or more fields of view per
replicate; see :class:`mechanoscope.simulate.adherent.AdherentConfig.conditions`);
:func:`simulate_condition_table` draws the same model at the table level (no images),
which is what statistical benchmarks over hundreds of experiments use.
"""

from __future__ import annotations

import numpy as np
import pandas as pd
from pydantic import Field, model_validator

from mechanoscope.config import StrictConfig

__all__ = [
    "CONDITION_PRESETS",
    "ConditionsDesign",
    "FunctionalReadoutSpec",
    "condition_preset",
    "functional_readout",
    "replicate_medians",
    "simulate_condition_table",
]


class FunctionalReadoutSpec(StrictConfig):
    """A per-replicate functional readout linearly related to log10 of the replicate's median modulus."""

    name: str = Field("senescence_score", min_length=1, description="Column name of the readout.")
    intercept: float = Field(0.3, description="Readout at the reference modulus.")
    slope_per_decade: float = Field(0.4, ge=-100, le=100, description="Change of the readout per decade (×10) of median modulus.")
    reference_pa: float = Field(500.0, gt=0, description="Reference modulus (Pa) at which the readout equals the intercept.")
    noise_sd: float = Field(0.05, ge=0, le=100, description="Standard deviation of the readout's measurement noise (readout units).")


class ConditionsDesign(StrictConfig):
    """Named, ordered conditions with biological replicates (see the module docstring for the model)."""

    names: list[str] = Field(description="Condition names, in their natural order (e.g. P3, P5, P7, P9).")
    medians_pa: list[float] = Field(description="Median Young's modulus of each condition (Pa), same order as `names`.")
    cell_sigma_ln: float = Field(0.47, ge=0, le=3, description="Cell-to-cell spread: standard deviation of ln E within a replicate.")
    replicates: int = Field(3, ge=1, le=1000, description="Biological replicates (wells) per condition.")
    replicate_sd_ln: float = Field(0.15, ge=0, le=3, description="Replicate-to-replicate spread: standard deviation of the ln of the replicate effect on the median.")
    functional: FunctionalReadoutSpec | None = Field(None, description="Optional per-replicate functional readout with a known relation to stiffness.")

    @model_validator(mode="after")
    def _check(self) -> "ConditionsDesign":
        if not self.names:
            raise ValueError("conditions.names must name at least one condition")
        if len(set(self.names)) != len(self.names):
            raise ValueError(f"conditions.names must be unique (got {self.names})")
        if len(self.medians_pa) != len(self.names):
            raise ValueError(f"conditions.medians_pa has {len(self.medians_pa)} values for {len(self.names)} conditions")
        if any(not (0 < m <= 1e7) for m in self.medians_pa):
            raise ValueError("conditions.medians_pa must lie in (0, 1e7] Pa")
        return self

    @property
    def n_units(self) -> int:
        """Number of (condition, replicate) units."""
        return len(self.names) * self.replicates

    def units(self) -> list[tuple[str, int]]:
        """(condition, replicate) in condition-major order; replicates are numbered from 1."""
        return [(c, r + 1) for c in self.names for r in range(self.replicates)]


# passage series: MSCs stiffen with passage (hundreds of Pa → ~1.5 kPa); macrophages: M1 stiffer than M0 and M2
CONDITION_PRESETS: dict[str, dict] = {
    "passage": {"names": ["P3", "P5", "P7", "P9"], "medians_pa": [300.0, 450.0, 700.0, 1100.0]},
    "macrophage": {"names": ["M0", "M1", "M2"], "medians_pa": [400.0, 1200.0, 500.0]},
}


def condition_preset(name: str, **overrides) -> ConditionsDesign:
    """A named design (``passage``: P3/P5/P7/P9; ``macrophage``: M0/M1/M2) with optional overrides."""
    if name not in CONDITION_PRESETS:
        from mechanoscope.errors import ConfigError

        raise ConfigError(f"unknown condition preset {name!r}; allowed: {sorted(CONDITION_PRESETS)}")
    return ConditionsDesign.build(**{**CONDITION_PRESETS[name], **overrides})


def replicate_medians(design: ConditionsDesign, rng: np.random.Generator) -> pd.DataFrame:
    """Draw each replicate's median modulus.

    Returns
    -------
    DataFrame, one row per (condition, replicate) in :meth:`ConditionsDesign.units` order:
    ``condition``, ``replicate`` (1…R), ``condition_median_pa`` (M_c),
    ``replicate_median_pa`` (M_cr), ``replicate_effect_ln`` (ln M_cr/M_c).
    """
    units = design.units()
    z = rng.standard_normal(len(units))
    med = dict(zip(design.names, design.medians_pa))
    m_c = np.array([med[c] for c, _ in units], dtype=float)
    eff = design.replicate_sd_ln * z
    return pd.DataFrame({
        "condition": [c for c, _ in units],
        "replicate": np.array([r for _, r in units], dtype=np.int64),
        "condition_median_pa": m_c,
        "replicate_median_pa": m_c * np.exp(eff),
        "replicate_effect_ln": eff,
    })


def functional_readout(replicates: pd.DataFrame, spec: FunctionalReadoutSpec, rng: np.random.Generator) -> pd.DataFrame:
    """The functional readout of each replicate: ``condition``, ``replicate``, ``<spec.name>``."""
    x = np.log10(replicates["replicate_median_pa"].to_numpy(dtype=float) / spec.reference_pa)
    value = spec.intercept + spec.slope_per_decade * x + spec.noise_sd * rng.standard_normal(len(x))
    return pd.DataFrame({"condition": replicates["condition"].to_numpy(), "replicate": replicates["replicate"].to_numpy(), spec.name: value})


def simulate_condition_table(design: ConditionsDesign, cells_per_replicate: int, seed: int | np.random.SeedSequence | np.random.Generator = 0) -> tuple[pd.DataFrame, pd.DataFrame]:
    """The design's generative model at the table level: no images, only cells' true moduli.

    Parameters
    ----------
    design
        Conditions, replicates, replicate and cell spreads.
    cells_per_replicate
        Cells drawn per replicate.
    seed
        Seed, SeedSequence or Generator.

    Returns
    -------
    cells
        One row per cell: ``condition``, ``replicate``, ``stiffness_pa``, ``replicate_median_pa``.
    replicates
        :func:`replicate_medians` plus the functional readout column when the design has one.
    """
    rng = seed if isinstance(seed, np.random.Generator) else np.random.default_rng(seed)
    reps = replicate_medians(design, rng)
    n = int(cells_per_replicate)
    idx = np.repeat(np.arange(len(reps)), n)
    e = reps["replicate_median_pa"].to_numpy()[idx] * np.exp(design.cell_sigma_ln * rng.standard_normal(idx.size))
    cells = pd.DataFrame({
        "condition": reps["condition"].to_numpy()[idx],
        "replicate": reps["replicate"].to_numpy()[idx],
        "stiffness_pa": e,
        "replicate_median_pa": reps["replicate_median_pa"].to_numpy()[idx],
    })
    if design.functional is not None:
        f = functional_readout(reps, design.functional, rng)
        reps[design.functional.name] = f[design.functional.name].to_numpy()
    return cells, reps
