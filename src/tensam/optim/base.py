"""The shared mechanism behind every method: a ``torch.optim.Optimizer`` that wraps a base one.

Two families cover all methods of the papers:

* :class:`TwoPassOptimizer` (SAM, ASAM, nuSAM): perturb w -> w + e(g), take a second gradient
  there, restore w, and let the base optimizer step with the perturbed gradient (Algorithm 1).
  A method only defines :meth:`TwoPassOptimizer.perturbation`.
* :class:`ScalingOptimizer` (DAS, nBAR, oBAR): one gradient, then per-core rescaling
  G_k <- (1 + lambda_k) G_k alongside the base step (Eq. 7-8). A method only defines
  :meth:`ScalingOptimizer.scale_factors`.

**One step contract, torch's own.** ``step(closure)``: the closure zeroes the gradients, runs
forward and backward, and returns the loss; the optimizer calls it as often as it needs (once,
or twice for a two-pass method) and returns the loss of the first call. ``step()`` without a
closure uses the gradients already on ``.grad`` and works for one-pass methods only. A loop that
cannot pass a closure (Hugging Face Trainer, gradient accumulation by hand) uses the two halves::

    loss_fn().backward()
    optimizer.first_step()            # two-pass: w <- w + e(g), gradients cleared
    if optimizer.passes == 2:
        loss_fn().backward()          # the gradient at w + e
    optimizer.second_step()           # restore w (two-pass), scale cores, base step

The wrapper shares ``param_groups`` (and thus learning rates) with the base optimizer, so LR
schedulers, gradient clipping and checkpointing work on the wrapper as on any optimizer.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable

import torch

from tensam.cores import as_core_groups
from tensam.errors import ConfigError
from tensam.norms import CoreIndex, FlatCoreIndex

Closure = Callable[[], torch.Tensor]


class WrappedOptimizer(torch.optim.Optimizer):
    """An optimizer that delegates the parameter update to ``base``.

    ``defaults`` are the method's own hyperparameters (``rho``, ...); every param group gets
    them unless it sets its own, so they can differ per group like ``lr``.
    """

    #: gradient evaluations per step: 1, or 2 for the two-pass (SAM) family
    passes = 1

    def __init__(self, base: torch.optim.Optimizer, defaults: dict | None = None):
        if not isinstance(base, torch.optim.Optimizer):
            raise TypeError(f"base must be a torch.optim.Optimizer, got {type(base).__name__}")
        self.base = base
        super().__init__([p for g in base.param_groups for p in g["params"]], defaults or {})
        self.param_groups = base.param_groups  # shared: schedulers see one set of groups
        for group in self.param_groups:
            self._fill_defaults(group)
        self.steps = 0  # completed steps t, for coefficient schedules (saved in state_dict)

    def _fill_defaults(self, group: dict) -> None:
        for key, value in self.defaults.items():
            group.setdefault(key, value)

    def add_param_group(self, param_group: dict) -> None:
        """Add a group to the base optimizer (which owns the groups) with the method's defaults;
        called by ``torch.optim.Optimizer.__init__`` too, before ``base`` is shared."""
        if not hasattr(self, "steps"):  # inside torch's __init__: a throw-away group list
            return super().add_param_group(param_group)
        self.base.add_param_group(param_group)
        self._fill_defaults(self.param_groups[-1])
        self._params_changed()

    def _params_changed(self) -> None:
        """Hook: the set of parameters changed (``add_param_group``)."""

    @property
    def params(self) -> list[torch.Tensor]:
        return [p for g in self.param_groups for p in g["params"]]

    def group_values(self, key: str, params: list[torch.Tensor]) -> list[float]:
        """``group[key]`` of the param group that holds each of ``params``."""
        value_of = {id(p): float(g[key]) for g in self.param_groups for p in g["params"]}
        return [value_of[id(p)] for p in params]

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

    # -- the step contract ----------------------------------------------------------------

    def first_step(self) -> None:
        """First half of a step, after the gradient at w is on ``.grad`` (nothing to do for a
        one-pass method)."""

    def second_step(self) -> None:
        """Second half: the parameter update from the gradients on ``.grad``."""
        self.update()
        self.steps += 1

    def update(self) -> None:
        """The update of a one-pass step from the gradients on ``.grad`` (the base step)."""
        self.base.step()

    def diagnostics(self) -> dict[str, float]:
        """Scalars about the last step for the run's log (read at log steps only; each read
        may sync with the device). Nothing for a method without its own quantities."""
        return {}

    @torch.no_grad()
    def step(self, closure: Closure | None = None):
        """One step; ``closure`` zeroes the gradients, runs forward and backward, returns the
        loss, and is called ``self.passes`` times. Returns the loss of its first call."""
        if closure is None and self.passes > 1:
            raise RuntimeError(
                f"{type(self).__name__}.step() needs a closure that zeroes the gradients, runs "
                "forward and backward and returns the loss; loops that cannot pass one call "
                "first_step(), backward again, then second_step()")
        loss = None
        if closure is not None:
            with torch.enable_grad():
                loss = closure()
        self.first_step()
        if self.passes > 1:
            with torch.enable_grad():
                closure()
        self.second_step()
        return loss

    def __repr__(self) -> str:
        return f"{type(self).__name__}(base={type(self.base).__name__})"


#: what a two-pass method may perturb, by name (or pass the tensors themselves)
PERTURB = ("all", "cores")


def perturbed_parameters(perturb: str | Iterable[torch.Tensor],
                         groups=None) -> list[torch.Tensor] | None:
    """The parameters a two-pass method perturbs: every parameter of the base optimizer
    (``"all"``: None), the cores of ``groups`` (``"cores"``, SAM restricted to the
    factorization), or the tensors given."""
    if not isinstance(perturb, str):
        return list(perturb)
    if perturb not in PERTURB:
        raise ConfigError(f"perturb={perturb!r} is not one of {list(PERTURB)}")
    if perturb == "all":
        return None
    chosen = [c for g in as_core_groups(groups) for c in g.cores]
    if not chosen:
        raise ConfigError("perturb='cores' but the model has no core groups")
    return chosen


class TwoPassOptimizer(WrappedOptimizer):
    """Perturb, re-evaluate the gradient, restore exactly, then take the base step.

    :meth:`first_step` reads the gradient g at w from ``.grad``, moves w to w + e(g) and clears
    the gradients, so the next backward gives the gradient at w + e; :meth:`second_step` restores
    w and lets the base optimizer step with that gradient. By default :meth:`perturb_` keeps a
    copy of w and :meth:`restore_` copies it back, so the restore is exact (not w + e - e); a
    method with a cheaper, structured e (nuSAM) overrides the pair.
    """

    passes = 2

    def __init__(self, base, perturb: str | Iterable[torch.Tensor] = "all", groups=None,
                 **defaults):
        chosen = perturbed_parameters(perturb, groups)
        self._chosen = None if chosen is None else {id(p) for p in chosen}
        super().__init__(base, defaults)
        self._saved = None
        self._params_changed()
        if not self._perturbed:
            raise ConfigError("no parameter selected for perturbation")

    def _params_changed(self) -> None:
        chosen = self._chosen
        self._perturbed = [p for p in self.params if chosen is None or id(p) in chosen]

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
    def first_step(self) -> None:
        if self._saved is not None:
            raise RuntimeError(f"{type(self).__name__}.first_step() called twice without "
                               "second_step()")
        params = [p for p in self._perturbed if p.grad is not None]
        self._saved = (params, self.perturb_(params, [p.grad for p in params]) if params else None)
        self.zero_grad(set_to_none=True)  # the second backward must not add to the first

    @torch.no_grad()
    def second_step(self) -> None:
        if self._saved is None:
            raise RuntimeError(f"{type(self).__name__}.second_step() called before first_step()")
        params, saved = self._saved
        self._saved = None
        if params:
            self.restore_(params, saved)
        super().second_step()


class ScalingOptimizer(WrappedOptimizer):
    """Base step plus explicit core scaling G_k <- G_k + lambda_k G_k^(t) (Eq. 7-8).

    lambda is often ~1e-7, below float32's resolution relative to G, so ``G *= 1 + lambda`` would
    round to a no-op (or to a whole ulp). With ``compensated=True`` the increment lambda_k G_k is
    added with compensated (Kahan) summation: the rounding error of each addition is kept in a
    per-core buffer and carried into the next step, so the scaling accumulates as in exact
    arithmetic. The increment uses G^(t), the cores before the base step (Eq. 7).

    ``flatten=True`` (opt-in) keeps the cores in one contiguous buffer, a
    :class:`~tensam.norms.FlatCoreIndex`: the norms and the scaling become a fixed number of ops
    whatever the number of cores (on CPU, where every ``_foreach`` op dispatches per tensor,
    ``bench_optim`` measures the gain), at the price of re-homing the cores' storage when the
    optimizer is built. Every step checks, by the cores' data pointers, that the layout is
    current: a model moved after the optimizer was built (``.double()``, ``.half()``,
    ``.to(device)``, ``.to(memory_format=...)``) is re-laid out, carrying the residuals, instead
    of silently scaling a stale copy.
    """

    def __init__(self, base, groups=None, compensated: bool = True,
                 flatten: bool = False, **defaults):
        if not isinstance(flatten, bool):
            raise ConfigError(f"flatten={flatten!r} must be true or false")
        super().__init__(base, defaults)
        self.index = (FlatCoreIndex if flatten else CoreIndex)(as_core_groups(groups))
        self._lr_cache: tuple[tuple, torch.Tensor, dict] | None = None
        self._params_changed()
        self.compensated = compensated
        self._layout = None
        self._last_lambda: torch.Tensor | None = None  # of the last step, for diagnostics()
        self._relayout(residuals=None)

    def _params_changed(self) -> None:
        if not hasattr(self, "index"):
            return
        group_of = {id(p): i for i, g in enumerate(self.param_groups) for p in g["params"]}
        missing = [g.name for g in self.index.groups if any(id(c) not in group_of for c in g.cores)]
        if missing:
            raise ConfigError(f"cores of {missing} are not among the base optimizer's parameters")
        self._core_param_group = torch.tensor([group_of[id(c)] for c in self.index.cores])
        self._lr_cache = None

    # -- memory layout of the cores and residuals -------------------------------------------

    def _current_layout(self) -> list[int]:
        """Where every core's data lives: a move or a change of dtype or memory format gives a
        core new storage, so the data pointers alone tell (one C call per core)."""
        return [c.data_ptr() for c in self.index.cores]

    @torch.no_grad()
    def _relayout(self, residuals: list[torch.Tensor] | None) -> None:
        """(Re)build the index's layout and the residuals, which keep their values (converted to
        the cores' new dtype and device) when ``residuals`` is given."""
        idx = self.index
        if not len(idx):
            return
        idx.to(idx.cores[0].device)  # the index tensors follow the cores (a device move)
        idx.lay_out()
        self._lr_cache = None
        if self.compensated:
            self._init_residuals()
            if residuals is not None:
                for c, r in zip(idx.cores, residuals, strict=True):
                    self.state[c]["residual"].copy_(r)
        self._layout = self._current_layout()

    def _check_layout(self) -> None:
        """Re-lay out if the model was moved or re-typed since the layout was built."""
        if len(self.index) and self._current_layout() != self._layout:
            old = ([self.state[c]["residual"] for c in self.index.cores] if self.compensated
                   else None)
            self._relayout(residuals=old)

    def _init_residuals(self) -> None:
        """The residual (carried rounding error) of every core, kept in the optimizer state so it
        survives a checkpoint; views of one flat buffer when the cores are flattened."""
        residual, self._residual_operands = self.index.zeros()
        for c, r in zip(self.index.cores, residual, strict=True):
            self.state[c]["residual"] = r

    def load_state_dict(self, state_dict: dict) -> None:
        super().load_state_dict(state_dict)
        if self.compensated and len(self.index):  # loading made new tensors: copy them back in
            self._check_layout()
            loaded = [self.state[c].get("residual") for c in self.index.cores]
            self._init_residuals()
            for c, r in zip(self.index.cores, loaded, strict=True):
                if r is not None:
                    self.state[c]["residual"].copy_(r)

    # -- the scaling -----------------------------------------------------------------------

    def learning_rates(self) -> torch.Tensor:
        """The *current* step size eta^(t) of every core (schedulers change it in place)."""
        lrs = tuple(float(g["lr"]) for g in self.param_groups)
        if self._lr_cache is None or self._lr_cache[0] != lrs:
            eta = torch.tensor(lrs, dtype=torch.float64)[self._core_param_group]
            self._lr_cache = (lrs, eta.to(self.index.K.device), {})
        return self._lr_cache[1]

    def scaled_learning_rates(self, alpha: float, dtype: torch.dtype) -> torch.Tensor:
        """alpha * eta^(t) of every core, computed in float64 and cast to ``dtype``; cached
        while the learning rates and alpha stay the same (a constant schedule recomputes
        nothing: two fewer dispatches per step, same bits)."""
        eta = self.learning_rates()
        products = self._lr_cache[2]
        key = (alpha, dtype)
        if key not in products:
            products.clear()  # one entry: alpha changes every step under a decaying schedule
            products[key] = eta.mul(alpha).to(dtype)
        return products[key]

    def scale_factors(self) -> torch.Tensor:
        """lambda_k for every core of ``self.index`` (one entry per core)."""
        raise NotImplementedError

    def diagnostics(self) -> dict[str, float]:
        """|lambda_k| of the last step, largest and median over the cores: how much the scaling
        moves the cores (next to the base step's relative change, ``scripts/das_scale.py``)."""
        lam = self._last_lambda
        if lam is None or not lam.numel():
            return {}
        size = lam.abs()
        return {"scale/lambda_absmax": float(size.max()),
                "scale/lambda_absmedian": float(size.median())}

    def _operands(self, lam: torch.Tensor):
        """(cores, lambdas, residuals) as ``_foreach`` operands, in the index's layout."""
        cores, lam = self.index.operands(lam)
        return cores, lam, self._residual_operands if self.compensated else []

    @torch.no_grad()
    def update(self) -> None:
        if not len(self.index):
            return self.base.step()
        self._check_layout()
        self._last_lambda = self.scale_factors()
        cores, lam, residual = self._operands(self._last_lambda)
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
