"""The benchmark's compiled DAS step (``tensam.bench.compiled_das``) is DAS, bit for bit."""

import re

import pytest
import torch
from toys import WithLoRA, backward, covid, task_closure

from tensam.bench.compiled_das import CompiledDAS, WrapperOnlyDAS, compiler
from tensam.cores import core_groups
from tensam.errors import ConfigError
from tensam.optim import DAS

pytestmark = pytest.mark.skipif(compiler() is None, reason="no C compiler")


def _state(opt):
    return ([p.detach().clone() for p in opt.params],
            [opt.state[c]["residual"].clone() for c in opt.index.cores])


def _equal(xs, ys):
    return all(torch.equal(x, y) for x, y in zip(xs, ys, strict=True))


@pytest.mark.parametrize("normalization", ["global", "layer"])
@pytest.mark.parametrize("schedule", ["constant", "linear"])
def test_compiled_step_is_das_bitwise_with_a_zero_core(normalization, schedule):
    """Three layers of K = 3, 4 and 2, a zero-norm LoRA core (lambda = 0), Adam, an lr
    scheduler, and a large alpha so that every lambda moves the cores."""
    runs = []
    for method in (DAS, CompiledDAS):
        model = WithLoRA().float()
        opt = method(torch.optim.Adam(model.parameters(), lr=0.01), core_groups(model),
                     alpha=0.5, normalization=normalization, alpha_schedule=schedule,
                     total_steps=60)
        sched = torch.optim.lr_scheduler.StepLR(opt, step_size=20, gamma=0.5)
        lams = []
        for _ in range(60):
            backward(model)
            opt.step()
            sched.step()
            lams.append(opt._last_lambda.clone())
        runs.append((_state(opt), torch.stack(lams)))
    (params, residual), lam = runs[0]
    (params_c, residual_c), lam_c = runs[1]
    assert lam[0, 7] == 0 and (lam[1:] != 0).all()  # B = 0 before the first step: lambda 0
    assert torch.equal(lam, lam_c)
    assert _equal(params, params_c) and _equal(residual, residual_c)


def test_compiled_step_is_das_bitwise_on_table1():
    """500 steps of Table 1's model and loss (AdamW, alpha 0.001): the residuals carry what the
    cores cannot hold, so any difference in rounding would show in them."""
    runs = []
    for method in (DAS, CompiledDAS):
        task, model = covid()
        opt = method(torch.optim.AdamW(model.parameters(), lr=1e-3), core_groups(model),
                     alpha=1e-3)
        closure = task_closure(task, model)
        for _ in range(500):
            opt.step(closure)
        runs.append(_state(opt))
    assert runs[0][1][0].abs().max() > 0  # the compensation is at work
    assert _equal(runs[0][0], runs[1][0]) and _equal(runs[0][1], runs[1][1])


def test_wrapper_only_is_the_base_optimizer_bitwise():
    a, b = WithLoRA().float(), WithLoRA().float()
    adam = torch.optim.Adam(a.parameters(), lr=0.01)
    wrapped = WrapperOnlyDAS(torch.optim.Adam(b.parameters(), lr=0.01), core_groups(b),
                             alpha=0.5)
    for _ in range(10):
        backward(a)
        adam.step()
        backward(b)
        wrapped.step()
    assert _equal(list(a.parameters()), list(b.parameters()))


@pytest.mark.parametrize(("kwargs", "float64", "named"), [
    ({"flatten": True}, False, "flatten=true"), ({"compensated": False}, False,
                                                 "compensated=false"),
    ({}, True, "cores of 'tucker.a' (torch.float64")])
def test_compiled_step_refuses_what_it_does_not_implement(kwargs, float64, named):
    model = WithLoRA() if float64 else WithLoRA().float()
    with pytest.raises(ConfigError, match=rf"CompiledDAS needs .*; got {re.escape(named)}"):
        CompiledDAS(torch.optim.SGD(model.parameters(), lr=0.1), core_groups(model), **kwargs)
