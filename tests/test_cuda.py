"""The engine on a CUDA device (skipped without one; ``scripts/gpu_check.sh`` runs them first).

What differs on a GPU:
tensors and RNG streams live on the device, bf16 autocast is real, and a moved model must be
noticed by DAS. Each test compares against the same computation on the CPU.
"""

import pytest
import torch
from toys import TwoTucker, closure_for, make_optimizer

from tensam.cores import core_groups
from tensam.optim import DAS
from tensam.training import LoopConfig, make_closure

pytestmark = [pytest.mark.cuda,
              pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA device")]
CUDA = torch.device("cuda")


@pytest.mark.parametrize("method", ["none", "sam", "das", "nusam"])
def test_steps_on_cuda_equal_steps_on_cpu(method):
    own = {"none": {}, "sam": {"rho": 0.1}, "das": {"alpha": 0.3},
           "nusam": {"rho": 0.1, "restore": "copy"}}[method]
    cfg = {"method": method, **own, "base": {"name": "sgd", "lr": 0.05, "momentum": 0.9}}
    cpu, gpu = TwoTucker(seed=3), TwoTucker(seed=3).to(CUDA)
    opt_cpu, opt_gpu = make_optimizer(cfg, cpu, 10), make_optimizer(cfg, gpu, 10)
    for _ in range(5):
        opt_cpu.step(closure_for(cpu))
        opt_gpu.step(closure_for(gpu))
    for p, q in zip(cpu.parameters(), gpu.parameters(), strict=True):
        torch.testing.assert_close(p, q.cpu(), rtol=1e-9, atol=1e-11)


def test_das_follows_the_model_to_the_gpu():
    moved, built = TwoTucker(seed=1), TwoTucker(seed=1).to(CUDA)
    opt_moved = DAS(torch.optim.SGD(moved.parameters(), lr=0.01), core_groups(moved), alpha=0.5)
    moved.to(CUDA)
    opt_built = DAS(torch.optim.SGD(built.parameters(), lr=0.01), core_groups(built), alpha=0.5)
    for _ in range(3):
        opt_moved.step(closure_for(moved))
        opt_built.step(closure_for(built))
    for p, q in zip(moved.parameters(), built.parameters(), strict=True):
        torch.testing.assert_close(p, q, rtol=1e-12, atol=0)


class _Images:
    """CIFAR-shaped random uint8 images (what :class:`tensam.data.CIFAR10` hands the task)."""

    mean, std, num_classes, input_shape = (0.5, 0.4, 0.3), (0.2, 0.25, 0.3), 10, (3, 32, 32)

    def __init__(self):
        gen = torch.Generator().manual_seed(0)
        make = lambda n: torch.utils.data.TensorDataset(  # noqa: E731
            torch.randint(0, 256, (n, 3, 32, 32), generator=gen, dtype=torch.uint8),
            torch.randint(10, (n,), generator=gen))
        self.train, self.eval = make(64), make(16)

    def info(self):
        return {}


def test_augmented_batches_are_the_same_on_cpu_and_gpu():
    from tensam.tasks import ImageClassification

    cpu = ImageClassification(_Images(), batch_size=16)
    gpu = ImageClassification(_Images(), batch_size=16).to(CUDA)
    for (x, y), (xg, yg) in zip(_take(cpu.batches(3), 3), _take(gpu.batches(3), 3), strict=True):
        torch.testing.assert_close(x, xg.cpu())
        assert torch.equal(y, yg.cpu())


def _take(it, n):
    return [next(it) for _ in range(n)]


def test_bf16_autocast_sam_step_is_finite_and_keeps_fp32_parameters():
    from tensam.models import ResNet

    model = ResNet(depth=20, conv="tr", rank=5).to(CUDA)
    opt = make_optimizer({"method": "sam", "rho": 0.05, "base": {"name": "sgd", "lr": 0.1}},
                          model)

    class Task:
        metrics = {}

        def loss(self, model, batch):
            x, y = batch
            return torch.nn.functional.cross_entropy(model(x), y)

    batch = (torch.randn(8, 3, 32, 32, device=CUDA), torch.randint(10, (8,), device=CUDA))
    loss = opt.step(make_closure(Task(), model, opt, [batch], LoopConfig(1, precision="bf16")))
    assert torch.isfinite(loss)
    assert all(p.dtype == torch.float32 for p in model.parameters())
