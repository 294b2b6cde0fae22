"""Few-shot GLUE and its kin, the LM-BFF / MeZO protocol of Table 4 (Sec. 5.3, App. B).

From a task's training set, k examples per class are sampled for training and the next k per
class for validation (LM-BFF's ``generate_k_shot_data``: numpy's legacy shuffle seeded by the data
seed, the paper's seeds 13, 21, 42, 87, 100; a class with fewer than 2 k examples gives all it
has, at most k to training). The labelled evaluation set (the dev set of the GLUE-style SST-2,
RTE, MNLI matched and SNLI; the test set of SST-5 and TREC), at most ``max_test`` examples, is the
test set. A larger one is cut as MeZO's ``generate_k_shot_data.py --mode k-shot-1k-test`` cuts
it, once for all data seeds: the first ``max_test`` of ``RandomState(42).permutation``
(:data:`TEST_SEED`; its ``np.random.seed(42)`` + ``shuffle`` of the TSV lines, and pandas'
``sample(n=1000, random_state=42)`` of the CSVs, are that order), kept in that order;
``test_seed: null`` draws it with the data seed instead. Hyperparameters are chosen on
validation accuracy and the test accuracy of the chosen run is reported (App. B), so
:meth:`GlueFewShot.evaluate` scores both.

Without a ``data_dir`` the text comes from ``datasets.load_dataset`` (:data:`GLUE`'s ``hub``
entries); the hub is probed first (:func:`~tensam.tasks.base.hub_unreachable`), so a machine
without it fails at once, in one line naming ``TENSAM_GLUE`` and the files it should hold,
rather than after ``datasets``' retries. With a ``data_dir`` (e.g.
``${oc.env:TENSAM_GLUE,null}``, LM-BFF's ``data/original``) the text comes from
``<data_dir>/<folder>/<train file>, <test file>``:

- ``SST-2/{train,dev}.tsv``, ``RTE/{train,dev}.tsv``, ``MNLI/{train,dev_matched}.tsv``,
  ``SNLI/{train,dev}.tsv``: GLUE's TSV layout, a header row naming the columns (``sentence``;
  ``sentence1``, ``sentence2``) and the label column (``label``; ``gold_label`` for MNLI/SNLI),
  labels as names or ids; SNLI rows without a gold label (``-``) are dropped;
- ``sst-5/{train,test}.csv``, ``trec/{train,test}.csv``: LM-BFF's CSV files, no header,
  ``label,sentence`` per row with label ids (TREC: DESC, ENTY, ABBR, HUM, LOC, NUM).

The text is tokenized by ``tokenizer`` (a path, a hub name or a packaged name such as ``minilm``;
null: the model's, ``pretrained``, which the run passes) and fed either to a classification
head or, with ``prompt``, to a masked LM as LM-BFF's prompt (its template, e.g.
``<sentence> It was [MASK] .``), the logits being the MLM logits at the mask restricted to the
label words (LM-BFF's prompt-based fine-tuning, which MeZO and the paper's codebase use). The
data are read, sampled and tokenized on first use, so composing and building a run needs neither
the data nor the tokenizer.
"""

from __future__ import annotations

import csv
import re
from collections.abc import Iterator
from dataclasses import dataclass
from functools import cached_property
from pathlib import Path

import numpy as np
import torch
from torch import nn
from torch.nn import functional as F

from tensam.errors import ConfigError
from tensam.models.hf import resolve_pretrained
from tensam.tasks.base import Task, hub_unreachable, tokenizer_name
from tensam.tasks.classification import EpochOrder

Tensors = dict[str, torch.Tensor]
PAIR = "*cls**sent-_0*?*mask*,*+sentl_1**sep+*"  # LM-BFF / MeZO's template of MNLI, SNLI, RTE
#: the seed of the test subset of a labelled evaluation set larger than ``max_test``: MeZO's
#: ``generate_k_shot_data.py`` (mode ``k-shot-1k-test``) seeds it with 42 for every data seed
TEST_SEED = 42


@dataclass(frozen=True)
class GlueSpec:
    """Where a task's data live, what they hold, and its LM-BFF prompt."""

    folder: str  # directory of the local files under data_dir
    files: tuple[str, str]  # training and test file in folder (.tsv with header, .csv without)
    text: tuple[str, ...]  # text column(s) of the local files: one sentence or a pair
    labels: tuple[str, ...]  # label names in id order (local files may hold names or ids)
    hub: tuple[str, ...]  # datasets.load_dataset(*hub)
    hub_test: str  # the hub split tested
    template: str  # LM-BFF's template: *cls*, *mask*, *sep+*, *sent_i* (+: space, -: last
    #                character dropped, l: first letter lower-cased), text with _ for spaces
    words: tuple[str, ...]  # label words in id order (LM-BFF's mapping)
    label: str = "label"  # label column of the local files
    hub_text: tuple[str, ...] | None = None  # text column(s) on the hub (default: text)
    hub_label: str = "label"  # label column on the hub (a ClassLabel is mapped by name)


NLI = ("entailment", "neutral", "contradiction")  # GLUE's and the hub's order
GLUE = {
    "sst2": GlueSpec("SST-2", ("train.tsv", "dev.tsv"), ("sentence",), ("negative", "positive"),
                     ("glue", "sst2"), "validation", "*cls**sent_0*_It_was*mask*.*sep+*",
                     ("terrible", "great")),
    "sst5": GlueSpec("sst-5", ("train.csv", "test.csv"), ("sentence",),
                     ("very negative", "negative", "neutral", "positive", "very positive"),
                     ("SetFit/sst5",), "test", "*cls**sent_0*_It_was*mask*.*sep+*",
                     ("terrible", "bad", "okay", "good", "great"), hub_text=("text",)),
    "rte": GlueSpec("RTE", ("train.tsv", "dev.tsv"), ("sentence1", "sentence2"),
                    ("entailment", "not_entailment"), ("glue", "rte"), "validation", PAIR,
                    ("Yes", "No")),
    "mnli": GlueSpec("MNLI", ("train.tsv", "dev_matched.tsv"), ("sentence1", "sentence2"), NLI,
                     ("glue", "mnli"), "validation_matched", PAIR, ("Yes", "Maybe", "No"),
                     label="gold_label", hub_text=("premise", "hypothesis")),
    "snli": GlueSpec("SNLI", ("train.tsv", "dev.tsv"), ("sentence1", "sentence2"), NLI,
                     ("stanfordnlp/snli",), "validation", PAIR, ("Yes", "Maybe", "No"),
                     label="gold_label", hub_text=("premise", "hypothesis")),
    "trec": GlueSpec("trec", ("train.csv", "test.csv"), ("sentence",),
                     ("DESC", "ENTY", "ABBR", "HUM", "LOC", "NUM"), ("CogComp/trec",), "test",
                     "*cls**mask*:*+sent_0**sep+*",
                     ("Description", "Entity", "Expression", "Human", "Location", "Number"),
                     hub_text=("text",), hub_label="coarse_label"),
}


def local_file(name: str, split: str, data_dir: str) -> Path:
    """The local file of ``split`` (``train``, or ``test``/``dev``: the set tested)."""
    spec = GLUE[name]
    return Path(data_dir).expanduser() / spec.folder / spec.files[split != "train"]


def read_glue(name: str, split: str, data_dir: str | None) -> tuple[list[list[str]], np.ndarray]:
    """The text columns and label ids of ``split`` (``train``, or ``test``/``dev``: the set
    tested) of task ``name``, from ``data_dir``'s files, or from the hub (``datasets``) without
    a ``data_dir``. Examples without a gold label (SNLI's ``-``, the hub's -1) are dropped."""
    spec = GLUE[name]
    if data_dir is None:
        import datasets

        rows = datasets.load_dataset(*spec.hub, split="train" if split == "train"
                                     else spec.hub_test)
        names = getattr(rows.features[spec.hub_label], "names", None)
        ids = np.asarray(rows[spec.hub_label], dtype=np.int64)
        if names is not None:  # the hub's ids -> ours, by name (TREC's orders differ)
            ids = np.where(ids < 0, -1, np.asarray([spec.labels.index(n) for n in names])[ids])
        keep = np.flatnonzero(ids >= 0)
        rows = rows.select(keep)
        return [list(rows[c]) for c in spec.hub_text or spec.text], ids[keep]
    path = local_file(name, split, data_dir)
    with open(path, newline="", encoding="utf-8") as f:
        if path.suffix == ".csv":  # LM-BFF's label,sentence without a header
            rows = [dict(zip((spec.label, *spec.text), r, strict=True)) for r in csv.reader(f)]
        else:
            rows = list(csv.DictReader(f, delimiter="\t", quoting=csv.QUOTE_NONE))
    rows = [r for r in rows if r[spec.label] not in ("-", "")]
    labels = [int(r[spec.label]) if r[spec.label].isdigit() else spec.labels.index(r[spec.label])
              for r in rows]
    return [[r[c] for r in rows] for c in spec.text], np.asarray(labels, dtype=np.int64)


def few_shot_indices(labels: np.ndarray, k: int, seed: int, num_labels: int,
                     cap: bool = False) -> tuple[np.ndarray, np.ndarray]:
    """(train, validation) indices: in the order of ``RandomState(seed).permutation`` (LM-BFF's
    ``np.random.seed(seed); np.random.shuffle``), the first k examples of each class train and
    the next k validate. Sorted. A class with fewer than 2 k examples raises ValueError, or with
    ``cap`` (LM-BFF's ``generate_k_shot_data``: TREC's 86 ABBR questions at k = 512) trains on
    its first k (all, if fewer) and validates on the rest; a class without examples raises."""
    order = np.random.RandomState(seed).permutation(len(labels))
    train, val = [], []
    for c in range(num_labels):
        of_class = order[labels[order] == c]
        if len(of_class) < (1 if cap else 2 * k):
            need = "one" if cap else f"2 k = {2 * k} (k for training, k for validation)"
            raise ConfigError(f"class {c} has {len(of_class)} training examples, fewer than {need}")
        train.append(of_class[:k])
        val.append(of_class[k:2 * k])
    return np.sort(np.concatenate(train)), np.sort(np.concatenate(val))


def capped_test_indices(n: int, max_test: int, seed: int = TEST_SEED) -> np.ndarray:
    """The examples tested of an evaluation set of ``n``: all of them in file order, or when
    there are more than ``max_test`` the first ``max_test`` of ``RandomState(seed).permutation``
    in that order (MeZO's ``k-shot-1k-test`` files: ``np.random.seed(42)`` and a shuffle of the
    TSV lines, ``DataFrame.sample(n=1000, random_state=42)`` of the CSVs; both draw this)."""
    if n <= max_test:
        return np.arange(n)
    return np.random.RandomState(seed).permutation(n)[:max_test]


def longest_first(lengths: list[int], budget: int) -> list[int]:
    """The lengths the sentences keep within ``budget`` tokens: one token at a time off the
    longest (transformers' ``longest_first`` truncation)."""
    lengths = list(lengths)
    while sum(lengths) > budget:
        lengths[lengths.index(max(lengths))] -= 1
    return lengths


def prompt_ids(tokenizer, template: str, columns: list[list[str]],
               max_length: int) -> list[list[int]]:
    """The token ids of each example in LM-BFF's ``template`` (its
    ``tokenize_multipart_input``): the parts are tokenized apart and joined; the sentences are cut
    at their tail (longest first) so that the whole fits ``max_length`` and the template, its mask
    token included, is never cut. Mask tokens inside the sentences are dropped."""
    def encode(texts: list[str]) -> list[list[int]]:
        return tokenizer(texts, add_special_tokens=False)["input_ids"]

    special = {"cls": tokenizer.cls_token_id, "sep+": tokenizer.sep_token_id,
               "mask": tokenizer.mask_token_id}
    parts, sentences = [], []  # parts: fixed ids, or the index of an encoded sentence column
    for part in filter(None, template.split("*")):
        if part in special:
            parts.append([special[part]])
        elif sent := re.fullmatch(r"(\+?)sent(l?)(-?)_(\d)", part):
            space, lower, cut, i = sent.groups()
            texts = [t[:-1] if cut else t for t in columns[int(i)]]
            texts = [t[:1].lower() + t[1:] if lower else t for t in texts]
            parts.append(len(sentences))
            sentences.append(encode([" " * len(space) + t for t in texts]))
        else:
            parts.append(encode([part.replace("_", " ")])[0])
    budget = max_length - sum(len(p) for p in parts if isinstance(p, list))
    if budget < len(sentences):
        raise ConfigError(f"task.max_length={max_length} leaves no room for the sentences in "
                          f"the prompt template {template!r}")
    rows = []
    for n in range(len(columns[0])):
        sent = [[t for t in s[n] if t != special["mask"]] for s in sentences]
        keep = longest_first([len(s) for s in sent], budget)
        rows.append([t for p in parts
                     for t in (p if isinstance(p, list) else sent[p][:keep[p]])])
    return rows


class GlueFewShot(Task):
    """Cross-entropy on k-shot GLUE (SST-2, SST-5, RTE, MNLI, SNLI, TREC) of a sequence
    classifier, or with ``prompt`` of a masked LM over the task's label words at the mask of its
    LM-BFF template; accuracy and mean loss on the validation (``val_*``) and test
    (``accuracy``, ``loss``) splits.

    Batches are dicts of ``input_ids``, ``attention_mask`` (``token_type_ids`` where the
    tokenizer gives them, without ``prompt``) and ``labels``, cut to their longest example. The
    training order is an :class:`~tensam.tasks.classification.EpochOrder` over the k-shot
    training set (DistributedSampler epochs seeded by ``data_seed``, exact resume).
    """

    metrics = {"accuracy": True, "loss": False, "val_accuracy": True, "val_loss": False}
    #: hyperparameters are selected on validation; tables report ``accuracy`` (test)
    primary_metric = "val_accuracy"

    def __init__(self, name: str = "sst2", k: int = 16, data_seed: int = 13,
                 tokenizer: str | None = "minilm", data_dir: str | None = None,
                 max_length: int = 128,
                 max_test: int = 1000, batch_size: int = 16, eval_batch_size: int = 128,
                 prompt: bool = False, test_seed: int | None = TEST_SEED,
                 pretrained: str | None = None):
        if name not in GLUE:
            raise ConfigError(f"task.name={name!r} is not one of {sorted(GLUE)}")
        for key, value in (("k", k), ("max_length", max_length), ("max_test", max_test)):
            if isinstance(value, bool) or not isinstance(value, int) or value < 1:
                raise ConfigError(f"task.{key}={value!r} must be an integer >= 1")
        if test_seed is not None and (isinstance(test_seed, bool) or not isinstance(test_seed, int)
                                      or test_seed < 0):
            raise ConfigError(f"task.test_seed={test_seed!r} must be an integer >= 0 or null "
                              "(null: the data seed)")
        if not isinstance(prompt, bool):
            raise ConfigError(f"task.prompt={prompt!r} must be true or false")
        spec = GLUE[name]
        for split in ("train", "test") if data_dir is not None else ():
            if not local_file(name, split, data_dir).is_file():
                raise ConfigError(f"task.data_dir={data_dir!r} has no "
                                  f"{spec.folder}/{spec.files[split != 'train']}")
        self.name, self.spec, self.k, self.prompt = name, spec, k, prompt
        self.tokenizer, self.data_dir = tokenizer_name(tokenizer, pretrained), data_dir
        self.max_length, self.max_test, self.test_seed = max_length, max_test, test_seed
        self.batch_size, self.eval_batch_size = batch_size, eval_batch_size
        self.data_seed = data_seed
        if batch_size < 1 or eval_batch_size < 1:
            raise ConfigError(f"task.batch_size={batch_size}, task.eval_batch_size="
                              f"{eval_batch_size} must be >= 1")

    def model_inputs(self) -> dict:
        return {"num_labels": len(self.spec.labels)}

    @cached_property
    def source_checked(self) -> bool:
        """Without a ``data_dir``: that the hub answers, checked once before the data are read
        (ValueError in one line naming ``TENSAM_GLUE`` and the files it should hold)."""
        why = hub_unreachable() if self.data_dir is None else None
        if why is not None:
            kind = ("LM-BFF's label,sentence CSVs" if self.spec.files[0].endswith(".csv")
                    else "GLUE's TSVs with a header row")
            raise ConfigError(
                f"task.data_dir is unset (TENSAM_GLUE) and the Hugging Face hub cannot be reached "
                f"({why}): set TENSAM_GLUE to a folder holding {self.spec.folder}/"
                f"{self.spec.files[0]} and {self.spec.folder}/{self.spec.files[1]} ({kind}), or "
                "HF_DATASETS_OFFLINE=1 to read the datasets cache")
        return True

    @property
    def order(self) -> EpochOrder:
        """The epochs over the k-shot training set, whose size the protocol fixes (k per class)
        until the data are read: a class short of k (TREC's ABBR at k = 512) shrinks it then."""
        size = (len(self.splits["train"]["labels"]) if "splits" in self.__dict__
                else self.k * len(self.spec.labels))
        if getattr(self, "_order", None) is None or self._order.size != size:
            self._order = EpochOrder(size, self.batch_size, self.data_seed)
        return self._order

    @property
    def steps_per_epoch(self) -> int:
        """The order's, once the data's source is checked: ``train.py`` asks for it while it
        builds, so a missing source fails there, before any work."""
        self.source_checked  # noqa: B018
        return self.order.steps_per_epoch

    @cached_property
    def hf_tokenizer(self):
        """The transformers tokenizer ``tokenizer`` names."""
        from transformers import AutoTokenizer

        return AutoTokenizer.from_pretrained(resolve_pretrained(self.tokenizer))

    @cached_property
    def word_ids(self) -> list[int]:
        """The token id of each label word, in label order (LM-BFF's ``label_word_list``): the
        word after a space (RoBERTa's BPE: ``Ġgreat``; WordPiece drops the space and
        lower-cases where the tokenizer does), which must be one token."""
        tokenizer = self.hf_tokenizer
        if tokenizer.mask_token_id is None:
            raise ConfigError(f"task.prompt=true needs a tokenizer with a mask token; "
                              f"{self.tokenizer!r} has none")
        ids = []
        for word in self.spec.words:
            encoded = tokenizer.encode(" " + word, add_special_tokens=False)
            if len(encoded) != 1:
                raise ConfigError(f"the label word {word!r} of task {self.name} is "
                                  f"{len(encoded)} tokens of {self.tokenizer!r}, not one")
            ids.append(encoded[0])
        return ids

    def encode(self, columns: list[list[str]]) -> Tensors:
        """``input_ids`` and ``attention_mask`` (and what else the tokenizer gives) of the
        examples (text columns), padded to the longest, cut to ``max_length``: the sentence
        (pair) itself, or with ``prompt`` in the task's template."""
        if not self.prompt:
            return dict(self.hf_tokenizer(*columns, truncation=True, max_length=self.max_length,
                                          padding="longest", return_tensors="pt"))
        self.word_ids  # noqa: B018 (the label words are checked before any text is tokenized)
        rows = prompt_ids(self.hf_tokenizer, self.spec.template, columns, self.max_length)
        ids = torch.full((len(rows), max(map(len, rows))), self.hf_tokenizer.pad_token_id)
        mask = torch.zeros_like(ids)
        for i, row in enumerate(rows):
            ids[i, :len(row)], mask[i, :len(row)] = torch.tensor(row), 1
        return {"input_ids": ids, "attention_mask": mask}

    @cached_property
    def splits(self) -> dict[str, Tensors]:
        """The tokenized ``train``, ``val`` and ``test`` splits (CPU tensors, padded to the
        longest example of the split)."""
        self.source_checked  # noqa: B018
        texts, labels = read_glue(self.name, "train", self.data_dir)
        train, val = few_shot_indices(labels, self.k, self.data_seed, len(self.spec.labels),
                                      cap=True)
        test_texts, test_labels = read_glue(self.name, "test", self.data_dir)
        test = capped_test_indices(len(test_labels), self.max_test,
                                   self.data_seed if self.test_seed is None else self.test_seed)

        def tokenize(columns: list[list[str]], y: np.ndarray, index: np.ndarray) -> Tensors:
            encoded = self.encode([[column[i] for i in index] for column in columns])
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

    def batch_indices(self, start_step: int = 0) -> Iterator[list[int]]:
        self.splits  # noqa: B018 (the training set's size is known once the data are read)
        return self.order.batch_indices(start_step)

    def batches(self, start_step: int = 0) -> Iterator[Tensors]:
        for indices in self.batch_indices(start_step):
            yield self._batch(self.splits["train"], torch.tensor(indices))

    def split_batches(self, split: str) -> Iterator[Tensors]:
        """The ``val`` or ``test`` split in batches of ``eval_batch_size``."""
        n = len(self.splits[split]["labels"])
        for start in range(0, n, self.eval_batch_size):
            yield self._batch(self.splits[split], slice(start, start + self.eval_batch_size))

    def logits(self, model: nn.Module, batch: Tensors) -> torch.Tensor:
        """The classifier's logits, or with ``prompt`` the masked LM's logits at the mask token
        (one per example) restricted to the label words: cross-entropy over them is LM-BFF's
        prompt-based fine-tuning loss."""
        logits = model(batch)
        if not self.prompt:
            return logits
        return logits[batch["input_ids"] == self.hf_tokenizer.mask_token_id][:, self.word_ids]

    def loss(self, model: nn.Module, batch: Tensors) -> torch.Tensor:
        return F.cross_entropy(self.logits(model, batch), batch["labels"])

    def evaluate(self, model: nn.Module, test: bool = True) -> dict[str, float]:
        metrics = {}
        for split, prefix in (("val", "val_"), ("test", ""))[:2 if test else 1]:
            correct, loss, total = 0, 0.0, 0
            for batch in self.split_batches(split):
                logits = self.logits(model, batch)
                loss += float(F.cross_entropy(logits, batch["labels"], reduction="sum"))
                correct += int((logits.argmax(1) == batch["labels"]).sum())
                total += len(batch["labels"])
            metrics.update({f"{prefix}accuracy": correct / total, f"{prefix}loss": loss / total})
        return metrics

    def info(self) -> dict:
        sizes = {f"n_{split}": len(t["labels"]) for split, t in self.splits.items()}
        prompt = ({"template": self.spec.template, "label_words": list(self.spec.words)}
                  if self.prompt else {})
        return {"dataset": f"GLUE {self.name}", "source": self.data_dir or "datasets (hub)",
                "k": self.k, "data_seed": self.data_seed, **sizes,
                "test_seed": self.data_seed if self.test_seed is None else self.test_seed,
                "train_labels": np.bincount(self.splits["train"]["labels"].numpy()).tolist(),
                "max_length": self.max_length, "prompt": self.prompt, **prompt}


__all__ = ["GLUE", "TEST_SEED", "GlueFewShot", "GlueSpec", "few_shot_indices", "local_file",
           "longest_first", "prompt_ids", "read_glue", "capped_test_indices"]
