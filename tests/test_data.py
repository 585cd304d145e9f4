import gzip
import pickle
import struct

import numpy as np
import pytest

from vqprior.config import DataSection
from vqprior.datasets import load_split
from vqprior.datasets.idx import read_idx
from vqprior.datasets.mnist import convert_mnist_bundle
from vqprior.errors import UserError


def test_offline_mnist_is_the_full_dataset():
    train, test = load_split(DataSection(), "train"), load_split(DataSection(), "test")
    assert tuple(train.images.shape) == (60000, 1, 28, 28) and tuple(test.images.shape) == (10000, 1, 28, 28)
    assert train.images.dtype.is_floating_point is False and int(train.images.max()) == 255
    assert sorted(train.labels.unique().tolist()) == list(range(10))
    # MNIST digits have about 19% ink
    assert 0.1 < float((test.images > 127).float().mean()) < 0.3


def test_limits_cut_the_splits():
    data = load_split(DataSection(train_limit=123), "train")
    assert len(data) == 123 and len(data.labels) == 123


def test_a_bundle_with_the_wrong_hash_is_never_unpickled(tmp_path, monkeypatch):
    fake = tmp_path / "mnist.pkl.gz"
    with gzip.open(fake, "wb") as f:
        pickle.dump("not mnist", f)
    unpickled = []
    monkeypatch.setattr(pickle, "load", lambda *a, **k: unpickled.append(1))
    with pytest.raises(UserError, match="sha256"):
        convert_mnist_bundle(fake, tmp_path / "out")
    assert not unpickled and not (tmp_path / "out").exists()


def write_idx(path, array):
    header = bytes([0, 0, 8, array.ndim]) + struct.pack(f">{array.ndim}I", *array.shape)
    opener = gzip.open if path.suffix == ".gz" else open
    with opener(path, "wb") as f:
        f.write(header + array.astype(np.uint8).tobytes())


def test_torchvision_format_fashion_mnist(tmp_path):
    raw = tmp_path / "FashionMNIST" / "raw"
    raw.mkdir(parents=True)
    rng = np.random.default_rng(0)
    for prefix, n in (("train", 7), ("t10k", 3)):
        write_idx(raw / f"{prefix}-images-idx3-ubyte.gz", rng.integers(0, 256, (n, 28, 28)))
        write_idx(raw / f"{prefix}-labels-idx1-ubyte", rng.integers(0, 10, (n,)))
    cfg = DataSection(source="fashion-mnist", root=str(tmp_path))
    train = load_split(cfg, "train")
    assert tuple(train.images.shape) == (7, 1, 28, 28) and train.class_names[9] == "Ankle boot"
    assert len(load_split(cfg, "test")) == 3


def test_truncated_idx_file_is_a_clear_error(tmp_path):
    path = tmp_path / "train-images-idx3-ubyte"
    write_idx(path, np.zeros((4, 28, 28)))
    path.write_bytes(path.read_bytes()[:-10])
    with pytest.raises(UserError, match="truncated"):
        read_idx(path)


def test_missing_torchvision_files_name_what_was_looked_for(tmp_path):
    with pytest.raises(UserError, match="train-images-idx3-ubyte"):
        load_split(DataSection(source="mnist-raw", root=str(tmp_path)), "train")


def test_cifar10_binary_release(tmp_path):
    folder = tmp_path / "cifar-10-batches-bin"
    folder.mkdir()
    rng = np.random.default_rng(0)
    for name, n in [(f"data_batch_{i}.bin", 4) for i in range(1, 6)] + [("test_batch.bin", 3)]:
        records = rng.integers(0, 256, (n, 3073)).astype(np.uint8)
        records[:, 0] = rng.integers(0, 10, n)
        records.tofile(folder / name)
    (folder / "batches.meta.txt").write_text(
        "\n".join(["airplane", "automobile", "bird", "cat", "deer", "dog", "frog", "horse", "ship", "truck"])
    )
    cfg = DataSection(source="cifar10", root=str(tmp_path))
    train = load_split(cfg, "train")
    assert tuple(train.images.shape) == (20, 3, 32, 32) and train.class_names[3] == "cat"
    first = np.fromfile(folder / "data_batch_1.bin", dtype=np.uint8)[:3073]
    assert int(train.labels[0]) == first[0] and np.array_equal(train.images[0].numpy().ravel(), first[1:])
    assert len(load_split(cfg, "test")) == 3


def test_pickled_cifar10_is_refused_with_a_pointer(tmp_path):
    (tmp_path / "cifar-10-batches-py").mkdir()
    with pytest.raises(UserError, match="does not unpickle"):
        load_split(DataSection(source="cifar10", root=str(tmp_path)), "train")
