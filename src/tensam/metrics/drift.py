"""One-step norm drifts: how far one update of each method moves every layer's Q_l, measured
from the same weights, on the same batch, with the optimizers themselves.

Theorem 5 (multi-layer SAM): to first order in rho, one SAM step of learning rate eta changes
layer l's Norm Deviation by

    dQ_l = 4 eta rho u_D K_l Cov_l(||G_k||^2, ||g_k||^2),  u_D = (sum_l sum_k ||g_{k,l}||^2)^-1/2,

on top of what the base step alone does. DAS (Algorithm 2) rescales G_k <- (1 + lambda_k) G_k
with lambda_k = eta alpha u (||g_k||^2 - gbar_l) / ||G_k||^2, so ||G_k||^2 moves by
2 eta alpha u (||g_k||^2 - gbar_l) and dQ_l = 4 eta alpha u K_l Cov_l: SAM's drift exactly when
u = u_D (``normalization="global"``) and alpha = rho; with u_l = (K_l gbar_l)^(-1/2)
(``"layer"``) it is larger by sqrt(sum_l' K_l' gbar_l' / (K_l gbar_l)) in every layer.

:func:`one_step_drifts` measures these drifts without the first-order argument: from weights w
and one batch it takes one step of each method (the real optimizer, through the two halves of
the step contract, :class:`~tensam.optim.base.WrappedOptimizer`), reads every Q_l after it in
float64, and restores w. A method's *drift* is its dQ_l minus the base step's dQ_l.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping

import torch
from torch import nn

from tensam.cores import core_groups
from tensam.metrics.norm_dynamics import layer_covariance, layer_norm_deviation
from tensam.norms import CoreIndex, squared_norms
from tensam.optim.base import WrappedOptimizer

#: builds a method's optimizer over a model, a fresh one at every measurement (no state carried);
#: the base optimizer alone is ``WrappedOptimizer(base)``
OptimizerFactory = Callable[[nn.Module], WrappedOptimizer]


def _layer_q(index: CoreIndex) -> torch.Tensor:
    sq = squared_norms([c.detach().double() for c in index.cores])
    return layer_norm_deviation(index, sq)


@torch.no_grad()
def _load(model: nn.Module, state: Mapping[str, torch.Tensor]) -> None:
    for name, t in model.state_dict().items():
        t.copy_(state[name])


def one_step_drifts(model: nn.Module, closure: Callable[[], torch.Tensor],
                    methods: Mapping[str, OptimizerFactory]) -> dict[str, torch.Tensor]:
    """dQ_l (float64, one entry per core group of ``model``) of one step of each method in
    ``methods`` from the model's current weights, plus the theory's inputs at those weights.

    ``closure()`` is the step contract's: it zeroes the gradients, runs forward and backward on
    one fixed batch and returns the loss. Keys: each method's name (its dQ_l),
    ``"Q"`` (Q_l before the step), ``"cov"`` (Cov_l(||G_k||^2, ||g_k||^2)), ``"K"``,
    ``"layer_sq_grad"`` (K_l gbar_l = sum_k ||g_k||^2 over the layer), ``"sq_grad_all"`` (the
    squared norm of the whole gradient, cores and other parameters: SAM's normalisation when it
    perturbs every parameter), ``"loss"``. The model's
    weights and buffers are left as they were; its ``.grad`` hold the gradient at w.
    """
    index = CoreIndex(core_groups(model))
    start = {k: v.clone() for k, v in model.state_dict().items()}
    q0 = _layer_q(index)
    loss = closure().detach()
    grads = [None if p.grad is None else p.grad.clone() for p in model.parameters()]
    sq_core = squared_norms([c.detach().double() for c in index.cores])
    sq_grad = squared_norms([g.double() for g in index.grads()])
    sq_all = squared_norms([g.double() for g in grads if g is not None]).sum()
    out = {"Q": q0, "cov": layer_covariance(index, sq_core, sq_grad), "K": index.K.double(),
           "layer_sq_grad": index.layer_sum(sq_grad), "sq_grad_all": sq_all,
           "loss": loss.double()}
    for name, make in methods.items():
        optimizer = make(model)
        optimizer.first_step()  # two-pass methods: w + e(g), gradients cleared
        if optimizer.passes == 2:
            closure()
        optimizer.second_step()
        out[name] = _layer_q(index) - q0
        _load(model, start)
        for p, g in zip(model.parameters(), grads, strict=True):
            p.grad = None if g is None else g.clone()
    return out
