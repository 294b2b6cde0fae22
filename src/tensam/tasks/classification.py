"""Classification from data loaders: the task seam for minibatch training (CIFAR-10, GLUE, ...).

Training batches come from a ``DataLoader`` over the batches of an :class:`EpochOrder` (a
seeded ``DistributedSampler`` per epoch: each rank its own shard, every epoch a new order, and
a resumed run draws exactly the batches an uninterrupted one would, nothing loaded twice).
Batches are moved to the model's device. Evaluation runs over the evaluation set in batches.
"""

from __future__ import annotations

from collections.abc import Iterator
from functools import cached_property

import torch
import torch.distributed as dist
from torch import nn
from torch.nn import functional as F
from torch.utils.data import DataLoader, DistributedSampler

from tensam.errors import ConfigError
from tensam.tasks.base import Task


class EpochOrder:
    """This rank's order of a training set of ``size`` examples, in whole batches: torch's
    ``DistributedSampler`` (``world`` replicas, ``rank`` this one; by default from the process
    group, one replica outside ``torchrun``) seeded by ``seed`` with the epoch set every epoch,
    so each rank sees its own shard and every epoch a new order. A run resumed at step t draws
    exactly the batches an uninterrupted run would (the epoch's order is rebuilt and its first
    batches skipped by index). Every task that trains on examples in epochs owns one."""

    def __init__(self, size: int, batch_size: int, seed: int = 0, rank: int | None = None,
                 world: int | None = None):
        group = dist.is_initialized()
        self.rank = rank if rank is not None else (dist.get_rank() if group else 0)
        self.world = world if world is not None else (dist.get_world_size() if group else 1)
        self.size, self.batch_size, self.seed = size, batch_size, seed
        self.steps_per_epoch = size // (batch_size * self.world)
        if self.steps_per_epoch < 1:
            raise ConfigError(f"task.batch_size={batch_size} x {self.world} process(es) "
                              f"exceeds the {size} training examples")

    def epoch_indices(self, epoch: int) -> list[int]:
        """This rank's example order in ``epoch`` (whole batches only)."""
        sampler = DistributedSampler(range(self.size), num_replicas=self.world, rank=self.rank,
                                     shuffle=True, seed=self.seed, drop_last=True)
        sampler.set_epoch(epoch)
        return list(sampler)[: self.steps_per_epoch * self.batch_size]

    def batch_indices(self, start_step: int = 0) -> Iterator[list[int]]:
        """This rank's example indices of each training batch from ``start_step`` on: the
        epochs' orders in turn, the first epoch's earlier batches skipped by index."""
        epoch, skip = divmod(start_step, self.steps_per_epoch)
        while True:
            order = self.epoch_indices(epoch)
            for i in range(skip, self.steps_per_epoch):
                yield order[i * self.batch_size:(i + 1) * self.batch_size]
            epoch, skip = epoch + 1, 0


class Classification(Task):
    """Cross-entropy on ``data.train`` (``data`` a :mod:`tensam.data` set); accuracy and mean
    loss on ``data.eval``."""

    metrics = {"accuracy": True, "top5": True, "loss": False}
    primary_metric = "accuracy"

    def __init__(self, data, batch_size: int = 128, eval_batch_size: int = 512,
                 num_workers: int = 0, data_seed: int = 0):
        if batch_size < 1 or eval_batch_size < 1 or num_workers < 0:
            raise ConfigError(f"task.batch_size={batch_size}, task.eval_batch_size="
                              f"{eval_batch_size} must be >= 1 and task.num_workers >= 0")
        self.data, self.batch_size, self.eval_batch_size = data, batch_size, eval_batch_size
        self.num_workers, self.data_seed = num_workers, data_seed

    @cached_property
    def order(self) -> EpochOrder:
        return EpochOrder(len(self.data.train), self.batch_size, self.data_seed)

    @property
    def steps_per_epoch(self) -> int:
        return self.order.steps_per_epoch

    def batch_indices(self, start_step: int = 0) -> Iterator[list[int]]:
        return self.order.batch_indices(start_step)

    def model_inputs(self) -> dict:
        return {"input_shape": tuple(self.data.input_shape), "num_classes": self.data.num_classes}

    def _loader(self, dataset, **batching) -> DataLoader:
        return DataLoader(dataset, num_workers=self.num_workers,
                          pin_memory=self.device.type == "cuda", **batching)

    def _to_device(self, batch):
        x, y = batch
        return x.to(self.device, non_blocking=True), y.to(self.device, non_blocking=True)

    def batches(self, start_step: int = 0) -> Iterator:
        for batch in self._loader(self.data.train, batch_sampler=self.batch_indices(start_step)):
            yield self._to_device(batch)

    def loss(self, model: nn.Module, batch) -> torch.Tensor:
        x, y = batch
        return F.cross_entropy(model(x), y)

    def eval_batches(self) -> Iterator:
        """The evaluation set in batches of ``eval_batch_size``, on the task's device."""
        for batch in self._loader(self.data.eval, batch_size=self.eval_batch_size):
            yield self._to_device(batch)

    def evaluate(self, model: nn.Module, test: bool = True) -> dict[str, float]:
        """Top-1 (``accuracy``) and top-5 (``top5``; top-C below 5 classes) accuracy and the
        mean cross-entropy over the evaluation set."""
        correct, top5, total, loss = 0, 0, 0, 0.0
        for x, y in self.eval_batches():
            logits = model(x)
            loss += float(F.cross_entropy(logits, y, reduction="sum"))
            best = logits.topk(min(5, logits.shape[1]), dim=1).indices
            correct += int((best[:, 0] == y).sum())
            top5 += int((best == y[:, None]).any(1).sum())
            total += len(y)
        return {"accuracy": correct / total, "top5": top5 / total, "loss": loss / total}

    def info(self) -> dict:
        return self.data.info() if hasattr(self.data, "info") else {}
