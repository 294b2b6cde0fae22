"""CPLinear: reconstruction, scale invariance, cores protocol and initialisation variance."""

import numpy as np
import pytest
import tensorly as tl
import torch
from tensorly.cp_tensor import cp_to_tensor as tl_cp_to_tensor
from torch import nn

from tensam.cores import core_groups
from tensam.tensorized.cp import CPLinear, cp_to_tensor


@pytest.mark.parametrize("shape", [(5, 7), (3, 4, 6), (2, 5, 3, 4), (6, 1, 2, 3)])
def test_cp_to_tensor_matches_tensorly(shape):
    rank = 3
    rns = np.random.RandomState(len(shape))
    factors = [rns.standard_normal((n, rank)) for n in shape]
    tl.set_backend("numpy")
    expected = tl_cp_to_tensor((np.ones(rank), factors))
    ours = cp_to_tensor([torch.tensor(f) for f in factors])
    assert ours.shape == shape
    np.testing.assert_allclose(ours.numpy(), expected, rtol=1e-12, atol=1e-12)


def test_cp_to_tensor_rejects_one_factor():
    with pytest.raises(ValueError, match="at least 2 factors"):
        cp_to_tensor([torch.ones(3, 2)])


def test_weight_matrix_is_reshaped_tensor_and_forward_is_linear():
    torch.manual_seed(0)
    layer = CPLinear((2, 3), (4, 5), rank=3)
    with torch.no_grad():
        layer.bias.normal_()
    tensor = cp_to_tensor(list(layer.factors))
    assert tensor.shape == (4, 5, 2, 3)
    W = layer.weight_matrix()
    assert W.shape == (20, 6)
    torch.testing.assert_close(W, tensor.reshape(20, 6))
    x = torch.randn(7, 6)
    torch.testing.assert_close(layer(x), x @ W.T + layer.bias)


@pytest.mark.parametrize("i, j", [(0, 3), (1, 2), (3, 0)])
def test_scale_invariance(i, j):
    torch.manual_seed(1)
    layer = CPLinear((3, 4), (2, 5), rank=4)
    x = torch.randn(8, 12)
    before = layer(x)
    with torch.no_grad():
        layer.factors[i].mul_(3.0)
        layer.factors[j].div_(3.0)
    torch.testing.assert_close(layer(x), before, rtol=1e-5, atol=1e-6)


def test_core_groups_one_group_of_k_cores_per_layer():
    model = nn.Sequential(CPLinear((4, 4), (4, 4), 8), nn.ReLU(),
                          CPLinear((16,), (2, 2, 2), 3, bias=False), nn.Tanh(),
                          CPLinear((8,), (3,), 2))
    groups = core_groups(model)
    assert [g.name for g in groups] == ["0", "2", "4"]
    assert [g.K for g in groups] == [4, 4, 2]
    for group, layer in zip(groups, (model[0], model[2], model[4]), strict=True):
        assert all(c is f for c, f in zip(group.cores, layer.factors, strict=True))
        assert layer.bias is None or all(c is not layer.bias for c in group.cores)


@pytest.mark.parametrize("in_shape, out_shape, rank, layers, tol", [
    ((1024,), (1024,), 64, 1, 0.05),  # one large order-2 layer
    ((8, 8), (8, 8), 8, 400, 0.10),  # order 4: entries share factors, so pool many layers
])
def test_init_variance_matches_kaiming_fan_in(in_shape, out_shape, rank, layers, tol):
    torch.manual_seed(2)
    with torch.no_grad():
        W = torch.cat([CPLinear(in_shape, out_shape, rank).weight_matrix().flatten()
                       for _ in range(layers)]).double()
    target = 2.0 / np.prod(in_shape)
    assert abs(W.square().mean().item() / target - 1) < tol
    assert abs(W.mean().item()) < 0.1 * target**0.5


@pytest.mark.parametrize("kwargs, match", [
    ({"in_shape": (), "out_shape": (2,), "rank": 2}, "in_shape"),
    ({"in_shape": (2,), "out_shape": (0, 2), "rank": 2}, "out_shape"),
    ({"in_shape": (2,), "out_shape": (2,), "rank": 0}, "rank"),
])
def test_bad_arguments_raise(kwargs, match):
    with pytest.raises(ValueError, match=match):
        CPLinear(**kwargs)
