"""The LoRA baseline through peft, its layers made core groups of K = 2.

LoRA (Hu et al., 2022) adds dW = (alpha / r) B A with A (r x I) Kaiming-uniform and B (O x r)
zero-initialised. peft's ``lora.Linear`` cannot be given a ``cores()`` method without patching
peft, so importing this module registers it with :func:`tensam.cores.register_cores`: the cores
of a LoRA layer are (A, B) of its active adapter -- the (x, y) pair of nBAR/oBAR. The zero B does
not trouble DAS, which gives a core with ||G||^2 <= eps the scale lambda = 0.
"""

from __future__ import annotations

from collections.abc import Sequence

from peft import LoraConfig, get_peft_model
from peft.tuners import lora as peft_lora
from torch import nn

from tensam.cores import register_cores
from tensam.errors import ConfigError


def lora_cores(layer: peft_lora.Linear) -> tuple[nn.Parameter, nn.Parameter]:
    """(A, B) of the layer's one active adapter (A: r x I, B: O x r)."""
    if len(layer.active_adapters) != 1:
        raise ConfigError(f"a LoRA layer is one core group only with one active adapter, got "
                          f"{layer.active_adapters}")
    (name,) = layer.active_adapters
    return layer.lora_A[name].weight, layer.lora_B[name].weight


register_cores(peft_lora.Linear, lora_cores)


def lora(model: nn.Module, target_modules: Sequence[str], r: int = 8, alpha: float = 16.0,
         dropout: float = 0.0, init: str = "reference") -> nn.Module:
    """``get_peft_model(model, LoraConfig(r, lora_alpha=alpha, target_modules, lora_dropout))``:
    the base frozen, one LoRA pair per target linear. ``init="reference"`` is peft's default,
    the init of the reference LoRA code (``loralib``, which MeZO's RoBERTa runs use: A
    Kaiming-uniform with a = sqrt(5), B zero), the only one offered. The adapter is float32 on a
    16-bit base (peft's ``autocast_adapter_dtype``)."""
    if init != "reference":
        raise ConfigError(f"lora init={init!r} is not one of ['reference']")
    config = LoraConfig(r=int(r), lora_alpha=alpha, target_modules=list(target_modules),
                        lora_dropout=float(dropout))
    return get_peft_model(model, config)
