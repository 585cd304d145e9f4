"""Whether an evaluation's FD / floor may stand as a headline, and which evaluation is a run's headline.

A Fréchet distance ratio compares samples with real images in a feature network's space; it says something only
when that network tells the real images apart (its accuracy on the reference split), when the samples are images
at all (not blank, not one image repeated) and when they cover some of the real data (recall). A run whose code
collapsed or whose samples are blank can still land near 1x in a weak feature space: such a result is stored
like any other but flagged "not comparable" with its reasons, and it never replaces a comparable headline.
"""

from __future__ import annotations

import torch

MIN_FEATURE_ACCURACY = 0.95  # MNIST's networks read 99.2%+; under 95% the features do not describe the images
MIN_RECALL = 0.05  # samples that cover under 5% of the real images are not a distribution of those images
BLANK_RANGE = 16  # an image whose pixels span fewer than 16 of 256 levels shows nothing
BLANK_SHARE = 0.5  # half the samples blank: the run draws blanks
CONSTANT_STD = 2.0  # pixels that vary by under 2 levels across samples: one image repeated


def sample_defects(images: torch.Tensor) -> list[str]:
    """What is wrong with a batch of uint8 samples [N, C, H, W] as samples (empty when nothing is)."""
    x = images.flatten(1)
    if not len(x):
        return ["there are no samples"]
    spread = (x.amax(1).int() - x.amin(1).int()).double()
    blank = float((spread < BLANK_RANGE).double().mean())
    defects = []
    if blank >= BLANK_SHARE:
        defects.append(f"{blank:.0%} of the samples are blank (their pixels span under {BLANK_RANGE} of 256 levels)")
    if len(x) > 1 and float(x.double().std(0).mean()) < CONSTANT_STD:
        defects.append("the samples are all (nearly) the same image")
    return defects


def verdict(
    feature_accuracy: dict[str, float],
    reference: str,
    recall: float,
    degenerate: str | None,
    defects: list[str],
) -> dict:
    """{"comparable": bool, "reasons": [...]}: may this evaluation's FD / floor stand as a headline?"""
    reasons = list(defects)
    if degenerate:
        reasons.append(degenerate.split(";")[0])
    weak = {name: a for name, a in feature_accuracy.items() if a < MIN_FEATURE_ACCURACY}
    if weak:
        reasons.append(
            f"the feature networks read only {' / '.join(f'{a:.1%}' for a in weak.values())} of the {reference} "
            f"split correctly ({' / '.join(weak)}; under {MIN_FEATURE_ACCURACY:.0%}), so their features cannot judge "
            f"these images: more images per class help"
        )
    if recall < MIN_RECALL:
        reasons.append(f"recall {recall:.3f}: the samples cover almost none of the real images")
    return {"comparable": not reasons, "reasons": reasons}


def comparable(result: dict | None) -> bool:
    """An evaluation's verdict; results written before verdicts existed count as comparable."""
    if not isinstance(result, dict):
        return False
    v = result.get("verdict")
    return not isinstance(v, dict) or v.get("comparable") is not False


def reasons(result: dict) -> list[str]:
    v = result.get("verdict")
    out = v.get("reasons") if isinstance(v, dict) else None
    return [str(r) for r in out] if isinstance(out, list) else []


def why_not_headline(headline: dict | None, new: dict) -> str | None:
    """Why `new` must not replace the current headline evaluation (None: it replaces it).

    A comparable result never gives way to one that is not, nor to one of fewer samples (FD at small n is biased,
    so a 1,000-sample figure is not the 10,000-sample headline); results of the same size replace each other, and
    so does a new measurement at the headline's own setting."""
    if headline is None or not comparable(headline) or _setting(headline) == _setting(new):
        return None
    if not comparable(new):
        return "this result is not comparable"
    old_n, new_n = headline.get("n_samples"), new.get("n_samples")
    if isinstance(old_n, int) and isinstance(new_n, int) and new_n < old_n:
        return f"it has {new_n:,} samples, fewer than the headline's {old_n:,}"
    return None


def _setting(result: dict) -> list:
    return [result.get(k) for k in ("reference", "n_samples", "temperature", "guidance", "seed")]
