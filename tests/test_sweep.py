"""tensam's Optuna sweeper, run with ``-m`` on a tiny Hydra app (not train.py) in a temporary
directory: failed trials, restarts, exhaustive grids, study identity and direction."""

import shutil
import subprocess
import sys
from pathlib import Path

import optuna
import pytest
from hydra.core.override_parser.overrides_parser import OverridesParser
from optuna.distributions import CategoricalDistribution, FloatDistribution, IntDistribution
from optuna.trial import TrialState

import tensam
from tensam.sweep import distribution

SWEEPER = Path(tensam.__file__).parent / "configs" / "hydra" / "sweeper" / "tensam_optuna.yaml"

APP = """\
import hydra


class TwoArgumentError(Exception):  # does not unpickle: a joblib worker's result is lost
    def __init__(self, step, loss):
        super().__init__(f"loss {loss} at step {step}")


@hydra.main(version_base="1.3", config_path="conf", config_name="train")
def main(cfg):
    if cfg.x == 3:
        raise FloatingPointError("loss is nan at step 1")  # any error of a job
    if cfg.x == 7:
        raise TwoArgumentError(1, float("nan"))
    return float("nan") if cfg.x == 4 else float(cfg.x * cfg.steps)


main()
"""
TRAIN = """\
defaults:
  - _self_
  - task: completion
  - override hydra/sweeper: tensam_optuna
name: tiny
steps: 1
x: 0
logger: {group: "${hydra:runtime.choices.task}"}  # resolves only inside a running job
"""


@pytest.fixture
def app(tmp_path):
    """Runs the tiny app's sweep with the given overrides in ``tmp_path``; its output."""
    conf = tmp_path / "conf"
    (conf / "hydra" / "sweeper").mkdir(parents=True)
    (conf / "task").mkdir()
    shutil.copy(SWEEPER, conf / "hydra" / "sweeper")
    (conf / "train.yaml").write_text(TRAIN)
    # the objective's direction comes from the task: r2_heldout up, rel_error down
    (conf / "task" / "completion.yaml").write_text("_target_: tensam.tasks.TuckerCompletion\n")
    (conf / "task" / "denoise.yaml").write_text("_target_: tensam.tasks.Tucker2Denoise\n")
    (tmp_path / "app.py").write_text(APP)

    def run(*overrides, ok=True):
        out = subprocess.run([sys.executable, "app.py", "-m", *overrides], cwd=tmp_path,
                             capture_output=True, text=True, timeout=120)
        assert (out.returncode == 0) == ok, out.stdout + out.stderr
        return out.stdout + out.stderr

    run.storage = f"sqlite:///{tmp_path / 'optuna.db'}"
    return run


def studies(app) -> dict[str, optuna.Study]:
    return {s.study_name: optuna.load_study(study_name=s.study_name, storage=app.storage)
            for s in optuna.get_all_study_summaries(app.storage)}


def only_study(app) -> optuna.Study:
    (study,) = studies(app).values()
    return study


def test_distributions_of_hydra_sweeps():
    def parse(text):
        return distribution(OverridesParser.create().parse_override(text))

    assert parse("a=choice(0.001, 0.1)") == CategoricalDistribution([0.001, 0.1])
    assert parse("a=1,2") == CategoricalDistribution([1, 2])
    assert parse("a=range(1, 10, 3)") == IntDistribution(1, 7, step=3)  # stop excluded
    assert parse("a=interval(0, 1)") == FloatDistribution(0.0, 1.0)
    assert parse("a=tag(log, interval(1e-4, 1))") == FloatDistribution(1e-4, 1.0, log=True)


def test_failed_trials_are_told_and_each_grid_value_runs_once(app):
    out = app("x=choice(1, 2, 3, 4)")
    study = only_study(app)
    assert {t.params["x"]: t.state for t in study.trials} == {
        1: TrialState.COMPLETE, 2: TrialState.COMPLETE, 3: TrialState.FAIL, 4: TrialState.FAIL}
    assert "FloatingPointError: loss is nan at step 1" in out
    assert study.best_trial.params == {"x": 2}
    # a rerun asking for more trials than the grid has runs none: failed values count as done
    out = app("x=choice(1, 2, 3, 4)", "hydra.sweeper.n_trials=10",
              "hydra.sweeper.direction=maximize")
    assert "capped at the 4 combinations" in out and "4 of 4 trials done, 0 to run" in out
    assert len(only_study(app).trials) == 4


def test_restart_closes_stale_trial_reruns_it_and_tops_up(app):
    grid = "x=choice(1, 2, 5, 6)"
    app(grid, "hydra.sweeper.n_trials=2")
    # a sweep killed during its third trial leaves it RUNNING
    stale = only_study(app).ask({"x": CategoricalDistribution([1, 2, 5, 6])})
    assert stale.params == {"x": 5}

    out = app(grid)
    assert "2 of 4 trials done, 2 to run" in out
    trials = only_study(app).trials
    assert trials[stale.number].state == TrialState.FAIL
    complete = [t for t in trials if t.state == TrialState.COMPLETE]
    assert sorted(t.params["x"] for t in complete) == [1, 2, 5, 6]  # 1 and 2 not run again
    (retry,) = [t for t in complete if t.user_attrs.get("retry_of") == stale.number]
    assert retry.params == {"x": 5}


def test_sampled_search_tops_up_to_n_trials(app):
    space = "x=interval(0, 1)"
    app(space, "hydra.sweeper.n_trials=2")
    stale = only_study(app).ask({"x": FloatDistribution(0.0, 1.0)})

    out = app(space, "hydra.sweeper.n_trials=4")
    assert "2 of 4 trials done, 2 to run" in out
    study = only_study(app)
    values = [t.params["x"] for t in study.trials if t.state == TrialState.COMPLETE]
    assert len(values) == 4 and len(set(values)) == 4  # the top-up did not replay the first two
    assert stale.params["x"] in values and len(study.trials) == 5


def test_study_is_keyed_by_fixed_settings_and_direction_follows_the_task(app):
    app("x=choice(1)")
    app("x=choice(1)", "steps=2")
    app("x=choice(1)", "task=denoise")
    by_name = studies(app)
    assert len(by_name) == 3 and all(name.startswith("tiny-") for name in by_name)
    assert sorted((s.direction.name, s.best_value) for s in by_name.values()) == [
        ("MAXIMIZE", 1.0), ("MAXIMIZE", 2.0), ("MINIMIZE", 1.0)]


def test_a_failing_launcher_leaves_no_trial_running(app):
    """A job whose result cannot come back from a joblib worker (an exception that does not
    unpickle) breaks the launcher itself; its trial stayed RUNNING. It is closed as FAIL and
    queued again, so the next sweep reruns it."""
    out = app("x=choice(1, 7)", "hydra/launcher=joblib", "hydra.launcher.n_jobs=2", ok=False)
    assert "BrokenProcessPool" in out
    trials = only_study(app).trials
    assert not [t for t in trials if t.state == TrialState.RUNNING]
    assert [(t.params.get("x"), t.state) for t in trials] == [
        (1, TrialState.COMPLETE), (7, TrialState.FAIL), (None, TrialState.WAITING)]
    assert trials[2].system_attrs["fixed_params"] == {"x": 7}
    assert trials[2].user_attrs["retry_of"] == trials[1].number
