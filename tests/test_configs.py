"""Every config composes and builds; bad configs fail with one clear line naming the key."""

import subprocess
import sys
from pathlib import Path

import pytest
from hydra import compose, initialize_config_dir
from omegaconf import OmegaConf

from tensam.optim import build_optimizer
from tensam.tasks import build_task

ROOT = Path(__file__).resolve().parents[1]
CONFIGS = ROOT / "configs"
EXPERIMENTS = sorted(p.stem for p in (CONFIGS / "experiment").glob("*.yaml"))
OPTIMIZERS = sorted(p.stem for p in (CONFIGS / "optimizer").glob("*.yaml"))
SEARCHES = sorted(p.stem for p in (CONFIGS / "hparams_search").glob("*.yaml"))


def _compose(overrides):
    with initialize_config_dir(config_dir=str(CONFIGS), version_base="1.3"):
        return compose("train", overrides=overrides, return_hydra_config=True)


def _build(cfg):
    c = OmegaConf.to_container(cfg, resolve=False)
    # resolve everything but the hydra node (needs a running app for ${hydra:...})
    c.pop("hydra")
    resolved = OmegaConf.to_container(OmegaConf.create(c), resolve=True)
    task = build_task(resolved["task"], resolved["model"])
    model = task.build_model()
    return task, model, build_optimizer(resolved["optimizer"], model, total_steps=10)


@pytest.mark.parametrize("experiment", EXPERIMENTS)
def test_every_experiment_composes_and_builds(experiment):
    cfg = _compose([f"experiment={experiment}"])
    _build(cfg)
    assert cfg.steps > 0 and cfg.name


@pytest.mark.parametrize("optimizer", OPTIMIZERS)
def test_every_optimizer_config_builds(optimizer):
    cfg = _compose([f"optimizer={optimizer}", "experiment=table1"])
    try:
        _build(cfg)
    except ValueError as err:  # methods restricted to some models must say so clearly
        assert "optimizer" in str(err) or "K" in str(err) or "group" in str(err), err


@pytest.mark.parametrize("search", SEARCHES)
def test_every_search_composes(search):
    cfg = _compose([f"hparams_search={search}", "experiment=table1"])
    assert cfg.hydra.sweeper.params


def _cli(*overrides):
    return subprocess.run([sys.executable, str(ROOT / "train.py"), *overrides, "steps=2",
                           "logger=disabled", "hydra.run.dir=" + str(ROOT / "outputs" / "_cli")],
                          capture_output=True, text=True, cwd=ROOT, timeout=120)


@pytest.mark.parametrize("overrides, needle", [
    (["optimizer=sam", "optimizer.rho=-1"], "rho"),
    (["model.rank=[8,6,8,2]"], "model.rank"),
    (["optimizer.base.name=rmsprop"], "optimizer.base.name"),
    (["optimizer=das", "optimizer.normalization=both"], "normalization"),
    (["+optimizer.rhoo=0.1"], "rhoo"),
])
def test_bad_config_fails_with_one_clear_line(overrides, needle):
    out = _cli(*overrides)
    assert out.returncode == 2, out.stderr
    lines = [ln for ln in out.stderr.splitlines() if ln.strip()]
    assert len(lines) == 1, out.stderr
    assert lines[0].startswith("tensam: configuration error:") and needle in lines[0]


def test_unknown_optimizer_names_the_options():
    out = _cli("optimizer=adamax")
    assert out.returncode != 0
    assert "optimizer" in out.stderr and "sam" in out.stderr and "das" in out.stderr
