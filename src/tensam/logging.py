"""Run logging: always local ``metrics.jsonl`` + ``summary.json``; W&B when enabled.

W&B is never required: ``logger.wandb.mode`` (default from ``WANDB_MODE``, else ``offline``)
may be ``online``, ``offline`` or ``disabled``; tables are rebuilt from the local files alone.
"""

from __future__ import annotations

import json
import os
import tempfile
from collections.abc import Mapping
from pathlib import Path
from typing import Any

WANDB_MODES = ("online", "offline", "disabled")
_UMASK = os.umask(0)
os.umask(_UMASK)


def atomic_write_text(path: Path, text: str) -> None:
    """Write ``text`` to ``path`` so that a crash leaves either the old or the new file."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.")
    os.chmod(tmp, 0o666 & ~_UMASK)  # mkstemp creates 0600; give the file normal permissions
    with os.fdopen(fd, "w") as f:
        f.write(text)
        f.flush()
        os.fsync(f.fileno())
    os.replace(tmp, path)


class RunLogger:
    """Appends step records to ``metrics.jsonl``; mirrors them to W&B when a run is open."""

    def __init__(self, run_dir: Path, config: Mapping[str, Any] | None = None,
                 wandb_cfg: Mapping[str, Any] | None = None, resume_step: int = 0):
        self.run_dir = Path(run_dir)
        self.run_dir.mkdir(parents=True, exist_ok=True)
        self.metrics_path = self.run_dir / "metrics.jsonl"
        self._truncate_after(resume_step)
        self._file = open(self.metrics_path, "a")
        self.wandb = self._open_wandb(dict(wandb_cfg or {}), dict(config or {}))

    def _truncate_after(self, step: int) -> None:
        """On resume, drop records past the checkpoint so the log matches the restored state."""
        if not self.metrics_path.exists():
            return
        keep = [ln for ln in self.metrics_path.read_text().splitlines()
                if ln.strip() and json.loads(ln).get("step", 0) < step]
        atomic_write_text(self.metrics_path, "".join(ln + "\n" for ln in keep))

    def _open_wandb(self, cfg: dict, config: dict):
        mode = cfg.pop("mode", None) or os.environ.get("WANDB_MODE", "offline")
        if mode not in WANDB_MODES:
            raise ValueError(f"logger.wandb.mode={mode!r} is not one of {list(WANDB_MODES)}")
        if mode == "disabled":
            return None
        import wandb

        return wandb.init(mode=mode, dir=str(self.run_dir), config=config, reinit="finish_previous",
                          resume="allow", **cfg)

    def log(self, record: Mapping[str, Any], step: int) -> None:
        self._file.write(json.dumps({"step": step, **record}) + "\n")
        self._file.flush()
        if self.wandb is not None:
            self.wandb.log(dict(record), step=step)

    def finish(self, summary: Mapping[str, Any]) -> None:
        atomic_write_text(self.run_dir / "summary.json", json.dumps(summary, indent=2) + "\n")
        self._file.close()
        if self.wandb is not None:
            self.wandb.summary.update(dict(summary))
            self.wandb.finish()
