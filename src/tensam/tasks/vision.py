"""Image classification from uint8 tensors kept on the model's device (CIFAR-10, Sec. 5.2).

The images stay uint8 on the device (:meth:`ImageClassification.to` moves them once); each
training batch is gathered there by index, normalised and augmented with batched tensor ops: a
random crop of the image zero-padded by 4 pixels (after normalisation, i.e. padded with the mean
colour) and a horizontal flip with probability 1/2. The shifts and flips of step t are drawn on
the CPU from a generator seeded by (``data_seed``, t, rank), so they are the same on every device
and a resumed run sees exactly the augmentations of an uninterrupted one. The example order is
:class:`~tensam.tasks.Classification`'s (DistributedSampler epochs, resume by index skipping).
Evaluation normalises without augmentation.
"""

from __future__ import annotations

import time
from collections.abc import Iterator

import numpy as np
import torch
from torch import nn
from torch.nn import functional as F

from tensam.tasks.classification import Classification


def normalize(images: torch.Tensor, mean: torch.Tensor, std: torch.Tensor) -> torch.Tensor:
    """uint8 (B, C, H, W) -> float32 ``(x / 255 - mean) / std`` per channel."""
    return images.float().div_(255).sub_(mean.view(-1, 1, 1)).div_(std.view(-1, 1, 1))


def crop_flip_params(batch: int, generator: torch.Generator, pad: int = 4):
    """Per image: the crop's row and column offsets in [0, 2 pad] and whether to flip."""
    offsets = torch.randint(0, 2 * pad + 1, (2, batch), generator=generator)
    return offsets[0], offsets[1], torch.rand(batch, generator=generator) < 0.5


def crop_flip(x: torch.Tensor, dy: torch.Tensor, dx: torch.Tensor, flip: torch.Tensor,
              pad: int = 4) -> torch.Tensor:
    """Image i of ``x`` (B, C, H, W) zero-padded by ``pad``, cropped to H x W at (dy_i, dx_i)
    and mirrored left-right where ``flip_i``: one gather for the whole batch."""
    b, c, h, w = x.shape
    dy, dx, flip = (t.to(x.device, non_blocking=True) for t in (dy, dx, flip))
    rows = dy[:, None] + torch.arange(h, device=x.device)
    cols = torch.arange(w, device=x.device).expand(b, w)
    cols = dx[:, None] + torch.where(flip[:, None], w - 1 - cols, cols)
    index = (rows[:, :, None] * (w + 2 * pad) + cols[:, None, :]).view(b, 1, h * w)
    padded = F.pad(x, (pad, pad, pad, pad)).flatten(2)
    return padded.gather(2, index.expand(b, c, h * w)).view(b, c, h, w)


def step_generator(seed: int, step: int, rank: int = 0) -> torch.Generator:
    """A CPU generator that depends on (``seed``, ``step``, ``rank``) only."""
    state = np.random.SeedSequence([seed, step, rank]).generate_state(2, np.uint32)
    return torch.Generator().manual_seed(int(state[0]) << 32 | int(state[1]))


class ImageClassification(Classification):
    """Cross-entropy on ``data.train`` (uint8 images, augmented), accuracy and mean loss on
    ``data.eval``; ``data`` is e.g. :class:`tensam.data.CIFAR10` (``train``/``eval`` tensor
    data sets, ``mean``, ``std``, ``num_classes``, ``input_shape``, ``info()``).

    ``fit_metrics=True`` adds, at every evaluation, how far the model fits its training labels
    (noisy under label noise) on the unaugmented training images: ``fit/accuracy``, the share
    predicted as their training label, and, where ``data`` knows the true labels
    (``train_clean_labels``), ``fit/memorized`` and ``fit/clean``: the shares of the relabelled
    images predicted as their wrong (training) label and as their true one. Memorization of
    noisy labels, the regime where SAM is known to help, shows as ``fit/memorized`` rising.
    """

    metrics = {**Classification.metrics, "fit/accuracy": True, "fit/memorized": True,
               "fit/clean": True}

    def __init__(self, data, batch_size: int = 128, eval_batch_size: int = 1000,
                 data_seed: int = 0, augment: bool = True, fit_metrics: bool = False):
        super().__init__(data, batch_size, eval_batch_size, num_workers=0, data_seed=data_seed)
        self.augment, self.fit_metrics = augment, fit_metrics
        self.to(self.device)

    def to(self, device: torch.device) -> ImageClassification:
        super().to(device)
        self.train_x, self.train_y = (t.to(self.device) for t in self.data.train.tensors)
        self.eval_x, self.eval_y = (t.to(self.device) for t in self.data.eval.tensors)
        self.mean, self.std = (torch.tensor(v, device=self.device)
                               for v in (self.data.mean, self.data.std))
        return self

    def train_batch(self, step: int, indices: list[int]) -> tuple[torch.Tensor, torch.Tensor]:
        """The training examples ``indices``, normalised and augmented as at ``step``."""
        index = torch.tensor(indices).to(self.device, non_blocking=True)
        x = normalize(self.train_x[index], self.mean, self.std)
        if self.augment:
            generator = step_generator(self.data_seed, step, self.order.rank)
            x = crop_flip(x, *crop_flip_params(len(indices), generator))
        return x, self.train_y[index]

    def batches(self, start_step: int = 0) -> Iterator:
        for step, indices in enumerate(self.batch_indices(start_step), start_step):
            yield self.train_batch(step, indices)

    def eval_batches(self) -> Iterator:
        for x, y in zip(self.eval_x.split(self.eval_batch_size),
                        self.eval_y.split(self.eval_batch_size), strict=True):
            yield normalize(x, self.mean, self.std), y

    def evaluate(self, model: nn.Module, test: bool = True) -> dict[str, float]:
        out = super().evaluate(model, test)
        return {**out, **self.fit(model)} if self.fit_metrics else out

    def fit(self, model: nn.Module) -> dict[str, float]:
        """``fit/accuracy``, ``fit/memorized`` and ``fit/clean`` (class docstring)."""
        predicted = torch.cat([model(normalize(x, self.mean, self.std)).argmax(1)
                               for x in self.train_x.split(self.eval_batch_size)])
        out = {"fit/accuracy": float((predicted == self.train_y).float().mean())}
        clean = getattr(self.data, "train_clean_labels", None)
        if clean is not None:
            flipped = clean.to(self.device) != self.train_y
            if flipped.any():
                out["fit/memorized"] = float((predicted == self.train_y)[flipped].float().mean())
                out["fit/clean"] = float((predicted == clean.to(self.device))[flipped]
                                         .float().mean())
        return out


def pipeline_throughput(task: ImageClassification, steps: int = 50, warmup: int = 5) -> float:
    """Images per second that ``task.batches()`` delivers (indexing, normalisation and
    augmentation on the task's device), after ``warmup`` batches."""
    batches = task.batches()
    for _ in range(warmup):
        next(batches)
    sync = torch.cuda.synchronize if task.device.type == "cuda" else (lambda: None)
    sync()
    start = time.perf_counter()
    for _ in range(steps):
        x, _ = next(batches)
    sync()
    return steps * len(x) / (time.perf_counter() - start)
