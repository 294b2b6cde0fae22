"""DAS (Algorithm 2): scale factors, update rule, schedules, compensation, edge cases."""

import pytest
import torch
from toys import TwoTucker, WithLoRA, backward, covid, das_lambdas, make_optimizer, sq, values

from tensam.bench.optim import EagerFloorDAS
from tensam.cores import core_groups
from tensam.optim import DAS
from tensam.optim.schedules import scheduled

#: lambda is checked against Eq. (9) to float32 accuracy: DAS currently rounds eta and 1/K_l to
#: float32 even for float64 cores (see test_float64_scale_factors_are_float64_accurate). Any
#: error in the formula (u, gbar, K, eta, sign) is O(1) relative and still fails this tolerance.
LAM = {"rtol": 1e-6, "atol": 0}


def _two_lr_sgd(model, lr_a=0.1, lr_rest=0.03):
    """SGD with one param group for layer ``a`` and one for everything else (two etas)."""
    rest = [p for n, p in model.named_parameters() if not n.startswith("a.")]
    return torch.optim.SGD([{"params": list(model.a.parameters()), "lr": lr_a},
                            {"params": rest, "lr": lr_rest}])


def _hand_lambdas(model, alpha, normalization, lrs):
    groups = [list(g.cores) for g in core_groups(model)]
    grads = [[c.grad for c in cores] for cores in groups]
    lam = das_lambdas(groups, grads, lrs, alpha, normalization)
    return torch.tensor([x for layer in lam for x in layer], dtype=torch.float64)


@pytest.mark.parametrize("normalization", ["layer", "global"])
def test_scale_factors_equal_algorithm_2_line_5(normalization):
    model = TwoTucker()
    das = DAS(_two_lr_sgd(model), core_groups(model), alpha=0.02, normalization=normalization)
    backward(model)
    lam = das.scale_factors()
    expected = _hand_lambdas(model, 0.02, normalization, lrs=[0.1, 0.03])
    assert lam.shape == (7,)
    torch.testing.assert_close(lam.double(), expected, **LAM)
    assert (lam > 0).any() and (lam < 0).any()  # deviation-aware: both signs occur
    # lambda_k ||G_k||^2 sums to zero within each layer, since sum_k (||g_k||^2 - gbar_l) = 0
    x = das.index.core_sq_norms()
    torch.testing.assert_close(das.index.layer_sum(lam * x), torch.zeros(2, dtype=x.dtype),
                               rtol=0, atol=1e-6 * (lam * x).abs().max().item())


def test_float64_scale_factors_are_float64_accurate():
    model = TwoTucker()
    das = DAS(_two_lr_sgd(model), core_groups(model), alpha=0.02)
    backward(model)
    expected = _hand_lambdas(model, 0.02, "global", lrs=[0.1, 0.03])  # the default
    torch.testing.assert_close(das.scale_factors(), expected, rtol=1e-12, atol=0)


def test_layer_and_global_normalisations_differ_by_u():
    model = TwoTucker()
    backward(model)
    lam = {}
    for norm in ("layer", "global"):
        das = DAS(torch.optim.SGD(model.parameters(), lr=0.1), core_groups(model), alpha=0.02,
                  normalization=norm)
        lam[norm] = das.scale_factors()
    y = das.index.grad_sq_norms()
    u_layer = das.index.layer_sum(y)[das.index.layer].rsqrt()
    u_D = y.sum().rsqrt()
    torch.testing.assert_close(lam["global"], lam["layer"] * u_D / u_layer, rtol=1e-12, atol=0)


@pytest.mark.parametrize("flatten", [False, True])
def test_sgd_step_equals_scaled_cores_minus_gradient_step(flatten):
    """G_k <- (1 + lambda_k) G_k - eta g_k; non-core parameters take the plain SGD step; the
    same with the cores in one flat buffer."""
    model, alpha = TwoTucker(seed=2), 0.05
    das = DAS(_two_lr_sgd(model), core_groups(model), alpha=alpha, normalization="layer",
              flatten=flatten)
    names = [n for n, _ in model.named_parameters()]
    lr_of = {n: 0.1 if n.startswith("a.") else 0.03 for n in names}
    for _ in range(3):
        w = values(model)
        backward(model)
        grads = [p.grad.clone() for p in model.parameters()]
        lam = das.scale_factors()
        torch.testing.assert_close(lam, _hand_lambdas(model, alpha, "layer", [0.1, 0.03]), **LAM)
        lam = dict(zip([id(c) for c in das.index.cores], lam.tolist(), strict=True))
        das.step()
        for (name, p), wi, gi in zip(model.named_parameters(), w, grads, strict=True):
            expected = (1 + lam.get(id(p), 0.0)) * wi - lr_of[name] * gi
            torch.testing.assert_close(p.detach(), expected, rtol=1e-12, atol=1e-14)
    assert das.steps == 3


def test_eta_is_the_current_learning_rate():
    model = TwoTucker(seed=1)
    das = DAS(torch.optim.SGD(model.parameters(), lr=0.1), core_groups(model), alpha=0.05,
              normalization="layer")
    scheduler = torch.optim.lr_scheduler.StepLR(das, step_size=1, gamma=0.1)
    backward(model)
    before = das.scale_factors()
    das.step()
    scheduler.step()
    assert das.base.param_groups[0]["lr"] == pytest.approx(0.01)
    backward(model)
    lam = das.scale_factors()
    torch.testing.assert_close(lam, _hand_lambdas(model, 0.05, "layer", [0.01, 0.01]), **LAM)
    # at the same point, lambda is proportional to eta: a tenth of the old-lr value
    torch.testing.assert_close(lam, _hand_lambdas(model, 0.05, "layer", [0.1, 0.1]) / 10, **LAM)
    assert not torch.allclose(before, lam)


@pytest.mark.parametrize("method", [DAS, EagerFloorDAS])
def test_alpha_zero_is_the_base_optimizer_bitwise(method):
    """Also the benchmark's eager floor: its dispatches change no parameter."""
    torch.manual_seed(0)
    a, b = TwoTucker(seed=5, dtype=torch.float32), TwoTucker(seed=5, dtype=torch.float32)
    adam = torch.optim.Adam(a.parameters(), lr=0.01)
    das = method(torch.optim.Adam(b.parameters(), lr=0.01), core_groups(b),
                 alpha=0.0 if method is DAS else 0.5)
    for _ in range(20):
        backward(a)
        adam.step()
        backward(b)
        das.step()
    assert all(torch.equal(p, q) for p, q in zip(a.parameters(), b.parameters(), strict=True))
    assert not torch.equal(a.a.core, TwoTucker(seed=5, dtype=torch.float32).a.core)


@pytest.mark.parametrize("flatten", [False, True])
def test_zero_norm_core_gets_lambda_zero_and_others_still_scale(flatten):
    model = WithLoRA()
    lr, alpha = 0.1, 0.05
    das = DAS(torch.optim.SGD(model.parameters(), lr=lr), core_groups(model), alpha=alpha,
              normalization="layer", flatten=flatten)
    names = [g.name for g in das.index.groups]
    assert names == ["tucker.a", "tucker.b", "lora"]
    B, A = model.lora.B, model.lora.A
    backward(model)
    g_B, G_A = B.grad.clone(), A.detach().clone()
    assert sq(B) == 0 and sq(g_B) > 0 and sq(A.grad) == 0  # W = BA: g_A = B^T(...) = 0
    lam = das.scale_factors()
    assert torch.isfinite(lam).all()
    torch.testing.assert_close(lam, _hand_lambdas(model, alpha, "layer", [lr] * 3), **LAM)
    assert lam[-2] == 0  # B
    # A: ||g_A||^2 = 0 < gbar = ||g_B||^2 / 2, so it shrinks, u = ||g_B||^-1
    assert lam[-1] == pytest.approx(-lr * alpha * sq(g_B) ** 0.5 / 2 / sq(G_A), rel=1e-6)
    assert (lam[:-2] != 0).all()
    das.step()
    assert all(torch.isfinite(p).all() for p in model.parameters())
    torch.testing.assert_close(B.detach(), -lr * g_B, rtol=1e-12, atol=0)
    torch.testing.assert_close(A.detach(), (1 + lam[-1].item()) * G_A, rtol=1e-12, atol=0)


class _Frozen(torch.optim.Optimizer):
    """A base optimizer whose step does nothing: isolates DAS's scaling increments."""

    def __init__(self, params, lr):
        super().__init__(params, {"lr": lr})

    def step(self, closure=None):
        return None


def _scaled_only(compensated, dtype, start, grads, steps, alpha, flatten=False):
    model = TwoTucker(dtype=dtype)
    with torch.no_grad():
        for p, v in zip(model.parameters(), start, strict=True):
            p.copy_(v)
    for p, g in zip(model.parameters(), grads, strict=True):
        p.grad = g.to(dtype)
    das = DAS(_Frozen(model.parameters(), lr=1.0), core_groups(model), alpha=alpha,
              compensated=compensated, flatten=flatten)
    lam = das.scale_factors()
    for _ in range(steps):
        das.step()
    return [c.detach().double() for c in das.index.cores], lam


@pytest.mark.parametrize("flatten", [False, True])
def test_compensated_scaling_tracks_float64_with_tiny_lambda(flatten):
    """|lambda| ~ 1e-9 is below float32's half-ulp (6e-8): plain addition loses every increment,
    the compensated sum accumulates them like the float64 reference (separate or flat cores)."""
    start = values(TwoTucker(dtype=torch.float32))
    model = TwoTucker(dtype=torch.float32)
    backward(model)
    grads = [p.grad.clone() for p in model.parameters()]
    steps, alpha = 1000, 2.5e-9
    ref, lam = _scaled_only(True, torch.float64, start, grads, steps, alpha)
    assert 1e-10 < lam.abs().max() < 2**-25  # below half an ulp of every float32 entry
    names = [n for n, _ in model.named_parameters()]
    G0 = [c.double() for c, n in zip(start, names, strict=True) if n != "bias"]

    def rel_error(compensated):
        cores, _ = _scaled_only(compensated, torch.float32, start, grads, steps, alpha, flatten)
        err = sum(sq(c - r) for c, r in zip(cores, ref, strict=True)) ** 0.5
        return err / sum(sq(r - g0) for r, g0 in zip(ref, G0, strict=True)) ** 0.5

    plain, kahan = rel_error(False), rel_error(True)
    assert plain > 0.9  # the scaling was rounded away entirely
    assert kahan < 0.02 and kahan < plain / 50


def test_linear_alpha_schedule_reaches_zero_at_total_steps():
    assert scheduled(0.2, "linear", 0, 10) == 0.2
    assert scheduled(0.2, "linear", 5, 10) == pytest.approx(0.1)
    assert scheduled(0.2, "linear", 10, 10) == 0.0
    assert scheduled(0.2, "linear", 15, 10) == 0.0
    assert scheduled(0.2, "cosine", 5, 10) == pytest.approx(0.1)
    assert scheduled(0.2, "cosine", 10, 10) == pytest.approx(0.0, abs=1e-17)
    assert scheduled(0.2, "constant", 15, 10) == 0.2
    model, alpha, total = TwoTucker(seed=3), 0.05, 4
    das = DAS(torch.optim.SGD(model.parameters(), lr=0.1), core_groups(model), alpha=alpha,
              alpha_schedule="linear", total_steps=total, normalization="layer")
    for t in range(total + 1):
        backward(model)
        expected = _hand_lambdas(model, alpha * (1 - t / total), "layer", [0.1] * 2)
        torch.testing.assert_close(das.scale_factors(), expected, **LAM)
        das.step()
    assert torch.equal(das.scale_factors(), torch.zeros(7, dtype=torch.float64))
    # past total_steps a DAS step is the SGD step (plus at most the carried rounding residual)
    w = values(model)
    backward(model)
    das.step()
    for p, wi in zip(model.parameters(), w, strict=True):
        torch.testing.assert_close(p.detach(), wi - 0.1 * p.grad, rtol=1e-15, atol=1e-16)


@pytest.mark.parametrize("kwargs, match", [
    ({"normalization": "batch"}, r"normalization='batch' is not one of \['layer', 'global'\]"),
    ({"alpha_schedule": "step"}, r"alpha_schedule='step' is not one of"),
    ({"alpha_schedule": "linear"}, r"alpha_schedule='linear' needs total_steps > 0"),
    ({"alpha": -0.1}, r"alpha must be >= 0"),
])
def test_bad_options_raise_naming_the_key(kwargs, match):
    model = TwoTucker()
    with pytest.raises(ValueError, match=match):
        DAS(torch.optim.SGD(model.parameters(), lr=0.1), core_groups(model), **kwargs)


def test_cores_outside_the_base_optimizer_raise():
    model = TwoTucker()
    with pytest.raises(ValueError, match=r"not among the base optimizer's parameters"):
        DAS(torch.optim.SGD(model.b.parameters(), lr=0.1), core_groups(model))


def test_das_changes_the_iterates_on_covid_heldout():
    """Table 1 setting (mean loss, AdamW lr 1e-3, alpha 1e-3): lambda ~1e-7..1e-6 must not be
    rounded away; after 300 steps DAS's iterates differ from AdamW's."""
    torch.set_num_threads(1)
    base = {"name": "adamw", "lr": 1e-3, "weight_decay": 0.01}
    final = {}
    for method in ("none", "das"):
        task, model = covid(protocol="heldout", split=0)
        opt = make_optimizer({"method": method, "alpha": 1e-3, "base": base}, model, 300)
        for _ in range(300):
            opt.zero_grad()
            task.loss(model).backward()
            opt.step()
        final[method] = values(model)
        if method == "das":
            lam = opt.scale_factors().abs()
            assert lam.max() < 1e-4 and lam.max() > 1e-8
    changed = [int((a != b).sum()) for a, b in zip(final["none"], final["das"], strict=True)]
    assert all(c > 0 for c in changed), changed


def test_scale_probe_measures_lambda_and_the_whole_step():
    """tensam.analysis.das_scale: |lambda_k| of Algorithm 2 and ||dG_k|| / ||G_k|| of the step
    G_k <- (1 + lambda_k) G_k - eta g_k, per core; a zero core has an infinite relative step."""
    from types import SimpleNamespace

    from tensam.analysis.das_scale import step_sizes

    model = TwoTucker(seed=3)
    with torch.no_grad():
        model.b.factors[1].zero_()
    das = DAS(_two_lr_sgd(model), core_groups(model), alpha=0.05)
    cores = [c.detach().clone() for c in das.index.cores]
    backward(model)
    grads = [c.grad.clone() for c in das.index.cores]
    lam = _hand_lambdas(model, 0.05, "global", lrs=[0.1, 0.03])
    lrs = [0.1] * 3 + [0.03] * 4
    task = SimpleNamespace(loss=lambda m, batch: m())
    got_lam, got_step = step_sizes(task, model, das, None)
    torch.testing.assert_close(got_lam, lam.abs(), **LAM)
    step = torch.stack([((1 + lk) * c - eta * g).sub(c).norm() / c.norm()
                        for lk, c, g, eta in zip(lam, cores, grads, lrs, strict=True)])
    finite = torch.isfinite(step)
    assert finite.tolist() == [True] * 5 + [False, True]  # b's second factor is zero
    torch.testing.assert_close(got_step[finite], step[finite], rtol=1e-10, atol=0)
    assert torch.isinf(got_step[~finite]).all()
    with pytest.raises(TypeError, match="DAS"):
        step_sizes(task, model, torch.optim.SGD(model.parameters(), lr=0.1), None)


def test_diagnostics_report_the_last_steps_lambda():
    """What the training loop logs at log steps (scale/lambda_*): |lambda_k| of the step just
    taken, largest and median over the cores; nothing before the first step."""
    model = TwoTucker(seed=4)
    das = DAS(_two_lr_sgd(model), core_groups(model), alpha=0.05)
    assert das.diagnostics() == {}
    backward(model)
    lam = das.scale_factors().abs()
    das.step()
    assert das.diagnostics() == {"scale/lambda_absmax": float(lam.max()),
                                 "scale/lambda_absmedian": float(lam.median())}
    assert float(lam.max()) > 0


def test_scale_probe_reports_the_median_ratio_per_core_position():
    from tensam.analysis.das_scale import by_position

    ratio = torch.tensor([1.0, 10.0, float("inf"), 3.0, 30.0, 300.0], dtype=torch.float64)
    # torch's median: the lower of the two middle values; inf (a core with G = 0) left out
    assert by_position(ratio, [3, 3]) == "1.0e+00 / 1.0e+01 / 3.0e+02"
    assert by_position(ratio[[0, 1, 3]], [1, 1, 1]) == "3.0e+00"
    assert by_position(ratio[:5], [3, 2]) == "- (layers of different K)"
