"""FLoRA (Si et al., 2024) on a linear layer: the Tucker-2 update dW = (alpha / r) A G B^T.

Appendix B, "Finetuning with FLoRA": for a pre-trained O x I weight, A (O x r), a core
G (r x r) and B (I x r) -- a three-core tensorized model (K = 3), r^2 parameters more than
LoRA of the same rank.

The official layer (SJTU-DeepVisionLab/FLoRA, ``flora/layers.py``, ``FLoRALayer``) holds the
core ``param_G`` (r x r) and one factor per dimension, ``param_0`` (I x r) and ``param_1``
(O x r), and rebuilds dW = param_1 G^T param_0^T: our A = param_1, B = param_0 and G its
transpose (a relabelling; G starts at zero either way).
"""

from __future__ import annotations

import math

import torch
from torch import nn

from tensam.adapters.base import AdaptedLinear


class FLoRALinear(AdaptedLinear):
    """``base(x) + (alpha / r) ((x B) G^T) A^T``, i.e. x (W + dW)^T with dW = (alpha/r) A G B^T.

    Cores ``(A, G, B)``, one group. G starts at zero under either ``init``, so dW = 0 and the
    adapted model computes exactly the pre-trained function; the factors:

    * ``reference`` (the official layer's ``init_parameters``): ``kaiming_normal_`` with
      a = sqrt(3) on each (dim x r) factor tensor as stored, A (O x r) and B (I x r). torch's
      fan_in of a 2-D tensor is its second size, r, and the gain sqrt(2 / (1 + a^2)) =
      1/sqrt(2), so both factors are N(0, 1 / (2 r)): norms sqrt(O / 2) and sqrt(I / 2)
      (22.6 each on a 1024 x 1024 layer).
    * ``linear`` (this package's former default): torch's ``nn.Linear`` init (Kaiming-uniform,
      a = sqrt(5): U(-1/sqrt(fan_in), 1/sqrt(fan_in))) of the maps the factors apply, B^T as a
      map I -> r (fan_in = I) and A as a map r -> O (fan_in = r): std 1/sqrt(3 I) and
      1/sqrt(3 r) (0.018 and 0.204 at I = 1024, r = 8), unbalanced factors.

    With G = 0 the gradient reaches G first (those of A and B are multiplied by G); DAS gives
    the zero core lambda = 0 (its eps rule), so scaling starts once G has moved.
    """

    INITS = ("reference", "linear")

    def __init__(self, base_layer: nn.Linear, r: int = 8, alpha: float = 16.0,
                 dropout: float = 0.0, init: str = "reference"):
        super().__init__(base_layer, r, alpha, dropout, init)
        new = self._factory()
        self.A = nn.Parameter(torch.empty(self.out_features, self.r, **new))
        self.G = nn.Parameter(torch.zeros(self.r, self.r, **new))
        self.B = nn.Parameter(torch.empty(self.in_features, self.r, **new))
        if init == "reference":
            nn.init.kaiming_normal_(self.A, a=math.sqrt(3))
            nn.init.kaiming_normal_(self.B, a=math.sqrt(3))
        else:
            nn.init.kaiming_uniform_(self.A, a=math.sqrt(5))
            nn.init.kaiming_uniform_(self.B.T, a=math.sqrt(5))  # fan_in of the (r x I) map = I

    def cores(self) -> tuple[torch.Tensor, ...]:
        return self.A, self.G, self.B

    def delta_weight(self) -> torch.Tensor:
        return self.scale * (self.A @ self.G @ self.B.T)

    def delta(self, x: torch.Tensor) -> torch.Tensor:
        return self.scale * ((x @ self.B) @ self.G.T) @ self.A.T
