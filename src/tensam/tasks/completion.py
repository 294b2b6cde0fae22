"""Tucker tensor completion on the COVID-19 serology tensor (Table 1; Appendix B).

Two protocols, both reported for every run (see ``experiments/table1/README.md``):

* ``heldout`` (the paper's text): exactly 70% of the entries are held out and scored with
  R2 = 1 - SSE/SST (SST centred on the held-out mean); the loss is the *mean* squared error.
* ``paper`` (the public script that appears to be the authors'): each entry is observed with
  probability 0.3 (Bernoulli mask M), the loss is the *sum* of squared errors, and the score is
  R2_obs = 1 - ||M*(Xhat - X)||^2 / ||M*X||^2 on the *observed* entries.
"""

from __future__ import annotations

import numpy as np
import torch
from torch import nn

from tensam.errors import ConfigError
from tensam.tasks.base import Task

PROTOCOLS = ("heldout", "paper")
LOSSES = ("mean", "sum")
#: HOOI stopping tolerance on the change of the relative reconstruction error (public script)
HOOI_TOL = 1e-5


def load_tensor(name: str = "covid19_serology") -> np.ndarray:
    """The dense data tensor; ``covid19_serology`` ships with tensorly (438 x 6 x 11)."""
    if name != "covid19_serology":
        raise ConfigError(f"task.dataset={name!r} is not one of ['covid19_serology']")
    from tensorly.datasets import load_covid19_serology

    return np.asarray(load_covid19_serology().tensor, dtype=np.float64)


def observation_mask(shape, protocol: str, observed: float, split: int) -> np.ndarray:
    """Boolean mask of observed (training) entries for split ``split``."""
    rns = np.random.RandomState(split)
    if protocol == "paper":
        return rns.random_sample(shape) < observed
    n = int(np.prod(shape))
    mask = np.zeros(n, dtype=bool)
    mask[rns.permutation(n)[: int(round(observed * n))]] = True
    return mask.reshape(shape)


def r2_uncentred(pred: torch.Tensor, target: torch.Tensor, mask: torch.Tensor) -> float:
    """1 - ||M*(Xhat - X)||^2 / ||M*X||^2 (the score of the public script)."""
    return float(1 - ((pred - target) * mask).square().sum() / (target * mask).square().sum())


def r2_centred(pred: torch.Tensor, target: torch.Tensor, mask: torch.Tensor) -> float:
    """1 - SSE/SST over the entries of ``mask``, SST centred on their mean (Appendix B)."""
    y, yhat = target[mask], pred[mask]
    return float(1 - (y - yhat).square().sum() / (y - y.mean()).square().sum())


class TuckerCompletion(Task):
    """Fit a Tucker model (``model_inputs``: the tensor's shape) to the observed entries of a
    dense tensor. ``seed`` is used by the HOOI baseline only, which fits the model's rank."""

    metrics = {"r2_heldout": True, "r2_observed": True, "r2_heldout_uncentred": True,
               "rmse_heldout": False}
    primary_metric = "r2_heldout"

    def __init__(self, protocol: str = "heldout", observed: float = 0.3,
                 loss: str | None = None, split: int = 0, seed: int = 0,
                 dataset: str = "covid19_serology", hooi_iter: int = 50000):
        if protocol not in PROTOCOLS:
            raise ConfigError(f"task.protocol={protocol!r} is not one of {list(PROTOCOLS)}")
        loss = loss or ("sum" if protocol == "paper" else "mean")
        if loss not in LOSSES:
            raise ConfigError(f"task.loss={loss!r} is not one of {list(LOSSES)}")
        if not 0 < observed < 1:
            raise ConfigError(f"task.observed={observed} must be in (0, 1)")
        self.data = load_tensor(dataset)
        self.protocol, self.loss_kind = protocol, loss
        self.primary_metric = self.primary_metric_of({"protocol": protocol})
        self.seed, self.hooi_iter = seed, hooi_iter
        self.mask_np = observation_mask(self.data.shape, protocol, observed, split)
        self.target = torch.tensor(self.data, dtype=torch.float32)
        self.mask = torch.tensor(self.mask_np)
        self.weight = self.mask.float() / (self.mask.sum() if loss == "mean" else 1)

    def to(self, device: torch.device) -> TuckerCompletion:
        self.target, self.mask, self.weight = (t.to(device) for t in
                                               (self.target, self.mask, self.weight))
        return self

    @classmethod
    def primary_metric_of(cls, task_cfg: dict) -> str:
        """Each protocol is scored on its own entries: held out (the paper's text) or observed."""
        return "r2_observed" if task_cfg.get("protocol") == "paper" else "r2_heldout"

    def model_inputs(self) -> dict:
        return {"shape": self.data.shape}

    def batch(self, step: int):
        return None  # full-batch

    def loss(self, model: nn.Module, batch=None) -> torch.Tensor:
        return ((model() - self.target).square() * self.weight).sum()

    def scores(self, pred: torch.Tensor) -> dict[str, float]:
        held = ~self.mask
        return {
            "r2_heldout": r2_centred(pred, self.target, held),
            "r2_observed": r2_uncentred(pred, self.target, self.mask),
            "r2_heldout_uncentred": r2_uncentred(pred, self.target, held),
            "rmse_heldout": float((pred - self.target)[held].square().mean().sqrt()),
        }

    @torch.no_grad()
    def evaluate(self, model: nn.Module, test: bool = True) -> dict[str, float]:
        return self.scores(model())

    def baselines(self, model: nn.Module) -> dict[str, dict[str, float]]:
        """Masked Tucker-HOOI from tensorly at the rank of ``model`` (Table 1's HOOI column),
        same metrics.

        ``tensorly.decomposition.tucker(..., mask=M)`` alternates EM imputation of the missing
        entries, X <- M*X + (1-M)*Xhat, with one HOOI sweep, and stops when the reconstruction
        error changes by less than ``HOOI_TOL`` (or after ``hooi_iter`` sweeps). As in the public
        script: tensorly's random init (factors U[0,1), core U[0.01,1.01)), tol 1e-5. Held-out
        entries are zeroed before the call: tensorly's default ``init="svd"`` and its stopping
        test read every entry of the tensor passed in, masked or not.
        """
        import tensorly as tl
        from tensorly.decomposition import tucker

        tl.set_backend("numpy")
        observed = self.mask_np.astype(float)
        (core, factors), errors = tucker(self.data * observed, rank=list(model.rank), mask=observed,
                                         n_iter_max=self.hooi_iter, init="random", tol=HOOI_TOL,
                                         random_state=self.seed, return_errors=True)
        pred = torch.tensor(tl.tucker_to_tensor((core, factors)), dtype=torch.float32)
        return {"hooi": {**self.scores(pred), "iterations": len(errors)}}
