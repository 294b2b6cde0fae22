"""The shared mechanism behind every method: a ``torch.optim.Optimizer`` that wraps a base one.

Two families cover all methods of the papers:

* :class:`TwoPassOptimizer` (SAM, ASAM, nuSAM): perturb w -> w + e(g), take a second gradient
  there, restore w, and let the base optimizer step with the perturbed gradient (Algorithm 1).
  A method only defines :meth:`TwoPassOptimizer.perturbation`.
* :class:`ScalingOptimizer` (DAS, nBAR, oBAR): one gradient, then per-core rescaling
  G_k <- (1 + lambda_k) G_k alongside the base step (Eq. 7-8). A method only defines
  :meth:`ScalingOptimizer.scale_factors`.

The wrapper shares ``param_groups`` (and thus learning rates) with the base optimizer, so LR
schedulers, gradient clipping and checkpointing work on the wrapper as on any optimizer.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable

import torch

from tensam.cores import as_core_groups
from tensam.norms import CoreIndex


class WrappedOptimizer(torch.optim.Optimizer):
    """An optimizer that delegates the parameter update to ``base``."""

    def __init__(self, base: torch.optim.Optimizer, defaults: dict | None = None):
        if not isinstance(base, torch.optim.Optimizer):
            raise TypeError(f"base must be a torch.optim.Optimizer, got {type(base).__name__}")
        self.base = base
        super().__init__([p for g in base.param_groups for p in g["params"]], defaults or {})
        self.param_groups = base.param_groups  # shared: schedulers see one set of groups
        for group in self.param_groups:
            for key, value in (defaults or {}).items():
                group.setdefault(key, value)

        self.steps = 0  # completed steps t, for coefficient schedules (saved in state_dict)

    @property
    def params(self) -> list[torch.Tensor]:
        return [p for g in self.param_groups for p in g["params"]]

    def zero_grad(self, set_to_none: bool = True) -> None:
        self.base.zero_grad(set_to_none=set_to_none)

    def state_dict(self) -> dict:
        return {"base": self.base.state_dict(), "wrapper": super().state_dict(),
                "steps": self.steps}

    def load_state_dict(self, state_dict: dict) -> None:
        self.base.load_state_dict(state_dict["base"])
        super().load_state_dict(state_dict["wrapper"])
        self.param_groups = self.base.param_groups
        self.steps = int(state_dict.get("steps", 0))

    def __repr__(self) -> str:
        return f"{type(self).__name__}(base={type(self.base).__name__})"


class TwoPassOptimizer(WrappedOptimizer):
    """Perturb, re-evaluate the gradient, restore exactly, then take the base step.

    ``step(closure)`` expects the first gradient g (at w) to be on ``.grad`` already, as after a
    normal ``loss.backward()``; ``closure`` must recompute the loss *and call backward* at the
    perturbed point. By default :meth:`perturb_` keeps a copy of w and :meth:`restore_` copies it
    back, so the restore is exact (not w + e - e); a method with a cheaper, structured e (nuSAM)
    overrides the pair.
    """

    def __init__(self, base, params_to_perturb: Iterable[torch.Tensor] | None = None, **defaults):
        super().__init__(base, defaults)
        chosen = list(params_to_perturb) if params_to_perturb is not None else self.params
        member = {id(p) for p in chosen}
        self._perturbed = [p for p in self.params if id(p) in member]
        if not self._perturbed:
            raise ValueError("no parameter selected for perturbation")

    def perturbation(self, params: list[torch.Tensor], grads: list[torch.Tensor]):
        """The ascent step e (one tensor per parameter) computed from the first gradient."""
        raise NotImplementedError

    def perturb_(self, params: list[torch.Tensor], grads: list[torch.Tensor]):
        """w <- w + e in place; returns what :meth:`restore_` needs (here: a copy of w)."""
        saved = torch._foreach_mul(params, 1.0)  # a copy of w (x * 1.0 is exact)
        torch._foreach_add_(params, self.perturbation(params, grads))  # e is freed right away
        return saved

    def restore_(self, params: list[torch.Tensor], saved) -> None:
        """Undo :meth:`perturb_`."""
        torch._foreach_copy_(params, saved)

    @torch.no_grad()
    def step(self, closure: Callable[[], torch.Tensor] | None = None):
        if closure is None:
            raise RuntimeError(f"{type(self).__name__}.step needs a closure that re-runs backward")
        params = [p for p in self._perturbed if p.grad is not None]
        saved = self.perturb_(params, [p.grad for p in params]) if params else None
        first_grads = [p.grad for p in self.params if p.grad is not None]
        if first_grads:  # the second backward must not accumulate onto the first gradient
            torch._foreach_zero_(first_grads)
        with torch.enable_grad():
            loss = closure()
        if params:
            self.restore_(params, saved)
        self.base.step()
        self.steps += 1
        return loss


class ScalingOptimizer(WrappedOptimizer):
    """Base step plus explicit core scaling G_k <- G_k + lambda_k G_k^(t) (Eq. 7-8).

    lambda is often ~1e-7, below float32's resolution relative to G, so ``G *= 1 + lambda`` would
    round to a no-op (or to a whole ulp). With ``compensated=True`` the increment lambda_k G_k is
    added with compensated (Kahan) summation: the rounding error of each addition is kept in a
    per-core buffer and carried into the next step, so the scaling accumulates as in exact
    arithmetic. The increment uses G^(t), the cores before the base step (Eq. 7).
    """

    def __init__(self, base, groups=None, compensated: bool = True, flatten: bool = True,
                 **defaults):
        super().__init__(base, defaults)
        self.index = CoreIndex(as_core_groups(groups))
        group_of = {id(p): i for i, g in enumerate(self.param_groups) for p in g["params"]}
        missing = [g.name for g in self.index.groups if any(id(c) not in group_of for c in g.cores)]
        if missing:
            raise ValueError(f"cores of {missing} are not among the base optimizer's parameters")
        self._core_param_group = torch.tensor([group_of[id(c)] for c in self.index.cores])
        self._lr_cache: tuple[tuple, torch.Tensor] | None = None
        self.compensated = compensated
        if flatten:
            self.index.flatten_()
        if compensated and len(self.index):
            self._init_residuals()

    def _init_residuals(self) -> None:
        """The residual (carried rounding error) of every core, kept in the optimizer state so it
        survives a checkpoint; views of one flat buffer when the cores are flattened."""
        idx = self.index
        if idx.buffer is not None:
            self._flat_residual = torch.zeros_like(idx.buffer)
            residual = idx.per_core(self._flat_residual)
        else:
            residual = [torch.zeros_like(c) for c in idx.cores]
        for c, r in zip(idx.cores, residual, strict=True):
            self.state[c]["residual"] = r

    def load_state_dict(self, state_dict: dict) -> None:
        super().load_state_dict(state_dict)
        if self.compensated and len(self.index):  # loading made new tensors: copy them back in
            loaded = [self.state[c].get("residual") for c in self.index.cores]
            self._init_residuals()
            for c, r in zip(self.index.cores, loaded, strict=True):
                if r is not None:
                    self.state[c]["residual"].copy_(r)

    def learning_rates(self) -> torch.Tensor:
        """The *current* step size eta^(t) of every core (schedulers change it in place)."""
        lrs = tuple(float(g["lr"]) for g in self.param_groups)
        if self._lr_cache is None or self._lr_cache[0] != lrs:
            eta = torch.tensor(lrs, dtype=torch.float64)[self._core_param_group]
            self._lr_cache = (lrs, eta.to(self.index.K.device))
        return self._lr_cache[1]

    def scale_factors(self) -> torch.Tensor:
        """lambda_k for every core of ``self.index`` (one entry per core)."""
        raise NotImplementedError

    def _operands(self, lam: torch.Tensor):
        """(cores, lambdas, residuals) as tensor lists: one flat tensor each (lambda expanded to
        the elements) when the cores are flattened, else one entry per core."""
        idx = self.index
        if idx.buffer is not None:
            residual = [self._flat_residual] if self.compensated else []
            return [idx.buffer], [idx.expand(lam.to(idx.buffer.dtype))], residual
        residual = [self.state[c]["residual"] for c in idx.cores] if self.compensated else []
        return idx.cores, list(lam.to(idx.cores[0].dtype).unbind()), residual

    @torch.no_grad()
    def step(self, closure: Callable[[], torch.Tensor] | None = None):
        loss = None
        if closure is not None:
            with torch.enable_grad():
                loss = closure()
        if not len(self.index):
            self.base.step()
            self.steps += 1
            return loss
        cores, lam, residual = self._operands(self.scale_factors())
        if not self.compensated:
            increments = torch._foreach_mul(cores, lam)  # lambda G^(t), before the base step
            self.base.step()
            torch._foreach_add_(cores, increments)
        else:
            torch._foreach_addcmul_(residual, cores, lam)  # y = lambda G^(t) + carried error
            self.base.step()
            previous = torch._foreach_mul(cores, 1.0)  # a transient copy of G
            torch._foreach_add_(cores, residual)  # G + y, rounded
            torch._foreach_sub_(previous, cores)  # -(what was actually added)
            torch._foreach_add_(residual, previous)  # y - added: the part lost to rounding
        self.steps += 1
        return loss
