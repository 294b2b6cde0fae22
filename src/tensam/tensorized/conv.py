"""Tensorized 2-D convolutions: CP, Tensor-Ring (TR) and Tensor-Train (TT) kernels.

Each layer is a drop-in ``nn.Conv2d`` replacement (square kernel K, ``stride``, ``padding``,
no bias by default as in ResNets) whose kernel W (Cout, Cin, K, K) is the multilinear
reconstruction Phi(G_1, ..., G_d) of its d cores (Eq. 1): ``cores()`` returns them, so every
tensorized conv is ONE core group of :mod:`tensam.cores`. The forward pass rebuilds W from the
current cores by a short chain of matmuls (nothing is cached: the cores change every step) and
runs one ``F.conv2d``.

Initialization (after Pan et al., 2022, the paper's [53]): the rebuilt kernel gets He's
variance Var(W) = 2 / (Cin K^2). With i.i.d. N(0, s_k^2) core entries, an entry of W is a sum
over P index paths (the contracted rank indices) of products of d entries, one from each core.
Two different paths differ in at least one zero-mean independent factor, so the products are
uncorrelated and Var(W) = P prod_k s_k^2. Spreading the variance evenly over the cores,

    s_k^2 = (2 / (Cin K^2) / P)^(1/d)   for every k,

with P = R for CP (d = 4), P = r^d for a ring of d cores of rank r, P = r1 r2 for TT (d = 3).
"""

from __future__ import annotations

import math
from collections.abc import Sequence

import torch
import torch.nn.functional as F
from torch import nn

from tensam.errors import ConfigError
from tensam.tensorized.cp import cp_to_tensor

#: Channel tensorization of Table 8 (Appendix B): width -> modes, product = width.
CHANNEL_MODES: dict[int, tuple[int, ...]] = {3: (3,), 16: (4, 2, 2), 32: (4, 4, 2),
                                             64: (4, 4, 4)}


def channel_modes(width: int) -> tuple[int, ...]:
    """The tensorization of ``width`` channels from :data:`CHANNEL_MODES` (Table 8)."""
    if width not in CHANNEL_MODES:
        raise ConfigError(f"no channel tensorization rule for width {width}: Table 8 covers "
                          f"{sorted(CHANNEL_MODES)}; pass in_modes/out_modes explicitly")
    return CHANNEL_MODES[width]


def _merge(cores: Sequence[torch.Tensor]) -> torch.Tensor:
    """Contract consecutive ring cores (r_k, n_k, r_{k+1}) into one (r_a, prod n_k, r_b)."""
    out = cores[0]
    for core in cores[1:]:
        r_a, n, r = out.shape
        out = (out.reshape(r_a * n, r) @ core.reshape(r, -1)).reshape(r_a, -1, core.shape[2])
    return out


def tr_to_tensor(cores: Sequence[torch.Tensor]) -> torch.Tensor:
    """W[i_1, ..., i_d] = trace(G_1[:, i_1, :] G_2[:, i_2, :] ... G_d[:, i_d, :]), d >= 2.

    Cores G_k have shape (r_k, n_k, r_{k+1}) with r_{d+1} = r_1 (Zhao et al., 2016). The ring
    is cut into two arcs of balanced size, each arc is merged by a chain of matmuls into
    A (r_1, N_A, r_m) and B (r_m, N_B, r_1), and one (N_A x r_1 r_m) @ (r_1 r_m x N_B) matmul
    closes the ring: W[a, b] = sum_{p, q} A[p, a, q] B[q, b, p].
    """
    if len(cores) < 2:
        raise ConfigError(f"tr_to_tensor needs at least 2 cores, got {len(cores)}")
    sizes = [c.shape[1] for c in cores]
    m = min(range(1, len(cores)), key=lambda j: math.prod(sizes[:j]) + math.prod(sizes[j:]))
    a, b = _merge(cores[:m]), _merge(cores[m:])
    out = a.permute(1, 0, 2).reshape(a.shape[1], -1) @ b.permute(2, 0, 1).reshape(-1, b.shape[1])
    return out.reshape(sizes)


def he_core_std(fan_in: int, paths: int, num_cores: int) -> float:
    """s = (2 / fan_in / P)^(1 / 2d): i.i.d. N(0, s^2) entries of d cores whose product sums P
    paths give the rebuilt weight He's variance 2 / fan_in (see the module docstring)."""
    return (2.0 / fan_in / paths) ** (1.0 / (2 * num_cores))


class _TensorizedConv2d(nn.Module):
    """Common part: ``forward(x) = F.conv2d(x, self.kernel(), ...)``, cores in ``factors``."""

    def __init__(self, in_channels: int, out_channels: int, kernel_size: int, stride: int,
                 padding: int, bias: bool):
        super().__init__()
        self.in_channels, self.out_channels = int(in_channels), int(out_channels)
        self.kernel_size, self.stride, self.padding = int(kernel_size), int(stride), int(padding)
        self.fan_in = self.in_channels * self.kernel_size**2
        self.bias = nn.Parameter(torch.zeros(self.out_channels)) if bias else None

    def _init_factors(self, shapes: Sequence[tuple[int, ...]], paths: int) -> None:
        self.core_std = he_core_std(self.fan_in, paths, len(shapes))
        self.factors = nn.ParameterList(nn.Parameter(torch.empty(s)) for s in shapes)
        self.reset_parameters()

    def reset_parameters(self) -> None:
        """Draw every core entry from N(0, core_std^2) (He variance of the kernel); zero bias."""
        with torch.no_grad():
            for core in self.factors:
                core.normal_(0.0, self.core_std)
            if self.bias is not None:
                self.bias.zero_()

    def cores(self) -> tuple[torch.Tensor, ...]:
        return tuple(self.factors)

    def kernel(self) -> torch.Tensor:
        raise NotImplementedError

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return F.conv2d(x, self.kernel(), self.bias, self.stride, self.padding)

    def extra_repr(self) -> str:
        return (f"{self.in_channels}, {self.out_channels}, kernel_size={self.kernel_size}, "
                f"stride={self.stride}, padding={self.padding}, bias={self.bias is not None}")


def _positive(name: str, value: int) -> int:
    if int(value) < 1:
        raise ConfigError(f"{name} must be >= 1, got {value}")
    return int(value)


class CPConv2d(_TensorizedConv2d):
    """Conv2d with a rank-R 4-order CP kernel W = sum_r a_r o b_r o c_r o d_r.

    Factors A (Cout, R), B (Cin, R), C (K, R), D (K, R) (in this order, the K = 4 cores):
    W[o, i, h, w] = sum_r A[o, r] B[i, r] C[h, r] D[w, r]. Init: P = R paths, d = 4.
    """

    def __init__(self, in_channels: int, out_channels: int, kernel_size: int, rank: int,
                 stride: int = 1, padding: int = 0, bias: bool = False):
        super().__init__(in_channels, out_channels, kernel_size, stride, padding, bias)
        self.rank = _positive("rank", rank)
        k = self.kernel_size
        self._init_factors([(self.out_channels, self.rank), (self.in_channels, self.rank),
                            (k, self.rank), (k, self.rank)], paths=self.rank)

    def kernel(self) -> torch.Tensor:
        return cp_to_tensor(list(self.factors))

    def extra_repr(self) -> str:
        return f"{super().extra_repr()}, rank={self.rank}"


class TRConv2d(_TensorizedConv2d):
    """Conv2d with a Tensor-Ring kernel over the tensorization of Table 8.

    The modes are (in_modes..., K^2, out_modes...), e.g. (4, 2, 2, 9, 4, 4, 2) for 16 -> 32
    channels, with one ring core (r, n, r) per mode (the d cores, in this order). The ring
    tensor T = tr_to_tensor(cores) maps to the kernel as

        W[o, i, h, w] = T[i_1, ..., i_a, h K + w, o_1, ..., o_b],

    where i = (i_1, ..., i_a) and o = (o_1, ..., o_b) are the C-order (row-major) multi-indices
    of the input and output channel: T is reshaped to (in_modes..., K, K, out_modes...) and
    permuted to (out_modes..., in_modes..., K, K), i.e. (Cout, Cin, K, K). The channel modes
    default to :func:`channel_modes` of each width. Init: P = r^d paths.
    """

    def __init__(self, in_channels: int, out_channels: int, kernel_size: int, rank: int,
                 stride: int = 1, padding: int = 0, bias: bool = False,
                 in_modes: Sequence[int] | None = None, out_modes: Sequence[int] | None = None):
        super().__init__(in_channels, out_channels, kernel_size, stride, padding, bias)
        self.rank = _positive("rank", rank)
        self.in_modes = tuple(in_modes) if in_modes is not None else channel_modes(in_channels)
        self.out_modes = (tuple(out_modes) if out_modes is not None
                          else channel_modes(out_channels))
        for name, modes, width in (("in_modes", self.in_modes, self.in_channels),
                                   ("out_modes", self.out_modes, self.out_channels)):
            if math.prod(modes) != width:
                raise ConfigError(f"{name}={list(modes)} must multiply to {width} channels")
        self.modes = (*self.in_modes, self.kernel_size**2, *self.out_modes)
        r = self.rank
        self._init_factors([(r, n, r) for n in self.modes], paths=r ** len(self.modes))

    def kernel(self) -> torch.Tensor:
        a, b, k = len(self.in_modes), len(self.out_modes), self.kernel_size
        t = tr_to_tensor(list(self.factors)).reshape(*self.in_modes, k, k, *self.out_modes)
        outs, ins = range(a + 2, a + 2 + b), range(a)
        w = t.permute(*outs, *ins, a, a + 1)  # (out_modes..., in_modes..., K, K)
        return w.reshape(self.out_channels, self.in_channels, k, k)

    def extra_repr(self) -> str:
        return f"{super().extra_repr()}, rank={self.rank}, modes={self.modes}"


class TTConv2d(_TensorizedConv2d):
    """Conv2d with a Tensor-Train kernel over the modes (Cout, K^2, Cin), TT-ranks (1, r1, r2, 1).

    Cores U (Cout, r1), M (r1, K^2, r2), V (r2, Cin) (in this order):
    W[o, i, h, w] = sum_{a, b} U[o, a] M[a, h K + w, b] V[b, i]. ``rank`` is r1 = r2 or the
    pair (r1, r2); r1 = Cout, r2 = Cin represent every kernel (TT-SVD). Init: P = r1 r2, d = 3.
    """

    def __init__(self, in_channels: int, out_channels: int, kernel_size: int,
                 rank: int | Sequence[int], stride: int = 1, padding: int = 0,
                 bias: bool = False):
        super().__init__(in_channels, out_channels, kernel_size, stride, padding, bias)
        ranks = (rank, rank) if isinstance(rank, int) else tuple(rank)
        if len(ranks) != 2:
            raise ConfigError(f"TT rank must be an int or a pair (r1, r2), got {rank!r}")
        r1, r2 = self.rank = (_positive("rank[0]", ranks[0]), _positive("rank[1]", ranks[1]))
        self._init_factors([(self.out_channels, r1), (r1, self.kernel_size**2, r2),
                            (r2, self.in_channels)], paths=r1 * r2)

    def kernel(self) -> torch.Tensor:
        u, m, v = self.factors
        k = self.kernel_size
        t = (u @ m.reshape(m.shape[0], -1)).reshape(-1, m.shape[2]) @ v  # (Cout K^2, Cin)
        return t.reshape(self.out_channels, k, k, self.in_channels).permute(0, 3, 1, 2)

    def extra_repr(self) -> str:
        return f"{super().extra_repr()}, rank={self.rank}"
