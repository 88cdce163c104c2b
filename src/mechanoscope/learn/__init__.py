"""Learning: typed configs, datasets, networks, training, prediction, model folders."""

from mechanoscope.io.model_folder import (
    MODEL_FILES,
    MODEL_SCHEMA_VERSION,
    ModelFolder,
    ModelFolderError,
    ModelSchemaError,
    check_output_folder,
    load_model_folder,
    provenance,
    save_model_folder,
    sha256_file,
)

__all__ = [
    "MODEL_FILES",
    "MODEL_SCHEMA_VERSION",
    "ModelFolder",
    "ModelFolderError",
    "ModelSchemaError",
    "check_output_folder",
    "load_model_folder",
    "provenance",
    "save_model_folder",
    "sha256_file",
]
