"""The opt-in flat core buffer (FlatCoreIndex) gives the same per-core norms as the per-tensor
path, and refuses cores it would change."""

import pytest
import torch

from tensam.cores import CoreGroup
from tensam.errors import ConfigError
from tensam.norms import FlatCoreIndex, squared_norms

SHAPES = [(3, 4), (5,), (2, 4), (), (6, 5), (7,), (1, 4)]  # interleaved trailing shapes, a 0-d


def test_flat_norms_equal_per_tensor_norms_in_core_order():
    torch.manual_seed(0)
    cores = [torch.nn.Parameter(torch.randn(s, dtype=torch.float64)) for s in SHAPES]
    for c in cores:
        c.grad = torch.randn_like(c)
    cores[2].grad = None  # a core without gradient counts as zero
    expected_core = squared_norms(cores)
    expected_grad = squared_norms([c.grad if c.grad is not None else torch.zeros_like(c)
                                   for c in cores])
    values = [c.detach().clone() for c in cores]
    index = FlatCoreIndex([CoreGroup("a", tuple(cores[:3])), CoreGroup("b", tuple(cores[3:]))])
    for c, v in zip(cores, values, strict=True):  # same parameters, same values, now views
        assert torch.equal(c, v) and c.data.data_ptr() >= index.buffer.data_ptr()
    sq_core, sq_grad = index.sq_norms()
    torch.testing.assert_close(sq_core, expected_core)
    torch.testing.assert_close(sq_grad, expected_grad)
    torch.testing.assert_close(index.core_sq_norms(), expected_core)
    torch.testing.assert_close(index.grad_sq_norms(), expected_grad)


@pytest.mark.parametrize("bad", ["channels_last", "dtype", "non-leaf"])
def test_flat_index_refuses_cores_it_would_change(bad):
    cores = [torch.nn.Parameter(torch.randn(4, 3, 2, 2)), torch.nn.Parameter(torch.randn(3, 4))]
    if bad == "channels_last":
        cores[0].data = cores[0].data.to(memory_format=torch.channels_last)
    elif bad == "dtype":
        cores[1] = torch.nn.Parameter(cores[1].double())
    else:
        cores[1] = cores[1] * 2
    with pytest.raises(ConfigError, match="flatten=true needs leaf, contiguous cores of one dtype"):
        FlatCoreIndex([CoreGroup("conv", tuple(cores))])
