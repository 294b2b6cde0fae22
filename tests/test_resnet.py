"""CIFAR ResNet-20/32 with dense/CP/TR/TT convs: counts, structure, cores, init, configs."""

import copy
import functools

import pytest
import torch
from hydra import compose, initialize_config_dir
from omegaconf import OmegaConf
from torch import nn

from tensam.cores import core_groups
from tensam.metrics.norm_dynamics import norm_dynamics
from tensam.models import ResNet
from tensam.models.resnet import figure3_ranks, num_params
from tensam.norms import CoreIndex
from tensam.optim import DAS
from tensam.tasks import build_model
from tensam.tensorized import CPConv2d, TRConv2d, TTConv2d
from tensam.train import CONFIG_DIR

KINDS = {"cp": CPConv2d, "tr": TRConv2d, "tt": TTConv2d}

#: Parameters of the Figure 3 models (ResNet-20): TR 538 r^2 + 2026, CP 1429 R + 2026, where
#: 2026 = BatchNorm (2 x 688) + Linear (64 x 10 + 10).
FIGURE3 = {("tr", 5): 15_476, ("tr", 8): 36_458, ("tr", 10): 55_826, ("tr", 15): 123_076,
           ("tr", 20): 217_226, ("cp", 10): 16_316, ("cp", 20): 30_606, ("cp", 40): 59_186,
           ("cp", 80): 116_346, ("cp", 160): 230_666}


class _Cifar:
    def model_inputs(self):
        return {"input_shape": (3, 32, 32), "num_classes": 10}


@pytest.mark.parametrize("depth, conv, rank, params", [
    (20, "dense", None, 269_722), (32, "dense", None, 464_154),
    (32, "tr", 15, 202_272)])  # the paper's 0.46M and 0.20M (Appendix B)
def test_parameter_counts(depth, conv, rank, params):
    assert num_params(ResNet(depth, conv, rank)) == params


def test_figure3_ranks_counts_and_compression_ratios():
    ranks = figure3_ranks()
    assert sorted((k, r) for k in ranks for r in ranks[k]) == sorted(FIGURE3)
    print("\nconv rank  params  ratio")
    for (conv, rank), params in FIGURE3.items():
        model = ResNet(20, conv, rank)
        ratio = model.compression_ratio()
        print(f"{conv:>4} {rank:>4} {params:>7,} {ratio:6.2f}x")
        assert num_params(model) == params
        assert ratio == pytest.approx(269_722 / params)
    assert ResNet(20).compression_ratio() == 1.0


@pytest.mark.parametrize("conv", ["cp", "tr", "tt"])
def test_every_conv_is_tensorized_and_fc_is_dense(conv):
    model = ResNet(20, conv, 4)
    convs = [m for m in model.modules() if isinstance(m, KINDS[conv])]
    assert len(convs) == 19 and convs[0] is model.conv1 and convs[0].in_channels == 3
    assert not any(isinstance(m, nn.Conv2d) for m in model.modules())
    assert isinstance(model.fc, nn.Linear) and model.fc.weight.shape == (10, 64)
    norms = [m for m in model.modules() if isinstance(m, nn.BatchNorm2d)]
    assert len(norms) == 19
    assert model(torch.randn(2, 3, 32, 32)).shape == (2, 10)


def test_option_a_shortcut_subsamples_and_zero_pads():
    block = ResNet(20).blocks[3]  # first block of stage 2: 16 -> 32, stride 2
    assert (block.conv1.in_channels, block.conv1.out_channels, block.stride) == (16, 32, 2)
    x = torch.randn(2, 16, 8, 8)
    out = block.shortcut(x)
    assert out.shape == (2, 32, 4, 4)
    torch.testing.assert_close(out[:, :16], x[:, :, ::2, ::2])
    assert not out[:, 16:].any()
    assert ResNet(20).blocks[1].shortcut(x) is x


def test_tr_resnet20_cores_feed_core_index_norm_dynamics_and_das():
    torch.manual_seed(0)
    model = ResNet(20, "tr", 5)
    groups = core_groups(model)
    assert len(groups) == 19 and groups[0].name == "conv1" and groups[0].K == 5
    assert [g.K for g in groups[1:]] == [7] * 18
    index = CoreIndex(groups)
    assert len(index) == 5 + 18 * 7
    x, y = torch.randn(8, 3, 32, 32), torch.randint(0, 10, (8,))

    def closure():
        model.zero_grad()
        loss = nn.functional.cross_entropy(model(x), y)
        loss.backward()
        return loss

    closure()
    assert all(c.grad is not None and c.grad.abs().sum() > 0 for c in index.cores)
    stats = norm_dynamics(index)
    assert "norm/blocks.8.conv2/Q" in stats and len([k for k in stats if k.endswith("/Q")]) == 20
    sgd_model = copy.deepcopy(model)
    torch.optim.SGD(sgd_model.parameters(), lr=0.1).step()
    das = DAS(torch.optim.SGD(model.parameters(), lr=0.1), groups, alpha=0.1)
    before = [c.detach().clone() for c in index.cores]
    das.step(closure)
    assert all(not torch.equal(b, c) for b, c in zip(before, index.cores, strict=True))
    sgd_cores = [c for g in core_groups(sgd_model) for c in g.cores]
    assert any(not torch.allclose(s, c) for s, c in zip(sgd_cores, index.cores, strict=True))
    assert len(core_groups(ResNet(32, "tr", 2))) == 31


@functools.cache
def _fresh_scales(conv, rank):
    """Block output stds and the mean square gain of the convs, one forward in train mode."""
    x = torch.randn(8, 3, 32, 32, generator=torch.Generator().manual_seed(0))
    torch.manual_seed(1)
    model = ResNet(20, conv, rank)
    stds, gains = [], []
    for block in model.blocks:
        block.register_forward_hook(lambda m, i, o: stds.append(o.std().item()))
    for m in model.modules():
        if isinstance(m, (nn.Conv2d, *KINDS.values())):
            m.register_forward_hook(lambda m, i, o: gains.append(
                (o.square().mean() / i[0].square().mean()).item()))
    with torch.no_grad():
        model(x)
    return stds, sum(gains) / len(gains)


@pytest.mark.parametrize("conv, rank", [("dense", None), ("cp", 10), ("cp", 160), ("tr", 5),
                                        ("tr", 20), ("tt", 4), ("tt", 16)])
def test_fresh_network_activation_scale(conv, rank):
    """On N(0, 1) input (train mode, as at step 0): block outputs stay within 2x from the first
    to the last block (dense: 1.8x, the residual sums), and the mean square gain of the convs
    is within 2x of the dense network's (He: 2 less the zero padding)."""
    stds, gain = _fresh_scales(conv, rank)
    assert 0.5 < stds[-1] / stds[0] < 2 and max(stds) / min(stds) < 2
    assert 0.5 < gain / _fresh_scales("dense", None)[1] < 2


def test_param_groups_flag():
    model = ResNet(20, "tr", 3)
    assert len(model.param_groups({})) == len(list(model.parameters()))
    decay, no_decay = ResNet(20, "tr", 3, decay_biases_and_norms=False).param_groups({})
    assert no_decay["weight_decay"] == 0.0 and len(no_decay["params"]) == 2 * 19 + 1
    assert len(decay["params"]) == 5 + 18 * 7 + 1  # the cores and the fc weight


@pytest.mark.parametrize("kwargs, match", [
    ({"depth": 21}, "6n \\+ 2"), ({"conv": "svd", "rank": 3}, "model.conv='svd'"),
    ({"conv": "tr"}, "needs model.rank")])
def test_errors(kwargs, match):
    with pytest.raises(ValueError, match=match):
        ResNet(**kwargs)


@pytest.mark.parametrize("overrides, kind, params", [
    (["model=resnet32"], TRConv2d, 202_272),
    (["model=resnet32", "model.conv=dense"], nn.Conv2d, 464_154),
    (["model=resnet20"], TRConv2d, FIGURE3["tr", 10]),
    (["model=resnet20", "model.conv=cp", "model.rank=40"], CPConv2d, FIGURE3["cp", 40]),
    (["model=resnet20", "model.conv=tt", "model.rank=[8,4]"], TTConv2d, None)])
def test_configs_compose_and_build(overrides, kind, params):
    with initialize_config_dir(config_dir=CONFIG_DIR, version_base="1.3"):
        cfg = compose("train", overrides=overrides)
    model = build_model(OmegaConf.to_container(cfg.model, resolve=True), _Cifar())
    assert isinstance(model, ResNet) and isinstance(model.conv1, kind)
    assert params is None or num_params(model) == params
    if kind is TTConv2d:
        assert model.conv1.rank == (8, 4)


def test_channels_last_changes_the_layout_not_the_function():
    torch.manual_seed(0)
    dense = ResNet(8, "tr", rank=3).eval()
    fast = ResNet(8, "tr", rank=3, channels_last=True).eval()
    fast.load_state_dict(dense.state_dict())
    x = torch.randn(4, 3, 32, 32)
    torch.testing.assert_close(fast(x), dense(x), atol=1e-5, rtol=1e-4)
    stem = fast.bn1(fast.conv1(x.contiguous(memory_format=torch.channels_last)))
    assert stem.is_contiguous(memory_format=torch.channels_last)


def test_fit_metrics_count_the_memorized_noisy_labels():
    """fit/memorized: of the relabelled images, the share predicted as their (wrong) training
    label; fit/clean: as their true label."""
    from tensam.tasks import ImageClassification

    class Data:
        mean, std = (0.0, 0.0, 0.0), (1 / 255, 1 / 255, 1 / 255)  # normalised pixel = id
        num_classes, input_shape = 3, (3, 2, 2)

        def __init__(self):
            images = torch.zeros(6, 3, 2, 2, dtype=torch.uint8)
            images[:, 0, 0, 0] = torch.arange(6, dtype=torch.uint8)  # the image's id
            noisy = torch.tensor([0, 1, 2, 0, 1, 2])
            self.train_clean_labels = torch.tensor([0, 1, 2, 1, 2, 0])  # images 3-5 relabelled
            self.train = self.eval = torch.utils.data.TensorDataset(images, noisy)

    predicted = torch.tensor([0, 1, 0, 0, 2, 1])  # memorizes image 3, true label for image 4

    def model(x):
        return torch.nn.functional.one_hot(predicted[x[:, 0, 0, 0].round().long()], 3).float()

    task = ImageClassification(Data(), batch_size=2, fit_metrics=True)
    fit = task.fit(model)
    assert fit["fit/accuracy"] == pytest.approx(3 / 6)
    assert fit["fit/memorized"] == pytest.approx(1 / 3)
    assert fit["fit/clean"] == pytest.approx(1 / 3)
    assert {"fit/accuracy", "accuracy"} <= set(task.evaluate(model))
