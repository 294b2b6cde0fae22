"""SAM and DAS under DistributedDataParallel equal single-process training on the full batch.

Two CPU processes (gloo) each see half of the batch; DDP averages the gradients of *both*
backward passes of SAM, so every rank perturbs with the global gradient and all ranks stay in
sync. DAS reads the already averaged gradients.
"""

import os
import socket

import pytest
import torch
import torch.distributed as dist
import torch.multiprocessing as mp
from torch import nn
from torch.nn import functional as F
from toys import make_optimizer

from tensam.tensorized import Tucker

STEPS = 5
OPTIMIZERS = {
    "sam": {"method": "sam", "rho": 0.05, "base": {"name": "sgd", "lr": 0.1, "momentum": 0.9}},
    "das": {"method": "das", "alpha": 0.5, "base": {"name": "adam", "lr": 0.01}},
}


class FactorizedMLP(nn.Module):
    """x -> relu(W x) -> head, with W = A G B^T a Tucker-2 core group (K = 3)."""

    def __init__(self):
        super().__init__()
        self.weight = Tucker((8, 6), (3, 3), init="normal", std=0.5, seed=0, dtype=torch.float64)
        self.head = nn.Linear(8, 1, dtype=torch.float64)

    def forward(self, x):
        return self.head(F.relu(F.linear(x, self.weight())))


def _data():
    gen = torch.Generator().manual_seed(1)
    return torch.randn(16, 6, generator=gen, dtype=torch.float64), torch.randn(16, 1, generator=gen,
                                                                               dtype=torch.float64)


def _train(model, cfg, x, y):
    torch.manual_seed(0)
    optimizer = make_optimizer(cfg, model, total_steps=STEPS)
    def closure():
        optimizer.zero_grad()
        loss = F.mse_loss(model(x), y)
        loss.backward()
        return loss

    for _ in range(STEPS):
        optimizer.step(closure)
    return [p.detach().clone() for p in model.parameters()]


def _worker(rank, world, port, name, out):
    os.environ.update(MASTER_ADDR="127.0.0.1", MASTER_PORT=str(port))
    dist.init_process_group("gloo", rank=rank, world_size=world)
    torch.manual_seed(0)
    model = nn.parallel.DistributedDataParallel(FactorizedMLP())
    x, y = _data()
    shard = slice(rank * 8, (rank + 1) * 8)
    params = _train(model, OPTIMIZERS[name], x[shard], y[shard])
    out[rank] = params
    dist.destroy_process_group()


def _free_port():
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@pytest.mark.parametrize("name", sorted(OPTIMIZERS))
def test_ddp_matches_single_process(name):
    torch.manual_seed(0)
    x, y = _data()
    reference = _train(FactorizedMLP(), OPTIMIZERS[name], x, y)
    out = mp.Manager().dict()
    mp.spawn(_worker, args=(2, _free_port(), name, out), nprocs=2, join=True)
    for rank in range(2):
        for p, q in zip(out[rank], reference, strict=True):
            torch.testing.assert_close(p, q, rtol=1e-10, atol=1e-12)


def test_torchrun_entry_point_matches_single_process(tmp_path):
    """``torchrun --nproc_per_node 2 train.py`` (gloo) gives the single-process result; rank 0
    alone writes the run directory."""
    import json
    import subprocess
    import sys
    from pathlib import Path

    root = Path(__file__).resolve().parents[1]
    args = ["experiment=table1", "optimizer=sam", "steps=30", "log_every=10", "logger=disabled"]
    env = {**os.environ, "OMP_NUM_THREADS": "1"}

    def summary(cmd, out):
        subprocess.run([*cmd, str(root / "train.py"), *args, f"hydra.run.dir={out}"], check=True,
                       capture_output=True, text=True, cwd=tmp_path, env=env, timeout=300)
        return json.loads((out / "summary.json").read_text())

    single = summary([sys.executable], tmp_path / "single")
    multi = summary([sys.executable, "-m", "torch.distributed.run", "--nproc_per_node", "2",
                     f"--master_port={_free_port()}"], tmp_path / "multi")
    assert multi["world_size"] == 2 and single["world_size"] == 1
    for key in ("r2_heldout", "r2_observed", "train/loss", "norm/Q"):
        assert multi[key] == pytest.approx(single[key], rel=1e-5), key
    assert "norm/Tucker/Q" in multi  # layer names as without DDP
