"""Bring your own encoder/decoder (dotted path or file path) and your own images, through all four stages."""

import json
import shutil
from pathlib import Path

import numpy as np
import pytest
import torch
from conftest import tiny_args
from PIL import Image
from safetensors.torch import save_file
from typer.testing import CliRunner

from vqprior.cli import app

EXAMPLE = Path(__file__).resolve().parent.parent / "examples" / "half_res_encoder.py"
runner = CliRunner()


def run(*args):
    return runner.invoke(app, [str(a) for a in args], catch_exceptions=False)


def run_all(out, *extra, name="t"):
    result = run("run", *tiny_args(out, name), "--per-class", 2, "--trust-code", *extra)
    assert result.exit_code == 0, result.output
    return out / name


def component_args(target, params="{width=8, blocks=1}"):
    return [
        "--set",
        f'vqvae.encoder={{target="{target}:HalfResEncoder", params={params}}}',
        "--set",
        f'vqvae.decoder={{target="{target}:HalfResDecoder", params={params}}}',
    ]


def test_custom_encoder_by_file_path(tmp_path):
    run_dir = run_all(tmp_path, *component_args(EXAMPLE))
    manifest = json.loads((run_dir / "stage2" / "manifest.json").read_text())
    assert manifest["grid"] == [14, 14]
    saved = json.loads((run_dir / "stage1" / "config.json").read_text())["config"]["vqvae"]["encoder"]
    assert saved["target"] == f"{EXAMPLE}:HalfResEncoder" and saved["params"] == {"width": 8, "blocks": 1}
    assert np.load(run_dir / "stage4" / "samples.npz")["codes"].shape[1:] == (14, 14)


def test_custom_encoder_by_dotted_path(tmp_path, monkeypatch):
    pkg = tmp_path / "src" / "my_models"
    pkg.mkdir(parents=True)
    (pkg / "__init__.py").write_text("")
    shutil.copy(EXAMPLE, pkg / "halfres.py")
    monkeypatch.syspath_prepend(str(tmp_path / "src"))
    run_dir = run_all(tmp_path, *component_args("my_models.halfres"))
    assert json.loads((run_dir / "stage2" / "manifest.json").read_text())["grid"] == [14, 14]


def test_frozen_pretrained_encoder_keeps_its_weights(tmp_path):
    from examples_loader import half_res_encoder

    enc = half_res_encoder().HalfResEncoder(1, 8, width=8, blocks=1)
    weights = tmp_path / "enc.safetensors"
    save_file({k: v.contiguous() for k, v in enc.state_dict().items()}, str(weights))
    run_dir = run_all(
        tmp_path,
        *component_args(EXAMPLE),
        "--set",
        f'vqvae.encoder.weights="{weights}"',
        "--set",
        "vqvae.encoder.trainable=false",
    )
    from safetensors.torch import load_file

    trained = load_file(str(run_dir / "stage1" / "vqvae.safetensors"))
    for k, v in enc.state_dict().items():
        assert torch.equal(trained[f"encoder.{k}"], v), k


BAD_COMPONENTS = [
    ('vqvae.encoder={target="no_such_module_xyz:Enc"}', "cannot import module 'no_such_module_xyz'"),
    (f'vqvae.encoder={{target="{EXAMPLE}:NoSuchClass"}}', "has no 'NoSuchClass'"),
    ('vqvae.encoder={target="/nowhere/enc.py:Enc"}', "not found"),
    ('vqvae.encoder={target="torch.nn:Flatten"}', "must return [B, D, h, w] latents, got rank 2"),
    ("vqvae.code_dim=9", "returns D=8 channels but vqvae.code_dim=9"),
    ('vqvae.decoder={target="torch.nn:Identity"}', "must return images of shape [2, 1, 28, 28], got [2, 8, 7, 7]"),
    ("vqvae.encoder.params={bogus=1}", "constructing it with params"),
    ('vqvae.encoder={target="no-colon"}', "or look like 'package.module:Class'"),
]


@pytest.mark.parametrize("override,message", BAD_COMPONENTS)
def test_bad_component_is_one_line_naming_it(tmp_path, override, message):
    args = tiny_args(tmp_path)
    if override.startswith("vqvae.code_dim"):
        args += ["--set", "vqvae.encoder.params={hidden=16, res_blocks=1, code_dim=8}"]
    result = run("run-stage", 1, *args, "--set", override, "--trust-code")
    assert result.exit_code == 2, result.output
    assert message in result.output, result.output
    assert len(result.output.strip().splitlines()) == 1
    assert not (tmp_path / "t" / "stage1").exists()


# ------------------------------------------------------------------ image folders


def make_images(folder, n, size=(32, 32), mode="RGB", seed=0):
    rng = np.random.default_rng(seed)
    folder.mkdir(parents=True, exist_ok=True)
    for i in range(n):
        # smooth blobs, not noise, so the VQ-VAE has something to learn
        yy, xx = np.mgrid[0 : size[1], 0 : size[0]]
        cx, cy = rng.uniform(8, size[0] - 8), rng.uniform(8, size[1] - 8)
        blob = np.exp(-((xx - cx) ** 2 + (yy - cy) ** 2) / 40.0)
        shape = (*blob.shape, 3) if mode == "RGB" else blob.shape
        a = (255 * blob[..., None] * rng.uniform(0.3, 1, 3) if mode == "RGB" else 255 * blob).reshape(shape)
        Image.fromarray(a.astype(np.uint8), mode).save(folder / f"{i:03d}.png")


def folder_args(root, *extra):
    return [
        "--set",
        'data.source="folder"',
        "--set",
        f'data.root="{root}"',
        "--set",
        "data.train_limit=1000000",
        *extra,
    ]


def test_labeled_rgb_folder_32px_runs_all_stages(tmp_path):
    root = tmp_path / "imgs"
    for split, n in (("train", 24), ("test", 6)):
        for cls in ("circle", "square", "zebra"):
            make_images(root / split / cls, n, seed=hash((split, cls)) % 1000)
    run_dir = run_all(tmp_path, *folder_args(root))
    m2 = json.loads((run_dir / "stage2" / "manifest.json").read_text())
    assert m2["grid"] == [8, 8] and m2["class_names"] == ["circle", "square", "zebra"]
    assert m2["splits"]["train"]["count"] == 72 and m2["splits"]["test"]["count"] == 18
    npz = np.load(run_dir / "stage4" / "samples.npz")
    assert npz["images"].shape == (6, 3, 32, 32) and npz["labels"].tolist() == [0, 0, 1, 1, 2, 2]


def test_unlabeled_flat_folder_gives_an_unconditional_prior(tmp_path):
    root = tmp_path / "flat"
    make_images(root, 40, size=(28, 28), mode="L")
    run_dir = run_all(tmp_path, *folder_args(root))
    m2 = json.loads((run_dir / "stage2" / "manifest.json").read_text())
    assert m2["class_names"] is None and m2["splits"]["test"]["count"] == 4  # every 10th file
    assert json.loads((run_dir / "stage3" / "config.json").read_text())["prior"]["params"]["num_classes"] == 0
    assert np.load(run_dir / "stage4" / "samples.npz")["images"].shape == (2, 1, 28, 28)


def test_resize_makes_mixed_sizes_usable(tmp_path):
    root = tmp_path / "mixed"
    make_images(root, 10, size=(40, 30), mode="L")
    for i in range(10, 20):
        Image.new("L", (50, 64), 128).save(root / f"{i:03d}.png")
    run_dir = run_all(tmp_path, *folder_args(root, "--set", "data.image_size=28"))
    assert json.loads((run_dir / "stage1" / "config.json").read_text())["vqvae"]["image_shape"] == [1, 28, 28]


def test_unreadable_files_are_skipped_with_a_count_or_fail_when_strict(tmp_path):
    root = tmp_path / "imgs"
    make_images(root, 30, size=(28, 28), mode="L")
    (root / "broken.png").write_bytes(b"not a png at all")
    result = run("run-stage", 1, *tiny_args(tmp_path), *folder_args(root))
    assert result.exit_code == 0 and "skipped 1 unreadable file" in result.output
    result = run("run-stage", 1, *tiny_args(tmp_path, "strict"), *folder_args(root, "--set", "data.strict=true"))
    assert result.exit_code == 2 and "cannot read image" in result.output and "broken.png" in result.output


def bad_folder(kind, tmp_path):
    root = tmp_path / kind
    if kind == "empty":
        root.mkdir()
    elif kind == "mixed-sizes":
        make_images(root, 5, size=(28, 28), mode="L")
        Image.new("L", (32, 32)).save(root / "zz.png")
    elif kind == "class-mismatch":
        make_images(root / "train" / "a", 3, size=(28, 28), mode="L")
        make_images(root / "test" / "b", 3, size=(28, 28), mode="L")
    elif kind == "loose-and-classes":
        make_images(root / "a", 3, size=(28, 28), mode="L")
        make_images(root, 3, size=(28, 28), mode="L")
    elif kind == "only-text":
        root.mkdir()
        for i in range(3):
            (root / f"{i}.png").write_text("hello")
    return root


@pytest.mark.parametrize(
    "kind,message",
    [
        ("empty", "no images"),
        ("mixed-sizes", "set data.image_size"),
        ("class-mismatch", "class folders differ"),
        ("loose-and-classes", "mixes loose images"),
        ("only-text", "is a readable image"),
        ("missing", "is not a folder"),
    ],
)
def test_bad_image_folder_is_one_clear_line(tmp_path, kind, message):
    root = bad_folder(kind, tmp_path) if kind != "missing" else tmp_path / "nope"
    result = run("run-stage", 1, *tiny_args(tmp_path), *folder_args(root))
    assert result.exit_code == 2, result.output
    assert message in result.output and len(result.output.strip().splitlines()) == 1, result.output
    assert not (tmp_path / "t" / "stage1").exists()


PRIOR_EXAMPLE = Path(__file__).resolve().parent.parent / "examples" / "masked_linear_prior.py"


def test_own_prior_trains_and_samples_through_the_stages(tmp_path):
    target = f'prior.network={{target="{PRIOR_EXAMPLE}:MaskedLinearPrior", params={{height=7, width=7}}}}'
    run_dir = run_all(tmp_path, "--set", target)
    saved = json.loads((run_dir / "stage3" / "config.json").read_text())["prior"]
    assert saved["target"].endswith("masked_linear_prior.py:MaskedLinearPrior")
    assert saved["params"] == {"height": 7, "width": 7, "codebook_size": 16, "num_classes": 10}
    npz = np.load(run_dir / "stage4" / "samples.npz")
    assert npz["codes"].shape == (20, 7, 7) and npz["images"].shape == (20, 1, 28, 28)


def test_a_prior_that_peeks_at_the_future_is_refused_before_training(tmp_path):
    bad = tmp_path / "peek.py"
    bad.write_text(PRIOR_EXAMPLE.read_text().replace("diagonal=-1", "diagonal=0"))
    result = run(
        "run", *tiny_args(tmp_path), "--set", f'prior.network={{target="{bad}:MaskedLinearPrior"}}', "--trust-code"
    )
    assert result.exit_code == 2 and "is not causal" in result.output
    assert not (tmp_path / "t" / "stage3").exists()
