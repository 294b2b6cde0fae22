"""The flattened core buffer gives the same per-core norms as the per-tensor path."""

import torch

from tensam.cores import CoreGroup
from tensam.norms import CoreIndex, squared_norms

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
    index = CoreIndex([CoreGroup("a", tuple(cores[:3])), CoreGroup("b", tuple(cores[3:]))])
    values = [c.detach().clone() for c in cores]
    assert index.flatten_()
    for c, v in zip(cores, values, strict=True):  # same parameters, same values, now views
        assert torch.equal(c, v) and c.data.data_ptr() >= index.buffer.data_ptr()
    sq_core, sq_grad = index.sq_norms()
    torch.testing.assert_close(sq_core, expected_core)
    torch.testing.assert_close(sq_grad, expected_grad)
    torch.testing.assert_close(index.core_sq_norms(), expected_core)
    torch.testing.assert_close(index.grad_sq_norms(), expected_grad)
