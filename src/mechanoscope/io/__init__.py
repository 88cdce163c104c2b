"""Input and output: images with axes and pixel size, label images, tables, JSON."""

from mechanoscope.io.atomic import atomic_path, check_output_folder_path, make_output_folder, write_json
from mechanoscope.io.images import (
    IMAGE_SUFFIXES,
    Image,
    check_image_values,
    image_paths,
    read_image,
    read_label_image,
    write_image,
    write_label_image,
)
from mechanoscope.io.tables import read_table, write_table

__all__ = [
    "IMAGE_SUFFIXES",
    "Image",
    "atomic_path",
    "check_image_values",
    "check_output_folder_path",
    "image_paths",
    "make_output_folder",
    "read_image",
    "read_label_image",
    "read_table",
    "write_image",
    "write_json",
    "write_label_image",
    "write_table",
]
