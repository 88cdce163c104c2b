"""Figures and reports."""

from mechanoscope.report.figures import field_gallery, figure_to_png_bytes

__all__ = ["field_gallery", "figure_to_png_bytes"]
