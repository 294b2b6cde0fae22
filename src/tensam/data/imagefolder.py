"""ImageNet-style data from an ImageFolder tree (Table 3): ``<root>/<train_dir>/<class>/*`` and
``<root>/<eval_dir>/<class>/*``, with the standard ImageNet augmentation (torchvision's reference
recipe, He et al. 2016): a random-resized crop to ``crop`` pixels and a horizontal flip for
training; resize of the shorter side to ``resize`` and a center crop to ``crop`` for evaluation;
both normalised by the ImageNet mean and standard deviation (those torchvision's pretrained
weights expect). Images are decoded by the loader's workers at every epoch.
"""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path

from torchvision import datasets
from torchvision import transforms as T

from tensam.errors import ConfigError

IMAGENET_MEAN = (0.485, 0.456, 0.406)
IMAGENET_STD = (0.229, 0.224, 0.225)


class ImageFolder:
    """The (train, eval) pair of ``torchvision.datasets.ImageFolder`` sets under ``root``
    (e.g. ``$TENSAM_IMAGENET`` with ``train/`` and ``val/`` in class folders), with
    ``num_classes``, ``input_shape`` (3, crop, crop) and ``info()``."""

    def __init__(self, root: str | None, train_dir: str = "train", eval_dir: str = "val",
                 crop: int = 224, resize: int = 256,
                 mean: Sequence[float] = IMAGENET_MEAN, std: Sequence[float] = IMAGENET_STD):
        if root is None:
            raise ConfigError("task.data.root is not set: give the ImageFolder directory (class "
                              "folders under train/ and val/) as task.data.root or "
                              "$TENSAM_IMAGENET")
        if not 0 < crop <= resize:
            raise ConfigError(f"task.data.crop={crop} must be in (0, task.data.resize={resize}]")
        self.root = Path(root).expanduser()
        for key, sub in (("train_dir", train_dir), ("eval_dir", eval_dir)):
            if not (self.root / sub).is_dir():
                raise ConfigError(f"task.data.{key}={sub!r}: {self.root / sub} is not a "
                                  "directory of class folders")
        normalize = [T.ToTensor(), T.Normalize(mean, std)]
        self.train = datasets.ImageFolder(self.root / train_dir, T.Compose(
            [T.RandomResizedCrop(crop), T.RandomHorizontalFlip(), *normalize]))
        self.eval = datasets.ImageFolder(self.root / eval_dir, T.Compose(
            [T.Resize(resize), T.CenterCrop(crop), *normalize]))
        if self.train.classes != self.eval.classes:
            raise ConfigError(f"task.data: the class folders of {train_dir}/ "
                              f"({len(self.train.classes)}) and {eval_dir}/ "
                              f"({len(self.eval.classes)}) differ")
        self.num_classes, self.input_shape = len(self.train.classes), (3, crop, crop)
        self.crop, self.resize = crop, resize

    def info(self) -> dict:
        return {"dataset": "ImageFolder", "root": str(self.root), "n_train": len(self.train),
                "n_eval": len(self.eval), "num_classes": self.num_classes,
                "crop": self.crop, "resize": self.resize}
