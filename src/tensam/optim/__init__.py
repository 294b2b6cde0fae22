"""Optimizers: every method wraps a base ``torch.optim`` optimizer (:mod:`tensam.optim.base`)."""

from tensam.optim.bar import BAR, NBAR, OBAR
from tensam.optim.base import ScalingOptimizer, TwoPassOptimizer, WrappedOptimizer
from tensam.optim.das import DAS
from tensam.optim.factory import build_optimizer
from tensam.optim.nusam import NuSAM
from tensam.optim.sam import SAM

__all__ = [
    "BAR", "DAS", "NBAR", "NuSAM", "OBAR", "SAM", "ScalingOptimizer", "TwoPassOptimizer",
    "WrappedOptimizer", "build_optimizer",
]
