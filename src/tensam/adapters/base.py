"""The common shape of every adapter: a frozen ``nn.Linear`` plus a trainable update dW.

An adapted layer computes ``y = x W^T + b + x dW^T`` with W, b the pre-trained (frozen) weight
and bias and dW (out x in) a multilinear function of the adapter's cores; it never materialises
dW in the forward pass. The cores of one adapted layer are one core group (:mod:`tensam.cores`),
so DAS, BAR and the norm-dynamics metrics treat each adapted matrix as one layer l.

Two options are common to every adapter. ``dropout`` (default 0) drops entries of the adapter's
input x, not of the base path: ``y = x W^T + b + dropout(x) dW^T``, as LoRA and the published
LoRETTA and FLoRA layers do. ``init`` names the initialisation, ``reference`` (the default) being
that of the authors' code; each adapter lists its alternatives (:data:`INITS`).

**Precision.** The cores are created in float32 on a 16-bit (bf16 / fp16) base, in the base's
dtype otherwise: the published LoRETTA and FLoRA layers draw their cores with ``torch.randn`` in
the default float32 and never cast them to the base's dtype, and peft's LoRA upcasts a 16-bit
adapter to float32 (``get_peft_model(autocast_adapter_dtype=True)``). Under autocast the
factorized product runs in the autocast dtype; without it, the adapter's input is cast to the
cores' dtype and its output back to the base output's.
"""

from __future__ import annotations

from collections.abc import Sequence

import torch
import torch.nn.functional as F
from torch import nn

from tensam.errors import ConfigError

#: the dtypes of a base weight whose adapter is created in float32 (see the module docstring)
LOW_PRECISION = (torch.float16, torch.bfloat16)


class AdaptedLinear(nn.Module):
    """``base_layer(x) + delta(x)`` with ``delta(x) = x dW^T``; dW is scaled by alpha / r.

    Subclasses define the cores (:meth:`cores`), dW (:meth:`delta_weight`, for merging and
    tests) and the factorized product (:meth:`delta`).
    """

    #: the values of ``init`` the adapter accepts, ``reference`` (the authors' code) first
    INITS: tuple[str, ...] = ("reference",)

    def __init__(self, base_layer: nn.Linear, r: int, alpha: float, dropout: float = 0.0,
                 init: str = "reference"):
        super().__init__()
        if not isinstance(base_layer, nn.Linear):
            raise TypeError(f"{type(self).__name__} adapts an nn.Linear, got "
                            f"{type(base_layer).__name__}")
        if int(r) < 1:
            raise ConfigError(f"adapter rank r must be >= 1, got {r}")
        self.base_layer = base_layer
        self.r, self.alpha, self.scale = int(r), float(alpha), float(alpha) / int(r)
        self.in_features, self.out_features = base_layer.in_features, base_layer.out_features
        if not 0.0 <= float(dropout) < 1.0:
            raise ConfigError(f"adapter dropout must be in [0, 1), got {dropout}")
        if init not in self.INITS:
            raise ConfigError(f"{type(self).__name__} init={init!r} is not one of "
                              f"{list(self.INITS)}")
        self.dropout, self.init = float(dropout), init

    def _factory(self) -> dict:
        """Device and dtype of new adapter tensors: the base weight's device; float32 on a
        16-bit base, else the base weight's dtype (module docstring)."""
        weight = self.base_layer.weight
        dtype = torch.float32 if weight.dtype in LOW_PRECISION else weight.dtype
        return {"device": weight.device, "dtype": dtype}

    def cores(self) -> Sequence[torch.Tensor]:
        raise NotImplementedError

    def delta_weight(self) -> torch.Tensor:
        """dW, (out_features x in_features), the scale included."""
        raise NotImplementedError

    def delta(self, x: torch.Tensor) -> torch.Tensor:
        """x dW^T through the factors, without forming dW."""
        raise NotImplementedError

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        out = self.base_layer(x)
        if self.dropout:
            x = F.dropout(x, self.dropout, self.training)
        dtype = next(iter(self.cores())).dtype
        if x.dtype != dtype and not torch.is_autocast_enabled(x.device.type):
            x = x.to(dtype)
        return out + self.delta(x).to(out.dtype)

    @torch.no_grad()
    def merged(self) -> nn.Linear:
        """A plain ``nn.Linear`` with weight W + dW and the base bias (for inference)."""
        base = self.base_layer
        out = nn.Linear(self.in_features, self.out_features, bias=base.bias is not None,
                        device=base.weight.device, dtype=base.weight.dtype)
        out.weight.copy_(base.weight + self.delta_weight().to(base.weight.dtype))
        if base.bias is not None:
            out.bias.copy_(base.bias)
        return out

    def extra_repr(self) -> str:
        return f"in_features={self.in_features}, out_features={self.out_features}, r={self.r}, " \
               f"alpha={self.alpha}, dropout={self.dropout}, init={self.init}"
