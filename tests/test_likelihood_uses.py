"""What a likelihood model does beyond sampling: the Python API, completion, Bayes classification, scoring, morphs."""

from __future__ import annotations

import json
import re
from pathlib import Path

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from conftest import tiny_args
from PIL import Image
from typer.testing import CliRunner

import vqprior
from vqprior.cli import app
from vqprior.errors import UserError
from vqprior.models.priors.base import sample
from vqprior.models.priors.classes import class_posterior
from vqprior.models.priors.gated_pixelcnn import GatedPixelCNN

runner = CliRunner()


def invoke(*args):
    result = runner.invoke(app, [str(a) for a in args], catch_exceptions=False)
    result.flat = " ".join(result.output.split())
    return result


@pytest.fixture(scope="module")
def trained(tmp_path_factory):
    """A tiny run whose prior has seen enough data to tell digits from noise."""
    out = tmp_path_factory.mktemp("api")
    args = [
        *tiny_args(out),
        "--set",
        "data.train_limit=6000",
        "--set",
        "vqvae.epochs=2",
        "--set",
        "vqvae.codebook_size=32",
        "--set",
        "vqvae.encoder.params={hidden=32, res_blocks=1}",
        "--set",
        "vqvae.decoder.params={hidden=32, res_blocks=1}",
        "--set",
        "prior.network.params={channels=32, layers=4, kernel=3}",
        "--set",
        "prior.epochs=3",
        "--per-class",
        2,
    ]
    result = invoke("run", *args)
    assert result.exit_code == 0, result.output
    return out / "t"


def test_python_api_in_five_lines(trained):
    run = vqprior.load(trained, device="cpu")
    out = run.generate(labels=[3, 3, 7], seed=0)
    assert out.images.shape == (3, 1, 28, 28) and out.images.dtype == torch.uint8 and out.codes.shape == (3, 7, 7)
    codes = run.encode(out.images)
    assert codes.shape == (3, 7, 7) and run.decode(codes).shape == (3, 1, 28, 28)
    assert torch.equal(run.decode(out.codes), out.images)  # generate = sample codes, then decode them
    assert torch.equal(run.generate(labels=[3, 3, 7], seed=0).images, out.images)
    soft = run.generate(labels=torch.tensor([[0.5] + [0.0] * 8 + [0.5]], dtype=torch.float64), seed=0)
    assert soft.images.shape == (1, 1, 28, 28)


def test_the_readme_python_example_runs():
    # the README's Python block, verbatim: it loads the pretrained run shipped in the package
    readme = (Path(__file__).parents[1] / "README.md").read_text()
    blocks = re.findall(r"```python\n(.*?)```", readme, re.S)
    example = next(b for b in blocks if "vqprior.load(" in b)
    assert len(example.strip().splitlines()) <= 6
    scope: dict = {}
    exec(example, scope)
    assert scope["digits"].images.shape == (3, 1, 28, 28) and scope["digits"].codes.shape == (3, 7, 7)
    assert scope["classes"].shape == (3,) and torch.allclose(
        scope["posterior"].sum(1), torch.ones(3, dtype=scope["posterior"].dtype)
    )
    assert scope["classes"].tolist() == [3, 3, 7]  # the pretrained prior reads its own digits as their class


def test_api_bad_inputs_are_clear(trained):
    run = vqprior.load(trained, device="cpu")
    with pytest.raises(UserError, match="images must be"):
        run.encode(torch.zeros(2, 1, 32, 32, dtype=torch.uint8))
    with pytest.raises(UserError, match="class-conditional"):
        run.generate(n=4)
    with pytest.raises(UserError, match="out of range"):
        run.complete(torch.zeros(1, 1, 28, 28, dtype=torch.uint8), keep_rows=9)


def test_completion_keeps_the_kept_codes_and_finds_the_class(trained):
    run = vqprior.load(trained, device="cpu")
    from vqprior.config import DataSection
    from vqprior.datasets import load_split

    test = load_split(DataSection(test_limit=2000), "test")
    sevens = test.images[test.labels == 7][:20]
    done = run.complete(sevens, keep_rows=4, samples=3, seed=1)
    assert int(done.keep[0].sum()) == 28 and done.exact and done.method == "exact"
    assert done.codes.shape == (20, 3, 7, 7) and done.images.shape == (20, 3, 1, 28, 28)
    kept = run.encode(sevens).view(20, 1, -1)[:, :, :28]
    assert torch.equal(done.codes.view(20, 3, -1)[:, :, :28], kept.expand(20, 3, 28))
    assert torch.allclose(done.posterior.sum(1), torch.ones(20, dtype=torch.float64))
    assert (done.posterior.argmax(1) == 7).float().mean() >= 0.6  # the top half of a 7 mostly says 7
    assert done.labels.shape == (20, 3)


def test_any_region_is_filled_around_the_kept_codes(trained):
    from vqprior.config import DataSection
    from vqprior.datasets import load_split
    from vqprior.masks import erase_box

    run = vqprior.load(trained, device="cpu")
    test = load_split(DataSection(test_limit=200), "test")
    digits = test.images[:6]
    box = erase_box("4,8,24,16", (28, 28))  # a band through the middle: kept codes above and below it
    done = run.complete(digits, keep=box, samples=2, seed=3)
    assert (
        done.method == "mcmc"
        and not done.exact
        and done.keep.shape == (6, 7, 7)
        and int((~done.keep[0]).sum()) == 5 * 2
    )
    codes = run.encode(digits)
    for k in range(2):
        assert torch.equal(done.codes[:, k][done.keep], codes[done.keep])  # kept codes never change
    assert not torch.equal(done.codes[:, 0], codes[:, None].expand_as(done.codes)[:, 0])  # the band was resampled
    assert torch.allclose(done.posterior.sum(1), torch.ones(6)) and done.labels.shape == (6, 2)
    again = run.complete(digits, keep=box, samples=2, seed=3)
    assert torch.equal(again.codes, done.codes)
    panels = done.panels()
    assert panels.shape == (6, 4, 1, 28, 28) and (panels[:, 1, 0, 8:16, 4:24] == 128).all()
    # a given class is used as given; a code-grid mask works as well as a pixel mask
    grid_mask = np.ones((7, 7), bool)
    grid_mask[5:] = False
    fixed = run.complete(digits[:2], keep=grid_mask, samples=1, label=3, sweeps=1)
    assert fixed.posterior is None and (fixed.labels == 3).all() and fixed.exact  # bottom rows erased = top prefix
    left = run.complete(digits[:2], keep="left", samples=1)
    assert not left.exact and left.keep[0, :, :3].all() and not left.keep[0, :, 3:].any()
    with pytest.raises(UserError, match="either keep_rows"):
        run.complete(digits[:1], keep_rows=2, keep="top")


def test_prefix_completion_through_the_api_is_the_naive_sampler(trained):
    run = vqprior.load(trained, device="cpu")
    prefix = run.encode(torch.zeros(4, 1, 28, 28, dtype=torch.uint8))
    labels = torch.tensor([1, 2, 3, 4])
    naive = sample(run.prior, 4, run.grid, labels, 1.0, 5, "naive", prefix=prefix, keep=17, guidance=1.5)
    cached = sample(run.prior, 4, run.grid, labels, 1.0, 5, "cached", prefix=prefix, keep=17, guidance=1.5)
    assert torch.equal(naive, cached)


def test_bayes_posterior_on_separable_synthetic_codes():
    # class c -> maps whose codes are mostly c: a few steps of training make the classes trivially separable
    torch.manual_seed(0)
    k, classes = 6, 4
    labels = torch.arange(400) % classes
    codes = labels[:, None, None].expand(400, 5, 5).clone()
    noise = torch.rand(400, 5, 5) < 0.1
    codes[noise] = torch.randint(0, k, (int(noise.sum()),))
    model = GatedPixelCNN(k, channels=16, layers=3, num_classes=classes)
    opt = torch.optim.Adam(model.parameters(), 1e-2)
    for _ in range(60):
        loss = F.cross_entropy(model(codes, labels), codes)
        opt.zero_grad()
        loss.backward()
        opt.step()
    post = class_posterior(model, codes[:40], torch.full((classes,), -np.log(classes)), positions=10)
    assert torch.allclose(post.sum(1), torch.ones(40, dtype=torch.float64))
    assert (post.argmax(1) == labels[:40]).all()
    # a skewed class prior moves the posterior of an ambiguous (empty) prefix to the frequent class
    skew = torch.log(torch.tensor([0.01, 0.01, 0.97, 0.01]))
    assert (class_posterior(model, codes[:5], skew, positions=0).argmax(1) == 2).all()


def test_score_says_noise_is_less_likely_than_digits(trained):
    run = vqprior.load(trained, device="cpu")
    from vqprior.config import DataSection
    from vqprior.datasets import load_split

    digits = load_split(DataSection(test_limit=100), "test").images
    noise = torch.randint(0, 256, (100, 1, 28, 28), generator=torch.Generator().manual_seed(0), dtype=torch.uint8)
    d, z = run.score(digits), run.score(noise)
    assert d["code_bits"].median() < z["code_bits"].median()
    assert d["image_bits_bound"].median() < z["image_bits_bound"].median()
    assert d["recon_mse"].median() < z["recon_mse"].median()


def test_generative_classifier_beats_chance(trained):
    run = vqprior.load(trained, device="cpu")
    from vqprior.config import DataSection
    from vqprior.datasets import load_split

    test = load_split(DataSection(test_limit=300), "test")
    pred, post = run.classify(test.images)
    assert (pred == test.labels).double().mean() > 0.3 and post.shape == (300, 10)  # chance is 0.1


def test_complete_score_classify_commands(trained, tmp_path):
    where = ["--name", "t", "--out-dir", trained.parent, "--device", "cpu"]
    result = invoke("complete", *where, "--from", "test", "--n", 3, "--samples", 2)
    assert result.exit_code == 0 and "class posterior" in result.flat, result.output
    with Image.open(trained / "complete" / "completions.png") as grid:
        assert grid.size == (4 * 30 + 2, 3 * 30 + 2)  # original | kept | 2 completions, one row per image
    png = tmp_path / "digit.png"
    Image.fromarray(np.zeros((28, 28), np.uint8)).save(png)
    npz = tmp_path / "some.npz"
    np.savez(npz, images=np.zeros((2, 1, 28, 28), np.uint8))
    for extra in (["--erase", "8,8,20,20"], ["--keep", "bottom"], ["--keep-mask", str(tmp_path / "mask.png")]):
        if extra[0] == "--keep-mask":
            mask = np.full((28, 28), 255, np.uint8)
            mask[10:20, 5:15] = 0
            Image.fromarray(mask).save(tmp_path / "mask.png")
        result = invoke("complete", *where, "--from", "test", "--n", 2, "--samples", 2, "--sweeps", 1, *extra)
        assert result.exit_code == 0 and "4 drafts per class, 1 MCMC sweeps" in result.flat, result.output
        saved = np.load(trained / "complete" / "completions.npz")
        assert saved["keep"].shape == (2, 7, 7) and not saved["keep"].all()
    # --out: a folder of the user's, never replaced without --replace; the run's complete/ is left as it was
    before = (trained / "complete" / "completions.npz").read_bytes()
    mine = tmp_path / "mine"
    result = invoke("complete", *where, "--from", "test", "--n", 2, "--samples", 3, "--keep-rows", 2, "--out", mine)
    assert result.exit_code == 0 and str(mine / "completions.png") in result.flat, result.output
    assert np.load(mine / "completions.npz")["images"].shape[:2] == (2, 3)
    assert (trained / "complete" / "completions.npz").read_bytes() == before
    again = invoke("complete", *where, "--from", "test", "--n", 1, "--samples", 1, "--out", mine)
    assert again.exit_code != 0 and f"{mine} exists; pass --replace" in again.flat, again.output
    assert np.load(mine / "completions.npz")["images"].shape[:2] == (2, 3)  # nothing lost
    again = invoke("complete", *where, "--from", "test", "--n", 1, "--samples", 1, "--out", mine, "--replace")
    assert again.exit_code == 0 and np.load(mine / "completions.npz")["images"].shape[:2] == (1, 1), again.output
    assert sorted(p.name for p in tmp_path.iterdir() if p.name.startswith(".")) == []  # no temporary folder left
    result = invoke("complete", *where, "--from", "test", "--out", png)
    assert result.exit_code != 0 and "is a file" in result.flat
    from vqprior.generated_files import PACKAGE

    result = invoke("complete", *where, "--from", "test", "--out", PACKAGE / "completions")
    assert result.exit_code != 0 and "inside the installed vqprior package" in result.flat
    assert not (PACKAGE / "completions").exists()
    result = invoke("complete", *where, "--from", "test", "--n", 1, "--samples", 1, "--out", png / "inside")
    assert result.exit_code != 0 and "choose a writable --out folder" in result.flat, result.output
    result = invoke("score", png, npz, *where)
    assert result.exit_code == 0, result.output
    rows = (trained / "score" / "scores.csv").read_text().splitlines()
    assert len(rows) == 4 and rows[0].startswith("input,code_bits")
    assert (trained / "score" / "histogram.png").is_file() and len(
        json.loads((trained / "score" / "scores.json").read_text())["code_bits"]
    ) == 3
    result = invoke("classify", *where, "--from", "test", "--n", 50)
    assert result.exit_code == 0 and "generative classifier" in result.flat


@pytest.mark.parametrize(
    "args,message",
    [
        (["complete", "--from", "test", "--keep-rows", "8"], "out of range"),
        (["score", "{tmp}/broken.png"], "cannot read"),
        (["score"], "no input"),
        (["complete", "--from", "test", "--label", "12"], "out of range"),
        (["complete", "--from", "test", "--erase", "0,0,28,28"], "keeps nothing"),
        (["complete", "--from", "test", "--erase", "3,3"], "four integers"),
        (["complete", "--from", "test", "--keep", "middle"], "choose one of top"),
        (["complete", "--from", "test", "--keep", "top", "--keep-rows", "2"], "give one of"),
        (["complete", "--from", "test", "--keep-mask", "{tmp}/broken.png"], "cannot read"),
    ],
)
def test_bad_inputs_to_the_likelihood_commands(trained, tmp_path, args, message):
    Image.fromarray(np.zeros((32, 32), np.uint8)).save(tmp_path / "wrong.png")
    (tmp_path / "broken.png").write_bytes(b"not a png")
    args = [a.replace("{tmp}", str(tmp_path)) for a in args]
    before = sorted(p.name for p in trained.iterdir())
    result = invoke(*args, "--name", "t", "--out-dir", trained.parent, "--device", "cpu")
    assert result.exit_code == 2 and message in result.flat and "Traceback" not in result.output, result.output
    assert len([line for line in result.output.splitlines() if line.strip()]) == 1
    assert sorted(p.name for p in trained.iterdir()) == before


def test_morph_strip_and_gif(trained):
    args = [*tiny_args(trained.parent)]
    result = invoke("run-stage", 4, *args, "--morph", "4:9", "--steps", 5, "--per-class", 3)
    assert result.exit_code == 0, result.output
    with Image.open(trained / "stage4" / "morph.gif") as gif:
        assert gif.n_frames <= 5
    with Image.open(trained / "stage4" / "morph.png") as strip:
        assert strip.size == (5 * 30 + 2, 3 * 30 + 2)
    npz = np.load(trained / "stage4" / "samples.npz")
    assert npz["codes"].shape == (3, 5, 7, 7) and not np.array_equal(npz["codes"][:, 0], npz["codes"][:, -1])
    # the ends of a morph are the plain class-conditional samples of the same noise
    run = vqprior.load(trained, device="cpu")
    ends = sample(run.prior, 3, run.grid, torch.tensor([4, 4, 4]), run.temperature, 0, guidance=run.guidance)
    assert torch.equal(torch.from_numpy(npz["codes"][:, 0]), ends)


def test_a_run_whose_prior_learned_the_reverse_order_completes_a_kept_bottom_exactly(tmp_path):
    """prior.network.params.orders through the whole pipeline: stage 3 trains the reverse network beside the raster
    one and saves it; `complete` continues a kept bottom with it (exact, the class posterior from its likelihood) and
    keeps the kept codes; a kept left part, an order not learned, still goes by importance resampling."""
    import json as json_

    params = "prior.network.params={channels=8, layers=2, kernel=3, orders=['reverse']}"
    result = runner.invoke(app, ["run", *tiny_args(tmp_path), "--set", params], catch_exceptions=False)
    assert result.exit_code == 0, result.output
    saved = json_.loads((tmp_path / "t" / "stage3" / "config.json").read_text())["prior"]["params"]
    assert saved["orders"] == ["reverse"]
    run = vqprior.load(tmp_path / "t", device="cpu")
    assert run.prior.order("reverse") is not None and run.prior.order("transpose") is None
    digits = run.test_images(6)
    bottom = run.complete(digits, keep="bottom", samples=3, seed=1)
    assert bottom.exact and bottom.order == "reverse" and bottom.posterior.shape == (6, 10)
    kept = bottom.keep[0]
    assert kept[-3:].all() and not kept[:3].any()
    assert (bottom.codes[:, :, kept] == run.encode(digits)[:, None][:, :, kept]).all()
    assert torch.allclose(bottom.posterior.sum(1), torch.ones(6, dtype=bottom.posterior.dtype))
    left = run.complete(digits, keep="left", samples=1, seed=1)
    assert left.method == "mcmc" and left.order == "raster"
    shown = runner.invoke(
        app, ["complete", "--name", "t", "--out-dir", str(tmp_path), "--from", "test", "--n", "2", "--keep", "bottom"]
    )
    assert shown.exit_code == 0 and "exact: a kept prefix in the reverse order" in shown.output, shown.output
