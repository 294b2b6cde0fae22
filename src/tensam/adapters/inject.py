"""One injector for every adapter: freeze a model, adapt its target linears, merge, save, load.

``inject(model, kind, target_modules, trainable, **options)`` freezes every parameter, replaces
each ``nn.Linear`` whose qualified name ends with a ``target_modules`` entry (``query``/``value``
in BERT and RoBERTa, ``q_proj``/``v_proj`` in OPT and Llama) by the adapter ``kind``, and makes
trainable the adapters and the parameters named by ``trainable`` (e.g. the new task head
``classifier`` or ``score``: whole name components, a module and everything under it) and by
``trainable_name_contains`` (every parameter whose qualified name contains one of the strings,
case-sensitively). The latter is the published LoRETTA's rule (``loretta`` package,
``mark_lora_layernorm_cls_trainable``: ``"Norm" in name``), which trains the ``LayerNorm``s of
BERT, RoBERTa and DeBERTa but matches no parameter of OPT (``self_attn_layer_norm``,
``final_layer_norm``) or Llama; ``[norm]`` trains OPT's LayerNorms (532,480 parameters on
OPT-6.7B). ``kind="lora"`` goes through peft (:mod:`tensam.adapters.lora`).
"""

from __future__ import annotations

import sys
from collections.abc import Sequence
from pathlib import Path

import torch
from torch import nn

from tensam.adapters.base import AdaptedLinear
from tensam.adapters.flora import FLoRALinear
from tensam.adapters.loretta import LorettaRep, LorettaTT
from tensam.errors import ConfigError

#: the adapters implemented here (``lora`` is peft's)
ADAPTERS: dict[str, type[AdaptedLinear]] = {
    "flora": FLoRALinear, "loretta_tt": LorettaTT, "loretta_rep": LorettaRep}
KINDS = (*ADAPTERS, "lora")


def matches(name: str, entries: Sequence[str]) -> bool:
    """Whether the dotted ``name`` ends with one of ``entries`` (whole name components)."""
    return any(name == e or name.endswith("." + e) for e in entries)


def _within(name: str, entries: Sequence[str]) -> bool:
    """Whether the dotted parameter ``name`` lies in a module named by one of ``entries``."""
    return any(f".{e}." in f".{name}" for e in entries)


def _set_trainable(model: nn.Module, trainable: Sequence[str]) -> None:
    names = [n for n, _ in model.named_parameters()]
    unmatched = [e for e in trainable if not any(_within(n, [e]) for n in names)]
    if unmatched:
        raise ConfigError(f"adapter.trainable entries {unmatched} name no parameter of the model")
    for name, p in model.named_parameters():
        if _within(name, trainable):
            p.requires_grad_(True)


def _set_trainable_containing(model: nn.Module, substrings: Sequence[str]) -> None:
    names = [n for n, _ in model.named_parameters()]
    unmatched = [s for s in substrings if not any(s in n for n in names)]
    if unmatched:
        raise ConfigError(f"adapter.trainable_name_contains entries {unmatched} are in no "
                          f"parameter name of the model (the match is case-sensitive)")
    for name, p in model.named_parameters():
        if any(s in name for s in substrings):
            p.requires_grad_(True)


def inject(model: nn.Module, kind: str, target_modules: Sequence[str] = ("query", "value"),
           trainable: Sequence[str] = (), trainable_name_contains: Sequence[str] = (),
           **options) -> nn.Module:
    """``model`` with its base weights frozen and its target linears adapted (in place for
    ours; peft wraps the model for ``lora``); ``options`` go to the adapter (``r``, ``alpha``,
    ``dropout``, ``init``, ``tt_rank``, modes). Returns the model to use."""
    if kind not in KINDS:
        raise ConfigError(f"adapter.kind={kind!r} is not one of {['none', *KINDS]}")
    target_modules, trainable = list(target_modules), list(trainable)
    model.requires_grad_(False)
    if kind == "lora":
        from tensam.adapters.lora import lora

        model = lora(model, target_modules=target_modules, **options)
    else:
        targets = [(name, m) for name, m in model.named_modules()
                   if isinstance(m, nn.Linear) and matches(name, target_modules)]
        if not targets:
            raise ConfigError(f"adapter.target_modules={target_modules} match no nn.Linear of "
                              f"{type(model).__name__}")
        for name, linear in targets:
            parent, _, child = name.rpartition(".")
            setattr(model.get_submodule(parent), child, ADAPTERS[kind](linear, **options))
    _set_trainable(model, trainable)
    _set_trainable_containing(model, list(trainable_name_contains))
    return model


def merge(model: nn.Module) -> nn.Module:
    """Fold every dW into its base weight: each adapted layer becomes a plain ``nn.Linear``
    with weight W + dW (peft's LoRA: ``merge_and_unload``). Returns the merged model."""
    peft = sys.modules.get("peft")  # a model can be peft's only if peft was imported
    if peft is not None and isinstance(model, peft.PeftModel):
        return model.merge_and_unload()
    adapted = [(name, m) for name, m in model.named_modules() if isinstance(m, AdaptedLinear)]
    for name, layer in adapted:
        parent, _, child = name.rpartition(".")
        setattr(model.get_submodule(parent), child, layer.merged())
    return model


def trainable_state(model: nn.Module) -> dict[str, torch.Tensor]:
    """The trainable parameters by name: the adapters' cores and any trained head."""
    return {n: p for n, p in model.named_parameters() if p.requires_grad}


def save_adapter(model: nn.Module, path: str | Path) -> None:
    """Write only the trainable parameters (adapters and trained head) as safetensors."""
    from safetensors.torch import save_file

    # copies: cores may be views of one flat buffer (DAS), which safetensors refuses to share
    save_file({n: p.detach().to("cpu", copy=True) for n, p in trainable_state(model).items()},
              str(path))


@torch.no_grad()
def load_adapter(model: nn.Module, path: str | Path) -> None:
    """Copy the weights of :func:`save_adapter` into the same (adapted) model, in place; the
    names must be exactly the model's trainable parameters."""
    from safetensors.torch import load_file

    stored, own = load_file(str(path)), trainable_state(model)
    if set(stored) != set(own):
        raise ConfigError(f"{path} does not fit this model: missing "
                          f"{sorted(set(own) - set(stored))}, unexpected "
                          f"{sorted(set(stored) - set(own))}")
    for name, p in own.items():
        p.copy_(stored[name])
