"""CIFAR-10 as uint8 tensors: decoded once, cached with a checksum, then split, subset and
label-noised by seed (the data of the paper's Sec. 5.2).

Two sources give the same tensors: ``torchvision`` (``torchvision.datasets.CIFAR10``, downloaded
into ``root``) and ``imagefolder`` (the ``train/<class>/*.jpg``, ``test/<class>/*.jpg`` layout of
``torchvision.datasets.ImageFolder``, as a ``.tar.gz`` archive or a directory; labels follow
ImageFolder's order: classes sorted by name, files by path). The decoded images, (N, 3, 32, 32)
uint8, with int64 labels and the class names, are saved once under ``cache_dir`` with the SHA-256
of their bytes in a file beside; a cache whose checksum fails is rebuilt.

From the 50,000 training images a seeded permutation (``split_seed``) takes the paper's 5,000
validation images; the rest are ``train45k`` (``train50k``: all 50,000, for final runs scored on the
test set). A class-balanced ``subset`` and symmetric label noise (:func:`symmetric_noise`) then
apply to the training split only; validation and test labels stay clean. The indices used are
reported by :meth:`CIFAR10.info` as :func:`pack_indices` strings.
"""

from __future__ import annotations

import base64
import hashlib
import io
import os
import sys
import tarfile
import zlib
from collections.abc import Iterator
from concurrent.futures import ProcessPoolExecutor
from pathlib import Path, PurePosixPath

import numpy as np
import torch
from PIL import Image
from torch.utils.data import TensorDataset
from torchvision.datasets.folder import IMG_EXTENSIONS

from tensam.errors import ConfigError

#: per-channel mean and standard deviation of the CIFAR-10 training images (in [0, 1])
MEAN = (0.4914, 0.4822, 0.4465)
STD = (0.2470, 0.2435, 0.2616)
#: the keys of a decoded data set; the tensors' bytes (in this order) are what the checksum hashes
TENSORS = ("train_images", "train_labels", "test_images", "test_labels")
#: independent random streams of one seed
_SPLIT, _SUBSET, _NOISE = range(3)
NOISE_MODES = ("uniform", "other")


# -- decoding ---------------------------------------------------------------------------------

def _image_files(root: Path) -> Iterator[tuple[PurePosixPath, bytes]]:
    """(path, bytes) of every image file of an ImageFolder tree, from an archive or a directory."""
    if root.is_dir():
        for path in root.rglob("*"):
            if path.suffix.lower() in IMG_EXTENSIONS and path.is_file():
                yield PurePosixPath(path.relative_to(root).as_posix()), path.read_bytes()
        return
    try:
        archive = tarfile.open(root)
    except tarfile.ReadError:
        raise ConfigError(f"task.data.root={str(root)!r} is neither a directory nor a tar "
                          "archive") from None
    with archive:
        try:
            for member in archive:
                if member.isfile() and PurePosixPath(member.name).suffix.lower() in IMG_EXTENSIONS:
                    yield PurePosixPath(member.name), archive.extractfile(member).read()
        except (EOFError, OSError, tarfile.TarError, zlib.error) as err:  # truncated, damaged
            first = (str(err).strip() or type(err).__name__).splitlines()[0]
            raise ConfigError(f"task.data.root={str(root)!r} is a truncated or damaged archive "
                              f"({type(err).__name__}: {first}); copy it again") from None


def _decode(blobs: list[bytes]) -> np.ndarray:
    """JPEG/PNG bytes -> (n, 32, 32, 3) uint8."""
    images = []
    for blob in blobs:
        with Image.open(io.BytesIO(blob)) as image:
            if image.size != (32, 32):
                raise ConfigError(f"a CIFAR image is 32x32 pixels, this one {image.size}")
            images.append(np.asarray(image.convert("RGB")))
    return np.stack(images)


def read_imagefolder(root: Path, chunk: int = 1000) -> dict:
    """Decode the ``train/`` and ``test/`` splits of an ImageFolder archive or directory: chunks
    of files go to a process pool while the rest is still being read."""
    keys: dict[str, list] = {"train": [], "test": []}  # (class, path) in reading order
    blobs: dict[str, list] = {"train": [], "test": []}
    futures: dict[str, list] = {"train": [], "test": []}
    with ProcessPoolExecutor(min(os.cpu_count() or 1, 8)) as pool:
        def submit(split: str) -> None:
            if blobs[split]:
                futures[split].append(pool.submit(_decode, blobs[split]))
                blobs[split] = []

        for path, blob in _image_files(root):
            split = path.parts[-3] if len(path.parts) >= 3 else None
            if split in keys:
                keys[split].append((path.parts[-2], path.as_posix()))
                blobs[split].append(blob)
                if len(blobs[split]) == chunk:
                    submit(split)
        for split in keys:
            submit(split)
        classes = sorted({name for name, _ in keys["train"]})
        if not keys["train"] or classes != sorted({name for name, _ in keys["test"]}):
            raise ConfigError(f"task.data.root={str(root)!r} is not an ImageFolder tree with the "
                              "same classes in train/<class>/*.jpg and test/<class>/*.jpg")
        images = {split: np.concatenate([f.result() for f in fs]) for split, fs in futures.items()}
    data = {"classes": classes}
    for split, found in keys.items():
        order = sorted(range(len(found)), key=found.__getitem__)  # ImageFolder's: class, path
        ordered = torch.from_numpy(images[split][order])
        data[f"{split}_images"] = ordered.permute(0, 3, 1, 2).contiguous()
        data[f"{split}_labels"] = torch.tensor([classes.index(found[i][0]) for i in order])
    return data


def read_torchvision(root: Path) -> dict:
    """``torchvision.datasets.CIFAR10`` (downloaded into ``root`` if absent) as tensors."""
    from torchvision import datasets

    data = {}
    for split in ("train", "test"):
        dataset = datasets.CIFAR10(str(root), train=split == "train", download=True)
        data[f"{split}_images"] = torch.from_numpy(dataset.data).permute(0, 3, 1, 2).contiguous()
        data[f"{split}_labels"] = torch.tensor(dataset.targets)
    data["classes"] = list(dataset.classes)
    return data


# -- the cache --------------------------------------------------------------------------------

def checksum(data: dict) -> str:
    """SHA-256 of the decoded tensors' bytes and the class names."""
    digest = hashlib.sha256()
    for key in TENSORS:
        digest.update(data[key].contiguous().numpy())
    digest.update("\n".join(data["classes"]).encode())
    return digest.hexdigest()


def _write_atomic(path: Path, payload: bytes) -> None:
    tmp = path.with_name(f".{path.name}.{os.getpid()}.tmp")
    try:  # a failed write (a full disk) leaves no temporary file behind
        tmp.write_bytes(payload)
        tmp.replace(path)
    except BaseException:
        tmp.unlink(missing_ok=True)
        raise


def cache_path(source: str, root: Path, cache_dir: Path) -> Path:
    """The cache file of ``source`` at ``root``: named by the root's path, and for an
    ImageFolder by its size and modification time too."""
    key = f"{source}|{root.resolve()}"
    if source == "imagefolder":
        key += f"|{root.stat().st_size}|{root.stat().st_mtime_ns}"
    return cache_dir / f"cifar10-{source}-{hashlib.sha256(key.encode()).hexdigest()[:12]}.pt"


def load_cifar10(source: str, root: Path, cache_dir: Path) -> dict:
    """The decoded data set (:data:`TENSORS` and ``classes``): from the cache when its checksum
    holds, else read from ``source`` and cached."""
    path = cache_path(source, root, cache_dir)
    sha = path.with_name(path.name + ".sha256")
    if path.exists():
        try:
            data = torch.load(path, weights_only=True)
            if sha.read_text().strip() == checksum(data):
                return data
            problem = "fails its checksum"
        except Exception as err:  # noqa: BLE001 - a damaged file raises several kinds
            problem = f"cannot be checked ({type(err).__name__})"
        print(f"tensam: the CIFAR-10 cache {path} {problem}; rebuilding it", file=sys.stderr)
    data = read_torchvision(root) if source == "torchvision" else read_imagefolder(root)
    cache_dir.mkdir(parents=True, exist_ok=True)
    buffer = io.BytesIO()
    torch.save(data, buffer)
    _write_atomic(path, buffer.getvalue())
    _write_atomic(sha, (checksum(data) + "\n").encode())
    return data


# -- split, subset, noise ---------------------------------------------------------------------

def split_indices(n: int, val_size: int, seed: int) -> tuple[np.ndarray, np.ndarray]:
    """(train, validation) indices of ``n`` examples: a seeded permutation's first ``val_size``
    are the validation split; both sorted."""
    order = np.random.default_rng([seed, _SPLIT]).permutation(n)
    return np.sort(order[val_size:]), np.sort(order[:val_size])


def balanced_subset(labels: np.ndarray, size: int, num_classes: int, seed: int) -> np.ndarray:
    """Sorted positions of ``size / num_classes`` examples of every class, drawn without
    replacement."""
    per_class, rest = divmod(size, num_classes)
    counts = np.bincount(labels, minlength=num_classes)
    if size < 1 or rest or counts.min() < per_class:
        raise ConfigError(f"task.data.subset={size} must be a positive multiple of the "
                          f"{num_classes} classes, at most {num_classes * counts.min()}")
    rng = np.random.default_rng([seed, _SUBSET])
    return np.sort(np.concatenate([rng.choice(np.flatnonzero(labels == c), per_class,
                                              replace=False) for c in range(num_classes)]))


def symmetric_noise(labels: np.ndarray, rate: float, num_classes: int, seed: int,
                    mode: str = "uniform") -> np.ndarray:
    """Symmetric label noise: every label is, independently with probability ``rate``, replaced by

    * ``mode="uniform"``: a class drawn uniformly from all ``num_classes``, so it may stay the
      same and about ``rate * (1 - 1/num_classes)`` of the labels end up wrong: "independently
      with probability p, the label of each image is corrupted as a uniform random class"
      (Zhang et al. 2017), the setting MentorNet (Jiang et al. 2018) adopted and the label-noise
      benchmarks SAM (Foret et al. 2021) reports on descend from. The default;
    * ``mode="other"``: a class drawn uniformly from the ``num_classes - 1`` others, so about
      ``rate`` of the labels end up wrong (the symmetric flip of Co-teaching, Han et al. 2018).
    """
    rng = np.random.default_rng([seed, _NOISE])
    hit = rng.random(len(labels)) < rate
    if mode == "uniform":
        new = rng.integers(num_classes, size=len(labels))
    else:
        new = (labels + rng.integers(1, num_classes, size=len(labels))) % num_classes
    return np.where(hit, new, labels)


def pack_indices(indices: np.ndarray, n: int) -> str:
    """Indices into ``n`` examples as a short string: base64 of the packed bit mask."""
    mask = np.zeros(n, dtype=bool)
    mask[indices] = True
    return base64.b64encode(np.packbits(mask).tobytes()).decode()


def unpack_indices(packed: str) -> np.ndarray:
    """The sorted indices of a :func:`pack_indices` string."""
    return np.flatnonzero(np.unpackbits(np.frombuffer(base64.b64decode(packed), np.uint8)))


# -- the data set -----------------------------------------------------------------------------

class CIFAR10:
    """CIFAR-10 for :class:`tensam.tasks.ImageClassification`: ``train`` and ``eval`` are
    ``TensorDataset`` s of (N, 3, 32, 32) uint8 images and int64 labels (the training labels
    noised), with the normalisation constants ``mean`` and ``std``.

    ``root`` is the ImageFolder archive or directory (``source="imagefolder"``) or the download
    directory of torchvision (``source="torchvision"``; default ``<cache_dir>/torchvision``).
    ``eval_split`` is ``val`` (the 5,000 held-out training images: tuning) or ``test`` (the
    10,000 test images: final runs).
    """

    mean, std = MEAN, STD
    input_shape = (3, 32, 32)

    def __init__(self, root: str | None = None, source: str = "imagefolder",
                 cache_dir: str = "~/.cache/tensam", train_split: str = "train45k",
                 eval_split: str = "val", split_seed: int = 0, val_size: int = 5000,
                 subset: int | None = None, label_noise: float = 0.0,
                 noise_mode: str = "uniform", noise_seed: int = 0):
        checks = {"source": (source, ("imagefolder", "torchvision")),
                  "train_split": (train_split, ("train45k", "train50k")),
                  "eval_split": (eval_split, ("val", "test")),
                  "noise_mode": (noise_mode, NOISE_MODES)}
        for key, (value, allowed) in checks.items():
            if value not in allowed:
                raise ConfigError(f"task.data.{key}={value!r}; allowed: {list(allowed)}")
        if train_split == "train50k" and eval_split == "val":
            raise ConfigError("task.data.eval_split=val scores images that train_split=train50k "
                              "trains on; use train45k, or eval_split=test")
        if not 0.0 <= label_noise <= 1.0:
            raise ConfigError(f"task.data.label_noise={label_noise} must be in [0, 1]")
        cache = Path(cache_dir).expanduser()
        if root is None and source == "imagefolder":
            raise ConfigError("task.data.root is not set: point it (or the environment variable "
                              "TENSAM_CIFAR10) at the CIFAR-10 ImageFolder archive or directory")
        root_path = Path(root).expanduser() if root is not None else cache / "torchvision"
        if source == "imagefolder" and not root_path.exists():
            raise ConfigError(f"task.data.root={root!r} (or TENSAM_CIFAR10) does not exist")

        data = load_cifar10(source, root_path, cache)
        self.classes = data["classes"]
        self.num_classes = len(self.classes)
        labels = data["train_labels"].numpy()
        if not 0 < val_size < len(labels):
            raise ConfigError(f"task.data.val_size={val_size} must be in (0, {len(labels)})")
        train, val = split_indices(len(labels), val_size, split_seed)
        if train_split == "train50k":
            train = np.arange(len(labels))
        if subset is not None:
            train = train[balanced_subset(labels[train], subset, self.num_classes, split_seed)]
        noisy = symmetric_noise(labels[train], label_noise, self.num_classes, noise_seed,
                                noise_mode)
        images = data["train_images"]
        self.train = TensorDataset(images[torch.from_numpy(train)], torch.from_numpy(noisy))
        self.train_clean_labels = torch.from_numpy(labels[train])  # before the label noise
        self.eval = (TensorDataset(images[torch.from_numpy(val)], torch.from_numpy(labels[val]))
                     if eval_split == "val" else
                     TensorDataset(data["test_images"], data["test_labels"]))
        self._info = {
            "dataset": f"CIFAR-10 ({source})", "train_split": train_split,
            "eval_split": eval_split, "split_seed": split_seed, "n_train": len(train),
            "n_eval": len(self.eval), "subset": subset, "label_noise": label_noise,
            "noise_mode": noise_mode, "noise_seed": noise_seed,
            "label_noise_measured": float(np.mean(noisy != labels[train])),
            "train_indices": pack_indices(train, len(labels)),
            **({"val_indices": pack_indices(val, len(labels))} if eval_split == "val" else {}),
        }

    def info(self) -> dict:
        """Split sizes, the measured label noise and the indices (:func:`unpack_indices`) of the
        training and validation images among the 50,000 training images."""
        return dict(self._info)
