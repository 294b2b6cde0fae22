"""CIFAR-10 data and task: decoding in ImageFolder order, the checksummed cache, the seeded split,
subset and label noise, on-device augmentation, exact resume; and the real archive when at hand."""

import os
import tarfile
from pathlib import Path

import numpy as np
import pytest
import torch
from hydra import compose, initialize_config_dir
from omegaconf import OmegaConf
from PIL import Image
from torch.nn import functional as F
from torchvision.datasets import ImageFolder

from tensam.data import CIFAR10, cifar
from tensam.tasks import ImageClassification, build_task, vision
from tensam.train import CONFIG_DIR

CLASSES = ["truck", "airplane", "ship", "bird", "frog", "cat", "horse", "deer", "dog", "automobile"]
ARCHIVE = Path(os.environ.get("TENSAM_CIFAR10") or
               Path(__file__).resolve().parents[2] / "shared/data/cifar10-jpg.tar.gz")


@pytest.fixture(scope="session")
def folder(tmp_path_factory):
    """A fake CIFAR-10 ImageFolder: 10 classes x 6 train / 2 test JPEGs, as a directory and a
    .tar.gz; files written out of name order."""
    root = tmp_path_factory.mktemp("fake") / "cifar"
    rng = np.random.default_rng(0)
    for split, n in (("train", 6), ("test", 2)):
        for name in CLASSES:
            (root / split / name).mkdir(parents=True)
            for i in reversed(range(n)):
                pixels = rng.integers(0, 256, (32, 32, 3), dtype=np.uint8)
                Image.fromarray(pixels).save(root / split / name / f"{i:04d}.jpg")
    archive = root.with_name("cifar.tar.gz")
    with tarfile.open(archive, "w:gz") as tar:
        tar.add(root / "train", "train")
        tar.add(root / "test", "test")
    return root, archive


@pytest.fixture
def data(folder, tmp_path):
    def make(**kwargs):
        return CIFAR10(str(folder[1]), cache_dir=str(tmp_path), val_size=10, **kwargs)
    return make


def test_decoding_follows_imagefolder_for_directory_and_archive(folder, tmp_path):
    directory = folder[0]
    for split in ("train", "test"):
        reference = ImageFolder(str(directory / split))
        for root in folder:
            got = cifar.load_cifar10("imagefolder", root, tmp_path)
            assert got["classes"] == reference.classes == sorted(CLASSES)
            assert got[f"{split}_labels"].tolist() == reference.targets
            assert got[f"{split}_images"].dtype == torch.uint8
            expected = np.stack([np.asarray(image) for image, _ in reference])
            expected = torch.from_numpy(expected).permute(0, 3, 1, 2)
            assert torch.equal(got[f"{split}_images"], expected)


def test_a_truncated_archive_is_named_in_one_line(folder, tmp_path):
    """A truncated .tar.gz raised a bare EOFError ("Compressed file ended before the
    end-of-stream marker was reached") that named no file."""
    whole = folder[1].read_bytes()
    cut = tmp_path / "cut.tar.gz"
    cut.write_bytes(whole[: len(whole) // 2])
    with pytest.raises(ValueError) as err:
        cifar.load_cifar10("imagefolder", cut, tmp_path / "cache")
    message = str(err.value)
    assert str(cut) in message and "truncated" in message and "EOFError" in message
    assert len(message.splitlines()) == 1


def test_the_cache_is_used_checked_and_rebuilt_when_corrupted(folder, tmp_path, monkeypatch,
                                                              capsys):
    decoded = []
    read = cifar.read_imagefolder
    monkeypatch.setattr(cifar, "read_imagefolder", lambda root: decoded.append(root) or read(root))
    first = cifar.load_cifar10("imagefolder", folder[1], tmp_path)
    path = cifar.cache_path("imagefolder", folder[1], tmp_path)
    sha = path.with_name(path.name + ".sha256")
    assert sha.read_text().strip() == cifar.checksum(first) and len(decoded) == 1
    cifar.load_cifar10("imagefolder", folder[1], tmp_path)
    assert len(decoded) == 1  # from the cache

    tampered = {**first, "train_images": first["train_images"].clone()}
    tampered["train_images"][0, 0, 0, 0] ^= 1
    torch.save(tampered, path)  # readable, but not what the checksum says
    again = cifar.load_cifar10("imagefolder", folder[1], tmp_path)
    assert len(decoded) == 2 and torch.equal(again["train_images"], first["train_images"])
    assert "fails its checksum; rebuilding" in capsys.readouterr().err

    path.write_bytes(path.read_bytes()[:1000])  # truncated
    cifar.load_cifar10("imagefolder", folder[1], tmp_path)
    assert len(decoded) == 3 and "cannot be checked" in capsys.readouterr().err
    assert sha.read_text().strip() == cifar.checksum(torch.load(path))


def test_the_torchvision_source_reads_torchvisions_arrays(tmp_path, monkeypatch):
    class FakeCIFAR10:
        classes = ["a", "b"]

        def __init__(self, root, train, download):
            assert download and root == str(tmp_path / "torchvision")
            n = 4 if train else 2
            self.data = np.arange(n * 32 * 32 * 3, dtype=np.uint8).reshape(n, 32, 32, 3)
            self.targets = [i % 2 for i in range(n)]

    monkeypatch.setattr("torchvision.datasets.CIFAR10", FakeCIFAR10)
    got = CIFAR10(source="torchvision", cache_dir=str(tmp_path), val_size=2)
    assert len(got.train) == 2 and len(got.eval) == 2 and got.classes == ["a", "b"]
    images = cifar.load_cifar10("torchvision", tmp_path / "torchvision", tmp_path)["test_images"]
    assert torch.equal(images[1, :, 2, 3], torch.from_numpy(FakeCIFAR10(
        str(tmp_path / "torchvision"), False, True).data[1, 2, 3]))


def test_split_sizes_and_seeds():
    train, val = cifar.split_indices(50_000, 5_000, seed=0)
    assert len(train) == 45_000 and len(val) == 5_000
    assert np.array_equal(np.sort(np.concatenate([train, val])), np.arange(50_000))
    assert np.array_equal(val, cifar.split_indices(50_000, 5_000, seed=0)[1])
    assert not np.array_equal(val, cifar.split_indices(50_000, 5_000, seed=1)[1])
    assert np.array_equal(cifar.unpack_indices(cifar.pack_indices(val, 50_000)), val)


def test_the_data_set_splits_as_configured(data):
    val = data()
    assert (len(val.train), len(val.eval)) == (50, 10)
    info = val.info()
    train, held_out = (cifar.unpack_indices(info[k]) for k in ("train_indices", "val_indices"))
    assert len(train) == 50 and len(held_out) == 10 and not set(train) & set(held_out)
    assert len(data(eval_split="test").eval) == 20
    assert len(data(train_split="train50k", eval_split="test").train) == 60
    assert not torch.equal(val.eval.tensors[0], data(split_seed=1).eval.tensors[0])
    with pytest.raises(ValueError, match="train50k"):
        data(train_split="train50k")
    with pytest.raises(ValueError, match="task.data.eval_split='dev'"):
        data(eval_split="dev")


def test_the_subset_is_class_balanced_and_seeded(data):
    labels = np.random.default_rng(0).integers(10, size=45_000)
    subset = cifar.balanced_subset(labels, 10_000, 10, seed=0)
    assert len(set(subset)) == 10_000 and np.all(np.bincount(labels[subset]) == 1_000)
    assert np.array_equal(subset, cifar.balanced_subset(labels, 10_000, 10, seed=0))
    small = data(subset=20)
    assert np.all(np.bincount(small.train.tensors[1].numpy()) == 2)
    assert set(cifar.unpack_indices(small.info()["train_indices"])) <= \
        set(cifar.unpack_indices(data().info()["train_indices"]))
    with pytest.raises(ValueError, match="task.data.subset=25"):
        data(subset=25)


@pytest.mark.parametrize(("mode", "wrong"), [("uniform", 0.9), ("other", 1.0)])
def test_symmetric_label_noise_hits_the_requested_rate(mode, wrong):
    labels = np.random.default_rng(0).integers(10, size=200_000)
    noisy = cifar.symmetric_noise(labels, 0.4, 10, seed=0, mode=mode)
    assert abs(np.mean(noisy != labels) - 0.4 * wrong) < 0.005
    assert np.array_equal(noisy, cifar.symmetric_noise(labels, 0.4, 10, seed=0, mode=mode))
    assert np.array_equal(cifar.symmetric_noise(labels, 0.0, 10, seed=0, mode=mode), labels)


def test_noise_touches_only_the_training_labels_and_is_measured(data):
    clean, noisy = data(), data(label_noise=0.5, noise_mode="other")
    measured = np.mean((noisy.train.tensors[1] != clean.train.tensors[1]).numpy())
    assert noisy.info()["label_noise_measured"] == measured > 0.2
    assert clean.info()["label_noise_measured"] == 0.0
    assert torch.equal(noisy.eval.tensors[1], clean.eval.tensors[1])
    test = data(label_noise=0.5, eval_split="test").eval.tensors[1]
    assert torch.equal(test, data(eval_split="test").eval.tensors[1])


def test_normalisation_uses_the_cifar10_mean_and_std():
    mean, std = torch.tensor(cifar.MEAN), torch.tensor(cifar.STD)
    assert cifar.MEAN == (0.4914, 0.4822, 0.4465) and cifar.STD == (0.2470, 0.2435, 0.2616)
    x = torch.stack([torch.full((3, 4, 4), 255, dtype=torch.uint8),
                     torch.zeros(3, 4, 4, dtype=torch.uint8)])
    out = vision.normalize(x, mean, std)
    assert torch.allclose(out[0, :, 0, 0], (1 - mean) / std)
    assert torch.allclose(out[1, :, 0, 0], -mean / std)


def test_crop_and_flip_match_a_per_image_reference():
    x = torch.randn(16, 3, 32, 32)
    dy, dx, flip = vision.crop_flip_params(16, torch.Generator().manual_seed(0))
    out = vision.crop_flip(x, dy, dx, flip)
    for i in range(16):
        crop = F.pad(x[i], (4, 4, 4, 4))[:, dy[i]:dy[i] + 32, dx[i]:dx[i] + 32]
        assert torch.equal(out[i], crop.flip(-1) if flip[i] else crop)
    assert flip.any() and not flip.all() and len(set(dx.tolist())) > 1
    centre, no, yes = torch.full((16,), 4), torch.zeros(16, dtype=torch.bool), torch.ones(16) > 0
    assert torch.equal(vision.crop_flip(x, centre, centre, no), x)
    assert torch.equal(vision.crop_flip(x, centre, centre, yes), x.flip(-1))


def test_augmentations_depend_on_seed_and_step_only():
    def params(seed, step):
        drawn = vision.crop_flip_params(128, vision.step_generator(seed, step))
        return torch.stack([p.long() for p in drawn])
    assert torch.equal(params(0, 7), params(0, 7))
    assert not torch.equal(params(0, 7), params(0, 8))
    assert not torch.equal(params(0, 7), params(1, 7))


def _same(a, b):
    return all(torch.equal(x, y) for x, y in zip(a, b, strict=True))


def test_batches_resume_exactly_and_are_seeded(data):
    task = ImageClassification(data(), batch_size=8, data_seed=3)  # 6 steps per epoch
    stream = task.batches()
    full = [next(stream) for _ in range(15)]
    x, y = full[0]
    assert x.shape == (8, 3, 32, 32) and x.dtype == torch.float32 and y.dtype == torch.int64
    for k in (1, 6, 8):
        resumed = task.batches(start_step=k)
        assert all(_same(next(resumed), full[i]) for i in range(k, 15))
    twin = ImageClassification(data(), batch_size=8, data_seed=3).batches()
    assert all(_same(next(twin), batch) for batch in full)
    other = ImageClassification(data(), batch_size=8, data_seed=4).batches()
    assert not _same(next(other), full[0])
    plain = ImageClassification(data(), batch_size=8, data_seed=3, augment=False).batches()
    indices = next(task.batch_indices())
    assert torch.equal(next(plain)[0], vision.normalize(task.train_x[indices], task.mean, task.std))


def test_the_task_evaluates_and_reports(data):
    task = ImageClassification(data(label_noise=0.2), batch_size=8, eval_batch_size=3)
    assert task.model_inputs() == {"input_shape": (3, 32, 32), "num_classes": 10}
    assert task.steps_per_epoch == 6 and task.primary_metric == "accuracy"
    model = torch.nn.Sequential(torch.nn.Flatten(), torch.nn.Linear(3 * 32 * 32, 10))
    with torch.no_grad():
        metrics = task.evaluate(model)
    assert set(metrics) == {"accuracy", "top5", "loss"}
    assert 0 <= metrics["accuracy"] <= metrics["top5"] <= 1
    assert task.info()["n_train"] == 50 and task.info()["label_noise"] == 0.2
    assert task.loss(model, next(task.batches())).isfinite()
    assert vision.pipeline_throughput(task, steps=3, warmup=1) > 0


def test_the_config_builds_the_task_and_names_the_variable_when_root_is_missing(
        folder, tmp_path, monkeypatch):
    monkeypatch.setenv("TENSAM_CACHE", str(tmp_path))
    monkeypatch.delenv("TENSAM_CIFAR10", raising=False)

    def task_cfg(*overrides):
        with initialize_config_dir(config_dir=CONFIG_DIR, version_base="1.3"):
            cfg = compose("train", overrides=["task=cifar10_cpu", *overrides])
        return OmegaConf.to_container(cfg.task, resolve=True)

    with pytest.raises(ValueError, match="task.data.root is not set.*TENSAM_CIFAR10"):
        build_task(task_cfg())
    monkeypatch.setenv("TENSAM_CIFAR10", str(folder[1]))
    task = build_task(task_cfg("task.data.subset=20", "task.data.val_size=10",
                               "task.batch_size=4"))
    assert isinstance(task, ImageClassification) and len(task.data.train) == 20
    assert cifar.cache_path("imagefolder", folder[1], tmp_path).exists()


@pytest.mark.skipif(not ARCHIVE.exists(), reason=f"no CIFAR-10 archive at {ARCHIVE}")
def test_the_real_archive(tmp_path_factory):
    cache = Path(os.environ.get("TENSAM_CACHE") or tmp_path_factory.getbasetemp() / "cache")
    got = cifar.load_cifar10("imagefolder", ARCHIVE, cache)
    assert got["train_images"].shape == (50_000, 3, 32, 32)
    assert got["test_images"].shape == (10_000, 3, 32, 32)
    assert torch.bincount(got["train_labels"]).tolist() == [5_000] * 10
    assert got["classes"] == ["airplane", "automobile", "bird", "cat", "deer", "dog", "frog",
                              "horse", "ship", "truck"]
    mean = got["train_images"].float().mean((0, 2, 3)) / 255
    assert torch.allclose(mean, torch.tensor(cifar.MEAN), atol=0.02)
