"""A readout with no trained parameters: classes scored by cosine similarity to label
descriptions, the sentence-encoder analogue of prompt-based fine-tuning (LM-BFF).

A sentence encoder (all-MiniLM-L6-v2 was trained with mean pooling and cosine similarity) embeds
an input as the mean of its last hidden states over the attention mask. Each class c has a
description d_c ("It was great." / "It was terrible."), embedded once by the same encoder when
the readout is built, before any adapter is added, and then frozen (a buffer: a checkpoint
carries it). The logits are

    s_c(x) = T * cos(e(x), e(d_c)),

T a fixed temperature. Training moves e(x) alone (through the adapters), so the run starts from
the encoder's zero-shot classifier instead of a randomly initialised head.
"""

from __future__ import annotations

from collections.abc import Sequence

import torch
from torch import nn
from torch.nn import functional as F


def mean_pool(hidden: torch.Tensor, attention_mask: torch.Tensor) -> torch.Tensor:
    """The mean of ``hidden`` (batch, tokens, width) over the tokens ``attention_mask`` keeps."""
    mask = attention_mask.unsqueeze(-1).to(hidden.dtype)
    return (hidden * mask).sum(1) / mask.sum(1).clamp_min(1.0)


class LabelCosine(nn.Module):
    """``T * cos(mean_pool(hidden), e(d_c))`` for each class c (module docstring)."""

    def __init__(self, label_embeddings: torch.Tensor, temperature: float):
        super().__init__()
        self.register_buffer("labels", F.normalize(label_embeddings.float(), dim=-1))
        self.temperature = float(temperature)

    @classmethod
    @torch.no_grad()
    def of(cls, encoder: nn.Module, tokenizer, descriptions: Sequence[str],
           temperature: float) -> LabelCosine:
        """The readout whose label embeddings ``encoder`` (in eval mode, as it is now) gives
        the ``descriptions`` tokenized by ``tokenizer``."""
        was_training = encoder.training
        encoder.eval()
        encoded = tokenizer(list(descriptions), padding=True, return_tensors="pt")
        hidden = encoder(**encoded).last_hidden_state
        encoder.train(was_training)
        return cls(mean_pool(hidden.float(), encoded["attention_mask"]), temperature)

    def forward(self, hidden: torch.Tensor, attention_mask: torch.Tensor) -> torch.Tensor:
        sentence = F.normalize(mean_pool(hidden.float(), attention_mask), dim=-1)
        return self.temperature * sentence @ self.labels.T
