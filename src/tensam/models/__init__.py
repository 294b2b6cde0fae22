"""Models built from ``_target_`` configs (``configs/model``)."""

from tensam.models.mlp import MLP, decay_groups

__all__ = ["MLP", "decay_groups"]
