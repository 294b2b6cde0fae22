"""End to end through ``tensam.train.run``: files, resume under a fingerprint, divergence,
errors, and the loop's seams (loaders, schedulers, BatchNorm under SAM, accumulation, clipping).
"""

import json
import math
import re

import pytest
import torch
from hydra import compose, initialize_config_dir
from torch import nn
from toys import covid, make_optimizer

from tensam.config import ConfigError
from tensam.logging import RunLogger
from tensam.optim import SAM
from tensam.schedulers import build_scheduler
from tensam.tasks.base import Task
from tensam.train import CONFIG_DIR, run
from tensam.training import (
    CheckpointError,
    DivergenceError,
    LoopConfig,
    Output,
    Parts,
    frozen_batchnorm,
    make_closure,
    read_checkpoint,
    restore,
    train,
)


def _cfg(*overrides):
    with initialize_config_dir(config_dir=CONFIG_DIR, version_base="1.3"):
        return compose("train", overrides=["logger=disabled", "threads=1", *overrides])


def _records(run_dir):
    return [json.loads(line) for line in (run_dir / "metrics.jsonl").read_text().splitlines()]


def _strict_json(path):
    def refuse(name):
        raise AssertionError(f"{path.name} holds a bare {name}")
    return json.loads(path.read_text(), parse_constant=refuse)


def test_completion_run_beats_the_mean_predictor_and_writes_its_files(tmp_path):
    steps = 1500
    summary = run(_cfg(f"steps={steps}", "log_every=500", "optimizer.base.lr=0.01"), tmp_path)
    task, _ = covid(protocol="heldout", split=0)
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
    written = _strict_json(tmp_path / "summary.json")
    assert written == json.loads(json.dumps(summary))
    assert written["status"] == "finished" and written["steps"] == steps
    assert written["config"]["optimizer"]["base"]["_target_"] == "torch.optim.Adam"
    assert set(written["config"]["optimizer"]) == {"base"}  # the base alone


def _state(run_dir):
    return torch.load(run_dir / "checkpoint.pt", weights_only=False)


class KilledError(Exception):
    pass


def _killed_after_checkpoint(monkeypatch, cfg, run_dir, step):
    """Run ``cfg`` into ``run_dir`` and stop it right after its checkpoint at ``step``, as a
    kill would: the checkpoint and the log so far stay, no summary is written."""
    from tensam import training

    original = training.save_checkpoint

    def save_then_die(path, model, optimizer, state, *args, **kwargs):
        original(path, model, optimizer, state, *args, **kwargs)
        if path.name == "checkpoint.pt" and state.step == step:
            raise KilledError

    with monkeypatch.context() as m:
        m.setattr(training, "save_checkpoint", save_then_die)
        with pytest.raises(KilledError):
            run(cfg, run_dir)
    assert not (run_dir / "summary.json").exists()


@pytest.mark.parametrize("optimizer", [
    ["optimizer=adam"],
    ["optimizer=das", "optimizer.alpha=0.05", "optimizer.alpha_schedule=linear"],
    ["optimizer=das", "optimizer.alpha=0.05", "optimizer.flatten=true"],
    ["optimizer=sam", "optimizer.rho=0.05", "scheduler=cosine"],
])
def test_interrupted_and_resumed_run_equals_uninterrupted_run(tmp_path, monkeypatch, optimizer):
    cfg = _cfg("checkpoint_every=20", "log_every=5", "optimizer.base.lr=0.01", "steps=40",
               *optimizer)
    whole, split = tmp_path / "whole", tmp_path / "split"
    expected = run(cfg, whole)
    _killed_after_checkpoint(monkeypatch, cfg, split, 20)
    resumed = run(cfg, split)
    a, b = _state(whole), _state(split)
    assert a["step"] == b["step"] == 40
    assert all(torch.equal(a["model"][k], b["model"][k]) for k in a["model"])
    assert (whole / "metrics.jsonl").read_text() == (split / "metrics.jsonl").read_text()
    timing = {"seconds", "seconds_per_step", "baselines_seconds"}
    assert {k: v for k, v in resumed.items() if k not in timing} == \
        {k: v for k, v in expected.items() if k not in timing}


def test_wall_time_adds_up_across_resumes(tmp_path, monkeypatch):
    cfg = _cfg("steps=40", "checkpoint_every=20", "log_every=0")
    _killed_after_checkpoint(monkeypatch, cfg, tmp_path, 20)
    ckpt = _state(tmp_path)
    ckpt["seconds"] = 1000.0  # as if the first session had trained for 1000 s
    torch.save(ckpt, tmp_path / "checkpoint.pt")
    summary = run(cfg, tmp_path)
    assert 1000.0 < summary["seconds"] < 1100.0


@pytest.mark.parametrize("change, keys", [
    ("seed=4", ["seed", "model.seed", "task.split"]),
    ("steps=1000", ["steps"]),
    ("optimizer.base.lr=0.02", ["optimizer.base.lr"]),
])
def test_resuming_under_other_settings_is_refused_naming_the_keys(tmp_path, change, keys):
    """Today's main continued the old model under seed=4 / steps=1000 and exited 0."""
    run(_cfg("steps=20", "checkpoint_every=10"), tmp_path)
    (tmp_path / "summary.json").unlink()  # as if killed after the last checkpoint
    with pytest.raises(CheckpointError, match="other settings") as err:
        run(_cfg("steps=20", "checkpoint_every=10", change), tmp_path)
    for key in keys:
        assert key in str(err.value)
    assert len(str(err.value).splitlines()) == 1


def test_a_finished_run_is_not_trained_again_but_other_settings_are_refused(tmp_path):
    first = run(_cfg("steps=20"), tmp_path)
    mtime = (tmp_path / "summary.json").stat().st_mtime_ns
    assert run(_cfg("steps=20"), tmp_path) == json.loads(json.dumps(first))
    assert (tmp_path / "summary.json").stat().st_mtime_ns == mtime
    with pytest.raises(CheckpointError, match=r"steps: 20 -> 30"):
        run(_cfg("steps=30"), tmp_path)
    again = run(_cfg("steps=30", "resume=never"), tmp_path)
    assert again["steps"] == 30 and [r["step"] for r in _records(tmp_path)] == [0, 30]


def test_the_core_layout_is_not_a_setting_of_the_run(tmp_path):
    """``optimizer.flatten`` lays the same arithmetic out in memory (as ``threads`` does): a run
    resumes, and a finished one is found, under the other layout; a summary written when the
    layout still counted (its stored settings hold the key) is found too."""
    first = run(_cfg("steps=10", "optimizer=das", "optimizer.flatten=true"), tmp_path)
    assert "optimizer.flatten" not in first["settings"]
    assert run(_cfg("steps=10", "optimizer=das"), tmp_path) == json.loads(json.dumps(first))
    summary = json.loads((tmp_path / "summary.json").read_text())
    summary["settings"]["optimizer.flatten"] = "auto"
    summary["fingerprint"] = "written-by-an-older-version"
    (tmp_path / "summary.json").write_text(json.dumps(summary))
    assert run(_cfg("steps=10", "optimizer=das"), tmp_path)["steps"] == 10


def test_a_refusal_of_many_keys_names_the_method_and_seed_first(tmp_path):
    """The refusal listed six keys alphabetically (model.seed, optimizer.adaptive, ...) and hid
    optimizer.method and seed behind '...'."""
    run(_cfg("steps=10", "checkpoint_every=5", "optimizer=sam"), tmp_path)
    (tmp_path / "summary.json").unlink()
    with pytest.raises(CheckpointError) as err:
        run(_cfg("steps=10", "checkpoint_every=5", "optimizer=das", "seed=3"), tmp_path)
    message = str(err.value)
    assert ("other settings (optimizer._target_: 'tensam.optim.SAM' -> 'tensam.optim.DAS'; "
            "seed: 0 -> 3; ") in message
    assert re.search(r"; \.\.\. \d+ more\)", message) and len(message.splitlines()) == 1


def _as_if_processes(monkeypatch, n):
    """Run as if torchrun had started ``n`` processes (rank 0, no real process group)."""
    from tensam import distributed

    monkeypatch.setenv("WORLD_SIZE", str(n))  # what torchrun sets
    monkeypatch.setattr(distributed, "init_from_env", lambda: (0, n))


def test_a_run_of_another_world_size_is_refused_naming_it(tmp_path, monkeypatch):
    """A one-process checkpoint resumed under torchrun --nproc_per_node=2 silently (another
    global batch), and a finished one-process summary was returned to a 2-process run."""
    cfg = _cfg("steps=20", "checkpoint_every=10")
    first = run(cfg, tmp_path)
    with monkeypatch.context() as m:
        _as_if_processes(m, 2)
        with pytest.raises(CheckpointError, match=r"summary\.json .*world_size: 1 -> 2"):
            run(cfg, tmp_path)
        (tmp_path / "summary.json").unlink()  # as if killed after the last checkpoint
        with pytest.raises(CheckpointError, match=r"checkpoint\.pt .*world_size: 1 -> 2"):
            run(cfg, tmp_path)
        two = run(cfg, tmp_path / "two")
        assert two["settings"]["world_size"] == 2 and two["fingerprint"] != first["fingerprint"]
    # and back: what two processes wrote is refused to one; one process keeps its old identity
    with pytest.raises(CheckpointError, match=r"world_size: 2 -> 1"):
        run(cfg, tmp_path / "two")
    assert "world_size" not in first["settings"]


def test_checkpoint_every_zero_does_not_load_a_checkpoint_of_another_run(tmp_path):
    run(_cfg("steps=20", "checkpoint_every=10", "seed=1"), tmp_path)
    (tmp_path / "summary.json").unlink()
    with pytest.raises(CheckpointError):
        run(_cfg("steps=20", "checkpoint_every=0", "seed=2"), tmp_path)


@pytest.mark.parametrize("content", [b"", b"PK\x03\x04 truncated"])
def test_a_damaged_checkpoint_gets_one_line_naming_the_file(tmp_path, content):
    (tmp_path / "checkpoint.pt").write_bytes(content)
    with pytest.raises(CheckpointError) as err:
        run(_cfg("steps=10", "checkpoint_every=5"), tmp_path)
    message = str(err.value)
    assert str(tmp_path / "checkpoint.pt") in message and len(message.splitlines()) == 1
    assert "resume=never" in message


def test_a_failed_checkpoint_write_keeps_the_old_one_and_leaves_no_temporary_file(
        tmp_path, monkeypatch):
    """A write that failed (a full disk) left a partial .checkpoint.pt.tmp behind."""
    import resource
    import signal

    from tensam import training

    _, model = covid(rank=(4, 3, 4))
    opt = make_optimizer({"method": "none", "base": {"name": "sgd", "lr": 0.1}}, model)
    path = tmp_path / "checkpoint.pt"
    training.save_checkpoint(path, model, opt, training.State(step=10))
    before = path.read_bytes()

    def left():
        assert path.read_bytes() == before and read_checkpoint(path)["step"] == 10
        assert sorted(p.name for p in tmp_path.iterdir()) == ["checkpoint.pt"]

    # a full disk: past RLIMIT_FSIZE a write fails with EFBIG (SIGXFSZ ignored)
    soft, hard = resource.getrlimit(resource.RLIMIT_FSIZE)
    handler = signal.signal(signal.SIGXFSZ, signal.SIG_IGN)
    resource.setrlimit(resource.RLIMIT_FSIZE, (100, hard))
    try:
        with pytest.raises(OSError):
            training.save_checkpoint(path, model, opt, training.State(step=20))
    finally:
        resource.setrlimit(resource.RLIMIT_FSIZE, (soft, hard))
        signal.signal(signal.SIGXFSZ, handler)
    left()

    def failing_save(obj, f, *args, **kwargs):
        f.write(b"partial")
        raise RuntimeError("torch.save failed")

    monkeypatch.setattr(torch, "save", failing_save)
    with pytest.raises(RuntimeError, match="torch.save failed"):
        training.save_checkpoint(path, model, opt, training.State(step=20))
    left()


def test_resume_must_needs_a_checkpoint(tmp_path):
    with pytest.raises(CheckpointError, match="resume=must"):
        run(_cfg("steps=10", "resume=must"), tmp_path)


def test_divergence_stops_the_run_with_a_valid_summary(tmp_path):
    """Today's main trained on with NaN and wrote a summary with bare NaN, exiting 0."""
    with pytest.raises(DivergenceError, match=r"at step \d+") as err:
        run(_cfg("optimizer/base=sgd", "optimizer.base.lr=0.03", "steps=200", "log_every=50",
                 "checkpoint_every=2"), tmp_path)
    summary = _strict_json(tmp_path / "summary.json")
    assert summary["status"] == "diverged" and summary["diverged_at_step"] == err.value.step
    assert 2 < err.value.step < 30 and summary["r2_heldout"] is None
    records = [json.loads(line, parse_constant=lambda c: pytest.fail(c))
               for line in (tmp_path / "metrics.jsonl").read_text().splitlines()]
    assert records[-1]["diverged"] is True
    ckpt = read_checkpoint(tmp_path / "checkpoint.pt")  # the last finite state, never NaN
    assert all(torch.isfinite(v).all() for v in ckpt["model"].values())


def test_every_tensam_exception_survives_pickle():
    """Exceptions cross process boundaries (the joblib launcher's workers): DivergenceError's
    two-argument __init__ did not unpickle, and the whole grid died with BrokenProcessPool."""
    import pickle
    import re
    from pathlib import Path

    import tensam
    from tensam.reports import MixedSettingsError

    errors = [ConfigError("optimizer.alpha=nan must be finite"),
              CheckpointError("checkpoint.pt was written by a run with other settings"),
              MixedSettingsError("the DAS cell mixes runs of different settings (steps: ...)"),
              DivergenceError(7, float("nan"))]
    for err in errors:
        back = pickle.loads(pickle.dumps(err))
        assert type(back) is type(err) and str(back) == str(err)
        assert set(vars(back)) == set(vars(err))
        assert {k: v for k, v in vars(back).items() if k != "loss"} == \
            {k: v for k, v in vars(err).items() if k != "loss"}  # NaN != NaN
    back = pickle.loads(pickle.dumps(errors[-1]))
    assert back.step == 7 and math.isnan(back.loss)
    # every exception class tensam defines is among those checked here
    source = "\n".join(p.read_text() for p in Path(tensam.__file__).parent.rglob("*.py"))
    defined = set(re.findall(r"^\s*class (\w+)\([\w.]*(?:Error|Exception)\)", source, re.M))
    assert defined == {type(e).__name__ for e in errors}


@pytest.mark.parametrize("overrides, message", [
    (["optimizer=sam", "optimizer._target_=tensam.optim.Lion"],
     r"optimizer._target_='tensam.optim.Lion' cannot be imported"),
    (["optimizer=sam", "optimizer.rho=-0.1"], r"rho must be > 0, got -0\.1"),
    (["model.rank=[8,6,8,2]"], r"model\.rank=\[8, 6, 8, 2\] has 4 entries but the tensor has "
     r"order 3"),
    (["model.rank=0"], r"model\.rank=0 is not of type Sequence"),
    (["optimizer.base._target_=torch.optim.Rprop"],
     r"'betas' has no default in the signature of torch.optim.Rprop"),
    (["optimizer=das", "optimizer.normalization=batch"], r"normalization='batch' is not one of"),
    (["optimizer=das", "optimizer.alpha=abc"], r"optimizer.alpha='abc' is not of type float"),
    (["optimizer.base.lr=abc"], r"optimizer.base.lr='abc' is not of type"),
    (["+optimizer.gamma=1"], r"optimizer.gamma is not read: optimizer=none"),
    (["optimizer=das", "+optimizer.gamma=1"], r"optimizer.gamma is not an argument of "
     r"tensam.optim.DAS"),
    (["steps=abc"], r"steps='abc' must be an integer"),
    (["steps=-1"], r"steps=-1 must be >= 0"),
    (["checkpoint_every=-5"], r"checkpoint_every=-5 must be >= 0"),
    (["log_every=-1"], r"log_every=-1 must be >= 0"),
    (["threads=-2"], r"threads=-2 must be >= 1"),
    (["objective=foo"], r"objective='foo' is not a metric"),
    (["resume=maybe"], r"resume='maybe' is not one of"),
    (["precision=fp16"], r"precision='fp16' is not one of"),
    (["scheduler=step", "scheduler.warmup_steps=50", "steps=10"], r"scheduler.warmup_steps=50"),
    # non-finite hyperparameters trained and then "diverged" (alpha, rho=inf, lr=inf, eta) or
    # trained silently (DAS's eps=nan); each is refused before any work, naming the key
    (["optimizer=das", "optimizer.alpha=nan"], r"^optimizer\.alpha=nan must be finite"),
    (["optimizer=das", "optimizer.alpha=inf"], r"^optimizer\.alpha=inf must be finite"),
    (["optimizer=das", "optimizer.eps=nan"], r"^optimizer\.eps=nan must be finite"),
    (["optimizer=obar", "optimizer.alpha=-inf"], r"^optimizer\.alpha=-inf must be finite"),
    (["optimizer=sam", "optimizer.rho=inf"], r"^optimizer\.rho=inf must be finite"),
    (["optimizer=asam", "optimizer.eta=nan"], r"^optimizer\.eta=nan must be finite"),
    (["optimizer=nusam", "optimizer.rho=nan"], r"^optimizer\.rho=nan must be finite"),
    (["optimizer.base.lr=inf"], r"^optimizer\.base\.lr=inf must be finite"),
    (["optimizer.base.weight_decay=nan"], r"^optimizer\.base\.weight_decay=nan must be finite"),
    (["grad_clip=nan"], r"^grad_clip=nan must be a finite number > 0"),
])
def test_bad_configs_raise_before_anything_is_written(tmp_path, overrides, message):
    with pytest.raises(ConfigError, match=message):
        run(_cfg("steps=5", *overrides), tmp_path / "run")
    assert not (tmp_path / "run").exists()


@pytest.mark.parametrize("device, message", [
    ("cuda", r"^device='cuda' but torch sees no CUDA GPU .*use device=auto or device=cpu$"),
    ("cuda:1", r"^device='cuda:1' but torch sees no CUDA GPU"),
])
def test_a_cuda_device_without_a_gpu_is_a_configuration_error(tmp_path, monkeypatch, device,
                                                              message):
    """device=cuda on a machine without a GPU crashed inside torch ("Found no NVIDIA driver on
    your system") with a traceback, after the run directory was set up."""
    monkeypatch.setattr(torch.cuda, "is_available", lambda: False)
    with pytest.raises(ConfigError, match=message) as err:
        run(_cfg("steps=5", f"device={device}"), tmp_path / "run")
    assert len(str(err.value).splitlines()) == 1 and not (tmp_path / "run").exists()
    monkeypatch.setattr(torch.cuda, "is_available", lambda: True)
    monkeypatch.setattr(torch.cuda, "device_count", lambda: 1)
    with pytest.raises(ConfigError, match=r"^device='cuda:3' but torch sees 1 CUDA GPU"):
        run(_cfg("steps=5", "device=cuda:3"), tmp_path / "run")


def test_a_runtime_value_error_is_not_called_a_configuration_error(tmp_path, monkeypatch):
    from tensam.tasks import TuckerCompletion

    calls = []

    def failing_loss(self, model, batch=None):
        calls.append(1)
        if len(calls) > 3:
            raise ValueError("boom inside training")
        return ((model() - self.target).square() * self.weight).sum()

    monkeypatch.setattr(TuckerCompletion, "loss", failing_loss)
    with pytest.raises(ValueError, match="boom") as err:
        run(_cfg("steps=10"), tmp_path)
    assert not isinstance(err.value, ConfigError)


# -- loop seams -------------------------------------------------------------------------------

def test_minibatch_task_trains_with_loaders_epochs_and_keeps_the_best(tmp_path):
    summary = run(_cfg("experiment=blobs", "epochs=4", "checkpoint_every=0"), tmp_path)
    assert summary["steps"] == 4 * 16 and summary["accuracy"] > 0.7
    evals = [r for r in _records(tmp_path) if "eval/accuracy" in r]
    assert len(evals) == 5  # every epoch, and the final evaluation
    best = max(r["eval/accuracy"] for r in evals[:-1])
    assert summary["best/accuracy"] == best
    ckpt = read_checkpoint(tmp_path / "best.pt")
    assert ckpt["best"] == best and ckpt["step"] == summary["best/step"]


def test_minibatch_resume_sees_the_batches_of_an_uninterrupted_run(tmp_path, monkeypatch):
    cfg = _cfg("experiment=blobs", "epochs=3", "checkpoint_every=24", "optimizer=sam")
    whole = run(cfg, tmp_path / "whole")
    _killed_after_checkpoint(monkeypatch, cfg, tmp_path / "split", 24)  # mid-epoch 2 of 16 steps
    split = run(cfg, tmp_path / "split")
    assert split["accuracy"] == whole["accuracy"] and split["loss"] == whole["loss"]


def test_cosine_schedule_is_what_das_reads_as_eta():
    task, model = covid(rank=(4, 3, 4))
    opt = make_optimizer({"method": "das", "alpha": 0.5, "base": {"name": "sgd", "lr": 0.1}},
                          model, total_steps=10)
    sched = build_scheduler({"_target_": "tensam.schedulers.Cosine", "warmup_steps": 2,
                             "min_factor": 0.0}, opt, 10)
    lrs = []
    for _ in range(10):
        lrs.append(opt.param_groups[0]["lr"])
        assert float(opt.learning_rates()[0]) == lrs[-1]
        for alpha in (0.5, 0.25):  # the cached eta * alpha follows eta and alpha
            assert float(opt.scaled_learning_rates(alpha, torch.float32)[0]) == \
                torch.tensor(lrs[-1] * alpha, dtype=torch.float64).float().item()
        opt.step(make_closure(task, model, opt, [None], LoopConfig(1)))
        sched.step()
    assert lrs[:2] == pytest.approx([0.05, 0.1])  # linear warm-up
    assert lrs[2:] == pytest.approx([0.1 * 0.5 * (1 + math.cos(math.pi * t / 8))
                                     for t in range(8)])


@pytest.mark.parametrize("name, expect", [
    ("step", [1, 1, 1, 1, 1, 0.1, 0.1, 0.1, 0.01, 0.01]),
    ("linear", [1 - t / 10 for t in range(10)]),
])
def test_schedules_by_hand(name, expect):
    p = nn.Parameter(torch.zeros(1))
    opt = torch.optim.SGD([p], lr=1.0)
    sched = build_scheduler({"_target_": f"tensam.schedulers.{name.title()}"}, opt, 10)
    got = []
    for _ in range(10):
        got.append(opt.param_groups[0]["lr"])
        opt.step()
        sched.step()
    assert got == pytest.approx(expect)


def test_onecycle_rises_then_decays():
    p = nn.Parameter(torch.zeros(1))
    opt = torch.optim.SGD([p], lr=1.0)
    sched = build_scheduler({"_target_": "tensam.schedulers.OneCycle", "pct_start": 0.3,
                             "div_factor": 25.0, "final_div_factor": 1e4}, opt, 100)
    lrs = []
    for _ in range(100):
        lrs.append(opt.param_groups[0]["lr"])
        opt.step()
        sched.step()
    assert lrs[0] == pytest.approx(1 / 25) and max(lrs) == pytest.approx(1.0)
    assert lrs.index(max(lrs)) == 30 and lrs[-1] < 1e-3


class _BNNet(nn.Module):
    def __init__(self):
        super().__init__()
        torch.manual_seed(0)
        self.lin, self.bn, self.head = nn.Linear(4, 6), nn.BatchNorm1d(6), nn.Linear(6, 1)

    def forward(self, x):
        return self.head(torch.relu(self.bn(self.lin(x))))


class _Regression:
    metrics = {}

    def loss(self, model, batch):
        x, y = batch
        return (model(x) - y).square().mean()


def test_sams_second_pass_leaves_batchnorm_statistics_alone():
    x, y = torch.randn(16, 4), torch.randn(16, 1)
    model, reference = _BNNet(), _BNNet()
    opt = SAM(torch.optim.SGD(model.parameters(), lr=0.0), rho=0.5)
    opt.step(make_closure(_Regression(), model, opt, [(x, y)], LoopConfig(1)))
    reference(x)  # one forward in train mode: what the statistics must show
    assert torch.equal(model.bn.running_mean, reference.bn.running_mean)
    assert torch.equal(model.bn.running_var, reference.bn.running_var)
    assert int(model.bn.num_batches_tracked) == 1
    with frozen_batchnorm(model):
        model(x * 3)
    assert torch.equal(model.bn.running_mean, reference.bn.running_mean)
    assert model.bn.track_running_stats


@pytest.mark.parametrize("method", ["none", "sam", "das"])
def test_gradient_accumulation_equals_the_full_batch(method):
    """Two half batches with grad_accumulation=2 give the full batch's step, for both passes."""
    torch.manual_seed(1)
    x, y = torch.randn(16, 4, dtype=torch.float64), torch.randn(16, 1, dtype=torch.float64)

    class Net(nn.Module):
        def __init__(self):
            super().__init__()
            gen = torch.Generator().manual_seed(0)
            self.a = nn.Parameter(torch.randn(4, 3, generator=gen, dtype=torch.float64))
            self.b = nn.Parameter(torch.randn(3, 1, generator=gen, dtype=torch.float64))

        def cores(self):
            return (self.a, self.b)

        def forward(self, x):
            return torch.tanh(x @ self.a) @ self.b

    own = {"none": {}, "sam": {"rho": 0.2}, "das": {"alpha": 0.5}}[method]
    cfg = {"method": method, **own, "base": {"name": "sgd", "lr": 0.1}}
    full, acc = Net(), Net()
    opt_full, opt_acc = make_optimizer(cfg, full), make_optimizer(cfg, acc)
    for _ in range(3):
        opt_full.step(make_closure(_Regression(), full, opt_full, [(x, y)], LoopConfig(1)))
        halves = [(x[:8], y[:8]), (x[8:], y[8:])]
        opt_acc.step(make_closure(_Regression(), acc, opt_acc, halves,
                                  LoopConfig(1, grad_accumulation=2)))
    for p, q in zip(full.parameters(), acc.parameters(), strict=True):
        torch.testing.assert_close(p, q, rtol=1e-12, atol=1e-14)


def test_gradient_clipping_bounds_the_update():
    model = nn.Linear(3, 1, bias=False)
    nn.init.zeros_(model.weight)

    class Task:
        metrics = {}

        def loss(self, model, batch):
            return model(torch.tensor([300.0, 400.0, 0.0])).sum()  # gradient norm 500

    opt = torch.optim.SGD(model.parameters(), lr=1.0)
    opt.step(make_closure(Task(), model, opt, [None], LoopConfig(1, grad_clip=1.0)))
    torch.testing.assert_close(model.weight.detach(), torch.tensor([[-0.6, -0.8, 0.0]]))


def test_restore_puts_back_scheduler_and_rng(tmp_path):
    task, model = covid(rank=(4, 3, 4))
    opt = make_optimizer({"method": "none", "base": {"name": "sgd", "lr": 0.1}}, model)
    sched = build_scheduler({"_target_": "tensam.schedulers.Cosine"}, opt, 20)
    loop = LoopConfig(10, log_every=0, checkpoint_every=10)
    logger = RunLogger(tmp_path, wandb={"mode": "disabled"})
    train(Parts(task, model, opt, sched), loop, Output(tmp_path, logger))
    torch.rand(3)  # move the RNG on
    _, twin = covid(rank=(4, 3, 4))
    opt2 = make_optimizer({"method": "none", "base": {"name": "sgd", "lr": 0.1}}, twin)
    sched2 = build_scheduler({"_target_": "tensam.schedulers.Cosine"}, opt2, 20)
    state = restore(read_checkpoint(tmp_path / "checkpoint.pt"), twin, opt2, sched2)
    assert state.step == 10 and sched2.last_epoch == 10
    assert opt2.param_groups[0]["lr"] == opt.param_groups[0]["lr"]
    assert all(torch.equal(a, b) for a, b in zip(model.parameters(), twin.parameters(),
                                                 strict=True))


def test_each_rank_gets_its_own_shard_and_each_epoch_a_new_order():
    from tensam.tasks.classification import EpochOrder

    orders = [EpochOrder(100, 8, seed=0, rank=rank, world=2) for rank in (0, 1)]
    shards = [order.epoch_indices(0) for order in orders]
    assert orders[0].steps_per_epoch == 100 // 16
    assert len(shards[0]) == len(shards[1]) == 6 * 8 and not set(shards[0]) & set(shards[1])
    assert orders[0].epoch_indices(1) != shards[0]  # set_epoch reshuffles
    assert orders[0].epoch_indices(1) == orders[0].epoch_indices(1)  # seeded


def _evaluate_restored(cfg, path):
    """The metrics of the model of ``cfg`` restored by hand from the checkpoint at ``path``."""
    from omegaconf import OmegaConf

    from tensam.tasks import build_model, build_task

    container = OmegaConf.to_container(cfg, resolve=True)
    task = build_task(container["task"], container["model"].get("pretrained"))
    model = build_model(container["model"], task)
    model.load_state_dict(read_checkpoint(path)["model"])
    model.eval()
    with torch.no_grad():
        return task.evaluate(model)


def test_the_summary_reports_every_metric_of_the_best_evaluation(tmp_path):
    """LM-BFF / MeZO / the HF Trainer report the scores of the checkpoint with the best
    validation objective: the summary's best/* are the metrics of the evaluation with the best
    objective (strictly better: the first of equals), i.e. of the model restored from best.pt,
    and the top-level metrics stay the final evaluation's."""
    cfg = _cfg("experiment=blobs", "epochs=4", "checkpoint_every=0", "objective=loss",
               "optimizer.base.lr=0.2")
    summary = run(cfg, tmp_path)
    evals = [r for r in _records(tmp_path) if "eval/loss" in r][:-1]  # the last: the final one
    assert [r["step"] for r in evals] == [15, 31, 47, 63]  # logged at the step before done
    first_best = min(range(len(evals)), key=lambda i: (evals[i]["eval/loss"], i))
    assert summary["best/step"] == 16 * (first_best + 1)
    assert summary["best/loss"] == evals[first_best]["eval/loss"]
    by_hand = _evaluate_restored(cfg, tmp_path / "best.pt")
    assert read_checkpoint(tmp_path / "best.pt")["step"] == summary["best/step"]
    for key in ("accuracy", "top5", "loss"):
        assert summary[f"best/{key}"] == pytest.approx(by_hand[key], rel=1e-6, abs=1e-9)
        assert summary[f"best/{key}"] == evals[first_best][f"eval/{key}"]
    assert summary["accuracy"] == _records(tmp_path)[-1]["eval/accuracy"]  # the final one


def test_best_evaluation_needs_no_best_pt_and_survives_a_resume(tmp_path, monkeypatch):
    """Without keep_best the best evaluation is still reported (best.pt is not written), and a
    run killed after a checkpoint and resumed reports the same best evaluation."""
    cfg = _cfg("experiment=blobs", "epochs=3", "checkpoint_every=24", "keep_best=false",
               "objective=loss")
    whole = run(cfg, tmp_path / "whole")
    assert not (tmp_path / "whole" / "best.pt").exists()
    assert whole["best/step"] in (16, 32, 48) and "best/accuracy" in whole
    _killed_after_checkpoint(monkeypatch, cfg, tmp_path / "split", 24)
    split = run(cfg, tmp_path / "split")
    best = {k: v for k, v in whole.items() if k.startswith("best/")}
    assert {k: v for k, v in split.items() if k.startswith("best/")} == best
    no_evals = run(_cfg("experiment=blobs", "epochs=1", "eval_every=0", "keep_best=false"),
                   tmp_path / "final")
    assert not any(k.startswith("best/") for k in no_evals)


def test_archived_run_records_carry_no_checkpoint_or_local_path_and_resume_as_finished(
        tmp_path):
    """scripts/archive_runs.py: the records a study commits; copied back into a run directory,
    train.py finds the run finished (the data location is not a setting of the run)."""
    from tensam.reports.archive import archive, without_places

    cfg = _cfg("steps=10", "checkpoint_every=5")
    first = run(cfg, tmp_path / "runs" / "a")
    assert (tmp_path / "runs" / "a" / "checkpoint.pt").exists()
    archive(tmp_path / "runs", tmp_path / "kept")
    kept = tmp_path / "kept" / "a"
    assert sorted(p.name for p in kept.iterdir()) == ["metrics.jsonl", "summary.json"]
    summary = json.loads((kept / "summary.json").read_text())
    assert str(tmp_path) not in json.dumps(summary)  # no path of this machine
    assert run(cfg, kept)["steps"] == 10 == first["steps"]
    assert sorted(p.name for p in kept.iterdir()) == ["metrics.jsonl", "summary.json"]
    data = {"task": {"data": {"root": "/home/me/cifar.tar.gz", "cache_dir": "/tmp/c",
                              "subset": 2000}}, "steps": [{"root": None}]}
    assert without_places(data) == {"task": {"data": {"root": None, "cache_dir": None,
                                                      "subset": 2000}}, "steps": [{"root": None}]}


def test_committed_run_records_are_not_git_ignored():
    """The records a study archives under results/runs/ are meant to be committed; the scratch run
    directories under the top-level runs/ are not."""
    import shutil
    import subprocess
    from pathlib import Path

    root = Path(__file__).resolve().parents[1]
    if shutil.which("git") is None or not (root / ".git").exists():
        pytest.skip("not a git checkout")

    def ignored(path):
        return subprocess.run(["git", "check-ignore", "-q", path], cwd=root).returncode == 0

    assert not ignored("results/runs/noise_cpu/sgd/seed0/summary.json")
    assert ignored("runs/vision_cpu/noise_cpu/sgd/seed0/checkpoint.pt")


class _BlowsUpAt(Task):
    """Loss w^2 until step ``at``, then w^2 * inf: the first non-finite loss is at ``at``."""

    metrics = {"loss": False}

    def __init__(self, at: int):
        self.at = at

    def batch(self, step: int) -> int:
        return step

    def loss(self, model, batch):
        return model.w.square().sum() * (float("inf") if batch >= self.at else 1.0)

    def evaluate(self, model, test: bool = True):
        return {"loss": float(model.w.square().sum())}


@pytest.mark.parametrize("at", [0, 24, 25, 37, 49])
def test_divergence_names_the_first_nonfinite_step_between_looks(tmp_path, at):
    """The loop looks at the losses every CHECK_EVERY steps (one sync), not every step; the
    step it reports is still the first one whose loss is non-finite."""
    model = torch.nn.Module()
    model.w = torch.nn.Parameter(torch.ones(3))
    parts = Parts(_BlowsUpAt(at), model, torch.optim.SGD(model.parameters(), lr=0.01))
    summary = train(parts, LoopConfig(steps=100, log_every=0), Output(tmp_path))
    assert summary["status"] == "diverged" and summary["diverged_at_step"] == at


def test_das_runs_log_their_lambda_at_log_steps_and_adam_runs_do_not(tmp_path):
    run(_cfg("optimizer=das", "steps=20", "log_every=10"), tmp_path / "das")
    logged = [r for r in _records(tmp_path / "das") if "train/loss" in r]
    assert [r["step"] for r in logged] == [0, 10]
    assert all(r["scale/lambda_absmax"] >= r["scale/lambda_absmedian"] >= 0 for r in logged)
    assert logged[0]["scale/lambda_absmax"] > 0
    run(_cfg("optimizer=adamw", "steps=20", "log_every=10"), tmp_path / "adam")
    assert not any("scale/lambda_absmax" in r for r in _records(tmp_path / "adam"))
