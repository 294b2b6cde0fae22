"""The table builders of scripts/ (Tables 3, 4 and 5) on hand-made run summaries: the numbers they
print are the means, standard deviations and ratios of what the runs recorded."""

import json
import sys
from pathlib import Path

import pytest

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "scripts"))
import make_table3  # noqa: E402
import make_table4  # noqa: E402
import make_table5  # noqa: E402
from _common import best_on_validation, interleaved_times  # noqa: E402


def _summary(path: Path, method: str, seed: int, acc: float, top5: float, s_step: float,
             **extra) -> None:
    optimizer = {"method": method, "base": {"name": "sgd"}}
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
    single, methods = make_table3.collect(make_table3.load_summaries(tmp_path))
    rows = {r[0]: r for r in make_table3.rows(single, methods)}
    assert rows["before fine-tuning"][1:3] == ["30.00", "90.00"]
    assert rows["before fine-tuning"][3:5] == ["36.74", "64.32"]  # the paper's
    assert rows["SGD"][1] == "71.00 ± 1.41" and rows["SAM"][1] == "75.00 ± 1.41"
    assert rows["SGD"][5] == "82%" and rows["SAM"][5] == "90%"  # (71-30)/(80-30), (75-30)/50
    assert rows["SAM"][7] == "2.00x" and rows["SAM"][8] == 0.425
    assert rows["SGD"][9] == 2 and rows["SGD"][10] == "0, 1"


def test_table4_names_rows_by_adapter_and_method():
    def cfg(kind, method, base="adam", **adapter):
        return {"model": {"adapter": {"kind": kind, **adapter}},
                "optimizer": {"method": method, "base": {"name": base}}}

    assert make_table4.row_name(cfg("none", "none")) == "full fine-tuning"
    assert make_table4.row_name(cfg("lora", "none", r=8)) == "LoRA (r 8)"
    assert make_table4.row_name(cfg("flora", "das")) == "FLoRA DAS"
    assert make_table4.row_name(cfg("loretta_rep", "none")) == "LoRETTA_rep ADAM"
    names = ["FLoRA DAS", "LoRETTA_rep ADAM", "full fine-tuning", "FLoRA ADAM", "LoRA (r 8)",
             "FLoRA SAM"]
    assert sorted(names, key=make_table4._order) == [
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
    single, methods = make_table3.collect(make_table3.load_summaries(tmp_path))
    rows = {r[0]: r for r in make_table3.rows(single, methods)}
    assert rows["SGD"][5] == "-" and rows["SGD"][1] == "70.00"


def _t5(path: Path, task: str, method: str, seed: int, val: float, acc: float, f1: float,
        steps: int = 10) -> None:
    path.mkdir(parents=True)
    path.joinpath("summary.json").write_text(json.dumps({
        "status": "finished", "accuracy": acc, "val_accuracy": val, "f1": f1, "val_f1": 1 - val,
        "seconds": 10.0, "seconds_per_step": 0.5, "model_info": {"trainable": 1234},
        "config": {"steps": steps, "epochs": None, "presets": {},
                   "optimizer": {"method": method, "base": {"name": "adamw"}},
                   "model": {"pretrained": "facebook/opt-6.7b",
                             "adapter": {"kind": "loretta_rep"}},
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
    monkeypatch.setattr(sys, "argv", ["make_table5.py", "--root", str(tmp_path), "--out",
                                      str(out)])
    make_table5.main()
    rows = {line.split(" | ")[0].strip("| "): line.split(" | ") for line in
            out.read_text().splitlines() if line.startswith("| ")}
    assert rows["LoRETTA_rep DAS"][2:4] == ["75.0 ± 7.1", "82.1"]  # mean of 70 and 80; paper
    assert rows["zero-shot"][1:4] == ["-", "50.0", "60.7"]  # one run: no std
    assert make_table5.metric("cb", "text") == "f1" and make_table5.metric("copa", "text") == (
        "accuracy")
    assert make_table5.metric("squad", "code") == "f1"
