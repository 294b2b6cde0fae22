"""Datasets for the loader-based tasks: each is a map-style ``torch.utils.data.Dataset`` pair
(train, evaluation) with ``num_classes`` and ``input_shape``."""

from tensam.data.cifar import CIFAR10
from tensam.data.imagefolder import ImageFolder
from tensam.data.synthetic import GaussianBlobs

__all__ = ["CIFAR10", "GaussianBlobs", "ImageFolder"]
