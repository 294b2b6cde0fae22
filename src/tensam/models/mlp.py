"""A small multilayer perceptron with optional CP-factorized hidden layers and BatchNorm."""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence

from torch import nn

from tensam.tensorized import CPLinear


def two_factors(n: int) -> tuple[int, int]:
    """n = a b with a <= b as close as possible (the tensorization of a layer width)."""
    a = max(d for d in range(1, math.isqrt(n) + 1) if n % d == 0)
    return a, n // a


def decay_groups(model: nn.Module, base_cfg: Mapping) -> list[dict]:
    """Two param groups: weights and cores with the base weight decay, biases and norm layers
    without (the usual exclusion); for a model's ``param_groups`` hook."""
    no_decay = {id(p) for m in model.modules()
                if isinstance(m, (nn.modules.batchnorm._NormBase, nn.LayerNorm, nn.GroupNorm))
                for p in m.parameters(recurse=False)}
    no_decay |= {id(p) for n, p in model.named_parameters() if n.endswith("bias")}
    params = [p for p in model.parameters() if p.requires_grad]
    return [{"params": [p for p in params if id(p) not in no_decay]},
            {"params": [p for p in params if id(p) in no_decay], "weight_decay": 0.0}]


class MLP(nn.Module):
    """input -> [Linear or CPLinear(rank) -> BatchNorm1d? -> ReLU] x len(hidden) -> Linear.

    With ``rank`` set, each hidden layer is a :class:`~tensam.tensorized.CPLinear` over the
    two-factor tensorization of its input and output widths: one core group of K = 4.
    ``decay_biases_and_norms=False`` keeps biases and BatchNorm out of weight decay.
    """

    def __init__(self, input_shape: Sequence[int], num_classes: int,
                 hidden: Sequence[int] = (16,), rank: int | None = None,
                 batchnorm: bool = False, decay_biases_and_norms: bool = True):
        super().__init__()
        layers: list[nn.Module] = [nn.Flatten()]
        width = math.prod(input_shape)
        for h in hidden:
            layers.append(CPLinear(two_factors(width), two_factors(h), rank) if rank
                          else nn.Linear(width, h))
            if batchnorm:
                layers.append(nn.BatchNorm1d(h))
            layers.append(nn.ReLU())
            width = h
        layers.append(nn.Linear(width, num_classes))
        self.net = nn.Sequential(*layers)
        self.decay_biases_and_norms = decay_biases_and_norms

    def forward(self, x):
        return self.net(x)

    def param_groups(self, base_cfg: Mapping) -> list:
        if self.decay_biases_and_norms:
            return [p for p in self.parameters() if p.requires_grad]
        return decay_groups(self, base_cfg)
