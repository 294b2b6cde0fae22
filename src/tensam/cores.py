"""The cores protocol: how a factorized layer exposes its tensor cores.

The paper's objects are *core groups*: the K cores {G_1, ..., G_K} of one multilinear
reconstruction Phi (Eq. 1), one group per tensorized layer (Appendix A, "multi-layer models").
A module takes part by implementing a single method::

    def cores(self) -> Sequence[torch.Tensor]: ...

returning its K cores in a fixed order. Nothing else is required: optimizers (DAS, BAR) and
metrics (Norm Deviation Q, Cov) find "the cores of each layer" through :func:`core_groups` and
never look at the factorization.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import Protocol, runtime_checkable

import torch
from torch import nn


@runtime_checkable
class Factorized(Protocol):
    """A module whose weight is a multilinear function of its cores (scale-invariant, Eq. 1)."""

    def cores(self) -> Sequence[torch.Tensor]: ...


@dataclass(frozen=True)
class CoreGroup:
    """The K cores of one layer l: {G_{1,l}, ..., G_{K_l,l}}."""

    name: str
    cores: tuple[torch.Tensor, ...]

    @property
    def K(self) -> int:  # noqa: N802 - the paper's symbol
        return len(self.cores)


def core_groups(model: nn.Module) -> list[CoreGroup]:
    """All core groups of ``model``, one per module implementing :class:`Factorized`.

    Groups are returned in ``named_modules`` order; a parameter may belong to one group only.
    """
    groups, seen = [], set()
    for name, module in model.named_modules():
        if not isinstance(module, Factorized) or isinstance(module, type):
            continue
        cores = tuple(module.cores())
        for core in cores:
            if id(core) in seen:
                raise ValueError(f"core of module '{name}' already belongs to another group")
            seen.add(id(core))
        groups.append(CoreGroup(name or type(module).__name__, cores))
    return groups


def as_core_groups(groups) -> list[CoreGroup]:
    """Accept a model, a list of CoreGroup, or a list of lists of tensors (explicit groups)."""
    if isinstance(groups, nn.Module):
        return core_groups(groups)
    out = []
    for i, g in enumerate(groups or []):
        out.append(g if isinstance(g, CoreGroup) else CoreGroup(f"group{i}", tuple(g)))
    return out
