"""Physics-based synthetic microscopy with known ground truth."""

from mechanoscope.simulate.adherent import (
    DEFAULT_POPULATIONS,
    AdherentConfig,
    MorphologyCouplings,
    PopulationSpec,
    SimulatedField,
    afm_measurements,
    render_cell,
    sample_stiffness,
    simulate_adherent,
    simulate_field,
)
from mechanoscope.simulate.conditions import (
    CONDITION_PRESETS,
    ConditionsDesign,
    FunctionalReadoutSpec,
    condition_preset,
    functional_readout,
    replicate_medians,
    simulate_condition_table,
)
from mechanoscope.simulate.afm_curves import AFMCurveSimConfig, simulate_afm_curves
from mechanoscope.simulate.optics import (
    CameraConfig,
    OpticsConfig,
    apply_camera,
    illumination_field,
    render_brightfield,
    render_intensity,
    render_phase_contrast,
)

__all__ = [
    "CONDITION_PRESETS",
    "ConditionsDesign",
    "FunctionalReadoutSpec",
    "condition_preset",
    "functional_readout",
    "replicate_medians",
    "simulate_condition_table",
    "AFMCurveSimConfig",
    "DEFAULT_POPULATIONS",
    "AdherentConfig",
    "CameraConfig",
    "MorphologyCouplings",
    "OpticsConfig",
    "PopulationSpec",
    "SimulatedField",
    "afm_measurements",
    "apply_camera",
    "illumination_field",
    "render_brightfield",
    "render_cell",
    "render_intensity",
    "render_phase_contrast",
    "sample_stiffness",
    "simulate_adherent",
    "simulate_afm_curves",
    "simulate_field",
]
