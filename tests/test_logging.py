"""RunLogger: offline fallback, run-id reuse on resume, strict JSON, torn-line recovery."""

from __future__ import annotations

import json
import socket
import time

import numpy as np
import pytest
import torch

import tensam.logging as tlog
from tensam.logging import RunLogger


@pytest.fixture(autouse=True)
def _wandb_sandbox(tmp_path, monkeypatch):
    """Quiet W&B with all of its state under tmp_path and no API key from the environment."""
    for name in ("DIR", "CACHE_DIR", "CONFIG_DIR", "DATA_DIR"):
        path = tmp_path / f"wandb_{name.lower()}"
        path.mkdir()
        monkeypatch.setenv(f"WANDB_{name}", str(path))
    monkeypatch.setenv("WANDB_SILENT", "true")
    monkeypatch.setenv("WANDB_ERROR_REPORTING", "false")
    for name in ("WANDB_MODE", "WANDB_API_KEY", "WANDB_BASE_URL", "WANDB_RUN_ID", "WANDB_RESUME"):
        monkeypatch.delenv(name, raising=False)


def _free_port() -> int:
    """A local port that nothing listens on (bound, read, released)."""
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _strict_loads(text: str):
    """json.loads that fails on the NaN/Infinity extensions Python accepts by default."""
    def reject(name):
        raise AssertionError(f"non-standard JSON constant {name}")
    return json.loads(text, parse_constant=reject)


def test_online_unreachable_server_falls_back_to_offline(tmp_path, monkeypatch, capsys):
    url = f"http://127.0.0.1:{_free_port()}"
    monkeypatch.setenv("WANDB_BASE_URL", url)
    monkeypatch.setenv("WANDB_API_KEY", "x" * 40)  # a logged-in user whose network is down
    start = time.monotonic()
    logger = RunLogger(tmp_path / "run", {"lr": 0.1}, wandb={"mode": "online", "project": "t"})
    assert time.monotonic() - start < 10
    assert logger.wandb.settings.mode == "offline"
    logger.log({"loss": 1.0}, 0)
    logger.finish({"loss": 1.0})
    lines = capsys.readouterr().err.splitlines()
    assert len(lines) == 1 and f"W&B server {url} unreachable" in lines[0]
    assert "wandb sync" in lines[0]


def test_online_init_error_falls_back_to_offline(tmp_path, monkeypatch, capsys):
    """The server accepts connections but wandb.init fails (here: it times out)."""
    with socket.socket() as server:  # accepts TCP connections, never answers HTTP
        server.bind(("127.0.0.1", 0))
        server.listen(16)
        monkeypatch.setenv("WANDB_BASE_URL", f"http://127.0.0.1:{server.getsockname()[1]}")
        monkeypatch.setenv("WANDB_API_KEY", "x" * 40)
        monkeypatch.setattr(tlog, "INIT_TIMEOUT_S", 1.0)
        start = time.monotonic()
        logger = RunLogger(tmp_path / "run", wandb={"mode": "online", "project": "t"})
        assert time.monotonic() - start < 15
    assert logger.wandb.settings.mode == "offline"
    logger.finish({})
    lines = capsys.readouterr().err.splitlines()
    assert len(lines) == 1 and "W&B online init failed" in lines[0]


def test_resume_reuses_run_id_and_fresh_start_does_not(tmp_path):
    run_dir, cfg = tmp_path / "run", {"mode": "offline", "project": "t"}
    first = RunLogger(run_dir, wandb=cfg)
    run_id = first.wandb_run_id
    first.log({"loss": 1.0}, 0)
    first.finish({})
    assert (run_dir / "wandb_run_id").read_text().strip() == run_id

    resumed = RunLogger(run_dir, wandb=cfg, resume_step=1)
    assert resumed.wandb_run_id == run_id
    resumed.finish({})

    fresh = RunLogger(run_dir, wandb=cfg, resume_step=0)
    assert fresh.wandb_run_id != run_id
    fresh.finish({})
    assert (run_dir / "wandb_run_id").read_text().strip() == fresh.wandb_run_id


def test_disabled_writes_no_run_id(tmp_path):
    logger = RunLogger(tmp_path, wandb={"mode": "disabled"})
    assert logger.wandb_run_id is None
    logger.finish({})
    assert not (tmp_path / "wandb_run_id").exists()
    assert not (tmp_path / "wandb").exists()


def test_non_finite_values_are_written_as_null(tmp_path):
    logger = RunLogger(tmp_path, wandb={"mode": "disabled"})
    logger.log({"loss": float("nan"), "grad": torch.tensor(float("inf")),
                "np": np.float32("-inf"), "nested": {"a": [1.0, float("nan")]}}, 0)
    logger.log({"loss": torch.tensor(0.5), "vec": np.array([1.0, np.nan])}, 1)
    logger.finish({"best": float("nan"), "config": {"rho": float("inf")}, "ok": 2})
    records = [_strict_loads(ln) for ln in (tmp_path / "metrics.jsonl").read_text().splitlines()]
    assert records == [
        {"step": 0, "loss": None, "grad": None, "np": None, "nested": {"a": [1.0, None]}},
        {"step": 1, "loss": 0.5, "vec": [1.0, None]},
    ]
    summary = _strict_loads((tmp_path / "summary.json").read_text())
    assert summary == {"best": None, "config": {"rho": None}, "ok": 2}


def test_resume_drops_torn_line_and_later_steps(tmp_path, capsys):
    metrics = tmp_path / "metrics.jsonl"
    metrics.write_text('{"step": 0, "loss": 1.0}\n{"step": 1, "loss": 0.5}\n'
                       '{"step": 2, "loss": 0.2}\n{"step": 3, "lo')
    logger = RunLogger(tmp_path, wandb={"mode": "disabled"}, resume_step=2)
    logger.log({"loss": 0.3}, 2)
    logger.finish({})
    steps = [_strict_loads(ln)["step"] for ln in metrics.read_text().splitlines()]
    assert steps == [0, 1, 2]
    lines = capsys.readouterr().err.splitlines()
    assert len(lines) == 1 and "dropped 1 torn line" in lines[0]
