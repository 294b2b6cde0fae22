"""FLoRA (Si et al., 2024) on a linear layer: the Tucker-2 update dW = (alpha / r) A G B^T.

Appendix B, "Finetuning with FLoRA": for a pre-trained O x I weight, A (O x r), a core
G (r x r) and B (I x r) -- a three-core tensorized model (K = 3), r^2 parameters more than
LoRA of the same rank.
"""

from __future__ import annotations

import math

import torch
from torch import nn

from tensam.adapters.base import AdaptedLinear


class FLoRALinear(AdaptedLinear):
    """``base(x) + (alpha / r) ((x B) G^T) A^T``, i.e. x (W + dW)^T with dW = (alpha/r) A G B^T.

    Cores ``(A, G, B)``, one group. Initialisation: G = 0, so dW = 0 and the adapted model
    computes exactly the pre-trained function; A and B get torch's ``nn.Linear`` default
    (Kaiming-uniform with a = sqrt(5), i.e. U(-1/sqrt(fan_in), 1/sqrt(fan_in))) as the weights
    of the maps they apply: B^T as a map I -> r (fan_in = I), A as a map r -> O (fan_in = r).
    With G = 0 the gradient reaches G first (those of A and B are multiplied by G); DAS gives
    the zero core lambda = 0 (its eps rule), so scaling starts once G has moved.
    """

    def __init__(self, base_layer: nn.Linear, r: int = 8, alpha: float = 16.0):
        super().__init__(base_layer, r, alpha)
        new = self._factory()
        self.A = nn.Parameter(torch.empty(self.out_features, self.r, **new))
        self.G = nn.Parameter(torch.zeros(self.r, self.r, **new))
        self.B = nn.Parameter(torch.empty(self.in_features, self.r, **new))
        nn.init.kaiming_uniform_(self.A, a=math.sqrt(5))
        nn.init.kaiming_uniform_(self.B.T, a=math.sqrt(5))  # fan_in of the (r x I) map = I

    def cores(self) -> tuple[torch.Tensor, ...]:
        return self.A, self.G, self.B

    def delta_weight(self) -> torch.Tensor:
        return self.scale * (self.A @ self.G @ self.B.T)

    def delta(self, x: torch.Tensor) -> torch.Tensor:
        return self.scale * ((x @ self.B) @ self.G.T) @ self.A.T
