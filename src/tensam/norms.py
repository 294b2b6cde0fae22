"""Vectorised per-core squared norms ||G_k||_F^2 and ||g_k||_F^2 over many core groups.

Every scaling optimizer (DAS, nBAR, oBAR) and every norm-dynamics metric needs the same two
vectors, one entry per core, plus "which layer does core i belong to". :class:`CoreIndex`
flattens the groups once; :meth:`CoreIndex.squared_norms` then costs one ``_foreach_norm`` over
all cores, with no Python loop over parameters.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch

from tensam.cores import CoreGroup


def squared_norms(tensors: list[torch.Tensor]) -> torch.Tensor:
    """Stacked ||t||_F^2 of each tensor (float32 or wider), one ``_foreach_norm`` call."""
    if not tensors:
        return torch.zeros(0)
    norms = torch._foreach_norm(tensors)
    return torch.stack(norms).to(torch.promote_types(norms[0].dtype, torch.float32)).square()


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
        if self.cores:
            device = self.cores[0].device
            self.K, self.layer = self.K.to(device), self.layer.to(device)
            self.inv_K = self.inv_K.to(device)

    def __len__(self) -> int:
        return len(self.cores)

    @property
    def num_layers(self) -> int:
        return len(self.groups)

    def layer_sum(self, x: torch.Tensor) -> torch.Tensor:
        """sum_{k in layer l} x_k for every layer l (segment sum)."""
        return torch.zeros(self.num_layers, dtype=x.dtype, device=x.device).index_add_(
            0, self.layer, x
        )

    def layer_mean(self, x: torch.Tensor) -> torch.Tensor:
        """(1/K_l) sum_{k in layer l} x_k, broadcast back to one entry per core."""
        return (self.layer_sum(x) / self.K.to(x.dtype))[self.layer]

    def grads(self) -> list[torch.Tensor]:
        """g_k for every core (zeros where a core has no gradient)."""
        return [c.grad if c.grad is not None else torch.zeros_like(c) for c in self.cores]

    @torch.no_grad()
    def core_sq_norms(self) -> torch.Tensor:
        """||G_k||_F^2 for every core."""
        return squared_norms(self.cores)

    def grad_sq_norms(self) -> torch.Tensor:
        """||g_k||_F^2 for every core (0 where a core has no gradient)."""
        return squared_norms(self.grads())

    @torch.no_grad()
    def sq_norms(self) -> tuple[torch.Tensor, torch.Tensor]:
        """(||G_k||_F^2, ||g_k||_F^2) for every core from a single ``_foreach_norm`` call."""
        both = squared_norms(self.cores + self.grads())
        return both[: len(self)], both[len(self):]
