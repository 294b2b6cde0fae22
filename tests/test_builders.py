"""The table builders of scripts/ (Tables 3, 4 and 5) on hand-made run summaries: the numbers they
print are the means, standard deviations and ratios of what the runs recorded."""

import json
import re
import sys
from pathlib import Path

import pytest
from toys import node

from tensam.bench.common import interleaved_times
from tensam.config import compose
from tensam.reports import fastpath, table1, table2, table3, table4, table5
from tensam.reports.runs import best_on_validation, reported


def _summary(path: Path, method: str, seed: int, acc: float, top5: float, s_step: float,
             **extra) -> None:
    optimizer = node({"method": method, "base": {"name": "sgd"}})
    path.mkdir(parents=True)
    path.joinpath("summary.json").write_text(json.dumps({
        "status": "finished", "accuracy": acc, "top5": top5, "seconds": 100.0,
        "seconds_per_step": s_step, **extra,
        "config": {"optimizer": optimizer, "seed": seed, **extra.pop("config", {})}}))


def test_table3_reports_means_recovery_and_step_ratios(tmp_path):
    _summary(tmp_path / "pretrain", "none", 0, 0.80, 0.99, 0.3)
    _summary(tmp_path / "before", "none", 0, 0.30, 0.90, 0.0)
    for seed, (sgd, sam) in enumerate([(0.70, 0.74), (0.72, 0.76)]):
        _summary(tmp_path / "sgd" / f"seed{seed}", "none", seed, sgd, 0.98, 0.4)
        _summary(tmp_path / "sam" / f"seed{seed}", "sam", seed, sam, 0.985, 0.8)
    single, methods = table3.collect(table3.load_summaries(tmp_path))
    rows = {r[0]: r for r in table3.rows(single, methods)}
    assert rows["before fine-tuning"][1:3] == ["30.00", "90.00"]
    assert rows["before fine-tuning"][3:5] == ["36.74", "64.32"]  # the paper's
    assert rows["SGD"][1] == "71.00 ± 1.41" and rows["SAM"][1] == "75.00 ± 1.41"
    assert rows["SGD"][5] == "82%" and rows["SAM"][5] == "90%"  # (71-30)/(80-30), (75-30)/50
    assert rows["SAM"][7] == "2.00x" and rows["SAM"][8] == 0.425
    assert rows["SGD"][9] == 2 and rows["SGD"][10] == "0, 1"


def test_table4_names_rows_by_adapter_and_method():
    def cfg(adapter, method, base="adam"):
        model = compose(*(["model=minilm_full"] if adapter == "none"
                          else ["model=minilm", f"model/adapter={adapter}"]))["model"]
        return {"model": model,
                "optimizer": node({"method": method, "base": {"name": base}})}

    assert table4.row_name(cfg("none", "none")) == "full fine-tuning"
    assert table4.row_name(cfg("lora", "none")) == "LoRA (r 8)"
    assert table4.row_name(cfg("flora", "das")) == "FLoRA DAS"
    assert table4.row_name(cfg("loretta_rep", "none")) == "LoRETTA_rep ADAM"
    names = ["FLoRA DAS", "LoRETTA_rep ADAM", "full fine-tuning", "FLoRA ADAM", "LoRA (r 8)",
             "FLoRA SAM"]
    assert sorted(names, key=table4._order) == [
        "full fine-tuning", "LoRA (r 8)", "FLoRA ADAM", "FLoRA SAM", "FLoRA DAS",
        "LoRETTA_rep ADAM"]


def test_interleaved_times_rotates_the_order_and_times_every_block():
    calls = []
    times = interleaved_times({"a": lambda: calls.append("a"), "b": lambda: calls.append("b"),
                               "c": lambda: calls.append("c")}, blocks=3, steps=2)
    assert calls == list("aabbcc" "bbccaa" "ccaabb")
    assert {k: len(v) for k, v in times.items()} == {"a": 3, "b": 3, "c": 3}
    assert all(t >= 0 for v in times.values() for t in v)


@pytest.mark.parametrize("missing", ["pretrain", "before"])
def test_table3_without_the_dense_or_before_run_prints_no_recovery(tmp_path, missing):
    _summary(tmp_path / "pretrain", "none", 0, 0.80, 0.99, 0.3)
    _summary(tmp_path / "before", "none", 0, 0.30, 0.90, 0.0)
    _summary(tmp_path / "sgd" / "seed0", "none", 0, 0.70, 0.98, 0.4)
    (tmp_path / missing / "summary.json").unlink()
    single, methods = table3.collect(table3.load_summaries(tmp_path))
    rows = {r[0]: r for r in table3.rows(single, methods)}
    assert rows["SGD"][5] == "-" and rows["SGD"][1] == "70.00"


def _t5(path: Path, task: str, method: str, seed: int, val: float, acc: float, f1: float,
        steps: int = 10) -> None:
    path.mkdir(parents=True)
    path.joinpath("summary.json").write_text(json.dumps({
        "status": "finished", "accuracy": acc, "val_accuracy": val, "f1": f1, "val_f1": 1 - val,
        "seconds": 10.0, "seconds_per_step": 0.5, "model_info": {"trainable": 1234},
        "config": {"steps": steps, "epochs": None,
                   "optimizer": node({"method": method, "base": {"name": "adamw"}}),
                   "model": {"pretrained": "facebook/opt-6.7b",
                             "adapter": {"_target_": "tensam.adapters.LorettaRep"}},
                   "task": {"name": task, "data_seed": seed, "n_train": 1000, "n_val": 500,
                            "n_test": 1000}}}))


def test_best_on_validation_keeps_one_run_per_group_by_its_validation_score(tmp_path):
    runs = [{"status": "finished", "g": g, "val": v, "test": t}
            for g, v, t in [(0, 0.5, 0.9), (0, 0.7, 0.1), (1, 0.2, 0.3), (1, None, 1.0)]]
    runs.append({"status": "diverged", "g": 1, "val": 0.9, "test": 0.0})
    best = best_on_validation(runs, lambda r: r["g"], lambda r: "val")
    assert {g: r["test"] for g, r in best.items()} == {0: 0.1, 1: 0.3}


def test_table5_selects_on_validation_per_seed_and_reports_the_chosen_test_score(
        tmp_path, monkeypatch):
    # CB, DAS: two grid points per seed; the better validation accuracy is the second
    for seed, ((v1, a1), (v2, a2)) in enumerate([((0.5, 0.9), (0.8, 0.70)),
                                                 ((0.6, 0.1), (0.7, 0.80))]):
        _t5(tmp_path / f"das_a{seed}", "cb", "das", seed, v1, a1, 0.2)
        _t5(tmp_path / f"das_b{seed}", "cb", "das", seed, v2, a2, 0.4)
    _t5(tmp_path / "zero", "cb", "none", 0, 0.3, 0.5, 0.1, steps=0)
    out = tmp_path / "t5.md"
    monkeypatch.setattr(sys, "argv", ["table5.py", "--root", str(tmp_path), "--out",
                                      str(out)])
    table5.main()
    rows = {line.split(" | ")[0].strip("| "): line.split(" | ") for line in
            out.read_text().splitlines() if line.startswith("| ")}
    assert rows["LoRETTA_rep DAS"][2:4] == ["75.0 ± 7.1", "82.1"]  # mean of 70 and 80; paper
    assert rows["zero-shot"][1:4] == ["-", "50.0", "60.7"]  # one run: no std
    assert table5.metric("cb", "text") == "f1" and table5.metric("copa", "text") == (
        "accuracy")
    assert table5.metric("squad", "code") == "f1"


def test_reported_reads_a_run_at_its_best_checkpoint():

    run = {"status": "finished", "objective": "val_accuracy", "val_accuracy": 0.6,
           "accuracy": 0.5, "best/val_accuracy": 0.8, "best/accuracy": 0.7, "best/step": 300}
    best = reported(run)
    assert (best["val_accuracy"], best["accuracy"], best["checkpoint"]) == (0.8, 0.7, "best@300")
    last = reported(run, "last")
    assert (last["val_accuracy"], last["accuracy"], last["checkpoint"]) == (0.6, 0.5, "last")
    # no evaluation during training, or an old summary with the objective alone: the final one
    for old in ({**run, "best/step": None}, {"status": "finished", "objective": "val_accuracy",
                                             "val_accuracy": 0.6, "best/val_accuracy": 0.8,
                                             "best/step": 300}):
        assert reported(old)["checkpoint"] == "last" and reported(old)["val_accuracy"] == 0.6
    with pytest.raises(ValueError, match="checkpoint='first'"):
        reported(run, "first")


def _t4(path: Path, method: str, seed: int, final: tuple, best: tuple | None,
        steps: int = 1000) -> None:
    """A Table 4 run: (val, test) accuracy of its final evaluation and of its best one."""
    path.mkdir(parents=True)
    extra = {} if best is None else {"best/val_accuracy": best[0], "best/accuracy": best[1],
                                     "best/step": 500}
    path.joinpath("summary.json").write_text(json.dumps({
        "status": "finished", "objective": "val_accuracy", "val_accuracy": final[0],
        "accuracy": final[1], **extra, "seconds": 10.0, "seconds_per_step": 0.5,
        "model_info": {"trainable": 1234},
        "config": {"steps": steps, "epochs": None, "eval_every": 100,
                   "optimizer": node({"method": method, "base": {"name": "adam"}}),
                   "model": {"pretrained": "roberta-large",
                             "adapter": {"_target_": "tensam.adapters.FLoRALinear"}},
                   "task": {"name": "rte", "data_seed": seed, "k": 512, "batch_size": 16,
                            "max_length": 256}}}))


def _table(out: Path) -> dict[str, list[str]]:
    return {line.split(" | ")[0].strip("| "): line.split(" | ") for line in
            out.read_text().splitlines() if line.startswith("| ")}


def test_table4_selects_and_scores_each_run_at_its_best_checkpoint(tmp_path, monkeypatch):
    """Per seed, the grid point whose best checkpoint validates best reports that checkpoint's
    test accuracy (LM-BFF / MeZO), even where the final evaluations rank the runs otherwise;
    --checkpoint last reads the final evaluations; a run without evaluations during training (the
    zero-shot row) is its final evaluation."""
    root = tmp_path / "runs"
    for seed, (a, b) in enumerate([(((0.70, 0.60), (0.76, 0.80)), ((0.75, 0.50), (0.75, 0.50))),
                                   (((0.71, 0.61), (0.90, 0.84)), ((0.73, 0.40), (0.80, 0.70)))]):
        _t4(root / f"das_a{seed}", "das", seed, *a)  # best checkpoints validate better: 76, 90
        _t4(root / f"das_b{seed}", "das", seed, *b)  # final evaluations validate better: 75, 73
    _t4(root / "zero", "none", 0, (0.55, 0.514), None, steps=0)
    out = tmp_path / "t4.md"
    monkeypatch.setattr(sys, "argv", ["table4.py", "--root", str(root), "--out", str(out)])
    table4.main()
    rows = _table(out)
    assert rows["FLoRA DAS"][2:4] == ["82.00 ± 2.83", "83.00 ± 9.90"]  # tests 80, 84; vals 76, 90
    assert rows["zero-shot"][2:4] == ["51.40 ± 0.00", "55.00 ± 0.00"]
    assert "--checkpoint best" in out.read_text()
    assert "each run's evaluation with the best val_accuracy (every 100 steps" in out.read_text()
    assert "for 2 of 3 runs, the final evaluation for the others" in out.read_text()
    monkeypatch.setattr(sys, "argv", ["table4.py", "--root", str(root), "--out", str(out),
                                      "--checkpoint", "last"])
    table4.main()
    rows = _table(out)
    assert rows["FLoRA DAS"][2:4] == ["45.00 ± 7.07", "74.00 ± 1.41"]  # runs b: tests 50, 40
    assert "each run's final evaluation" in out.read_text()


def test_table5_scores_each_run_at_its_best_checkpoint(tmp_path, monkeypatch):
    _t5(tmp_path / "a", "cb", "das", 0, 0.9, 0.3, 0.2)  # final: the better validation ...
    _t5(tmp_path / "b", "cb", "das", 0, 0.5, 0.4, 0.2)
    summary = json.loads((tmp_path / "b" / "summary.json").read_text())
    summary.update({"objective": "val_loss", "best/val_accuracy": 0.95, "best/accuracy": 0.75,
                    "best/val_loss": 0.1, "best/step": 200})  # ... but b's checkpoint beats it
    summary["config"]["eval_every"] = 200
    (tmp_path / "b" / "summary.json").write_text(json.dumps(summary))
    out = tmp_path / "t5.md"
    monkeypatch.setattr(sys, "argv", ["table5.py", "--root", str(tmp_path), "--out",
                                      str(out)])
    table5.main()
    assert _table(out)["LoRETTA_rep DAS"][2] == "75.0"
    assert "each run's evaluation with the best val_loss (every 200 steps" in out.read_text()


# -- Tables 1 and 2: diverged runs, mixed settings, torn logs (tensam.reports) -----------------

def _t1_config(method: str, seed: int, steps: int = 100, rank=(8, 6, 8)) -> dict:
    optimizer = node({"method": method, **{"sam": {"rho": 0.01}, "das": {
        "alpha": 0.001, "alpha_schedule": "constant"}}.get(method, {}), "base": {
        "name": "adamw", "lr": 0.001, "betas": [0.9, 0.999], "weight_decay": 0.01}})
    return {"name": "table1", "seed": seed, "steps": steps, "objective": "r2_heldout",
            "optimizer": optimizer,
            "task": {"protocol": "heldout", "observed": 0.3, "loss": "mse", "split": seed,
                     "seed": seed, "hooi_iter": 100},
            "model": {"rank": list(rank), "init": "normal", "seed": seed}}


def _run(path: Path, config: dict, status: str = "finished", value: float = 0.9,
         log: str | None = None, **extra) -> None:
    """A run directory as tensam.train.run leaves it: summary (settings, fingerprint, status)
    and metrics.jsonl."""
    from tensam.config import fingerprint, trajectory_settings

    settings = trajectory_settings(config)
    finished = status == "finished"
    path.mkdir(parents=True)
    path.joinpath("summary.json").write_text(json.dumps({
        "status": status, "r2_heldout": value if finished else None,
        "r2_observed": value + 0.01 if finished else None, "accuracy": value if finished else None,
        "train/loss": 0.5 if finished else None, "norm/Q": 1.0, "steps": config["steps"],
        "seconds": 10.0, "seconds_per_step": 0.1, "config": config, "settings": settings,
        "fingerprint": fingerprint(settings), "data": {"label_noise_measured": 0.6},
        **({} if finished else {"diverged_at_step": 7}), **extra}))
    if log is None:
        log = (json.dumps({"step": 0, "train/loss": 2.0}) + "\n"
               + json.dumps({"step": 50, "train/loss": 1.0 if finished else None}) + "\n")
    path.joinpath("metrics.jsonl").write_text(log)


def _table1(root: Path, das_seed1: dict | None = None, **kwargs) -> None:
    for d, method in (("none", "none"), ("sam", "sam"), ("das", "das")):
        for seed in (0, 1):
            extra = (das_seed1 or {}) if (d, seed) == ("das", 1) else {}
            config = _t1_config(method, seed, **{**kwargs, **extra.pop("config", {})})
            _run(root / "heldout" / d / f"seed{seed}", config, value=0.9 + 0.01 * seed, **extra)


def _build_table1(root: Path, out: Path) -> str:

    table1.main(["--root", str(root), "--out", str(out)])
    return (out / "table1.md").read_text()


def test_reports_read_a_torn_last_line_with_a_message_and_refuse_other_bad_lines(
        tmp_path, capsys):
    from tensam.reports import read_jsonl

    path = tmp_path / "metrics.jsonl"
    path.write_text('{"step": 0, "train/loss": 1.0}\n{"step": 5, "train/lo')
    assert read_jsonl(path) == [{"step": 0, "train/loss": 1.0}]
    assert f"dropped the torn last line 2 of {path}" in capsys.readouterr().err
    path.write_text('{"step": 0}\n{"step": 5, "tr\n{"step": 10}\n')
    with pytest.raises(ValueError, match=rf"{path}:2 is not a JSON record"):
        read_jsonl(path)
    assert read_jsonl(tmp_path / "absent.jsonl") == []


def test_reports_leave_out_a_torn_summary_naming_it(tmp_path, capsys):
    from tensam.reports import load_summaries

    _run(tmp_path / "a", _t1_config("none", 0))
    (tmp_path / "b").mkdir()
    (tmp_path / "b" / "summary.json").write_text('{"status": "fin')
    assert list(load_summaries(tmp_path)) == [("a",)]
    assert f"left out {tmp_path / 'b' / 'summary.json'}" in capsys.readouterr().err


def test_reports_group_by_stored_settings_and_count_diverged_runs_apart(tmp_path):
    from tensam.reports import Cell, MixedSettingsError, require_same_settings, seed_keys

    runs = {}
    for seed, steps, status in ((0, 100, "finished"), (1, 100, "diverged"), (2, 50, "finished")):
        _run(tmp_path / f"s{seed}", _t1_config("das", seed, steps=steps), status=status)
        runs[f"s{seed}"] = json.loads((tmp_path / f"s{seed}" / "summary.json").read_text())
    same = {k: runs[k] for k in ("s0", "s1")}
    assert {"seed", "task.split", "task.seed", "model.seed"} <= seed_keys(same)
    require_same_settings(same, "cell")  # only the seed (and what is the seed) differs
    with pytest.raises(MixedSettingsError) as err:
        require_same_settings(runs, "the DAS cell")
    assert str(err.value).startswith("the DAS cell mixes runs of different settings (steps: "
                                     "100 (s0, s1) vs 50 (s2))")
    cell = Cell.of(runs)
    assert cell.values("r2_heldout") == [0.9, 0.9] and cell.count() == "2 (+1 diverged)"


def test_table1_counts_a_diverged_run_apart_and_never_averages_it(tmp_path):
    """A diverged run was averaged into 'nan ± nan' with n = 2, and loss_peaks crashed on its
    null loss (TypeError: '>' not supported between 'NoneType' and 'float')."""

    _table1(tmp_path / "runs", das_seed1={"status": "diverged"})
    text = _build_table1(tmp_path / "runs", tmp_path / "out")
    das = next(line for line in text.splitlines() if line.startswith("| DAS |"))
    assert das.split(" | ")[1:3] == ["0.9000 ± 0.0000", "0.9100 ± 0.0000"]
    assert das.endswith("| 1 (+1 diverged) |") and "nan" not in text
    peaks = next(line for line in text.splitlines() if line.startswith("| heldout | seed1 |"))
    assert "diverged at step 7" in peaks
    rows = {(r["method"], r["metric"]): r for r in table1.aggregate(
        {("heldout", m, s): json.loads((tmp_path / "runs" / "heldout" / d / s / "summary.json")
                                       .read_text())
         for m, d in (("adam", "none"), ("das", "das")) for s in ("seed0", "seed1")})}
    assert rows[("das", "r2_heldout")]["n"] == 1 and rows[("das", "r2_heldout")]["diverged"] == 1


def test_table1_with_every_run_of_a_cell_diverged_prints_no_number(tmp_path):

    for seed in (0, 1):
        _run(tmp_path / "heldout" / "das" / f"seed{seed}", _t1_config("das", seed),
             status="diverged")
    summaries = {("heldout", "das", f"seed{s}"): json.loads(
        (tmp_path / "heldout" / "das" / f"seed{s}" / "summary.json").read_text()) for s in (0, 1)}
    rows = table1.aggregate(summaries)
    assert all(r["mean"] is None and not r["agrees"] and r["count"] == "0 (+2 diverged)"
               for r in rows)
    assert "| DAS | - (no finished run) | - (no finished run) |" in table1.main_table(rows)
    assert "no finished run of DAS (all diverged)" in table1.verdict(rows)[0]


@pytest.mark.parametrize("das_seed1, needle", [
    # one cell: an old 50-step run beside 100-step ones
    ({"config": {"steps": 50}}, "the `heldout` DAS cell mixes runs of different settings (steps: "
                                "100 (heldout/das/seed0) vs 50 (heldout/das/seed1))"),
    # one cell: another rank
    ({"config": {"rank": (4, 3, 4)}}, "model.rank: [8, 6, 8] (heldout/das/seed0) vs [4, 3, 4] "
                                      "(heldout/das/seed1)"),
], ids=["steps", "rank"])
def test_table1_refuses_runs_of_other_settings_in_a_cell_naming_them(tmp_path, das_seed1,
                                                                     needle):
    """They were averaged into one cell under a settings line naming the first run's."""
    _table1(tmp_path / "runs", das_seed1=das_seed1)
    with pytest.raises(SystemExit) as err:
        _build_table1(tmp_path / "runs", tmp_path / "out")
    assert needle in str(err.value) and len(str(err.value).splitlines()) == 1
    assert not (tmp_path / "out" / "table1.md").exists()


def test_table1_refuses_methods_of_other_budgets_under_one_settings_line(tmp_path):
    _table1(tmp_path / "runs")
    for seed in (0, 1):  # SAM's runs are of another budget than Adam's and DAS's
        path = tmp_path / "runs" / "heldout" / "sam" / f"seed{seed}"
        for f in path.iterdir():
            f.unlink()
        path.rmdir()
        _run(path, _t1_config("sam", seed, steps=50))
    with pytest.raises(SystemExit, match=r"the `heldout` protocol's settings line mixes runs of "
                                         r"different settings \(steps: "):
        _build_table1(tmp_path / "runs", tmp_path / "out")


def test_table1_tolerates_a_torn_last_line_of_a_metrics_log(tmp_path, capsys):
    """A run killed while writing metrics.jsonl crashed the builder (JSONDecodeError)."""
    torn = (json.dumps({"step": 0, "train/loss": 2.0}) + "\n"
            + json.dumps({"step": 50, "train/loss": 3.0}) + '\n{"step": 100, "train/lo')
    _table1(tmp_path / "runs", das_seed1={"log": torn})
    text = _build_table1(tmp_path / "runs", tmp_path / "out")
    assert "dropped the torn last line 3 of" in capsys.readouterr().err
    peaks = next(line for line in text.splitlines() if line.startswith("| heldout | seed1 |"))
    assert "3 (step 50)" in peaks


def _t2_config(method: str, seed: int, noise: float = 0.6, rank: int = 10,
               epochs: int = 15) -> dict:
    optimizer = node({"method": method, **{"sam": {"rho": 0.05}, "das": {"alpha": 0.1}}.get(
        method, {}), "base": {"name": "sgd", "lr": 0.05, "momentum": 0.9}})
    return {"name": "noise_cpu", "seed": seed, "steps": 0, "epochs": epochs,
            "optimizer": optimizer,
            "task": {"batch_size": 128, "data": {"label_noise": noise, "train_split": "train50k",
                                                 "subset": 10000, "noise_mode": "uniform",
                                                 "eval_split": "test"}},
            "model": {"_target_": "tensam.models.ResNet", "depth": 20, "conv": "tr",
                      "rank": rank}}


def _build_table2(root: Path, out: Path, monkeypatch) -> str:

    monkeypatch.setattr(sys, "argv", ["table2.py", "--root", str(root), "--out", str(out)])
    table2.main()
    return out.read_text()


def test_table2_counts_diverged_runs_apart(tmp_path, monkeypatch):
    """A diverged run was dropped from the table without a word (n counted finished runs)."""
    for method in ("none", "sam"):
        for seed in (0, 1):
            _run(tmp_path / method / f"seed{seed}", _t2_config(method, seed), value=0.4 + seed / 10,
                 status="diverged" if (method, seed) == ("sam", 1) else "finished")
    text = _build_table2(tmp_path, tmp_path / "t2.md", monkeypatch)
    rows = {line.split(" | ")[1]: line.split(" | ") for line in text.splitlines()
            if line.startswith("| 60%")}
    assert rows["SAM"][2] == "40.00 (one seed)" and rows["SAM"][7] == "1 (+1 diverged)"
    assert rows["SAM"][8].startswith("0; diverged: 1")
    assert rows["SGD"][2] == "45.00 ± 7.07" and rows["SGD"][7] == "2"


@pytest.mark.parametrize("change, needle", [
    ({"rank": 5}, "model.rank: 10 ("),
    ({"epochs": 1}, "epochs: 15 ("),
], ids=["rank", "epochs"])
def test_table2_refuses_runs_of_other_settings_naming_them(tmp_path, monkeypatch, change,
                                                           needle):
    """Runs of another rank or budget were averaged into a cell, under a text naming the
    first run's model and epochs."""
    for method in ("none", "sam"):
        for seed in (0, 1):
            config = _t2_config(method, seed, **(change if (method, seed) == ("sam", 1) else {}))
            _run(tmp_path / method / f"seed{seed}", config)
    with pytest.raises(SystemExit) as err:
        _build_table2(tmp_path, tmp_path / "t2.md", monkeypatch)
    message = str(err.value)
    assert "mixes runs of different settings" in message and needle in message
    assert "sam/seed1" in message and not (tmp_path / "t2.md").exists()


def test_table2_pairs_each_method_with_sgd_by_seed_and_reports_the_regime(tmp_path, monkeypatch):
    """DAS (layer) is a row of its own; the paired differences to SGD use the common seeds."""
    fit = {"fit/accuracy": 0.8, "fit/memorized": 0.7, "fit/clean": 0.1, "train/loss": 0.5}
    for method, gain in (("none", 0.0), ("das", 0.02), ("das_layer", 0.05)):
        for seed in (0, 1, 2):
            cfg = _t2_config("das" if method == "das_layer" else method, seed)
            if method == "das_layer":
                cfg["optimizer"]["normalization"] = "layer"
            base = 0.3 + seed / 10  # a seed effect that pairing removes
            _run(tmp_path / method / f"seed{seed}", cfg, value=base + gain * (1 + seed / 10),
                 **fit, **{"best/accuracy": base + 0.05})
    text = _build_table2(tmp_path, tmp_path / "t2.md", monkeypatch)
    diffs = {line.split(" | ")[1]: line.split(" | ") for line in text.splitlines()
             if line.startswith("| 60%") and " - SGD" in line}
    assert diffs["DAS - SGD"][2].startswith("+2.20 [") and diffs["DAS - SGD"][3] == "yes"
    assert diffs["DAS (layer) - SGD"][2].startswith("+5.50 [")
    assert diffs["DAS (layer) - SGD"][4] == "+0.00 [+0.00, +0.00]"  # best: no difference
    assert "| 60% | SGD | 80.0 | 70.0 | 10.0 |" in text
    settings = text[text.index("optimizer settings:"):]  # each DAS row shows its own settings
    assert "'DAS': {" in settings and "'DAS (layer)': {" in settings
    assert settings.count("'normalization': 'layer'") == 1  # the layer row's, not DAS's


def test_fastpath_check_pairs_the_arms_by_seed_and_splits_precision_from_layout(
        tmp_path, monkeypatch):
    for arm, shift in (("fp32", 0.0), ("bf16", 0.01), ("fast", 0.02)):
        for seed in (0, 1, 2):
            cfg = {**_t2_config("none", seed, epochs=50), "precision": arm}
            _run(tmp_path / arm / f"seed{seed}", cfg, value=0.3 + seed / 10 + shift * seed,
                 **{"best/accuracy": 0.5, "fit/memorized": 0.7 - shift})
    monkeypatch.setattr(sys, "argv", ["fastpath.py", "--root", str(tmp_path),
                                      "--out", str(tmp_path / "check.md")])
    fastpath.main()
    text = (tmp_path / "check.md").read_text()
    # per-seed differences fast - fp32: 0, 2, 4 points; bf16 - fp32 and fast - bf16: 0, 1, 2
    assert "| fast - fp32 | the fast path | final test acc. | +2.00 [-2.97, +6.97] | yes | 3 |" \
        in text
    assert "| bf16 - fp32 | bf16 autocast alone | final test acc. | +1.00 [-1.48, +3.48] |" in text
    assert "| fast - bf16 | channels_last alone | best test acc. | +0.00 [+0.00, +0.00] |" in text
    assert "| fit/memorized | 2 | 70.00 | 69.00 | 68.00 |" in text
    (tmp_path / "bf16").rename(tmp_path / "gone")  # the precision arm is optional
    fastpath.main()
    text = (tmp_path / "check.md").read_text()
    assert "bf16 - fp32" not in text and "| fast - fp32 | the fast path | final" in text


def test_final_state_returns_the_final_weights_and_refuses_others(tmp_path):
    """The one reader of a run's final weights: the checkpoint must be at the summary's last
    step of a finished run."""
    import torch

    from tensam.reports.runs import final_state

    state = {"w": torch.arange(3.0)}
    torch.save({"step": 10, "model": state}, tmp_path / "checkpoint.pt")
    with pytest.raises(ValueError, match="holds no finished run"):
        final_state(tmp_path)
    (tmp_path / "summary.json").write_text(json.dumps({"status": "finished", "steps": 10}))
    summary, loaded = final_state(tmp_path)
    assert summary["steps"] == 10 and torch.equal(loaded["w"], state["w"])
    (tmp_path / "summary.json").write_text(json.dumps({"status": "finished", "steps": 20}))
    with pytest.raises(ValueError, match="holds step 10, not the final step 20"):
        final_state(tmp_path)
    (tmp_path / "checkpoint.pt").unlink()
    with pytest.raises(ValueError, match="has no checkpoint.pt"):
        final_state(tmp_path)


def test_render_fills_a_template_and_refuses_a_gap_or_an_unused_field():
    from tensam.reports.format import render

    text = render("normdyn", root="r", date="d", title="T", n_layers=3, machine="m",
                  summary_table="S\n", n=5, agree=2, n_rows=3, note="", sign_table="X\n")
    assert "Agreement: **2 of 3 layers**." in text and "${" not in text
    with pytest.raises(KeyError):
        render("normdyn", root="r")  # the other placeholders have no value
    with pytest.raises(KeyError, match="no placeholder for"):
        render("normdyn", root="r", date="d", title="T", n_layers=3, machine="m", n=5,
               summary_table="S", agree=2, n_rows=3, note="", sign_table="X", typo=1)


def test_every_report_template_is_rendered_with_exactly_its_placeholders():
    """Statically, without running the analyses: each render("name", ...) call of the package
    passes the keyword fields that templates/name.md uses, and every template has a caller."""
    import ast
    import string
    from importlib.resources import files

    templates = files("tensam.reports").joinpath("templates")
    used = {}
    for path in (Path(__file__).resolve().parents[1] / "src" / "tensam").rglob("*.py"):
        for call in ast.walk(ast.parse(path.read_text())):
            if (isinstance(call, ast.Call) and getattr(call.func, "id", None) == "render"
                    and call.args and isinstance(call.args[0], ast.Constant)):
                used[call.args[0].value] = {k.arg for k in call.keywords}
    names = {t.name.removesuffix(".md") for t in templates.iterdir() if t.name.endswith(".md")}
    assert set(used) == names
    for name, fields in used.items():
        text = templates.joinpath(f"{name}.md").read_text()
        pattern = string.Template.pattern
        placeholders = {m.group("named") or m.group("braced") for m in pattern.finditer(text)}
        assert placeholders - {None} == fields, name


def _f3_config(method: str, seed: int, conv: str, rank: int, name: str = "fig3_cpu",
               **optimizer) -> dict:
    opt = node({"method": method, **optimizer, "base": {"name": "sgd", "lr": 0.1}})
    return {"name": name, "seed": seed, "steps": 0, "epochs": 25, "optimizer": opt,
            "task": {"_target_": "tensam.tasks.ImageClassification", "batch_size": 128,
                     "data": {"train_split": "train45k", "subset": 5000, "eval_split": "test"}},
            "model": {"_target_": "tensam.models.ResNet", "depth": 20, "conv": conv,
                      "rank": rank}}


def test_tuned_value_is_the_best_finished_run_smaller_on_ties(tmp_path, capsys):
    from tensam.reports.tuned import main as tuned_main

    scores = {0.001: 0.50, 0.005: 0.60, 0.01: 0.60, 0.05: 0.70, 0.1: 0.20}
    for rho, acc in scores.items():
        status = "diverged" if rho == 0.05 else "finished"  # a diverged run never wins
        _run(tmp_path / f"{rho}", _f3_config("sam", 0, "tr", 10, "fig3_cpu_tune", rho=rho),
             status=status, value=acc)
    tuned_main(["--root", str(tmp_path), "--key", "optimizer.rho"])
    out = capsys.readouterr()
    assert out.out == "0.005\n"  # 0.005 and 0.01 tie at 0.60: the smaller value
    assert "best of 4 finished of 5 runs" in out.err
    _run(tmp_path / "odd", _f3_config("sam", 0, "tr", 20, "fig3_cpu_tune", rho=0.1))
    with pytest.raises(SystemExit, match="mixes runs of different settings.*model.rank"):
        tuned_main(["--root", str(tmp_path), "--key", "optimizer.rho"])


def test_fig3_pairs_gains_with_sgd_by_seed_and_reports_the_tuned_values(tmp_path):
    from tensam.reports import fig3

    root, tune = tmp_path / "runs", tmp_path / "tune"
    for conv, rank in (("cp", 10), ("tr", 5)):
        for seed in (0, 1, 2):
            base = 0.6 + seed / 100  # a seed effect that pairing removes
            for method, gain, extra, loss in (("none", 0.0, {}, 0.3),
                                              ("sam", 0.01 * (1 + seed), {"rho": 0.05}, 0.6),
                                              ("das", -0.002, {"alpha": 0.01}, 0.5)):
                _run(root / f"{conv}{rank}" / method / f"seed{seed}",
                     _f3_config(method, seed, conv, rank, **extra), value=base + gain,
                     **{"train/loss": loss + seed / 10})
    for rho, acc in ((0.01, 0.55), (0.05, 0.58)):
        _run(tune / "tr5" / "rho" / f"{rho}",
             _f3_config("sam", 0, "tr", 5, "fig3_cpu_tune", rho=rho), value=acc)
    fig3.main(["--root", str(root), "--tune-root", str(tune), "--out", str(tmp_path / "f3")])
    text = (tmp_path / "f3.md").read_text()
    rows = {line.split(" | ")[0] + line.split(" | ")[1]: line.split(" | ")
            for line in text.splitlines()
            if line.startswith(("| CP", "| TR")) and line.count(" | ") == 8}  # the main table
    cp = rows["| CP10"]
    assert cp[3] == "61.00 ± 1.00" and cp[6].startswith("+2.00 [")  # SAM: +1, +2, +3 points
    assert cp[7] == "-0.20 [-0.20, -0.20]" and cp[8] == "3 / 3 / 3 |"
    assert "| TR | 5 | SAM | 0.05 | 58.00 | 0.01: 55.00, 0.05: 58.00 |" in text
    assert ("SAM - SGD: mean gain positive on 2 of 2 models; the 95% interval excludes 0 on 0 "
            "(0 above, 0 below)") in text  # gains 1, 2, 3: t-interval [-0.48, +4.48]
    assert ("DAS - SGD: mean gain positive on 0 of 2 models; the 95% interval excludes 0 on 2 "
            "(0 above, 2 below)") in text
    # pooled: every (model, seed) pair one observation; SAM gains 1, 2, 3 on each model:
    # mean 2, sd sqrt(0.8) over 6 pairs, t(0.975, 5) = 2.5706 -> half-width 0.94
    assert "| CP | 1 | 3 / 3 | +2.00 [-0.48, +4.48] | -0.20 [-0.20, -0.20] |" in text
    assert "| all models | 2 | 6 / 6 | +2.00 [+1.06, +2.94] | -0.20 [-0.20, -0.20] |" in text
    assert ("- SAM - SGD pooled (all models, 6 pairs): +2.00 [+1.06, +2.94] points; the "
            "interval lies above 0.") in text
    assert ("- SAM - SGD pooled (CP, all ranks, 3 pairs): +2.00 [-0.48, +4.48] points; the "
            "interval includes 0.") in text
    # 10 s per run, in minutes; train losses: method's + 0, 0.1, 0.2 over the seeds
    assert "| TR | 5 | 0.2 | 0.2 | 0.2 | 0.400 | 0.700 | 0.600 |" in text
    assert (tmp_path / "f3.png").stat().st_size > 0


def test_table3_and_table4_pair_methods_with_the_base_by_seed(tmp_path):
    for seed, (sgd, sam) in enumerate([(0.70, 0.74), (0.72, 0.77), (0.71, 0.75)]):
        _summary(tmp_path / "sgd" / f"seed{seed}", "none", seed, sgd, 0.98, 0.4)
        _summary(tmp_path / "sam" / f"seed{seed}", "sam", seed, sam, 0.985, 0.8)
    _, methods = table3.collect(table3.load_summaries(tmp_path))
    assert table3.paired(methods) == [["SAM - SGD", "+4.33 [+2.90, +5.77]", "yes", 3]]

    def runs(accs):
        return [{"accuracy": a, "config": {"task": {"data_seed": s}}} for s, a in enumerate(accs)]

    groups = {"FLoRA ADAM": {"sst2": runs([0.80, 0.82])}, "FLoRA SAM": {"sst2": runs([0.81, 0.85])},
              "FLoRA DAS": {"sst2": runs([0.80, 0.82])}, "full fine-tuning": {"sst2": runs([0.9])}}
    rows = table4.paired(groups)
    assert ["sst2", "FLoRA SAM - FLoRA ADAM", "+2.00 [-10.71, +14.71]", "no", 2] in rows
    assert ["sst2", "FLoRA DAS - FLoRA ADAM", "+0.00 [+0.00, +0.00]", "no", 2] in rows
    assert len(rows) == 2  # full fine-tuning has no base row of its own


def test_table4_labels_tasks_with_k_only_where_the_runs_hold_several():
    config = {"task": {"name": "sst2", "k": 16}}
    assert table4.task_label(config, {16}) == "sst2"
    assert table4.task_label(config, {16, 64}) == "sst2 k=16"


def _normdyn_run(path: Path, method: dict, seed: int, qs: list[float], covs: list[float],
                 k: int = 16, init: str = "reference") -> None:
    path.mkdir(parents=True)
    config = {"steps": 10 * (len(qs) - 1), "optimizer": node(method),
              "model": {"adapter": {"_target_": "tensam.adapters.FLoRALinear", "init": init}},
              "task": {"name": "sst2", "k": k, "data_seed": seed}}
    path.joinpath("summary.json").write_text(json.dumps({"status": "finished",
                                                         "config": config}))
    path.joinpath("metrics.jsonl").write_text("".join(
        json.dumps({"step": 10 * i, "norm/Q": q, "norm/cov": c, "norm/a/Q": q, "norm/a/cov": c})
        + "\n" for i, (q, c) in enumerate(zip(qs, covs, strict=True))))


def test_normdyn_adapters_pairs_q_ratios_by_seed_and_keeps_the_chosen_settings(tmp_path):
    from tensam.reports import normdyn_adapters

    adam = {"base": {"name": "adam"}}
    sam = {"method": "sam", "rho": 0.1, "base": {"name": "adam"}}
    for seed, (a, s) in enumerate([(0.9, 0.8), (1.0, 0.8)]):
        _normdyn_run(tmp_path / "adam" / str(seed), adam, seed, [10.0, 10 * a], [-1.0, 1.0])
        _normdyn_run(tmp_path / "sam" / str(seed), sam, seed, [10.0, 10 * s], [-1.0, -1.0])
    # left out: another rho, another k, and a zero-shot run (no step)
    _normdyn_run(tmp_path / "sam_other", {**sam, "rho": 0.01}, 0, [10.0, 1.0], [0.0, 0.0])
    _normdyn_run(tmp_path / "k64", adam, 0, [10.0, 1.0], [0.0, 0.0], k=64)
    _normdyn_run(tmp_path / "zero_shot", adam, 0, [10.0], [0.0])
    panels = normdyn_adapters.load([tmp_path], k=16, rho=0.1, alpha=0.5)
    assert list(panels) == [("FLoRA", "reference")]
    assert {m: sorted(v) for m, v in panels[("FLoRA", "reference")].items()} == {
        "ADAM": [0, 1], "SAM": [0, 1]}
    rows = {r[2]: r for r in normdyn_adapters.rows(panels)}
    assert rows["ADAM"][3:7] == [2, "10", "0.9500 ± 0.0707", "-"]
    assert rows["SAM"][5] == "0.8000 ± 0.0000"
    assert rows["SAM"][6] == "-0.1500 [-0.7853, +0.4853]"  # differences -0.1, -0.2; t(1) 12.706
    assert rows["ADAM"][7] == "0.500" and rows["SAM"][7] == "1.000"  # share of Cov_l < 0
    normdyn_adapters.plot(panels, tmp_path / "f.png", "T")
    assert (tmp_path / "f.png").stat().st_size > 0


# -- stage wall times of a reproduction target (tensam.reports.stages) ---------------------------

def test_stage_log_records_each_stage_and_passes_the_exit_status_on(tmp_path):
    from tensam.reports import stages

    log = tmp_path / "runs" / "stages.jsonl"
    ok = [sys.executable, "-c", "import time; time.sleep(0.2)"]
    assert stages.main(["--log", str(log), "--stage", "training", "--", *ok]) == 0
    assert stages.main(["--log", str(log), "--stage", "hooi", "--", sys.executable, "-c",
                        "raise SystemExit(3)"]) == 3
    assert stages.main(["--log", str(log), "--stage", "training", "--", *ok]) == 0
    with open(log, "a") as f:
        f.write('{"stage": "diagnostics", "sec')  # torn by a kill
    records = [json.loads(line) for line in log.read_text().splitlines()[:3]]
    assert [r["stage"] for r in records] == ["training", "hooi", "training"]
    assert [r["status"] for r in records] == [0, 3, 0]
    assert all(0.2 <= r["seconds"] < 30 for r in (records[0], records[2]))
    latest = stages.latest(log)  # the last successful record of each stage, failures left out
    assert list(latest) == ["training"] and latest["training"] == records[2]
    assert stages.latest(tmp_path / "absent.jsonl") == {}


def test_process_seconds_counts_from_the_start_of_the_process():
    import subprocess

    out = subprocess.run([sys.executable, "-c", "import time; time.sleep(0.5); "
                          "from tensam.reports.stages import process_seconds as p; print(p())"],
                         capture_output=True, text=True, check=True).stdout
    assert 0.5 <= float(out) < 30


def test_table1_prints_the_stage_times_of_its_target(tmp_path):
    _table1(tmp_path / "runs")
    text = _build_table1(tmp_path / "runs", tmp_path / "out")
    assert "Stage wall times are not recorded for these runs (no `stages.jsonl`" in text
    (tmp_path / "runs" / "stages.jsonl").write_text("\n".join(json.dumps(
        {"stage": s, "seconds": t, "started": "2026-12-06 20:00 UTC", "load": 0.5, "cpus": 2,
         "status": 0}) for s, t in (("training", 600.0), ("hooi", 96.0),
                                    ("diagnostics", 30.0))) + "\n")
    text = _build_table1(tmp_path / "runs", tmp_path / "out2")
    assert "| training (18 gradient runs, 2 at a time) | 600 | 2026-12-06 20:00 UTC | 0.50 |" \
        in text
    assert "| HOOI (6 runs of 0 steps with baselines, 2 at a time) | 96 |" in text
    total = re.search(r"Total (\d+) s \((\d+\.\d) min\) on 2 CPUs", text)
    assert total and 726 <= int(total.group(1)) <= 730
