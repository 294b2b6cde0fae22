"""Reading run directories back for tables and figures, as strictly as the trainer reads them.

This is the one place that knows a run directory's layout (``summary.json``, ``metrics.jsonl``,
``checkpoint.pt``, as :mod:`tensam.train` writes them). Every builder of :mod:`tensam.reports`
reads runs through it, so that they agree with the trainer on what a run directory means:

* :func:`read_jsonl` reads a run's ``metrics.jsonl``; a torn last line (a run killed while
  writing it) is dropped with one line on stderr, as the trainer drops it when the run resumes
  (:class:`tensam.logging.RunLogger`); an undecodable line elsewhere is an error naming the file
  and the line;
* :func:`load_summaries` reads every ``summary.json`` under a root; one that does not decode (the
  trainer redoes such a run) is left out with one line on stderr;
* :func:`settings_of` is a run's stored trajectory settings (:func:`tensam.config.
  trajectory_settings`): what a table groups by. :func:`require_same_settings` refuses, in one
  line naming the runs and the keys, runs of different settings that a table would average into
  one cell or describe under one header (say, an old 100-step run beside 50,000-step ones);
  the seed, and settings that are the seed in every run (``task.split: ${seed}``), may differ;
* :class:`Cell` splits the runs of a cell by status: finished runs are averaged, diverged runs
  are counted apart (``"3 (+1 diverged)"``) and never averaged;
* :func:`reported` and :func:`best_on_validation` say which evaluation of a run a table shows
  (its best checkpoint on validation, the reference code's protocol);
* :func:`final_state` is a finished run's final weights, refused unless they are final;
* :func:`config`, :func:`build` compose a config as ``train.py`` does and build its task and
  model; :func:`cached` stores an analysis result beside the runs.
"""

from __future__ import annotations

import json
import math
import sys
from collections.abc import Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from tensam.config import compose, trajectory_only, trajectory_settings
from tensam.logging import atomic_write_text

FINISHED, DIVERGED = "finished", "diverged"


class MixedSettingsError(ValueError):
    """Runs of different settings where a table would put them together (one line)."""


# -- reading ----------------------------------------------------------------------------------

def read_jsonl(path: Path) -> list[dict]:
    """The records of a JSON-lines file (a run's ``metrics.jsonl``); [] if it does not exist.

    A torn last line is dropped with one line on stderr; any other line that does not decode
    raises :class:`ValueError` naming the file and the line."""
    path = Path(path)
    if not path.exists():
        return []
    lines = [(n, line) for n, line in enumerate(path.read_text(errors="replace").splitlines(), 1)
             if line.strip()]
    records = []
    for i, (n, line) in enumerate(lines):
        try:
            records.append(json.loads(line))
        except ValueError as err:
            if i == len(lines) - 1:
                print(f"tensam: dropped the torn last line {n} of {path} (a run stopped while "
                      "writing it)", file=sys.stderr)
                break
            raise ValueError(f"{path}:{n} is not a JSON record ({err})") from None
    return records


def load_summaries(root: Path, pattern: str = "**/summary.json") -> dict[tuple[str, ...], dict]:
    """Every run summary under ``root``, keyed by its directory's parts relative to ``root``.
    A summary that does not decode is left out with one line on stderr."""
    root = Path(root)
    out = {}
    for path in sorted(root.glob(pattern)):
        try:
            out[path.parent.relative_to(root).parts] = json.loads(path.read_text())
        except ValueError as err:
            print(f"tensam: left out {path}: not a JSON summary ({err}); the run is redone when "
                  "started again", file=sys.stderr)
    return out


def run_name(key: tuple[str, ...] | str) -> str:
    """A run's name in messages: its directory relative to the root."""
    return key if isinstance(key, str) else "/".join(key)


# -- settings ---------------------------------------------------------------------------------

def settings_of(summary: Mapping) -> dict[str, Any]:
    """The run's trajectory settings (dotted keys): those stored in its summary, else (older
    summaries) those of its stored config."""
    stored = summary.get("settings")
    if stored is not None:
        return trajectory_only(stored)
    config = summary.get("config")
    if config is None:
        raise ValueError("the summary holds neither settings nor config")
    return trajectory_settings(config)


def method_of(config: Mapping) -> str:
    """A run's method from its stored config: the base optimizer's class name (upper case) when
    it trains alone, else the method's (SAM, ASAM for SAM with ``adaptive``, DAS, ...)."""
    opt = config["optimizer"]
    name = (opt.get("_target_") or opt["base"]["_target_"]).rsplit(".", 1)[-1].upper()
    return "ASAM" if name == "SAM" and opt.get("adaptive") else name


def optimizer_settings(summaries: Iterable[Mapping],
                       label: Callable[[Mapping], str] = method_of) -> dict[str, dict]:
    """Each method's optimizer arguments (its base's under ``base``) in ``summaries``, for a
    table's header; ``label(config)`` names a table's row (default: the method), so rows of
    one method with other settings (DAS's normalization) each show their own."""
    def plain(node: Mapping) -> dict:
        return {k: plain(v) if isinstance(v, Mapping) else v for k, v in node.items()
                if k not in ("_target_", "_partial_")}

    return {label(s["config"]): plain(s["config"]["optimizer"]) for s in summaries}


def seed_keys(runs: Mapping[Any, Mapping]) -> set[str]:
    """``seed`` and the settings that equal the seed in every one of ``runs`` (``${seed}``
    interpolations such as ``task.split`` or ``model.seed``): these make the replicates of a
    cell and may differ between its runs."""
    settings = [settings_of(s) for s in runs.values()]
    keys = {"seed"}
    if settings:
        common = set.intersection(*(set(s) for s in settings))
        keys |= {k for k in common if all(s[k] == s.get("seed") for s in settings)}
    return keys


def _varies(key: str, vary: Iterable[str] | Callable[[str], bool]) -> bool:
    if callable(vary):
        return vary(key)
    return any(key == v or key.startswith(f"{v}.") for v in vary)


def differing_settings(runs: Mapping[Any, Mapping],
                       vary: Iterable[str] | Callable[[str], bool] = ()) -> dict[str, dict]:
    """``key -> {run: value}`` for every setting on which ``runs`` disagree, other than the seed
    keys (:func:`seed_keys`) and ``vary`` (keys, their sub-keys, or a predicate)."""
    settings = {name: settings_of(s) for name, s in runs.items()}
    ignore = seed_keys(runs)
    vary = tuple(vary) if not callable(vary) else vary
    missing = "<unset>"
    keys = sorted(set().union(*(set(s) for s in settings.values()))) if settings else []
    out = {}
    for key in keys:
        if key in ignore or _varies(key, vary):
            continue
        values = {name: s.get(key, missing) for name, s in settings.items()}
        if len({json.dumps(v, sort_keys=True, default=str) for v in values.values()}) > 1:
            out[key] = values
    return out


def require_same_settings(runs: Mapping[Any, Mapping], what: str,
                          vary: Iterable[str] | Callable[[str], bool] = ()) -> None:
    """Raise :class:`MixedSettingsError` (one line) if ``runs`` (name -> summary) differ in a
    setting other than the seed keys and ``vary``: ``what`` says where they would be mixed."""
    differ = differing_settings(runs, vary)
    if not differ:
        return
    parts = []
    for key, values in list(differ.items())[:4]:
        by_value: dict[str, list[str]] = {}
        for name, value in values.items():
            by_value.setdefault(repr(value), []).append(run_name(name))
        parts.append(f"{key}: " + " vs ".join(
            f"{value} ({', '.join(sorted(names))})" for value, names in by_value.items()))
    more = f"; ... {len(differ) - 4} more key(s)" if len(differ) > 4 else ""
    raise MixedSettingsError(
        f"{what} mixes runs of different settings ({'; '.join(parts)}{more}); move the runs "
        "of the other settings out of the root, or build a table per setting")


# -- cells ------------------------------------------------------------------------------------

@dataclass
class Cell:
    """The runs of one table cell, by status: finished ones are averaged, diverged ones are
    counted apart, others (no ``status``: an unfinished or unknown run) too."""

    finished: dict = field(default_factory=dict)
    diverged: dict = field(default_factory=dict)
    other: dict = field(default_factory=dict)

    @classmethod
    def of(cls, runs: Mapping[Any, Mapping]) -> Cell:
        cell = cls()
        for name, summary in runs.items():
            status = summary.get("status")
            target = (cell.finished if status == FINISHED else
                      cell.diverged if status == DIVERGED else cell.other)
            target[name] = summary
        return cell

    def values(self, metric: str | Callable[[Any, Mapping], Any]) -> list[float]:
        """``metric`` of each finished run (a key, or a function of (name, summary)); a
        finished run without a finite value is an error naming it."""
        out = []
        for name, summary in self.finished.items():
            value = metric(name, summary) if callable(metric) else summary.get(metric)
            if isinstance(value, bool) or not isinstance(value, (int, float)) \
                    or not math.isfinite(value):
                what = metric if isinstance(metric, str) else "metric"
                raise ValueError(f"run {run_name(name)} finished but its {what} is {value!r}")
            out.append(float(value))
        return out

    def count(self) -> str:
        """``n`` finished, and apart from it how many diverged (or did not finish)."""
        text = str(len(self.finished))
        extra = [f"{len(self.diverged)} diverged"] if self.diverged else []
        extra += [f"{len(self.other)} not finished"] if self.other else []
        return text + (f" (+{', '.join(extra)})" if extra else "")


# -- which evaluation a table reports -----------------------------------------------------------

#: which evaluation of a run a table reports (``--checkpoint``)
CHECKPOINTS = ("best", "last")


def reported(summary: Mapping, checkpoint: str = "best") -> dict:
    """``summary`` with the metrics of the evaluation it reports, and ``"checkpoint"`` saying
    which: with ``checkpoint="best"``, for a run evaluated every ``eval_every`` steps, the
    evaluation with the best objective (its ``best/<metric>`` keys; ``"best@<step>"``): LM-BFF's,
    MeZO's and LoRETTA's best checkpoint on validation, whose test score they report; otherwise
    (``"last"``, a run without evaluations during training, or one from before the summaries kept
    every metric of it) the final evaluation (``"last"``)."""
    if checkpoint not in CHECKPOINTS:
        raise ValueError(f"checkpoint={checkpoint!r} is not one of {list(CHECKPOINTS)}")
    best = {k.removeprefix("best/"): v for k, v in summary.items()
            if k.startswith("best/") and k != "best/step"}
    if (checkpoint == "best" and summary.get("best/step") is not None
            and set(best) - {summary.get("objective")}):
        return {**summary, **best, "checkpoint": f"best@{summary['best/step']}"}
    return {**summary, "checkpoint": "last"}


def best_on_validation(summaries: Iterable[Mapping], group: Callable[[Mapping], Any],
                       metric: Callable[[Mapping], str],
                       checkpoint: str = "best") -> dict[Any, dict]:
    """Per ``group(summary)``, the finished run with the best validation value of
    ``metric(summary)`` (the paper's protocol: a grid per data seed, the configuration with the
    best validation score reports its test score); a group of one run is that run. Every run is
    read as :func:`reported` reads it: its best checkpoint on validation where it has one (the
    reference code's per-run selection), so both the validation score compared here and the test
    score a table prints are that checkpoint's; the runs are returned so read."""
    best: dict[Any, dict] = {}
    for s in summaries:
        if s.get("status") != "finished":
            continue
        s = reported(s, checkpoint)
        key, value = group(s), s.get(metric(s))
        if value is not None and (key not in best or value > best[key][metric(s)]):
            best[key] = s
    return best


def checkpoint_note(runs: Iterable[Mapping]) -> str:
    """Which evaluation of each of ``runs`` (read by :func:`reported`) a table shows, in words."""
    runs = list(runs)
    chosen = [r for r in runs if r["checkpoint"] != "last"]
    if not chosen:
        return "each run's final evaluation"
    every = "/".join(sorted({str(r["config"].get("eval_every")) for r in chosen}))
    objective = "/".join(sorted({str(r.get("objective")) for r in chosen}))
    note = (f"each run's evaluation with the best {objective} (every {every} steps, the "
            "reference code's best checkpoint)")
    if len(chosen) < len(runs):
        note += (f" for {len(chosen)} of {len(runs)} runs, the final evaluation for the others "
                 "(no evaluation during training)")
    return note


# -- final weights, configs and models of runs ---------------------------------------------------

def final_state(run_dir: Path) -> tuple[dict, dict]:
    """(summary, model state_dict) of a finished run at its final step: its ``checkpoint.pt``
    must hold the step its ``summary.json`` ends at, else :class:`ValueError` naming the run."""
    import torch

    run_dir = Path(run_dir)
    summary_path, path = run_dir / "summary.json", run_dir / "checkpoint.pt"
    summary = json.loads(summary_path.read_text()) if summary_path.is_file() else {}
    if summary.get("status") != FINISHED:
        raise ValueError(f"{run_dir} holds no finished run (summary.json: status "
                         f"{summary.get('status')!r}); finish the run first")
    if not path.is_file():
        raise ValueError(f"{run_dir} has no checkpoint.pt (train with checkpoint_every > 0)")
    ckpt = torch.load(path, map_location="cpu", weights_only=False)
    if ckpt["step"] != summary["steps"]:
        raise ValueError(f"{path} holds step {ckpt['step']}, not the final step "
                         f"{summary['steps']}: train with a checkpoint_every that divides steps")
    return summary, ckpt["model"]


def config(overrides: Sequence[str]) -> dict:
    """The resolved root config under Hydra ``overrides`` (:func:`tensam.config.compose`)."""
    return compose(*overrides)


def build(cfg: Mapping):
    """(task, model) of a resolved config, seeded as :func:`tensam.train.run` does."""
    from tensam.tasks import build_model, build_task
    from tensam.train import seed_everything

    seed_everything(int(cfg["seed"]))
    task = build_task(cfg["task"], cfg["model"].get("pretrained"))
    return task, build_model(cfg["model"], task)


def cached(path: Path, settings: dict, compute: Callable[[], dict]) -> dict:
    """``compute()``'s result, stored in ``path`` with its ``settings``; a stored result is
    reused only if it was made with the same settings (an analysis, not a training run)."""
    path = Path(path)
    if path.exists():
        stored = json.loads(path.read_text())
        if stored.get("settings") == settings:
            return stored
    result = {**compute(), "settings": settings}
    path.parent.mkdir(parents=True, exist_ok=True)
    atomic_write_text(path, json.dumps(result, indent=1) + "\n")
    print(f"wrote {path}", flush=True)
    return result


__all__ = ["CHECKPOINTS", "DIVERGED", "FINISHED", "Cell", "MixedSettingsError",
           "best_on_validation", "build", "cached", "checkpoint_note", "config",
           "differing_settings", "final_state", "load_summaries", "method_of",
           "optimizer_settings", "read_jsonl", "reported", "require_same_settings", "run_name",
           "seed_keys", "settings_of"]
