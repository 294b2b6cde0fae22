"""Prompted causal-LM tasks, the MeZO / LoRETTA protocol of Table 5 (Sec. 5.3, App. B).

Every example becomes a text ``context`` and, for the multiple-choice tasks (CB, BoolQ, WSC, COPA,
ReCoRD, RTE), the continuations the LM scores; the prompts are MeZO's (``templates.py``: the
PromptSource prompts for CB, BoolQ, WSC and RTE, GPT-3's for COPA and ReCoRD, "Title / Context /
Question / Answer" for SQuAD and "Passage / Question / Answer" for DROP). An option's score is
the mean log-likelihood of its tokens after the context; the prediction is the best option.
SQuAD and DROP are answered by greedy generation up to ``max_new_tokens`` or a newline.

Training follows MeZO's ``train_as_classification``: CB, BoolQ, WSC and RTE minimise the
cross-entropy of the option scores (:func:`option_scores`); COPA, ReCoRD, SQuAD and DROP minimise
the LM loss of the gold continuation (teacher forcing, mean over its tokens). Context and
continuation are tokenized apart and joined (the context gets the tokenizer's BOS token where it
has one); a context too long for ``max_length`` loses its beginning.

Metrics (the table reports ``accuracy``, or ``f1`` for SQuAD and DROP): ``accuracy`` is the
fraction of examples whose best option is correct, MeZO's (and the LoRETTA code's) metric for
every multiple-choice task. The paper's App. B says F1 for all but BoolQ and COPA, so ``f1`` is
reported beside it: the macro-F1 over the classes for CB, BoolQ, WSC, COPA and RTE (SuperGLUE's
CB metric), ReCoRD's token F1 of the chosen entity, the best over the gold answers (SuperGLUE's;
``em`` its exact match). SQuAD and DROP report SQuAD's token ``f1`` and ``em`` after its
normalisation (lower case, no punctuation, no articles). ``loss`` is the training loss on the
split (the option cross-entropy, or the LM loss of the gold continuation): the Hugging Face
Trainer's ``eval_loss``, on which LoRETTA's script keeps its best checkpoint. Validation
metrics carry a ``val_`` prefix; runs are selected on them.

Data (MeZO's sampler): ``n_train + n_val`` examples are drawn from the training set by
``RandomState(data_seed).permutation`` -- all of them when it has fewer -- the last ``n_val``
validate and the rest train (CB: 250 -> 150 / 100); the test set is the first ``n_test`` of
``RandomState(data_seed).permutation`` of the validation set (MeZO's and LoRETTA's ``run.py``:
``sample_subset("valid", seed=train_set_seed, num=num_eval)``, so unlike few-shot GLUE's it
follows the data seed). Rows come from ``<data_dir>/<folder>/{train,val}.jsonl`` (SuperGLUE's
official JSON lines, e.g. FewGLUE's files, or the hub's rows written by ``Dataset.to_json``) or,
without a ``data_dir``, from ``datasets.load_dataset`` (SuperGLUE from its parquet revision),
once the hub is seen to answer (otherwise one line naming ``TENSAM_SUPERGLUE``).
"""

from __future__ import annotations

import json
import re
import string
from collections import Counter
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass
from functools import cached_property
from pathlib import Path

import numpy as np
import torch
from torch import nn
from torch.nn import functional as F

from tensam.distributed import unwrap
from tensam.errors import ConfigError
from tensam.models.hf import resolve_pretrained
from tensam.tasks.base import Task, hub_unreachable, tokenizer_name
from tensam.tasks.classification import EpochOrder

Tensors = dict[str, torch.Tensor]


@dataclass(frozen=True)
class Prompt:
    """One example as the causal LM sees it."""

    context: str
    options: tuple[str, ...] = ()  # continuations scored by the LM (none: generation)
    gold: tuple[int, ...] = ()  # indices of the correct options
    target: str = ""  # the continuation the LM loss trains on
    answers: tuple[str, ...] = ()  # references of F1 / EM (ReCoRD's entities, SQuAD's spans)
    names: tuple[str, ...] = ()  # the answer each option stands for (ReCoRD's entities)


def _label(value, names: Sequence[str]) -> int:
    """A label given as an id, a bool or one of ``names`` (SuperGLUE files hold all three)."""
    if isinstance(value, str) and value in names:
        return names.index(value)
    return int(value)


def _choice(context: str, words: Sequence[str], label) -> Prompt:
    """A prompt answered by one of ``words`` right after ``context``."""
    options = tuple(words)
    return Prompt(context, options, (label,), options[label])


def cb(row: dict) -> Prompt:
    return _choice(f"Suppose {row['premise']} Can we infer that \"{row['hypothesis']}\"? Yes, "
                   "No, or Maybe?\n", ("Yes", "No", "Maybe"),
                   _label(row["label"], ("entailment", "contradiction", "neutral")))


def rte(row: dict) -> Prompt:
    return _choice(f"{row['premise']}\nDoes this mean that \"{row['hypothesis']}\" is true? Yes "
                   "or No?\n", ("Yes", "No"), _label(row["label"], ("entailment",
                                                                   "not_entailment")))


def boolq(row: dict) -> Prompt:
    question = row["question"] if row["question"].endswith("?") else row["question"] + "?"
    return _choice(f"{row['passage']} {question[0].upper()}{question[1:]}\n", ("No", "Yes"),
                   _label(row["label"], ()))


def wsc(row: dict) -> Prompt:
    row = {**row.get("target", {}), **row}  # the official files nest the spans in "target"
    return _choice(f"{row['text']}\nIn the previous sentence, does the pronoun "
                   f"\"{row['span2_text'].lower()}\" refer to {row['span1_text']}? Yes or No?\n",
                   ("No", "Yes"), _label(row["label"], ()))


def copa(row: dict) -> Prompt:
    premise = row["premise"].rstrip()
    premise = premise[:-1] if premise.endswith(".") else premise
    conjunction = {"cause": " because", "effect": " so"}[row["question"]]

    def lower_first(choice: str) -> str:
        first, _, rest = choice.partition(" ")
        return " ".join(w for w in (first if first == "I" else first.lower(), rest) if w)

    options = tuple(" " + lower_first(row[f"choice{i}"]) for i in (1, 2))
    label = int(row["label"])
    return Prompt(premise + conjunction, options, (label,), options[label])


def record(row: dict) -> Prompt:
    entities = tuple(dict.fromkeys(row["entities"]))
    answers = tuple(dict.fromkeys(row["answers"]))
    options = tuple(" " + row["query"].replace("@placeholder", e) for e in entities)
    gold = tuple(i for i, e in enumerate(entities) if e in answers)
    return Prompt(row["passage"].replace("@highlight\n", "- ") + "\n-", options, gold,
                  " " + row["query"].replace("@placeholder", answers[0]), answers, entities)


def _generation(context: str, answers: Sequence[str]) -> Prompt:
    answers = tuple(dict.fromkeys(a for a in answers if a.strip()))
    return Prompt(context, target=f" {answers[0]}\n" if answers else "\n", answers=answers)


def squad(row: dict) -> Prompt:
    return _generation(f"Title: {row['title']}\nContext: {row['context']}\nQuestion: "
                       f"{row['question'].strip()}\nAnswer:", row["answers"]["text"])


def drop(row: dict) -> Prompt:
    return _generation(f"Passage: {row['passage']}\nQuestion: {row['question'].strip()}\n"
                       "Answer:", row["answers_spans"]["spans"])


def record_rows(row: dict) -> list[dict]:
    """ReCoRD rows in the hub's flat layout (passage, query, entities, answers); an official
    row (a passage with character-span entities and several queries) gives one per query."""
    if "qas" not in row:
        return [row]
    text = row["passage"]["text"]
    entities = [text[e["start"]:e["end"] + 1] for e in row["passage"]["entities"]]
    return [{"passage": text, "query": qa["query"], "entities": entities,
             "answers": [a["text"] for a in qa.get("answers", [])]} for qa in row["qas"]]


@dataclass(frozen=True)
class PromptSpec:
    """Where a task's data live, how a row becomes a :class:`Prompt`, and how it trains."""

    folder: str  # directory of train.jsonl / val.jsonl under data_dir
    hub: tuple[str, ...]  # datasets.load_dataset's path (and name)
    prompt: Callable[[dict], Prompt]
    lm_loss: bool = False  # MeZO's train_as_classification False
    generate: bool = False
    parquet: bool = False  # a script-based hub dataset, read from its parquet revision


SPECS = {
    "cb": PromptSpec("CB", ("super_glue", "cb"), cb, parquet=True),
    "boolq": PromptSpec("BoolQ", ("super_glue", "boolq"), boolq, parquet=True),
    "wsc": PromptSpec("WSC", ("super_glue", "wsc.fixed"), wsc, parquet=True),
    "rte": PromptSpec("RTE", ("super_glue", "rte"), rte, parquet=True),
    "copa": PromptSpec("COPA", ("super_glue", "copa"), copa, lm_loss=True, parquet=True),
    "record": PromptSpec("ReCoRD", ("super_glue", "record"), record, lm_loss=True, parquet=True),
    "squad": PromptSpec("SQuAD", ("rajpurkar/squad",), squad, lm_loss=True, generate=True),
    "drop": PromptSpec("DROP", ("ucinlp/drop",), drop, lm_loss=True, generate=True),
}


def read_rows(name: str, split: str, data_dir: str | None) -> list[dict]:
    """The rows of ``split`` (``train`` or ``val``) of task ``name``: ``data_dir``'s JSON lines,
    or the hub's ``train`` / ``validation`` split without a ``data_dir``."""
    spec = SPECS[name]
    if data_dir is None:
        import datasets

        revision = {"revision": "refs/convert/parquet"} if spec.parquet else {}
        rows = list(datasets.load_dataset(*spec.hub, split="train" if split == "train"
                                          else "validation", **revision))
    else:
        path = Path(data_dir).expanduser() / spec.folder / f"{split}.jsonl"
        with open(path, encoding="utf-8") as f:
            rows = [json.loads(line) for line in f if line.strip()]
    if name == "record":
        rows = [r for row in rows for r in record_rows(row)]
    return rows


def mezo_split(n_pool: int, n_train: int, n_val: int, seed: int) -> tuple[np.ndarray, np.ndarray]:
    """MeZO's (train, validation) indices: the first ``n_train + n_val`` of
    ``RandomState(seed).permutation(n_pool)`` (all when fewer), the last ``n_val`` validating."""
    order = np.random.RandomState(seed).permutation(n_pool)[:n_train + n_val]
    if len(order) <= n_val:
        raise ConfigError(f"task.n_val={n_val} leaves none of the {n_pool} training examples to "
                          "train on")
    return order[:-n_val], order[-n_val:]


def normalize_answer(text: str) -> str:
    """SQuAD's answer normalisation: lower case, no punctuation, articles or extra spaces."""
    text = "".join(c for c in text.lower() if c not in set(string.punctuation))
    return " ".join(re.sub(r"\b(a|an|the)\b", " ", text).split())


def token_f1(prediction: str, reference: str) -> float:
    """SQuAD's token F1 of two answers after :func:`normalize_answer`."""
    pred, ref = normalize_answer(prediction).split(), normalize_answer(reference).split()
    common = sum((Counter(pred) & Counter(ref)).values())
    if not pred or not ref:
        return float(pred == ref)
    if common == 0:
        return 0.0
    precision, recall = common / len(pred), common / len(ref)
    return 2 * precision * recall / (precision + recall)


def best_f1_em(prediction: str, answers: Sequence[str]) -> tuple[float, float]:
    """The best token F1 and exact match of ``prediction`` over the gold ``answers``."""
    if not answers:
        return 0.0, 0.0
    return (max(token_f1(prediction, a) for a in answers),
            max(float(normalize_answer(prediction) == normalize_answer(a)) for a in answers))


def macro_f1(predictions: Sequence[int], labels: Sequence[int], num_classes: int) -> float:
    """The unweighted mean over classes of the F1 score (SuperGLUE's CB F1)."""
    pred, gold = np.asarray(predictions), np.asarray(labels)
    scores = []
    for c in range(num_classes):
        tp = np.sum((pred == c) & (gold == c))
        denominator = np.sum(pred == c) + np.sum(gold == c)
        scores.append(2 * tp / denominator if denominator else 0.0)
    return float(np.mean(scores))


def option_scores(logits: torch.Tensor, input_ids: torch.Tensor,
                  target: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """Per sequence, the summed log-likelihood of the tokens marked by ``target`` and their
    number. The logits at position t predict token t + 1; only the rows of marked tokens get a
    log-softmax (a (tokens x vocabulary) array, not (batch x length x vocabulary))."""
    predicted = target[:, 1:]
    rows = logits[:, :-1][predicted].float()
    tokens = input_ids[:, 1:][predicted]
    log_p = rows.log_softmax(-1).gather(1, tokens[:, None]).squeeze(1)
    owner = predicted.nonzero()[:, 0]
    total = torch.zeros(len(target), device=log_p.device).index_add_(0, owner, log_p)
    return total, predicted.sum(1)


class CausalLMTask(Task):
    """A MeZO-style prompted task for a causal LM (``HFModel`` with ``head: causal_lm``).

    ``name``: cb | boolq | wsc | rte | copa | record | squad | drop. Training batches are
    ``batch_size`` examples in an :class:`~tensam.tasks.classification.EpochOrder` (seeded,
    resumable epochs).
    """

    metrics = {f"{prefix}{m}": m != "loss" for prefix in ("", "val_")
               for m in ("accuracy", "f1", "em", "loss")}

    def __init__(self, name: str = "cb", n_train: int = 1000, n_val: int = 500,
                 n_test: int = 1000, data_seed: int = 0, tokenizer: str | None = "minilm",
                 data_dir: str | None = None, max_length: int = 2048, max_new_tokens: int = 50,
                 batch_size: int = 1, eval_batch_size: int = 8, pretrained: str | None = None):
        if name not in SPECS:
            raise ConfigError(f"task.name={name!r} is not one of {sorted(SPECS)}")
        for key, value in (("n_train", n_train), ("n_val", n_val), ("n_test", n_test),
                           ("max_length", max_length), ("max_new_tokens", max_new_tokens)):
            if isinstance(value, bool) or not isinstance(value, int) or value < 1:
                raise ConfigError(f"task.{key}={value!r} must be an integer >= 1")
        if max_new_tokens >= max_length:
            raise ConfigError(f"task.max_new_tokens={max_new_tokens} must be below "
                              f"task.max_length={max_length}")
        self.name, self.spec = name, SPECS[name]
        if data_dir is not None:
            for split in ("train", "val"):
                path = Path(data_dir).expanduser() / self.spec.folder / f"{split}.jsonl"
                if not path.is_file():
                    raise ConfigError(f"task.data_dir={data_dir!r} has no "
                                      f"{self.spec.folder}/{split}.jsonl")
        self.n_train, self.n_val, self.n_test = n_train, n_val, n_test
        self.tokenizer_name, self.data_dir = tokenizer_name(tokenizer, pretrained), data_dir
        self.max_length, self.max_new_tokens = max_length, max_new_tokens
        self.primary_metric = self.primary_metric_of({"name": name})
        if batch_size < 1 or eval_batch_size < 1:
            raise ConfigError(f"task.batch_size={batch_size}, task.eval_batch_size="
                              f"{eval_batch_size} must be >= 1")
        self.batch_size, self.eval_batch_size = batch_size, eval_batch_size
        self.data_seed = data_seed

    @classmethod
    def primary_metric_of(cls, task_cfg: dict) -> str:
        spec = SPECS.get(task_cfg.get("name", "cb"))
        return "val_f1" if spec is not None and spec.generate else "val_accuracy"

    @cached_property
    def order(self) -> EpochOrder:
        """The epochs over the training prompts (read here: ``train.py`` sizes the task while
        it builds, so a missing source fails before any work)."""
        return EpochOrder(len(self.train), self.batch_size, self.data_seed)

    @property
    def steps_per_epoch(self) -> int:
        return self.order.steps_per_epoch

    def batch_indices(self, start_step: int = 0) -> Iterator[list[int]]:
        return self.order.batch_indices(start_step)

    # -- data -----------------------------------------------------------------------------

    @cached_property
    def prompts(self) -> dict[str, list[Prompt]]:
        """The ``train``, ``val`` and ``test`` prompts (read and sampled on first use)."""
        if self.data_dir is None and (why := hub_unreachable()) is not None:
            folder = self.spec.folder
            raise ConfigError(
                f"task.data_dir is unset (TENSAM_SUPERGLUE) and the Hugging Face hub cannot be "
                f"reached ({why}): set TENSAM_SUPERGLUE to a folder holding {folder}/train.jsonl "
                f"and {folder}/val.jsonl (JSON lines), or HF_DATASETS_OFFLINE=1 to read the "
                "datasets cache")
        pool = read_rows(self.name, "train", self.data_dir)
        train, val = mezo_split(len(pool), self.n_train, self.n_val, self.data_seed)
        test_rows = read_rows(self.name, "val", self.data_dir)
        test = np.random.RandomState(self.data_seed).permutation(len(test_rows))[:self.n_test]
        return {"train": [self.spec.prompt(pool[i]) for i in train],
                "val": [self.spec.prompt(pool[i]) for i in val],
                "test": [self.spec.prompt(test_rows[i]) for i in test]}

    @property
    def train(self) -> list[Prompt]:
        """The training prompts (:attr:`order` draws its epochs over them)."""
        return self.prompts["train"]

    @cached_property
    def tokenizer(self):
        from transformers import AutoTokenizer

        return AutoTokenizer.from_pretrained(resolve_pretrained(self.tokenizer_name))

    def encode(self, text: str, context: bool = False) -> list[int]:
        """Token ids of ``text``; a ``context`` starts with the BOS token where there is one."""
        ids = self.tokenizer(text, add_special_tokens=False)["input_ids"]
        bos = self.tokenizer.bos_token_id
        return [bos, *ids] if context and bos is not None else ids

    def pack(self, pairs: Sequence[tuple[str, str]]) -> Tensors:
        """(context, continuation) pairs as right-padded ``input_ids`` and ``attention_mask``,
        with ``target`` marking the continuation tokens; the context loses its start, the
        continuation its end, where the pair exceeds ``max_length`` (one context token stays)."""
        sequences = []
        for context, continuation in pairs:
            ctx = self.encode(context, context=True)
            cont = self.encode(continuation)[:self.max_length - 1]
            ctx = ctx[max(0, len(ctx) + len(cont) - self.max_length):]
            sequences.append((ctx + cont, len(cont)))
        length = max(len(s) for s, _ in sequences)
        pad = self.tokenizer.pad_token_id or 0
        ids = torch.full((len(sequences), length), pad, dtype=torch.long)
        mask = torch.zeros_like(ids)
        target = torch.zeros_like(ids, dtype=torch.bool)
        for i, (seq, n) in enumerate(sequences):
            ids[i, :len(seq)] = torch.tensor(seq)
            mask[i, :len(seq)] = 1
            target[i, len(seq) - n:len(seq)] = True
        return {"input_ids": ids.to(self.device), "attention_mask": mask.to(self.device),
                "target": target.to(self.device)}

    def option_batch(self, prompts: Sequence[Prompt]) -> Tensors:
        """Every option of ``prompts`` packed, with ``owner`` (the prompt of each sequence)."""
        packed = self.pack([(p.context, o) for p in prompts for o in p.options])
        owner = [i for i, p in enumerate(prompts) for _ in p.options]
        packed["owner"] = torch.tensor(owner, device=self.device)
        # -100 (cross_entropy's ignore_index): a ReCoRD query none of whose entities is right
        packed["gold"] = torch.tensor([p.gold[0] if p.gold else -100 for p in prompts],
                                      device=self.device)
        return packed

    def batches(self, start_step: int = 0) -> Iterator[Tensors]:
        for indices in self.batch_indices(start_step):
            prompts = [self.train[i] for i in indices]
            yield (self.pack([(p.context, p.target) for p in prompts]) if self.spec.lm_loss
                   else self.option_batch(prompts))

    # -- loss and scores ------------------------------------------------------------------

    @staticmethod
    def log_likelihoods(model: nn.Module, batch: Tensors) -> tuple[torch.Tensor, torch.Tensor]:
        logits = model({"input_ids": batch["input_ids"], "attention_mask": batch["attention_mask"]})
        return option_scores(logits, batch["input_ids"], batch["target"])

    @staticmethod
    def by_prompt(scores: torch.Tensor, owner: torch.Tensor, n_prompts: int) -> torch.Tensor:
        """(prompts x most options) scores, -inf where a prompt has fewer options."""
        first = torch.searchsorted(owner, torch.arange(n_prompts, device=owner.device))
        column = torch.arange(len(owner), device=owner.device) - first[owner]
        table = scores.new_full((n_prompts, int(column.max()) + 1), float("-inf"))
        table[owner, column] = scores
        return table

    def loss(self, model: nn.Module, batch: Tensors) -> torch.Tensor:
        """The LM loss of the gold continuations (mean over their tokens), or the cross-entropy
        of the mean option log-likelihoods (MeZO's ``train_as_classification``)."""
        total, count = self.log_likelihoods(model, batch)
        if self.spec.lm_loss:
            return -total.sum() / count.sum()
        table = self.by_prompt(total / count, batch["owner"], len(batch["gold"]))
        return F.cross_entropy(table, batch["gold"])

    def choose(self, model: nn.Module, prompts: Sequence[Prompt]) -> tuple[list[int], float]:
        """The best option of each prompt and the summed cross-entropy of the option scores."""
        choices, loss = [], 0.0
        for start in range(0, len(prompts), self.eval_batch_size):
            chunk = prompts[start:start + self.eval_batch_size]
            batch = self.option_batch(chunk)
            total, count = self.log_likelihoods(model, batch)
            table = self.by_prompt(total / count, batch["owner"], len(chunk))
            choices += table.argmax(1).tolist()
            loss += float(F.cross_entropy(table, batch["gold"], reduction="sum"))
        return choices, loss

    def generate(self, model: nn.Module, prompts: Sequence[Prompt]) -> list[str]:
        """Greedy answers up to ``max_new_tokens`` or the first newline (left-padded batches)."""
        network = unwrap(model).network
        pad = self.tokenizer.pad_token_id or 0
        stop = [t for t in (self.tokenizer.eos_token_id, *self.encode("\n")) if t is not None]
        answers = []
        for start in range(0, len(prompts), self.eval_batch_size):
            contexts = [self.encode(p.context, context=True)[-(self.max_length
                                                               - self.max_new_tokens):]
                        for p in prompts[start:start + self.eval_batch_size]]
            length = max(map(len, contexts))
            ids = torch.full((len(contexts), length), pad, dtype=torch.long)
            mask = torch.zeros_like(ids)
            for i, ctx in enumerate(contexts):
                ids[i, length - len(ctx):], mask[i, length - len(ctx):] = torch.tensor(ctx), 1
            out = network.generate(input_ids=ids.to(self.device),
                                   attention_mask=mask.to(self.device),
                                   max_new_tokens=self.max_new_tokens, do_sample=False,
                                   eos_token_id=stop or None, pad_token_id=pad)
            texts = self.tokenizer.batch_decode(out[:, length:], skip_special_tokens=True)
            answers += [t.strip().split("\n")[0].strip() for t in texts]
        return answers

    def lm_loss(self, model: nn.Module, prompts: Sequence[Prompt]) -> float:
        """The LM training loss over ``prompts``: the gold continuations' negative
        log-likelihood, token mean."""
        nll, tokens = 0.0, 0
        for start in range(0, len(prompts), self.eval_batch_size):
            chunk = prompts[start:start + self.eval_batch_size]
            total, count = self.log_likelihoods(model, self.pack([(p.context, p.target)
                                                                  for p in chunk]))
            nll, tokens = nll - float(total.sum()), tokens + int(count.sum())
        return nll / max(tokens, 1)

    def evaluate(self, model: nn.Module, test: bool = True) -> dict[str, float]:
        """Accuracy, F1 (and EM) and ``loss``, the training loss on the split (MeZO's and
        LoRETTA's ``eval_loss``, on which LoRETTA keeps its best checkpoint): the cross-entropy
        of the option scores, or for COPA, ReCoRD, SQuAD and DROP the LM loss of the gold
        continuations."""
        metrics = {}
        for split, prefix in (("val", "val_"), ("test", ""))[:2 if test else 1]:
            prompts = self.prompts[split]
            if self.spec.lm_loss:
                metrics[f"{prefix}loss"] = self.lm_loss(model, prompts)
            if self.spec.generate:
                scores = [best_f1_em(a, p.answers)
                          for a, p in zip(self.generate(model, prompts), prompts, strict=True)]
                f1, em = np.mean(scores, axis=0).tolist()
                metrics.update({f"{prefix}f1": f1, f"{prefix}em": em})
                continue
            choices, loss = self.choose(model, prompts)
            right = [c in p.gold for c, p in zip(choices, prompts, strict=True)]
            metrics[f"{prefix}accuracy"] = float(np.mean(right))
            metrics.setdefault(f"{prefix}loss", loss / len(prompts))
            if self.name != "record":
                metrics[f"{prefix}f1"] = macro_f1(choices, [p.gold[0] for p in prompts],
                                                  len(prompts[0].options))
            else:
                f1, em = np.mean([best_f1_em(p.names[c], p.answers)
                                  for c, p in zip(choices, prompts, strict=True)], axis=0).tolist()
                metrics.update({f"{prefix}f1": f1, f"{prefix}em": em})
        return metrics

    def info(self) -> dict:
        return {"dataset": f"{self.name} (MeZO prompts)", "source": self.data_dir
                or "datasets (hub)", "data_seed": self.data_seed, "max_length": self.max_length,
                "loss": "lm" if self.spec.lm_loss else "classification",
                **{f"n_{split}": len(p) for split, p in self.prompts.items()}}


__all__ = ["CausalLMTask", "Prompt", "PromptSpec", "SPECS", "best_f1_em", "macro_f1",
           "mezo_split", "normalize_answer", "option_scores", "read_rows", "token_f1"]
