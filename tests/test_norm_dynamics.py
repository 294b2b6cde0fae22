"""Norm Deviation Q (Definition 1, Eq. 5-6) and Cov, per core group, from CoreIndex."""

import pytest
import torch
from toys import TwoTucker, backward, sq

from tensam.cores import as_core_groups, core_groups
from tensam.metrics.norm_dynamics import (
    covariance,
    layer_covariance,
    layer_norm_deviation,
    norm_deviation,
    norm_deviation_pairwise,
    norm_dynamics,
)
from tensam.norms import CoreIndex


def _rand(*shape, seed):
    return torch.randn(*shape, generator=torch.Generator().manual_seed(seed), dtype=torch.float64)


@pytest.mark.parametrize("K", [2, 3, 5, 9])
def test_eq5_equals_eq6(K):
    x = _rand(K, seed=K).square() * 10
    q5, q6 = norm_deviation(x), norm_deviation_pairwise(x)
    by_hand = sum((xi - x.mean()) ** 2 for xi in x)
    torch.testing.assert_close(q5, q6, rtol=1e-12, atol=0)
    torch.testing.assert_close(q5, by_hand, rtol=1e-12, atol=0)


def test_q_is_zero_iff_all_norms_are_equal():
    equal = torch.full((4,), 2.75, dtype=torch.float64)
    assert norm_deviation(equal) == 0
    assert norm_deviation_pairwise(equal) == 0
    for seed in range(5):
        x = _rand(4, seed=seed).square()
        q = norm_deviation(x)
        # Q = 1/(2K) sum_ij (x_i - x_j)^2 >= (max - min)^2 / K > 0 when the norms differ
        assert q >= (x.max() - x.min()) ** 2 / 4 * (1 - 1e-12) > 0
    tiny = equal.clone()
    tiny[1] += 1e-6
    assert 0 < norm_deviation(tiny) < 1e-11


def test_q_of_a_balanced_tucker_model_is_zero():
    """Balancing every core to the same norm (scale invariance) gives Q = 0, same function."""
    model = TwoTucker()
    cores = model.b.cores()
    before = model.b().detach()
    norms = torch.stack([c.detach().norm() for c in cores])
    target = norms.prod() ** (1 / len(cores))
    with torch.no_grad():
        for c, n in zip(cores, norms, strict=True):
            c.mul_(target / n)
    sq_norms = CoreIndex(core_groups(model.b)).core_sq_norms()
    assert norm_deviation(sq_norms) < 1e-20
    torch.testing.assert_close(model.b().detach(), before, rtol=1e-12, atol=1e-12)


def test_covariance_is_the_biased_empirical_covariance():
    x, y = _rand(6, seed=1), _rand(6, seed=2)
    expected = ((x - x.mean()) * (y - y.mean())).sum() / 6
    torch.testing.assert_close(covariance(x, y), expected, rtol=1e-12, atol=0)
    torch.testing.assert_close(covariance(x, x), x.var(unbiased=False), rtol=1e-12, atol=0)


def _groups_with_grads(sizes):
    groups = []
    for layer, K in enumerate(sizes):
        cores = []
        for k in range(K):
            core = _rand(3, k + 2, seed=10 * layer + k).requires_grad_(True)
            core.grad = _rand(3, k + 2, seed=1000 + 10 * layer + k) * (k + 1)
            cores.append(core)
        groups.append(cores)
    return as_core_groups(groups)


def test_layerwise_q_and_cov_equal_per_group_computation():
    sizes = (2, 3, 5, 1)
    index = CoreIndex(_groups_with_grads(sizes))
    assert len(index) == sum(sizes) and index.num_layers == len(sizes)
    x, y = index.core_sq_norms(), index.grad_sq_norms()
    q, cov = layer_norm_deviation(index, x), layer_covariance(index, x, y)
    for layer, group in enumerate(index.groups):
        gx = torch.tensor([sq(c) for c in group.cores], dtype=torch.float64)
        gy = torch.tensor([sq(c.grad) for c in group.cores], dtype=torch.float64)
        torch.testing.assert_close(x[index.layer == layer], gx, rtol=1e-12, atol=0)
        torch.testing.assert_close(y[index.layer == layer], gy, rtol=1e-12, atol=0)
        torch.testing.assert_close(q[layer], norm_deviation(gx), rtol=1e-12, atol=1e-14)
        torch.testing.assert_close(cov[layer], covariance(gx, gy), rtol=1e-12, atol=1e-14)
    assert q[3] == 0 and cov[3] == 0  # a single core deviates from nothing


def test_missing_gradient_counts_as_zero():
    index = CoreIndex(_groups_with_grads((3,)))
    index.cores[1].grad = None
    y = index.grad_sq_norms()
    assert y[1] == 0 and y[0] > 0 and y[2] > 0


def test_norm_dynamics_keys_and_values():
    model = TwoTucker()
    backward(model)
    index = CoreIndex(core_groups(model))
    assert index.names == ["a", "b"] and index.K.tolist() == [3, 4]
    out = norm_dynamics(index)
    assert set(out) == {"norm/Q", "norm/cov", "norm/sam_drift",
                        "norm/a/Q", "norm/a/cov", "norm/b/Q", "norm/b/cov"}
    q, cov = {}, {}
    for name, module in (("a", model.a), ("b", model.b)):
        x = torch.tensor([sq(c.detach()) for c in module.cores()], dtype=torch.float64)
        y = torch.tensor([sq(c.grad) for c in module.cores()], dtype=torch.float64)
        q[name], cov[name] = norm_deviation(x).item(), covariance(x, y).item()
        assert out[f"norm/{name}/Q"] == pytest.approx(q[name], rel=1e-12)
        assert out[f"norm/{name}/cov"] == pytest.approx(cov[name], rel=1e-12)
    assert out["norm/Q"] == pytest.approx(q["a"] + q["b"], rel=1e-12)
    assert out["norm/cov"] == pytest.approx((cov["a"] + cov["b"]) / 2, rel=1e-12)
    # Theorem 5: dQ/dt / rho = sum_l 4 u_D K_l Cov_l, u_D over all cores (not the bias)
    u_D = sum(sq(c.grad) for c in index.cores) ** -0.5
    assert out["norm/sam_drift"] == pytest.approx(4 * u_D * (3 * cov["a"] + 4 * cov["b"]),
                                                  rel=1e-12)
    assert all(isinstance(v, float) for v in out.values())


def test_norm_dynamics_without_cores_or_gradients():
    assert norm_dynamics(CoreIndex([])) == {}
    model = TwoTucker()
    out = norm_dynamics(CoreIndex(core_groups(model)))  # no backward yet: g = 0
    assert out["norm/cov"] == 0 and out["norm/sam_drift"] == 0 and out["norm/Q"] > 0
