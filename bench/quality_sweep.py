"""Sample quality per configuration, scored on the held-out validation slice (never the test split).

Each --try is a name and --set style overrides; configurations with the same VQ-VAE settings share stages
1 and 2 (the run folder is named after them, and `vqprior run` skips what is up to date). One line per
configuration: K, prior size, epochs, wall time per stage, reconstruction FD / floor, bits per map,
sample FD / floor, conditional accuracy (and its worst class). Every configuration trains with data.holdout=true:
the models never see the validation slice that scores them.

    .venv/bin/python bench/quality_sweep.py --try "base" --try "k256 vqvae.codebook_size=256"
    .venv/bin/python bench/quality_sweep.py --stage1-only --try "bce vqvae.likelihood=bce"
"""

from __future__ import annotations

import argparse
import hashlib
import json
import sys
import time
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).parent))
from common import pin_threads  # noqa: E402

from vqprior import guidance  # noqa: E402
from vqprior.artifacts import load_json  # noqa: E402
from vqprior.config_files import load_config  # noqa: E402
from vqprior.datasets import load_split, split_holdout  # noqa: E402
from vqprior.evaluation.classifier import load_or_train_classifier  # noqa: E402
from vqprior.evaluation.frechet import frechet_distance_from_stats, gaussian_stats  # noqa: E402
from vqprior.evaluation.run_eval import evaluate_run  # noqa: E402
from vqprior.models.vqvae import decode_images, encode_images  # noqa: E402
from vqprior.restore import load_vqvae  # noqa: E402
from vqprior.run_folder import RunFolder  # noqa: E402
from vqprior.runtime import Runtime  # noqa: E402
from vqprior.stages import s1_vqvae, s2_codes, s3_prior  # noqa: E402

STAGES = {1: s1_vqvae, 2: s2_codes, 3: s3_prior}


def run_stages(cfg, stages) -> dict[int, float]:
    """Run (or skip, when up to date) the stages; seconds per stage from their manifests."""
    rt = Runtime.setup(cfg.run)
    for stage in stages:
        module = STAGES[stage]
        if not RunFolder(cfg.run_dir()).is_current(stage, module.fingerprint(cfg)):
            module.run(cfg, rt=rt)
    run = RunFolder(cfg.run_dir())
    return {s: load_json(run.manifest_file(s))["timings_s"]["total"] for s in stages}


def recon_fd_ratio(run_dir: Path) -> float:
    """FD of reconstructions of the validation slice vs that slice, over the floor (test vs validation)."""
    vq = load_vqvae(run_dir, None, torch.device("cpu"))
    cfg_data = vq.run.data()
    fit, valid = split_holdout(load_split(cfg_data, "train"))
    test = load_split(cfg_data, "test")
    clf, _ = load_or_train_classifier(fit, test, torch.device("cpu"))
    ref = gaussian_stats(clf.features_and_predictions(valid.images)[0])
    floor = frechet_distance_from_stats(*gaussian_stats(clf.features_and_predictions(test.images)[0]), *ref)
    recon = decode_images(vq.model, encode_images(vq.model, valid.images))
    return frechet_distance_from_stats(*gaussian_stats(clf.features_and_predictions(recon)[0]), *ref) / floor


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--try", dest="tries", action="append", required=True, help='"name key=value key=value ..."')
    ap.add_argument("--stage1-only", action="store_true", help="train and score only the VQ-VAE")
    ap.add_argument("--n", type=int, default=10_000)
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--out", default="artifacts/sweep")
    args = ap.parse_args()
    print(
        f"# threads={pin_threads(args.threads)} torch {torch.__version__}; scored against the validation slice",
        flush=True,
    )
    for spec in args.tries:
        name, *sets = spec.split()
        # the models never see the validation slice they are scored on (an override can still turn it off)
        cfg = load_config(overrides=["data.holdout=true", *sets, f'run.out_dir="{args.out}"'])
        vq_key = hashlib.sha256(
            json.dumps(
                [cfg.data.model_dump(mode="json"), cfg.vqvae.model_dump(mode="json"), cfg.run.seed], sort_keys=True
            ).encode()
        ).hexdigest()[:10]
        cfg.run.name = f"vq-{vq_key}"
        t0 = time.perf_counter()
        times = run_stages(cfg, [1] if args.stage1_only else [1, 2, 3])
        p = cfg.prior.network.params
        line = (
            f"{name}: K={cfg.vqvae.codebook_size} vq_epochs={cfg.vqvae.epochs} likelihood={cfg.vqvae.likelihood} "
            f"prior={p.get('channels')}ch x {p.get('layers')} layers x {cfg.prior.epochs} ep | "
            + " ".join(f"s{s}={t:.0f}s" for s, t in times.items())
        )
        if args.stage1_only:
            print(f"{line} | recon FD/floor {recon_fd_ratio(cfg.run_dir()):.2f}", flush=True)
            continue
        ev, _ = evaluate_run(
            cfg.run_dir(), args.n, cfg.sample.temperature, "valid", seed=1, guidance=cfg.sample.guidance
        )
        s = ev["samples"]
        worst = min(s.get("per_class_accuracy", {"-": float("nan")}).items(), key=lambda kv: kv[1])
        print(
            f"{line} | recon FD/floor {ev['vqvae']['recon_fd_ratio']:.2f} (test recon vs test) | {ev['prior']['test_bits_per_map']:.1f} bits/map"
            f" | samples FD/floor {s['fd_ratio']:.2f} | cond acc {s.get('conditional_accuracy', float('nan')):.1%} (worst {worst[0]} {worst[1]:.1%})"
            f" | T={ev['temperature']:g} guidance={guidance.read_label(ev['guidance'])} | sweep step {time.perf_counter() - t0:.0f}s",
            flush=True,
        )


if __name__ == "__main__":
    main()
