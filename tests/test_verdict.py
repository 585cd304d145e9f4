"""The headline you can trust: blank, repeated or uncovering samples and weak feature networks are "not comparable",
and a result that is not comparable or has fewer samples never replaces a comparable headline."""

from __future__ import annotations

import json
import shutil

import pytest
import torch
from typer.testing import CliRunner

from vqprior.cli import app
from vqprior.config import DataSection
from vqprior.datasets import load_split
from vqprior.evaluation.verdict import comparable, sample_defects, verdict, why_not_headline

runner = CliRunner()


@pytest.fixture(scope="module")
def digits():
    return load_split(DataSection(test_limit=400), "test").images


def test_blank_and_repeated_samples_are_defects_and_real_digits_are_not(digits):
    assert sample_defects(digits) == []
    blank = torch.zeros_like(digits)
    assert any("blank" in d for d in sample_defects(blank))
    faint = (torch.rand(digits.shape) * 10).to(torch.uint8)  # noise within 10 levels: nothing drawn
    assert any("blank" in d for d in sample_defects(faint))
    copied = digits[:1].repeat(len(digits), 1, 1, 1)
    assert sample_defects(copied) == ["the samples are all (nearly) the same image"]
    half = torch.cat([digits[:200], blank[:200]])  # half blank: still a run that draws blanks
    assert any("50% of the samples are blank" in d for d in sample_defects(half))


def test_the_verdict_names_every_reason():
    good = verdict({"cnn": 0.99, "wide": 0.995}, "test", 0.4, None, [])
    assert good == {"comparable": True, "reasons": []}
    bad = verdict({"cnn": 0.99, "wide": 0.615}, "valid", 0.01, "degenerate code: 1% of codes; train longer", ["x"])
    assert not bad["comparable"] and bad["reasons"][0] == "x"
    text = " ".join(bad["reasons"])
    assert "61.5% of the valid split" in text and "(wide;" in text and "cnn" not in text.split("(wide;")[0][-40:]
    assert "recall 0.010" in text and "degenerate code: 1% of codes" in text and "train longer" not in text


def _result(n, ok=True, temperature=1.0):
    return {
        "reference": "test",
        "n_samples": n,
        "temperature": temperature,
        "guidance": [1.25, 2.0],
        "seed": 0,
        "verdict": {"comparable": ok, "reasons": [] if ok else ["blank"]},
    }


def test_which_result_becomes_the_headline():
    full, small = _result(10_000), _result(1000, temperature=0.9)
    assert why_not_headline(None, small) is None  # the first result is the headline, whatever it is
    assert "fewer than the headline's 10,000" in why_not_headline(full, small)
    assert why_not_headline(full, _result(10_000, ok=False, temperature=0.9)) == "this result is not comparable"
    assert why_not_headline(full, _result(10_000, temperature=0.9)) is None  # as many samples: the latest wins
    assert why_not_headline(full, _result(10_000, ok=False)) is None  # the same setting measured again replaces it
    assert why_not_headline(_result(10_000, ok=False), small) is None  # a comparable result replaces one that is not
    legacy = {k: v for k, v in full.items() if k != "verdict"}  # written before verdicts: comparable
    assert comparable(legacy) and not comparable(None)


def test_eval_of_blank_samples_is_not_comparable_and_of_real_digits_it_is(monkeypatch):
    """The shipped MNIST run and its shipped feature networks: nothing is trained; only what is scored changes.
    The real sets are cut to 2,000 test and 2,000 validation digits (the feature networks, keyed by the training
    part, are the shipped ones all the same): the verdict is about the samples, and a full evaluation twice over
    would take a quarter of the suite."""
    from vqprior import api
    from vqprior.evaluation import run_eval
    from vqprior.evaluation.run_eval import evaluate_run
    from vqprior.pretrained import folder

    def fewer(load, cut):
        return lambda *args: tuple(part.slice(0, 2000) if i in cut else part for i, part in enumerate(load(*args)))

    real_split = run_eval.load_split
    monkeypatch.setattr(
        run_eval, "load_split", lambda cfg, split: real_split(cfg, split).limit(2000 if split == "test" else None)
    )
    monkeypatch.setattr(run_eval, "split_holdout", fewer(run_eval.split_holdout, {1}))
    train = load_split(DataSection(), "train")
    drawn = {}

    def fake_generate(self, labels=None, n=None, *args, **kwargs):
        count = len(labels) if labels is not None else n
        return api.Generated(drawn["images"](labels, count), torch.zeros(count, 7, 7, dtype=torch.long))

    monkeypatch.setattr(api.Run, "generate", fake_generate)

    def real(labels, count):  # training digits of the asked-for classes: a perfect generator, copied
        pools = {c: torch.nonzero(train.labels == c).flatten() for c in range(10)}
        seen = dict.fromkeys(range(10), 0)
        out = []
        for c in labels.tolist():
            out.append(train.images[pools[c][seen[c]]])
            seen[c] += 1
        return torch.stack(out)

    drawn["images"] = lambda labels, count: torch.zeros(count, 1, 28, 28, dtype=torch.uint8)
    blank, _ = evaluate_run(folder("mnist"), n=500)
    assert not blank["verdict"]["comparable"]
    assert any("blank" in r for r in blank["verdict"]["reasons"]), blank["verdict"]
    assert any("recall" in r for r in blank["verdict"]["reasons"]), blank["verdict"]
    drawn["images"] = real
    copied, _ = evaluate_run(folder("mnist"), n=500)
    assert copied["verdict"] == {"comparable": True, "reasons": []}, copied["verdict"]
    assert copied["samples"]["fd_ratio"] < 1.5 and copied["samples"]["conditional_accuracy"] > 0.97
    assert all(s["reference_accuracy"] > 0.98 for s in copied["spaces"].values())


def test_a_small_or_incomparable_eval_keeps_the_headline_and_every_page_says_not_comparable(tmp_path):
    """The tiny test run is degenerate (600 images, one epoch): its own eval is not comparable, and a forged
    comparable 10,000-sample headline is kept against it."""
    from conftest import tiny_args

    made = runner.invoke(app, ["run", *tiny_args(tmp_path), "--per-class", 1], catch_exceptions=False)
    assert made.exit_code == 0, made.output
    args = ["eval", "--name", "t", "--out-dir", str(tmp_path), "--n", 200, "--device", "cpu"]
    first = runner.invoke(app, args, catch_exceptions=False)
    assert first.exit_code == 0, first.output
    ev_path = tmp_path / "t" / "eval" / "eval.json"
    ev = json.loads(ev_path.read_text())
    assert not ev["verdict"]["comparable"] and "not comparable:" in first.output
    table = first.output.split("not comparable:")[0]
    assert f"{ev['samples']['fd_ratio']:.2f}x" not in table  # no headline figure printed for it
    html = (tmp_path / "t" / "report.html").read_text()
    assert "not comparable" in html and "the real-data floor (worst of" not in html
    from vqprior.report.runs import collect_runs

    (row,) = collect_runs(tmp_path)
    assert row[3] == "not comparable" and row[-1].startswith("not comparable: ")

    # a comparable 10,000-sample headline (forged from this one) stays against a 200-sample re-evaluation
    headline = {**ev, "n_samples": 10_000, "verdict": {"comparable": True, "reasons": []}}
    headline["samples"] = {**ev["samples"], "fd_ratio": 1.234}
    ev_path.write_text(json.dumps(headline))
    sheet = (tmp_path / "t" / "eval" / "samples.png").read_bytes()
    again = runner.invoke(app, [*args, "--temperature", "0.9"], catch_exceptions=False)
    assert again.exit_code == 0, again.output
    assert "the headline stays the evaluation of 10,000 samples (1.23x" in again.output
    assert json.loads(ev_path.read_text())["samples"]["fd_ratio"] == 1.234
    assert (tmp_path / "t" / "eval" / "samples.png").read_bytes() == sheet
    results = sorted(p.name for p in (tmp_path / "t" / "eval" / "results").iterdir())
    assert "test-n200-t0.9-g1.25to2-seed0.json" in results and "test-n200-t0.9-g1.25to2-seed0.png" in results
    html = (tmp_path / "t" / "report.html").read_text()
    assert "1.23×" in html and "10000 samples" in html
    shutil.rmtree(tmp_path / "t")
