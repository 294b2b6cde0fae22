"""One injector for every adapter: freeze a model, adapt its target linears, merge, save, load.

An **adapter** is a callable with its options bound (``configs/model/adapter/*.yaml`` builds it
as ``functools.partial``), of one of two kinds:

* a subclass of :class:`~tensam.adapters.AdaptedLinear` (FLoRA, LoRETTA), called on each target
  ``nn.Linear`` and put in its place;
* any other callable ``adapter(model, target_modules=...) -> model`` that adapts a whole model
  (peft's LoRA, :func:`tensam.adapters.lora.lora`).

A new adapter is therefore one such class (or function) and one YAML file.
``inject(model, adapter, target_modules, trainable, trainable_name_contains)`` freezes every
parameter, adapts each ``nn.Linear`` whose qualified name ends with a ``target_modules`` entry
(``query``/``value`` in BERT and RoBERTa, ``q_proj``/``v_proj`` in OPT and Llama), and makes
trainable the adapters and the parameters named by ``trainable`` (e.g. the new task head
``classifier`` or ``score``: whole name components, a module and everything under it) and by
``trainable_name_contains`` (every parameter whose qualified name contains one of the strings,
case-sensitively). The latter is the published LoRETTA's rule (``loretta`` package,
``mark_lora_layernorm_cls_trainable``: ``"Norm" in name``), which trains the ``LayerNorm``s of
BERT, RoBERTa and DeBERTa but matches no parameter of OPT (``self_attn_layer_norm``,
``final_layer_norm``) or Llama; ``[norm]`` trains OPT's LayerNorms (532,480 parameters on
OPT-6.7B).
"""

from __future__ import annotations

import functools
import sys
from collections.abc import Callable, Sequence
from pathlib import Path

import torch
from torch import nn

from tensam.adapters.base import AdaptedLinear
from tensam.errors import ConfigError


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
        raise ConfigError(f"model.trainable entries {unmatched} name no parameter of the model")
    for name, p in model.named_parameters():
        if _within(name, trainable):
            p.requires_grad_(True)


def _set_trainable_containing(model: nn.Module, substrings: Sequence[str]) -> None:
    names = [n for n, _ in model.named_parameters()]
    unmatched = [s for s in substrings if not any(s in n for n in names)]
    if unmatched:
        raise ConfigError(f"model.trainable_name_contains entries {unmatched} are in no "
                          f"parameter name of the model (the match is case-sensitive)")
    for name, p in model.named_parameters():
        if any(s in name for s in substrings):
            p.requires_grad_(True)


def per_layer(adapter: Callable) -> bool:
    """Whether ``adapter`` (a class or a ``functools.partial`` of one) adapts one linear at a
    time, i.e. is an :class:`AdaptedLinear`, rather than a whole model."""
    target = adapter.func if isinstance(adapter, functools.partial) else adapter
    return isinstance(target, type) and issubclass(target, AdaptedLinear)


def inject(model: nn.Module, adapter: Callable, target_modules: Sequence[str],
           trainable: Sequence[str] = (), trainable_name_contains: Sequence[str] = ()
           ) -> nn.Module:
    """``model`` with its base weights frozen and its target linears adapted by ``adapter``
    (module docstring): in place for a per-layer adapter, as the adapter returns it otherwise
    (peft wraps the model). Returns the model to use."""
    target_modules, trainable = list(target_modules), list(trainable)
    model.requires_grad_(False)
    if per_layer(adapter):
        targets = [(name, m) for name, m in model.named_modules()
                   if isinstance(m, nn.Linear) and matches(name, target_modules)]
        if not targets:
            raise ConfigError(f"model.target_modules={target_modules} match no nn.Linear of "
                              f"{type(model).__name__}")
        for name, linear in targets:
            parent, _, child = name.rpartition(".")
            setattr(model.get_submodule(parent), child, adapter(linear))
    else:
        model = adapter(model, target_modules=target_modules)
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
