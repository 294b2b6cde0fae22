"""The cores protocol: a ``cores()`` method or the ``self.cores = nn.ParameterList`` idiom."""

import pytest
import torch
from torch import nn

from tensam.cores import core_groups
from tensam.metrics.norm_dynamics import norm_dynamics
from tensam.norms import CoreIndex
from tensam.optim import DAS


class ListCores(nn.Module):
    """A Tucker-2 layer A G B^T keeping its cores in ``self.cores = nn.ParameterList(...)``
    (which crashed the protocol on today's main: ``module.cores()`` on a ParameterList)."""

    def __init__(self, seed: int):
        super().__init__()
        gen = torch.Generator().manual_seed(seed)
        self.cores = nn.ParameterList(nn.Parameter(torch.randn(*s, generator=gen))
                                      for s in ((2, 2), (5, 2), (4, 2)))

    def forward(self):
        g, a, b = self.cores
        return (a @ g @ b.T).square().sum()


class Net(nn.Module):
    def __init__(self):
        super().__init__()
        self.first, self.second = ListCores(0), ListCores(1)

    def forward(self):
        return self.first() + self.second()


def test_parameter_list_idiom_is_a_core_group():
    model = Net()
    groups = core_groups(model)
    assert [(g.name, g.K) for g in groups] == [("first", 3), ("second", 3)]
    assert all(c is p for c, p in zip(groups[0].cores, model.first.cores, strict=True))


def test_optimizers_and_metrics_find_the_listed_cores():
    model = Net()
    opt = DAS(torch.optim.SGD(model.parameters(), lr=0.01), core_groups(model), alpha=0.5)
    model().backward()
    assert set(norm_dynamics(CoreIndex(core_groups(model)))) >= {"norm/first/Q", "norm/second/cov"}
    before = [c.detach().clone() for c in model.first.cores]
    opt.step()
    assert all(not torch.equal(b, c) for b, c in zip(before, model.first.cores, strict=True))


def test_a_cores_attribute_of_non_tensors_is_an_error():
    class Bad(nn.Module):
        def cores(self):
            return ("not a tensor",)

    with pytest.raises(TypeError, match="Bad.cores must give tensors"):
        core_groups(Bad())
