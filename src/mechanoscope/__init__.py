"""mechanoscope: single-cell mechanics from label-free microscope images."""
__version__ = "0.1.0"
