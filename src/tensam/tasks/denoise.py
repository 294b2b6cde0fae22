"""Tucker-2 denoising, the controlled problem of Figure 1.

A Tucker-2 model Phi(G, A, B) = A G B^T (K = 3 cores, :class:`tensam.tensorized.Tucker` with a
2-D core) is fitted to a noisy observation of a fixed low-rank target T::

    f = E_N ||A G B^T - (T + a N)||_F^2,    N_ij ~ N(0, 1) i.i.d.,

where ``noise`` = a sets the signal-to-noise ratio (T is scaled to unit RMS entries, so a is the
noise-to-signal ratio per entry). ``batching`` chooses how the expectation is sampled:

* ``full``: one fixed draw N_0; every step sees the same Y = T + a N_0 (deterministic GD).
* ``fresh``: a new draw N_t at every step, Y_t = T + a N_t (the stochastic gradient of f, as in
  BAR's Figure 1 that the paper's Figure 1 follows).
* ``entries``: ``batch_size`` entries of the fixed Y sampled uniformly (with replacement) at
  every step; the loss numel/b * sum over them is an unbiased estimate of ||Phi - Y||_F^2.
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np
import torch
from torch import nn

from tensam.errors import ConfigError
from tensam.tasks.base import Task

BATCHINGS = ("full", "fresh", "entries")
DTYPES = {"float32": torch.float32, "float64": torch.float64}


def keyed_generator(seed: int, key: int) -> torch.Generator:
    """A torch generator that depends only on (seed, key), so every draw is reproducible."""
    state = np.random.SeedSequence([seed, key]).generate_state(1)[0]
    return torch.Generator().manual_seed(int(state))


def low_rank_target(shape: Sequence[int], rank: int, seed: int, dtype) -> torch.Tensor:
    """T = X Y^T with Gaussian X, Y of ``rank`` columns, scaled so ||T||_F^2 = numel (unit RMS)."""
    gen = torch.Generator().manual_seed(seed)
    x = torch.randn(shape[0], rank, generator=gen, dtype=dtype)
    y = torch.randn(shape[1], rank, generator=gen, dtype=dtype)
    t = x @ y.T
    return t * (t.numel() ** 0.5 / torch.linalg.matrix_norm(t))


class Tucker2Denoise(Task):
    """Fit A G B^T to T + a N (Figure 1); scored by the relative error to the clean T."""

    metrics = {"rel_error": False, "loss_full": False}
    primary_metric = "rel_error"

    def __init__(self, shape=(20, 20), target_rank: int = 3, noise: float = 0.0,
                 batching: str = "full", batch_size: int = 0, data_seed: int = 0,
                 dtype: str = "float32"):
        if len(shape) != 2:
            raise ConfigError(f"task.shape={list(shape)} must have 2 entries (a matrix)")
        if not 1 <= target_rank <= min(shape):
            raise ConfigError(f"task.target_rank={target_rank} must be in [1, {min(shape)}]")
        if noise < 0:
            raise ConfigError(f"task.noise={noise} must be >= 0")
        if batching not in BATCHINGS:
            raise ConfigError(f"task.batching={batching!r} is not one of {list(BATCHINGS)}")
        if batching == "entries" and batch_size <= 0:
            raise ConfigError("task.batching='entries' needs task.batch_size > 0, got "
                              f"{batch_size}")
        if dtype not in DTYPES:
            raise ConfigError(f"task.dtype={dtype!r} is not one of {list(DTYPES)}")
        self.shape, self.noise = tuple(shape), float(noise)
        self.batching, self.batch_size, self.data_seed = batching, int(batch_size), data_seed
        self.dtype = DTYPES[dtype]
        self.target = low_rank_target(self.shape, target_rank, data_seed, self.dtype)
        self.device = torch.device("cpu")
        self.observed = self.target + self.noise * self.draw_noise(key=0)  # Y = T + a N_0

    def to(self, device: torch.device) -> Tucker2Denoise:
        self.device = torch.device(device)
        self.target, self.observed = self.target.to(device), self.observed.to(device)
        return self

    def draw_noise(self, key: int) -> torch.Tensor:
        """i.i.d. standard Gaussian entries: N_0 for key 0, N_t for key t + 1."""
        gen = keyed_generator(self.data_seed, key)  # CPU stream: same draws on every device
        return torch.randn(self.shape, generator=gen, dtype=self.dtype).to(self.device)

    def model_inputs(self) -> dict:
        """A Tucker-2 model (``configs/model/tucker2.yaml``) of the matrix's shape and dtype."""
        return {"shape": self.shape, "dtype": self.dtype}

    def batch(self, step: int):
        """``None`` (full), the observation Y_t (fresh), or sampled flat indices (entries)."""
        if self.batching == "full":
            return None
        if self.batching == "fresh":
            return self.target + self.noise * self.draw_noise(step + 1)
        gen = keyed_generator(self.data_seed, step + 1)
        return torch.randint(self.target.numel(), (self.batch_size,), generator=gen).to(self.device)

    def loss(self, model: nn.Module, batch=None) -> torch.Tensor:
        """||Phi - Y||_F^2 for the step's sample of f (sum of squared errors)."""
        pred = model()
        if self.batching == "entries":
            residual = pred.reshape(-1)[batch] - self.observed.reshape(-1)[batch]
            return residual.square().sum() * (self.target.numel() / self.batch_size)
        observed = self.observed if batch is None else batch
        return (pred - observed).square().sum()

    @torch.no_grad()
    def evaluate(self, model: nn.Module, test: bool = True) -> dict[str, float]:
        """Relative error to the clean target and the full-batch loss on the fixed draw Y."""
        pred = model()
        return {
            "rel_error": float(torch.linalg.matrix_norm(pred - self.target)
                               / torch.linalg.matrix_norm(self.target)),
            "loss_full": float((pred - self.observed).square().sum()),
        }
