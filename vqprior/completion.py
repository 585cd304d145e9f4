"""Completion: keep part of each image's code map and sample the rest (the engine of `Run.complete`).

A kept raster prefix is continued exactly (ancestral sampling, the class drawn from its posterior when inferred);
so is a kept part that is a prefix in another drawing order the prior learned (`models/priors/orders.py`: a kept
bottom, left or right part, by the network of that order). Any other region is filled by importance resampling
and Metropolis-Hastings over the prior's exact joint likelihood (`models/priors/fill.py`), or by the masked kind's
own parallel decoding.
"""

from __future__ import annotations

import time
from dataclasses import dataclass

import numpy as np
import torch

from .errors import UserError
from .guidance import Guidance
from .reporter import Reporter


@dataclass
class Completion:
    originals: torch.Tensor  # uint8 [N, C, H, W]
    codes: torch.Tensor  # long [N, k, h, w]: k completions of each image's code map
    images: torch.Tensor  # uint8 [N, k, C, H, W]
    keep: torch.Tensor  # bool [N, h, w]: the code positions that were kept
    posterior: torch.Tensor | None  # [N, classes]: p(class | kept codes), when the class was inferred
    labels: torch.Tensor | None  # long [N, k]: the class each completion was drawn for
    # how it was made: "exact" (a kept prefix of a raster kind, ancestral sampling), "mcmc" (any other region of a
    # raster kind) or "parallel" (the masked kind's own decoding)
    method: str
    order: str = (
        "raster"  # the drawing order whose network made it (exact: the order in which the kept part is a prefix)
    )

    @property
    def exact(self) -> bool:
        return self.method == "exact"

    def panels(self) -> torch.Tensor:
        """uint8 [N, k + 2, C, H, W]: each original, what was kept of it (the rest grey), then its completions."""
        from .masks import pixel_view

        shown = pixel_view(self.keep, self.originals.shape[2:])[:, None]
        kept = torch.where(shown, self.originals, torch.full_like(self.originals, 128))
        return torch.cat([self.originals[:, None], kept[:, None], self.images], 1)


def complete(
    run,
    images,
    keep_rows: int | None,
    samples: int,
    label: int | None,
    temperature: float | None,
    guidance: Guidance | None,
    seed: int,
    keep,
    sweeps: int,
    drafts: int,
    time_budget: float | None = None,
    reporter: Reporter = Reporter(),
) -> Completion:
    """See `Run.complete` (`run` is that façade; this module sits below it and does not import it)."""
    from .masks import code_mask
    from .models.priors.fill import continue_prefix, fill

    started = time.monotonic()
    options = run.sampling(temperature, guidance, seed)
    if time_budget is not None and (
        isinstance(time_budget, bool) or not isinstance(time_budget, (int, float)) or not time_budget > 0
    ):
        raise UserError(f"time_budget must be a number of seconds > 0, got {time_budget!r}")
    if isinstance(samples, bool) or not isinstance(samples, (int, np.integer)) or not 1 <= samples <= 64:
        raise UserError(f"samples must be an integer in 1..64, got {samples!r}")
    if isinstance(sweeps, bool) or not isinstance(sweeps, (int, np.integer)) or not 0 <= sweeps <= 100:
        raise UserError(f"sweeps must be an integer in 0..100, got {sweeps!r}")
    if isinstance(drafts, bool) or not isinstance(drafts, (int, np.integer)) or not 1 <= drafts <= 64:
        raise UserError(f"drafts must be an integer in 1..64, got {drafts!r}")
    x = run.as_images(images)
    height, width = run.grid
    n = len(x)
    if keep is not None and keep_rows is not None:
        raise UserError("give either keep_rows (--keep-rows) or keep (--keep / --keep-mask / --erase), not both")
    if keep is None:
        keep_rows = height // 2 if keep_rows is None else keep_rows
        if isinstance(keep_rows, bool) or not isinstance(keep_rows, (int, np.integer)) or not 0 <= keep_rows <= height:
            raise UserError(f"--keep-rows {keep_rows} is out of range: the code maps have {height} rows (0..{height})")
        mask = torch.zeros(n, height, width, dtype=torch.bool)
        mask[:, :keep_rows] = True
    else:
        mask = code_mask(keep, n, run.grid, tuple(run.image_shape[1:]))
    label = _label(run, label)
    codes = run.encode(x)
    t, g = options.temperature, options.guidance
    exact = continue_prefix(run.prior, codes, mask, samples, label, run.log_class_prior, t, g, seed)
    if exact is not None:
        out, posterior, labels, order = exact
        return Completion(
            x,
            out,
            run.decode(out.flatten(0, 1)).view(n, samples, *run.image_shape),
            mask,
            posterior,
            labels,
            "parallel" if run.prior.parallel else "exact",
            order,
        )
    labels_in = None if label is None else torch.full((n * samples,), label, dtype=torch.long)
    filled, labels, posterior = fill(
        run.prior,
        codes.repeat_interleave(samples, 0),
        mask.repeat_interleave(samples, 0),
        labels_in,
        run.log_class_prior,
        t,
        g,
        sweeps,
        seed,
        drafts,
        None if time_budget is None else started + time_budget,
        reporter,
    )
    if posterior is not None:
        posterior = posterior.view(n, samples, -1).mean(1)
    out = filled.view(n, samples, height, width)
    labels = None if labels is None else labels.view(n, samples)
    images_out = run.decode(filled).view(n, samples, *run.image_shape)
    return Completion(x, out, images_out, mask, posterior, labels, "parallel" if run.prior.parallel else "mcmc")


def _label(run, label):
    if run.num_classes:
        if label is not None and (
            isinstance(label, bool) or not isinstance(label, (int, np.integer)) or not 0 <= label < run.num_classes
        ):
            raise UserError(f"--label {label} is out of range: this prior knows classes 0..{run.num_classes - 1}")
    elif label is not None:
        raise UserError("this run's prior is unconditional; drop --label")
    return label
