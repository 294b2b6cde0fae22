"""LoRETTA (Yang et al., 2024): tensor-train (TT) parameterized updates of a linear layer.

A tensor train of order d with modes n_1..n_d and ranks 1 = r_0, r_1, ..., r_d = 1 has cores
G_k of shape (r_{k-1}, n_k, r_k) and entries

    T[i_1, ..., i_d] = G_1[:, i_1, :] G_2[:, i_2, :] ... G_d[:, i_d, :]    (a 1 x 1 product).

Two readings of "LoRETTA" appear in the paper's Table 5 setting:

* :class:`LorettaTT` (Appendix B, "Finetuning with LoRETTA"): dW itself is one tensor train over
  the output modes followed by the input modes, [4, 4, 16, 16 | 16, 16, 4, 4] for a 4096 x 4096
  matrix, TT rank 16: 18,560 parameters per matrix, 1,187,840 on OPT-6.7B's q/v projections.
* :class:`LorettaRep` (LoRETTA_rep of the published code): a LoRA bottleneck x A B with A (I x r)
  and B (r x O), r = 8, each the reshape of a TT of rank 16 over [16, 16, 8, 4, 4] for hidden
  4096: 14,976 parameters per matrix, 958,464 on OPT-6.7B q/v (the paper's 0.96M).

**Initialisation** (option ``init``). The entries of the rebuilt tensor have variance
v = 1 / (fan_in + fan_out) of the matrix the TT reshapes to (the published code's
``target_sdv`` = sqrt(v), ``TensorizedLinear_module``): an entry is a sum of prod_{k<d} r_k
products of d independent core entries.

* ``reference`` (the published ``TensorTrain.build_factors_Gaussian``): core k, of shape
  (r_{k-1}, n_k, r_k), is N(0, v^(1/d) / r_k): the variances multiply to v / prod_{k<d} r_k.
  No core is zero (the LoRA-style zero-init of the published ``reset_parameters`` is commented
  out), so dW != 0 and the adapted model differs from the pre-trained one from the start; every
  core has squared norm about r_{k-1} n_k v^(1/d).
* ``zero`` (this package's former default): every core is N(0, s^2) with one s,
  s^(2d) r^(d-1) = v; then ONE core is zeroed -- the last core of the TT (:class:`LorettaTT`)
  or of B (:class:`LorettaRep`) -- so that dW = 0 and the adapted model computes exactly the
  pre-trained function. Only one: the gradient of every other core is multiplied by the zero
  core and is zero at the first step, while the zero core's gradient is not, so it moves first
  and the rest follow. DAS gives the zero core lambda = 0 by its eps rule.
"""

from __future__ import annotations

import math
from collections.abc import Sequence

import torch
from torch import nn

from tensam.adapters.base import AdaptedLinear
from tensam.errors import ConfigError

#: loretta_tt: the TT modes of one matrix dimension (output modes; input modes reversed, so the
#: 4096 x 4096 train is the paper's [4, 4, 16, 16, 16, 16, 4, 4]); 768 as the published code
TT_MODES: dict[int, tuple[int, ...]] = {
    384: (4, 4, 4, 6),
    768: (8, 8, 12),
    1024: (4, 4, 8, 8),
    2048: (4, 4, 8, 16),
    4096: (4, 4, 16, 16),
}
#: loretta_rep: the TT modes of an (I x r) or (r x O) factor, keyed by (hidden size, r); the
#: published code's table where it has the entry, (384, 8) and (2048, 8) added
REP_MODES: dict[tuple[int, int], tuple[int, ...]] = {
    (384, 8): (8, 6, 8, 4, 2),
    (768, 8): (8, 8, 12, 8),
    (1024, 8): (4, 8, 8, 8, 4),
    (2048, 8): (4, 8, 16, 8, 4),
    (4096, 8): (16, 16, 8, 4, 4),
    (768, 16): (8, 16, 12, 8),
    (1024, 16): (4, 8, 16, 8, 4),
    (4096, 16): (16, 16, 16, 4, 4),
}


def tt_modes(size: int) -> tuple[int, ...]:
    """The :data:`TT_MODES` of a matrix dimension; an unknown size raises ValueError."""
    if size not in TT_MODES:
        raise ConfigError(f"loretta_tt has no TT factorization of size {size}; supported sizes: "
                          f"{sorted(TT_MODES)} (or pass out_modes/in_modes)")
    return TT_MODES[size]


def rep_modes(size: int, r: int) -> tuple[int, ...]:
    """The :data:`REP_MODES` of a (size x r) factor; an unknown pair raises ValueError."""
    if (size, r) not in REP_MODES:
        raise ConfigError(f"loretta_rep has no TT factorization of size {size} with r = {r}; "
                          f"supported (size, r): {sorted(REP_MODES)} (or pass modes_a/modes_b)")
    return REP_MODES[(size, r)]


def tt_full(cores: Sequence[torch.Tensor]) -> torch.Tensor:
    """Contract a train G_1 ... G_d (G_k: r_{k-1} x n_k x r_k) to (r_0, n_1, ..., n_d, r_d).
    Each core takes the dtype of the partial product, which autocast may have lowered to bf16."""
    out = cores[0]
    for core in cores[1:]:
        out = torch.tensordot(out, core.to(out.dtype), dims=([-1], [0]))
    return out


def tt_cores(modes: Sequence[int], rank: int, variance: float, factory: dict,
             init: str = "reference") -> nn.ParameterList:
    """Random cores of a TT over ``modes`` with inner ranks ``rank`` (boundary ranks 1) whose
    rebuilt tensor has entries of variance ``variance``, scaled as ``init`` says (module
    docstring; ``zero`` here only draws the equal-std cores, the caller zeroes one)."""
    d = len(modes)
    ranks = [1] + [rank] * (d - 1) + [1]
    if init == "reference":
        stds = [variance ** (1 / (2 * d)) / math.sqrt(ranks[k + 1]) for k in range(d)]
    else:
        stds = [(variance / rank ** (d - 1)) ** (1 / (2 * d))] * d
    return nn.ParameterList(
        nn.Parameter(torch.randn(ranks[k], n, ranks[k + 1], **factory) * stds[k])
        for k, n in enumerate(modes))


def _check_modes(name: str, modes: Sequence[int], size: int) -> tuple[int, ...]:
    modes = tuple(int(n) for n in modes)
    if not modes or any(n < 1 for n in modes) or math.prod(modes) != size:
        raise ConfigError(f"{name}={list(modes)} must be positive sizes with product {size}")
    return modes


class LorettaTT(AdaptedLinear):
    """dW = (alpha / r) reshape(TT over [out_modes, in_modes], O x I), TT rank r.

    The TT splits at the bond between the last output core and the first input core, so
    dW = (alpha / r) L R with L (O x r) the contracted output cores and R (r x I) the input
    cores, and ``delta(x) = (alpha / r) (x R^T) L^T`` costs O(r (O + I)) per example.
    One core group of the d cores (K = 8 for the paper's 4096 x 4096); ``init`` as the module
    docstring (``zero``: the last core starts at zero).
    """

    INITS = ("reference", "zero")

    def __init__(self, base_layer: nn.Linear, r: int = 16, alpha: float = 16.0,
                 out_modes: Sequence[int] | None = None, in_modes: Sequence[int] | None = None,
                 dropout: float = 0.0, init: str = "reference"):
        super().__init__(base_layer, r, alpha, dropout, init)
        n_out, n_in = self.out_features, self.in_features
        self.out_modes = _check_modes("out_modes", out_modes or tt_modes(n_out), n_out)
        self.in_modes = _check_modes("in_modes", in_modes or tt_modes(n_in)[::-1], n_in)
        self.tt = tt_cores(self.out_modes + self.in_modes, self.r, 1.0 / (n_out + n_in),
                           self._factory(), init)
        if init == "zero":
            nn.init.zeros_(self.tt[-1])

    def cores(self) -> tuple[torch.Tensor, ...]:
        return tuple(self.tt)

    def _factors(self) -> tuple[torch.Tensor, torch.Tensor]:
        n = len(self.out_modes)
        L = tt_full(self.tt[:n]).reshape(self.out_features, self.r)
        R = tt_full(self.tt[n:]).reshape(self.r, self.in_features)
        return L, R

    def delta_weight(self) -> torch.Tensor:
        L, R = self._factors()
        return self.scale * (L @ R)

    def delta(self, x: torch.Tensor) -> torch.Tensor:
        L, R = self._factors()
        return self.scale * (x @ R.T) @ L.T

    def extra_repr(self) -> str:
        return f"{super().extra_repr()}, modes={list(self.out_modes)}|{list(self.in_modes)}"


class LorettaRep(AdaptedLinear):
    """``base(x) + (alpha / r) (x A) B`` with A (I x r) and B (r x O) reshapes of two TTs of
    rank ``tt_rank``: dW = (alpha / r) (A B)^T, the published LoRETTA_rep layer.

    A is the row-major reshape of the TT over ``modes_a`` (product I r) to I x r, B that of the
    TT over ``modes_b`` (product r O) to r x O, as the published code reshapes its tensorized
    factors. One core group of A's cores then B's (K = 10 for [16, 16, 8, 4, 4]); ``init`` as
    the module docstring (``zero``: B's last core starts at zero). The published layer applies
    its ``lora_dropout`` (0.05 in its run script) to x before A, as ``dropout`` here.
    """

    INITS = ("reference", "zero")

    def __init__(self, base_layer: nn.Linear, r: int = 8, alpha: float = 16.0,
                 tt_rank: int = 16, modes_a: Sequence[int] | None = None,
                 modes_b: Sequence[int] | None = None, dropout: float = 0.0,
                 init: str = "reference"):
        super().__init__(base_layer, r, alpha, dropout, init)
        if int(tt_rank) < 1:
            raise ConfigError(f"tt_rank must be >= 1, got {tt_rank}")
        n_out, n_in, r, new = self.out_features, self.in_features, self.r, self._factory()
        self.tt_rank = int(tt_rank)
        self.modes_a = _check_modes("modes_a", modes_a or rep_modes(n_in, r), n_in * r)
        self.modes_b = _check_modes("modes_b", modes_b or rep_modes(n_out, r), r * n_out)
        self.tt_a = tt_cores(self.modes_a, self.tt_rank, 1.0 / (n_in + r), new, init)
        self.tt_b = tt_cores(self.modes_b, self.tt_rank, 1.0 / (r + n_out), new, init)
        if init == "zero":
            nn.init.zeros_(self.tt_b[-1])

    def cores(self) -> tuple[torch.Tensor, ...]:
        return (*self.tt_a, *self.tt_b)

    def _factors(self) -> tuple[torch.Tensor, torch.Tensor]:
        A = tt_full(self.tt_a).reshape(self.in_features, self.r)
        B = tt_full(self.tt_b).reshape(self.r, self.out_features)
        return A, B

    def delta_weight(self) -> torch.Tensor:
        A, B = self._factors()
        return self.scale * (A @ B).T

    def delta(self, x: torch.Tensor) -> torch.Tensor:
        A, B = self._factors()
        return self.scale * (x @ A) @ B

    def extra_repr(self) -> str:
        return (f"{super().extra_repr()}, tt_rank={self.tt_rank}, modes_a={list(self.modes_a)}, "
                f"modes_b={list(self.modes_b)}")
