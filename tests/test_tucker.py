"""Tucker model: tensorly-equal reconstruction and init, multilinearity, rank validation."""

import numpy as np
import pytest
import tensorly as tl
import torch
from tensorly.random import random_tucker

from tensam.cores import core_groups
from tensam.tensorized.tucker import Tucker, mode_product, tucker_to_tensor

CASES = [((5, 7), (2, 3)), ((4, 6, 3), (2, 6, 1)), ((3, 2, 5, 4), (2, 2, 3, 1)),
         ((8, 3, 5), (3, 3, 5))]


@pytest.fixture(autouse=True)
def numpy_backend():
    tl.set_backend("numpy")


def _random_tucker_np(shape, rank, seed):
    rns = np.random.RandomState(seed)
    core = rns.standard_normal(rank)
    return core, [rns.standard_normal((s, r)) for s, r in zip(shape, rank, strict=True)]


@pytest.mark.parametrize("shape, rank", CASES)
def test_tucker_to_tensor_matches_tensorly(shape, rank):
    core, factors = _random_tucker_np(shape, rank, seed=len(shape))
    expected = tl.tucker_to_tensor((core, factors))
    ours = tucker_to_tensor(torch.tensor(core), [torch.tensor(f) for f in factors])
    assert ours.shape == shape
    np.testing.assert_allclose(ours.numpy(), expected, rtol=1e-12, atol=1e-12)


@pytest.mark.parametrize("shape, rank", CASES)
def test_module_matches_tensorly(shape, rank):
    model = Tucker(shape, rank, init="normal", seed=3, std=1.0, dtype=torch.float64)
    factors = [f.detach().numpy() for f in model.factors]
    expected = tl.tucker_to_tensor((model.core.detach().numpy(), factors))
    np.testing.assert_allclose(model().detach().numpy(), expected, rtol=1e-12, atol=1e-12)
    assert [g.K for g in core_groups(model)] == [len(shape) + 1]
    assert core_groups(model)[0].cores == (model.core, *model.factors)


def test_mode_product_is_the_unfolding_identity():
    rns = np.random.RandomState(0)
    t, m = rns.standard_normal((3, 4, 5)), rns.standard_normal((6, 4))
    expected = np.einsum("ijk,aj->iak", t, m)
    np.testing.assert_allclose(mode_product(torch.tensor(t), torch.tensor(m), 1).numpy(),
                               expected, rtol=1e-12, atol=1e-12)


@pytest.mark.parametrize("shape, rank", CASES)
@pytest.mark.parametrize("seed", [0, 7])
def test_uniform_init_reproduces_random_tucker(shape, rank, seed):
    core, factors = random_tucker(shape, rank, random_state=seed)
    model = Tucker(shape, rank, init="uniform", seed=seed, dtype=torch.float64)
    assert torch.equal(model.core.detach(), torch.from_numpy(core))
    for ours, theirs in zip(model.factors, factors, strict=True):
        assert torch.equal(ours.detach(), torch.from_numpy(theirs))
    single = Tucker(shape, rank, init="uniform", seed=seed)
    assert single.core.dtype == torch.float32
    assert torch.equal(single.core.detach(), torch.from_numpy(core).float())


def test_normal_init_is_seeded_with_the_requested_std():
    a = Tucker((60, 50), (40, 30), init="normal", seed=1, std=0.3, dtype=torch.float64)
    b = Tucker((60, 50), (40, 30), init="normal", seed=1, std=0.3, dtype=torch.float64)
    c = Tucker((60, 50), (40, 30), init="normal", seed=2, std=0.3, dtype=torch.float64)
    assert all(torch.equal(x, y) for x, y in zip(a.parameters(), b.parameters(), strict=True))
    assert not torch.equal(a.core, c.core)
    entries = torch.cat([p.detach().flatten() for p in a.parameters()])
    assert abs(entries.std().item() - 0.3) < 0.01
    assert abs(entries.mean().item()) < 0.01


@pytest.mark.parametrize("shape, rank", CASES)
def test_rescaling_two_cores_leaves_the_tensor_unchanged(shape, rank):
    """Scale invariance (Eq. 1): G_k -> c G_k, G_j -> G_j / c gives the same Phi, for all k, j."""
    model = Tucker(shape, rank, init="normal", seed=5, std=1.0, dtype=torch.float64)
    before = model().detach()
    cores = model.cores()
    for k in range(len(cores)):
        j = (k + 1) % len(cores)
        with torch.no_grad():
            cores[k].mul_(3.7)
            cores[j].div_(3.7)
        torch.testing.assert_close(model().detach(), before, rtol=1e-12, atol=1e-12)


@pytest.mark.parametrize("k", range(4))
def test_reconstruction_is_linear_in_each_core(k):
    shape, rank = (4, 3, 5), (2, 3, 2)
    model = Tucker(shape, rank, init="normal", seed=2, std=1.0, dtype=torch.float64)
    cores = [c.detach() for c in model.cores()]
    other = torch.randn(cores[k].shape, generator=torch.Generator().manual_seed(k),
                        dtype=torch.float64)

    def phi(replacement):
        parts = [replacement if i == k else c for i, c in enumerate(cores)]
        return tucker_to_tensor(parts[0], parts[1:])

    combined = phi(2.5 * cores[k] - 0.5 * other)
    torch.testing.assert_close(combined, 2.5 * phi(cores[k]) - 0.5 * phi(other),
                               rtol=1e-12, atol=1e-12)


@pytest.mark.parametrize("rank, why", [((2, 2), "has 2 entries"), ((2, 2, 2, 2), "has 4 entries"),
                                       ((2, 7, 2), "must satisfy"), ((0, 2, 2), "must satisfy")])
def test_bad_rank_raises_naming_model_rank(rank, why):
    with pytest.raises(ValueError, match=r"model\.rank") as err:
        Tucker((4, 6, 3), rank)
    assert why in str(err.value)


def test_bad_init_raises_naming_model_init():
    with pytest.raises(ValueError, match=r"model\.init='orthogonal'"):
        Tucker((4, 6, 3), (2, 2, 2), init="orthogonal")


def test_batched_tucker_equals_each_models_tucker_to_tensor():
    """The batched forward of bench_table1_batch: B stacked models, the same mode products."""
    from tensam.bench.table1_batch import batched_tucker_to_tensor

    gen = torch.Generator().manual_seed(0)
    shape, rank, batch = (7, 3, 5), (2, 3, 4), 3
    core = torch.randn(batch, *rank, generator=gen)
    factors = [torch.randn(batch, n, r, generator=gen) for n, r in zip(shape, rank, strict=True)]
    out = batched_tucker_to_tensor(core, factors)
    assert out.shape == (batch, *shape)
    for b in range(batch):
        expected = tucker_to_tensor(core[b], [f[b] for f in factors])
        torch.testing.assert_close(out[b], expected, rtol=1e-6, atol=1e-6)


def test_replay_runs_exactly_the_recorded_aten_calls():
    """The floor of bench_table1_batch: a step's ATen calls (forward, backward, optimizer),
    replayed, are the same calls in the same order, and none of torch.optim's profiler ops."""
    from toys import covid

    from tensam.bench.common import AtenRecorder, record_step, replay

    task, model = covid(rank=(2, 2, 2))
    opt = torch.optim.Adam(model.parameters(), lr=1e-3)

    def step():
        opt.zero_grad(set_to_none=True)
        task.loss(model).backward()
        opt.step()

    step()  # the optimizer state exists
    calls = record_step(step)
    names = [str(func) for func, _, _ in calls]
    assert names.count("aten.mm.default") == 9  # 3 mode products, 2 more in each backward
    assert not any(name.startswith("profiler.") for name in names)
    with AtenRecorder() as again:
        replay(calls)
    assert [str(func) for func, _, _ in again.calls] == names


def test_elementwise_work_gives_the_same_bits_batched():
    """The premise of bench_table1_batch's `ordered` column: AdamW's elementwise update of three
    runs stacked along a new axis equals each run's own update, bit for bit."""
    gen = torch.Generator().manual_seed(0)
    runs = [[torch.rand(n, r, generator=gen) for n, r in ((438, 8), (6, 6), (11, 8))]
            for _ in range(3)]
    stacked = [torch.stack([run[k] for run in runs]).requires_grad_() for k in range(3)]
    singles = [[p.clone().requires_grad_() for p in run] for run in runs]
    opts = [torch.optim.AdamW(stacked, lr=1e-3, weight_decay=0.01)]
    opts += [torch.optim.AdamW(run, lr=1e-3, weight_decay=0.01) for run in singles]
    for _ in range(20):
        grads = [torch.randn(p.shape, generator=gen) for p in stacked]
        for p, g in zip(stacked, grads, strict=True):
            p.grad = g.clone()
        for i, run in enumerate(singles):
            for p, g in zip(run, grads, strict=True):
                p.grad = g[i].clone()
        for opt in opts:
            opt.step()
    for i, run in enumerate(singles):
        for k, p in enumerate(run):
            assert torch.equal(stacked[k][i], p)


def test_table1_bench_counts_the_runs_the_experiments_configure():
    """bench_table1_batch's arithmetic (18 runs x STEPS) follows the experiment configs."""
    from tensam.bench.table1_batch import RUNS, STEPS, training_cpu_s
    from tensam.reports.runs import config

    assert {config([f"experiment={e}"])["steps"] for e, _ in RUNS} == {STEPS}
    assert training_cpu_s({"adamw": 1.0, "sam": 2.0}) == 3.0 * len(RUNS) * STEPS / 1e3
