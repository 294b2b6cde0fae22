"""nuSAM: SAM with a nuclear-norm perturbation ball (Pethick et al., 2025, Algorithms 1 and 2).

The LMO over {||eps||_* <= rho} is rank one (Lemma 3.1), so each weight matrix M_i is perturbed
by rho u_i v_i^T, (u_i, v_i) the top singular pair of its gradient, computed by T warm-started
power iterations (Algorithm 2; T = 1 in the paper's experiments, Section 5). Only matrices are
perturbed (Algorithm 1, footnote 1; Section 3.2): other parameters (biases, ...) see the
gradient at the perturbed point but are not moved.

Memory (Section 3, Eq. 8a-8b): the perturbation is added to M_i in place and subtracted again
after the second gradient, so the optimizer holds the vectors u_i (warm start, kept in the
optimizer state) and v_i only -- sum_i (2 n_i + m_i) numbers instead of SAM's copy of all
parameters.
"""

from __future__ import annotations

import torch

from tensam.errors import ConfigError
from tensam.optim.base import TwoPassOptimizer, perturbed_parameters

#: which parameters are "weight matrices" (Algorithm 1 perturbs matrices only)
MATRICES = {"2d": lambda p: p.dim() == 2, "flatten": lambda p: p.dim() >= 2}
RESTORES = ("inplace", "copy")


def _normalize_(xs: list[torch.Tensor], tau: float) -> torch.Tensor:
    """x <- x / (||x||_2 + tau) for every x, in place; returns the norms ||x||_2, stacked."""
    norms = torch._foreach_norm(xs)
    torch._foreach_div_(xs, torch._foreach_add(norms, tau))
    return torch.stack(norms)


def top_singular_pairs(mats: list[torch.Tensor], us: list[torch.Tensor], iterations: int = 1,
                       tau: float = 1e-12):
    """SVD_top1 (Algorithm 2) of every matrix A_i, started at u_i; ``us`` is not modified.

    ``iterations`` times: v = A^T u / (||A^T u|| + tau), u = A v / (||A v|| + tau).
    Returns (u, v, sigma) with sigma_i = ||A_i v_i||, the top singular value once converged.
    The matrix-vector products are one per matrix (torch has no foreach matvec); the norms and
    divisions are batched over all matrices.
    """
    if iterations < 1:
        raise ConfigError(f"power_iterations must be >= 1, got {iterations}")
    for _ in range(iterations):
        vs = [a.T @ u for a, u in zip(mats, us, strict=True)]
        _normalize_(vs, tau)
        us = [a @ v for a, v in zip(mats, vs, strict=True)]
        sigma = _normalize_(us, tau)
    return us, vs, sigma


def as_matrix(t: torch.Tensor) -> torch.Tensor:
    """The (shape[0], prod(shape[1:])) matrix view of ``t`` (``t`` itself when 2-D)."""
    return t if t.dim() == 2 else t.view(t.shape[0], -1)


class NuSAM(TwoPassOptimizer):
    """nuSAM over any base optimizer (Algorithm 1).

    Ascent (step 2): M_i <- M_i + c_i u_i v_i^T with c_i = rho, or with ``normalized=True``
    (nuSAM-Norm, Appendix C.1, Eq. 21) c_i = rho sigma_i / sqrt(sum_j sigma_j^2).
    Descent (step 3): M_i <- M_i - c_i u_i v_i^T, then the base step with the gradient taken at
    the perturbed point.

    ``matrices`` selects the perturbed parameters among those of ``perturb`` (all, the cores,
    or the tensors given):
    ``"2d"`` the 2-D parameters (the paper), ``"flatten"`` every parameter with >= 2 dims,
    viewed as a (shape[0], -1) matrix (e.g. conv kernels or Tucker cores).

    ``restore="inplace"`` (Eq. 8b) subtracts the same rank-1 term again: no copy of the weights.
    It is not bit-exact -- no in-place scheme can be, since w -> fl(w + e) is not injective --
    but with round-to-nearest every entry satisfies |w'' - w| <= u (|w'| + |w''|), w' = fl(w + e),
    w'' = fl(w' - e), u the unit roundoff (2^-53 in float64, 2^-24 in float32): at most one
    rounding of each addition (``addr_`` forms the same product term for alpha = +1 and -1;
    tests/test_nusam.py checks the bound). ``restore="copy"`` restores from a saved copy of the
    perturbed matrices (bit-exact, SAM's memory).

    A matrix whose gradient gives no direction (sigma_i = 0, e.g. the zero-initialised partner
    of a LoRA factor) is not perturbed and keeps its previous warm start, so Algorithm 2 does not
    get stuck at u = 0.
    """

    def __init__(self, base, rho: float = 0.05, power_iterations: int = 1,
                 normalized: bool = False, matrices: str = "2d", restore: str = "inplace",
                 perturb="all", groups=None, tau: float = 1e-12, seed: int = 0):
        if not rho > 0:
            raise ConfigError(f"rho must be > 0, got {rho}")
        if power_iterations < 1:
            raise ConfigError(f"power_iterations must be >= 1, got {power_iterations}")
        if matrices not in MATRICES:
            raise ConfigError(f"matrices={matrices!r} is not one of {list(MATRICES)}")
        if restore not in RESTORES:
            raise ConfigError(f"restore={restore!r} is not one of {list(RESTORES)}")
        candidates = (perturbed_parameters(perturb, groups)
                      or [p for g in base.param_groups for p in g["params"]])
        chosen = [p for p in candidates if MATRICES[matrices](p)]
        if not chosen:
            raise ConfigError(f"nuSAM found no parameter to perturb with matrices={matrices!r} "
                              f"(shapes: {[tuple(p.shape) for p in candidates]})")
        super().__init__(base, chosen, rho=rho)
        self.power_iterations, self.normalized = power_iterations, normalized
        self.restore, self.tau = restore, tau
        gen = torch.Generator().manual_seed(seed)
        for p in self._perturbed:  # the SVD initialisation u_i^{-1} of Algorithm 1
            self.state[p]["u"] = torch.randn(p.shape[0], generator=gen, dtype=p.dtype).to(p.device)

    def _ascent(self, params: list[torch.Tensor], grads: list[torch.Tensor]):
        """(c_i u_i, v_i) for every matrix; updates the warm starts u_i in the optimizer state."""
        warm = [self.state[p]["u"] for p in params]
        us, vs, sigma = top_singular_pairs([as_matrix(g) for g in grads], warm,
                                           self.power_iterations, self.tau)
        torch._foreach_mul_(warm, list((sigma == 0).to(warm[0].dtype).unbind()))
        torch._foreach_add_(warm, us)  # u_i, or the old warm start where sigma_i = 0 (u_i = 0)
        rho = torch.tensor(self.group_values("rho", params), dtype=sigma.dtype,
                           device=sigma.device)  # per param group, like lr
        scale = rho * sigma / (torch.linalg.vector_norm(sigma) + self.tau) if self.normalized \
            else rho
        torch._foreach_mul_(us, list(scale.to(us[0].dtype).unbind()))
        return us, vs

    def perturbation(self, params, grads):
        """Dense e_i = c_i u_i v_i^T (used by ``restore="copy"``)."""
        us, vs = self._ascent(params, grads)
        return [torch.outer(u, v).view_as(p) for p, u, v in zip(params, us, vs, strict=True)]

    def perturb_(self, params, grads):
        if self.restore == "copy":
            return super().perturb_(params, grads)
        us, vs = self._ascent(params, grads)
        for p, u, v in zip(params, us, vs, strict=True):
            as_matrix(p).addr_(u, v)  # Eq. 8a: M + c u v^T, in place
        return us, vs

    def restore_(self, params, saved) -> None:
        if self.restore == "copy":
            return super().restore_(params, saved)
        for p, u, v in zip(params, *saved, strict=True):
            as_matrix(p).addr_(u, v, alpha=-1)  # Eq. 8b: remove the same rank-1 term
