"""Models built from ``_target_`` configs (``configs/model``)."""

from tensam.models.hf import HFModel
from tensam.models.mlp import MLP, decay_groups
from tensam.models.resnet import ResNet

__all__ = ["HFModel", "MLP", "ResNet", "decay_groups"]
