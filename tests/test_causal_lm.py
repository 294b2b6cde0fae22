"""The causal-LM path of Table 5 (MeZO / LoRETTA protocol) on a small random OPT: MeZO's prompts,
its sampler, option scores equal to per-sequence log-likelihoods, both training losses, greedy
generation equal to a step-by-step argmax, SQuAD's F1, and runs end to end from Hydra on the
SuperGLUE files at hand and on generated ReCoRD / SQuAD / DROP files. Random weights: these test
code, not accuracy."""

import functools
import json
import os
from pathlib import Path

import numpy as np
import pytest
import torch
from hydra import compose, initialize_config_dir
from omegaconf import OmegaConf
from torch.nn import functional as F

pytest.importorskip("transformers")

from toys import NoHub  # noqa: E402

from tensam.adapters import LorettaRep  # noqa: E402
from tensam.config import ConfigError  # noqa: E402
from tensam.models import HFModel  # noqa: E402
from tensam.tasks import CausalLMTask, build_task  # noqa: E402
from tensam.tasks.causal_lm import (  # noqa: E402
    SPECS,
    best_f1_em,
    macro_f1,
    mezo_split,
    normalize_answer,
    record_rows,
    token_f1,
)
from tensam.train import CONFIG_DIR, run  # noqa: E402

SUPERGLUE = Path(os.environ.get("TENSAM_SUPERGLUE", "/work/shared/data/superglue-fewshot"))
needs_superglue = pytest.mark.skipif(not (SUPERGLUE / "CB" / "train.jsonl").is_file(),
                                     reason=f"no SuperGLUE files at {SUPERGLUE}")
TINY = {"model_type": "opt", "vocab_size": 30522, "hidden_size": 32, "word_embed_proj_dim": 32,
        "num_hidden_layers": 2, "num_attention_heads": 2, "ffn_dim": 64,
        "max_position_embeddings": 256, "pad_token_id": 0}

PASSAGE = "The cat sat on the mat. @highlight\nCats like mats"
ROWS = {
    "cb": [{"premise": f"It rained on day {i}.", "hypothesis": "The ground is wet.",
            "label": ["entailment", "contradiction", "neutral"][i % 3]} for i in range(40)],
    "boolq": [{"passage": f"Paris is in France ({i}).", "question": "is paris in france",
               "label": i % 2 == 0} for i in range(40)],
    "copa": [{"premise": f"The man fell {i}.", "choice1": "He slipped.", "choice2": "I laughed.",
              "question": ["cause", "effect"][i % 2], "label": i % 2} for i in range(40)],
    "record": [{"passage": {"text": PASSAGE, "entities": [{"start": 4, "end": 6},
                                                          {"start": 19, "end": 21}]},
                "qas": [{"query": "The @placeholder is soft.", "answers": [{"text": "mat"}]},
                        {"query": "A @placeholder sat.", "answers": [{"text": "cat"}]}]}
               for _ in range(20)],
    "squad": [{"title": "Cats", "context": f"Cats sleep {i} hours.", "question": "How long?",
               "answers": {"text": [f"{i} hours", f"{i}"], "answer_start": [11, 11]}}
              for i in range(40)],
    "drop": [{"passage": f"There were {i} goals.", "question": "How many goals?",
              "answers_spans": {"spans": [str(i)], "types": ["number"]}} for i in range(40)],
}


def _write(root: Path, name: str) -> Path:
    folder = root / SPECS[name].folder
    folder.mkdir(parents=True, exist_ok=True)
    for split in ("train", "val"):
        (folder / f"{split}.jsonl").write_text("".join(json.dumps(r) + "\n" for r in ROWS[name]))
    return root


def _task(tmp_path, name, **kwargs) -> CausalLMTask:
    options = {"n_train": 12, "n_val": 4, "n_test": 6, "max_length": 64, "max_new_tokens": 8,
               "batch_size": 4, "eval_batch_size": 4, **kwargs}
    return CausalLMTask(name, data_dir=str(_write(tmp_path, name)), **options)


@pytest.fixture(scope="module")
def model():
    torch.manual_seed(0)
    return HFModel(config=TINY, head="causal_lm",
                   adapter=functools.partial(LorettaRep, r=8, tt_rank=4, modes_a=[4, 8, 8],
                                             modes_b=[8, 8, 4]),
                   target_modules=["q_proj", "v_proj"]).eval()


def test_prompts_are_mezos():
    cb = SPECS["cb"].prompt(ROWS["cb"][1])
    assert cb.context == ('Suppose It rained on day 1. Can we infer that "The ground is wet."? '
                          "Yes, No, or Maybe?\n")
    assert cb.options == ("Yes", "No", "Maybe") and cb.gold == (1,) and cb.target == "No"
    boolq = SPECS["boolq"].prompt(ROWS["boolq"][0])
    assert boolq.context == "Paris is in France (0). Is paris in france?\n" and boolq.gold == (1,)
    copa = SPECS["copa"].prompt(ROWS["copa"][1])  # effect: "so"; "I" keeps its capital
    assert copa.context == "The man fell 1 so" and copa.options == (" he slipped.", " I laughed.")
    assert copa.target == " I laughed."
    wsc = SPECS["wsc"].prompt({"text": "Tom hit Bob because he was angry.", "label": False,
                               "target": {"span1_text": "Bob", "span2_text": "He"}})
    assert wsc.context.endswith('does the pronoun "he" refer to Bob? Yes or No?\n')
    assert wsc.gold == (0,)
    squad = SPECS["squad"].prompt(ROWS["squad"][3])
    assert squad.context == ("Title: Cats\nContext: Cats sleep 3 hours.\nQuestion: How long?\n"
                             "Answer:")
    assert squad.target == " 3 hours\n" and squad.answers == ("3 hours", "3")


def test_record_rows_flatten_official_files_into_queries():
    rows = record_rows(ROWS["record"][0])
    assert [r["query"] for r in rows] == ["The @placeholder is soft.", "A @placeholder sat."]
    assert rows[0]["entities"] == ["cat", "mat"] and rows[0]["answers"] == ["mat"]
    prompt = SPECS["record"].prompt(rows[0])
    assert prompt.context == "The cat sat on the mat. - Cats like mats\n-"
    assert prompt.options == (" The cat is soft.", " The mat is soft.") and prompt.gold == (1,)
    assert prompt.target == " The mat is soft." and prompt.names == ("cat", "mat")


def test_mezo_split_keeps_n_val_for_validation_and_trains_on_the_rest():
    train, val = mezo_split(250, 1000, 100, seed=0)  # CB: 150 / 100
    assert (len(train), len(val)) == (150, 100) and not set(train) & set(val)
    order = np.random.RandomState(0).permutation(250)
    assert list(val) == list(order[150:250])
    train, val = mezo_split(5000, 1000, 500, seed=3)
    assert (len(train), len(val)) == (1000, 500)
    assert list(train) == list(np.random.RandomState(3).permutation(5000)[:1000])
    with pytest.raises(ValueError, match="task.n_val=300"):
        mezo_split(300, 1000, 300, seed=0)


def test_squad_f1_and_macro_f1():
    assert normalize_answer("The  Cat, sat!") == "cat sat"
    assert token_f1("the cat sat", "a cat sat down") == pytest.approx(2 * 1 * (2 / 3) / (5 / 3))
    assert best_f1_em("Cat", ["dog", "the cat"]) == (1.0, 1.0)
    assert token_f1("", "") == 1.0 and token_f1("x", "") == 0.0
    # class 0: tp 1, predicted 2, gold 1 -> 2/3; class 1: tp 1, 2 and 2 -> 1/2; class 2: 0
    assert macro_f1([0, 1, 1, 0], [0, 1, 2, 1], 3) == pytest.approx((2 / 3 + 1 / 2 + 0) / 3)


@torch.no_grad()
def _log_likelihood(model, context: list[int], continuation: list[int]) -> float:
    """log p(continuation | context), one unpadded sequence, the full log-softmax."""
    ids = torch.tensor([context + continuation])
    logits = model({"input_ids": ids, "attention_mask": torch.ones_like(ids)})[0]
    log_p = logits.log_softmax(-1)
    return sum(float(log_p[len(context) + i - 1, t]) for i, t in enumerate(continuation))


def test_option_scores_and_classification_loss_equal_per_sequence_likelihoods(tmp_path, model):
    task = _task(tmp_path, "cb")
    batch = next(task.batches())
    prompts = [task.train[i] for i in next(task.batch_indices())]
    with torch.no_grad():
        total, count = task.log_likelihoods(model, batch)
        expected = torch.tensor([[_log_likelihood(model, task.encode(p.context, context=True),
                                                  task.encode(o)) / len(task.encode(o))
                                  for o in p.options] for p in prompts])
        loss = task.loss(model, batch)
    assert torch.allclose((total / count).view(len(prompts), 3), expected, atol=1e-5)
    gold = torch.tensor([p.gold[0] for p in prompts])
    assert float(loss) == pytest.approx(float(F.cross_entropy(expected, gold)), abs=1e-5)


def test_lm_loss_is_the_token_mean_of_the_gold_continuations(tmp_path, model):
    task = _task(tmp_path, "copa")
    batch = next(task.batches())
    prompts = [task.train[i] for i in next(task.batch_indices())]
    with torch.no_grad():
        loss = float(task.loss(model, batch))
    nll = sum(-_log_likelihood(model, task.encode(p.context, context=True), task.encode(p.target))
              for p in prompts)
    assert loss == pytest.approx(nll / sum(len(task.encode(p.target)) for p in prompts), abs=1e-5)


def test_a_long_context_loses_its_beginning_not_the_option(tmp_path):
    task = _task(tmp_path, "cb", max_length=24)
    long = "word " * 100 + "end."
    batch = task.pack([(long, " yes")])
    assert batch["input_ids"].shape == (1, 24) and batch["target"][0, -1]
    assert batch["input_ids"][0, -1] == task.encode(" yes")[-1]
    assert batch["input_ids"][0, -2] == task.encode("end.")[-1]


def test_greedy_generation_equals_stepwise_argmax_despite_left_padding(tmp_path, model):
    task = _task(tmp_path, "squad", eval_batch_size=4)
    prompts = task.prompts["test"][:3]  # contexts of different lengths share a padded batch
    with torch.no_grad():
        answers = task.generate(model, prompts)
        for prompt, answer in zip(prompts, answers, strict=True):
            ids = task.encode(prompt.context, context=True)
            for _ in range(task.max_new_tokens):
                x = torch.tensor([ids])
                logits = model({"input_ids": x, "attention_mask": torch.ones_like(x)})
                ids.append(int(logits[0, -1].argmax()))
            new = ids[len(task.encode(prompt.context, context=True)):]
            eos = model.network.generation_config.eos_token_id
            new = new[:new.index(eos)] if eos in new else new
            text = task.tokenizer.decode(new, skip_special_tokens=True)
            assert answer == text.strip().split("\n")[0].strip()


def test_record_scores_entities_and_reports_accuracy_f1_em(tmp_path, model):
    task = _task(tmp_path, "record", n_train=30, n_val=6, n_test=8)
    with torch.no_grad():
        metrics = task.evaluate(model)
    assert set(metrics) == {f"{p}{m}" for p in ("", "val_") for m in ("accuracy", "loss", "f1",
                                                                      "em")}
    # two entities, one right: the chosen entity is right exactly when its F1 is 1
    assert metrics["accuracy"] == pytest.approx(metrics["em"])
    assert metrics["f1"] == pytest.approx(metrics["em"])


def test_bad_settings_fail_when_the_task_is_built(tmp_path):
    with pytest.raises(ValueError, match="task.name='mnli' is not one of"):
        CausalLMTask("mnli")
    with pytest.raises(ValueError, match="has no CB/train.jsonl"):
        CausalLMTask("cb", data_dir=str(tmp_path))
    with pytest.raises(ValueError, match="task.max_new_tokens=64 must be below"):
        CausalLMTask("squad", max_length=64, max_new_tokens=64)
    with pytest.raises(ValueError, match="task.n_train=0"):
        CausalLMTask("cb", n_train=0)


def _run(tmp_path, overrides):
    with initialize_config_dir(config_dir=CONFIG_DIR, version_base="1.3"):
        cfg = compose("train", overrides=["experiment=table5_cpu", "logger=disabled",
                                          "steps=4", "threads=null", *overrides])
    OmegaConf.set_struct(cfg, False)
    return run(cfg, tmp_path / "run")


@needs_superglue
@pytest.mark.parametrize("name", ["cb", "copa"])
def test_table5_cpu_runs_end_to_end_on_the_superglue_files(tmp_path, name, monkeypatch):
    monkeypatch.setenv("TENSAM_SUPERGLUE", str(SUPERGLUE))
    summary = _run(tmp_path, [f"task=superglue_{name}", "optimizer=das", "task.n_test=16"])
    assert summary["status"] == "finished" and summary["data"]["n_train"] == 24
    assert 0 <= summary["accuracy"] <= 1 and 0 <= summary["val_accuracy"] <= 1
    assert summary["data"]["loss"] == ("lm" if name == "copa" else "classification")


@pytest.mark.parametrize("name", ["squad", "drop", "record"])
def test_generation_and_record_run_end_to_end_on_generated_files(tmp_path, name, monkeypatch):
    monkeypatch.setenv("TENSAM_SUPERGLUE", str(_write(tmp_path / "data", name)))
    task = "superglue_record" if name == "record" else name
    summary = _run(tmp_path, [f"task={task}", "optimizer=sam", "task.n_test=4",
                              "task.max_new_tokens=4"])
    assert summary["status"] == "finished" and summary["primary_metric"] == (
        "val_accuracy" if name == "record" else "val_f1")
    assert 0 <= summary["f1"] <= 1 and 0 <= summary["em"] <= summary["f1"] + 1e-9


def test_a_validation_set_as_large_as_the_data_fails_before_training(tmp_path, monkeypatch):
    monkeypatch.setenv("TENSAM_SUPERGLUE", str(_write(tmp_path / "data", "copa")))
    with pytest.raises(ConfigError, match="task.n_val=40 leaves none of the 40"):
        _run(tmp_path, ["task=superglue_copa", "task.n_val=40"])
    assert not (tmp_path / "run" / "metrics.jsonl").exists()


def test_every_task_config_names_a_known_task(monkeypatch):
    # the configs alone: a TENSAM_SUPERGLUE of the user's (without ReCoRD, say) is not read
    monkeypatch.delenv("TENSAM_SUPERGLUE", raising=False)
    for name in [*(f"superglue_{n}" for n in ("cb", "boolq", "wsc", "copa", "record", "rte")),
                 "squad", "drop"]:
        with initialize_config_dir(config_dir=CONFIG_DIR, version_base="1.3"):
            cfg = compose("train", overrides=[f"task={name}", "model=opt_tiny",
                                              "task.tokenizer=minilm"])
        task = build_task(OmegaConf.to_container(cfg.task, resolve=True),
                          OmegaConf.to_container(cfg.model, resolve=True)["pretrained"])
        assert isinstance(task, CausalLMTask) and task.name in SPECS


def test_the_test_set_is_mezos_sample_of_the_validation_set_by_the_data_seed(tmp_path):
    """MeZO's / LoRETTA's run.py: eval_samples = sample_subset("valid", seed=train_set_seed,
    num=num_eval), i.e. the first n_test of RandomState(data_seed).permutation, in that order."""
    prompts = {seed: _task(tmp_path, "cb", data_seed=seed, n_test=10).prompts["test"]
               for seed in (0, 1)}
    for seed, test in prompts.items():
        order = np.random.RandomState(seed).permutation(len(ROWS["cb"]))[:10]
        assert test == [SPECS["cb"].prompt(ROWS["cb"][i]) for i in order]
    assert prompts[0] != prompts[1]


def test_loss_is_the_training_loss_on_each_split(tmp_path, model):
    """``loss`` (on which LoRETTA's HF Trainer keeps its best checkpoint) is the training loss:
    the LM loss of the gold continuations for COPA and SQuAD, the option cross-entropy for CB."""
    for name in ("copa", "squad"):
        task = _task(tmp_path / name, name)
        with torch.no_grad():
            metrics = task.evaluate(model)
        for split, prefix in (("val", "val_"), ("test", "")):
            prompts = task.prompts[split]
            nll = sum(-_log_likelihood(model, task.encode(p.context, context=True),
                                       task.encode(p.target)) for p in prompts)
            tokens = sum(len(task.encode(p.target)) for p in prompts)
            assert metrics[f"{prefix}loss"] == pytest.approx(nll / tokens, rel=1e-5)
    task = _task(tmp_path / "cb", "cb")
    with torch.no_grad():
        metrics = task.evaluate(model)
        _, loss = task.choose(model, task.prompts["val"])
    assert metrics["val_loss"] == pytest.approx(loss / len(task.prompts["val"]))


def test_table5_cpu_reports_the_evaluation_with_the_lowest_validation_loss(tmp_path, monkeypatch):
    monkeypatch.setenv("TENSAM_SUPERGLUE", str(_write(tmp_path / "data", "copa")))
    summary = _run(tmp_path, ["task=superglue_copa", "optimizer=das", "eval_every=2",
                              "task.n_test=8"])
    assert summary["objective"] == "val_loss" and summary["best/step"] in (2, 4)
    assert summary["config"]["scheduler"]["_target_"] == "tensam.schedulers.Linear"
    assert {"best/accuracy", "best/f1", "best/val_loss", "best/loss"} <= set(summary)


def test_without_tensam_superglue_or_hub_a_run_fails_in_one_line(tmp_path, monkeypatch):
    NoHub.offline(monkeypatch, "TENSAM_SUPERGLUE")
    with pytest.raises(ConfigError) as err:
        _run(tmp_path, ["task=superglue_cb"])
    message = str(err.value)
    assert "\n" not in message and message.startswith("task.data_dir is unset (TENSAM_SUPERGLUE)")
    assert "holding CB/train.jsonl and CB/val.jsonl" in message
