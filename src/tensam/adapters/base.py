"""The common shape of every adapter: a frozen ``nn.Linear`` plus a trainable update dW.

An adapted layer computes ``y = x W^T + b + x dW^T`` with W, b the pre-trained (frozen) weight
and bias and dW (out x in) a multilinear function of the adapter's cores; it never materialises
dW in the forward pass. The cores of one adapted layer are one core group (:mod:`tensam.cores`),
so DAS, BAR and the norm-dynamics metrics treat each adapted matrix as one layer l.
"""

from __future__ import annotations

from collections.abc import Sequence

import torch
from torch import nn


class AdaptedLinear(nn.Module):
    """``base_layer(x) + delta(x)`` with ``delta(x) = x dW^T``; dW is scaled by alpha / r.

    Subclasses define the cores (:meth:`cores`), dW (:meth:`delta_weight`, for merging and
    tests) and the factorized product (:meth:`delta`).
    """

    def __init__(self, base_layer: nn.Linear, r: int, alpha: float):
        super().__init__()
        if not isinstance(base_layer, nn.Linear):
            raise TypeError(f"{type(self).__name__} adapts an nn.Linear, got "
                            f"{type(base_layer).__name__}")
        if int(r) < 1:
            raise ValueError(f"adapter rank r must be >= 1, got {r}")
        self.base_layer = base_layer
        self.r, self.alpha, self.scale = int(r), float(alpha), float(alpha) / int(r)
        self.in_features, self.out_features = base_layer.in_features, base_layer.out_features

    def _factory(self) -> dict:
        """Device and dtype of new adapter tensors: those of the base weight."""
        weight = self.base_layer.weight
        return {"device": weight.device, "dtype": weight.dtype}

    def cores(self) -> Sequence[torch.Tensor]:
        raise NotImplementedError

    def delta_weight(self) -> torch.Tensor:
        """dW, (out_features x in_features), the scale included."""
        raise NotImplementedError

    def delta(self, x: torch.Tensor) -> torch.Tensor:
        """x dW^T through the factors, without forming dW."""
        raise NotImplementedError

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.base_layer(x) + self.delta(x)

    @torch.no_grad()
    def merged(self) -> nn.Linear:
        """A plain ``nn.Linear`` with weight W + dW and the base bias (for inference)."""
        base = self.base_layer
        out = nn.Linear(self.in_features, self.out_features, bias=base.bias is not None,
                        **self._factory())
        out.weight.copy_(base.weight + self.delta_weight().to(base.weight.dtype))
        if base.bias is not None:
            out.bias.copy_(base.bias)
        return out

    def extra_repr(self) -> str:
        return f"in_features={self.in_features}, out_features={self.out_features}, r={self.r}, " \
               f"alpha={self.alpha}"
