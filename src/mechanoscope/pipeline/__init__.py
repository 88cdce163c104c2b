"""End-to-end runs that compose the stages: prediction over many fields, evaluation of a run, the demo."""

from mechanoscope.pipeline.demo import (
    attach_simulation_truth,
    run_demo,
    summarise_simulation,
)
from mechanoscope.pipeline.evaluation import evaluate_run
from mechanoscope.pipeline.predict import predict_run

__all__ = ["attach_simulation_truth", "evaluate_run", "predict_run", "run_demo", "summarise_simulation"]
