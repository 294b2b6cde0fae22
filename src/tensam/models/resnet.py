"""CIFAR ResNet-20/32 (He et al., 2016, Sec. 4.2) with dense or tensorized convolutions.

Three stages of n = (depth - 2) / 6 basic blocks of widths 16, 32, 64 (stride 2 at the first
block of stages 2 and 3) after a 3x3 conv 3 -> 16; BatchNorm after every conv; option-A
shortcuts (stride-2 subsampling and zero-padded new channels, no parameters); global average
pooling and a dense Linear 64 -> num_classes. ``conv`` picks EVERY conv, the first included
(Sec. 5.2, Appendix B): ``dense`` (``nn.Conv2d``, He init), ``cp`` (4-order CP of rank R),
``tr`` (Tensor-Ring of rank r over Table 8's tensorization) or ``tt`` (TT-ranks (r1, r2)); each
tensorized conv is one core group. Parameter counts (exact; tests/test_resnet.py), ratio =
dense / this model:

==========  =====  =========  ======    ==========  =====  =========  ======
model       rank   params     ratio     model       rank   params     ratio
==========  =====  =========  ======    ==========  =====  =========  ======
ResNet-20   dense  269,722    1.00      ResNet-32   dense  464,154    1.00
TR-20       5      15,476     17.43     TR-32       15     202,272    2.29
TR-20       8      36,458     7.40      CP-20       10     16,316     16.53
TR-20       10     55,826     4.83      CP-20       20     30,606     8.81
TR-20       15     123,076    2.19      CP-20       40     59,186     4.56
TR-20       20     217,226    1.24      CP-20       80     116,346    2.32
                                        CP-20       160    230,666    1.17
==========  =====  =========  ======    ==========  =====  =========  ======

TR-ResNet-32 at rank 15 is the paper's 0.20M model of Table 2 (dense: 0.46M). Figure 3 shows
its five ranks per decomposition only on the figure's axis; :func:`figure3_ranks` is our
choice, spanning the same range of compression ratios (about 1.2x to 17x).
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence

import torch
import torch.nn.functional as F
from torch import nn

from tensam.errors import ConfigError
from tensam.models.mlp import decay_groups
from tensam.tensorized import CPConv2d, TRConv2d, TTConv2d

TENSORIZED = {"cp": CPConv2d, "tr": TRConv2d, "tt": TTConv2d}
CONVS = ("dense", *TENSORIZED)


def figure3_ranks() -> dict[str, tuple[int, ...]]:
    """The five ranks per decomposition of our Figure 3 (TR-/CP-ResNet-20 on CIFAR-10)."""
    return {"cp": (10, 20, 40, 80, 160), "tr": (5, 8, 10, 15, 20)}


def num_params(model: nn.Module) -> int:
    return sum(p.numel() for p in model.parameters())


def conv3x3(conv: str, rank, in_channels: int, out_channels: int, stride: int = 1) -> nn.Module:
    """A 3x3 conv with padding 1 and no bias, of kind ``conv`` (see :data:`CONVS`)."""
    if conv == "dense":
        layer = nn.Conv2d(in_channels, out_channels, 3, stride, 1, bias=False)
        nn.init.kaiming_normal_(layer.weight, mode="fan_in", nonlinearity="relu")
        return layer
    return TENSORIZED[conv](in_channels, out_channels, 3, rank, stride=stride, padding=1)


class BasicBlock(nn.Module):
    """relu(bn2(conv2(relu(bn1(conv1(x))))) + shortcut(x)), option-A shortcut."""

    def __init__(self, conv: str, rank, in_channels: int, out_channels: int, stride: int):
        super().__init__()
        self.conv1 = conv3x3(conv, rank, in_channels, out_channels, stride)
        self.bn1 = nn.BatchNorm2d(out_channels)
        self.conv2 = conv3x3(conv, rank, out_channels, out_channels)
        self.bn2 = nn.BatchNorm2d(out_channels)
        self.stride, self.extra_channels = stride, out_channels - in_channels

    def shortcut(self, x: torch.Tensor) -> torch.Tensor:
        """Option A: identity, or stride subsampling with the new channels zero-padded."""
        if self.stride == 1 and self.extra_channels == 0:
            return x
        return F.pad(x[:, :, ::self.stride, ::self.stride], (0, 0, 0, 0, 0, self.extra_channels))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        out = F.relu(self.bn1(self.conv1(x)))
        return F.relu(self.bn2(self.conv2(out)) + self.shortcut(x))


class ResNet(nn.Module):
    """CIFAR ResNet of ``depth`` = 6n + 2 (20, 32, ...) with convolutions of kind ``conv``.

    ``rank``: R for ``cp``, r for ``tr``, r or (r1, r2) for ``tt``; ignored for ``dense``.
    ``decay_biases_and_norms=False`` keeps BatchNorm and biases out of weight decay (the
    default True is the paper's: weight decay on every parameter). ``channels_last=True`` keeps
    the activations (and dense kernels) in NHWC, the layout oneDNN's bf16 convolutions run
    fastest in on CPU (``results/bench_vision.md``); it changes no value beyond rounding.
    """

    def __init__(self, depth: int = 20, conv: str = "dense",
                 rank: int | Sequence[int] | None = None,
                 input_shape: Sequence[int] = (3, 32, 32), num_classes: int = 10,
                 decay_biases_and_norms: bool = True, channels_last: bool = False):
        super().__init__()
        if depth < 8 or (depth - 2) % 6:
            raise ConfigError(f"model.depth={depth} must be 6n + 2 with n >= 1 (20, 32, 44, ...)")
        if conv not in CONVS:
            raise ConfigError(f"model.conv={conv!r} is not one of {list(CONVS)}")
        if conv != "dense" and rank is None:
            raise ConfigError(f"model.conv={conv} needs model.rank")
        self.depth, self.conv, self.rank = depth, conv, None if conv == "dense" else rank
        self.input_shape, self.num_classes = tuple(input_shape), int(num_classes)
        self.decay_biases_and_norms = decay_biases_and_norms
        self.conv1 = conv3x3(conv, rank, self.input_shape[0], 16)
        self.bn1 = nn.BatchNorm2d(16)
        blocks, width = [], 16
        for stage, out in enumerate((16, 32, 64)):
            for i in range((depth - 2) // 6):
                stride = 2 if stage > 0 and i == 0 else 1
                blocks.append(BasicBlock(conv, rank, width, out, stride))
                width = out
        self.blocks = nn.Sequential(*blocks)
        self.fc = nn.Linear(64, self.num_classes)
        self.memory_format = torch.channels_last if channels_last else torch.contiguous_format
        if channels_last:
            self.to(memory_format=torch.channels_last)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = x.contiguous(memory_format=self.memory_format)
        out = self.blocks(F.relu(self.bn1(self.conv1(x))))
        return self.fc(out.mean(dim=(2, 3)))

    def compression_ratio(self) -> float:
        """Parameters of the dense ResNet of the same depth / this model's parameters."""
        with torch.device("meta"):
            dense = ResNet(self.depth, "dense", input_shape=self.input_shape,
                           num_classes=self.num_classes)
        return num_params(dense) / num_params(self)

    def param_groups(self, base_cfg: Mapping) -> list:
        if self.decay_biases_and_norms:
            return [p for p in self.parameters() if p.requires_grad]
        return decay_groups(self, base_cfg)

    def extra_repr(self) -> str:
        return f"depth={self.depth}, conv={self.conv!r}, rank={self.rank}"
