"""Metrics: classification, regression, segmentation and tracking; group statistics."""

from mechanoscope.evaluate.segmentation import (
    AP_THRESHOLDS,
    InstanceMatch,
    OverlapTable,
    aggregate_segmentation_scores,
    iou_matrix,
    match_instances,
    overlap_table,
    segmentation_scores,
    segmentation_scores_dataset,
    segmentation_table,
)

__all__ = [
    "AP_THRESHOLDS",
    "InstanceMatch",
    "OverlapTable",
    "aggregate_segmentation_scores",
    "iou_matrix",
    "match_instances",
    "overlap_table",
    "segmentation_scores",
    "segmentation_scores_dataset",
    "segmentation_table",
]

from mechanoscope.evaluate.stiffness import (
    classification_metrics,
    compare_conditions,
    regression_metrics,
    reliability_bins,
    summarize_by_condition,
)
from mechanoscope.evaluate.run_evaluation import evaluate_run
from mechanoscope.evaluate.stiffness_figures import (
    bland_altman_png,
    class_fraction_png,
    condition_distribution_png,
    confusion_matrix_png,
    crop_gallery_png,
    predicted_vs_measured_png,
    reliability_png,
    roc_png,
    stiffness_gallery_png,
)

__all__ += [
    "bland_altman_png",
    "class_fraction_png",
    "classification_metrics",
    "compare_conditions",
    "condition_distribution_png",
    "confusion_matrix_png",
    "crop_gallery_png",
    "evaluate_run",
    "predicted_vs_measured_png",
    "regression_metrics",
    "reliability_bins",
    "reliability_png",
    "roc_png",
    "stiffness_gallery_png",
    "summarize_by_condition",
]
