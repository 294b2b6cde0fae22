"""Models built from ``_target_`` configs (``configs/model``)."""

from tensam.models.mlp import MLP, decay_groups
from tensam.models.resnet import ResNet

__all__ = ["MLP", "ResNet", "decay_groups"]
