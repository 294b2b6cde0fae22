"""Adapters (FLoRA, LoRETTA TT / rep, peft's LoRA): the maths against tensorly, an unchanged
model at initialisation, merging, frozen bases, adapter-only checkpoints, one core group per
adapted layer for DAS and BAR, and the paper's parameter counts on meta-device models."""

import copy
import functools
from pathlib import Path

import pytest
import tensorly as tl
import torch
from hydra.utils import get_object
from torch import nn

pytest.importorskip("transformers")
pytest.importorskip("peft")

from tensam.adapters import (  # noqa: E402
    REP_MODES,
    TT_MODES,
    FLoRALinear,
    LorettaRep,
    LorettaTT,
    inject,
    load_adapter,
    merge,
    save_adapter,
)
from tensam.adapters.lora import lora  # noqa: E402
from tensam.build import build, check, parameters  # noqa: E402
from tensam.config import compose  # noqa: E402
from tensam.cores import core_groups  # noqa: E402
from tensam.models.hf import HFModel, build_network  # noqa: E402
from tensam.optim import DAS, NBAR, OBAR  # noqa: E402
from tensam.train import CONFIG_DIR  # noqa: E402

CONFIGS = Path(CONFIG_DIR)
TINY = {"hidden_size": 32, "num_hidden_layers": 2, "num_attention_heads": 2,
        "intermediate_size": 37, "vocab_size": 100, "max_position_embeddings": 64}
#: adapters for hidden 32 (no factorization table entry: explicit modes), as the model configs
#: build them (functools.partial); the LoRETTAs with init=zero (dW = 0 at the start, one zero
#: core): the reference init, where no core is zero, is tested in tests/test_adapter_fidelity.py
KINDS = {
    "flora": functools.partial(FLoRALinear, r=4, alpha=8),
    "loretta_tt": functools.partial(LorettaTT, r=3, alpha=6, out_modes=[4, 8], in_modes=[8, 4],
                                    init="zero"),
    "loretta_rep": functools.partial(LorettaRep, r=4, alpha=8, tt_rank=3, modes_a=[8, 4, 4],
                                     modes_b=[4, 4, 8], init="zero"),
    "lora": functools.partial(lora, r=4, alpha=8),
}
K = {"flora": 3, "loretta_tt": 4, "loretta_rep": 6, "lora": 2}


@pytest.fixture(autouse=True)
def _seed():
    torch.manual_seed(0)


def _randomized(layer):
    """The layer with its zero core filled, so dW != 0."""
    with torch.no_grad():
        for core in layer.cores():
            if not core.any():
                core.normal_(0, 0.5)
    return layer


def _tensorly(fn, *args):
    tl.set_backend("pytorch")
    try:
        return fn(*args)
    finally:
        tl.set_backend("numpy")


def _check_forward(layer, dW):
    x = torch.randn(5, layer.in_features, dtype=torch.float64)
    W, b = layer.base_layer.weight, layer.base_layer.bias
    torch.testing.assert_close(layer(x), x @ W.T + b + x @ dW.T)
    torch.testing.assert_close(layer.delta_weight(), dW)


def test_flora_is_the_tucker2_product_a_g_bt():
    layer = _randomized(FLoRALinear(nn.Linear(7, 6).double(), r=3, alpha=6))
    A, G, B = layer.cores()
    assert (A.shape, G.shape, B.shape) == ((6, 3), (3, 3), (7, 3))
    dW = 2.0 * _tensorly(tl.tucker_to_tensor, (G, [A, B]))
    _check_forward(layer, dW)


def test_loretta_tt_is_one_tensor_train_over_output_then_input_modes():
    layer = _randomized(LorettaTT(nn.Linear(12, 8).double(), r=3, alpha=6,
                                  out_modes=[2, 4], in_modes=[3, 2, 2]))
    assert [tuple(c.shape) for c in layer.cores()] == [(1, 2, 3), (3, 4, 3), (3, 3, 3),
                                                       (3, 2, 3), (3, 2, 1)]
    dW = 2.0 * _tensorly(tl.tt_to_tensor, list(layer.cores())).reshape(8, 12)
    _check_forward(layer, dW)


def test_loretta_rep_is_a_bottleneck_of_two_tensor_trains():
    layer = _randomized(LorettaRep(nn.Linear(12, 8).double(), r=2, alpha=6, tt_rank=3,
                                   modes_a=[4, 3, 2], modes_b=[2, 8]))
    cores = list(layer.cores())
    A = _tensorly(tl.tt_to_tensor, cores[:3]).reshape(12, 2)
    B = _tensorly(tl.tt_to_tensor, cores[3:]).reshape(2, 8)
    _check_forward(layer, 3.0 * (A @ B).T)


@pytest.mark.parametrize("make", [
    lambda: FLoRALinear(nn.Linear(384, 384), r=8),
    lambda: FLoRALinear(nn.Linear(384, 384), r=8, init="linear"),
    lambda: LorettaTT(nn.Linear(384, 384), r=16, init="zero"),
    lambda: LorettaRep(nn.Linear(384, 384), r=8, tt_rank=16, init="zero"),
])
def test_adapters_start_at_dw_zero_with_exactly_one_zero_core(make):
    layer = make()
    assert torch.count_nonzero(layer.delta_weight()) == 0
    assert [bool(c.any()) for c in layer.cores()].count(False) == 1
    if isinstance(layer, LorettaRep):
        assert layer.modes_a == (8, 6, 8, 4, 2)  # hidden 384 from the table


@pytest.mark.parametrize("make", [
    lambda: FLoRALinear(nn.Linear(384, 384), r=8),
    lambda: LorettaTT(nn.Linear(384, 384), r=16),
    lambda: LorettaRep(nn.Linear(384, 384), r=8, tt_rank=16),
])
def test_adapters_run_under_bf16_autocast_with_a_bf16_base(make):
    """Table 5's precision: frozen bf16 base weights, fp32 cores, bf16 autocast. A train of
    cores mixed the autocast bf16 partial product with the next fp32 core and failed."""
    layer = _randomized(make())
    layer.base_layer.to(torch.bfloat16)
    x = torch.randn(4, 384, dtype=torch.bfloat16)
    with torch.autocast("cpu", dtype=torch.bfloat16):
        y = layer(x)
    y.float().square().sum().backward()
    with torch.no_grad():
        expected = x.float() @ (layer.base_layer.weight.float() + layer.delta_weight()).T
    assert torch.allclose(y.float(), expected + layer.base_layer.bias.float(), rtol=0.05,
                          atol=0.05 * float(expected.abs().max()))
    assert all(c.grad is not None and c.grad.dtype == torch.float32 for c in layer.cores())


def test_tt_cores_are_scaled_to_the_target_variance_of_the_rebuilt_matrix():
    """Cores N(0, s^2), s = (v / r^(d-1))^(1/(2d)), give dW entries of variance v = 1/(O + I)
    (up to the spread of one draw) once the zero core is drawn like the others (init=zero)."""
    layer = LorettaTT(nn.Linear(1024, 1024), r=16, init="zero")
    s = (1 / 2048 / 16 ** 7) ** (1 / 16)
    assert all(abs(c.std().item() / s - 1) < 0.2 for c in layer.cores()[:-1])
    with torch.no_grad():
        layer.tt[-1].normal_(0, s)
    assert 0.5 < 2048 * (layer.delta_weight() / layer.scale).var().item() < 2


def test_factorization_tables_multiply_out_and_unknown_sizes_are_named():
    assert all(torch.tensor(m).prod() == n for n, m in TT_MODES.items())
    assert all(torch.tensor(m).prod() == n * r for (n, r), m in REP_MODES.items())
    with pytest.raises(ValueError, match=r"size 500.*supported sizes: \[384, 768"):
        LorettaTT(nn.Linear(500, 500))
    with pytest.raises(ValueError, match=r"size 500 with r = 8.*supported"):
        LorettaRep(nn.Linear(500, 500), r=8)
    with pytest.raises(ValueError, match="product 32"):
        LorettaTT(nn.Linear(32, 32), out_modes=[4, 4], in_modes=[8, 4])


def _inputs(seed=0, n=3, length=9):
    gen = torch.Generator().manual_seed(seed)
    mask = torch.ones(n, length, dtype=torch.long)
    mask[0, 6:] = 0
    return {"input_ids": torch.randint(3, 100, (n, length), generator=gen),
            "attention_mask": mask}


def _network(model_type="bert"):
    extra = {"pad_token_id": 1} if model_type == "roberta" else {}
    return build_network(config={"model_type": model_type, **TINY, **extra}).eval()


def _adapted(kind, model_type="bert"):
    base = _network(model_type)
    adapted = inject(copy.deepcopy(base), KINDS[kind], target_modules=["query", "value"],
                     trainable=["classifier"]).eval()
    return base, adapted


@pytest.mark.parametrize("kind", KINDS)
@pytest.mark.parametrize("model_type", ["bert", "roberta"])
def test_output_unchanged_at_init_and_merge_keeps_the_logits(kind, model_type):
    base, adapted = _adapted(kind, model_type)
    x = _inputs()
    with torch.no_grad():
        torch.testing.assert_close(adapted(**x).logits, base(**x).logits)
        for group in core_groups(adapted):  # move every core so that dW != 0
            for core in group.cores:
                core.add_(0.1 * torch.randn_like(core))
        logits = adapted(**x).logits
        assert not torch.allclose(logits, base(**x).logits, atol=1e-4)
        merged = merge(adapted)
        torch.testing.assert_close(merged(**x).logits, logits, atol=1e-5, rtol=1e-4)
    assert not core_groups(merged)
    q = merged.get_submodule(next(n for n, _ in merged.named_modules() if n.endswith("query")))
    assert type(q) is nn.Linear


@pytest.mark.parametrize("kind", KINDS)
def test_gradients_reach_adapters_and_head_only(kind):
    _, model = _adapted(kind)
    model(**_inputs()).logits.square().sum().backward()
    core_ids = {id(c) for g in core_groups(model) for c in g.cores}
    for name, p in model.named_parameters():
        trained = id(p) in core_ids or ".classifier." in f".{name}"
        assert p.requires_grad == trained, name
        assert (p.grad is not None) == trained, name
    groups = core_groups(model)
    assert len(groups) == 4 and all(g.K == K[kind] for g in groups)
    assert all(g.name.endswith(("query", "value")) for g in groups)


@pytest.mark.parametrize("kind", KINDS)
def test_adapter_weights_round_trip_through_safetensors(kind, tmp_path):
    _, model = _adapted(kind)
    with torch.no_grad():
        for p in model.parameters():
            if p.requires_grad:
                p.add_(torch.randn_like(p))
    save_adapter(model, tmp_path / "adapter.safetensors")
    torch.manual_seed(1)
    _, fresh = _adapted(kind)
    load_adapter(fresh, tmp_path / "adapter.safetensors")
    for (name, p), q in zip(model.named_parameters(), fresh.parameters(), strict=True):
        if p.requires_grad:
            assert torch.equal(p, q), name
    _, other = _adapted("flora" if kind != "flora" else "lora")
    with pytest.raises(ValueError, match="does not fit this model"):
        load_adapter(other, tmp_path / "adapter.safetensors")


@pytest.mark.parametrize("kind", KINDS)
def test_das_scales_the_adapter_cores_but_not_the_zero_core_and_moves_no_base_weight(kind):
    _, model = _adapted(kind)
    frozen = {n: p.detach().clone() for n, p in model.named_parameters() if not p.requires_grad}
    params = [p for p in model.parameters() if p.requires_grad]
    groups = core_groups(model)
    opt = DAS(torch.optim.Adam(params, lr=1e-2), groups, alpha=0.5)
    before = [[c.detach().clone() for c in g.cores] for g in groups]
    model(**_inputs()).logits[:, 0].sum().backward()
    lam = opt.scale_factors()
    zero = torch.tensor([not c.any() for g in groups for c in g.cores])
    assert zero.sum() == len(groups)  # one zero core per layer ...
    assert (lam[zero] == 0).all() and (lam[~zero] != 0).all()  # ... not scaled (eps rule)
    opt.step()
    for group, old in zip(groups, before, strict=True):
        assert any(not torch.equal(a, b) for a, b in zip(group.cores, old, strict=True))
    assert all(torch.equal(p, frozen[n]) for n, p in model.named_parameters() if n in frozen)


@pytest.mark.parametrize("method", [NBAR, OBAR])
def test_bar_runs_on_lora_pairs_and_refuses_other_adapters(method):
    _, model = _adapted("lora")
    params = [p for p in model.parameters() if p.requires_grad]
    opt = method(torch.optim.Adam(params, lr=1e-2), core_groups(model), alpha=0.5,
                 total_steps=10)
    model(**_inputs()).logits[:, 0].sum().backward()
    opt.step()
    with pytest.raises(ValueError, match="K = 2"):
        _, flora = _adapted("flora")
        method(torch.optim.Adam(flora.parameters(), lr=1e-2), core_groups(flora))


def _meta_count(model, config, *overrides):
    """(adapter parameters, adapted layers, model) of ``model=<model>`` composed with
    ``overrides`` and built as train.py builds it, on the meta device with the architecture
    ``config`` instead of the hub weights."""
    cfg = compose(f"model={model}", *overrides)["model"]
    cfg.update(pretrained=None, config=config)
    with torch.device("meta"):
        model = build(cfg, "model", num_labels=2)
    cores = [c for g in core_groups(model) for c in g.cores]
    return sum(c.numel() for c in cores), len(core_groups(model)), model


ROBERTA_LARGE = {"model_type": "roberta", "hidden_size": 1024, "num_hidden_layers": 24,
                 "num_attention_heads": 16, "intermediate_size": 4096, "vocab_size": 50265,
                 "max_position_embeddings": 514, "pad_token_id": 1}
OPT_6_7B = {"model_type": "opt", "hidden_size": 4096, "num_hidden_layers": 32,
            "num_attention_heads": 32, "ffn_dim": 16384, "vocab_size": 50272,
            "word_embed_proj_dim": 4096, "max_position_embeddings": 2048}


def test_paper_parameter_counts_on_meta_models():
    """Table 4's FLoRA on RoBERTa-large and Table 5's LoRA / LoRETTA on OPT-6.7B, from the
    shipped model configs (weights replaced by a meta-device build of the same architecture)."""
    count, layers, _ = _meta_count("roberta_large", ROBERTA_LARGE)
    assert (count, layers) == (789_504, 48)
    count, layers, model = _meta_count("opt_6.7b", OPT_6_7B)
    assert (count, layers) == (958_464, 64)  # the paper's 0.96M (loretta_rep)
    assert sum(p.numel() for p in model.parameters() if p.requires_grad) == 958_464
    assert sum(p.numel() for p in model.parameters()) > 6.6e9
    count, _, _ = _meta_count("opt_6.7b", OPT_6_7B, "model/adapter=loretta_tt",
                              "model.adapter.r=16")
    assert count == 1_187_840  # 18,560 per matrix, App. B's [4,4,16,16,16,16,4,4] rank 16
    count, _, model = _meta_count("opt_6.7b", OPT_6_7B, "model/adapter=lora",
                                  "model.adapter.r=16")
    assert count == 8_388_608  # the paper's 8.39M, counted by peft's own layers
    assert sum(p.numel() for p in model.parameters() if p.requires_grad) == 8_388_608


@pytest.mark.parametrize("model_type, targets, head", [
    ("bert", ["query", "value"], "classifier"),
    ("opt", ["q_proj", "v_proj"], "score"),
])
def test_hf_model_trains_adapters_and_its_new_head_and_merges(model_type, targets, head):
    config = {"model_type": model_type, **TINY, "ffn_dim": 37, "word_embed_proj_dim": 32}
    flora = functools.partial(FLoRALinear, r=2)
    model = HFModel(num_labels=3, config=config, adapter=flora, target_modules=targets).eval()
    core_ids = {id(c) for g in core_groups(model) for c in g.cores}
    assert len(core_ids) == 12
    for name, p in model.named_parameters():
        assert p.requires_grad == (id(p) in core_ids or f".{head}." in f".{name}"), name
    batch = {**_inputs(), "labels": torch.zeros(3, dtype=torch.long)}
    with torch.no_grad():
        for group in core_groups(model):
            group.cores[1].normal_()
        logits = model(batch)
        assert logits.shape == (3, 3)
        torch.testing.assert_close(model.merge()(batch), logits, atol=1e-5, rtol=1e-4)
    full = HFModel(num_labels=2, config=config)
    assert all(p.requires_grad for p in full.parameters()) and not core_groups(full)
    with pytest.raises(ValueError, match="model.target_modules is an adapter option"):
        HFModel(config=config, target_modules=targets)
    with pytest.raises(ValueError, match="model.target_modules is required"):
        HFModel(config=config, adapter=flora)
    with pytest.raises(ValueError, match=r"target_modules=\['qkv'\] match no nn.Linear"):
        HFModel(config=config, adapter=flora, target_modules=["qkv"])
    with pytest.raises(ValueError, match=r"trainable entries \['head'\] name no parameter"):
        HFModel(config=config, adapter=flora, target_modules=targets, trainable=["head"])


ADAPTER_CONFIGS = sorted(p.stem for p in (CONFIGS / "model" / "adapter").glob("*.yaml"))
ADAPTED_MODELS = sorted(p.stem for p in (CONFIGS / "model").glob("*.yaml")
                        if "- adapter:" in p.read_text())


@pytest.mark.parametrize("adapter", ADAPTER_CONFIGS)
def test_every_adapter_config_adapts_minilms_query_and_value(adapter):
    """``model=minilm model/adapter=<name>``, built as train.py builds it: one core group per
    adapted linear (6 layers x query, value), made by the config's own target."""
    cfg = compose("model=minilm", f"model/adapter={adapter}")["model"]
    assert cfg["adapter"]["_partial_"] is True
    model = build(cfg, "model", num_labels=2)
    groups = core_groups(model)
    assert len(groups) == 12
    target = get_object(cfg["adapter"]["_target_"])
    if isinstance(target, type):
        layers = [m for m in model.modules() if isinstance(m, target)]
        assert len(layers) == 12 and all(m.r == cfg["adapter"]["r"] for m in layers)
    trainable = {id(p) for p in model.parameters() if p.requires_grad}
    cores = {id(c) for g in groups for c in g.cores}
    assert cores < trainable and len(trainable - cores) == 2  # the classifier's weight and bias


@pytest.mark.parametrize("model", ADAPTED_MODELS)
@pytest.mark.parametrize("adapter", ADAPTER_CONFIGS)
def test_every_adapted_model_composes_with_every_adapter(model, adapter):
    """Each key of the composed adapter node is an argument of its target (checked as a run
    checks it, before any work)."""
    node = compose(f"model={model}", f"model/adapter={adapter}")["model"]["adapter"]
    assert set(check(node, "model.adapter")) <= set(parameters(get_object(node["_target_"])))
