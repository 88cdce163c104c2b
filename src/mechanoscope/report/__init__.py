"""Figures and reports."""

from mechanoscope.report.figures import field_gallery, figure_to_png_bytes
from mechanoscope.report.html import write_report

__all__ = ["field_gallery", "figure_to_png_bytes", "write_report"]
