"""Network machinery shared by every model: device choice, the one training loop and tiled inference.

Nothing here knows about cells: the segmentation and stiffness networks build on it.
"""

from mechanoscope.nn.device import select_device
from mechanoscope.nn.tiling import predict_logits_tiled, tiling_plan
from mechanoscope.nn.training import EarlyStopping, fit_network

__all__ = ["select_device", "predict_logits_tiled", "tiling_plan", "fit_network", "EarlyStopping"]
