"""The cores protocol: how a factorized layer exposes its tensor cores.

The paper's objects are *core groups*: the K cores {G_1, ..., G_K} of one multilinear
reconstruction Phi (Eq. 1), one group per tensorized layer (Appendix A, "multi-layer models").
A module takes part by implementing a single method::

    def cores(self) -> Sequence[torch.Tensor]: ...

returning its K cores in a fixed order, or, the common idiom, holds them in an attribute
``self.cores = nn.ParameterList([...])`` (a sequence of parameters instead of a method). A class
one cannot edit (a third-party layer, e.g. peft's LoRA ``Linear``) takes part through
:func:`register_cores`. Nothing else is required: optimizers (DAS, BAR) and metrics (Norm
Deviation Q, Cov) find "the cores of each layer" through :func:`core_groups` and never look at
the factorization.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Protocol, runtime_checkable

import torch
from torch import nn

from tensam.errors import ConfigError


@runtime_checkable
class Factorized(Protocol):
    """A module whose weight is a multilinear function of its cores (scale-invariant, Eq. 1)."""

    def cores(self) -> Sequence[torch.Tensor]: ...


#: module class -> the function giving the cores of its instances (see :func:`register_cores`)
_REGISTERED: dict[type, Callable[[nn.Module], Sequence[torch.Tensor]]] = {}


def register_cores(module_type: type, cores: Callable[[nn.Module], Sequence[torch.Tensor]]):
    """Make every instance of ``module_type`` (and of its subclasses) a core group whose cores are
    ``cores(module)``: the protocol for classes that cannot define ``cores()`` themselves."""
    _REGISTERED[module_type] = cores


def cores_of(module: nn.Module) -> tuple[torch.Tensor, ...] | None:
    """The cores a module exposes: those of a :func:`register_cores` function for its class,
    ``module.cores()``, or the parameters of a ``cores`` attribute that is an
    ``nn.ParameterList`` (or a sequence of tensors); None if it has none."""
    registered = next((_REGISTERED[c] for c in type(module).__mro__ if c in _REGISTERED), None)
    cores = getattr(module, "cores", None)
    if registered is not None:
        found = tuple(registered(module))
    elif cores is None or isinstance(module, type):
        return None
    elif isinstance(cores, (nn.ParameterList, list, tuple)):
        found = tuple(cores)
    elif callable(cores) and not isinstance(cores, nn.Module):
        found = tuple(cores())
    else:
        return None
    if not all(isinstance(c, torch.Tensor) for c in found):
        raise TypeError(f"{type(module).__name__}.cores must give tensors, got "
                        f"{[type(c).__name__ for c in found]}")
    return found


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
        cores = cores_of(module)
        if cores is None:
            continue
        for core in cores:
            if id(core) in seen:
                raise ConfigError(f"core of module '{name}' already belongs to another group")
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
