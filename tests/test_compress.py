"""TT-SVD compression (tensam.compress): exact at full rank, error = discarded energy, layers and
models that compute what the dense ones did, ranks capped as tensorly caps them, and TT-ResNet-18's
4,406,063 (capped) / 4,448,479 (uncapped) parameters."""

import copy
import math

import pytest
import torch
import torchvision
from torch import nn

import tensam.compress as tc
from tensam.compress import TT_RESNET18_RANKS, compress, tensorize, tt_resnet18, tt_svd
from tensam.cores import core_groups
from tensam.models import ResNet
from tensam.tensorized import CPLinear, TTConv2d


@pytest.fixture(autouse=True)
def one_thread():
    """Small SVDs: one thread (several spin for seconds per call on a busy machine)."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


def tt_full(cores):
    """sum over the bonds of G_1[:, i_1, :] ... G_d[:, i_d, :], boundary ranks 1."""
    out = cores[0]
    for core in cores[1:]:
        out = torch.tensordot(out, core, dims=1)
    return out.squeeze(0).squeeze(-1)


def left_part(cores):
    """G_1 ... G_k contracted over their bonds, as a (n_1 ... n_k) x r_k matrix."""
    out = cores[0]
    for core in cores[1:]:
        out = torch.tensordot(out, core, dims=1)
    return out.reshape(-1, out.shape[-1])


def tail_energy(matrix, r):
    return torch.linalg.svdvals(matrix)[r:].square().sum()


@pytest.mark.parametrize("ranks", [(5, 6), (7, 9)])  # the unfolding ranks, and above them
def test_tt_svd_at_full_rank_is_exact(ranks):
    torch.manual_seed(0)
    w = torch.randn(5, 4, 6, dtype=torch.float64)
    cores, discarded = tt_svd(w, ranks, cap=False)
    assert [tuple(c.shape) for c in cores] == [(1, 5, ranks[0]), (ranks[0], 4, ranks[1]),
                                               (ranks[1], 6, 1)]
    assert torch.allclose(tt_full(cores), w, rtol=0, atol=1e-10)
    assert discarded.abs().max() < 1e-20
    # r2 = 9 > 6 columns of C_2: G_2's extra slices are further orthonormal columns, not zeros
    g2 = cores[1].reshape(-1, ranks[1])
    assert torch.allclose(g2.T @ g2, torch.eye(ranks[1], dtype=torch.float64), atol=1e-10)


@pytest.mark.parametrize("ranks", [(3, 4), (5, 9), (8, 30)])
def test_capped_tt_svd_equals_tensorlys_tensor_train(ranks):
    """tensorly caps r_k at min(rows, columns) of the carried matrix and goes on with the
    capped rank; the ranks, the tensor and every left part G_1 ... G_k (up to the signs of the
    singular vectors: ours^T theirs = diag(+-1)) agree."""
    tl = pytest.importorskip("tensorly")
    from tensorly.decomposition import tensor_train

    torch.manual_seed(3)
    w = torch.randn(5, 4, 6, dtype=torch.float64)
    cores, _ = tt_svd(w, ranks)
    reference = tensor_train(tl.tensor(w.numpy()), rank=[1, *ranks, 1]).factors
    assert [tuple(c.shape) for c in cores] == [f.shape for f in reference]
    torch.testing.assert_close(tt_full(cores), torch.from_numpy(tl.tt_to_tensor(reference)),
                               rtol=0, atol=1e-10)
    theirs = [torch.from_numpy(f) for f in reference]
    for k in range(1, len(cores)):
        ours_k, theirs_k = (left_part(c[:k]) for c in (cores, theirs))
        product = (ours_k.T @ theirs_k).abs()
        torch.testing.assert_close(product, torch.eye(len(product), dtype=product.dtype),
                                   rtol=0, atol=1e-8)


def test_tt_svd_error_is_the_discarded_energy_and_obeys_oseledets_bound():
    torch.manual_seed(1)
    w = torch.randn(6, 9, 7, dtype=torch.float64)
    ranks = (3, 4)
    cores, discarded = tt_svd(w, ranks)
    error2 = (tt_full(cores) - w).square().sum()
    assert torch.isclose(error2, discarded.sum(), rtol=1e-10)  # Pythagoras, step by step
    unfoldings = (w.reshape(6, -1), w.reshape(6 * 9, -1))
    bound = sum(tail_energy(m, r) for m, r in zip(unfoldings, ranks, strict=True))
    assert torch.isclose(discarded[0], tail_energy(unfoldings[0], 3), rtol=1e-10)
    assert error2 <= bound * (1 + 1e-12) and error2 < 0.99 * bound  # a bound, strict here


def test_linear_is_the_truncated_svd_and_exact_at_full_rank():
    torch.manual_seed(2)
    dense = nn.Linear(7, 5).double()
    w = dense.weight.detach()
    layer, report = tensorize(dense, 2, "fc")
    assert isinstance(layer, CPLinear) and layer.rank == 2
    assert report.rel_error**2 * w.square().sum() == pytest.approx(float(tail_energy(w, 2)),
                                                                   rel=1e-10)
    assert (report.params_before, report.params_after) == (40, 5 * 2 + 7 * 2 + 5)
    full, report = tensorize(dense, 5)
    x = torch.randn(3, 7, dtype=torch.float64)
    assert report.rel_error < 1e-12 and torch.allclose(full(x), dense(x), rtol=0, atol=1e-12)


def test_conv_at_full_rank_computes_the_dense_conv():
    torch.manual_seed(3)
    dense = nn.Conv2d(4, 6, 3, stride=2, padding=1, bias=True).double()
    layer, report = tensorize(dense, (6, 4), "conv")
    assert isinstance(layer, TTConv2d)
    assert (layer.stride, layer.padding, layer.rank) == (2, 1, (6, 4))
    assert torch.allclose(layer.kernel(), dense.weight, rtol=0, atol=1e-10)
    x = torch.randn(2, 4, 9, 9, dtype=torch.float64)
    assert torch.allclose(layer(x), dense(x), rtol=0, atol=1e-10)
    assert report.rel_error < 1e-12
    before, after = 6 * 4 * 9 + 6, 6 * 6 + 6 * 9 * 4 + 4 * 4 + 6  # cores U, M, V and the bias
    assert (report.params_before, report.params_after) == (before, after)
    _, truncated = tensorize(dense, (3, 2))
    assert 0 < truncated.rel_error < 1


def test_compressed_resnet_at_full_rank_equals_the_dense_one():
    torch.manual_seed(4)
    dense = ResNet(depth=20, conv="dense").double().eval()
    model = copy.deepcopy(dense)
    convs = {n: (m.out_channels, m.in_channels) for n, m in dense.named_modules()
             if isinstance(m, nn.Conv2d)}
    reports = compress(model, {**convs, "fc": 10})
    assert max(r.rel_error for r in reports) < 1e-10
    assert [g.name for g in core_groups(model)] == [*convs, "fc"]
    assert all(isinstance(model.get_submodule(n), TTConv2d) for n in convs)
    x = torch.randn(2, 3, 32, 32, dtype=torch.float64)
    with torch.no_grad():
        assert torch.allclose(model(x), dense(x), rtol=0, atol=1e-9)


def test_tt_resnet18_caps_table9s_rank_as_tensorly_does():
    with torch.device("meta"):
        model = tt_resnet18()
    assert sum(p.numel() for p in model.parameters()) == 4_406_063  # the paper's 4.4M
    u, m, v = model.get_submodule("layer3.0.conv1").factors  # r2 = 150 capped at Cin = 128
    assert (u.shape, m.shape, v.shape) == ((256, 200), (200, 9, 128), (128, 128))
    report = {r.name: r for r in model.compression_report}
    assert report["layer3.0.conv1"].ranks == (200, 128)
    assert all(report[n].ranks == r for n, r in TT_RESNET18_RANKS.items() if n != "layer3.0.conv1")
    dense_3x3 = sum(r.params_before for r in report.values())
    tt_3x3 = sum(r.params_after for r in report.values())
    assert (dense_3x3, tt_3x3) == (10_985_472, 3_702_023)


def test_tt_resnet18_uncapped_has_4_448_479_parameters():
    with torch.device("meta"):
        model = tt_resnet18(cap_ranks=False)
    count = sum(p.numel() for p in model.parameters())
    assert count == 4_448_479
    report = sum(r.params_after for r in model.compression_report)
    assert report == 3_744_439  # Table 9's share of the 3x3 conv weights: 34.1%
    tt = {n: m for n, m in model.named_modules() if isinstance(m, TTConv2d)}
    assert list(tt) == list(TT_RESNET18_RANKS) == [g.name for g in core_groups(model)]
    u, m, v = tt["layer3.0.conv1"].factors  # r1 = 200 on the Cout side, r2 = 150 on Cin's
    assert (u.shape, m.shape, v.shape) == ((256, 200), (200, 9, 150), (150, 128))
    # (r1, r2) -> (r2, r1) changes Cout r1 + 9 r1 r2 + r2 Cin by (Cout - Cin)(r2 - r1)
    swapped = count + sum((tt[n].out_channels - tt[n].in_channels) * (r2 - r1)
                          for n, (r1, r2) in TT_RESNET18_RANKS.items())
    assert swapped == 4_407_519  # the other reading of Table 9's [1, r1, r2, 1]
    with torch.device("meta"):
        dense = torchvision.models.resnet18()
        assert sum(p.numel() for p in dense.parameters()) == 11_689_512
        # the paper's "11.2M": ResNet-18 without its fc layer
        assert sum(p.numel() for n, p in dense.named_parameters() if "fc" not in n) == 11_176_512
        assert tt_resnet18(num_classes=10).fc.out_features == 10


def test_tt_resnet18_loads_the_weights_it_is_asked_for(monkeypatch, tmp_path):
    asked = []
    build = torchvision.models.resnet18
    monkeypatch.setattr(torchvision.models, "resnet18",
                        lambda weights: asked.append(weights) or build())
    monkeypatch.setattr(tc, "compress", lambda model, ranks, cap: [])
    for pretrained in (True, "IMAGENET1K_V1", False):
        tt_resnet18(pretrained)
    assert asked == ["IMAGENET1K_V1", "IMAGENET1K_V1", None]
    saved = build().state_dict()
    torch.save(saved, tmp_path / "r18.pt")
    model = tt_resnet18(str(tmp_path / "r18.pt"))
    assert torch.equal(model.conv1.weight, saved["conv1.weight"])


def test_unknown_layer_names_raise_before_anything_changes():
    model = ResNet(depth=20, conv="dense")
    with pytest.raises(ValueError, match=r"\['nope', 'bn1'\]"):
        compress(model, {"blocks.0.conv1": 4, "nope": 3, "bn1": 2})
    assert isinstance(model.blocks[0].conv1, nn.Conv2d)
    with pytest.raises(ValueError, match="2 TT-ranks"):
        tt_svd(torch.zeros(2, 3, 4), (2,))
    assert math.isnan(tensorize(nn.Conv2d(2, 2, 3, device="meta"), 2)[1].rel_error)


@pytest.mark.parametrize("shape", [(16, 16), (32, 16), (64, 64), (16, 3)])
@pytest.mark.parametrize("ratio", [0.1, 0.4, 0.9])
def test_tt_rank_for_ratio_is_the_largest_rank_within_the_budget(shape, ratio):
    conv = nn.Conv2d(shape[1], shape[0], 3, bias=False)
    r = tc.tt_rank_for_ratio(conv, ratio)

    def cores(r):
        return r * shape[0] + 9 * r * r + r * shape[1]

    assert r == 1 or cores(r) <= ratio * conv.weight.numel() < cores(r + 1)


def _dense_resnet20(path):
    torch.manual_seed(0)
    dense = ResNet(20, "dense")
    for m in dense.modules():  # non-trivial BatchNorm statistics, as after training
        if isinstance(m, nn.BatchNorm2d):
            m.running_mean.uniform_(-0.1, 0.1)
            m.running_var.uniform_(0.5, 1.5)
    torch.save(dense.state_dict(), path)
    return dense


def test_compressed_resnet_compresses_the_loaded_weights_of_the_stage_convs(tmp_path):
    dense = _dense_resnet20(tmp_path / "dense.pt")
    model = tc.compressed_resnet(tmp_path / "dense.pt", ratio=0.4)
    tt = {n: m for n, m in model.named_modules() if isinstance(m, TTConv2d)}
    convs = {n: m for n, m in dense.named_modules() if isinstance(m, nn.Conv2d)}
    assert sorted(tt) == sorted(n for n in convs if n.startswith("blocks."))  # 18 of 19
    assert isinstance(model.conv1, nn.Conv2d) and len(tt) == 18
    state = model.state_dict()
    for name, value in dense.state_dict().items():  # stem, BatchNorm (stats too) and fc loaded
        if not name.startswith(tuple(tt)):
            assert torch.equal(state[name], value), name
    reports = {r.name: r for r in model.compression_report}
    for name, layer in tt.items():
        w = convs[name].weight.detach().double()
        assert layer.rank == (tc.tt_rank_for_ratio(convs[name], 0.4),) * 2
        error = torch.linalg.norm(layer.kernel().double() - w) / torch.linalg.norm(w)
        assert math.isclose(reports[name].rel_error, error.item(), rel_tol=1e-6)
        assert 0 < reports[name].rel_error < 1
    before = sum(r.params_before for r in reports.values())
    after = sum(r.params_after for r in reports.values())
    assert 0.3 < after / before <= 0.4
    assert core_groups(model) and len(core_groups(model)) == 18


def test_a_checkpoint_of_an_unfinished_run_is_refused(tmp_path):
    from tensam.training import State, save_checkpoint

    dense = ResNet(20, "dense")
    opt = torch.optim.SGD(dense.parameters(), lr=0.1)
    save_checkpoint(tmp_path / "checkpoint.pt", dense, opt, State(step=351))
    with pytest.raises(ValueError, match="has not finished"):
        tc.compressed_resnet(tmp_path / "checkpoint.pt")
    (tmp_path / "summary.json").write_text('{"status": "finished", "steps": 351}')
    model = tc.compressed_resnet(tmp_path / "checkpoint.pt")
    assert torch.equal(model.fc.weight, dense.fc.weight)
    with pytest.raises(ValueError, match="does not exist"):
        tc.compressed_resnet(tmp_path / "missing.pt")
    with pytest.raises(ValueError, match="is not a dense ResNet-32"):
        tc.compressed_resnet(tmp_path / "checkpoint.pt", depth=32)
    with pytest.raises(ValueError, match="model.ratio"):
        tc.compressed_resnet(tmp_path / "checkpoint.pt", ratio=1.5)
