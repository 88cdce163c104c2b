"""Label images from label-free images: a classical pipeline and a learned network."""

from mechanoscope.segment.classical import (
    ClassicalSegmentationConfig,
    foreground_map,
    segment_classical,
)
from mechanoscope.segment.network import (
    CLASSES,
    SegmentationInferenceConfig,
    SegmentationModel,
    SegmentationTrainConfig,
    load_segmentation_model,
    segment_network,
)
from mechanoscope.segment.network_train import train_segmentation

__all__ = [
    "CLASSES",
    "ClassicalSegmentationConfig",
    "SegmentationInferenceConfig",
    "SegmentationModel",
    "SegmentationTrainConfig",
    "foreground_map",
    "load_segmentation_model",
    "segment_classical",
    "segment_network",
    "train_segmentation",
]
