"""The one in-memory form every data source is turned into.

MNIST-sized data fits in memory; uint8 tensors with no DataLoader workers are the fastest way to feed a
2-core CPU.
"""

from __future__ import annotations

from dataclasses import dataclass, field

import torch


@dataclass
class ImageSet:
    images: torch.Tensor  # uint8 [N, C, H, W]
    labels: torch.Tensor | None  # int64 [N], or None when the data has no classes
    class_names: list[str] | None
    skipped: int = 0  # unreadable files left out (image folders)
    notices: list[str] = field(
        default_factory=list
    )  # how pixel values were read where the files did not say (image folders)

    def __len__(self) -> int:
        return self.images.shape[0]

    @property
    def num_classes(self) -> int:
        return len(self.class_names) if self.class_names else 0

    def limit(self, n: int | None) -> "ImageSet":
        if n is None or n >= len(self):
            return self
        labels = None if self.labels is None else self.labels[:n]
        return ImageSet(self.images[:n], labels, self.class_names, self.skipped, self.notices)

    def slice(self, start: int, stop: int) -> "ImageSet":
        labels = None if self.labels is None else self.labels[start:stop]
        return ImageSet(self.images[start:stop], labels, self.class_names, self.skipped, self.notices)


def to_float(images: torch.Tensor) -> torch.Tensor:
    """uint8 [0, 255] -> float [0, 1]."""
    return images.float().div_(255.0)
