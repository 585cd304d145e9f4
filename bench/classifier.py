"""A small MNIST classifier, used only to judge generated digits (bench/quality.py).

    python bench/classifier.py      # trains on the train split, prints test accuracy, saves the weights
"""

from __future__ import annotations

import sys
import time
from pathlib import Path

import torch
import torch.nn.functional as F
from torch import nn

sys.path.insert(0, str(Path(__file__).parent))
from common import pin_threads  # noqa: E402

from vqprior.artifacts import load_weights, save_weights  # noqa: E402
from vqprior.config import DataSection  # noqa: E402
from vqprior.data import load_split, to_float  # noqa: E402
from vqprior.runtime import batches  # noqa: E402

WEIGHTS = Path("artifacts/bench/mnist_classifier.safetensors")


class DigitClassifier(nn.Module):
    def __init__(self):
        super().__init__()
        self.net = nn.Sequential(
            nn.Conv2d(1, 32, 3, padding=1), nn.ReLU(), nn.MaxPool2d(2),
            nn.Conv2d(32, 64, 3, padding=1), nn.ReLU(), nn.MaxPool2d(2),
            nn.Flatten(), nn.Linear(64 * 7 * 7, 128), nn.ReLU(), nn.Linear(128, 10))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.net(x)


@torch.no_grad()
def predict(model: DigitClassifier, images: torch.Tensor) -> torch.Tensor:
    """uint8 or [0, 1] float images [N, 1, 28, 28] -> predicted digits [N]."""
    model.eval()
    x = to_float(images) if images.dtype == torch.uint8 else images.float()
    return torch.cat([model(x[i : i + 1000]).argmax(1) for i in range(0, len(x), 1000)])


def train(epochs: int = 2, seed: int = 0) -> DigitClassifier:
    torch.manual_seed(seed)
    data, test = load_split(DataSection(), "train"), load_split(DataSection(), "test")
    model = DigitClassifier()
    opt = torch.optim.Adam(model.parameters(), 1e-3)
    order = torch.Generator().manual_seed(seed)
    for _ in range(epochs):
        model.train()
        for idx in batches(len(data), 128, order):
            loss = F.cross_entropy(model(to_float(data.images[idx])), data.labels[idx])
            opt.zero_grad()
            loss.backward()
            opt.step()
    acc = float((predict(model, test.images) == test.labels).float().mean())
    WEIGHTS.parent.mkdir(parents=True, exist_ok=True)
    save_weights(WEIGHTS, model)
    print(f"classifier: test accuracy {acc:.2%} on the 10,000 real test digits -> {WEIGHTS}")
    return model


def load_or_train() -> DigitClassifier:
    if WEIGHTS.is_file():
        model = DigitClassifier()
        load_weights(WEIGHTS, model)
        return model
    return train()


if __name__ == "__main__":
    pin_threads(2)
    t0 = time.perf_counter()
    train()
    print(f"trained in {time.perf_counter() - t0:.0f}s")
