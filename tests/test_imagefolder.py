"""ImageNet-style ImageFolder data (Table 3's task): standard augmentation and evaluation
transforms, Top-1/Top-5 metrics, one-line errors, and a whole run of TT-ResNet-18 on it."""

import json
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image
from torch import nn

from tensam.data import ImageFolder
from tensam.tasks import Classification

ROOT = Path(__file__).resolve().parents[1]
CLASSES = ("ant", "bee", "cat", "dog", "eel", "fox", "gnu")


@pytest.fixture(scope="module")
def folder(tmp_path_factory):
    """train/ and val/ with 7 classes of random JPEGs of varying sizes."""
    root = tmp_path_factory.mktemp("imagenet")
    rng = np.random.default_rng(0)
    for split, n in (("train", 3), ("val", 2)):
        for c in CLASSES:
            (root / split / c).mkdir(parents=True)
            for i in range(n):
                h, w = rng.integers(40, 60, size=2)
                pixels = rng.integers(0, 256, size=(h, w, 3), dtype=np.uint8)
                Image.fromarray(pixels).save(root / split / c / f"{i}.JPEG")
    return root


def test_training_images_are_augmented_and_evaluation_images_are_not(folder):
    data = ImageFolder(str(folder), crop=32, resize=36)
    assert data.num_classes == 7 and data.input_shape == (3, 32, 32)
    assert (len(data.train), len(data.eval)) == (21, 14)
    torch.manual_seed(0)
    a, label = data.train[0]
    b, _ = data.train[0]
    assert a.shape == (3, 32, 32) and label == 0 and not torch.equal(a, b)
    x, y = data.eval[5]
    assert torch.equal(x, data.eval[5][0]) and y == 2
    # ImageNet normalisation: the mean image of uniform noise is close to (0.5 - mean) / std
    mean = torch.stack([data.eval[i][0] for i in range(len(data.eval))]).mean((0, 2, 3))
    want = 0.5 - torch.tensor((0.485, 0.456, 0.406))
    assert torch.allclose(mean, want / torch.tensor((0.229, 0.224, 0.225)), atol=0.05)
    assert data.info()["n_train"] == 21


def test_top1_and_top5_are_counted_from_the_logits(folder):
    data = ImageFolder(str(folder), crop=32, resize=36)
    task = Classification(data, batch_size=4, eval_batch_size=5)
    torch.manual_seed(0)
    model = nn.Sequential(nn.Flatten(), nn.Linear(3 * 32 * 32, 7)).eval()
    with torch.no_grad():
        got = task.evaluate(model)
        x = torch.stack([data.eval[i][0] for i in range(len(data.eval))])
        y = torch.tensor([data.eval[i][1] for i in range(len(data.eval))])
        logits = model(x)
    rank = (logits > logits.gather(1, y[:, None])).sum(1)  # how many classes score higher
    assert got["accuracy"] == pytest.approx((rank == 0).float().mean().item())
    assert got["top5"] == pytest.approx((rank < 5).float().mean().item())
    assert got["loss"] == pytest.approx(nn.functional.cross_entropy(logits, y).item(), rel=1e-5)


def test_bad_folders_fail_in_one_line(folder, tmp_path):
    with pytest.raises(ValueError, match="task.data.root is not set"):
        ImageFolder(None)
    with pytest.raises(ValueError, match="task.data.eval_dir='test'"):
        ImageFolder(str(folder), eval_dir="test")
    with pytest.raises(ValueError, match="task.data.crop=64"):
        ImageFolder(str(folder), crop=64, resize=36)
    (tmp_path / "train" / "a").mkdir(parents=True)
    (tmp_path / "val" / "b").mkdir(parents=True)
    for split, c in (("train", "a"), ("val", "b")):
        Image.new("RGB", (8, 8)).save(tmp_path / split / c / "0.png")
    with pytest.raises(ValueError, match="class folders"):
        ImageFolder(str(tmp_path), crop=8, resize=8)


def test_table3_runs_end_to_end_on_an_image_folder(folder, tmp_path):
    """experiment=table3 (TT-ResNet-18, one-cycle SGD + DAS) for 2 steps on the small folder,
    random weights instead of torchvision's: Top-1/Top-5 and the compression report reach the
    summary."""
    run = tmp_path / "run"
    out = subprocess.run(
        [sys.executable, str(ROOT / "train.py"), "experiment=table3", "optimizer=das",
         "model.pretrained=false", "epochs=null", "steps=2", "logger=disabled",
         "task.data.crop=32", "task.data.resize=36", "task.batch_size=4",
         "task.eval_batch_size=7", "task.num_workers=0", "checkpoint_every=0", "threads=1",
         f"hydra.run.dir={run}"], capture_output=True, text=True, cwd=ROOT, timeout=600,
        env={**os.environ, "TENSAM_IMAGENET": str(folder)})
    assert out.returncode == 0, out.stderr[-2000:]
    summary = json.loads((run / "summary.json").read_text())
    assert summary["status"] == "finished" and summary["steps"] == 2
    assert 0 <= summary["accuracy"] <= summary["top5"] <= 1
    assert summary["data"]["num_classes"] == 7
    info = summary["model_info"]
    assert len(info["compression"]) == 16
    assert info["parameters"] == 4_406_063 - 513 * (1000 - 7)  # fc 512 -> 7 instead of 1000
