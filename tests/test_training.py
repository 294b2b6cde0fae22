"""End to end: a short COVID completion run, its files, checkpoint/resume, configuration errors."""

import json
import re

import pytest
import torch
from hydra import compose, initialize_config_dir

from tensam.logging import RunLogger
from tensam.optim import BASES, METHODS, build_optimizer
from tensam.tasks import build_task
from tensam.train import CONFIG_DIR, run
from tensam.training import LoopConfig, load_checkpoint, train


def _cfg(*overrides):
    with initialize_config_dir(config_dir=CONFIG_DIR, version_base="1.3"):
        return compose("train", overrides=["logger=disabled", "threads=1", *overrides])


def _records(run_dir):
    return [json.loads(line) for line in (run_dir / "metrics.jsonl").read_text().splitlines()]


def test_completion_run_beats_the_mean_predictor_and_writes_its_files(tmp_path):
    steps = 1500
    summary = run(_cfg(f"steps={steps}", "log_every=500", "optimizer.base.lr=0.01"), tmp_path)
    task = build_task({"name": "tucker_completion", "protocol": "heldout", "split": 0},
                      {"name": "tucker", "rank": [8, 6, 8]})
    observed_mean = task.target[task.mask].mean()
    mean_scores = task.scores(torch.full_like(task.target, observed_mean.item()))
    zero_scores = task.scores(torch.zeros_like(task.target))
    assert mean_scores["r2_heldout"] < 0.01
    assert summary["r2_heldout"] > 0.4
    assert summary["r2_heldout"] > max(mean_scores["r2_heldout"], zero_scores["r2_heldout"]) + 0.4
    assert summary["rmse_heldout"] < 0.8 * mean_scores["rmse_heldout"]

    records = _records(tmp_path)
    assert [r["step"] for r in records] == [0, 500, 1000, steps]
    for r in records[:3]:
        assert {"train/loss", "norm/Q", "norm/cov", "norm/Tucker/Q"} <= set(r)
    assert records[2]["train/loss"] < 0.1 * records[0]["train/loss"]
    assert records[-1]["eval/r2_heldout"] == summary["r2_heldout"]
    written = json.loads((tmp_path / "summary.json").read_text())
    assert written == json.loads(json.dumps(summary))
    assert written["steps"] == steps and written["config"]["optimizer"]["method"] == "none"


def _state(run_dir):
    return torch.load(run_dir / "checkpoint.pt", weights_only=False)


@pytest.mark.parametrize("optimizer", [
    ["optimizer=adam"],
    ["optimizer=das", "optimizer.alpha=0.05"],
    ["optimizer=sam", "optimizer.rho=0.05"],
])
def test_interrupted_and_resumed_run_equals_uninterrupted_run(tmp_path, optimizer):
    common = ["checkpoint_every=20", "log_every=5", "optimizer.base.lr=0.01", *optimizer]
    whole, split = tmp_path / "whole", tmp_path / "split"
    expected = run(_cfg("steps=40", *common), whole)
    run(_cfg("steps=20", *common), split)  # "interrupted" after the first checkpoint
    assert _state(split)["step"] == 20
    resumed = run(_cfg("steps=40", *common), split)
    a, b = _state(whole), _state(split)
    assert a["step"] == b["step"] == 40
    assert all(torch.equal(a["model"][k], b["model"][k]) for k in a["model"])
    assert (whole / "metrics.jsonl").read_text() == (split / "metrics.jsonl").read_text()
    timing = {"seconds", "seconds_per_step"}
    assert {k: v for k, v in resumed.items() if k not in timing} == \
        {k: v for k, v in expected.items() if k not in timing}


def test_resume_keeps_the_alpha_schedule_position(tmp_path):
    """A linear alpha schedule must continue from the checkpointed step, not restart at alpha_0."""
    task = build_task({"name": "tucker_completion", "protocol": "heldout", "split": 0},
                      {"name": "tucker", "rank": [4, 3, 4], "init": "uniform", "seed": 0})
    steps, opt_cfg = 40, {"method": "das", "alpha": 0.5, "alpha_schedule": "linear",
                          "base": {"name": "adam", "lr": 1e-2}}

    def fresh():
        model = task.build_model()
        return model, build_optimizer(opt_cfg, model, total_steps=steps)

    def loop(n):
        return LoopConfig(steps=n, log_every=10, checkpoint_every=steps // 2)

    def logger(run_dir, start=0):
        return RunLogger(run_dir, wandb_cfg={"mode": "disabled"}, resume_step=start)

    model, opt = fresh()
    train(task, model, opt, loop(steps), tmp_path / "a", logger(tmp_path / "a"))
    first, first_opt = fresh()
    train(task, first, first_opt, loop(steps // 2), tmp_path / "b", logger(tmp_path / "b"))
    second, second_opt = fresh()
    start = load_checkpoint(tmp_path / "b" / "checkpoint.pt", second, second_opt)
    assert start == steps // 2
    train(task, second, second_opt, loop(steps), tmp_path / "b", logger(tmp_path / "b", start),
          start_step=start)
    pairs = zip(model.parameters(), second.parameters(), strict=True)
    assert all(torch.equal(p, q) for p, q in pairs)


@pytest.mark.parametrize("overrides, message", [
    (["optimizer.method=lion"],
     re.escape(f"optimizer.method='lion' is not one of {sorted(METHODS)}")),
    (["optimizer=sam", "optimizer.rho=-0.1"], r"rho must be > 0, got -0\.1"),
    (["model.rank=[8,6,8,2]"],
     r"model\.rank=\[8, 6, 8, 2\] has 4 entries but the tensor has order 3"),
    (["optimizer.base.name=rmsprop"],
     re.escape(f"optimizer.base.name='rmsprop' is not one of {sorted(BASES)}")),
    (["optimizer=das", "optimizer.normalization=batch"], r"normalization='batch' is not one of"),
    (["+optimizer.gamma=1"], r"unknown optimizer key\(s\) \['gamma'\]"),
])
def test_bad_configs_raise_before_anything_is_written(tmp_path, overrides, message):
    with pytest.raises(ValueError, match=message):
        run(_cfg("steps=5", *overrides), tmp_path / "run")
    assert not (tmp_path / "run").exists()
