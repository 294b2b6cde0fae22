"""The label-cosine readout (tensam.models.readout): logits are T * cos(mean-pooled sentence
embedding, frozen embedding of each label description); only the adapters train."""

import functools

import pytest
import torch
from torch.nn import functional as F

pytest.importorskip("transformers")

from test_glue import MINILM, TINY_BERT, _sst2  # noqa: E402

from tensam.adapters import FLoRALinear  # noqa: E402
from tensam.errors import ConfigError  # noqa: E402
from tensam.models import HFModel  # noqa: E402
from tensam.models.readout import mean_pool  # noqa: E402

DESCRIPTIONS = ("It was terrible.", "It was great.")


def _model(**kw):
    torch.manual_seed(0)
    return HFModel(config=TINY_BERT, head="label_cosine", tokenizer=MINILM,
                   label_descriptions=DESCRIPTIONS, temperature=20.0,
                   adapter=functools.partial(FLoRALinear, r=4, alpha=8),
                   target_modules=["query", "value"], **kw)


def _embed(network, tokenizer, texts):
    enc = tokenizer(list(texts), padding=True, return_tensors="pt")
    with torch.no_grad():
        hidden = network(**enc).last_hidden_state
    return F.normalize(mean_pool(hidden, enc["attention_mask"]), dim=-1)


def test_logits_are_temperature_times_cosines_to_the_frozen_descriptions():
    from transformers import AutoTokenizer

    from tensam.models.hf import resolve_pretrained

    tok = AutoTokenizer.from_pretrained(resolve_pretrained(MINILM))
    model = _model().eval()
    # FLoRA's reference init has G = 0: the adapted encoder is the pretrained one at the start,
    # so the stored label embeddings are the encoder's own
    labels = _embed(model.network, tok, DESCRIPTIONS)
    torch.testing.assert_close(model.readout.labels, labels)
    texts = ["a fine film .", "a dull film , really dull ."]
    enc = tok(texts, padding=True, return_tensors="pt")
    with torch.no_grad():
        logits = model(dict(enc))
    torch.testing.assert_close(logits, 20.0 * _embed(model.network, tok, texts) @ labels.T)
    assert logits.abs().max() <= 20.0 + 1e-4
    # the padding of a shorter sentence does not change its embedding
    alone = tok(texts[:1], return_tensors="pt")
    with torch.no_grad():
        torch.testing.assert_close(model(dict(alone))[0], logits[0], rtol=1e-5, atol=1e-5)


def test_only_the_adapter_cores_train_and_the_descriptions_stay_frozen():
    model = _model()
    trainable = [n for n, p in model.named_parameters() if p.requires_grad]
    assert trainable and all(n.split(".")[-1] in ("A", "G", "B") for n in trainable)
    assert "readout.labels" in model.state_dict()
    frozen = model.readout.labels.clone()
    opt = torch.optim.SGD([p for p in model.parameters() if p.requires_grad], lr=0.5)
    batch = {"input_ids": torch.tensor([[101, 2307, 102]]),
             "attention_mask": torch.ones(1, 3, dtype=torch.long)}
    for _ in range(2):
        opt.zero_grad()
        F.cross_entropy(model(batch), torch.tensor([1])).backward()
        opt.step()
    assert torch.equal(model.readout.labels, frozen)
    assert any(p.abs().sum() > 0 for n, p in model.named_parameters() if n.endswith(".G"))


@pytest.mark.parametrize("kw, match", [
    ({"label_descriptions": ("only one",)}, "label_descriptions=.*one text per class \\(2\\)"),
    ({"label_descriptions": "It was great."}, "label_descriptions=.*one text per class"),
    ({"temperature": 0.0}, "temperature=0.0 must be a number > 0"),
    ({"temperature": None}, "temperature=None must be a number > 0"),
    ({"tokenizer": None}, "model.tokenizer is required"),
])
def test_a_label_cosine_head_without_what_it_needs_is_refused(kw, match):
    args = {"config": TINY_BERT, "head": "label_cosine", "tokenizer": MINILM,
            "label_descriptions": DESCRIPTIONS, "temperature": 20.0, **kw}
    with pytest.raises(ConfigError, match=match):
        HFModel(**args)


def test_readout_keys_are_refused_with_another_head():
    with pytest.raises(ConfigError, match="model.temperature belongs to head=label_cosine"):
        HFModel(config=TINY_BERT, temperature=20.0)


def _cosine_cfg(tmp_path, *overrides):
    from hydra import compose, initialize_config_dir

    from tensam.train import CONFIG_DIR

    _sst2(tmp_path / "glue")
    with initialize_config_dir(config_dir=CONFIG_DIR, version_base="1.3"):
        return compose("train", overrides=[
            "experiment=glue_minilm", "model=minilm_cosine", "~model.pretrained",
            f"+model.config={TINY_BERT}".replace("'", ""), f"model.tokenizer={MINILM}",
            f"task.tokenizer={MINILM}", "model.label_descriptions=[It was terrible.,It was great.]",
            "task.k=8", "task.max_test=24", "task.batch_size=4", "logger=disabled",
            "threads=1", f"task.data_dir={tmp_path / 'glue'}", *overrides])


def test_a_label_cosine_run_through_train_py(tmp_path):
    from tensam.train import run

    cfg = _cosine_cfg(tmp_path, "optimizer=das", "steps=4", "log_every=2", "eval_every=2")
    summary = run(cfg, tmp_path / "run")
    assert summary["status"] == "finished" and 0 <= summary["accuracy"] <= 1
    q = [k for k in summary if k.startswith("norm/network.") and k.endswith("/Q")]
    assert len(q) == 4  # FLoRA on query/value of the 2 layers: the only cores


def test_test_at_best_reports_what_scoring_test_at_every_evaluation_reports(tmp_path,
                                                                             monkeypatch):
    """test_at_best scores validation only during training and the test split once, on the
    kept weights of the best evaluation: the summary equals that of scoring every split at
    every evaluation, also when the run is killed after a checkpoint and resumed."""
    import json

    from test_training import _killed_after_checkpoint

    from tensam.train import run

    common = ("optimizer=adam", "optimizer.base.lr=0.05", "steps=12", "eval_every=2",
              "checkpoint_every=6")
    every = run(_cosine_cfg(tmp_path, *common), tmp_path / "every")
    once = _cosine_cfg(tmp_path, *common, "test_at_best=true")
    at_best = run(once, tmp_path / "at_best")
    assert 2 <= every["best/step"] < 12  # the best evaluation is not the final one
    for key in ("best/accuracy", "best/loss", "best/val_accuracy", "best/step", "accuracy",
                "val_loss"):
        assert at_best[key] == every[key], key
    records = [json.loads(line) for line in
               (tmp_path / "at_best" / "metrics.jsonl").read_text().splitlines()]
    during = [r for r in records if "eval/val_accuracy" in r][:-1]  # the last: the final one
    assert len(during) == 6 and not any("eval/accuracy" in r for r in during)
    _killed_after_checkpoint(monkeypatch, once, tmp_path / "resumed", 6)
    resumed = run(once, tmp_path / "resumed")
    assert {k: v for k, v in resumed.items() if k.startswith("best/")} == \
        {k: v for k, v in at_best.items() if k.startswith("best/")}


def test_test_at_best_refuses_an_objective_scored_on_the_test_split(tmp_path):
    from tensam.errors import ConfigError
    from tensam.train import run

    cfg = _cosine_cfg(tmp_path, "steps=2", "eval_every=1", "test_at_best=true",
                      "objective=accuracy")
    with pytest.raises(ConfigError, match=r"test_at_best=true scores only \['val_accuracy', "
                       r"'val_loss'\] during training, not objective='accuracy'"):
        run(cfg, tmp_path / "run")
