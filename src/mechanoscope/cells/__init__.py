"""Single cells: morphology features, quality flags and fixed-physical-size crops.

Typical use::

    from mechanoscope.cells import ExtractConfig, extract_cells, extract_folder

    table, crops = extract_cells(image, labels, pixel_size_um=0.65)
    extract_folder("images/", "masks/", "run/", ExtractConfig())
"""

from mechanoscope.cells._validate import LabelImageError, ShapeMismatchError, relabel
from mechanoscope.cells.crops import CropConfig, crop_cells, crop_grid_px, crop_outside_fraction
from mechanoscope.cells.extract import (
    LABEL_SUFFIXES,
    ExtractConfig,
    ExtractResult,
    extract_cells,
    extract_folder,
    pair_images_and_labels,
)
from mechanoscope.cells.morphology import INTENSITY_COLUMNS, MORPHOLOGY_COLUMNS, measure_cells
from mechanoscope.cells.quality import QC_COLUMNS, QualityConfig, quality_flags
from mechanoscope.io.crop_store import (
    CropStore,
    CropStoreError,
    CropStoreWriter,
    check_crops_match_table,
    read_crop_store,
    write_crop_store,
)

__all__ = [
    "INTENSITY_COLUMNS",
    "LABEL_SUFFIXES",
    "MORPHOLOGY_COLUMNS",
    "QC_COLUMNS",
    "CropConfig",
    "CropStore",
    "CropStoreError",
    "CropStoreWriter",
    "ExtractConfig",
    "ExtractResult",
    "LabelImageError",
    "QualityConfig",
    "ShapeMismatchError",
    "check_crops_match_table",
    "crop_cells",
    "crop_grid_px",
    "crop_outside_fraction",
    "extract_cells",
    "extract_folder",
    "measure_cells",
    "pair_images_and_labels",
    "quality_flags",
    "read_crop_store",
    "relabel",
    "write_crop_store",
]
