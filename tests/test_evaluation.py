"""Evaluation: the Fréchet distance against closed forms, the classifier cache, eval.json, and the report in a real browser."""

from __future__ import annotations

import json
import re
import shutil
import subprocess

import numpy as np
import pytest
import torch
from conftest import tiny_args
from PIL import Image
from typer.testing import CliRunner

from vqprior.cli import app
from vqprior.evaluation import classifier as classifier_module
from vqprior.evaluation.frechet import frechet_distance, frechet_distance_from_stats, precision_recall
from vqprior.evaluation.run_eval import class_counts

runner = CliRunner()


def test_frechet_distance_of_diagonal_gaussians_is_the_closed_form():
    mu1, mu2 = torch.tensor([0.0, 1.0, 2.0]), torch.tensor([1.0, 1.0, 0.0])
    a, b = torch.tensor([1.0, 4.0, 9.0]), torch.tensor([4.0, 1.0, 1.0])
    fd = frechet_distance_from_stats(mu1.double(), torch.diag(a).double(), mu2.double(), torch.diag(b).double())
    expected = ((mu1 - mu2) ** 2).sum() + ((a.sqrt() - b.sqrt()) ** 2).sum()
    assert fd == pytest.approx(float(expected), rel=1e-9)


def test_frechet_distance_matches_a_general_matrix_square_root():
    scipy_linalg = pytest.importorskip("scipy.linalg")
    g = torch.Generator().manual_seed(0)
    m1, m2 = torch.randn(6, 6, generator=g, dtype=torch.float64), torch.randn(6, 6, generator=g, dtype=torch.float64)
    s1, s2 = m1 @ m1.T + 0.1 * torch.eye(6, dtype=torch.float64), m2 @ m2.T + 0.1 * torch.eye(6, dtype=torch.float64)
    mu1, mu2 = torch.randn(6, generator=g, dtype=torch.float64), torch.randn(6, generator=g, dtype=torch.float64)
    cross = scipy_linalg.sqrtm(s1.numpy() @ s2.numpy()).real
    expected = float(((mu1 - mu2) ** 2).sum() + s1.trace() + s2.trace() - 2 * np.trace(cross))
    assert frechet_distance_from_stats(mu1, s1, mu2, s2) == pytest.approx(expected, rel=1e-8)


def test_frechet_distance_of_samples_from_one_distribution_is_small_and_shift_adds_its_square():
    g = torch.Generator().manual_seed(1)
    a, b = torch.randn(20000, 4, generator=g), torch.randn(20000, 4, generator=g)
    assert frechet_distance(a, b) < 0.01
    assert frechet_distance(a, b + torch.tensor([3.0, 0, 0, 0])) == pytest.approx(9.0, abs=0.1)


def test_precision_recall_of_a_collapsed_generator():
    g = torch.Generator().manual_seed(2)
    real = torch.randn(2000, 2, generator=g)
    collapsed = 0.05 * torch.randn(2000, 2, generator=g)  # all near the centre of the real data
    precision, recall = precision_recall(real, collapsed)
    assert precision > 0.9 and recall < 0.3
    same_p, same_r = precision_recall(real, torch.randn(2000, 2, generator=g))
    assert same_p > 0.85 and same_r > 0.85


def test_samples_are_drawn_at_the_training_labels_class_frequencies():
    labels = torch.tensor([0] * 6 + [1] * 3 + [2])  # 60%, 30%, 10%, and no class 3
    assert class_counts(10, labels, 4) == [6, 3, 1, 0]
    assert class_counts(7, labels, 4) == [4, 2, 1, 0]  # 4.2, 2.1, 0.7: the largest remainder gets the last one
    assert class_counts(1000, labels, 4) == [600, 300, 100, 0]
    mnist_like = torch.randint(0, 10, (6000,), generator=torch.Generator().manual_seed(0))
    counts = class_counts(10_000, mnist_like, 10)
    frequencies = torch.bincount(mnist_like, minlength=10) / 6000
    assert sum(counts) == 10_000 and all(abs(k - 10_000 * f) < 1 for k, f in zip(counts, frequencies.tolist()))


@pytest.fixture(scope="module")
def evaluated_run(tmp_path_factory):
    out = tmp_path_factory.mktemp("eval")
    result = runner.invoke(app, ["run", *tiny_args(out), "--per-class", 2], catch_exceptions=False)
    assert result.exit_code == 0, result.output
    result = runner.invoke(
        app, ["eval", "--name", "t", "--out-dir", str(out), "--n", 200, "--device", "cpu"], catch_exceptions=False
    )
    assert result.exit_code == 0, result.output
    return out / "t", result.output


def test_eval_json_has_every_number_and_the_table_is_printed(evaluated_run):
    run_dir, output = evaluated_run
    ev = json.loads((run_dir / "eval" / "eval.json").read_text())
    assert ev["n_samples"] == 200 and ev["reference"] == "test"
    s, spaces = ev["samples"], ev["spaces"]
    assert set(spaces) == {"cnn", "wide", "lenet"} and set(ev["feature_nets"]) == set(spaces)
    for sp in spaces.values():
        assert sp["fd"] > 0 and sp["floor_fd"] > 0 and sp["fd_ratio"] == pytest.approx(sp["fd"] / sp["floor_fd"])
        assert sp["recon_fd_ratio"] == pytest.approx(sp["recon_fd"] / sp["full_floor_fd"])
        assert 0 <= sp["conditional_accuracy"] <= 1 and 0 <= sp["precision"] <= 1
        # this tiny run holds out only 100 real images: the floor uses all of them, and FD 100 of the 200 samples
        assert sp["floor_fd"] == pytest.approx(sp["full_floor_fd"])
    # the headline is the worst space; the floor is measured at the samples' own n
    assert s["fd_ratio"] == max(sp["fd_ratio"] for sp in spaces.values()) == spaces[s["worst_space"]]["fd_ratio"]
    assert ev["floor"]["real_images"] == 100
    assert s["fd"] == spaces["cnn"]["fd"] and s["kid"] == spaces["cnn"]["kid"]
    assert 0 <= s["conditional_accuracy"] <= 1 and set(s["per_class_accuracy"]) == {str(d) for d in range(10)}
    # the samples' classes come at the training split's frequencies, as the real images' do
    from vqprior.api import Run
    from vqprior.datasets import load_split

    train_labels = load_split(Run(run_dir, "cpu").data, "train").labels
    assert list(s["class_counts"].values()) == class_counts(200, train_labels, 10) != [20] * 10
    assert 0 <= s["precision"] <= 1 and 0 <= s["recall"] <= 1
    assert isinstance(ev["warnings"], list)
    v, p = ev["vqvae"], ev["prior"]
    assert v["recon_fd_ratio"] == max(sp["recon_fd_ratio"] for sp in spaces.values())
    assert v["test_psnr"] == pytest.approx(10 * np.log10(1 / v["test_recon_mse"]))
    assert p["test_bits_per_map"] == pytest.approx(49 * p["test_bits_per_code"])
    # the image bound counts the prior's bits and the decoder's, per pixel
    assert p["image_nll_bound_bits_per_dim"] == pytest.approx(
        (p["test_bits_per_map"] + p["decoder_bits_per_image"]) / 784
    )
    assert 0 < p["image_nll_bound_bits_per_dim"] < 8
    assert 0 <= ev["classifier"]["test_accuracy"] <= 1
    with Image.open(run_dir / "eval" / "samples.png") as grid:
        width, height = grid.size  # 10 per class, one row per class, the class names in a column on the left
        assert height == 10 * 30 + 2 and 10 * 30 + 2 < width < 10 * 30 + 2 + 40
    assert "FD / floor" in output and "conditional accuracy" in output and "KID" in output
    # the default guidance is a ramp, written first-to-last in the setting's name
    assert sorted(f.name for f in (run_dir / "eval" / "results").iterdir()) == [
        "test-n200-t1-g1.25to2-seed0.json",
        "test-n200-t1-g1.25to2-seed0.png",  # the sheet of the samples that result scored
    ]
    assert ev["guidance"] == [1.25, 2.0] and "guidance 1.25:2" in " ".join(output.split())


def test_each_evaluation_setting_keeps_its_own_result(evaluated_run, tmp_path):
    import shutil

    run_dir = tmp_path / "t"
    shutil.copytree(evaluated_run[0], run_dir)
    args = ["eval", "--name", "t", "--out-dir", str(tmp_path), "--n", 200, "--device", "cpu"]
    first = runner.invoke(app, [*args, "--temperature", "0.9"], catch_exceptions=False)
    assert first.exit_code == 0 and "kept 1 evaluation(s) at other settings" in first.output, first.output
    again = runner.invoke(app, [*args, "--temperature", "0.9"], catch_exceptions=False)
    assert "replaced this run's previous evaluation at the same setting" in again.output, again.output
    ramp = runner.invoke(app, [*args, "--temperature", "0.9", "--guidance", "2:1"], catch_exceptions=False)
    assert ramp.exit_code == 0, ramp.output
    back = runner.invoke(app, [*args, "--temperature", "0.9"], catch_exceptions=False)  # the latest: the default
    assert back.exit_code == 0, back.output
    names = sorted(f.name for f in (run_dir / "eval" / "results").iterdir() if f.suffix == ".json")
    assert names == [
        "test-n200-t0.9-g1.25to2-seed0.json",
        "test-n200-t0.9-g2to1-seed0.json",
        "test-n200-t1-g1.25to2-seed0.json",
    ]
    assert json.loads((run_dir / "eval" / "results" / names[1]).read_text())["guidance"] == [2, 1]
    assert json.loads((run_dir / "eval" / "eval.json").read_text())["temperature"] == 0.9
    html = (run_dir / "report.html").read_text()
    assert "Every setting this run was evaluated at" in html and "not comparable" in html  # the tiny run: degenerate
    from vqprior.report.runs import collect_runs

    (row,) = collect_runs(tmp_path)
    assert "200 · 0.9 · 1.25:2 (test, seed 0)" in row
    assert any("degenerate code" in cell for cell in row)  # 600 training images, one epoch: flagged


def test_holdout_keeps_the_validation_slice_out_of_training_and_eval_says_when_it_was_not(evaluated_run, tmp_path):
    import shutil

    from vqprior.evaluation.run_eval import SEEN_VALIDATION

    # the shared run learned from all 600 training images, its validation slice (the last 100) included
    run_dir = tmp_path / "t"
    shutil.copytree(evaluated_run[0], run_dir)
    valid = ["--n", 200, "--device", "cpu", "--reference", "valid"]
    seen = runner.invoke(app, ["eval", "--name", "t", "--out-dir", str(tmp_path), *valid], catch_exceptions=False)
    assert seen.exit_code == 0 and "--set data.holdout=true" in " ".join(seen.output.split()), seen.output
    assert SEEN_VALIDATION in json.loads((run_dir / "eval" / "eval.json").read_text())["warnings"]
    assert len(np.load(run_dir / "stage2" / "train_codes.npy")) == 600
    # with data.holdout stages 1-3 learn from the first 500 only, and scoring on the slice carries no such warning
    made = runner.invoke(app, ["run", *tiny_args(tmp_path, "h"), "--set", "data.holdout=true", "--per-class", 1])
    assert made.exit_code == 0 and "on 500 images" in made.output, made.output
    assert len(np.load(tmp_path / "h" / "stage2" / "train_codes.npy")) == 500
    assert len(np.load(tmp_path / "h" / "stage2" / "test_codes.npy")) == 200
    fair = runner.invoke(app, ["eval", "--name", "h", "--out-dir", str(tmp_path), *valid], catch_exceptions=False)
    assert fair.exit_code == 0 and "data.holdout" not in fair.output, fair.output
    ev = json.loads((tmp_path / "h" / "eval" / "eval.json").read_text())
    assert ev["reference"] == "valid" and SEEN_VALIDATION not in ev["warnings"]


def test_kernel_distance_is_the_unbiased_mmd_and_near_zero_for_one_distribution():
    from vqprior.evaluation.frechet import kernel_distance

    g = torch.Generator().manual_seed(3)
    x, y, z = torch.randn(300, 5, generator=g), torch.randn(200, 5, generator=g), torch.randn(200, 5, generator=g) + 1

    def brute(a, b):
        k = lambda u, v: (u.double() @ v.double().T / 5 + 1) ** 3  # noqa: E731
        kaa, kbb = k(a, a), k(b, b)
        m, n = len(a), len(b)
        return float(
            (kaa.sum() - kaa.trace()) / (m * (m - 1)) + (kbb.sum() - kbb.trace()) / (n * (n - 1)) - 2 * k(a, b).mean()
        )

    assert kernel_distance(x, z, chunk=64) == pytest.approx(brute(x, z), rel=1e-10)
    assert kernel_distance(x, y, chunk=7) == pytest.approx(brute(x, y), abs=1e-12)
    # unbiased: over many small draws of one distribution the mean is ~0 (FD's would be well above 0)
    draws = [kernel_distance(torch.randn(20, 5, generator=g), torch.randn(20, 5, generator=g)) for _ in range(400)]
    assert abs(np.mean(draws)) < 3 * np.std(draws) / np.sqrt(400) and kernel_distance(x, z) > 10 * np.std(draws)


def test_shift_augmentation_moves_each_image_by_at_most_the_shift():
    x = torch.zeros(64, 1, 9, 9)
    x[:, 0, 4, 4] = 1
    out = classifier_module.shifted(x, 2, torch.Generator().manual_seed(0))
    where = out[:, 0].flatten(1).argmax(1)
    rows, cols = where // 9, where % 9
    assert out.sum() == 64 and rows.min() == 2 and rows.max() == 6 and cols.min() == 2 and cols.max() == 6
    assert len(set(zip(rows.tolist(), cols.tolist()))) > 12  # the shifts differ between images
    assert torch.equal(classifier_module.shifted(x, 0, torch.Generator()), x)


def test_a_collapsed_code_is_flagged_with_what_to_change():
    from vqprior.models.quantizer import degenerate_code

    assert degenerate_code(1.0, 110.0, 128) is None
    warning = degenerate_code(0.06, 4.9, 128)
    assert "6% of its 128 codes" in warning and "vqvae.epochs" in warning
    assert degenerate_code(0.9, 10.0, 128) is not None  # every code seen, but a few carry almost all


def test_feature_classifier_is_cached_per_dataset(evaluated_run, monkeypatch):
    from vqprior.config import DataSection
    from vqprior.datasets import load_split, split_holdout

    cfg = DataSection(train_limit=600, test_limit=200)
    fit, _ = split_holdout(load_split(cfg, "train"))
    test = load_split(cfg, "test")

    def no_training(*a, **k):
        raise AssertionError("the classifier was trained again")

    monkeypatch.setattr(classifier_module, "train_classifier", no_training)
    model, info = classifier_module.load_or_train_classifier(fit, test, torch.device("cpu"))
    assert info["data_sha256"] == classifier_module.data_fingerprint(fit) and info["train_images"] == len(fit)
    other = fit.slice(0, len(fit) - 1)
    with pytest.raises(AssertionError, match="trained again"):
        classifier_module.load_or_train_classifier(other, test, torch.device("cpu"))


def test_runs_lists_the_run_with_its_numbers(evaluated_run):
    run_dir, _ = evaluated_run
    result = runner.invoke(app, ["runs", "--out-dir", str(run_dir.parent)])
    assert result.exit_code == 0
    line = next(line for line in result.output.splitlines() if line.strip().startswith("│ t "))
    ev = json.loads((run_dir / "eval" / "eval.json").read_text())
    # the tiny run's code is degenerate: its evaluation is no headline, and the table says so instead of a figure
    assert not ev["verdict"]["comparable"] and "not comparable" in line and "16" in line
    assert f"{ev['samples']['fd_ratio']:.2f}x" not in line


def _browser():
    return shutil.which("chromium") or shutil.which("chromium-browser") or shutil.which("google-chrome")


BROWSER_FLAGS = [
    "--headless",
    "--no-sandbox",
    "--disable-gpu",
    "--disable-background-networking",
    "--disable-component-update",
    "--no-first-run",
    "--hide-scrollbars",
    "--virtual-time-budget=10000",
]


@pytest.mark.slow
def test_report_renders_in_a_real_browser(evaluated_run, tmp_path):
    browser = _browser()
    if browser is None:
        pytest.skip("no chromium on this machine (CI installs it: apt-get install chromium)")
    run_dir, _ = evaluated_run
    page = run_dir / "report.html"
    html = page.read_text()
    assert "<script>alert" not in html and "data:image/gif;base64," in html
    dom = subprocess.run(
        [browser, *BROWSER_FLAGS, "--dump-dom", page.as_uri()], capture_output=True, text=True, timeout=120
    ).stdout
    images = int(re.search(r'data-images="(\d+)"', dom).group(1))
    decoded = int(re.search(r'data-images-decoded="(\d+)"', dom).group(1))
    assert images >= 7 and decoded == images, f"{decoded} of {images} images decoded"
    shot = tmp_path / "report.png"
    subprocess.run(
        [browser, *BROWSER_FLAGS, "--window-size=1200,2200", f"--screenshot={shot}", page.as_uri()],
        capture_output=True,
        timeout=120,
    )
    pixels = np.asarray(Image.open(shot).convert("L"), dtype=np.float64)
    assert pixels.shape == (2200, 1200) and pixels.std() > 20 and len(np.unique(pixels)) > 50, "blank screenshot"


def test_user_text_in_the_report_is_escaped(tmp_path):
    from vqprior.report.html import write_report

    run_dir = tmp_path / "evil"
    (run_dir / "stage1").mkdir(parents=True)
    (run_dir / "stage1" / "manifest.json").write_text(
        json.dumps(
            {"timings_s": {"total": 1}, "created": "now", "config": {"run": {"name": "<script>alert(1)</script>"}}}
        )
    )
    html = write_report(run_dir).read_text()
    assert "<script>alert(1)</script>" not in html and "&lt;script&gt;alert(1)&lt;/script&gt;" in html


def test_feature_classifier_learns_digits_from_a_few_thousand_images():
    from vqprior.config import DataSection
    from vqprior.datasets import load_split

    train, test = load_split(DataSection(train_limit=3000), "train"), load_split(DataSection(test_limit=1000), "test")
    model = classifier_module.train_classifier(train, torch.device("cpu"))
    feats, preds = model.features_and_predictions(test.images)
    assert feats.shape == (1000, model.features) == (1000, 128)
    assert (preds == test.labels).double().mean() > 0.9
