"""Metrics that compare results with a reference. Tracking: CTC measures (py-ctcmetrics), links, divisions.
Conditions: comparisons of conditions with biological replicates as the unit."""

from mechanoscope.metrics.conditions import (
    ComparisonConfig,
    ConditionComparison,
    compare_replicated_conditions,
    functional_correlation,
    mixed_model_test,
    replicate_level_tests,
)
from mechanoscope.metrics.group_tests import bootstrap_median_ci, holm_adjust, jonckheere_terpstra
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
    "ComparisonConfig",
    "ConditionComparison",
    "bootstrap_median_ci",
    "compare_replicated_conditions",
    "functional_correlation",
    "holm_adjust",
    "jonckheere_terpstra",
    "mixed_model_test",
    "replicate_level_tests",
    "ctc_scores",
    "division_scores",
    "edge_scores",
    "linking_scores",
    "match_detections",
    "table_links",
    "tracking_scores",
]
