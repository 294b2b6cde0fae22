"""Run logging: always local ``metrics.jsonl`` + ``summary.json``; W&B when enabled.

W&B is never required: ``logger.wandb.mode`` (default from ``WANDB_MODE``, else ``offline``)
may be ``online``, ``offline`` or ``disabled``; tables are rebuilt from the local files alone.
An ``online`` run whose server cannot be reached logs offline instead (one line on stderr), and
a resumed run re-opens the W&B run whose id is stored in ``<run_dir>/wandb_run_id``.
"""

from __future__ import annotations

import json
import math
import os
import socket
import sys
import tempfile
from collections.abc import Mapping
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

from tensam.errors import ConfigError

WANDB_MODES = ("online", "offline", "disabled")
PROBE_TIMEOUT_S = 3.0  # TCP connect to the W&B server before an online init
INIT_TIMEOUT_S = 30.0  # wandb.Settings.init_timeout (wandb's default is 90 s)
_UMASK = os.umask(0)
os.umask(_UMASK)


def atomic_write_text(path: Path, text: str) -> None:
    """Write ``text`` to ``path`` so that a crash leaves either the old or the new file."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.")
    try:  # a failed write (a full disk) leaves the old file and no temporary file behind
        os.chmod(tmp, 0o666 & ~_UMASK)  # mkstemp creates 0600; give the file normal permissions
        with os.fdopen(fd, "w") as f:
            f.write(text)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise


def json_safe(value: Any) -> Any:
    """``value`` as plain JSON types: tensors/arrays/numpy scalars unwrapped, NaN/inf -> None."""
    if hasattr(value, "tolist"):  # torch.Tensor, numpy arrays and scalars
        value = value.tolist()
    if isinstance(value, Mapping):
        return {k: json_safe(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [json_safe(v) for v in value]
    if isinstance(value, float) and not math.isfinite(value):
        return None
    return value


def dumps(value: Any, **kwargs: Any) -> str:
    """Strict JSON (never bare ``NaN``/``Infinity``) for ``value`` after :func:`json_safe`."""
    return json.dumps(json_safe(value), allow_nan=False, **kwargs)


def probe_server(url: str, timeout: float = PROBE_TIMEOUT_S) -> str | None:
    """Why a TCP connection to ``url``'s host and port fails within ``timeout`` s, or None."""
    parts = urlsplit(url)
    port = parts.port or (443 if parts.scheme == "https" else 80)
    try:
        socket.create_connection((parts.hostname or "", port), timeout=timeout).close()
    except OSError as err:
        return str(err) or type(err).__name__
    return None


class RunLogger:
    """Appends step records to ``metrics.jsonl``; mirrors them to W&B when a run is open."""

    def __init__(self, run_dir: Path, config: Mapping[str, Any] | None = None,
                 resume_step: int = 0, wandb: Mapping[str, Any] | None = None):
        self.run_dir = Path(run_dir)
        self.run_dir.mkdir(parents=True, exist_ok=True)
        self.metrics_path = self.run_dir / "metrics.jsonl"
        self.run_id_path = self.run_dir / "wandb_run_id"
        self._truncate_after(resume_step)
        self._file = open(self.metrics_path, "a")
        self.wandb = self._open_wandb(dict(wandb or {}), dict(config or {}), resume_step)

    @property
    def wandb_run_id(self) -> str | None:
        """Id of the open W&B run; None when W&B is disabled."""
        return None if self.wandb is None else self.wandb.id

    def _truncate_after(self, step: int) -> None:
        """On resume, drop records past the checkpoint so the log matches the restored state.

        Lines that do not decode (torn by a kill mid-write) are dropped with one line on stderr.
        """
        if not self.metrics_path.exists():
            return
        keep, torn = [], 0
        for line in self.metrics_path.read_text(errors="replace").splitlines():
            if not line.strip():
                continue
            try:
                record = json.loads(line)
            except ValueError:
                torn += 1
                continue
            if record.get("step", 0) < step:
                keep.append(dumps(record) + "\n")
        atomic_write_text(self.metrics_path, "".join(keep))
        if torn:
            print(f"tensam: dropped {torn} torn line(s) from {self.metrics_path}", file=sys.stderr)

    def _open_wandb(self, cfg: dict, config: dict, resume_step: int):
        """Open the W&B run (or None when disabled), falling back from online to offline.

        Keys of ``cfg`` other than ``mode`` are passed to ``wandb.init`` and override ours.
        """
        mode = cfg.pop("mode", None) or os.environ.get("WANDB_MODE", "offline")
        if mode not in WANDB_MODES:
            raise ConfigError(f"logger.wandb.mode={mode!r} is not one of {list(WANDB_MODES)}")
        if mode == "disabled":
            return None
        import wandb

        kwargs = {"dir": str(self.run_dir), "config": config, "reinit": "finish_previous",
                  "settings": wandb.Settings(init_timeout=INIT_TIMEOUT_S)}
        if resume_step > 0 and self.run_id_path.exists():
            kwargs.update(id=self.run_id_path.read_text().strip(), resume="allow")
        kwargs.update(cfg)

        run = None
        if mode == "online":
            url = os.environ.get("WANDB_BASE_URL", "https://api.wandb.ai")
            reason = probe_server(url)
            problem = None if reason is None else f"W&B server {url} unreachable ({reason})"
            if problem is None:
                try:
                    run = wandb.init(mode="online", **kwargs)
                except Exception as err:  # whatever went wrong online, keep training offline
                    first_line = (str(err).strip() or type(err).__name__).splitlines()[0]
                    problem = f"W&B online init failed ({first_line})"
            if problem is not None:
                print(f"tensam: {problem}; logging offline, sync later with "
                      f"'wandb sync {self.run_dir / 'wandb'}'", file=sys.stderr)
        if run is None:
            run = wandb.init(mode="offline", **kwargs)
        atomic_write_text(self.run_id_path, run.id + "\n")
        return run

    def log(self, record: Mapping[str, Any], step: int) -> None:
        """Append ``{"step": step, **record}`` to ``metrics.jsonl`` and to the W&B run."""
        self._file.write(dumps({"step": step, **record}) + "\n")
        self._file.flush()
        if self.wandb is not None:
            self.wandb.log(dict(record), step=step)

    def finish(self, summary: Mapping[str, Any]) -> None:
        """Write ``summary.json``, close the local log and finish the W&B run."""
        atomic_write_text(self.run_dir / "summary.json", dumps(summary, indent=2) + "\n")
        self._file.close()
        if self.wandb is not None:
            self.wandb.summary.update(dict(summary))
            self.wandb.finish()
