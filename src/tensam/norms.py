"""Vectorised per-core squared norms ||G_k||_F^2 and ||g_k||_F^2 over many core groups.

Every scaling optimizer (DAS, nBAR, oBAR) and every norm-dynamics metric needs the same two
vectors, one entry per core, plus "which layer does core i belong to". :class:`CoreIndex`
lists the cores of all groups once; :meth:`CoreIndex.sq_norms` then costs one ``_foreach_norm``
over all cores, with no Python loop over parameters.

On CPU a ``_foreach_*`` op still dispatches once per tensor, so with hundreds of small cores the
cost grows with their number. :class:`FlatCoreIndex` is the opt-in alternative (a scaling
optimizer's ``flatten=True``): it re-homes the cores into one contiguous buffer, after which
norms and scalings are a fixed number of ops on one tensor, whatever the number of cores
(``scripts/bench_optim.py`` measures both, ``das`` and ``das-flat``).
"""

from __future__ import annotations

from dataclasses import dataclass

import torch

from tensam.cores import CoreGroup
from tensam.errors import ConfigError

LOW_PRECISION = (torch.float16, torch.bfloat16)


def squared_norms(tensors: list[torch.Tensor]) -> torch.Tensor:
    """Stacked ||t||_F^2 of each tensor (float32 or wider), one ``_foreach_norm`` call."""
    if not tensors:
        return torch.zeros(0)
    stacked = torch.stack(torch._foreach_norm(tensors))
    if stacked.dtype in LOW_PRECISION:  # a cast is a dispatch: only where one is needed
        stacked = stacked.float()
    return stacked.square()


@dataclass
class CoreIndex:
    """Flat view of core groups: ``cores[i]`` belongs to layer ``layer[i]``."""

    groups: list[CoreGroup]

    def __post_init__(self):
        self.cores = [c for g in self.groups for c in g.cores]
        self.names = [g.name for g in self.groups]
        self.K = torch.tensor([g.K for g in self.groups], dtype=torch.float32)
        self.layer = torch.repeat_interleave(torch.arange(len(self.groups)), self.K.long())
        self.inv_K = (1.0 / self.K.double())[self.layer]  # 1/K_l for the layer of each core
        self.to(self.cores[0].device if self.cores else torch.device("cpu"))

    @property
    def device(self) -> torch.device:
        return self.K.device

    def to(self, device: torch.device) -> CoreIndex:
        """Keep the index tensors (K, layer, 1/K) on the cores' device."""
        self.K, self.layer, self.inv_K = (t.to(device) for t in (self.K, self.layer, self.inv_K))
        self._inv_K_cache: dict[torch.dtype, torch.Tensor] = {}
        return self

    def __len__(self) -> int:
        return len(self.cores)

    @property
    def num_layers(self) -> int:
        return len(self.groups)

    def inv_K_as(self, dtype: torch.dtype) -> torch.Tensor:  # noqa: N802 - the paper's K
        """1/K_l for the layer of each core, in ``dtype`` (cached)."""
        if dtype not in self._inv_K_cache:
            self._inv_K_cache[dtype] = self.inv_K.to(dtype)
        return self._inv_K_cache[dtype]

    def layer_sum(self, x: torch.Tensor) -> torch.Tensor:
        """sum_{k in layer l} x_k for every layer l (segment sum)."""
        return torch.zeros(self.num_layers, dtype=x.dtype, device=x.device).index_add_(
            0, self.layer, x
        )

    def layer_mean(self, x: torch.Tensor) -> torch.Tensor:
        """(1/K_l) sum_{k in layer l} x_k, broadcast back to one entry per core."""
        return self.layer_sum(x).index_select(0, self.layer) * self.inv_K_as(x.dtype)

    def grads(self) -> list[torch.Tensor]:
        """g_k for every core (zeros where a core has no gradient)."""
        return [c.grad if c.grad is not None else torch.zeros_like(c) for c in self.cores]

    @torch.no_grad()
    def core_sq_norms(self) -> torch.Tensor:
        """||G_k||_F^2 for every core (no gradient needed)."""
        return squared_norms(self.cores)

    def grad_sq_norms(self) -> torch.Tensor:
        """||g_k||_F^2 for every core (0 where a core has no gradient)."""
        return self.sq_norms()[1]

    @torch.no_grad()
    def sq_norms(self) -> tuple[torch.Tensor, torch.Tensor]:
        """(||G_k||_F^2, ||g_k||_F^2) for every core, one ``_foreach_norm`` call."""
        both = squared_norms(self.cores + self.grads())
        return both[: len(self)], both[len(self):]

    # -- the layout the scaling optimizers update -------------------------------------------

    def lay_out(self) -> None:
        """(Re)build the layout after the cores moved (device, dtype, memory format): nothing to
        do for separate cores."""

    def zeros(self) -> tuple[list[torch.Tensor], list[torch.Tensor]]:
        """Zeros shaped like the cores (a residual buffer): (one per core, the same tensors as
        :meth:`operands` lists them)."""
        zeros = [torch.zeros_like(c) for c in self.cores]
        return zeros, zeros

    def operands(self, lam: torch.Tensor) -> tuple[list[torch.Tensor], list[torch.Tensor]]:
        """(cores, lambda) as ``_foreach`` operands: one entry per core."""
        dtype = self.cores[0].dtype
        return self.cores, list((lam if lam.dtype == dtype else lam.to(dtype)).unbind())


class FlatCoreIndex(CoreIndex):
    """A :class:`CoreIndex` whose cores live in one contiguous buffer (opt-in: a scaling
    optimizer's ``flatten=True``).

    :meth:`lay_out` re-homes the cores: every core's ``.data`` becomes a view of ``buffer``, so the
    parameter objects (and the base optimizer's references to them) are unchanged. It needs leaf,
    contiguous cores of one dtype and device (a channels_last kernel would lose its layout, so it
    is refused). Norms are then one segment sum over the buffer and the gathered gradients, and a
    scaling is one op on the buffer. Gradients stay ordinary tensors: views would make autograd
    accumulate into them in place, which on CPU costs more per core than gathering them once per
    step.
    """

    def __post_init__(self):
        super().__post_init__()
        self.lay_out()

    @torch.no_grad()
    def lay_out(self) -> None:
        cores = self.cores
        if not cores:
            return
        bad = next((g.name for g in self.groups for c in g.cores
                    if not c.is_leaf or not c.is_contiguous() or c.dtype != cores[0].dtype
                    or c.device != cores[0].device), None)
        if bad is not None:
            raise ConfigError(f"flatten=true needs leaf, contiguous cores of one dtype and "
                              f"device; those of {bad!r} are not (use flatten=false)")
        self.to(cores[0].device)
        numels = [c.numel() for c in cores]
        buffer = torch.cat([c.reshape(-1) for c in cores])
        for c, data in zip(cores, buffer.split(numels), strict=True):
            c.data = data.view_as(c)
        self.buffer, self._numels = buffer, numels
        self._lengths = torch.tensor(numels, device=buffer.device)
        # gradients are gathered by concatenating cores of equal trailing shape along dim 0 (one
        # cat per shape, no per-core reshape); `_grad_order` lists the cores in that order
        by_shape: dict[tuple, list[int]] = {}
        for i, c in enumerate(cores):
            by_shape.setdefault(tuple(c.shape[1:]) if c.dim() else None, []).append(i)
        self._grad_groups = list(by_shape.items())
        order = [i for _, idx in self._grad_groups for i in idx]
        self._grad_order_inv = torch.argsort(torch.tensor(order, device=buffer.device))
        self._lengths2 = torch.cat([self._lengths, self._lengths[order]])  # cores, then grads

    def _gathered_grads(self) -> list[torch.Tensor]:
        """All core gradients as flat tensors, in ``_grad_groups`` order."""
        grads = self.grads()
        return [torch.cat([grads[i] for i in idx]).view(-1) if shape is not None
                else torch.stack([grads[i] for i in idx]) for shape, idx in self._grad_groups]

    def per_core(self, x: torch.Tensor) -> list[torch.Tensor]:
        """Split a flat (n,) tensor into per-core views shaped like the cores."""
        return [v.view_as(c) for v, c in zip(x.split(self._numels), self.cores, strict=True)]

    def expand(self, x: torch.Tensor) -> torch.Tensor:
        """A per-core vector repeated over each core's elements."""
        return x.repeat_interleave(self._lengths, output_size=self.buffer.numel())

    @torch.no_grad()
    def core_sq_norms(self) -> torch.Tensor:
        buf = self.buffer.float() if self.buffer.dtype in LOW_PRECISION else self.buffer
        return torch.segment_reduce(buf.square(), "sum", lengths=self._lengths)

    @torch.no_grad()
    def sq_norms(self) -> tuple[torch.Tensor, torch.Tensor]:
        """One segment sum over the buffer and the gathered gradients."""
        flat = torch.cat([self.buffer, *self._gathered_grads()])
        flat = flat.float() if flat.dtype in LOW_PRECISION else flat
        sq = torch.segment_reduce(flat.square(), "sum", lengths=self._lengths2)
        return sq[: len(self)], sq[len(self):].index_select(0, self._grad_order_inv)

    def zeros(self) -> tuple[list[torch.Tensor], list[torch.Tensor]]:
        flat = torch.zeros_like(self.buffer)
        return self.per_core(flat), [flat]

    def operands(self, lam: torch.Tensor) -> tuple[list[torch.Tensor], list[torch.Tensor]]:
        return [self.buffer], [self.expand(lam.to(self.buffer.dtype))]
