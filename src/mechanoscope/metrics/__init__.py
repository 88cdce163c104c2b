"""Metrics that compare results with a reference. Tracking: CTC measures (py-ctcmetrics), links, divisions."""

from mechanoscope.metrics.tracking import (
    CTC_DEFAULT_METRICS,
    ctc_scores,
    division_scores,
    edge_scores,
    linking_scores,
    match_detections,
    table_links,
    tracking_scores,
)

__all__ = [
    "CTC_DEFAULT_METRICS",
    "ctc_scores",
    "division_scores",
    "edge_scores",
    "linking_scores",
    "match_detections",
    "table_links",
    "tracking_scores",
]
