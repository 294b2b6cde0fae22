"""Few-shot GLUE (LM-BFF / MeZO protocol): balanced, seeded, disjoint k-shot splits, the dev set
as test (capped), tokenized batches with exact resume, and a short FLoRA run end to end."""

import os
from itertools import islice
from pathlib import Path

import numpy as np
import pytest
import torch
from hydra import compose, initialize_config_dir

pytest.importorskip("transformers")

from tensam.tasks import GlueFewShot  # noqa: E402
from tensam.tasks.glue import few_shot_indices, read_glue  # noqa: E402
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
