"""CP/TR/TT convolutions: kernels against tensorly, conv semantics, cores protocol, He init."""

import math

import pytest
import tensorly as tl
import torch
import torch.nn.functional as F
from tensorly.decomposition import tensor_train
from torch import nn

from tensam.cores import core_groups
from tensam.models.resnet import figure3_ranks
from tensam.tensorized import CPConv2d, TRConv2d, TTConv2d
from tensam.tensorized.conv import channel_modes, tr_to_tensor


@pytest.fixture
def torch_backend():
    """tensorly on torch tensors for one test; the other tests expect the numpy backend."""
    tl.set_backend("pytorch")
    yield
    tl.set_backend("numpy")


def _layer(cls, cin, cout, rank, **kw):
    torch.manual_seed(cin + cout)
    return cls(cin, cout, 3, rank, **kw).double()


def _tl_kernel(layer):
    """The kernel rebuilt by tensorly, then reshaped/permuted to (Cout, Cin, K, K) by hand."""
    cin, cout, k = layer.in_channels, layer.out_channels, layer.kernel_size
    cores = [c.detach() for c in layer.cores()]
    if isinstance(layer, CPConv2d):
        return tl.cp_to_tensor((torch.ones(layer.rank, dtype=torch.float64), cores))
    if isinstance(layer, TRConv2d):  # modes (Cin modes, K^2, Cout modes) = (Cin, K, K, Cout)
        return tl.tr_to_tensor(cores).reshape(cin, k, k, cout).permute(3, 0, 1, 2)
    u, m, v = cores  # TT over (Cout, K^2, Cin) with boundary ranks 1
    return tl.tt_to_tensor([u[None], m, v[..., None]]).reshape(cout, k, k, cin).permute(0, 3, 1, 2)


@pytest.mark.parametrize("sizes, rank", [((5, 7), 3), ((3, 4, 2), 2), ((4, 2, 2, 9, 4, 4, 2), 3)])
def test_tr_to_tensor_matches_tensorly(torch_backend, sizes, rank):
    torch.manual_seed(0)
    cores = [torch.randn(rank, n, rank, dtype=torch.float64) for n in sizes]
    torch.testing.assert_close(tr_to_tensor(cores), tl.tr_to_tensor(cores), rtol=1e-12, atol=1e-12)


def test_tr_to_tensor_rejects_one_core():
    with pytest.raises(ValueError, match="at least 2 cores"):
        tr_to_tensor([torch.ones(2, 3, 2)])


@pytest.mark.parametrize("cls, rank", [(CPConv2d, 5), (TRConv2d, 3), (TTConv2d, (4, 6))])
@pytest.mark.parametrize("cin, cout", [(3, 16), (16, 32), (64, 64)])
def test_kernel_matches_tensorly(torch_backend, cls, rank, cin, cout):
    layer = _layer(cls, cin, cout, rank)
    kernel = layer.kernel()
    assert kernel.shape == (cout, cin, 3, 3)
    torch.testing.assert_close(kernel, _tl_kernel(layer), rtol=1e-12, atol=1e-14)


@pytest.mark.parametrize("cls, rank", [(CPConv2d, 5), (TRConv2d, 3), (TTConv2d, 4)])
@pytest.mark.parametrize("stride, padding, bias", [(1, 1, False), (2, 1, True), (1, 0, True)])
def test_forward_is_one_conv2d_with_the_rebuilt_kernel(cls, rank, stride, padding, bias):
    layer = _layer(cls, 16, 32, rank, stride=stride, padding=padding, bias=bias)
    if bias:
        nn.init.normal_(layer.bias)
    x = torch.randn(2, 16, 9, 9, dtype=torch.float64)
    expected = F.conv2d(x, layer.kernel(), layer.bias, stride, padding)
    torch.testing.assert_close(layer(x), expected, rtol=1e-12, atol=1e-12)


def _full_tt(tensor):
    """Exact TT-SVD of ``tensor``: TT-ranks min(prod of the modes left, prod right)."""
    n = tensor.shape
    ranks = [1, *(min(math.prod(n[:k]), math.prod(n[k:])) for k in range(1, len(n))), 1]
    return tensor_train(tensor, rank=ranks).factors


def _dense(cin, cout):
    torch.manual_seed(3)
    return nn.Conv2d(cin, cout, 3, 2, 1, bias=False).double()


def test_full_rank_tt_svd_kernel_is_the_dense_conv(torch_backend):
    dense = _dense(16, 32)
    layer = _layer(TTConv2d, 16, 32, (32, 16), stride=2, padding=1)
    u, m, v = _full_tt(dense.weight.detach().permute(0, 2, 3, 1).reshape(32, 9, 16))
    with torch.no_grad():
        for core, value in zip(layer.factors, (u[0], m, v[..., 0]), strict=True):
            core.copy_(value)
    x = torch.randn(2, 16, 8, 8, dtype=torch.float64)
    torch.testing.assert_close(layer.kernel(), dense.weight, rtol=1e-9, atol=1e-12)
    torch.testing.assert_close(layer(x), dense(x), rtol=1e-9, atol=1e-11)


@pytest.mark.parametrize("cin, cout", [(3, 16), (16, 32)])
def test_tr_holding_an_exact_tt_svd_is_the_dense_conv(torch_backend, cin, cout):
    """A TT (boundary rank 1) is a ring whose cores are zero outside the TT blocks."""
    dense = _dense(cin, cout)
    modes = (*channel_modes(cin), 9, *channel_modes(cout))
    tt = _full_tt(dense.weight.detach().permute(1, 2, 3, 0).reshape(modes))  # (Cin, K, K, Cout)
    layer = _layer(TRConv2d, cin, cout, max(c.shape[0] for c in tt), stride=2, padding=1)
    with torch.no_grad():
        for core, value in zip(layer.factors, tt, strict=True):
            core.zero_()[:value.shape[0], :, :value.shape[2]] = value
    x = torch.randn(2, cin, 8, 8, dtype=torch.float64)
    torch.testing.assert_close(layer.kernel(), dense.weight, rtol=1e-9, atol=1e-12)
    torch.testing.assert_close(layer(x), dense(x), rtol=1e-9, atol=1e-11)


def test_rank_one_cp_kernel_is_the_dense_conv():
    dense, layer = _dense(16, 32), _layer(CPConv2d, 16, 32, 1, stride=2, padding=1)
    vectors = [torch.randn(n, dtype=torch.float64) for n in (32, 16, 3, 3)]
    with torch.no_grad():
        dense.weight.copy_(torch.einsum("o,i,h,w->oihw", *vectors))
        for core, vector in zip(layer.factors, vectors, strict=True):
            core.copy_(vector[:, None])
    x = torch.randn(2, 16, 8, 8, dtype=torch.float64)
    torch.testing.assert_close(layer(x), dense(x), rtol=1e-10, atol=1e-12)


@pytest.mark.parametrize("cin, cout, modes", [
    (3, 16, (3, 9, 4, 2, 2)), (16, 16, (4, 2, 2, 9, 4, 2, 2)), (16, 32, (4, 2, 2, 9, 4, 4, 2)),
    (32, 32, (4, 4, 2, 9, 4, 4, 2)), (32, 64, (4, 4, 2, 9, 4, 4, 4)),
    (64, 64, (4, 4, 4, 9, 4, 4, 4))])
def test_table8_tensorization(cin, cout, modes):
    layer = TRConv2d(cin, cout, 3, rank=2)
    assert layer.modes == modes
    assert [tuple(c.shape) for c in layer.cores()] == [(2, n, 2) for n in modes]


def test_channel_factorization_is_a_parameter_with_a_table_and_clear_errors():
    assert [channel_modes(w) for w in (3, 16, 32, 64)] == [(3,), (4, 2, 2), (4, 4, 2), (4, 4, 4)]
    with pytest.raises(ValueError, match="width 48"):
        TRConv2d(48, 16, 3, rank=2)
    with pytest.raises(ValueError, match="width 128"):
        TRConv2d(64, 128, 3, rank=2)
    layer = TRConv2d(48, 16, 3, rank=2, in_modes=(4, 4, 3), out_modes=(16,))
    assert layer.modes == (4, 4, 3, 9, 16) and layer.kernel().shape == (16, 48, 3, 3)
    with pytest.raises(ValueError, match="in_modes=\\[4, 4\\] must multiply to 48"):
        TRConv2d(48, 16, 3, rank=2, in_modes=(4, 4))


def test_rank_errors():
    with pytest.raises(ValueError, match="rank must be >= 1"):
        CPConv2d(16, 16, 3, rank=0)
    with pytest.raises(ValueError, match="int or a pair"):
        TTConv2d(16, 16, 3, rank=(2, 3, 4))


@pytest.mark.parametrize("cls, rank, k", [(CPConv2d, 4, 4), (TRConv2d, 3, 7), (TTConv2d, 4, 3)])
def test_gradients_reach_every_core_of_one_core_group(cls, rank, k):
    layer = _layer(cls, 16, 32, rank, padding=1, bias=True)
    model = nn.Sequential(layer, nn.ReLU())
    model(torch.randn(2, 16, 6, 6, dtype=torch.float64)).square().sum().backward()
    (group,) = core_groups(model)
    assert group.K == k and all(c is p for c, p in zip(group.cores, layer.factors, strict=True))
    assert all(c.grad is not None and c.grad.abs().sum() > 0 for c in group.cores)
    assert all(c is not layer.bias for c in group.cores)


@pytest.mark.parametrize("cls, rank", [(CPConv2d, 4), (TRConv2d, 3), (TTConv2d, 4)])
def test_kernel_is_scale_invariant(cls, rank):
    layer = _layer(cls, 16, 32, rank)
    before = layer.kernel().detach().clone()
    with torch.no_grad():
        layer.factors[0].mul_(3.0)
        layer.factors[-1].div_(3.0)
    torch.testing.assert_close(layer.kernel(), before, rtol=1e-12, atol=1e-14)


INIT_CASES = ([(CPConv2d, r) for r in figure3_ranks()["cp"]]
              + [(TRConv2d, r) for r in figure3_ranks()["tr"]]
              + [(TTConv2d, r) for r in (4, 16, (8, 16))])


@pytest.mark.parametrize("cls, rank", INIT_CASES)
def test_init_gives_the_rebuilt_kernel_he_variance(cls, rank):
    """E[W^2] = 2 / (Cin K^2), pooled over 1000 draws: the pooled mean's sd is <= 0.02 (TR at
    rank 5 has the heaviest tails), so the 10% band is > 5 sd wide."""
    torch.manual_seed(7)
    layer = cls(16, 32, 3, rank)
    threads = torch.get_num_threads()
    torch.set_num_threads(1)  # tiny matmuls: no thread wake-ups
    try:
        with torch.no_grad():
            draws = []
            for _ in range(1000):
                layer.reset_parameters()
                draws.append(layer.kernel().double().square().mean())
    finally:
        torch.set_num_threads(threads)
    ratio = torch.stack(draws).mean().item() / (2.0 / (16 * 9))
    assert abs(ratio - 1) < 0.1, ratio
