"""CP (CANDECOMP/PARAFAC) factorized linear layer (Kolda and Bader, 2009, Section 3).

The weight tensor of order K is W = sum_r a^(1)_r o a^(2)_r o ... o a^(K)_r, i.e. the multilinear
reconstruction Phi(A_1, ..., A_K) of Eq. 1 with K factor matrices A_k (n_k x R) as the cores;
scaling A_i by c and A_j by 1/c leaves W unchanged.
"""

from __future__ import annotations

import math
from collections.abc import Sequence

import torch
import torch.nn.functional as F
from torch import nn

from tensam.errors import ConfigError


def khatri_rao(factors: Sequence[torch.Tensor]) -> torch.Tensor:
    """Column-wise Kronecker product A_1 (.) ... (.) A_m, rows in C order: (prod n_k) x R."""
    out = factors[0]
    for factor in factors[1:]:
        out = (out[:, None, :] * factor[None, :, :]).reshape(-1, out.shape[1])
    return out


def cp_to_tensor(factors: Sequence[torch.Tensor]) -> torch.Tensor:
    """W[i_1, ..., i_K] = sum_r prod_k A_k[i_k, r] for factors A_k of shape (n_k, R), K >= 2.

    The modes are split into two halves of balanced size, each half is Khatri-Rao multiplied,
    and one matmul (prod n_k) x R x (prod n_k) contracts the rank: one R-fold pass over W.
    """
    if len(factors) < 2:
        raise ConfigError(f"cp_to_tensor needs at least 2 factors, got {len(factors)}")
    sizes = [f.shape[0] for f in factors]
    split = min(range(1, len(factors)),
                key=lambda m: math.prod(sizes[:m]) + math.prod(sizes[m:]))
    left, right = khatri_rao(factors[:split]), khatri_rao(factors[split:])
    return (left @ right.T).reshape(sizes)


def _shape(name: str, shape: Sequence[int]) -> tuple[int, ...]:
    shape = tuple(int(s) for s in shape)
    if not shape or any(s < 1 for s in shape):
        raise ConfigError(f"{name}={list(shape)} must be a non-empty list of positive sizes")
    return shape


class CPLinear(nn.Module):
    """y = x W^T + b with W (prod(out_shape) x prod(in_shape)) a rank-``rank`` CP tensor.

    W is the reshape of the order-K tensor of shape (*out_shape, *in_shape),
    K = len(out_shape) + len(in_shape); one core group of the K factor matrices (the bias is
    not a core). Initialisation: every factor entry ~ N(0, s^2). A product of K independent
    zero-mean entries has variance s^(2K), and the R rank-one terms are independent, so
    Var(W_ij) = R s^(2K); matching Kaiming/He fan-in, Var(W_ij) = 2 / fan_in with
    fan_in = prod(in_shape), gives s = (2 / (fan_in R))^(1 / (2K)). The bias starts at zero.
    """

    def __init__(self, in_shape: Sequence[int], out_shape: Sequence[int], rank: int,
                 bias: bool = True):
        super().__init__()
        self.in_shape, self.out_shape = _shape("in_shape", in_shape), _shape("out_shape", out_shape)
        if int(rank) < 1:
            raise ConfigError(f"rank must be >= 1, got {rank}")
        self.rank = int(rank)
        self.in_features, self.out_features = math.prod(self.in_shape), math.prod(self.out_shape)
        modes = self.out_shape + self.in_shape
        std = (2.0 / (self.in_features * self.rank)) ** (1.0 / (2 * len(modes)))
        self.factors = nn.ParameterList(nn.Parameter(torch.randn(n, self.rank) * std)
                                        for n in modes)
        self.bias = nn.Parameter(torch.zeros(self.out_features)) if bias else None

    def cores(self) -> tuple[torch.Tensor, ...]:
        return tuple(self.factors)

    def weight_matrix(self) -> torch.Tensor:
        """W reshaped to (out_features, in_features)."""
        return cp_to_tensor(list(self.factors)).reshape(self.out_features, self.in_features)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return F.linear(x, self.weight_matrix(), self.bias)

    def extra_repr(self) -> str:
        return (f"in_shape={self.in_shape}, out_shape={self.out_shape}, rank={self.rank}, "
                f"bias={self.bias is not None}")
