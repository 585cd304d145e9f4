"""The Python API over a finished run: generate, encode, decode, complete, score, classify.

    import vqprior
    run = vqprior.load("artifacts/mnist")
    out = run.generate(labels=[3, 3, 7], seed=0)      # out.images: uint8 [3, 1, 28, 28], out.codes: [3, 7, 7]
    codes = run.encode(out.images)
    scores = run.score(out.images)                   # bits per image, best class, reconstruction error

Images go in and come out as uint8 tensors [N, C, H, W] (numpy arrays and floats in [0, 1] are accepted).
The CLI commands eval, complete, score and classify are thin wrappers over this. Every mistake in what is
passed in raises `vqprior.errors.UserError` with a one-line message.

Loading builds only vqprior's built-in components. A run whose config names code of its own (a dotted or a
file path) loads only with `trust_code=True`: that code then runs as you, so pass it only for runs you trust.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch

from . import guidance as guidance_values
from .class_names import name_of, resolve_all
from .codes import load_code_maps
from .completion import Completion
from .components import trusting_code
from .config import DRAFTS, SWEEPS
from .config_checks import Sampling, check_sampling
from .errors import UserError
from .guidance import Guidance
from .models.priors.base import check_decode_steps
from .models.priors.base import generate as generate_codes
from .models.priors.classes import class_log_likelihoods, class_posterior
from .models.vqvae import decode_images, encode_images
from .reporter import Reporter
from .restore import load_prior, load_vqvae
from .run_folder import RunFolder
from .runtime.devices import resolve_device
from .soft_labels import class_morph
from .user_arrays import user_codes, user_images, user_labels

LN2 = math.log(2)


@dataclass
class Generated:
    images: torch.Tensor  # uint8 [N, C, H, W]
    codes: torch.Tensor  # long [N, h, w]
    captions: list[str] | None = None  # one per row of the sheet `save` writes (the class of each row)
    per_row: int | None = None  # images per row of that sheet (default: as many as fit in 32)
    labels: torch.Tensor | None = None  # the classes (or soft weights) the images were drawn for
    class_names: list[str] | None = None

    def save(self, path: str | Path, replace: bool = False) -> Path:
        """Write the images to `path`: .png a sheet (one row per class, its name on the left), .npz the arrays
        (images, codes, labels, class_names). An existing file is kept unless `replace`; the file appears whole
        or not at all."""
        from .generated_files import save_generated

        return save_generated(self, Path(path), replace)


class Run:
    """A finished run folder's VQ-VAE and prior, ready to use."""

    def __init__(self, run_dir: str | Path, device: str = "auto", trust_code: bool = False):
        if not isinstance(run_dir, (str, Path)) or not str(run_dir):
            raise UserError(f"pass a run folder (a path such as 'artifacts/mnist'), got {run_dir!r}")
        if not isinstance(trust_code, bool):
            raise UserError(f"trust_code must be True or False, got {trust_code!r}")
        self.folder = Path(run_dir)
        self.run_folder = RunFolder(self.folder)  # its layout and the settings its stages saved
        self.run_folder.check()
        if not self.run_folder.stage(3).is_dir():
            raise UserError(
                f"{self.folder} has no trained prior (stage 3); run `vqprior run` first or point at a run folder"
            )
        self.device = resolve_device(device)
        with trusting_code(trust_code):
            self._vq = load_vqvae(self.run_folder, None, self.device)
            self._prior = load_prior(self.run_folder, None, self.device, vqvae=self._vq)
        self.vqvae, self.prior = self._vq.model, self._prior.model
        self.grid, self.image_shape = self._prior.grid, self._vq.image_shape
        self.class_names = self._prior.class_names
        self.num_classes = self.prior.num_classes
        self.temperature, self.guidance = self.run_folder.sampling()
        self.log_class_prior = self._class_prior()

    @property
    def data(self):
        """The data section stage 1 was trained on (a DataSection): where `--from test`, eval and the page read images."""
        return self.run_folder.data()

    def test_images(self, n: int) -> torch.Tensor:
        """The first `n` test images of the run's own data, uint8 [n, C, H, W] (a one-line UserError when the data
        is not on this machine)."""
        from .datasets import load_split

        return load_split(self.data, "test").images[:n]

    def _class_prior(self) -> torch.Tensor | None:
        """log p(class) from the training labels' frequencies (labels checked by load_code_maps)."""
        if not self.num_classes:
            return None
        folder, manifest = self.run_folder.read_stage(2)
        labels = load_code_maps(folder, manifest, "train").labels
        if labels is None or not len(labels) or int(labels.max()) >= self.num_classes:
            raise UserError(
                f"{folder}: the training labels do not name the prior's {self.num_classes} classes; re-run stage 2"
            )
        counts = np.bincount(labels.astype(np.int64), minlength=self.num_classes).astype(np.float64)
        return torch.from_numpy(np.log(np.maximum(counts, 1) / counts.sum())).to(self.device)

    # ------------------------------------------------------------------ images <-> codes
    def as_images(self, images) -> torch.Tensor:
        """uint8 [N, C, H, W] from a tensor or array (uint8, or floats in [0, 1]); checks the run's image shape."""
        return user_images(images, self.image_shape)

    def encode(self, images) -> torch.Tensor:
        """Images -> code maps [N, h, w]."""
        return encode_images(self.vqvae, self.as_images(images))

    def decode(self, codes) -> torch.Tensor:
        """Code maps [N, h, w] -> uint8 images [N, C, H, W]."""
        return decode_images(self.vqvae, self.as_codes(codes))

    def as_codes(self, codes) -> torch.Tensor:
        """Code maps as long [N, h, w], checked against the run's grid and codebook."""
        return user_codes(codes, self.grid, self.vqvae.quantizer.codebook_size)

    def sampling(self, temperature: float | None = None, guidance: Guidance | None = None, seed: int = 0) -> Sampling:
        """One call's sampling options, checked like a user's values: those given, the run's saved defaults for the
        rest (what generate, complete, eval and the page use)."""
        check_sampling(temperature, guidance, seed)
        return Sampling(
            float(self.temperature if temperature is None else temperature),
            guidance_values.check(self.guidance if guidance is None else guidance),
            int(seed),
        )

    # ------------------------------------------------------------------ sampling
    def _labels(self, labels, n: int | None) -> tuple[torch.Tensor | None, int]:
        if not self.num_classes:
            if labels is not None:
                raise UserError("this run's prior is unconditional; pass n=..., not labels")
            if isinstance(n, bool) or not isinstance(n, (int, np.integer)) or not 1 <= n <= 1_000_000:
                raise UserError(f"pass n=... (how many images, 1..1,000,000) for an unconditional prior, got {n!r}")
            return None, int(n)
        labels = user_labels(labels, self.num_classes, self.class_names)
        return labels, len(labels)

    def generate(
        self,
        labels=None,
        n: int | None = None,
        temperature: float | None = None,
        guidance: Guidance | None = None,
        seed: int = 0,
        decode_steps: int | None = None,
    ) -> Generated:
        """One image per label (classes by name or index, e.g. ["seven", "seven", 1], or soft class weights
        [N, classes]); or n images from an unconditional prior.
        decode_steps: parallel decoding steps of the masked kind (default: the number saved with it,
        prior.network.params.decode_steps)."""
        options = self.sampling(temperature, guidance, seed)
        try:
            check_decode_steps(self.prior, decode_steps)
        except ValueError as e:
            raise UserError(str(e)) from None
        labels, count = self._labels(labels, n)
        codes = generate_codes(
            self.prior,
            count,
            self.grid,
            labels,
            options.temperature,
            options.seed,
            guidance=options.guidance,
            decode_steps=decode_steps,
        )
        return Generated(self.decode(codes), codes, labels=labels, class_names=self.class_names)

    def morph(
        self,
        a,
        b,
        steps: int = 9,
        n: int = 4,
        temperature: float | None = None,
        guidance: Guidance | None = None,
        seed: int = 0,
    ) -> Generated:
        """`n` strips of `steps` images whose soft label moves from class `a` to class `b` (by name or index); every
        step of a strip uses the same noise, so only the class changes along it. Images come strip by strip."""
        if not self.num_classes:
            raise UserError("morph needs a class-conditional prior; this one is unconditional")
        a, b = resolve_all([a, b], self.class_names, "morph class")
        for what, value, low, high in (("steps", steps, 2, 100), ("n", n, 1, 10_000)):
            if isinstance(value, bool) or not isinstance(value, (int, np.integer)) or not low <= value <= high:
                raise UserError(f"{what} must be an integer in {low}..{high}, got {value!r}")
        weights = class_morph(self.num_classes, a, b, steps)
        frames = [self.generate(row.repeat(n, 1), None, temperature, guidance, seed) for row in weights]
        images = torch.stack([f.images for f in frames], 1).flatten(0, 1)  # [n * steps, C, H, W], strip by strip
        codes = torch.stack([f.codes for f in frames], 1).flatten(0, 1)
        caption = f"{name_of(a, self.class_names)} to {name_of(b, self.class_names)}"
        return Generated(images, codes, [caption] * n, steps, weights.repeat(n, 1), self.class_names)

    # ------------------------------------------------------------------ likelihoods
    def class_log_likelihoods(self, codes: torch.Tensor, positions: int | None = None) -> torch.Tensor:
        """log p(first `positions` codes | class) in nats for every class: [N, classes] ([N, 1] if unconditional)."""
        return class_log_likelihoods(self.prior, self.as_codes(codes), self._positions(positions))

    def _positions(self, positions: int | None) -> int | None:
        total = self.grid[0] * self.grid[1]
        if positions is not None and (
            isinstance(positions, bool) or not isinstance(positions, (int, np.integer)) or not 0 <= positions <= total
        ):
            raise UserError(f"positions must be an integer in 0..{total}, got {positions!r}")
        return positions

    def posterior(self, codes: torch.Tensor, positions: int | None = None) -> torch.Tensor:
        """p(class | codes) by Bayes' rule over the prior's own likelihood and the training class frequencies."""
        if not self.num_classes:
            raise UserError("this run's prior is unconditional: it has no classes to infer")
        return class_posterior(self.prior, self.as_codes(codes), self.log_class_prior.cpu(), self._positions(positions))

    @torch.no_grad()
    def score(self, images) -> dict[str, torch.Tensor]:
        """Per image: bits of its code map (marginal over classes for a conditional prior), the best class,
        reconstruction MSE, and an upper bound on the image's bits (codes + pixels under a discretised Gaussian)."""
        x = self.as_images(images)
        codes = self.encode(x)
        ll = self.class_log_likelihoods(codes)
        if self.num_classes:
            joint = ll + self.log_class_prior.cpu()
            code_nats, best = -torch.logsumexp(joint, 1), joint.argmax(1)
        else:
            code_nats, best = -ll[:, 0], torch.full((len(x),), -1)
        recon = self.decode(codes)
        mse = (recon.double() - x.double()).div(255).pow(2).flatten(1).mean(1)
        from .evaluation.likelihood import pixel_bits

        pixel = pixel_bits(x, recon, self.decoder_sigma())
        return {
            "code_bits": code_nats / LN2,
            "best_class": best,
            "recon_mse": mse,
            "pixel_bits": pixel,
            "image_bits_bound": code_nats / LN2 + pixel,
        }

    def decoder_sigma(self) -> float:
        """The pixel noise σ that `vqprior eval` chose on the validation slice (0.1 when the run was not evaluated)."""
        evaluation = self.run_folder.evaluation()
        if evaluation is None:
            return 0.1
        sigma = evaluation.get("prior", {})
        sigma = sigma.get("decoder_sigma") if isinstance(sigma, dict) else None
        if isinstance(sigma, bool) or not isinstance(sigma, (int, float)) or not 1e-4 <= sigma <= 1:
            raise UserError(
                f"{self.run_folder.eval_json}: prior.decoder_sigma must be a number in 0.0001..1, got {sigma!r}; run `vqprior eval` again"
            )
        return float(sigma)

    def classify(self, images) -> tuple[torch.Tensor, torch.Tensor]:
        """The prior as a generative classifier: argmax_c p(codes | c) p(c). Returns (classes [N], posterior [N, C])."""
        post = self.posterior(self.encode(images))
        return post.argmax(1), post

    # ------------------------------------------------------------------ completion
    def complete(
        self,
        images,
        keep_rows: int | None = None,
        samples: int = 4,
        label: int | None = None,
        temperature: float | None = None,
        guidance: Guidance | None = None,
        seed: int = 0,
        keep=None,
        sweeps: int = SWEEPS,
        drafts: int = DRAFTS,
        time_budget: float | None = None,
        reporter: Reporter | None = None,
    ) -> Completion:
        """Keep part of each image and sample the rest `samples` times.

        What is kept: `keep_rows` (the top rows of the code map; default the top half), or `keep`: a shorthand
        ("top", "bottom", "left", "right") or a boolean mask over image pixels [H, W] / code positions [h, w] (or
        one per image), True where kept; a code position is kept when its whole pixel patch is (vqprior.masks).
        A kept prefix is continued exactly (ancestral sampling); any other region is filled by sampling importance
        resampling: `drafts` ancestral drafts per class with the kept codes in place, one picked by how well it
        explains them, then `sweeps` rounds of Metropolis-Hastings over the prior's exact joint likelihood
        (vqprior.models.priors.fill); the masked kind
        fills any region with its own parallel decoding. A conditional prior without `label` infers the class from
        what is kept and reports its posterior. A prior that learned other drawing orders (gated_pixelcnn's
        `orders`) continues a kept bottom, left or right part exactly too. `time_budget` (seconds): the sweeps stop
        when it is spent (the page gives each request one second); `reporter` (vqprior.reporter.Reporter) is told
        how the drafts and sweeps progress."""
        from .completion import complete

        return complete(
            self,
            images,
            keep_rows,
            samples,
            label,
            temperature,
            guidance,
            seed,
            keep,
            sweeps,
            drafts,
            time_budget,
            reporter or Reporter(),
        )


def load(run_dir: str | Path = "artifacts/mnist", device: str = "auto", trust_code: bool = False) -> Run:
    """A finished run folder, ready to generate, encode, decode, complete, score and classify. trust_code=True allows
    components that are not vqprior built-ins (their code runs as you): only for run folders you trust.
    "pretrained:mnist" is the run shipped with the package (read in place)."""
    if isinstance(run_dir, str) and run_dir.startswith("pretrained:"):
        from .pretrained import folder

        run_dir = folder(run_dir.split(":", 1)[1])
    return Run(run_dir, device, trust_code)
