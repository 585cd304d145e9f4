"""`vqprior eval`: how good a finished run is, in numbers that compare across runs.

Headline: the Fréchet distance (FD) between features of generated images and of real test images, as a
ratio to the floor (the FD between held-out real training images and the same test images: what a perfect
generator would score with this many images). Beside it: conditional accuracy, precision/recall, the
VQ-VAE's reconstruction FD (the ceiling it sets on samples), NLLs. `reference="valid"` scores against
the held-out validation slice instead, for choosing settings without looking at the test split.
"""

from __future__ import annotations

import hashlib
import math
import time
from pathlib import Path

import torch

from .. import guidance as guidance_values
from ..codes import load_code_maps
from ..config import DataSection
from ..datasets import load_split, split_holdout
from ..guidance import Guidance
from ..models.quantizer import degenerate_code
from ..reporter import Reporter
from .classifier import PRIMARY, load_spaces
from .frechet import frechet_distance_from_stats, gaussian_stats, kernel_distance, kernel_self_term, precision_recall
from .likelihood import best_sigma, decoder_bits_per_image, nll_bits_per_code
from .reconstruction import reconstruction_metrics
from .verdict import sample_defects, verdict

# the validation slice is only a fair judge of models that never trained on it
SEEN_VALIDATION = (
    "this run's models trained on the validation slice (data.holdout is off), so these scores can favour fitting "
    "digits they saw; to choose settings, train with --set data.holdout=true"
)


# features of real images by (space, the feature network's training data, device, the images' sha256): every evaluation
# in one process (a bench sweep, the tests) scores against the same test split and validation slice, whose features
# took most of a second evaluation's time; a handful of entries, each a few MB
_REAL_FEATURES: dict[tuple, tuple[torch.Tensor, torch.Tensor]] = {}


def real_features(space: str, net, info: dict, images: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """net.features_and_predictions(images) for real images, computed once per process."""
    digest = hashlib.sha256(images.contiguous().cpu().numpy().tobytes()).hexdigest()
    key = (space, info.get("data_sha256"), str(next(net.parameters()).device), tuple(images.shape), digest)
    if key not in _REAL_FEATURES:
        while len(_REAL_FEATURES) >= 12:
            _REAL_FEATURES.pop(next(iter(_REAL_FEATURES)))
        _REAL_FEATURES[key] = net.features_and_predictions(images)
    return _REAL_FEATURES[key]


def class_counts(n: int, labels: torch.Tensor, num_classes: int) -> list[int]:
    """n spread over the classes in the proportions of `labels` (the training split's), by largest remainder.

    Why not evenly: the Fréchet distance compares the samples with real images, whose classes come at the data's
    own frequencies (MNIST's test split is 11.35% ones and 8.92% fives); samples spread evenly would differ from any
    real set by their class mix alone, which the floor (real against real) never does."""
    exact = torch.bincount(labels, minlength=num_classes).double() * n / len(labels)
    counts = exact.floor().long()
    rest = n - int(counts.sum())
    counts[torch.argsort(exact - counts, descending=True, stable=True)[:rest]] += 1
    return counts.tolist()


def evaluate_run(
    run_dir: Path,
    n: int = 10_000,
    temperature: float | None = None,
    reference: str = "test",
    device: torch.device = torch.device("cpu"),
    reporter: Reporter = Reporter(),
    seed: int = 0,
    guidance: Guidance | None = None,
) -> tuple[dict, torch.Tensor]:
    """Every metric of a finished run, and the uint8 sample images it scored."""
    started = time.perf_counter()
    from ..api import Run
    from ..trust import code_is_trusted

    run = Run(run_dir, str(device), trust_code=code_is_trusted())  # the façade every other use of a run goes through
    data_cfg = run.data
    train, test = load_split(data_cfg, "train"), load_split(data_cfg, "test")
    if train.labels is None:
        raise_unlabeled(data_cfg)
    fit, valid = split_holdout(train)
    # the floor's real set is never the one scored against; both are unseen by the feature networks
    ref, other = (test, valid) if reference == "test" else (valid, test)
    temperature, guidance, seed = run.sampling(temperature, guidance, seed)
    spaces = load_spaces(fit, test, device, reporter)

    t0 = time.perf_counter()
    # the floor at the samples' own n: FD is biased upwards at small n, so n samples are held against n real images
    n_floor = min(n, len(other))
    floor_real = torch.randperm(len(other), generator=torch.Generator().manual_seed(0))[:n_floor]  # indices into other
    recon = reconstruction_metrics(run.vqvae, test, device)  # the VQ-VAE on the test split
    recon_images = run.decode(run.encode(ref.images))
    prior_section = likelihoods(run, test, valid, device)

    t_sample = time.perf_counter()
    sample_labels, per_class = drawn_labels(n, train.labels, run.num_classes)
    images = run.generate(sample_labels, None if run.num_classes else n, temperature, guidance, seed).images
    sample_seconds = time.perf_counter() - t_sample
    fd_subset = torch.randperm(n, generator=torch.Generator().manual_seed(1))[:n_floor].sort().values

    scores, predictions = {}, {}
    for name, (net, info) in spaces.items():
        scores[name], predictions[name] = space_scores(
            name, net, info, ref, other, floor_real, images, fd_subset, recon_images, sample_labels
        )
    worst = max(scores, key=lambda k: scores[k]["fd_ratio"])
    main = scores[PRIMARY]
    codebook_size = run.vqvae.quantizer.codebook_size
    result = {
        "run": str(run_dir),
        "reference": reference,
        "n_samples": n,
        "temperature": temperature,
        "guidance": guidance_values.to_json(guidance),
        "seed": seed,
        "classifier": spaces[PRIMARY][1],
        "feature_nets": {name: info for name, (_, info) in spaces.items()},
        "floor": {"fd": main["floor_fd"], "real_images": n_floor, "reference_images": len(ref)},
        "spaces": scores,
        "vqvae": {
            "test_recon_mse": recon["recon_mse"],
            "test_psnr": recon["psnr"],
            "perplexity": recon["perplexity"],
            "usage": recon["usage"],
            "dead_codes": recon["dead_codes"],
            "codebook_size": codebook_size,
            "recon_fd_ratio": max(s["recon_fd_ratio"] for s in scores.values()),
        },
        "prior": prior_section,
        "samples": {
            "fd_ratio": scores[worst]["fd_ratio"],  # the headline: the worst of the feature spaces
            "worst_space": worst,
            "fd_ratio_by_space": {k: v["fd_ratio"] for k, v in scores.items()},
            "fd": main["fd"],
            "kid": main["kid"],
            "precision": main["precision"],
            "recall": main["recall"],
            "seconds": sample_seconds,
            **class_figures(predictions[PRIMARY], sample_labels, per_class, run.class_names, spaces[PRIMARY][1]),
        },
    }
    warning = degenerate_code(recon["usage"], recon["perplexity"], codebook_size, data_cfg.source)
    result["warnings"] = [warning] if warning else []
    result["verdict"] = verdict(
        {k: v["reference_accuracy"] for k, v in scores.items()},
        reference,
        main["recall"],
        warning,
        sample_defects(images),
    )
    if reference == "valid" and not data_cfg.holdout:
        result["warnings"].append(SEEN_VALIDATION)
    result["seconds"] = time.perf_counter() - started
    result["seconds_without_classifier_training"] = time.perf_counter() - t0
    return result, images


def likelihoods(run, test, valid, device: torch.device) -> dict:
    """The prior's NLL of the test code maps, and an upper bound on the image NLL: code bits plus the pixels' bits
    under a discretised Gaussian whose σ is chosen on 2,000 validation images."""
    folder, manifest = run.run_folder.read_stage(2)
    codes, labels = load_code_maps(folder, manifest, "test").tensors(device)
    bits_per_code = nll_bits_per_code(run.prior, codes, labels if run.num_classes else None)
    positions = codes.shape[1] * codes.shape[2]
    sigmas = [0.02 * 1.25**i for i in range(12)]
    sigma = best_sigma(run.vqvae, valid.images[:2000], sigmas, device)
    decoder_bits = decoder_bits_per_image(run.vqvae, test.images, sigma, device).mean().item()
    return {
        "test_bits_per_code": bits_per_code,
        "test_bits_per_map": bits_per_code * positions,
        "image_nll_bound_bits_per_dim": (bits_per_code * positions + decoder_bits) / math.prod(test.images.shape[1:]),
        "decoder_sigma": sigma,
        "decoder_bits_per_image": decoder_bits,
        "conditional_on_true_class": bool(run.num_classes),
    }


def drawn_labels(n: int, train_labels: torch.Tensor, num_classes: int) -> tuple[torch.Tensor | None, list[int]]:
    """The classes of the n samples, in runs of one class at the training split's frequencies (class_counts), and the
    count of each; (None, []) for an unconditional prior."""
    if not num_classes:
        return None, []
    per_class = class_counts(n, train_labels, num_classes)
    return torch.cat([torch.full((k,), c, dtype=torch.long) for c, k in enumerate(per_class)]), per_class


def space_scores(
    name, net, info, ref, other, floor_real, images, fd_subset, recon_images, sample_labels
) -> tuple[dict, torch.Tensor]:
    """One feature space's figures (FD of the samples `fd_subset` picks and its floor, KID, precision/recall, reconstruction FD,
    accuracies) and its class predictions of all samples."""
    ref_feats, ref_preds = real_features(name, net, info, ref.images)
    ref_stats, ref_term = gaussian_stats(ref_feats), kernel_self_term(ref_feats)
    other_feats = real_features(name, net, info, other.images)[0]
    floor_feats = other_feats[floor_real]  # an image's features do not depend on its batch: no second pass
    full_floor = frechet_distance_from_stats(*gaussian_stats(other_feats), *ref_stats)
    floor = frechet_distance_from_stats(*gaussian_stats(floor_feats), *ref_stats)
    feats, preds = net.features_and_predictions(images)
    # FD of as many samples as the floor has real images (all of them unless n exceeds the floor's real set)
    fd = frechet_distance_from_stats(*gaussian_stats(feats[fd_subset]), *ref_stats)
    recon_fd = frechet_distance_from_stats(*gaussian_stats(net.features_and_predictions(recon_images)[0]), *ref_stats)
    precision, recall = precision_recall(ref_feats, feats)
    out = {
        "fd": fd,
        "floor_fd": floor,
        "fd_ratio": fd / floor,
        "kid": kernel_distance(ref_feats, feats, real_term=ref_term),
        "floor_kid": kernel_distance(ref_feats, floor_feats, real_term=ref_term),
        "precision": precision,
        "recall": recall,
        "recon_fd": recon_fd,
        "recon_fd_ratio": recon_fd / full_floor,  # reconstructions of all the reference images: the full floor
        "full_floor_fd": full_floor,
        "classifier_test_accuracy": info["test_accuracy"],
        "reference_accuracy": float((ref_preds == ref.labels).double().mean()),
    }
    if sample_labels is not None:
        out["conditional_accuracy"] = float((preds == sample_labels).double().mean())
    return out, preds


def class_figures(preds, sample_labels, per_class: list[int], class_names, primary_info: dict) -> dict:
    """Conditional accuracy overall and per class (a conditional prior), or how evenly the samples cover the
    classes (an unconditional one), by the primary feature network's predictions."""
    if sample_labels is not None:
        correct = preds == sample_labels
        return {
            "conditional_accuracy": float(correct.double().mean()),
            "class_counts": dict(zip(map(str, class_names), per_class)),
            "per_class_accuracy": {
                str(name): float(correct[sample_labels == c].double().mean())
                for c, name in enumerate(class_names)
                if per_class[c]
            },
        }
    classes = primary_info["num_classes"]
    p = torch.bincount(preds, minlength=classes).double() / len(preds)
    entropy = float(-(p[p > 0] * p[p > 0].log()).sum())
    return {"class_coverage": entropy / math.log(classes)}


def setting_key(result: dict) -> str:
    """One file name per evaluation setting: results of other settings are kept beside it."""
    return (
        f"{result['reference']}-n{result['n_samples']}-t{result['temperature']:g}"
        f"-g{guidance_values.label(guidance_values.check(result['guidance'])).replace(':', 'to')}"
        f"-seed{result['seed']}"
    )


def raise_unlabeled(data_cfg: DataSection) -> None:
    from ..errors import UserError

    raise UserError(
        f"vqprior eval needs a labelled dataset (its classifier is trained on the labels); data.source={data_cfg.source!r} "
        f"has none: put the images into class subfolders"
    )


def write_eval(
    run_dir: Path, result: dict, images: torch.Tensor, per_class: int = 10, report: bool = False
) -> tuple[Path, str | None]:
    """Store one evaluation: results/<setting>.json and results/<setting>.png (one per setting: n, temperature,
    guidance, reference, seed; a new result replaces only its own setting's), and, when it may be the run's
    headline, eval.json and samples.png (the first `per_class` scored samples of each class, one row each).
    Returns (the eval folder, why the previous headline was kept or None): a result that is not comparable or has
    fewer samples never replaces a comparable headline (verdict.why_not_headline).
    With `report`, report.html is rendered from the new evaluation before it replaces the previous one: a failure
    (a full disk, say) keeps the previous evaluation and report whole."""
    from ..artifacts import save_json, write_bytes_atomic, writing_folder
    from ..report.sheets import labelled_sheet
    from ..run_folder import EVAL_JSON, EVAL_SHEET, RESULTS, as_run_folder
    from .verdict import why_not_headline

    counts = list(result["samples"].get("class_counts", {}).values())
    if counts:
        starts = [sum(counts[:c]) for c in range(len(counts))]
        blank = torch.zeros_like(images[:per_class])  # a class with fewer samples than a row keeps its row
        shown = torch.cat(
            [torch.cat([images[s : s + min(per_class, k)], blank])[:per_class] for s, k in zip(starts, counts)]
        )
        captions = list(result["samples"]["class_counts"])
    else:
        shown, captions = images[: per_class * per_class], None
    run = as_run_folder(run_dir)
    headline = run.evaluation()
    kept_because = why_not_headline(headline, result)
    sheet = labelled_sheet(shown, per_class, captions)
    key = setting_key(result)
    with writing_folder(run.eval) as out:
        (out / RESULTS).mkdir()
        for name, kept in run.evaluations().items():
            save_json(out / RESULTS / name, kept)
            picture = run.eval_results / f"{Path(name).stem}.png"
            if picture.is_file() and not picture.is_symlink() and name != f"{key}.json":
                write_bytes_atomic(out / RESULTS / picture.name, picture.read_bytes())
        save_json(out / RESULTS / f"{key}.json", result)
        write_bytes_atomic(out / RESULTS / f"{key}.png", sheet)
        if kept_because is None:
            save_json(out / EVAL_JSON, result)
            write_bytes_atomic(out / EVAL_SHEET, sheet)
        else:
            save_json(out / EVAL_JSON, headline)
            old_sheet = run.eval_sheet
            if old_sheet.is_file() and not old_sheet.is_symlink():
                write_bytes_atomic(out / EVAL_SHEET, old_sheet.read_bytes())
        if report:
            from ..report.html import write_report

            write_report(run, eval_dir=out)
    return run.eval, kept_because
