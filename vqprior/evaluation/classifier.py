"""The feature networks that judge samples: small classifiers trained on the run's own training split.

A sample score measured in one network's features is a property of that network as much as of the samples
(two CNNs can rank the same settings differently), so evaluation uses several independent ones, each its own
*feature space*: a different architecture, a different seed and, for two of them, training on randomly shifted
digits. Each one's penultimate layer is a feature space for the Fréchet distance, KID and precision/recall, and
its predictions give a conditional accuracy.

    cnn    4 conv layers with batch norm, 128 features; trained on the digits as they are (seed 0)
    wide   strided convs with GELU and group norm, 256 features; trained on digits shifted by up to 2 px (seed 1)
    lenet  LeNet-5 (5x5 convs, tanh, average pooling), 84 features; shifted digits too (seed 2)

Each is trained once per dataset (without the held-out validation slice) and cached by the sha256 of the data it
saw, in the user's cache folder; the package ships the MNIST ones (`vqprior/pretrained/feature_nets/`), so the
first `vqprior eval` on MNIST trains nothing.
"""

from __future__ import annotations

import hashlib
import math
from dataclasses import dataclass
from pathlib import Path

import torch
import torch.nn.functional as F
from torch import nn

from ..artifacts import load_json_object, load_weights, save_json, save_weights
from ..datasets import ImageSet, to_float
from ..datasets.mnist import cache_dir
from ..reporter import Reporter
from ..runtime import batches

EPOCHS = 4  # each network reaches >= 99.2% on MNIST test digits in 4 epochs
BATCH = 128
SHIPPED = Path(__file__).resolve().parent.parent / "pretrained" / "feature_nets"


def _cnn(c: int) -> tuple[nn.Module, int]:
    def block(i, o):
        return [nn.Conv2d(i, o, 3, padding=1), nn.BatchNorm2d(o), nn.ReLU()]

    body = nn.Sequential(
        *block(c, 32), *block(32, 32), nn.MaxPool2d(2), *block(32, 64), *block(64, 64), nn.AdaptiveAvgPool2d(4)
    )
    return nn.Sequential(body, nn.Flatten(), nn.Linear(64 * 16, 128), nn.ReLU()), 128


def _wide(c: int) -> tuple[nn.Module, int]:
    def block(i, o, stride):
        return [nn.Conv2d(i, o, 3, stride, padding=1), nn.GroupNorm(8, o), nn.GELU()]

    body = nn.Sequential(*block(c, 32, 1), *block(32, 48, 2), *block(48, 64, 1), *block(64, 96, 2))
    return nn.Sequential(body, nn.AdaptiveAvgPool2d(2), nn.Flatten(), nn.Linear(96 * 4, 256), nn.GELU()), 256


def _lenet(c: int) -> tuple[nn.Module, int]:
    body = nn.Sequential(
        nn.Conv2d(c, 6, 5, padding=2),
        nn.Tanh(),
        nn.AvgPool2d(2),
        nn.Conv2d(6, 16, 5),
        nn.Tanh(),
        nn.AdaptiveAvgPool2d(5),
        nn.Flatten(),
        nn.Linear(16 * 25, 120),
        nn.Tanh(),
        nn.Linear(120, 84),
        nn.Tanh(),
    )
    return body, 84


@dataclass(frozen=True)
class Space:
    build: object  # in_channels -> (body, features)
    shift: int  # training augmentation: random translations of up to this many pixels
    seed: int


SPACES: dict[str, Space] = {
    "cnn": Space(_cnn, shift=0, seed=0),
    "wide": Space(_wide, shift=2, seed=1),
    "lenet": Space(_lenet, shift=2, seed=2),
}
PRIMARY = "cnn"  # the space whose classifier gives the headline conditional accuracy


class FeatureClassifier(nn.Module):
    def __init__(self, in_channels: int, image_size: int, num_classes: int, space: str = PRIMARY):
        super().__init__()
        self.in_channels, self.image_size, self.num_classes, self.space = in_channels, image_size, num_classes, space
        self.body, self.features = SPACES[space].build(in_channels)
        self.head = nn.Sequential(nn.Dropout(0.3), nn.Linear(self.features, num_classes))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.head(self.body(x))

    @torch.no_grad()
    def features_and_predictions(self, images: torch.Tensor, batch: int = 128) -> tuple[torch.Tensor, torch.Tensor]:
        """uint8 images [N, C, H, W] -> (float64 features [N, F], predicted classes [N]), on the CPU.

        Batches of 128: 3-4x faster than 1,000 on 2 CPU cores (activations stay in cache); each image's features
        are the same bits at any batch size."""
        self.eval()
        device = next(self.parameters()).device
        feats, preds = [], []
        for i in range(0, len(images), batch):
            f = self.body(to_float(images[i : i + batch]).to(device))
            feats.append(f.double().cpu())
            preds.append(self.head(f).argmax(1).cpu())
        return torch.cat(feats), torch.cat(preds)


def data_fingerprint(data: ImageSet) -> str:
    h = hashlib.sha256()
    h.update(data.images.numpy().tobytes())
    if data.labels is not None:
        h.update(data.labels.numpy().tobytes())
    return h.hexdigest()


def shifted(x: torch.Tensor, shift: int, generator: torch.Generator) -> torch.Tensor:
    """Each image of x [N, C, H, W] translated by its own random (dy, dx) in [-shift, shift], zeros coming in."""
    if shift == 0:
        return x
    n, _, h, w = x.shape
    padded = F.pad(x, (shift, shift, shift, shift))
    dy, dx = torch.randint(0, 2 * shift + 1, (2, n), generator=generator)
    rows = (dy[:, None] + torch.arange(h))[:, None, :, None].expand(n, x.shape[1], h, w + 2 * shift)
    taken = padded.gather(2, rows)
    cols = (dx[:, None] + torch.arange(w))[:, None, None, :].expand(n, x.shape[1], h, w)
    return taken.gather(3, cols)


def train_classifier(
    train: ImageSet,
    device: torch.device,
    reporter: Reporter = Reporter(),
    seed: int | None = None,
    space: str = PRIMARY,
) -> FeatureClassifier:
    spec = SPACES[space]
    seed = spec.seed if seed is None else seed
    torch.manual_seed(seed)
    model = FeatureClassifier(train.images.shape[1], train.images.shape[2], train.num_classes, space).to(device)
    opt = torch.optim.Adam(model.parameters(), 2e-3)
    steps = EPOCHS * math.ceil(len(train) / BATCH)
    sched = torch.optim.lr_scheduler.OneCycleLR(opt, 2e-3, total_steps=steps)
    order = torch.Generator().manual_seed(seed)
    model.train()
    for epoch in range(EPOCHS):
        for idx in reporter.track(
            batches(len(train), BATCH, order), math.ceil(len(train) / BATCH), f"{space} feature net epoch {epoch + 1}"
        ):
            x = shifted(to_float(train.images[idx]), spec.shift, order).to(device)
            loss = F.cross_entropy(model(x), train.labels[idx].to(device))
            opt.zero_grad(set_to_none=True)
            loss.backward()
            opt.step()
            sched.step()
    return model.eval()


def _cached(folder: Path, stem: str, key: str, space: str) -> tuple[FeatureClassifier, dict] | None:
    weights, info_file = folder / f"{stem}.safetensors", folder / f"{stem}.json"
    if not (weights.is_file() and info_file.is_file()):
        return None
    info = load_json_object(info_file)
    if info.get("data_sha256") != key or info.get("space", PRIMARY) != space:
        return None
    model = FeatureClassifier(info["in_channels"], info["image_size"], info["num_classes"], space)
    load_weights(weights, model)
    return model, info


def load_or_train_classifier(
    fit: ImageSet, test: ImageSet, device: torch.device, reporter: Reporter = Reporter(), space: str = PRIMARY
) -> tuple[FeatureClassifier, dict]:
    """The cached (or shipped) network of this feature space for this training data, or a new one (trained on
    `fit`, its accuracy measured on `test`)."""
    key = data_fingerprint(fit)
    stem = f"{key[:24]}-{space}"
    folder = cache_dir() / "classifiers"
    for where in (folder, SHIPPED):
        found = _cached(where, stem, key, space)
        if found is not None:
            return found[0].to(device).eval(), found[1]
    reporter.log(
        f"eval: training the {space} feature network on {len(fit)} images (once per dataset; cached in {folder})"
    )
    model = train_classifier(fit, device, reporter, space=space)
    _, preds = model.features_and_predictions(test.images)
    info = {
        "data_sha256": key,
        "space": space,
        "features": model.features,
        "in_channels": model.in_channels,
        "image_size": model.image_size,
        "num_classes": model.num_classes,
        "train_images": len(fit),
        "test_accuracy": float((preds == test.labels).double().mean()),
    }
    folder.mkdir(parents=True, exist_ok=True)
    save_weights(folder / f"{stem}.safetensors", model)
    save_json(folder / f"{stem}.json", info)
    return model, info


def load_spaces(
    fit: ImageSet, test: ImageSet, device: torch.device, reporter: Reporter = Reporter()
) -> dict[str, tuple[FeatureClassifier, dict]]:
    return {space: load_or_train_classifier(fit, test, device, reporter, space) for space in SPACES}
