"""Balancedness-Aware Regularization: nBAR and oBAR (Li, Zhang & He, 2024, Algorithms 2 and 3).

Both act on two-factor groups (x, y) -- the two cores of a module whose ``cores()`` returns
``(x, y)``, e.g. a LoRA pair X Y^T -- and rescale them "in the same manner as weight decay"
(Appendix A.6) before the base optimizer update (Algorithm 2/3, line 11)::

    x <- (1 + s alpha_t eta_t) x,    y <- (1 - s alpha_t eta_t) y,    s in {+1, -1},

i.e. lambda_x = s alpha_t eta_t and lambda_y = -s alpha_t eta_t in the shared
:class:`~tensam.optim.base.ScalingOptimizer` (G_k <- G_k + lambda_k G_k^(t) - eta update_k).
The sign s is chosen per core group (BAR "can be applied individually on each LoRA layer",
Section 5.2):

* nBAR (Algorithm 2, lines 4-9): s = +1 if ||g_x|| >= ||g_y||, else -1 (gradient norms);
* oBAR (Algorithm 3, lines 4-9): s = -1 if ||x|| >= ||y||, else +1 (factor norms).

alpha_t is ``alpha`` (the paper's mu_0, Tables 6, 8, 11) under a constant, linear or cosine
schedule (Section 5.2, "Schedule of alpha_t"; linear decay to 0 by default); eta_t is each
core's current learning rate.
The paper defines BAR for two variables only, so a core group with K != 2 cores is rejected.
"""

from __future__ import annotations

import torch

from tensam.errors import ConfigError
from tensam.optim.base import ScalingOptimizer
from tensam.optim.schedules import check_schedule, scheduled


class BAR(ScalingOptimizer):
    """Shared part of nBAR and oBAR: lambda = +-alpha_t eta_t on the (x, y) cores of each group.

    Subclasses define :meth:`x_grows`, the per-group sign test of Algorithm 2 or 3, line 4.
    """

    def __init__(self, base, groups, alpha: float = 0.5, alpha_schedule: str = "linear",
                 total_steps: int | None = None, compensated: bool = True,
                 flatten: bool = False):
        if alpha < 0:
            raise ConfigError(f"alpha must be >= 0, got {alpha}")
        super().__init__(base, groups, compensated=compensated, flatten=flatten)
        for group in self.index.groups:
            if group.K != 2:
                raise ConfigError(
                    f"{type(self).__name__} needs core groups of K = 2 factors (x, y), but group "
                    f"{group.name!r} has K = {group.K}; BAR (Algorithms 2-3) is defined for two "
                    f"variables only")
        check_schedule(alpha_schedule, total_steps)
        self.alpha, self.alpha_schedule, self.total_steps = alpha, alpha_schedule, total_steps
        # +1 for x (first core of a group), -1 for y (second core)
        self._role = torch.tensor([1.0, -1.0]).repeat(self.index.num_layers)

    def x_grows(self) -> torch.Tensor:
        """Per core group: True where x is scaled up and y down (Algorithm 2/3, line 4)."""
        raise NotImplementedError

    @staticmethod
    def _pairs(x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """Split a per-core vector into its x entries and its y entries (one each per group)."""
        return x[0::2], x[1::2]

    def scale_factors(self) -> torch.Tensor:
        alpha = scheduled(self.alpha, self.alpha_schedule, self.steps, self.total_steps)
        s = torch.where(self.x_grows(), 1.0, -1.0)[self.index.layer]
        self._role = self._role.to(s.device)  # a no-op unless the model moved
        return self.scaled_learning_rates(alpha, torch.float64) * (s * self._role)


class NBAR(BAR):
    """nBAR (Algorithm 2): the factor with the larger gradient norm grows, the other shrinks."""

    def x_grows(self) -> torch.Tensor:
        g_x, g_y = self._pairs(self.index.grad_sq_norms())
        return g_x >= g_y


class OBAR(BAR):
    """oBAR (Algorithm 3): the factor with the larger norm shrinks, the other grows."""

    def x_grows(self) -> torch.Tensor:
        x, y = self._pairs(self.index.core_sq_norms())
        return x < y
