"""Few-shot GLUE, the LM-BFF / MeZO protocol of Table 4 (Sec. 5.3, App. B).

From a GLUE training set, k examples per class are sampled for training and the next k per class
for validation (LM-BFF's sampler: numpy's legacy shuffle seeded by the data seed, the paper's
seeds 13, 21, 42, 87, 100); the GLUE dev set, at most ``max_test`` examples (a seeded sample
when larger), is the test set. Hyperparameters are chosen on validation accuracy and the test
accuracy of the chosen run is reported (App. B), so :meth:`GlueFewShot.evaluate` scores both.

The text comes from ``<data_dir>/<folder>/{train,dev}.tsv`` (GLUE's TSV layout with a header
row; ``data_dir`` from the config, e.g. ``${oc.env:TENSAM_GLUE,null}``) or, without a
``data_dir``, from ``datasets.load_dataset("glue", name)``. It is tokenized by the model's
tokenizer (``tokenizer``: a path, a hub name or a packaged name such as ``minilm``) and fed to a
classification head. The data are read, sampled and tokenized on first use, so composing and
building a run needs neither the data nor the tokenizer.
"""

from __future__ import annotations

import csv
from collections.abc import Iterator
from dataclasses import dataclass
from functools import cached_property
from pathlib import Path
from types import SimpleNamespace

import numpy as np
import torch
from torch import nn
from torch.nn import functional as F

from tensam.models.hf import resolve_pretrained
from tensam.tasks.classification import Classification

Tensors = dict[str, torch.Tensor]


@dataclass(frozen=True)
class GlueSpec:
    """Where a GLUE task's data live and what they hold."""

    folder: str  # directory of train.tsv / dev.tsv under data_dir
    text: tuple[str, ...]  # text column(s): one sentence or a pair
    labels: tuple[str, ...]  # label names in id order (TSVs may hold names or ids)


GLUE = {
    "sst2": GlueSpec("SST-2", ("sentence",), ("negative", "positive")),
    "rte": GlueSpec("RTE", ("sentence1", "sentence2"), ("entailment", "not_entailment")),
}


def read_glue(name: str, split: str, data_dir: str | None) -> tuple[list[list[str]], np.ndarray]:
    """The text columns and label ids of ``split`` (``train`` or ``dev``) of GLUE task ``name``,
    from ``data_dir``'s TSV files, or from the hub (``datasets``) without a ``data_dir``."""
    spec = GLUE[name]
    if data_dir is None:
        import datasets

        rows = datasets.load_dataset("glue", name, split="validation" if split == "dev"
                                     else split)
        return [list(rows[c]) for c in spec.text], np.asarray(rows["label"], dtype=np.int64)
    path = Path(data_dir).expanduser() / spec.folder / f"{split}.tsv"
    with open(path, newline="", encoding="utf-8") as f:
        rows = list(csv.DictReader(f, delimiter="\t", quoting=csv.QUOTE_NONE))
    labels = [int(r["label"]) if r["label"].isdigit() else spec.labels.index(r["label"])
              for r in rows]
    return [[r[c] for r in rows] for c in spec.text], np.asarray(labels, dtype=np.int64)


def few_shot_indices(labels: np.ndarray, k: int, seed: int,
                     num_labels: int) -> tuple[np.ndarray, np.ndarray]:
    """(train, validation) indices: in the order of ``RandomState(seed).permutation`` (LM-BFF's
    ``np.random.seed(seed); np.random.shuffle``), the first k examples of each class train and
    the next k validate. Sorted; a class with fewer than 2 k examples raises ValueError."""
    order = np.random.RandomState(seed).permutation(len(labels))
    train, val = [], []
    for c in range(num_labels):
        of_class = order[labels[order] == c]
        if len(of_class) < 2 * k:
            raise ValueError(f"class {c} has {len(of_class)} training examples, fewer than "
                             f"2 k = {2 * k} (k for training, k for validation)")
        train.append(of_class[:k])
        val.append(of_class[k:2 * k])
    return np.sort(np.concatenate(train)), np.sort(np.concatenate(val))


class GlueFewShot(Classification):
    """Cross-entropy of a sequence classifier on k-shot GLUE; accuracy and mean loss on the
    validation (``val_*``) and test (``accuracy``, ``loss``) splits.

    Batches are dicts of ``input_ids``, ``attention_mask`` (``token_type_ids`` where the
    tokenizer gives them) and ``labels``, cut to their longest example. The training order is
    :class:`Classification`'s (DistributedSampler epochs seeded by ``data_seed``, exact resume).
    """

    metrics = {"accuracy": True, "loss": False, "val_accuracy": True, "val_loss": False}
    #: hyperparameters are selected on validation; tables report ``accuracy`` (test)
    primary_metric = "val_accuracy"

    def __init__(self, name: str = "sst2", k: int = 16, data_seed: int = 13,
                 tokenizer: str = "minilm", data_dir: str | None = None, max_length: int = 128,
                 max_test: int = 1000, batch_size: int = 16, eval_batch_size: int = 128):
        if name not in GLUE:
            raise ValueError(f"task.name={name!r} is not one of {sorted(GLUE)}")
        for key, value in (("k", k), ("max_length", max_length), ("max_test", max_test)):
            if isinstance(value, bool) or not isinstance(value, int) or value < 1:
                raise ValueError(f"task.{key}={value!r} must be an integer >= 1")
        if data_dir is not None and not (Path(data_dir).expanduser() / GLUE[name].folder
                                         / "train.tsv").is_file():
            raise ValueError(f"task.data_dir={data_dir!r} has no {GLUE[name].folder}/train.tsv")
        self.name, self.spec, self.k = name, GLUE[name], k
        self.tokenizer, self.data_dir = tokenizer, data_dir
        self.max_length, self.max_test = max_length, max_test
        # the epoch logic draws orders over the k-shot training set, whose size the protocol
        # fixes: only that size is needed before the data are read
        n_train = k * len(self.spec.labels)
        super().__init__(SimpleNamespace(train=range(n_train)), batch_size, eval_batch_size,
                         num_workers=0, data_seed=data_seed)

    def model_inputs(self) -> dict:
        return {"num_labels": len(self.spec.labels)}

    @cached_property
    def splits(self) -> dict[str, Tensors]:
        """The tokenized ``train``, ``val`` and ``test`` splits (CPU tensors, padded to the
        longest example of the split)."""
        from transformers import AutoTokenizer

        tokenizer = AutoTokenizer.from_pretrained(resolve_pretrained(self.tokenizer))
        texts, labels = read_glue(self.name, "train", self.data_dir)
        train, val = few_shot_indices(labels, self.k, self.data_seed, len(self.spec.labels))
        test_texts, test_labels = read_glue(self.name, "dev", self.data_dir)
        test = np.arange(len(test_labels))
        if len(test) > self.max_test:
            test = np.sort(np.random.RandomState(self.data_seed).choice(
                len(test), self.max_test, replace=False))

        def tokenize(columns: list[list[str]], y: np.ndarray, index: np.ndarray) -> Tensors:
            encoded = tokenizer(*[[column[i] for i in index] for column in columns],
                                truncation=True, max_length=self.max_length, padding="longest",
                                return_tensors="pt")
            return {**encoded, "labels": torch.from_numpy(y[index])}

        return {"train": tokenize(texts, labels, train), "val": tokenize(texts, labels, val),
                "test": tokenize(test_texts, test_labels, test)}

    def _batch(self, split: Tensors, index) -> Tensors:
        """Rows ``index`` of ``split`` without the columns that are padding in all of them, on
        the task's device."""
        rows = {key: value[index] for key, value in split.items()}
        keep = rows["attention_mask"].any(0)
        return {key: (value[:, keep] if value.dim() == 2 else value).to(self.device)
                for key, value in rows.items()}

    def batches(self, start_step: int = 0) -> Iterator[Tensors]:
        for indices in self.batch_indices(start_step):
            yield self._batch(self.splits["train"], torch.tensor(indices))

    def split_batches(self, split: str) -> Iterator[Tensors]:
        """The ``val`` or ``test`` split in batches of ``eval_batch_size``."""
        n = len(self.splits[split]["labels"])
        for start in range(0, n, self.eval_batch_size):
            yield self._batch(self.splits[split], slice(start, start + self.eval_batch_size))

    def loss(self, model: nn.Module, batch: Tensors) -> torch.Tensor:
        return F.cross_entropy(model(batch), batch["labels"])

    def evaluate(self, model: nn.Module) -> dict[str, float]:
        metrics = {}
        for split, prefix in (("val", "val_"), ("test", "")):
            correct, loss, total = 0, 0.0, 0
            for batch in self.split_batches(split):
                logits = model(batch)
                loss += float(F.cross_entropy(logits, batch["labels"], reduction="sum"))
                correct += int((logits.argmax(1) == batch["labels"]).sum())
                total += len(batch["labels"])
            metrics.update({f"{prefix}accuracy": correct / total, f"{prefix}loss": loss / total})
        return metrics

    def info(self) -> dict:
        sizes = {f"n_{split}": len(t["labels"]) for split, t in self.splits.items()}
        return {"dataset": f"GLUE {self.name}", "source": self.data_dir or "datasets (hub)",
                "k": self.k, "data_seed": self.data_seed, **sizes,
                "train_labels": np.bincount(self.splits["train"]["labels"].numpy()).tolist(),
                "max_length": self.max_length}


__all__ = ["GLUE", "GlueFewShot", "GlueSpec", "few_shot_indices", "read_glue"]
