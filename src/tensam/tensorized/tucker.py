"""Tucker decomposition T = G x_1 U_1 x_2 U_2 ... x_d U_d (Kolda and Bader, 2009)."""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np
import torch
from torch import nn

from tensam.errors import ConfigError

INITS = ("uniform", "normal")


def mode_product(t: torch.Tensor, matrix: torch.Tensor, mode: int) -> torch.Tensor:
    """t x_mode matrix: contract ``t``'s axis ``mode`` with the columns of ``matrix``."""
    return torch.movedim(torch.tensordot(t, matrix.to(t.dtype), dims=([mode], [1])), -1, mode)


def tucker_to_tensor(core: torch.Tensor, factors: Sequence[torch.Tensor]) -> torch.Tensor:
    """Phi(G, U_1, ..., U_d) = G x_1 U_1 ... x_d U_d, multilinear in each of the K = d + 1 cores.

    Mode products commute; they are applied in order of increasing growth n_i / r_i so the
    intermediate tensors stay small (for the COVID tensor this halves the flops).
    """
    out = core
    for mode in mode_order([f.shape for f in factors]):
        out = mode_product(out, factors[mode], mode)
    return out


def mode_order(factor_shapes: Sequence[Sequence[int]]) -> list[int]:
    """The modes in order of increasing growth n_i / r_i of their factors (n_i, r_i)."""
    return sorted(range(len(factor_shapes)),
                  key=lambda i: factor_shapes[i][0] / factor_shapes[i][1])


class Tucker(nn.Module):
    """A Tucker-format tensor of ``shape`` and multilinear ``rank``; one core group of K = d + 1.

    ``init="uniform"`` draws every entry from U[0, 1) with a NumPy ``RandomState(seed)``, exactly
    as ``tensorly.random.random_tucker`` (factors first, mode by mode, then the core);
    ``init="normal"`` draws N(0, std^2) entries from a torch generator. ``scales`` multiplies the
    K = d + 1 cores (core first) after the draw, e.g. for an unbalanced start (Figure 1).
    """

    def __init__(self, shape: Sequence[int], rank: Sequence[int], init: str = "uniform",
                 seed: int = 0, std: float = 0.1, dtype: torch.dtype = torch.float32,
                 scales: Sequence[float] | None = None):
        super().__init__()
        if not isinstance(rank, Sequence) or not all(isinstance(r, int) for r in rank):
            raise ConfigError(f"model.rank={rank!r} must be a list of positive integers, one per "
                              f"mode of the shape {list(shape)}")
        shape, rank = tuple(int(s) for s in shape), tuple(int(r) for r in rank)
        if len(rank) != len(shape):
            raise ConfigError(f"model.rank={list(rank)} has {len(rank)} entries but the tensor has "
                              f"order {len(shape)}; give one rank per mode")
        if any(not 1 <= r <= s for r, s in zip(rank, shape, strict=False)):
            raise ConfigError(f"model.rank={list(rank)} must satisfy 1 <= rank[i] <= shape[i]="
                              f"{list(shape)}")
        if init not in INITS:
            raise ConfigError(f"model.init={init!r} is not one of {list(INITS)}")
        self.shape, self.rank = shape, rank
        if init == "uniform":
            rns = np.random.RandomState(seed)
            factors = [rns.random_sample((s, r)) for s, r in zip(shape, rank, strict=False)]
            core = rns.random_sample(rank)
            to = lambda a: torch.tensor(a, dtype=dtype)  # noqa: E731
            core, factors = to(core), [to(f) for f in factors]
        else:
            gen = torch.Generator().manual_seed(seed)
            core = torch.randn(rank, generator=gen, dtype=dtype) * std
            factors = [torch.randn(s, r, generator=gen, dtype=dtype) * std
                       for s, r in zip(shape, rank, strict=False)]
        if scales is not None:
            if len(scales) != len(shape) + 1:
                raise ConfigError(f"model.scales={list(scales)} must have {len(shape) + 1} entries "
                                  "(core, then one per factor)")
            core, factors = core * scales[0], [f * c for f, c in zip(factors, scales[1:],
                                                                       strict=True)]
        self.core = nn.Parameter(core)
        self.factors = nn.ParameterList(nn.Parameter(f) for f in factors)

    def cores(self) -> tuple[torch.Tensor, ...]:
        return (self.core, *self.factors)

    def forward(self) -> torch.Tensor:
        return tucker_to_tensor(self.core, list(self.factors))

    def extra_repr(self) -> str:
        return f"shape={self.shape}, rank={self.rank}"
