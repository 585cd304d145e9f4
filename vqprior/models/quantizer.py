"""The quantizer contract (`Quantizer`), and the default quantizer: an EMA codebook with dead-code re-seeding and a
straight-through gradient."""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn


class Quantizer(nn.Module):
    """What the VQ-VAE asks of a quantizer (`vqvae.quantizer` names one from the registry, or your own class with
    --trust-code; a new built-in is its module plus one registry line):

    - `codebook_size` K and `code_dim` D, set by the constructor (which may take either as an argument: the pipeline
      passes vqvae.codebook_size and vqvae.code_dim to a constructor that accepts those names);
    - `forward(z [B, D, h, w])` -> (quantized latents with a straight-through gradient, long codes [B, h, w] in 0..K-1,
      a scalar loss added to the reconstruction loss);
    - `nearest(flat [N, D])` -> codes [N] (encoding), and `lookup(codes [B, h, w])` -> latents [B, D, h, w] (decoding);
    - `sync`: None for one process; stage 1 sets it to the Runtime's collectives under torchrun, so that whatever a
      quantizer learns from a batch (EMA statistics, data-dependent initialisation) sees every process's batch alike
      and the result does not depend on the world size. It is not a constructor argument: it is not saved.
    """

    sync = None
    codebook_size: int
    code_dim: int

    def nearest(self, flat: torch.Tensor) -> torch.Tensor:
        raise NotImplementedError

    def lookup(self, indices: torch.Tensor) -> torch.Tensor:
        raise NotImplementedError


def _pick_rows(flat: torch.Tensor, count: int, sync=None) -> torch.Tensor:
    """`count` random rows of the whole batch: with one process, rows of `flat`; with `sync` (a Runtime's
    collectives under torchrun), rows of all processes' batches together, drawn alike on every process, so the
    result does not depend on the world size. Row numbers are drawn as floor(u * total) on the device, with the
    total a device tensor under torchrun: no value comes back to the host."""
    u = torch.rand(count, device=flat.device, dtype=torch.float64)
    if sync is None:
        return flat[(u * flat.shape[0]).long().clamp_(max=flat.shape[0] - 1)]
    sizes = torch.cat(sync.all_gather(torch.tensor([flat.shape[0]], device=flat.device)))
    total, offset = sizes.sum(), sizes[: sync.rank].sum()
    picks = torch.minimum((u * total).long(), total - 1) - offset
    mine = (picks >= 0) & (picks < flat.shape[0])
    rows = torch.where(
        mine[:, None], flat[picks.clamp(0, flat.shape[0] - 1)], torch.zeros((), dtype=flat.dtype, device=flat.device)
    )
    return sync.sum_(rows)


def _sum(t: torch.Tensor, sync) -> torch.Tensor:
    return t if sync is None else sync.sum_(t)


class VectorQuantizer(Quantizer):
    """Replaces each D-vector of a [B, D, h, w] latent by its nearest of K codes.

    The codebook is not trained by gradient: each code is an exponential moving average of the encoder
    outputs assigned to it (more stable than the codebook loss). A code that stops being used (EMA count
    below `dead_code_threshold`) is re-seeded with a random encoder output from the current batch, which
    keeps nearly every code in use. The encoder gets the decoder's gradient unchanged (straight-through)
    plus a commitment loss that keeps its outputs near their codes.

    `sync` (see `Quantizer`) is how the EMA statistics and the dead-code picks are combined across processes
    (the way vector-quantize-pytorch passes `sync_codebook`). The model never looks at global process state.
    """

    def __init__(
        self,
        codebook_size: int,
        code_dim: int,
        decay: float = 0.99,
        commitment: float = 0.25,
        dead_code_threshold: float = 1.0,
        eps: float = 1e-5,
    ):
        super().__init__()
        self.codebook_size, self.code_dim = codebook_size, code_dim
        self.decay, self.commitment, self.dead_code_threshold, self.eps = decay, commitment, dead_code_threshold, eps
        codebook = torch.randn(codebook_size, code_dim)
        self.register_buffer("codebook", codebook)
        self.register_buffer("ema_count", torch.ones(codebook_size))
        self.register_buffer("ema_sum", codebook.clone())
        # codes start as real encoder outputs from the first training batch, not as random noise
        self.register_buffer("initialized", torch.tensor(False))
        # host-side copy of `initialized`, set when the buffer is created or loaded: a training step never reads the
        # buffer back from the device (and a compiled step has no data-dependent branch on it)
        self._needs_init = True

    def _load_from_state_dict(self, state_dict, prefix, *args, **kwargs):
        if prefix + "initialized" in state_dict:
            self._needs_init = not bool(state_dict[prefix + "initialized"])  # a loaded state's tensor, read once
        super()._load_from_state_dict(state_dict, prefix, *args, **kwargs)

    def nearest(self, flat: torch.Tensor) -> torch.Tensor:
        """Index of the nearest code for each row of flat [N, D] (squared Euclidean distance)."""
        cb = self.codebook.to(flat.dtype)
        dist2 = flat.pow(2).sum(1, keepdim=True) - 2 * flat @ cb.t() + cb.pow(2).sum(1)
        return dist2.argmin(1)

    def lookup(self, indices: torch.Tensor) -> torch.Tensor:
        """Codes [B, h, w] -> latents [B, D, h, w]."""
        return F.embedding(indices, self.codebook).permute(0, 3, 1, 2).contiguous()

    def forward(self, z: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """Returns (quantized latents with straight-through gradient, code indices [B, h, w], commitment loss).
        Runs in float32 under autocast: nearest-code distances in bf16 would misassign codes."""
        with torch.autocast(z.device.type, enabled=False):
            return self._quantize(z.float())

    def _quantize(self, z: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        b, d, h, w = z.shape
        if d != self.code_dim:
            raise ValueError(f"latent has {d} channels, codebook has D={self.code_dim}")
        flat = z.detach().permute(0, 2, 3, 1).reshape(-1, d)
        if self.training and self._needs_init:
            self._init_from(flat)
            self._needs_init = False
        indices = self.nearest(flat)
        if self.training:
            self._ema_update(flat, indices)
        q = self.lookup(indices.view(b, h, w)).to(z.dtype)
        commitment_loss = self.commitment * F.mse_loss(z, q.detach())
        return z + (q - z).detach(), indices.view(b, h, w), commitment_loss

    @torch.no_grad()
    def _init_from(self, flat: torch.Tensor) -> None:
        self.set_codebook(_pick_rows(flat, self.codebook_size, self.sync))

    @torch.no_grad()
    def set_codebook(self, codes: torch.Tensor) -> None:
        """Start from these K code vectors (a fresh EMA of count 1 each) instead of the first batch's outputs."""
        self.codebook.copy_(codes)
        self.ema_sum.copy_(self.codebook)
        self.ema_count.fill_(1.0)
        self.initialized.fill_(True)
        self._needs_init = False

    @torch.no_grad()
    def _ema_update(self, flat: torch.Tensor, indices: torch.Tensor) -> None:
        # per-code counts and sums as a one-hot matrix product: fixed shapes, deterministic, no host sync
        # (bincount waits for the device to size its output; index_add_ is non-deterministic on CUDA)
        onehot = (indices[:, None] == torch.arange(self.codebook_size, device=indices.device)).to(self.ema_sum.dtype)
        counts = _sum(onehot.sum(0), self.sync)
        sums = _sum(onehot.t() @ flat.to(self.ema_sum.dtype), self.sync)
        self.ema_count.mul_(self.decay).add_(counts, alpha=1 - self.decay)
        self.ema_sum.mul_(self.decay).add_(sums, alpha=1 - self.decay)
        n = self.ema_count.sum()
        # Laplace smoothing keeps a code with (almost) no assignments from dividing by zero
        smoothed = (self.ema_count + self.eps) / (n + self.codebook_size * self.eps) * n
        self.codebook.copy_(self.ema_sum / smoothed.unsqueeze(1))
        self._reseed_dead(flat)

    @torch.no_grad()
    def _reseed_dead(self, flat: torch.Tensor) -> None:
        """Codes whose EMA count fell below the threshold become random encoder outputs of this batch.
        Written with torch.where over all K codes, so no step waits for the device to say how many died."""
        dead = (self.ema_count < self.dead_code_threshold).unsqueeze(1)
        new = _pick_rows(flat, self.codebook_size, self.sync).to(self.codebook.dtype)
        self.codebook.copy_(torch.where(dead, new, self.codebook))
        self.ema_sum.copy_(torch.where(dead, new, self.ema_sum))
        self.ema_count.copy_(torch.where(dead.squeeze(1), torch.ones_like(self.ema_count), self.ema_count))


def code_usage(counts: torch.Tensor) -> dict[str, float]:
    """Perplexity (effective number of codes) and share of codes used, from per-code counts."""
    total = counts.sum().clamp_min(1)
    p = counts.double() / total
    entropy = -(p[p > 0] * p[p > 0].log()).sum()
    return {"perplexity": float(entropy.exp()), "usage": float((counts > 0).double().mean())}


def degenerate_code(usage: float, perplexity: float, codebook_size: int, source: str = "mnist") -> str | None:
    """A warning when the code is too poor to make good samples from (a run trained on too little data or for too
    short a time collapses onto a few codes and decodes to grey blobs), or None. `source` (data.source) picks the
    advice on more data: a folder grows by adding images, the other sources by lifting data.train_limit."""
    if usage >= 0.25 and perplexity >= codebook_size / 8:
        return None
    more = "more images in the folder (data.root)" if source == "folder" else "more images (data.train_limit)"
    return (
        f"degenerate code: the VQ-VAE uses {usage:.0%} of its {codebook_size} codes (perplexity {perplexity:.1f}); its "
        f"samples will be blobs. Train it longer (vqvae.epochs) or on {more}"
    )
