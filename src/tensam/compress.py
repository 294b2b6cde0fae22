"""Compression of trained dense layers into Tensor-Train layers by TT-SVD (Sec. 5.2, Table 3).

The paper's Table 3 fine-tunes a pretrained ResNet-18 after compressing its convolutions "using
Tensor-Train (TT) decomposition, with ranks suggested in [71]" (Yin et al., 2021; Table 9).
Here a dense layer becomes a tensorized one whose cores are the TT-SVD factors of its weight:

* ``nn.Conv2d`` (Cout, Cin, K, K) -> :class:`~tensam.tensorized.TTConv2d`: the kernel is read as
  the 3-way tensor T[o, h K + w, i] = W[o, i, h, w] of shape (Cout, K^2, Cin), TTConv2d's layout,
  and TT-SVD with ranks (r1, r2) gives its cores U (Cout, r1), M (r1, K^2, r2), V (r2, Cin).
* ``nn.Linear`` (out, in) -> :class:`~tensam.tensorized.CPLinear` of rank r with 1-mode shapes:
  a 2-core TT, W = A B^T, which TT-SVD makes the truncated SVD (Eckart-Young).

Bias, stride and padding are carried over. :func:`compress` swaps layers by name and reports,
per layer, the parameters before/after and the relative error ||W - W_tt||_F / ||W||_F.

TT-ResNet-18 (:func:`tt_resnet18`): torchvision's ResNet-18 with the sixteen 3x3 convolutions
of layer1-layer4 in TT with the ranks of Table 9 (:data:`TT_RESNET18_RANKS`); the stem conv,
the 1x1 downsample convs, BatchNorm and fc stay dense. Table 9 writes TT-ranks [1, r1, r2, 1]
and r1 is the bond on the Cout side: cores (Cout, r1), (r1, 9, r2), (r2, Cin). One rank of the
table exceeds what its unfolding can hold: layer3.0.conv1 has r2 = 150 > Cin = 128. TT-SVD as
tensorly and Yin et al.'s ``ten2tt`` compute it caps that rank at 128 (the default, 4,406,063
parameters); ``cap_ranks=False`` keeps 150 (4,448,479; see :func:`tt_svd`). Both round to the
paper's "4.4M" (dense ResNet-18: 11,689,512, or 11,176,512 without its fc layer, the paper's
"11.2M"); the reverse order (Cout, r2), (r2, 9, r1), (r1, Cin) gives 4,407,519 uncapped.
"""

from __future__ import annotations

import json
import logging
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path

import torch
import torch.nn.functional as F
import torchvision
from torch import nn

from tensam.errors import ConfigError
from tensam.tensorized import CPLinear, TTConv2d

log = logging.getLogger(__name__)

#: Table 9 (after Yin et al., 2021): TT-ranks (r1, r2) of TT-ResNet-18's 3x3 convolutions,
#: r1 on the Cout side; [1, r1, r2, 1] in the paper's notation.
TT_RESNET18_RANKS: dict[str, tuple[int, int]] = {
    "layer1.0.conv1": (64, 64), "layer1.0.conv2": (64, 64),
    "layer1.1.conv1": (64, 64), "layer1.1.conv2": (64, 64),
    "layer2.0.conv1": (120, 60), "layer2.0.conv2": (100, 100),
    "layer2.1.conv1": (100, 100), "layer2.1.conv2": (100, 100),
    "layer3.0.conv1": (200, 150), "layer3.0.conv2": (135, 135),
    "layer3.1.conv1": (135, 135), "layer3.1.conv2": (135, 135),
    "layer4.0.conv1": (320, 200), "layer4.0.conv2": (170, 170),
    "layer4.1.conv1": (170, 170), "layer4.1.conv2": (170, 170),
}


@dataclass(frozen=True)
class LayerReport:
    """One compressed layer: its TT-ranks, parameters before/after, ||W - W_tt||_F / ||W||_F
    (nan on the meta device)."""

    name: str
    ranks: tuple[int, ...]
    params_before: int
    params_after: int
    rel_error: float


def tt_svd(tensor: torch.Tensor, ranks: Sequence[int],
           cap: bool = True) -> tuple[list[torch.Tensor], torch.Tensor]:
    """TT-SVD (Oseledets, 2011, Algorithm 1) of a d-way tensor, TT-ranks (1, r_1, ..., r_{d-1}, 1).

    Returns the cores G_k (r_{k-1}, n_k, r_k) and the energies delta_k^2 discarded at the d - 1
    steps (a tensor). Step k takes the SVD U_k S_k V_k^T of the carried matrix C_k
    (r_{k-1} n_k x n_{k+1} ... n_d), C_1 the first unfolding of the tensor, keeps the leading r_k
    left singular vectors as G_k and carries C_{k+1} = S_k V_k^T (its first r_k rows); delta_k^2
    is the sum of the discarded squared singular values. G_d is the last carry. The cores
    G_1, ..., G_{d-1} are left-orthonormal, so every step is an orthogonal projection and
    Pythagoras gives

        ||W - W_tt||_F^2 = sum_k delta_k^2  <=  sum_k eps_k^2,

    eps_k^2 the energy beyond rank r_k of the k-th unfolding of W itself (Oseledets' Theorem 2.2;
    equality for d = 2, where TT-SVD is the truncated SVD).

    ``cap=True`` (tensorly's ``tensor_train`` and Yin et al.'s ``ten2tt``): a rank above the
    rank the carried matrix can have is lowered to min(rows, columns), and the later steps use
    the lowered rank; Table 9's r2 = 150 at layer3.0.conv1 (Cin = 128) becomes 128.
    ``cap=False`` keeps the requested rank: the further left singular vectors come from the
    full SVD, whose singular values are zero, so the product is unchanged, the core stays
    left-orthonormal, and the new bond slices are not zero on both sides of the bond (a
    stationary point that training would never leave); only columns beyond the matrix's row
    count are zero.
    """
    shape = tensor.shape
    if len(ranks) != len(shape) - 1 or any(int(r) < 1 for r in ranks):
        raise ConfigError(f"a {len(shape)}-way tensor needs {len(shape) - 1} TT-ranks >= 1, "
                          f"got {list(ranks)}")
    cores, discarded = [], []
    carry, r_prev = tensor, 1
    for n, r in zip(shape[:-1], map(int, ranks), strict=True):
        mat = carry.reshape(r_prev * n, -1)
        r = min(r, *mat.shape) if cap else r
        u, s, vh = torch.linalg.svd(mat, full_matrices=r > min(mat.shape))
        discarded.append(s[r:].square().sum())
        s = s[:r]
        u, carry = u[:, :r], s[:, None] * vh[:len(s)]
        cores.append(F.pad(u, (0, r - u.shape[1])).reshape(r_prev, n, r))
        carry, r_prev = F.pad(carry, (0, 0, 0, r - carry.shape[0])), r
    cores.append(carry.reshape(r_prev, shape[-1], 1))
    return cores, torch.stack(discarded)


def _conv_to_tt(conv: nn.Conv2d, ranks: Sequence[int],
                cap: bool) -> tuple[TTConv2d, torch.Tensor]:
    """The TTConv2d of ``conv``'s TT-SVD over (Cout, K^2, Cin), and its rebuilt kernel."""
    k, stride, padding = conv.kernel_size, conv.stride, conv.padding
    if (conv.groups != 1 or conv.dilation != (1, 1) or k[0] != k[1] or stride[0] != stride[1]
            or isinstance(padding, str) or padding[0] != padding[1]
            or conv.padding_mode != "zeros"):
        raise ConfigError(f"TTConv2d needs a square kernel, equal strides and zero paddings, no "
                          f"groups or dilation; got {conv}")
    w = conv.weight.detach()
    cout, cin = w.shape[:2]
    (u, m, v), _ = tt_svd(w.double().permute(0, 2, 3, 1).reshape(cout, k[0] ** 2, cin), ranks,
                          cap)
    layer = TTConv2d(cin, cout, k[0], (m.shape[0], m.shape[2]), stride=stride[0],
                     padding=padding[0],
                     bias=conv.bias is not None).to(w.device, w.dtype)
    with torch.no_grad():
        cores = (u.reshape(cout, -1), m, v.reshape(-1, cin))
        for factor, core in zip(layer.factors, cores, strict=True):
            factor.copy_(core)
    return layer, layer.kernel()


def _linear_to_tt(linear: nn.Linear, ranks: Sequence[int],
                  cap: bool) -> tuple[CPLinear, torch.Tensor]:
    """The rank-r CPLinear W = A B^T of ``linear``'s truncated SVD, and its rebuilt weight."""
    w = linear.weight.detach()
    (a, b), _ = tt_svd(w.double(), ranks, cap)
    layer = CPLinear((w.shape[1],), (w.shape[0],), a.shape[2],
                     bias=linear.bias is not None).to(w.device, w.dtype)
    with torch.no_grad():
        layer.factors[0].copy_(a.reshape(w.shape[0], -1))
        layer.factors[1].copy_(b.reshape(-1, w.shape[1]).T)
    return layer, layer.weight_matrix()


def tensorize(layer: nn.Module, ranks: int | Sequence[int], name: str = "",
              cap: bool = True) -> tuple[nn.Module, LayerReport]:
    """``layer`` (``nn.Conv2d``: ranks (r1, r2) or r = r1 = r2; ``nn.Linear``: rank r) as a
    TTConv2d / CPLinear initialised by TT-SVD (``cap``: see :func:`tt_svd`), with its bias,
    and the :class:`LayerReport` (with the ranks the layer got)."""
    if isinstance(layer, nn.Conv2d):
        ranks = (ranks, ranks) if isinstance(ranks, int) else tuple(ranks)
        new, w_tt = _conv_to_tt(layer, ranks, cap)
        ranks = tuple(new.rank)
    elif isinstance(layer, nn.Linear):
        ranks = (ranks,) if isinstance(ranks, int) else tuple(ranks)
        new, w_tt = _linear_to_tt(layer, ranks, cap)
        ranks = (new.rank,)
    else:
        raise ConfigError(f"'{name}' is a {type(layer).__name__}: only nn.Conv2d and nn.Linear "
                          "are compressed")
    if layer.bias is not None:
        with torch.no_grad():
            new.bias.copy_(layer.bias)
    w = layer.weight.detach().double()
    error = torch.linalg.norm(w_tt.detach().double() - w) / torch.linalg.norm(w)
    error = float("nan") if w.is_meta else error.item()  # meta: shapes and counts only
    before, after = (sum(p.numel() for p in m.parameters()) for m in (layer, new))
    return new, LayerReport(name, ranks, before, after, error)


def compress(model: nn.Module, ranks: Mapping[str, int | Sequence[int]],
             cap: bool = True) -> list[LayerReport]:
    """Replace, in place, each layer named in ``ranks`` (``named_modules`` names) by its TT-SVD
    (:func:`tensorize`, ``cap`` as :func:`tt_svd`); log and return the per-layer reports. Names
    that are not Conv2d/Linear modules of ``model`` raise a ValueError naming them, before
    anything is replaced."""
    modules = dict(model.named_modules())
    unknown = [n for n in ranks if not isinstance(modules.get(n), (nn.Conv2d, nn.Linear))]
    if unknown:
        raise ConfigError(f"no nn.Conv2d or nn.Linear named {unknown} in {type(model).__name__}")
    reports = []
    for name, rank in ranks.items():
        new, report = tensorize(modules[name], rank, name, cap)
        parent, _, child = name.rpartition(".")
        setattr(model.get_submodule(parent), child, new)
        log.info("%s: TT-ranks %s, %d -> %d parameters, relative error %.4f", name,
                 report.ranks, report.params_before, report.params_after, report.rel_error)
        reports.append(report)
    return reports


def tt_resnet18(pretrained: bool | str = False, num_classes: int = 1000,
                input_shape: Sequence[int] = (3, 224, 224), cap_ranks: bool = True) -> nn.Module:
    """TT-ResNet-18 of Table 3: torchvision's ResNet-18 compressed by TT-SVD with the ranks of
    Table 9: 4,406,063 parameters at 1000 classes with ``cap_ranks=True`` (tensorly's and Yin et
    al.'s TT-SVD: layer3.0.conv1's r2 = 150 is capped at Cin = 128), 4,448,479 without.

    ``pretrained``: False (torchvision's random init, then TT-SVD), True (``IMAGENET1K_V1``, the
    paper's), a torchvision weights name (e.g. ``"IMAGENET1K_V1"``), or the path of a saved
    ``state_dict`` (offline clusters). A ``num_classes`` other than 1000 replaces fc by a fresh
    ``nn.Linear(512, num_classes)``. The per-layer reports are logged and kept in
    ``model.compression_report``. Under ``torch.device("meta")`` only the shapes are built.
    """
    if input_shape[0] != 3:
        raise ConfigError(f"TT-ResNet-18 takes 3-channel images, got input_shape={input_shape}")
    path = Path(pretrained) if isinstance(pretrained, str) and Path(pretrained).is_file() else None
    weights = "IMAGENET1K_V1" if pretrained is True else pretrained
    weights = None if path or not weights else weights
    model = torchvision.models.resnet18(weights=weights)
    if path is not None:
        model.load_state_dict(torch.load(path, map_location="cpu", weights_only=True))
    if num_classes != model.fc.out_features:
        model.fc = nn.Linear(model.fc.in_features, num_classes)
    model.compression_report = compress(model, TT_RESNET18_RANKS, cap=cap_ranks)
    return model


def tt_rank_for_ratio(conv: nn.Conv2d, ratio: float) -> int:
    """The largest TT-rank r = r1 = r2 whose cores (Cout, r), (r, K^2, r), (r, Cin) hold at most
    ``ratio`` of the conv's Cout Cin K^2 weights (at least 1)."""
    cout, cin, kh, kw = conv.weight.shape
    budget = ratio * cout * cin * kh * kw
    r = 1
    while (r + 1) * (cout + kh * kw * (r + 1) + cin) <= budget:
        r += 1
    return r


def trained_state_dict(path: str | Path) -> dict[str, torch.Tensor]:
    """The model weights in ``path``: a tensam ``checkpoint.pt`` (its ``model`` entry) or a plain
    ``state_dict``. A tensam checkpoint must be the final one of a finished run: the
    ``summary.json`` beside it says ``finished`` at the checkpoint's step, else ValueError."""
    from tensam.training import read_checkpoint

    path = Path(path).expanduser()
    if not path.is_file():
        raise ConfigError(f"model.checkpoint={str(path)!r} does not exist (train the dense "
                          "network first, e.g. `make reproduce-table3-cpu` trains it)")
    ckpt = read_checkpoint(path)
    if "model" not in ckpt:
        return ckpt
    summary = path.with_name("summary.json")
    status = json.loads(summary.read_text()) if summary.is_file() else {}
    if status.get("status") != "finished" or status.get("steps") != ckpt["step"]:
        raise ConfigError(f"model.checkpoint={str(path)!r} is at step {ckpt['step']} of a run "
                          f"that has not finished ({summary.name}: status "
                          f"{status.get('status')!r}, steps {status.get('steps')}); finish "
                          "that run first")
    return ckpt["model"]


def compressed_resnet(checkpoint: str | Path, ratio: float = 0.341, depth: int = 20,
                      input_shape: Sequence[int] = (3, 32, 32), num_classes: int = 10,
                      decay_biases_and_norms: bool = True) -> nn.Module:
    """Table 3's pipeline on a CIFAR ResNet: the dense ResNet of ``depth`` with the trained
    weights of ``checkpoint`` (:func:`trained_state_dict`), whose 3x3 convolutions of the three
    stages are compressed by TT-SVD into TTConv2d, each with the largest TT-rank
    (:func:`tt_rank_for_ratio`) that keeps at most ``ratio`` of its weights; the first conv,
    BatchNorm (with its running statistics) and fc stay dense, as the stem and fc of TT-ResNet-18
    do (Table 9's ranks keep 3,744,439 / 10,985,472 = 0.341 of its 3x3 conv weights). The
    per-layer reports are logged and kept in ``model.compression_report``.
    """
    from tensam.models.resnet import ResNet

    if not 0 < ratio < 1:
        raise ConfigError(f"model.ratio={ratio} must be in (0, 1): the fraction of each conv's "
                          "weights its TT cores may hold")
    model = ResNet(depth, "dense", input_shape=input_shape, num_classes=num_classes,
                   decay_biases_and_norms=decay_biases_and_norms)
    try:
        model.load_state_dict(trained_state_dict(checkpoint))
    except RuntimeError as err:  # the checkpoint holds another architecture
        raise ConfigError(f"model.checkpoint={str(checkpoint)!r} is not a dense ResNet-{depth} "
                          f"with {num_classes} classes: {str(err).splitlines()[0]}") from None
    convs = {n: m for n, m in model.named_modules()
             if n.startswith("blocks.") and isinstance(m, nn.Conv2d)}
    model.compression_report = compress(model, {n: tt_rank_for_ratio(m, ratio)
                                                for n, m in convs.items()})
    model.conv = "tt"
    return model
