"""Optimizers: every method wraps a base ``torch.optim`` optimizer (see :mod:`tensam.optim.base`)."""

from tensam.optim.base import ScalingOptimizer, TwoPassOptimizer, WrappedOptimizer
from tensam.optim.das import DAS
from tensam.optim.factory import BASES, METHODS, build_optimizer
from tensam.optim.sam import SAM

__all__ = [
    "BASES", "DAS", "METHODS", "SAM", "ScalingOptimizer", "TwoPassOptimizer",
    "WrappedOptimizer", "build_optimizer",
]
