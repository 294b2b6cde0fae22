"""One step contract for every optimizer (torch's closure), its two halves, param groups, and a
model moved after the optimizer was built."""

import pytest
import torch
from torch import nn
from toys import TwoTucker, closure_for, make_optimizer, values

from tensam.cores import core_groups
from tensam.errors import ConfigError
from tensam.norms import FlatCoreIndex
from tensam.optim import DAS, NBAR, OBAR, SAM, NuSAM

ALL = {
    "sgd": {"method": "none"},
    "sam": {"method": "sam", "rho": 0.1},
    "asam": {"method": "sam", "rho": 0.3, "adaptive": True},
    "nusam": {"method": "nusam", "rho": 0.1, "restore": "copy"},
    "das": {"method": "das", "alpha": 0.3},
}


def _opt(name, model, lr=0.05):
    return make_optimizer({**ALL[name], "base": {"name": "sgd", "lr": lr, "momentum": 0.9}},
                           model, total_steps=10)


@pytest.mark.parametrize("name", list(ALL))
def test_a_backward_before_step_changes_nothing(name):
    """The closure zeroes: a stray ``loss.backward()`` before ``step(closure)`` (the old DAS
    contract doubled the gradient) gives exactly the same step."""
    a, b = TwoTucker(seed=5), TwoTucker(seed=5)
    opt_a, opt_b = _opt(name, a), _opt(name, b)
    for _ in range(3):
        opt_a.step(closure_for(a))
        b().backward()
        opt_b.step(closure_for(b))
    assert all(torch.equal(p, q) for p, q in zip(a.parameters(), b.parameters(), strict=True))


@pytest.mark.parametrize("name", list(ALL))
def test_first_and_second_step_equal_step_with_closure(name):
    """The two halves, for loops that cannot pass a closure, give the closure's step."""
    a, b = TwoTucker(seed=6), TwoTucker(seed=6)
    opt_a, opt_b = _opt(name, a), _opt(name, b)
    for _ in range(3):
        opt_a.step(closure_for(a))
        opt_b.zero_grad()
        b().backward()
        if hasattr(opt_b, "first_step"):
            opt_b.first_step()
            if opt_b.passes == 2:
                b().backward()
            opt_b.second_step()
        else:  # a plain torch optimizer
            opt_b.step()
    assert all(torch.equal(p, q) for p, q in zip(a.parameters(), b.parameters(), strict=True))


def test_two_pass_calls_the_closure_twice_and_one_pass_once():
    model = TwoTucker()
    calls = []

    def closure():
        calls.append(1)
        return closure_for(model)()

    _opt("sam", model).step(closure)
    assert len(calls) == 2
    _opt("das", model).step(closure)
    assert len(calls) == 3


def test_halves_out_of_order_raise():
    model = TwoTucker()
    sam = _opt("sam", model)
    with pytest.raises(RuntimeError, match="before first_step"):
        sam.second_step()
    model().backward()
    sam.first_step()
    with pytest.raises(RuntimeError, match="twice"):
        sam.first_step()


@pytest.mark.parametrize("name", ["sam", "das", "nusam"])
def test_add_param_group_works_and_keeps_the_method_defaults(name):
    model, extra = TwoTucker(), nn.Parameter(torch.ones(3, 2, dtype=torch.float64))
    opt = _opt(name, model)
    opt.add_param_group({"params": [extra], "lr": 0.01})
    assert opt.param_groups is opt.base.param_groups and len(opt.param_groups) == 2
    assert opt.param_groups[1]["lr"] == 0.01
    for key in ("rho", "alpha"):
        if key in opt.param_groups[0]:
            assert opt.param_groups[1][key] == opt.param_groups[0][key]

    def closure():
        opt.zero_grad()
        loss = model() + extra.square().sum()
        loss.backward()
        return loss

    before = extra.detach().clone()
    opt.step(closure)
    assert not torch.equal(extra.detach(), before)  # the new group is trained


def test_sam_rho_is_a_param_group_option():
    """e_k = rho_{group(k)} g_k / ||g||: each group's own radius, one global norm."""
    model = TwoTucker()
    a, rest = list(model.a.parameters()), [p for n, p in model.named_parameters()
                                           if not n.startswith("a.")]
    opt = SAM(torch.optim.SGD([{"params": a, "rho": 0.5}, {"params": rest}], lr=0.0), rho=0.1)
    assert [g["rho"] for g in opt.param_groups] == [0.5, 0.1]
    w = values(model)
    seen = []

    def closure():
        seen.append(values(model))
        return closure_for(model)()

    model().backward()
    g = [p.grad.clone() for p in model.parameters()]
    norm = sum(float(x.square().sum()) for x in g) ** 0.5
    opt.step(closure)
    in_a = [any(p is q for q in a) for p in model.parameters()]
    for wi, gi, si, first in zip(w, g, seen[1], in_a, strict=True):
        torch.testing.assert_close(si, wi + (0.5 if first else 0.1) * gi / norm)


def test_nusam_rho_is_a_param_group_option():
    W1 = nn.Parameter(torch.randn(4, 3, dtype=torch.float64))
    W2 = nn.Parameter(torch.randn(5, 2, dtype=torch.float64))
    opt = NuSAM(torch.optim.SGD([{"params": [W1], "rho": 0.2}, {"params": [W2]}], lr=0.0),
                rho=0.7, restore="copy")
    seen = {}

    def closure():
        opt.zero_grad()
        seen["W"] = (W1.detach().clone(), W2.detach().clone())
        loss = (W1.sum() * 2 + W2.square().sum())
        loss.backward()
        return loss

    before = (W1.detach().clone(), W2.detach().clone())
    opt.step(closure)
    # the rank-1 perturbation rho u v^T has nuclear (= spectral) norm rho
    for moved, start, rho in zip(seen["W"], before, (0.2, 0.7), strict=True):
        assert torch.linalg.matrix_norm(moved - start, ord="nuc").item() == pytest.approx(rho)


def _das_on(model, make_opt_before_move, move, flatten=False):
    opt = DAS(torch.optim.SGD(model.parameters(), lr=0.01), core_groups(model), alpha=0.5,
              flatten=flatten)
    if make_opt_before_move:
        move(model)
    for _ in range(3):
        opt.step(closure_for(model))
    return opt


@pytest.mark.parametrize("move", [
    lambda m: m.float(), lambda m: m.half(), lambda m: m.double(),
    lambda m: m.to(memory_format=torch.channels_last),
])
@pytest.mark.parametrize("flatten", [False, True])
def test_das_after_the_model_moved_equals_das_built_after_the_move(move, flatten):
    """``model.float()`` etc. after the optimizer was built used to leave DAS scaling a stale
    buffer (silently plain SGD); the step now notices and re-lays out the cores and residuals."""
    a = TwoTucker(dtype=torch.float32)
    opt = _das_on(a, True, move, flatten)
    assert isinstance(opt.index, FlatCoreIndex) == flatten
    b = move(TwoTucker(dtype=torch.float32))
    _das_on(b, False, lambda m: m, flatten)
    assert all(torch.equal(p, q) for p, q in zip(a.parameters(), b.parameters(), strict=True))
    sgd = move(TwoTucker(dtype=torch.float32))
    opt = torch.optim.SGD(sgd.parameters(), lr=0.01)
    for _ in range(3):
        opt.step(closure_for(sgd))
    assert any(not torch.equal(p, q) for p, q in zip(a.parameters(), sgd.parameters(),
                                                     strict=True))  # DAS is not plain SGD


class Conv(nn.Module):
    """A 4-D core that channels_last changes."""

    def __init__(self):
        super().__init__()
        gen = torch.Generator().manual_seed(0)
        self.k = nn.Parameter(torch.randn(4, 3, 2, 2, generator=gen))
        self.v = nn.Parameter(torch.randn(3, 4, generator=gen))

    def cores(self):
        return (self.k, self.v)

    def forward(self):
        return (self.k.sum((2, 3)) @ self.v).square().sum()


def test_channels_last_cores_keep_their_layout():
    model = Conv().to(memory_format=torch.channels_last)
    assert model.k.is_contiguous(memory_format=torch.channels_last)
    opt = DAS(torch.optim.SGD(model.parameters(), lr=0.01), core_groups(model), alpha=0.1)
    opt.step(closure_for(model))
    assert not isinstance(opt.index, FlatCoreIndex)  # the default leaves the storage alone
    assert model.k.is_contiguous(memory_format=torch.channels_last)
    with pytest.raises(ConfigError, match="flatten=true needs leaf, contiguous cores"):
        DAS(torch.optim.SGD(model.parameters(), lr=0.01), core_groups(model), flatten=True)


@pytest.mark.parametrize("cls", [NBAR, OBAR])
def test_bar_survives_a_dtype_change(cls):
    from toys import LoRA

    model = LoRA()
    opt = cls(torch.optim.SGD(model.parameters(), lr=0.01), core_groups(model), alpha=0.5,
              alpha_schedule="constant", flatten=True)
    model.float()
    opt.step(closure_for(model))
    assert opt.index.buffer.dtype == torch.float32 and opt.index.buffer.data_ptr() == \
        model.cores()[0].data_ptr()
