"""Parameter-efficient fine-tuning adapters whose cores are core groups (Sec. 5.3, App. B).

Every adapted linear is one core group (:mod:`tensam.cores`): FLoRA (K = 3), LoRETTA as one
tensor train (K = 8 on a 4096 x 4096 matrix) or as TT-factorized LoRA factors (K = 10), and
peft's LoRA (K = 2, registered when :mod:`tensam.adapters.lora` is imported). An adapter is one
class (or whole-model function) plus one file in ``configs/model/adapter/``
(:mod:`tensam.adapters.inject`).
"""

from tensam.adapters.base import AdaptedLinear
from tensam.adapters.flora import FLoRALinear
from tensam.adapters.inject import (
    inject,
    load_adapter,
    merge,
    per_layer,
    save_adapter,
    trainable_state,
)
from tensam.adapters.loretta import REP_MODES, TT_MODES, LorettaRep, LorettaTT, tt_full

__all__ = ["REP_MODES", "TT_MODES", "AdaptedLinear", "FLoRALinear", "LorettaRep", "LorettaTT",
           "inject", "load_adapter", "merge", "per_layer", "save_adapter", "tt_full",
           "trainable_state"]
