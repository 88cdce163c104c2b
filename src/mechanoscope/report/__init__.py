"""Figures and reports."""

from mechanoscope.report.figures import field_gallery, figure_to_png_bytes
from mechanoscope.report.comparison_section import comparison_section_html
from mechanoscope.report.html import write_report
from mechanoscope.report.stiffness_figures import (
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
from mechanoscope.report.superplot import superplot_png

__all__ = [
    "bland_altman_png",
    "class_fraction_png",
    "comparison_section_html",
    "condition_distribution_png",
    "confusion_matrix_png",
    "crop_gallery_png",
    "field_gallery",
    "figure_to_png_bytes",
    "predicted_vs_measured_png",
    "reliability_png",
    "roc_png",
    "stiffness_gallery_png",
    "superplot_png",
    "write_report",
]
