"""Norm Deviation Q (Definition 1) and the covariance term of Theorem 3, per core group.

Everything is computed from the gradients already on ``.grad`` (no extra backward): call
:func:`norm_dynamics` after ``loss.backward()`` and before the optimizer step, so that for SAM the
gradient is g_k at the unperturbed point, as in Theorem 3.
"""

from __future__ import annotations

import torch

from tensam.norms import CoreIndex


def norm_deviation(sq_norms: torch.Tensor) -> torch.Tensor:
    """Q = sum_k (||G_k||^2 - (1/K) sum_i ||G_i||^2)^2 for one group (Eq. 5)."""
    return (sq_norms - sq_norms.mean()).square().sum()


def norm_deviation_pairwise(sq_norms: torch.Tensor) -> torch.Tensor:
    """Q = 1/(2K) sum_{i,j} (||G_i||^2 - ||G_j||^2)^2 (Eq. 6), equal to Eq. (5)."""
    diff = sq_norms[:, None] - sq_norms[None, :]
    return diff.square().sum() / (2 * sq_norms.numel())


def covariance(x: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
    """Cov(x_k, y_k) = (1/K) sum_k (x_k - xbar)(y_k - ybar), the empirical (biased) covariance."""
    return ((x - x.mean()) * (y - y.mean())).mean()


def layer_norm_deviation(index: CoreIndex, sq_core: torch.Tensor) -> torch.Tensor:
    """Q_l for every layer l (Appendix A, layer-wise Norm Deviation)."""
    return index.layer_sum((sq_core - index.layer_mean(sq_core)).square())


def layer_covariance(index: CoreIndex, x: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
    """Cov(x_{k,l}, y_{k,l}) over the cores of every layer l."""
    centred = (x - index.layer_mean(x)) * (y - index.layer_mean(y))
    return index.layer_sum(centred) / index.K.to(x.dtype)


@torch.no_grad()
def norm_dynamics(index: CoreIndex) -> dict[str, float]:
    """Per-layer Q_l and Cov_l(||G||^2, ||g||^2), plus aggregates over layers.

    Keys: ``norm/<layer>/Q``, ``norm/<layer>/cov``, ``norm/Q`` (sum over layers),
    ``norm/cov`` (mean over layers), ``norm/sam_drift`` = sum_l 4 u_D K_l Cov_l, the rate
    dQ/dt / rho predicted by Theorem 5 with the global normalisation u_D.
    """
    if len(index) == 0:
        return {}
    sq_core, sq_grad = index.sq_norms()
    q = layer_norm_deviation(index, sq_core)
    cov = layer_covariance(index, sq_core, sq_grad)
    total = sq_grad.sum()
    u_global = total.rsqrt() if total > 0 else torch.zeros_like(total)
    drift = 4 * u_global * (index.K.to(cov.dtype) * cov).sum()
    out = {"norm/Q": q.sum().item(), "norm/cov": cov.mean().item(), "norm/sam_drift": drift.item()}
    for name, q_l, c_l in zip(index.names, q.tolist(), cov.tolist(), strict=False):
        out[f"norm/{name}/Q"] = q_l
        out[f"norm/{name}/cov"] = c_l
    return out
