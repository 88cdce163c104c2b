"""End-to-end runs that compose the stages: one field of view, prediction over many fields, evaluation of a run, the demo."""

from mechanoscope.pipeline.demo import (
    attach_simulation_truth,
    true_mask_run,
    run_demo,
    summarise_simulation,
)
from mechanoscope.pipeline.evaluation import evaluate_run
from mechanoscope.pipeline.field import FieldError, FieldResult, process_field
from mechanoscope.pipeline.field_run import run_fields
from mechanoscope.pipeline.predict import predict_run

__all__ = [
    "FieldError",
    "FieldResult",
    "attach_simulation_truth",
    "true_mask_run",
    "evaluate_run",
    "predict_run",
    "process_field",
    "run_demo",
    "run_fields",
    "summarise_simulation",
]
