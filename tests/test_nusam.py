"""nuSAM: power iteration vs SVD, first steps by hand (Algorithms 1-2), restore exactness,
extra memory against SAM, configs."""

import gc

import pytest
import torch
from hydra import compose, initialize_config_dir
from omegaconf import OmegaConf
from torch import nn

from tensam.optim import SAM, NuSAM, build_optimizer
from tensam.optim.nusam import top_singular_pairs
from tensam.tasks import build_model, build_task
from tensam.train import CONFIG_DIR
from tensam.training import train_step

CONFIGS = CONFIG_DIR
F64 = torch.float64


def known_matrix(n=7, m=5, seed=0):
    """A = U diag(s) V^T with a clear spectral gap s_1 / s_2 = 2."""
    gen = torch.Generator().manual_seed(seed)
    U, _ = torch.linalg.qr(torch.randn(n, m, generator=gen, dtype=F64))
    V, _ = torch.linalg.qr(torch.randn(m, m, generator=gen, dtype=F64))
    s = torch.tensor([4.0, 2.0, 1.0, 0.5, 0.25], dtype=F64)[:m]
    return U @ torch.diag(s) @ V.T


def test_power_iteration_converges_to_top_singular_pair():
    A = known_matrix()
    U, S, Vh = torch.linalg.svd(A)
    u0 = torch.randn(A.shape[0], generator=torch.Generator().manual_seed(1), dtype=F64)
    (u,), (v,), sigma = top_singular_pairs([A], [u0], iterations=60)
    torch.testing.assert_close(torch.outer(u, v), torch.outer(U[:, 0], Vh[0]))  # sign-free
    torch.testing.assert_close(sigma[0], S[0])
    # T = 1 per call, warm-started from the previous u (Algorithm 1's u_i^{k-1}): same limit
    warm = u0
    for _ in range(60):
        (warm,), (v,), sigma = top_singular_pairs([A], [warm], iterations=1)
    torch.testing.assert_close(torch.outer(warm, v), torch.outer(U[:, 0], Vh[0]))
    torch.testing.assert_close(sigma[0], S[0])


def test_warm_start_is_kept_in_optimizer_state():
    """With a constant gradient A (linear loss <A, W>), T = 1 per step converges across steps."""
    A = known_matrix()
    W = nn.Parameter(torch.zeros_like(A))
    opt = NuSAM(torch.optim.SGD([W], lr=0.0), rho=0.1)
    def closure():
        opt.zero_grad()
        (A * W).sum().backward()

    for _ in range(60):
        opt.step(closure)
    U, _, _ = torch.linalg.svd(A)
    u = opt.state[W]["u"]
    torch.testing.assert_close(torch.outer(u, u), torch.outer(U[:, 0], U[:, 0]))


class Net(nn.Module):
    """Two weight matrices and a bias vector (the bias must not be perturbed)."""

    def __init__(self, dtype=F64, sizes=(5, 4, 3), seed=0):
        super().__init__()
        gen = torch.Generator().manual_seed(seed)
        self.W1 = nn.Parameter(torch.randn(sizes[1], sizes[0], generator=gen, dtype=dtype))
        self.W2 = nn.Parameter(torch.randn(sizes[2], sizes[1], generator=gen, dtype=dtype))
        self.b = nn.Parameter(torch.randn(sizes[1], generator=gen, dtype=dtype))
        self.x = torch.randn(8, sizes[0], generator=gen, dtype=dtype)

    def forward(self):
        return (torch.tanh(self.x @ self.W1.T + self.b) @ self.W2.T).square().mean()


def grads_at(net, values):
    """(loss, grads) of ``net`` evaluated at parameter ``values`` (a fresh copy)."""
    copy = Net()
    with torch.no_grad():
        for p, v in zip(copy.parameters(), values, strict=True):
            p.copy_(v)
    copy.x = net.x
    loss = copy()
    return torch.autograd.grad(loss, list(copy.parameters()))


def hand_ascent(grads, warm, rho, normalized, tau=1e-12):
    """Algorithm 2 with T = 1 per matrix, then Algorithm 1 step 2 (or Eq. 21 if normalized)."""
    us, vs, sig = [], [], []
    for g, u0 in zip(grads, warm, strict=True):
        v = g.T @ u0 / ((g.T @ u0).norm() + tau)
        u = g @ v / ((g @ v).norm() + tau)
        us.append(u), vs.append(v), sig.append((g @ v).norm())
    c = [rho * s / (torch.stack(sig).norm() + tau) if normalized else rho for s in sig]
    return [ci * torch.outer(u, v) for ci, u, v in zip(c, us, vs, strict=True)]


@pytest.mark.parametrize("normalized", [False, True])
@pytest.mark.parametrize("restore", ["inplace", "copy"])
def test_first_steps_match_algorithm_1(normalized, restore):
    net, rho, lr = Net(), 0.3, 0.1
    opt = NuSAM(torch.optim.SGD(net.parameters(), lr=lr), rho=rho, normalized=normalized,
                restore=restore)
    assert [p is q for p, q in zip(opt._perturbed, (net.W1, net.W2), strict=True)] == [True, True]
    seen = {}

    def closure():
        opt.zero_grad()
        seen["at"] = [p.detach().clone() for p in net.parameters()]  # the second call's stays
        loss = net()
        loss.backward()
        return loss

    params = [p.detach().clone() for p in net.parameters()]
    for _ in range(3):
        warm = [opt.state[p]["u"].clone() for p in (net.W1, net.W2)]
        g = grads_at(net, params)
        e1, e2 = hand_ascent(g[:2], warm, rho, normalized)
        perturbed = [params[0] + e1, params[1] + e2, params[2]]  # the bias is not perturbed
        g_tilde = grads_at(net, perturbed)
        opt.step(closure)
        for got, want in zip(seen["at"], perturbed, strict=True):
            torch.testing.assert_close(got, want, rtol=1e-12, atol=1e-14)
        params = [p - lr * gt for p, gt in zip(params, g_tilde, strict=True)]  # Algorithm 1, step 3
        for p, want in zip(net.parameters(), params, strict=True):
            torch.testing.assert_close(p.detach(), want, rtol=1e-12, atol=1e-14)


@pytest.mark.parametrize("dtype,unit_roundoff", [(torch.float64, 2.0**-53),
                                                 (torch.float32, 2.0**-24)])
def test_inplace_restore_is_within_one_rounding_per_addition(dtype, unit_roundoff):
    """w'' = fl(fl(w + e) - e) satisfies |w'' - w| <= u (|w'| + |w''|) entrywise (the docstring's
    guarantee); entries span 12 orders of magnitude so that e >> w occurs."""
    gen = torch.Generator().manual_seed(0)
    W = nn.Parameter(torch.randn(300, 200, generator=gen, dtype=dtype)
                     * torch.logspace(-10, 2, 200, dtype=dtype))
    before = W.detach().clone()
    opt = NuSAM(torch.optim.SGD([W], lr=0.0), rho=5.0)  # lr = 0: the step leaves w'' in place
    G = torch.randn(300, 200, generator=gen, dtype=dtype)
    seen = {}

    def closure():
        opt.zero_grad()
        seen["perturbed"] = W.detach().clone()  # the second call's value stays
        return (G * W).sum().backward()

    opt.step(closure)
    after, perturbed = W.detach(), seen["perturbed"]
    assert (perturbed - before).abs().max() > 0.1  # applied; |e| >> |w| where |w| ~ 1e-10
    err = (after - before).abs()
    assert bool((err <= unit_roundoff * (perturbed.abs() + after.abs())).all())
    assert err.max() > 0  # documents why restore="copy" exists: in-place is not bit-exact


def test_copy_restore_is_bit_exact():
    gen = torch.Generator().manual_seed(0)
    W = nn.Parameter(torch.randn(30, 20, generator=gen) * torch.logspace(-10, 2, 20))
    before = W.detach().clone()
    opt = NuSAM(torch.optim.SGD([W], lr=0.0), rho=5.0, restore="copy")
    G = torch.randn(30, 20, generator=gen)
    def closure():
        opt.zero_grad()
        (G * W).sum().backward()

    opt.step(closure)
    assert torch.equal(W.detach(), before)


def test_zero_gradient_matrix_is_not_perturbed_and_keeps_warm_start():
    W, Z = nn.Parameter(torch.randn(4, 3, dtype=F64)), nn.Parameter(torch.randn(5, 2, dtype=F64))
    opt = NuSAM(torch.optim.SGD([W, Z], lr=0.0), rho=0.5)
    warm_z = opt.state[Z]["u"].clone()
    seen = {}

    def closure():
        opt.zero_grad()
        seen["Z"] = Z.detach().clone()  # the second call's value stays
        return (W.sum() + 0.0 * Z.sum()).backward()

    z0 = Z.detach().clone()
    opt.step(closure)
    assert torch.equal(seen["Z"], z0) and torch.equal(opt.state[Z]["u"], warm_z)
    assert not torch.equal(opt.state[W]["u"], torch.zeros(4, dtype=F64))


def test_selection_rules_and_errors():
    conv = nn.Parameter(torch.randn(6, 3, 2, 2))
    vec = nn.Parameter(torch.randn(6))
    with pytest.raises(ValueError, match="no parameter to perturb with matrices='2d'"):
        NuSAM(torch.optim.SGD([conv, vec], lr=0.1))
    opt = NuSAM(torch.optim.SGD([conv, vec], lr=0.1), matrices="flatten")
    assert len(opt._perturbed) == 1 and opt._perturbed[0] is conv
    assert opt.state[conv]["u"].shape == (6,)
    for bad, match in [({"matrices": "all"}, "matrices='all' is not one of"),
                       ({"restore": "undo"}, "restore='undo' is not one of"),
                       ({"power_iterations": 0}, "power_iterations must be >= 1"),
                       ({"rho": 0.0}, "rho must be > 0")]:
        with pytest.raises(ValueError, match=match):
            NuSAM(torch.optim.SGD([conv], lr=0.1), **{"matrices": "flatten", **bad})


def live_storages() -> dict[int, int]:
    """data_ptr -> nbytes of every tensor storage reachable from Python objects."""
    gc.collect()
    out = {}
    for obj in gc.get_objects():
        if type(obj) in (torch.Tensor, nn.Parameter):
            storage = obj.untyped_storage()
            if storage.data_ptr():
                out[storage.data_ptr()] = storage.nbytes()
    return out


def extra_bytes(make_opt, net) -> tuple[int, int]:
    """(bytes the wrapper keeps in its own state, bytes it additionally holds while the second
    gradient is computed) -- beyond parameters, gradients and the base optimizer's state."""
    opt = make_opt(net)
    persistent = sum(t.untyped_storage().nbytes() for s in opt.state.values()
                     for t in s.values() if torch.is_tensor(t))
    net().backward()
    # gradients are freed between the passes and their memory may be reused: what stays
    # from before the step is everything but the gradients
    grads = {p.grad.untyped_storage().data_ptr() for p in net.parameters()}
    before = {ptr for ptr in live_storages() if ptr not in grads}
    held = {}

    def closure():
        opt.zero_grad()  # the gradients are gone: what is live beyond `before` is the method's
        held["bytes"] = sum(n for p, n in live_storages().items() if p not in before)
        loss = net()
        loss.backward()
        return loss

    opt.step(closure)
    return persistent, held["bytes"]


def test_extra_memory_is_vectors_only_versus_sams_weight_copies():
    """Model of large matrices (1024 x 512 and 256 x 1024, float32): SAM holds the saved weights
    (1x the matrices; e is freed once added) during the second pass; nuSAM holds u (state), c u
    and v."""
    torch.manual_seed(0)
    sizes = (512, 1024, 256)
    net = Net(dtype=torch.float32, sizes=sizes)
    matrix_bytes = 4 * (sizes[1] * sizes[0] + sizes[2] * sizes[1])
    sam_state, sam_held = extra_bytes(
        lambda m: SAM(torch.optim.Adam(m.parameters(), lr=1e-3), rho=0.05), net)
    nu_state, nu_held = extra_bytes(
        lambda m: NuSAM(torch.optim.Adam(m.parameters(), lr=1e-3), rho=0.05), net)
    vectors = 4 * (sizes[1] + sizes[2])  # one n_i-vector per matrix
    assert sam_state == 0 and matrix_bytes <= sam_held < 2 * matrix_bytes
    assert nu_state == vectors  # the warm starts u_i
    assert nu_held <= vectors + 4 * (sizes[0] + sizes[1]) + 1024  # c_i u_i and v_i, + scalars
    assert (nu_state + nu_held) / sam_held < 0.01


def test_config_composes_and_builds_on_tucker_completion():
    with initialize_config_dir(config_dir=CONFIGS, version_base="1.3"):
        cfg = compose("train", overrides=["optimizer=nusam"])
    section = lambda key: OmegaConf.to_container(cfg[key], resolve=True)  # noqa: E731
    assert section("optimizer")["rho"] == 0.05 and section("optimizer")["restore"] == "inplace"
    task = build_task(section("task"))
    model = build_model(section("model"), task)
    opt = build_optimizer(section("optimizer"), model, total_steps=5)
    assert isinstance(opt, NuSAM) and opt.power_iterations == 1
    assert len(opt._perturbed) == 3  # the three Tucker factors; the 3-D core is not a matrix
    before = [p.detach().clone() for p in model.parameters()]
    loss = train_step(task, model, opt, task.batch(0))
    assert torch.isfinite(loss)
    assert all(not torch.equal(b, p) for b, p in zip(before, model.parameters(), strict=True))
