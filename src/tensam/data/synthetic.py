"""Gaussian blobs: a small, seeded classification data set for tests and CPU smoke runs."""

from __future__ import annotations

import torch
from torch.utils.data import TensorDataset

from tensam.errors import ConfigError


class GaussianBlobs:
    """``num_classes`` Gaussian clusters in ``dim`` dimensions: class c has mean ``separation``
    * m_c (m_c a random unit vector) and unit covariance. Train and evaluation sets are drawn
    independently from the same seeded generator."""

    def __init__(self, n_train: int = 512, n_eval: int = 256, dim: int = 16,
                 num_classes: int = 4, separation: float = 3.0, seed: int = 0):
        if min(n_train, n_eval, dim) < 1 or num_classes < 2:
            raise ConfigError(f"task.data: n_train, n_eval, dim must be >= 1 and num_classes >= 2 "
                              f"(got {n_train}, {n_eval}, {dim}, {num_classes})")
        gen = torch.Generator().manual_seed(seed)
        means = torch.randn(num_classes, dim, generator=gen)
        means = separation * means / means.norm(dim=1, keepdim=True)

        def draw(n: int) -> TensorDataset:
            y = torch.randint(num_classes, (n,), generator=gen)
            return TensorDataset(means[y] + torch.randn(n, dim, generator=gen), y)

        self.train, self.eval = draw(n_train), draw(n_eval)
        self.num_classes, self.input_shape = num_classes, (dim,)
