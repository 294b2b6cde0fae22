"""Deviation-Aware Scaling (Algorithm 2)."""

from __future__ import annotations

import torch

from tensam.errors import ConfigError
from tensam.optim.base import ScalingOptimizer
from tensam.optim.schedules import check_schedule, scheduled

NORMALIZATIONS = ("layer", "global")


class DAS(ScalingOptimizer):
    """DAS over any base optimizer: G_k <- (1 + lambda_k) G_k - eta * base_update(g_k).

    Algorithm 2, line 5, per core k of layer l::

        lambda_k = eta * alpha * u / ||G_k||^2 * (||g_k||^2 - gbar_l),
        gbar_l = (1/K_l) sum_i ||g_i||^2,

    with ``normalization="global"`` (the default): u_D = (sum_l sum_k ||g_{k,l}||^2)^(-1/2), the
    u of multi-layer SAM (Theorem 5), or ``normalization="layer"``: u_l = (K_l gbar_l)^(-1/2),
    Algorithm 2's u read per layer. With one layer the two are the same. On a network u_D
    tracks SAM's drift of every Q_l and u_l overshoots it several-fold (measured on
    TR-ResNet-20: ``results/normdyn_drift.md``).
    eta is each core's *current* learning rate; alpha follows ``alpha_schedule``.
    A core with ||G_k||^2 <= ``eps`` (e.g. a zero-initialised LoRA factor) gets lambda_k = 0:
    scaling cannot move it and 1/||G_k||^2 would be infinite.
    """

    def __init__(self, base, groups, alpha: float = 0.001, normalization: str = "global",
                 alpha_schedule: str = "constant", total_steps: int | None = None,
                 eps: float = 1e-12, compensated: bool = True, flatten: bool = False):
        if alpha < 0:
            raise ConfigError(f"alpha must be >= 0, got {alpha}")
        if normalization not in NORMALIZATIONS:
            raise ConfigError(f"normalization={normalization!r} is not one of "
                              f"{list(NORMALIZATIONS)}")
        check_schedule(alpha_schedule, total_steps)
        super().__init__(base, groups, compensated=compensated, flatten=flatten)
        self.alpha, self.normalization, self.eps = alpha, normalization, eps
        self.alpha_schedule, self.total_steps = alpha_schedule, total_steps

    def scale_factors(self) -> torch.Tensor:
        idx = self.index
        sq_core, sq_grad = idx.sq_norms()
        layer_total = idx.layer_sum(sq_grad).index_select(0, idx.layer)  # K_l * gbar_l
        gbar = layer_total * idx.inv_K_as(sq_grad.dtype)
        total = layer_total if self.normalization == "layer" else sq_grad.sum()  # u^(-2)
        alpha = scheduled(self.alpha, self.alpha_schedule, self.steps, self.total_steps)
        coef = self.scaled_learning_rates(alpha, sq_grad.dtype)  # eta^(t) alpha^(t)
        denom = (total.sqrt() * sq_core).clamp_min_(torch.finfo(sq_core.dtype).tiny)
        lam = (sq_grad - gbar).mul_(coef).div_(denom)
        # a core with ||G_k||^2 <= eps is not scaled; no gradient at all gives 0/tiny = 0
        return lam.masked_fill_(sq_core <= self.eps, 0.0)
