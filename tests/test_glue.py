"""Few-shot GLUE (LM-BFF / MeZO protocol): balanced, seeded, disjoint k-shot splits, the dev set
as test (capped), tokenized batches with exact resume, and a short FLoRA run end to end."""

import functools
import json
import os
import sys
from dataclasses import replace
from itertools import islice
from pathlib import Path

import numpy as np
import pytest
import torch
from hydra import compose, initialize_config_dir
from omegaconf import OmegaConf

pytest.importorskip("transformers")

from toys import NoHub, readme_example, train_cli  # noqa: E402

from tensam.adapters import FLoRALinear  # noqa: E402
from tensam.tasks import GlueFewShot, build_task  # noqa: E402
from tensam.tasks.glue import (  # noqa: E402
    GLUE,
    capped_test_indices,
    few_shot_indices,
    read_glue,
)
from tensam.train import CONFIG_DIR, run  # noqa: E402

#: the development copy of GLUE's SST-2 and RTE TSVs (tests that read it skip without it)
GLUE_DIR = Path(os.environ.get("TENSAM_GLUE", "/work/shared/data/glue"))
needs_glue = pytest.mark.skipif(not (GLUE_DIR / "SST-2" / "train.tsv").is_file(),
                                reason=f"no GLUE TSVs at {GLUE_DIR} (set TENSAM_GLUE)")


def test_k_shot_sampling_is_balanced_disjoint_and_seeded():
    labels = np.random.default_rng(0).integers(0, 3, size=500)
    train, val = few_shot_indices(labels, 16, seed=13, num_labels=3)
    assert np.bincount(labels[train]).tolist() == [16, 16, 16]
    assert np.bincount(labels[val]).tolist() == [16, 16, 16]
    assert not set(train) & set(val)
    again = few_shot_indices(labels, 16, seed=13, num_labels=3)
    assert np.array_equal(train, again[0]) and np.array_equal(val, again[1])
    assert not np.array_equal(train, few_shot_indices(labels, 16, seed=21, num_labels=3)[0])
    # LM-BFF: the first k of each class in the seeded shuffle train, the next k validate
    order = np.random.RandomState(13).permutation(500)
    first = order[labels[order] == 0]
    assert set(first[:16]) <= set(train) and set(first[16:32]) <= set(val)
    with pytest.raises(ValueError, match="fewer than 2 k"):
        few_shot_indices(labels, 100, seed=13, num_labels=3)


def _write(path: Path, header: list[str], rows: list[list]) -> None:
    path.mkdir(parents=True, exist_ok=True)
    lines = ["\t".join(header)] + ["\t".join(map(str, r)) for r in rows]
    (path / "dev.tsv").write_text("\n".join(lines) + "\n")
    (path / "train.tsv").write_text("\n".join(lines) + "\n")


def test_dev_is_capped_and_label_names_are_read(tmp_path):
    rows = [[f'premise "{i}" here', f"hypothesis {i}", ["entailment", "not_entailment"][i % 2]]
            for i in range(1200)]
    _write(tmp_path / "RTE", ["index", "sentence1", "sentence2", "label"],
           [[i, *r] for i, r in enumerate(rows)])
    texts, labels = read_glue("rte", "dev", str(tmp_path))
    assert texts[0][3] == 'premise "3" here' and labels[:4].tolist() == [0, 1, 0, 1]
    task = GlueFewShot("rte", k=4, data_dir=str(tmp_path), max_length=16, max_test=1000,
                       batch_size=4)
    info = task.info()
    assert (info["n_train"], info["n_val"], info["n_test"]) == (8, 8, 1000)
    assert task.model_inputs() == {"num_labels": 2}


def test_the_capped_test_set_is_mezos_seed_42_draw_for_every_data_seed(tmp_path):
    """MeZO's generate_k_shot_data.py (k-shot-1k-test) cuts a test set above 1,000 once, seeded
    42, for all data seeds: np.random.seed(42) + shuffle of the TSV lines, or pandas'
    sample(n=1000, random_state=42) of the CSVs, both RandomState(42).permutation(n)[:1000]."""
    n = 1200
    rows = [[f"sentence number {i} .", i % 2] for i in range(n)]
    _write(tmp_path / "SST-2", ["sentence", "label"], rows)
    expected = np.random.RandomState(42).permutation(n)[:1000]
    assert np.array_equal(capped_test_indices(n, 1000), expected)
    assert np.array_equal(capped_test_indices(872, 1000), np.arange(872))  # SST-2's dev: all
    saved = np.random.get_state()
    try:  # the reference's own calls draw the same examples in the same order
        lines = list(range(n))
        np.random.seed(42)
        np.random.shuffle(lines)
    finally:
        np.random.set_state(saved)
    assert lines[:1000] == expected.tolist()
    pandas = pytest.importorskip("pandas")
    sample = pandas.DataFrame({"i": range(n)}).sample(n=1000, random_state=42)
    assert sample["i"].tolist() == expected.tolist()

    tasks = {seed: _task("sst2", tmp_path, data_seed=seed, max_length=16) for seed in (13, 21)}
    first, second = (t.splits["test"] for t in tasks.values())
    assert all(torch.equal(first[k], second[k]) for k in first)  # the same for both data seeds
    want = tasks[13].encode([[rows[i][0] for i in expected]])
    assert torch.equal(first["input_ids"], want["input_ids"])
    assert first["labels"].tolist() == [rows[i][1] for i in expected]
    assert tasks[13].info()["test_seed"] == 42
    # test_seed=null: the data seed draws it (the subsets differ between data seeds)
    own = [_task("sst2", tmp_path, data_seed=s, max_length=16, test_seed=None).splits["test"]
           for s in (13, 21)]
    assert not torch.equal(own[0]["labels"], own[1]["labels"])
    with pytest.raises(ValueError, match="task.test_seed=-1"):
        _task("sst2", tmp_path, test_seed=-1)


def test_bad_settings_fail_when_the_task_is_built(tmp_path):
    with pytest.raises(ValueError, match="task.name='cola'"):
        GlueFewShot("cola")
    with pytest.raises(ValueError, match="no SST-2/train.tsv"):
        GlueFewShot("sst2", data_dir=str(tmp_path))
    with pytest.raises(ValueError, match="task.k=0"):
        GlueFewShot("sst2", k=0)


@needs_glue
@pytest.mark.parametrize("name, n_test, n_classes", [("sst2", 872, 2), ("rte", 277, 2)])
def test_real_glue_splits(name, n_test, n_classes):
    task = GlueFewShot(name, k=16, data_seed=42, data_dir=str(GLUE_DIR), batch_size=8)
    info = task.info()
    assert (info["n_train"], info["n_val"], info["n_test"]) == (32, 32, n_test)
    assert info["train_labels"] == [16] * n_classes
    _, labels = read_glue(name, "train", str(GLUE_DIR))
    train, val = few_shot_indices(labels, 16, 42, n_classes)
    assert not set(train) & set(val)
    batch = next(task.batches())
    assert set(batch) >= {"input_ids", "attention_mask", "labels"}
    length = batch["input_ids"].shape[1]
    assert batch["input_ids"].shape == batch["attention_mask"].shape == (8, length)
    assert length <= 128 and batch["attention_mask"][:, -1].any()  # cut to the longest
    if name == "rte":
        assert batch["token_type_ids"].max() == 1  # sentence pairs


@needs_glue
def test_batches_resume_exactly():
    task = GlueFewShot("sst2", k=16, data_dir=str(GLUE_DIR), batch_size=8)  # 4 steps/epoch
    straight = list(islice(task.batches(0), 7))
    resumed = list(islice(task.batches(5), 2))
    for a, b in zip(straight[5:], resumed, strict=True):
        assert all(torch.equal(a[k], b[k]) for k in a)
    assert sorted(sum(islice(task.batch_indices(0), 4), [])) == list(range(32))  # one epoch


@needs_glue
def test_flora_on_minilm_trains_end_to_end(tmp_path):
    with initialize_config_dir(config_dir=CONFIG_DIR, version_base="1.3"):
        cfg = compose("train", overrides=[
            "experiment=glue_minilm", "optimizer=das", "steps=6", "log_every=3",
            "eval_every=3", "task.k=8", "task.max_test=48", "logger=disabled", "threads=1",
            f"task.data_dir={GLUE_DIR}"])
    summary = run(cfg, tmp_path)
    assert summary["status"] == "finished" and summary["steps"] == 6
    assert 0 <= summary["accuracy"] <= 1 and 0 <= summary["val_accuracy"] <= 1
    assert summary["data"]["n_test"] == 48 and summary["data"]["train_labels"] == [8, 8]
    q = [k for k in summary if k.startswith("norm/network.") and k.endswith("/Q")]
    assert len(q) == 12  # one core group per adapted query/value of the 6 layers
    assert summary["primary_metric"] == "val_accuracy"
    # FLoRA r 8 on 384 x 384: A, B (384 x 8) and G (8 x 8) per matrix; the head 384 x 2 + 2
    adapters = 12 * (2 * 384 * 8 + 8 * 8)
    info = summary["model_info"]
    assert (info["adapter_parameters"], info["trainable"]) == (adapters, adapters + 770)


# --- SST-5, MNLI, SNLI, TREC and the masked-LM prompt path (LM-BFF / MeZO) ---------------------

MINILM = "minilm"  # the BERT uncased WordPiece tokenizer of all-MiniLM-L6-v2 (packaged)
TINY_BERT = {"model_type": "bert", "vocab_size": 30522, "hidden_size": 32,
             "num_hidden_layers": 2, "num_attention_heads": 2, "intermediate_size": 64}


def _tsv(path: Path, name: str, header: list[str], rows: list[list]) -> None:
    path.mkdir(parents=True, exist_ok=True)
    (path / name).write_text("\n".join("\t".join(map(str, r)) for r in [header, *rows]) + "\n")


def _csv(path: Path, name: str, rows: list[list]) -> None:
    import csv

    path.mkdir(parents=True, exist_ok=True)
    with open(path / name, "w", newline="") as f:
        csv.writer(f).writerows(rows)


def _sst2(root: Path, n: int = 40) -> None:
    rows = [[f"a {'fine' if i % 2 else 'dull'} film number {i} .", i % 2] for i in range(n)]
    _write(root / "SST-2", ["sentence", "label"], rows)


def _task(name: str, root: Path, **kw) -> GlueFewShot:
    return GlueFewShot(name, k=kw.pop("k", 4), data_dir=str(root), tokenizer=MINILM,
                       batch_size=4, **kw)


#: per task: how to write its local files, and (text, label id) of the first test row
def _files(name: str, root: Path) -> tuple[str, int]:
    if name in ("sst5", "trec"):  # LM-BFF's label,sentence CSVs; a comma inside quotes
        n = 5 if name == "sst5" else 6
        rows = [[i % n, f"question {i}, or sentence {i} ?"] for i in range(12 * n)]
        folder = root / GLUE[name].folder
        _csv(folder, "train.csv", rows)
        _csv(folder, "test.csv", rows[3:])
        return "question 3, or sentence 3 ?", 3
    # MNLI / SNLI: GLUE's TSVs, extra columns, label names in gold_label, SNLI's "-" dropped
    labels = ["entailment", "neutral", "contradiction"]
    rows = [[i, "x", f"Premise {i}.", f"Hypothesis {i}.", labels[i % 3], labels[i % 3]]
            for i in range(36)]
    header = ["index", "genre", "sentence1", "sentence2", "label1", "gold_label"]
    folder = root / GLUE[name].folder
    _tsv(folder, "train.tsv", header, rows)
    _tsv(folder, GLUE[name].files[1], header, [[99, "x", "No gold.", "None.", "-", "-"], *rows])
    return "Premise 0.", 0


@pytest.mark.parametrize("name", ["sst5", "mnli", "snli", "trec"])
def test_new_tasks_read_their_local_files_and_sample_balanced(tmp_path, name):
    first, label = _files(name, tmp_path)
    texts, labels = read_glue(name, "test", str(tmp_path))
    assert texts[0][0] == first and labels[0] == label
    assert len(texts) == len(GLUE[name].text) == (2 if name in ("mnli", "snli") else 1)
    n = len(GLUE[name].labels)
    assert labels.max() == n - 1 and -1 not in labels
    task = _task(name, tmp_path, k=4)
    info = task.info()
    assert info["train_labels"] == [4] * n and (info["n_train"], info["n_val"]) == (4 * n, 4 * n)
    assert info["n_test"] == len(labels) and task.model_inputs() == {"num_labels": n}
    (tmp_path / GLUE[name].folder / GLUE[name].files[1]).unlink()
    with pytest.raises(ValueError, match=rf"task.data_dir=.* has no {GLUE[name].folder}/"
                                         rf"{GLUE[name].files[1]}"):
        _task(name, tmp_path)


def test_short_classes_give_what_they_have_as_lm_bff_does(tmp_path):
    """TREC at k = 512 has 86 ABBR questions: LM-BFF trains on them all and validates on none;
    the training set's size (and the epochs) follow."""
    rows = [[c, f"q {c} {i}"] for c in range(6) for i in range(3 if c == 2 else 20)]
    _csv(tmp_path / "trec", "train.csv", rows)
    _csv(tmp_path / "trec", "test.csv", rows)
    task = _task("trec", tmp_path, k=8)
    assert task.order.size == 48 and task.steps_per_epoch == 12  # before the data
    epoch = sum(islice(task.batch_indices(0), 10), [])  # 10 batches of 4: one epoch
    assert task.steps_per_epoch == 10 and task.order.size == 43
    assert len(set(epoch)) == 40 and set(epoch) <= set(range(43))
    info = task.info()
    assert info["train_labels"] == [8, 8, 3, 8, 8, 8] and info["n_val"] == 40
    labels = np.repeat(np.arange(3), [2, 50, 50])
    train, val = few_shot_indices(labels, 8, 13, 3, cap=True)
    assert np.bincount(labels[train]).tolist() == [2, 8, 8]
    assert np.bincount(labels[val], minlength=3).tolist() == [0, 8, 8]
    with pytest.raises(ValueError, match="fewer than one"):
        few_shot_indices(labels, 8, 13, 4, cap=True)


@pytest.mark.parametrize("name", ["trec", "snli"])
def test_hub_labels_map_to_ours_by_name(monkeypatch, name):
    """Without a data_dir the hub's ids are mapped through its ClassLabel names (TREC's coarse
    labels are ABBR, ENTY, DESC, ... on the hub, DESC, ENTY, ABBR, ... in LM-BFF) and SNLI's
    examples without a gold label (-1) are dropped."""
    datasets = pytest.importorskip("datasets")
    spec = GLUE[name]
    hub_names = (["ABBR", "ENTY", "DESC", "HUM", "LOC", "NUM"] if name == "trec"
                 else ["entailment", "neutral", "contradiction"])
    ids = [0, 2, 1, -1] if name == "snli" else [0, 2, 1]
    columns = {c: [f"{c} {i}" for i in range(len(ids))] for c in spec.hub_text}
    features = datasets.Features({**{c: datasets.Value("string") for c in columns},
                                  spec.hub_label: datasets.ClassLabel(names=hub_names)})
    calls = []

    def load_dataset(*args, split):
        calls.append((args, split))
        return datasets.Dataset.from_dict({**columns, spec.hub_label: ids}, features=features)

    monkeypatch.setattr(datasets, "load_dataset", load_dataset)
    texts, labels = read_glue(name, "test", None)
    assert calls == [(spec.hub, spec.hub_test)]
    assert [spec.labels[i] for i in labels] == [hub_names[i] for i in ids if i >= 0]
    assert texts[0] == [f"{spec.hub_text[0]} {i}" for i in range(3)]


@pytest.mark.parametrize("name", sorted(GLUE))
def test_label_words_are_single_tokens_in_label_order(tmp_path, name):
    task = GlueFewShot(name, tokenizer=MINILM, prompt=True)
    tokens = task.hf_tokenizer.convert_ids_to_tokens(task.word_ids)
    assert tokens == [w.lower() for w in GLUE[name].words]  # WordPiece, lower-cased
    assert len(tokens) == len(GLUE[name].labels)


def test_a_label_word_of_several_tokens_fails_naming_it_and_the_task(monkeypatch):
    monkeypatch.setitem(GLUE, "sst2", replace(GLUE["sst2"], words=("terrible", "greatishly")))
    task = GlueFewShot("sst2", tokenizer=MINILM, prompt=True)
    with pytest.raises(ValueError, match="label word 'greatishly' of task sst2"):
        task.word_ids  # noqa: B018


def _bpe_tokenizer(tmp_path):
    """A RoBERTa-style byte-level BPE tokenizer trained here (no RoBERTa files offline)."""
    tokenizers = pytest.importorskip("tokenizers")
    from transformers import RobertaTokenizerFast

    bpe = tokenizers.ByteLevelBPETokenizer()
    bpe.train_from_iterator(["It was great. It was terrible. A fine film ? , :"] * 20,
                            vocab_size=300, min_frequency=1,
                            special_tokens=["<s>", "<pad>", "</s>", "<unk>", "<mask>"])
    bpe.save_model(str(tmp_path))
    return RobertaTokenizerFast(str(tmp_path / "vocab.json"), str(tmp_path / "merges.txt"))


def test_bpe_label_words_take_a_leading_space(tmp_path):
    task = GlueFewShot("sst2", prompt=True)
    task.hf_tokenizer = _bpe_tokenizer(tmp_path)
    assert task.hf_tokenizer.convert_ids_to_tokens(task.word_ids) == ["Ġterrible", "Ġgreat"]
    batch = task.encode([["A fine film."]])
    tokens = task.hf_tokenizer.convert_ids_to_tokens(batch["input_ids"][0])
    assert tokens[-5:] == ["ĠIt", "Ġwas", "<mask>", ".", "</s>"]  # " It was great."


@pytest.mark.parametrize("name", sorted(GLUE))
def test_every_example_has_one_mask_and_a_long_sentence_keeps_it(name):
    task = GlueFewShot(name, tokenizer=MINILM, prompt=True, max_length=24)
    tok = task.hf_tokenizer
    pair = len(GLUE[name].text) == 2
    columns = [["A short one.", "word " * 300, "It says [MASK] twice [MASK]."]]
    if pair:
        columns.append(["Another one.", "other " * 200, "Short."])
    ids = task.encode(columns)["input_ids"]
    assert ((ids == tok.mask_token_id).sum(1) == 1).all()
    assert ids.shape == (3, 24)  # the long sentence cut to max_length, the template kept
    long = tok.convert_ids_to_tokens(ids[1])
    assert long[0] == "[CLS]" and long[-1] == "[SEP]"
    if name in ("sst2", "sst5"):  # <sentence> It was [MASK] .
        assert long[-5:-1] == ["it", "was", "[MASK]", "."]
    elif name == "trec":  # [MASK] : <sentence>
        assert long[:3] == ["[CLS]", "[MASK]", ":"]
    else:  # <sentence1> ? [MASK] , <sentence2>: both sentences cut, the longer one first
        at = long.index("[MASK]")
        assert long[at - 1:at + 2] == ["?", "[MASK]", ","]
        assert long[1:at - 1] == ["word"] * (at - 2) and set(long[at + 2:-1]) == {"other"}
        assert abs((at - 2) - (len(long) - at - 3)) <= 1
    short = tok.convert_ids_to_tokens(ids[0][ids[0] != tok.pad_token_id])
    if name in ("rte", "mnli", "snli"):  # LM-BFF's sent-_0 and +sentl_1
        assert short == ["[CLS]", "a", "short", "one", "?", "[MASK]", ",", "another", "one",
                         ".", "[SEP]"]


def _tiny_mlm():
    from tensam.models import HFModel

    torch.manual_seed(0)
    return HFModel(config=TINY_BERT, head="masked_lm",
                   adapter=functools.partial(FLoRALinear, r=4, alpha=8),
                   target_modules=["query", "value"])


def test_prompt_logits_are_the_mlm_logits_at_the_mask_over_the_label_words(tmp_path):
    _sst2(tmp_path)
    task = _task("sst2", tmp_path, prompt=True, max_length=32)
    model = _tiny_mlm().eval()
    batch = next(task.split_batches("val"))
    with torch.no_grad():
        logits = task.logits(model, batch)
        full = model.network(input_ids=batch["input_ids"],
                             attention_mask=batch["attention_mask"]).logits
    tok = task.hf_tokenizer
    words = tok.convert_tokens_to_ids(["terrible", "great"])
    rows, cols = (batch["input_ids"] == tok.mask_token_id).nonzero(as_tuple=True)
    assert rows.tolist() == list(range(len(batch["labels"])))
    want = full[rows, cols][:, words]
    assert logits.shape == (8, 2) and torch.allclose(logits, want)
    loss = torch.nn.functional.cross_entropy(want, batch["labels"])
    with torch.no_grad():
        assert torch.allclose(task.loss(model, batch), loss)
    with torch.no_grad():
        metrics = task.evaluate(model)
    assert set(metrics) == {"accuracy", "loss", "val_accuracy", "val_loss"}
    assert task.info()["label_words"] == ["terrible", "great"]


def test_prompt_run_of_a_tiny_bert_mlm_with_flora_end_to_end(tmp_path):
    _sst2(tmp_path / "glue")
    with initialize_config_dir(config_dir=CONFIG_DIR, version_base="1.3"):
        cfg = compose("train", overrides=[
            "experiment=glue_minilm", "model=bert_tiny_mlm", "task.prompt=true",
            f"task.tokenizer={MINILM}", "optimizer=das", "steps=4", "log_every=2",
            "eval_every=2", "task.k=8", "task.max_test=24", "task.batch_size=4",
            "logger=disabled", "threads=1", f"task.data_dir={tmp_path / 'glue'}"])
    summary = run(cfg, tmp_path / "run")
    assert summary["status"] == "finished" and summary["steps"] == 4
    assert 0 <= summary["accuracy"] <= 1 and 0 <= summary["val_accuracy"] <= 1
    assert summary["data"]["prompt"] is True and summary["data"]["n_test"] == 24
    q = [k for k in summary if k.startswith("norm/network.") and k.endswith("/Q")]
    assert len(q) == 4  # FLoRA on query/value of the 2 layers, the MLM head frozen


TASK_CONFIGS = sorted(p.stem for p in (Path(CONFIG_DIR) / "task").glob("glue_*.yaml"))


@pytest.mark.parametrize("config", TASK_CONFIGS)
def test_every_glue_task_config_composes_and_builds(config, monkeypatch):
    monkeypatch.delenv("TENSAM_GLUE", raising=False)
    with initialize_config_dir(config_dir=CONFIG_DIR, version_base="1.3"):
        for model, prompt in (("minilm", "false"), ("roberta_large_prompt", "true")):
            cfg = compose("train", overrides=[f"task={config}", f"model={model}",
                                              f"task.prompt={prompt}"])
            task_cfg = OmegaConf.to_container(cfg.task, resolve=True)
            task = build_task(task_cfg, OmegaConf.to_container(cfg.model)["pretrained"])
            assert task.name == config.removeprefix("glue_") and task.k == 512
            assert task.prompt is (prompt == "true") and task.data_dir is None
            assert task.tokenizer == OmegaConf.to_container(cfg.model)["pretrained"]
            assert task.test_seed == 42  # MeZO's k-shot-1k-test
    assert {"glue_sst2", "glue_sst5", "glue_rte", "glue_mnli", "glue_snli",
            "glue_trec"} <= set(TASK_CONFIGS)
    assert OmegaConf.load(Path(CONFIG_DIR) / "task" / f"{config}.yaml").prompt is False


# --- without TENSAM_GLUE and without the hub: one line, before datasets' retries --------------

def test_a_run_without_tensam_glue_or_hub_fails_in_one_line_naming_them(tmp_path, monkeypatch):
    from tensam.config import ConfigError

    NoHub.offline(monkeypatch, "TENSAM_GLUE")
    with initialize_config_dir(config_dir=CONFIG_DIR, version_base="1.3"):
        cfg = compose("train", overrides=["experiment=glue_minilm", "task=glue_sst2", "steps=2",
                                          "logger=disabled", "threads=1"])
    with pytest.raises(ConfigError) as err:
        run(cfg, tmp_path / "run")
    message = str(err.value)
    assert "\n" not in message and message.startswith("task.data_dir is unset (TENSAM_GLUE)")
    assert "(ConnectionError: [Errno -2] Name or service not known)" in message
    assert "set TENSAM_GLUE to a folder holding SST-2/train.tsv and SST-2/dev.tsv (GLUE's TSVs" \
        in message and "HF_DATASETS_OFFLINE=1" in message
    assert not (tmp_path / "run" / "metrics.jsonl").exists()
    with pytest.raises(ValueError, match=r"holding sst-5/train.csv and sst-5/test.csv \(LM-BFF"):
        GlueFewShot("sst5").steps_per_epoch  # noqa: B018
    # HF_DATASETS_OFFLINE=1: datasets reads its cache; the hub is not asked
    monkeypatch.setenv("HF_DATASETS_OFFLINE", "1")
    calls = NoHub.calls
    assert GlueFewShot("sst2").steps_per_epoch == 2 * 16 // 16 and NoHub.calls == calls


def test_the_cli_reports_an_unreachable_hub_in_one_line(tmp_path):
    """train.py on a machine whose hub refuses at once (a closed local port; no network)."""
    import subprocess
    import sys

    proxies = ("http_proxy", "https_proxy", "all_proxy")
    env = {k: v for k, v in os.environ.items() if k.lower() not in proxies
           and k not in ("TENSAM_GLUE", "HF_HUB_OFFLINE", "HF_DATASETS_OFFLINE")}
    env["HF_ENDPOINT"] = "http://127.0.0.1:9"
    root = Path(__file__).resolve().parents[1]
    out = subprocess.run([sys.executable, str(root / "train.py"), "experiment=glue_minilm",
                          "logger=disabled", f"hydra.run.dir={tmp_path}"],
                         capture_output=True, text=True, env=env, timeout=300)
    assert out.returncode == 2, out.stderr
    lines = [ln for ln in out.stderr.splitlines() if ln.strip()]
    assert len(lines) == 1, out.stderr
    assert lines[0].startswith("tensam: configuration error: task.data_dir is unset "
                               "(TENSAM_GLUE) and the Hugging Face hub cannot be reached")


# --- the README's worked example: a new adapter is one class and one YAML file --------------

def test_the_readmes_worked_example_adds_an_adapter_with_one_class_and_one_yaml(tmp_path):
    """The README's DiagLoRA (outside the repository) trains through train.py on MiniLM with
    DAS: one core group of K = 3 per adapted query/value, dW = (alpha / r) A diag(s) B^T."""
    _sst2(tmp_path / "glue")
    command = readme_example(tmp_path, "diag_lora", "model/adapter/diag_lora.yaml",
                             "model/adapter=diag_lora")
    out = train_cli(*command, "steps=4", "task.k=4", "task.batch_size=4", "task.max_test=16",
                    "eval_every=4", "logger=disabled", "threads=1",
                    f"task.data_dir={tmp_path / 'glue'}", f"hydra.run.dir={tmp_path / 'run'}",
                    cwd=tmp_path,
                    env={"PYTHONPATH": str(tmp_path)})
    assert out.returncode == 0, out.stderr[-3000:]
    summary = json.loads((tmp_path / "run" / "summary.json").read_text())
    adapter = summary["config"]["model"]["adapter"]
    assert adapter == {"_target_": "diag_lora.DiagLoRA", "_partial_": True, "r": 4,
                       "alpha": 16.0, "dropout": 0.0}
    assert summary["settings"]["model.adapter.r"] == 4
    # 12 adapted 384 x 384 matrices: A, B (384 x 4) and s (4); the new head 384 x 2 + 2
    assert summary["model_info"]["adapter_parameters"] == 12 * (2 * 384 * 4 + 4)
    assert len([k for k in summary if k.startswith("norm/network.") and k.endswith("/Q")]) == 12

    sys.path.insert(0, str(tmp_path))
    try:
        from diag_lora import DiagLoRA
    finally:
        sys.path.remove(str(tmp_path))
    layer = DiagLoRA(torch.nn.Linear(6, 5), r=3, alpha=6.0)
    with torch.no_grad():
        layer.s.normal_()
    A, s, B = layer.cores()
    x = torch.randn(7, 6)
    torch.testing.assert_close(layer.delta_weight(), 2.0 * A @ torch.diag(s) @ B.T)
    torch.testing.assert_close(layer(x), layer.merged()(x))
