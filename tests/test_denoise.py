"""Tucker-2 denoising task (Figure 1): loss and metrics, the SAM norm dynamics, config."""

from __future__ import annotations

import pytest
import torch
from hydra import compose, initialize_config_dir
from omegaconf import OmegaConf
from toys import denoise, make_optimizer, task_closure

from tensam.cores import core_groups
from tensam.metrics.norm_dynamics import covariance, norm_deviation
from tensam.norms import CoreIndex
from tensam.optim import SAM
from tensam.tasks import build_model, build_task
from tensam.tasks.denoise import Tucker2Denoise
from tensam.train import CONFIG_DIR
from tensam.training import train_step


def set_cores(model, core, a, b):
    with torch.no_grad():
        for param, value in zip(model.cores(), (core, a, b), strict=True):
            param.copy_(torch.as_tensor(value, dtype=param.dtype))


def test_model_is_a_g_b_transpose():
    task, model = denoise(shape=(5, 4), target_rank=2, rank=(3, 2), dtype="float64")
    g, a, b = model.cores()
    torch.testing.assert_close(model(), a @ g @ b.T)


@torch.no_grad()
def test_loss_and_metrics_by_hand():
    task, model = denoise(shape=(2, 2), target_rank=1, rank=(1, 1), noise=0.0, dtype="float64")
    t = task.target
    assert torch.linalg.matrix_rank(t) == 1
    assert float(t.square().sum()) == pytest.approx(4.0)  # unit RMS: ||T||^2 = numel
    set_cores(model, [[0.0]], [[1.0], [0.0]], [[0.0], [1.0]])  # A G B^T = 0
    assert float(task.loss(model)) == pytest.approx(4.0)
    assert task.evaluate(model) == pytest.approx({"rel_error": 1.0, "loss_full": 4.0})
    u, s, vh = torch.linalg.svd(t)
    set_cores(model, [[s[0]]], u[:, :1], vh[:1].T)  # A G B^T = T exactly
    assert float(task.loss(model)) == pytest.approx(0.0, abs=1e-20)
    assert task.evaluate(model)["rel_error"] == pytest.approx(0.0, abs=1e-10)
    set_cores(model, [[2 * s[0]]], u[:, :1], vh[:1].T)  # A G B^T = 2T: error ||T||
    assert task.evaluate(model) == pytest.approx({"rel_error": 1.0, "loss_full": 4.0})


@torch.no_grad()
def test_batchings_sample_the_noisy_objective():
    full, model = denoise(noise=0.5, batching="full", dtype="float64")
    noise = (full.observed - full.target) / 0.5
    assert float(noise.std()) == pytest.approx(1.0, abs=0.1)
    expected = float((model() - full.observed).square().sum())
    assert full.batch(3) is None
    assert float(full.loss(model, None)) == pytest.approx(expected)

    fresh = Tucker2Denoise(noise=0.5, batching="fresh", dtype="float64")
    torch.testing.assert_close(fresh.batch(7), fresh.batch(7))  # reproducible per step
    assert not torch.equal(fresh.batch(7), fresh.batch(8))  # a new draw every step
    y = fresh.batch(7)
    assert float(fresh.loss(model, y)) == pytest.approx(float((model() - y).square().sum()))
    mean = torch.stack([fresh.batch(s) for s in range(400)]).mean(0)
    assert float((mean - fresh.target).abs().max()) < 0.5 * 5 / 400**0.5  # E[Y_t] = T

    n = full.target.numel()
    entries = Tucker2Denoise(noise=0.5, batching="entries", batch_size=n, dtype="float64")
    assert entries.batch(0).shape == (n,)
    # every entry once: numel/b * sum = the full-batch loss on the fixed draw
    assert float(entries.loss(model, torch.arange(n))) == pytest.approx(expected)


@pytest.mark.parametrize("bad, match", [({"batching": "online"}, "task.batching"),
                                        ({"batching": "entries"}, "task.batch_size"),
                                        ({"noise": -1.0}, "task.noise"),
                                        ({"dtype": "half"}, "task.dtype")])
def test_bad_options_name_the_key(bad, match):
    with pytest.raises(ValueError, match=match):
        Tucker2Denoise(**bad)


def test_a_rank_of_the_wrong_order_names_the_key():
    with pytest.raises(ValueError, match="model.rank"):
        denoise(rank=(2, 2, 2))


def test_init_scales_unbalance_the_cores():
    balanced = denoise(init_scales=(1.0, 1.0, 1.0))[1]
    scaled = denoise(init_scales=(1.0, 1.0, 3.0))[1]
    torch.testing.assert_close(scaled.factors[1], 3 * balanced.factors[1])
    q = [norm_deviation(CoreIndex(core_groups(m)).core_sq_norms()) for m in (balanced, scaled)]
    assert q[1] > q[0]


def sam_step_rates(seed: int, eta: float, rho: float):
    """One SAM step in float64 on fresh noise (a = 2): measured dQ/dt and 4 rho u K Cov."""
    task, model = denoise(noise=2.0, batching="fresh", dtype="float64", seed=seed,
                          init_scales=(1.0, 1.0, 3.0))
    index = CoreIndex(core_groups(model))
    opt = SAM(torch.optim.SGD(model.parameters(), lr=eta), rho=rho)
    closure = task_closure(task, model, task.batch(0))
    closure()  # the gradient at w, as SAM's first pass sees it
    sq_core, sq_grad = index.core_sq_norms(), index.grad_sq_norms()
    q0 = norm_deviation(sq_core)
    predicted = 4 * rho * sq_grad.sum().rsqrt() * 3 * covariance(sq_core, sq_grad)
    opt.step(closure)
    return float((norm_deviation(index.core_sq_norms()) - q0) / eta), float(predicted)


@pytest.mark.parametrize("seed", [0, 1, 2])
def test_theorem3_rate_of_one_sam_step(seed):
    measured, predicted = sam_step_rates(seed, eta=1e-7, rho=1e-3)
    assert predicted < 0  # noisy gradients: small cores get large gradients, Cov < 0
    assert measured == pytest.approx(predicted, rel=0.02)


@pytest.mark.parametrize("seed", [0, 1])
def test_sam_reduces_q_faster_than_sgd_on_noisy_data(seed):
    """Fresh noise a = 2, same batches, rho >> lr ||g||: Q_SAM < 0.8 Q_SGD and Q_SGD < Q_0."""
    finals, base = {}, {"name": "sgd", "lr": 1e-3}
    for cfg in ({"method": "none", "base": base}, {"method": "sam", "rho": 0.4, "base": base}):
        task, model = denoise(noise=2.0, batching="fresh", init_scales=(1.0, 1.0, 3.0), seed=seed)
        index = CoreIndex(core_groups(model))
        q0 = float(norm_deviation(index.core_sq_norms()))
        opt = make_optimizer(cfg, model)
        for step in range(400):
            train_step(task, model, opt, task.batch(step))
        finals[cfg["method"]] = float(norm_deviation(index.core_sq_norms()))
    assert finals["sam"] < 0.8 * finals["none"] and finals["none"] < q0


def test_fig1_config_composes():
    with initialize_config_dir(config_dir=CONFIG_DIR, version_base="1.3"):
        cfg = compose(config_name="train", overrides=["experiment=fig1", "optimizer=sam",
                                                       "task.noise=2.0"])
    container = OmegaConf.to_container(cfg, resolve=True)
    opt_cfg = container["optimizer"]
    assert opt_cfg["base"] == {"_target_": "torch.optim.SGD", "_partial_": True, "lr": 2.5e-4,
                               "momentum": 0.0,
                               "weight_decay": 0.0, "nesterov": False}
    task = build_task(container["task"])
    assert isinstance(task, Tucker2Denoise)
    assert task.noise == 2.0 and task.batching == "fresh"
    model = build_model(container["model"], task)
    torch.testing.assert_close(model.factors[1], 3 * denoise(seed=0)[1].factors[1])
    assert [c.shape for c in model.cores()] == [(3, 3), (20, 3), (20, 3)]
    optimizer = make_optimizer(opt_cfg, model, total_steps=cfg.steps)
    assert isinstance(optimizer, SAM) and optimizer.param_groups[0]["rho"] == 0.1


def test_to_moves_data_and_keeps_the_draws():
    """``to(device)`` moves T and Y; the noise draws stay the same (CPU generator stream)."""
    from tensam.tasks.denoise import Tucker2Denoise

    task = Tucker2Denoise(noise=1.0, batching="fresh")
    before = task.batch(3).clone()
    task.to(torch.device("cpu"))
    assert task.target.device.type == task.observed.device.type == task.batch(3).device.type
    assert torch.equal(task.batch(3), before)
