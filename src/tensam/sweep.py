"""A Hydra sweeper on Optuna: ``python train.py -m experiment=... hparams_search=rho_optuna``.

It replaces the hydra-optuna-sweeper plugin, whose studies were not to be trusted: one failing
trial crashed the sweep and stayed RUNNING in the database; a restart ran ``n_trials`` more
trials, repeated finished values and never closed the stale trial; a study was keyed by its name
alone, so trials under different fixed settings were ranked together; the direction was set by
hand; and a choice grid was sampled by TPE, with repeats. Here:

* a trial whose job raises (any error) or returns a non-finite number (train.py returns NaN for
  a diverged run under ``-m``) is told to Optuna as FAIL, and the sweep goes on; if the launcher
  itself fails (a worker process lost), the batch's trials are closed as FAIL and queued again,
  never left RUNNING;
* ``n_trials`` is the total the study should hold: a restart runs only the trials missing. The
  trials a killed sweep left RUNNING are marked FAIL and their parameters enqueued again (the
  rerun's ``retry_of`` names the trial it replaces, which does not count as done). This assumes
  one sweep per study at a time. To start a study over (say, after fixing a bug that failed its
  trials): ``optuna delete-study --storage sqlite:///optuna.db --study-name <name>``;
* the study is stored as ``<study_name>-<fingerprint>``, the :func:`tensam.config.fingerprint`
  of the job's trajectory settings under the sweep's fixed overrides, less the swept keys, and
  of the objective, direction and search space: trials are only ranked against trials of the
  same set-up, and a study's parameters keep the distributions Optuna requires them to keep;
* ``direction: auto`` is the direction of the task's objective (:func:`tensam.config.objective`);
* when every swept parameter is a choice, the search is an exhaustive grid: each combination
  runs once (``n_trials`` is at most the grid's size); otherwise ``sampler`` proposes values. A
  seeded sampler's seed is offset by the trials already stored, so a top-up does not replay the
  proposals of the sweep it continues.

``params`` take Hydra's sweep syntax: ``choice(a, b)`` or ``a,b`` (categorical), ``range(start,
stop, step)`` (stepped, stop excluded), ``interval(low, high)``, ``tag(log, interval(low,
high))``; any other value is a fixed override of every job. Hydra instantiates sweepers only from
the ``hydra_plugins`` namespace, so ``configs/hydra/sweeper/tensam_optuna.yaml`` names this class
as ``hydra_plugins.tensam_sweeper.OptunaSweeper``.
"""

from __future__ import annotations

import itertools
import logging
import math
from collections.abc import Mapping
from typing import Any

import optuna
from hydra.core.override_parser.overrides_parser import OverridesParser
from hydra.core.override_parser.types import Override, Transformer
from hydra.core.plugins import Plugins
from hydra.core.utils import JobReturn
from hydra.plugins.sweeper import Sweeper
from hydra.types import HydraContext, TaskFunction
from hydra.utils import instantiate
from omegaconf import DictConfig, OmegaConf
from optuna.distributions import (
    BaseDistribution,
    CategoricalDistribution,
    FloatDistribution,
    IntDistribution,
    distribution_to_json,
)
from optuna.trial import TrialState

from tensam.config import NOT_TRAJECTORY, fingerprint, objective, trajectory_settings

log = logging.getLogger(__name__)
DIRECTIONS = ("auto", "maximize", "minimize")


def distribution(override: Override) -> BaseDistribution:
    """The Optuna distribution of a Hydra sweep override."""
    sweep = override.value()
    if override.is_choice_sweep():
        return CategoricalDistribution(list(override.sweep_iterator(Transformer.encode)))
    if override.is_range_sweep():
        values = list(override.sweep_iterator())
        cls = IntDistribution if all(isinstance(v, int) for v in values) else FloatDistribution
        return cls(min(values), max(values), step=abs(sweep.step))
    return FloatDistribution(sweep.start, sweep.end, log="log" in sweep.tags)


def tell(study: optuna.Study, trial: optuna.Trial, ret: JobReturn) -> None:
    """Tell ``study`` the job's value, or FAIL if the job raised or returned a non-finite value."""
    try:
        value = float(ret.return_value)  # raises what the job raised
        if not math.isfinite(value):
            raise ValueError(f"the job returned {value}")
    except Exception as err:
        log.warning(f"trial {trial.number} {trial.params} failed: {type(err).__name__}: {err}")
        study.tell(trial, state=TrialState.FAIL)
    else:
        study.tell(trial, value)


class OptunaSweeper(Sweeper):
    """Runs the trials of one Optuna study through Hydra's launcher (see the module docstring)."""

    def __init__(self, study_name: str, sampler: Mapping[str, Any],
                 storage: str = "sqlite:///optuna.db", n_trials: int | None = None,
                 n_jobs: int = 1, direction: str = "auto",
                 params: Mapping[str, Any] | None = None):
        if direction not in DIRECTIONS:
            raise ValueError(f"hydra.sweeper.direction={direction!r} is not one of "
                             f"{list(DIRECTIONS)}")
        if n_jobs < 1:
            raise ValueError(f"hydra.sweeper.n_jobs={n_jobs} must be >= 1")
        self.study_name, self.sampler, self.storage = study_name, sampler, storage
        self.n_trials, self.n_jobs, self.direction = n_trials, n_jobs, direction
        self.params = dict(params or {})
        self.job_idx = 0

    def setup(self, *, hydra_context: HydraContext, task_function: TaskFunction,
              config: DictConfig) -> None:
        self.config, self.hydra_context = config, hydra_context
        self.launcher = Plugins.instance().instantiate_launcher(
            hydra_context=hydra_context, task_function=task_function, config=config)

    def _study(self, fixed: list[str], swept: list[str],
               space: Mapping[str, BaseDistribution]) -> tuple[optuna.Study, str]:
        """The study of this set-up, created or loaded, and the objective it optimises."""
        cfg = self.hydra_context.config_loader.load_sweep_config(self.config, fixed)
        # ${hydra:...} resolves only in a running job, and only keys that do not shape the
        # trajectory use it (hydra, logger): resolve the others alone, in the full config.
        job = {k: OmegaConf.to_container(cfg[k], resolve=True) if OmegaConf.is_config(cfg[k])
               else cfg[k] for k in cfg if k == "objective" or k not in NOT_TRAJECTORY}
        key, higher_is_better = objective(job)
        direction = self.direction
        if direction == "auto":
            direction = "maximize" if higher_is_better else "minimize"
        settings = {k: v for k, v in trajectory_settings(job).items()
                    if not any(k == s or k.startswith(f"{s}.") for s in swept)}
        # Optuna refuses other choices or another kind of distribution for a parameter of a
        # study, and the objective and direction decide the ranking: all are part of its name
        settings.update(objective=key, direction=direction,
                        search_space={k: distribution_to_json(d) for k, d in space.items()})
        study = optuna.create_study(storage=self.storage, direction=direction, load_if_exists=True,
                                    study_name=f"{self.study_name}-{fingerprint(settings)}")
        seed = self.sampler.get("seed")
        study.sampler = instantiate(self.sampler, **({} if seed is None else
                                                     {"seed": seed + len(study.trials)}))
        return study, f"{direction} {key}"

    def sweep(self, arguments: list[str]) -> None:
        parsed = OverridesParser.create().parse_overrides(
            [f"{k}={v}" for k, v in self.params.items()] + list(arguments))
        overrides = {o.get_key_element(): o for o in parsed}  # the command line wins
        space = {k: distribution(o) for k, o in overrides.items() if o.is_sweep_override()}
        fixed = [o.input_line for o in overrides.values() if not o.is_sweep_override()]
        n_trials, grid = self.n_trials, None
        if all(isinstance(d, CategoricalDistribution) for d in space.values()):
            grid = list(itertools.product(*(d.choices for d in space.values())))
            if n_trials is not None and n_trials > len(grid):
                log.info(f"n_trials={n_trials} capped at the {len(grid)} combinations of the grid")
            n_trials = len(grid) if n_trials is None else min(n_trials, len(grid))
        elif n_trials is None:
            raise ValueError("hydra.sweeper.n_trials must be set unless every swept parameter "
                             "is a choice (an exhaustive grid)")

        optuna.logging.set_verbosity(optuna.logging.WARNING)  # our log line names the study
        study, goal = self._study(fixed, [o.key_or_group for o in overrides.values()
                                          if o.is_sweep_override()], space)
        for stale in study.get_trials(deepcopy=False, states=(TrialState.RUNNING,)):
            study.tell(stale.number, state=TrialState.FAIL)
            study.enqueue_trial(stale.params, user_attrs={"retry_of": stale.number})
        for values in grid or ():  # skipped where a trial (waiting or finished) has them
            study.enqueue_trial(dict(zip(space, values, strict=True)), skip_if_exists=True)
        trials = study.get_trials(deepcopy=False)
        retried = {t.user_attrs["retry_of"] for t in trials if "retry_of" in t.user_attrs}
        done = sum(t.state in (TrialState.COMPLETE, TrialState.FAIL) and t.number not in retried
                   for t in trials)
        to_run = max(0, n_trials - done)
        log.info(f"study {study.study_name} ({goal}) in {self.storage}: {done} of {n_trials} "
                 f"trials done, {to_run} to run")

        while to_run > 0:
            batch = [study.ask(space) for _ in range(min(self.n_jobs, to_run))]
            try:
                returns = self.launcher.launch(
                    [[*fixed, *(f"{k}={v}" for k, v in t.params.items())] for t in batch],
                    initial_job_idx=self.job_idx)
            except BaseException:
                # the launcher itself failed (a worker killed, a result that did not come
                # back): no trial of the batch is left RUNNING; each is closed and queued again
                # for the next sweep, as a restart does with the trials of a killed sweep
                for trial in batch:
                    study.tell(trial, state=TrialState.FAIL)
                    study.enqueue_trial(trial.params, user_attrs={"retry_of": trial.number})
                raise
            self.job_idx += len(returns)
            to_run -= len(batch)
            for trial, ret in zip(batch, returns, strict=True):
                tell(study, trial, ret)
        if any(t.state == TrialState.COMPLETE for t in study.get_trials(deepcopy=False)):
            best = study.best_trial
            log.info(f"best of {study.study_name}: {best.value} at {best.params} "
                     f"(trial {best.number})")
