"""The four prior kinds (gated PixelCNN, Row LSTM, Diagonal BiLSTM, transformer): one interface, exact samplers, causality,
and the receptive fields the PixelRNN paper describes."""

import json

import numpy as np
import pytest
import torch
from conftest import registry_prior_kinds, tiny_args

from vqprior.config_files import load_config
from vqprior.errors import UserError
from vqprior.models.priors import check_prior, sample
from vqprior.models.priors.gated_pixelcnn import GatedPixelCNN
from vqprior.models.priors.pixel_rnn import DiagonalBiLSTM, RowLSTM, skew, unskew
from vqprior.models.priors.transformer import TransformerPrior
from vqprior.optimizer import WeightEMA

# every raster kind but the gated PixelCNN, whose samplers tests/test_sampling.py and test_pixelcnn.py check
OTHER_RASTER_KINDS = registry_prior_kinds(skip=("gated_pixelcnn",))

KINDS = {
    "gated_pixelcnn": lambda k, c: GatedPixelCNN(k, channels=8, layers=6, num_classes=c),
    "row_lstm": lambda k, c: RowLSTM(k, channels=8, layers=3, num_classes=c),
    "diagonal_bilstm": lambda k, c: DiagonalBiLSTM(k, channels=8, layers=3, num_classes=c),
    "transformer": lambda k, c: TransformerPrior(k, width=16, depth=2, heads=2, num_classes=c),
}


def random_prior(kind, num_classes=0, codebook=16, seed=0):
    torch.manual_seed(seed)
    model = KINDS[kind](codebook, num_classes).double()
    with torch.no_grad():  # larger weights than the default init, so every path matters
        for p in model.parameters():
            p.normal_(0, 0.5)
    return model


def input_dependence(model, codes, i, j):
    """Which input positions the logits at (i, j) depend on, by gradients through the embeddings."""
    seen = {}

    def keep(module, inputs, out):
        out.retain_grad()
        seen["embedding"] = out

    handle = model.embed.register_forward_hook(keep)
    try:
        logits = model(codes)
    finally:
        handle.remove()
    logits[0, :, i, j].sum().backward()
    grad = seen["embedding"].grad[0].abs().sum(-1)
    if grad.dim() == 1:  # the transformer embeds the raster sequence of codes 0..L-2 (code L-1 predicts nothing)
        grad = torch.nn.functional.pad(grad, (0, codes[0].numel() - len(grad))).view(codes.shape[1:])
    return grad > 0


@pytest.mark.parametrize("kind", list(KINDS))
@pytest.mark.parametrize("grid", [(7, 7), (5, 9), (6, 3)])
def test_nothing_at_or_after_a_position_reaches_its_logits(kind, grid):
    model = random_prior(kind)
    codes = torch.randint(0, 16, (1, *grid))
    height, width = grid
    for i in range(height):
        for j in range(width):
            seen = input_dependence(model, codes, i, j)
            future = [(r, c) for r in range(height) for c in range(width) if (r, c) >= (i, j) and seen[r, c]]
            assert not future, f"{kind}: logits at ({i},{j}) depend on {future}"
    check_prior(model, kind, grid)  # the contract probe the stages run agrees


@pytest.mark.parametrize("kind", list(KINDS))
def test_receptive_fields_are_the_papers(kind):
    # (4, 1) in a 7x7 map: the Row LSTM's triangle reaches one more column per row above (a code first reaches the
    # position right of it, so row i-r ends at column j+r-1), and everything further to the upper right is out of
    # its context; the Diagonal BiLSTM and the gated PixelCNN see every earlier code
    model = random_prior(kind)
    codes = torch.randint(0, 16, (1, 7, 7))
    i, j = 4, 1
    seen = input_dependence(model, codes, i, j)
    earlier = {(r, c) for r in range(7) for c in range(7) if (r, c) < (i, j)}
    missed = {(r, c) for (r, c) in earlier if not seen[r, c]}
    if kind == "row_lstm":
        triangle = {(r, c) for (r, c) in earlier if r == i or c <= j + (i - r) - 1}
        assert missed == earlier - triangle
        assert (3, 2) in missed and (0, 6) in missed and (3, 1) not in missed and (0, 4) not in missed
    else:
        assert not missed, f"{kind} is blind to {sorted(missed)}"


@pytest.mark.parametrize("kind", OTHER_RASTER_KINDS)
@pytest.mark.parametrize("num_classes", [0, 10])
@pytest.mark.parametrize("grid", [(7, 7), (5, 9), (6, 4), (1, 5)])
def test_incremental_sampler_draws_exactly_the_naive_samples(kind, num_classes, grid):
    model = random_prior(kind, num_classes)
    labels = torch.arange(6) % num_classes if num_classes else None
    for seed in (0, 1):
        naive = sample(model, 6, grid, labels, seed=seed, method="naive")
        cached = sample(model, 6, grid, labels, seed=seed, method="cached")
        assert torch.equal(naive, cached)
        assert len(naive.unique()) > 3


@pytest.mark.parametrize("guidance", [1.5, (1.0, 2.5)])
@pytest.mark.parametrize("kind", OTHER_RASTER_KINDS)
def test_incremental_sampler_continues_a_prefix_and_guides_exactly(kind, guidance):
    model = random_prior(kind, num_classes=4)
    labels = torch.tensor([0, 1, 2, 3])
    prefix = torch.randint(0, 16, (4, 7, 7))
    for keep in (1, 7, 17, 48):
        naive = sample(model, 4, (7, 7), labels, seed=3, method="naive", prefix=prefix, keep=keep, guidance=guidance)
        cached = sample(model, 4, (7, 7), labels, seed=3, method="cached", prefix=prefix, keep=keep, guidance=guidance)
        assert torch.equal(naive, cached)
        assert torch.equal(cached.view(4, -1)[:, :keep], prefix.view(4, -1)[:, :keep])


@pytest.mark.parametrize("kind", OTHER_RASTER_KINDS)
def test_recurrent_priors_in_float32_match_and_low_temperature_is_greedy(kind):
    model = random_prior(kind, num_classes=3).float()
    labels = torch.tensor([0, 1, 2])
    codes = sample(model, 3, (5, 6), labels, temperature=1e-6, seed=0)
    assert torch.equal(model(codes, labels).argmax(1), codes)
    assert torch.equal(
        sample(model, 3, (5, 6), labels, seed=4, method="naive"), sample(model, 3, (5, 6), labels, seed=4)
    )


def test_skew_moves_row_i_right_by_i_and_back():
    x = torch.arange(2 * 3 * 4).view(1, 2, 3, 4).float()
    s = skew(x)
    assert s.shape == (1, 2, 3, 6)
    assert torch.equal(s[0, :, 2, 2:6], x[0, :, 2]) and (s[0, :, 2, :2] == 0).all()
    assert torch.equal(unskew(s, 4), x)


def test_prior_kind_picks_the_network_and_keeps_its_params(tmp_path):
    cfg = load_config(overrides=["prior.network.params.channels=32", "prior.kind=diagonal_bilstm"])
    assert cfg.prior.network.target == "diagonal_bilstm"
    assert cfg.prior.network.params == {"channels": 32, "layers": 4}
    assert load_config(overrides=["prior.kind=row_lstm"]).prior.network.params["kernel"] == 3
    own = load_config(overrides=["prior.network.target=examples/masked_linear_prior.py:MaskedLinearPrior"])
    assert own.prior.kind == "custom"
    # a later network target wins and sets its kind; both in one place must agree
    later = load_config(
        overrides=["prior.kind=row_lstm", "prior.network.target=vqprior.models.priors.gated_pixelcnn:GatedPixelCNN"]
    )
    assert later.prior.kind == "gated_pixelcnn"
    both = tmp_path / "both.toml"
    both.write_text(
        '[prior]\nkind = "row_lstm"\n[prior.network]\ntarget = "vqprior.models.priors.gated_pixelcnn:GatedPixelCNN"\n'
    )
    with pytest.raises(UserError, match="prior.kind is 'row_lstm' but prior.network.target"):
        load_config(file=both)
    with pytest.raises(UserError, match="prior.kind: Input should be"):
        load_config(overrides=["prior.kind=pixelrnn"])


def test_a_config_saved_without_prior_kind_still_loads():
    from vqprior.config import Config
    from vqprior.config_files import validate_config

    data = Config().model_dump(mode="json")
    del data["prior"]["kind"]
    assert validate_config(data).prior.kind == "gated_pixelcnn"


def test_weight_ema_is_the_normalised_exponential_average_of_the_trained_weights():
    model = torch.nn.Linear(3, 2, bias=False)
    ema = WeightEMA(model, 0.9)
    seen = []
    for _ in range(15):
        with torch.no_grad():
            model.weight.normal_()
        seen.append(model.weight.clone())
        ema.update(model)
    weights = torch.tensor([0.9 ** (len(seen) - 1 - s) for s in range(len(seen))])
    expected = sum(w * x for w, x in zip(weights, seen)) / weights.sum()
    assert torch.allclose(ema.module.weight, expected, atol=1e-6)
    # resumed: a fresh averaged model loaded from the saved state continues the same average
    resumed = WeightEMA(model, 0.9)
    resumed.load_state_dict(ema.state_dict())
    with torch.no_grad():
        model.weight.normal_()
    ema.update(model)
    resumed.update(model)
    assert torch.allclose(ema.module.weight, resumed.module.weight)


def kind_config(out, kind):
    from conftest import tiny_args

    args = tiny_args(out, kind)
    sets = [
        args[i + 1]
        for i in range(0, len(args), 2)
        if args[i] == "--set" and not args[i + 1].startswith("prior.network")
    ]
    size = (
        [
            "prior.network.params.width=16",
            "prior.network.params.depth=2",
            "prior.network.params.heads=2",
            "prior.network.params.dropout=0.1",
        ]
        if kind == "transformer"
        else ["prior.network.params.channels=8", "prior.network.params.layers=2"]
    )
    sets += [
        f"run.name={kind}",
        f"prior.kind={kind}",
        *size,
        "prior.epochs=2",
        "prior.batch_size=32",
        "run.checkpoint_every=5",
        "prior.ema_decay=0.9",
    ]
    return load_config(overrides=sets)


@pytest.mark.parametrize("kind", OTHER_RASTER_KINDS)
def test_recurrent_kinds_run_through_the_pipeline_and_resume_bitwise(kind, tmp_path):
    # stages 3 and 4, the Python API and resume treat every kind alike: no special cases in the stages
    import shutil

    from safetensors.torch import load_file
    from test_resume import SignalAfter

    import vqprior
    from vqprior.stages import s1_vqvae, s2_codes, s3_prior, s4_sample
    from vqprior.training import Interrupted

    ref, resumed = tmp_path / "ref", tmp_path / "resumed"
    cfg = kind_config(ref, kind)
    for stage in (s1_vqvae, s2_codes, s3_prior, s4_sample):
        stage.run(cfg)
    run = vqprior.load(ref / kind, device="cpu")
    assert (
        type(run.prior).__name__
        == {"row_lstm": "RowLSTM", "diagonal_bilstm": "DiagonalBiLSTM", "transformer": "TransformerPrior"}[kind]
    )
    assert run.generate(labels=[1, 2], seed=0).images.shape == (2, 1, 28, 28)
    assert (ref / kind / "stage4" / "samples.png").is_file()

    for stage in ("stage1", "stage2"):
        shutil.copytree(ref / kind / stage, resumed / kind / stage)
    cfg = kind_config(resumed, kind)
    with pytest.raises(Interrupted):
        s3_prior.run(cfg, SignalAfter(23))
    s3_prior.run(cfg)
    for name in ("prior.safetensors", "prior_last.safetensors"):
        a, b = load_file(str(ref / kind / "stage3" / name)), load_file(str(resumed / kind / "stage3" / name))
        assert a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a), f"{name} differs after resume"


def test_weight_ema_follows_integer_buffers():
    # a prior of one's own may carry integer buffers (e.g. BatchNorm's num_batches_tracked): they follow the model
    model = torch.nn.Sequential(torch.nn.Linear(3, 3), torch.nn.BatchNorm1d(3))
    ema = WeightEMA(model, 0.9)
    for _ in range(4):
        model(torch.randn(8, 3))
        ema.update(model)
    assert int(ema.module[1].num_batches_tracked) == int(model[1].num_batches_tracked) == 4


def test_a_new_prior_kind_is_one_module_and_one_registry_line(tmp_path, monkeypatch):
    from typer.testing import CliRunner

    from vqprior import registry
    from vqprior.cli import app

    monkeypatch.setitem(
        registry.BUILTINS, "toy", registry.Builtin("toy_prior_kind:ToyPrior", "prior", {"height": 7, "width": 7})
    )
    cfg = load_config(overrides=['prior.kind="toy"'])
    assert cfg.prior.network.target == "toy" and cfg.prior.network.params == {"height": 7, "width": 7}
    runner = CliRunner()
    tiny = tiny_args(tmp_path)
    drop = tiny.index("prior.network.params={channels=8, layers=2, kernel=3}")
    args = tiny[: drop - 1] + tiny[drop + 1 :]  # the toy prior has no channels or layers
    for stage in (1, 2, 3, 4):  # no --trust-code: a registry entry is a built-in
        result = runner.invoke(
            app, ["run-stage", str(stage), *args, "--set", 'prior.kind="toy"'], catch_exceptions=False
        )
        assert result.exit_code == 0, result.output
    saved = json.loads((tmp_path / "t" / "stage3" / "config.json").read_text())
    assert saved["prior"]["target"] == "toy"
    assert np.load(tmp_path / "t" / "stage4" / "samples.npz")["images"].shape[1:] == (1, 28, 28)
