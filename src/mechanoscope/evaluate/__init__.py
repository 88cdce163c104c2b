"""Metrics: classification, regression, segmentation and tracking; group statistics."""

from mechanoscope.evaluate.segmentation import (
    AP_THRESHOLDS,
    InstanceMatch,
    OverlapTable,
    iou_matrix,
    match_instances,
    overlap_table,
    segmentation_scores,
)
from mechanoscope.evaluate.segmentation_pooled import (
    aggregate_segmentation_scores,
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

from mechanoscope.evaluate.conditions import compare_conditions, summarize_by_condition
from mechanoscope.evaluate.stiffness import (
    classification_metrics,
    regression_metrics,
    reliability_bins,
)

__all__ += [
    "classification_metrics",
    "compare_conditions",
    "regression_metrics",
    "reliability_bins",
    "summarize_by_condition",
]
