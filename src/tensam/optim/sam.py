"""Sharpness-Aware Minimization (Algorithm 1) and its adaptive variant ASAM (Kwon et al., 2021)."""

from __future__ import annotations

import torch

from tensam.errors import ConfigError
from tensam.optim.base import TwoPassOptimizer


def global_norm(tensors: list[torch.Tensor]) -> torch.Tensor:
    """sqrt(sum_j ||t_j||_F^2) over all tensors, with one ``_foreach_norm``."""
    return torch.linalg.vector_norm(torch.stack(torch._foreach_norm(tensors)))


class SAM(TwoPassOptimizer):
    """SAM over any base optimizer.

    Algorithm 1, line 5: e_k = rho * g_k / sqrt(sum_j ||g_j||^2), the norm taken over all perturbed
    parameters. With ``adaptive=True`` (ASAM): e = rho * T^2 g / ||T g|| with T = |w| + eta,
    elementwise. ``perturb``: ``"all"`` parameters, the ``"cores"`` of ``groups``, or the tensors
    given (:func:`~tensam.optim.base.perturbed_parameters`). ``rho`` is a param-group option: a
    group may set its own (e.g. a smaller radius for a head), the norm stays global.
    """

    def __init__(self, base, rho: float = 0.05, adaptive: bool = False, eta: float = 0.01,
                 perturb="all", groups=None):
        if not rho > 0:
            raise ConfigError(f"rho must be > 0, got {rho}")
        if adaptive and eta < 0:
            raise ConfigError(f"eta must be >= 0 for adaptive SAM, got {eta}")
        super().__init__(base, perturb, groups, rho=rho)
        self.adaptive, self.eta = adaptive, eta

    def perturbation(self, params, grads):
        if not self.adaptive:
            direction, norm = grads, global_norm(grads)
        else:
            scale = torch._foreach_abs(params)
            torch._foreach_add_(scale, self.eta)
            direction = torch._foreach_mul(grads, scale)
            norm = global_norm(direction)  # ||T g||
            torch._foreach_mul_(direction, scale)  # T^2 g
        rhos = self.group_values("rho", params)
        if len(set(rhos)) == 1:
            return torch._foreach_mul(direction, rhos[0] / (norm + 1e-12))
        e = torch._foreach_mul(direction, 1.0 / (norm + 1e-12))
        torch._foreach_mul_(e, rhos)
        return e
