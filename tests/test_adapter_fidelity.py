"""The adapters against the authors' code (Tables 4-6), each checked against a computation
written from what that code does, not against our own output:

* FLoRA (SJTU-DeepVisionLab/FLoRA, flora/layers.py): G = 0, each (dim x r) factor
  ``kaiming_normal_(a=sqrt(3))``;
* LoRETTA_rep / TT (yifanycc/loretta, loretta/tensor_layers/low_rank_tensors.py): core k
  N(0, target_sdv^(2/d) / r_k), target_sdv = sqrt(1 / (in + out)); its trainable set (``"Norm" in
  name``) and ``lora_dropout`` on the adapter input; OPT loaded in bf16 (large_models/run.py);
* MeZO (princeton-nlp/MeZO, medium_models/run.py, src/models.py): a RoBERTa LoRA run freezes only
  the names starting with ``roberta``, so the untied MLM head trains.
"""

import copy
import functools
import math

import pytest
import torch
import torch.nn.functional as F
from torch import nn

pytest.importorskip("transformers")
pytest.importorskip("peft")

from test_adapters import OPT_6_7B, ROBERTA_LARGE  # noqa: E402

from tensam.adapters import FLoRALinear, LorettaRep, LorettaTT, inject  # noqa: E402
from tensam.adapters.lora import lora  # noqa: E402
from tensam.build import build  # noqa: E402
from tensam.config import compose  # noqa: E402
from tensam.cores import core_groups  # noqa: E402
from tensam.models.hf import HFModel, build_network  # noqa: E402
from tensam.optim import DAS, SAM  # noqa: E402

TINY = {"hidden_size": 32, "num_hidden_layers": 2, "num_attention_heads": 2,
        "intermediate_size": 37, "vocab_size": 100, "max_position_embeddings": 64}
TINY_OPT = {"model_type": "opt", **TINY, "ffn_dim": 37, "word_embed_proj_dim": 32}
TINY_ROBERTA = {"model_type": "roberta", **TINY, "pad_token_id": 1}
#: LoRETTA_rep at hidden 32 (explicit modes), as the model configs build it
REP = functools.partial(LorettaRep, r=4, alpha=8, tt_rank=3, modes_a=[8, 4, 4],
                        modes_b=[4, 4, 8])


@pytest.fixture(autouse=True)
def _seed():
    torch.manual_seed(0)


def _std_close(t: torch.Tensor, std: float, sigmas: float = 5.0) -> bool:
    """Whether the sample std of ``t``'s entries (zero-mean Gaussian) is ``std`` within
    ``sigmas`` standard errors (1 / sqrt(2 n) relative)."""
    return abs(t.detach().double().square().mean().sqrt().item() / std - 1) < sigmas / math.sqrt(
        2 * t.numel())


def _ids(n=3, length=9):
    return {"input_ids": torch.randint(3, 100, (n, length)),
            "attention_mask": torch.ones(n, length, dtype=torch.long)}


def _from_config(model, config, *overrides):
    """``model=<model>`` composed with ``overrides`` and built as train.py builds it, on a
    config-built (random) network: under ``torch.device("meta")`` the paper-scale one."""
    cfg = compose(f"model={model}", *overrides)["model"]
    cfg.update(pretrained=None, config=config)
    return build(cfg, "model", num_labels=2)


# -- item 4: FLoRA ------------------------------------------------------------------------

def test_flora_reference_init_is_the_official_kaiming_normal_of_each_factor():
    """The official ``init_parameters``: ``kaiming_normal_(param, a=sqrt(3))`` on the (I x r)
    and (O x r) factors and G zero. torch: std = gain / sqrt(fan_in), gain =
    sqrt(2 / (1 + a^2)), fan_in of a 2-D (dim x r) tensor = r."""
    r, a = 8, math.sqrt(3)
    layer = FLoRALinear(nn.Linear(1024, 1024), r=r)  # RoBERTa-large's q / v, Table 10's r
    A, G, B = layer.cores()
    assert layer.init == "reference" and not G.any()
    for factor in (A, B):
        fan_in, _ = nn.init._calculate_fan_in_and_fan_out(torch.empty(factor.shape))
        assert fan_in == r
        std = math.sqrt(2 / (1 + a * a)) / math.sqrt(fan_in)  # 0.25
        assert _std_close(factor, std)
        assert abs(factor.norm().item() / (std * math.sqrt(factor.numel())) - 1) < 0.05  # 22.6
    assert abs(A.norm().item() / B.norm().item() - 1) < 0.05  # balanced factors


def test_flora_linear_init_keeps_nn_linears_default_with_unbalanced_factors():
    layer = FLoRALinear(nn.Linear(1024, 1024), r=8, init="linear")
    A, G, B = layer.cores()
    assert not G.any()
    for factor, fan_in in ((A, 8), (B, 1024)):  # A: a map r -> O, B^T: a map I -> r
        bound = 1 / math.sqrt(fan_in)  # kaiming_uniform_(a=sqrt(5))
        assert factor.abs().max() <= bound and _std_close(factor, bound / math.sqrt(3))
    with pytest.raises(ValueError, match=r"init='zero' is not one of \['reference', 'linear'\]"):
        FLoRALinear(nn.Linear(8, 8), r=2, init="zero")


# -- item 2: LoRETTA ----------------------------------------------------------------------

def _reference_stds(modes, rank, n_in, n_out):
    """The published TensorTrain.build_factors_Gaussian: randn(r1, n, r2) / sqrt(r2) *
    target_sdv^(1/d), target_sdv = sqrt(1 / (in + out)) of the wrapped (in x out) map."""
    d, target_sdv = len(modes), math.sqrt(1 / (n_in + n_out))
    ranks = [1] + [rank] * (d - 1) + [1]
    return [target_sdv ** (1 / d) / math.sqrt(ranks[k + 1]) for k in range(d)]


def test_loretta_rep_reference_init_draws_every_core_at_the_codes_target_std():
    layer = LorettaRep(nn.Linear(1024, 1024), r=8, tt_rank=16)
    assert layer.init == "reference" and layer.modes_a == (4, 8, 8, 8, 4)
    expected = (_reference_stds(layer.modes_a, 16, 1024, 8)  # lora_A: in 1024 -> out r
                + _reference_stds(layer.modes_b, 16, 8, 1024))  # lora_B: in r -> out 1024
    cores = layer.cores()
    assert all(c.any() for c in cores)  # no zero core ...
    assert all(_std_close(c, s) for c, s in zip(cores, expected, strict=True))
    assert layer.delta_weight().abs().max() > 0  # ... so dW != 0 at the start
    A, B = layer._factors()  # the rebuilt factors have the target variance 1 / (in + out)
    assert 0.5 < A.var().item() * (1024 + 8) < 2 and 0.5 < B.var().item() * (8 + 1024) < 2


def test_loretta_tt_reference_init_draws_every_core_at_the_codes_target_std():
    layer = LorettaTT(nn.Linear(1024, 1024), r=16)
    expected = _reference_stds(layer.out_modes + layer.in_modes, 16, 1024, 1024)
    assert all(c.any() for c in layer.cores()) and layer.delta_weight().abs().max() > 0
    assert all(_std_close(c, s) for c, s in zip(layer.cores(), expected, strict=True))


def test_loretta_reference_init_changes_the_output_and_the_zero_init_does_not():
    base = build_network(config=TINY_ROBERTA).eval()
    x = _ids()
    with torch.no_grad():
        want = base(**x).logits
        for init, same in (("reference", False), ("zero", True)):
            model = inject(copy.deepcopy(base), functools.partial(REP, init=init),
                           ["query", "value"]).eval()
            assert torch.allclose(model(**x).logits, want, atol=1e-6) is same, init
    with pytest.raises(ValueError, match=r"init='linear' is not one of \['reference', 'zero'\]"):
        LorettaRep(nn.Linear(32, 32), r=4, tt_rank=3, modes_a=[8, 4, 4], modes_b=[4, 4, 8],
                   init="linear")


# -- item 3: LoRETTA's trainable set and dropout ------------------------------------------

def _layernorm_params(model):
    return {f"{m_name}.{p_name}".lstrip(".") for m_name, m in model.named_modules()
            if isinstance(m, nn.LayerNorm) for p_name, _ in m.named_parameters(recurse=False)}


def _trainable(model):
    return {n for n, p in model.named_parameters() if p.requires_grad}


def _core_names(model):
    ids = {id(c) for g in core_groups(model) for c in g.cores}
    return {n for n, p in model.named_parameters() if id(p) in ids}


def test_the_reference_norm_rule_trains_robertas_layernorms_and_nothing_of_opts():
    """LoRETTA's mark_lora_layernorm_cls_trainable: ``"Norm" in name`` (case-sensitive)."""
    targets = {"roberta": ["query", "value"], "opt": ["q_proj", "v_proj"]}
    roberta = inject(build_network(config=TINY_ROBERTA), REP, targets["roberta"],
                     trainable_name_contains=["Norm"])
    assert _layernorm_params(roberta)
    assert _trainable(roberta) == _core_names(roberta) | _layernorm_params(roberta)
    opt = build_network(config=TINY_OPT)
    assert not [n for n, _ in opt.named_parameters() if "Norm" in n]
    with pytest.raises(ValueError, match=r"\['Norm'\] are in no parameter name"):
        inject(opt, REP, targets["opt"], trainable_name_contains=["Norm"])
    opt = inject(build_network(config=TINY_OPT), REP, targets["opt"],
                 trainable_name_contains=["norm"])
    assert _trainable(opt) == _core_names(opt) | _layernorm_params(opt)


def test_opt_6_7b_counts_adapters_and_layernorms_apart():
    """Table 5's config: 958,464 adapter parameters and, as LoRETTA's "Norm" rule on OPT,
    nothing else; [norm] adds the LayerNorms: (2 per layer + the final one) x (weight + bias)."""
    with torch.device("meta"):
        model = _from_config("opt_6.7b", OPT_6_7B)
        with_norms = _from_config("opt_6.7b", OPT_6_7B, "model.trainable_name_contains=[norm]")
    counts = model.parameter_counts()
    assert counts["adapter_parameters"] == counts["trainable"] == 958_464
    layernorms = (2 * OPT_6_7B["num_hidden_layers"] + 1) * 2 * OPT_6_7B["hidden_size"]
    assert layernorms == 532_480
    assert sum(p.numel() for n, p in with_norms.named_parameters()
               if n.removeprefix("network.") in _layernorm_params(with_norms.network)) == layernorms
    counts = with_norms.parameter_counts()
    assert counts["adapter_parameters"] == 958_464
    assert counts["trainable"] == 958_464 + 532_480


def test_adapter_dropout_drops_the_adapter_input_only():
    """LoRETTA's forward: base(x) + lora_B(lora_A(lora_dropout(x))) * scaling."""
    layer = LorettaRep(nn.Linear(32, 32), r=4, tt_rank=3, modes_a=[8, 4, 4],
                       modes_b=[4, 4, 8], dropout=0.05)
    x = torch.randn(64, 32)
    torch.manual_seed(1)
    y = layer(x)
    torch.manual_seed(1)
    dropped = F.dropout(x, 0.05, training=True)
    assert not torch.equal(dropped, x)
    torch.testing.assert_close(y, layer.base_layer(x) + layer.delta(dropped))
    layer.eval()
    torch.testing.assert_close(layer(x), layer.base_layer(x) + layer.delta(x))
    cfg = compose("model=opt_6.7b")["model"]["adapter"]
    assert cfg["dropout"] == 0.05 and cfg["init"] == "reference"


def test_lora_takes_the_common_options():
    model = HFModel(config=TINY_OPT, head="causal_lm",
                    adapter=functools.partial(lora, r=2, dropout=0.1, init="reference"),
                    target_modules=["q_proj", "v_proj"])
    layer = next(m for m in model.modules() if hasattr(m, "lora_dropout"))
    assert layer.lora_dropout["default"].p == 0.1
    with pytest.raises(ValueError, match="lora init='zero'"):
        HFModel(config=TINY_OPT, head="causal_lm", adapter=functools.partial(lora, init="zero"),
                target_modules=["q_proj", "v_proj"])


# -- item 5: the trainable, untied MLM head of Table 4 ------------------------------------

def test_the_mlm_head_is_untied_and_trains_as_in_mezo():
    model = HFModel(config=TINY_ROBERTA, head="masked_lm", untie_embeddings=True,
                    adapter=functools.partial(FLoRALinear, r=4),
                    target_modules=["query", "value"], trainable=["lm_head"])
    net = model.network
    emb, dec = net.get_input_embeddings().weight, net.get_output_embeddings().weight
    assert dec is not emb and dec.data_ptr() != emb.data_ptr() and torch.equal(dec, emb)
    # MeZO: every parameter not named roberta.* trains, the LoRA (here FLoRA) cores too
    want = {n for n, _ in net.named_parameters() if not n.startswith("roberta")}
    assert want and all(n.startswith("lm_head.") for n in want) and "lm_head.decoder.weight" in want
    assert _trainable(net) == want | _core_names(net)
    emb0, dec0 = emb.detach().clone(), dec.detach().clone()
    opt = torch.optim.Adam([p for p in model.parameters() if p.requires_grad], lr=1e-2)
    model(_ids()).square().mean().backward()
    opt.step()
    assert torch.equal(emb, emb0) and not torch.equal(dec, dec0)
    net.tie_weights()  # transformers does not tie them again
    assert net.get_output_embeddings().weight is not net.get_input_embeddings().weight


def test_roberta_large_prompt_trains_flora_and_the_whole_mlm_head():
    with torch.device("meta"):
        model = _from_config("roberta_large_prompt", ROBERTA_LARGE)
    H, V = ROBERTA_LARGE["hidden_size"], ROBERTA_LARGE["vocab_size"]
    head = (H * H + H) + 2 * H + V * H + V  # dense, layer_norm, decoder (bias shared)
    assert head == 52_573_273
    counts = model.parameter_counts()
    assert counts["adapter_parameters"] == 789_504 and counts["trainable"] == 789_504 + head


# -- item 7: the base model's dtype -------------------------------------------------------

def test_dtype_option_gives_a_bf16_base_with_fp32_adapters():
    model = HFModel(config=TINY_OPT, head="causal_lm", dtype="bfloat16",
                    adapter=REP, target_modules=["q_proj", "v_proj"])
    cores = _core_names(model)
    for name, p in model.named_parameters():
        assert p.dtype == (torch.float32 if name in cores else torch.bfloat16), name
    x = _ids()
    for autocast in (False, True):
        with torch.autocast("cpu", dtype=torch.bfloat16, enabled=autocast):
            logits = model(x)
        assert logits.dtype == torch.bfloat16 and torch.isfinite(logits).all()
    assert {p.dtype for p in HFModel(config=TINY_OPT, head="causal_lm").parameters()} == {
        torch.float32}
    with pytest.raises(ValueError, match="model.dtype='fp8'"):
        HFModel(config=TINY_OPT, head="causal_lm", dtype="fp8")
    assert compose("model=opt_6.7b")["model"]["dtype"] == "bfloat16"
    assert compose("model=opt_6.7b_full")["model"]["dtype"] == "bfloat16"
    merged = model.merge().network.get_submodule("model.decoder.layers.0.self_attn.q_proj")
    assert type(merged) is nn.Linear and merged.weight.dtype == torch.bfloat16


@pytest.mark.parametrize("method", ["das", "sam"])
def test_das_and_sam_step_on_a_bf16_base(method):
    """fp32 cores (DAS scales them) and, with [norm], bf16 LayerNorms that SAM restores."""
    model = HFModel(config=TINY_OPT, head="causal_lm", dtype="bfloat16",
                    adapter=REP, target_modules=["q_proj", "v_proj"],
                    trainable_name_contains=["norm"])
    frozen = {n: p.detach().clone() for n, p in model.named_parameters() if not p.requires_grad}
    params = [p for p in model.parameters() if p.requires_grad]
    before = [p.detach().clone() for p in params]
    base = torch.optim.AdamW(params, lr=1e-2)
    opt = (DAS(base, core_groups(model), alpha=0.5) if method == "das"
           else SAM(base, rho=0.05))
    x = _ids()

    def loss():
        with torch.autocast("cpu", dtype=torch.bfloat16):
            return model(x).float().square().mean()

    if method == "das":
        loss().backward()
        assert (opt.scale_factors() != 0).all()  # no zero core under the reference init
        opt.step()
    else:
        loss().backward()
        opt.first_step()
        opt.zero_grad()
        loss().backward()
        opt.second_step()
    assert all(not torch.equal(p, q) for p, q in zip(params, before, strict=True))
    assert all(torch.equal(p, frozen[n]) for n, p in model.named_parameters() if n in frozen)
    assert all(torch.isfinite(p).all() for p in params)
