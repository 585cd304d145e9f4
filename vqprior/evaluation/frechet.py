"""Fréchet distance between Gaussians fitted to two feature sets, and precision/recall (Kynkäänniemi et al. 2019)."""

from __future__ import annotations

import torch


def gaussian_stats(features: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    x = features.double()
    mu = x.mean(0)
    centred = x - mu
    return mu, centred.T @ centred / (len(x) - 1)


def frechet_distance_from_stats(mu1: torch.Tensor, s1: torch.Tensor, mu2: torch.Tensor, s2: torch.Tensor) -> float:
    """|mu1 - mu2|^2 + Tr(S1 + S2 - 2 (S1 S2)^(1/2)).

    Tr((S1 S2)^(1/2)) is the sum of the square roots of the eigenvalues of S1^(1/2) S2 S1^(1/2), a symmetric
    PSD matrix: computed with eigh, with no complex parts or a general matrix square root."""
    w, v = torch.linalg.eigh(s1)
    root1 = (v * w.clamp_min(0).sqrt()) @ v.T
    middle = root1 @ s2 @ root1
    tr_cross = torch.linalg.eigvalsh((middle + middle.T) / 2).clamp_min(0).sqrt().sum()
    return float((mu1 - mu2).pow(2).sum() + s1.trace() + s2.trace() - 2 * tr_cross)


def frechet_distance(a: torch.Tensor, b: torch.Tensor) -> float:
    return frechet_distance_from_stats(*gaussian_stats(a), *gaussian_stats(b))


# rows per block of a pairwise-distance or kernel matrix: a block of 256 x 10,000 stays near the CPU's caches, where
# 2,048 rows ran 2-3x slower on 2 cores (the results do not depend on it, beyond float64 summation order)
CHUNK = 256


def _knn_radii(x: torch.Tensor, k: int, chunk: int = CHUNK) -> torch.Tensor:
    """Distance from each row of x to its k-th nearest other row."""
    radii = []
    for i in range(0, len(x), chunk):
        d = torch.cdist(x[i : i + chunk], x)
        # +1: the point itself is at distance 0; topk of a few is ~3x faster than kthvalue, the same values
        radii.append(d.topk(k + 1, dim=1, largest=False).values[:, k])
    return torch.cat(radii)


def _covered(points: torch.Tensor, centres: torch.Tensor, radii: torch.Tensor, chunk: int = CHUNK) -> torch.Tensor:
    """Whether each point lies within the radius of at least one centre."""
    out = []
    for i in range(0, len(points), chunk):
        d = torch.cdist(points[i : i + chunk], centres)
        out.append((d <= radii[None, :]).any(1))
    return torch.cat(out)


def precision_recall(real: torch.Tensor, fake: torch.Tensor, k: int = 3) -> tuple[float, float]:
    """Precision: share of fake samples inside the real manifold (union of k-NN balls of real features);
    recall: share of real samples inside the fake manifold."""
    real, fake = real.float(), fake.float()
    precision = _covered(fake, real, _knn_radii(real, k)).double().mean()
    recall = _covered(real, fake, _knn_radii(fake, k)).double().mean()
    return float(precision), float(recall)


def _kernel_sum(a: torch.Tensor, b: torch.Tensor, same: bool, chunk: int) -> float:
    """Sum of k(a_i, b_j) = (a.b / d + 1)^3 over all pairs (without i = j when a is b), blockwise in float64."""
    d, s = a.shape[1], 0.0
    for i in range(0, len(a), chunk):
        k = (a[i : i + chunk] @ b.T).div_(d).add_(1)
        k = (k * k).mul_(k)  # in place: one temporary instead of three
        s += float(k.sum())
        if same:
            s -= float(k.diagonal(offset=i).sum())
    return s


def kernel_self_term(x: torch.Tensor, chunk: int = CHUNK) -> float:
    """The mean kernel value between distinct rows of x: the part of KID that depends on one set alone."""
    x = x.double()
    return _kernel_sum(x, x, True, chunk) / (len(x) * (len(x) - 1))


def kernel_distance(
    real: torch.Tensor, fake: torch.Tensor, chunk: int = CHUNK, real_term: float | None = None
) -> float:
    """KID (Bińkowski et al. 2018): the unbiased estimate of the squared MMD between the two feature sets under the
    cubic polynomial kernel k(x, y) = (x.y / d + 1)^3, over all pairs (blockwise, float64). Unlike FD it has no bias
    that grows as n shrinks: its expectation is 0 for two samples of one distribution, at any n. `real_term`:
    `kernel_self_term(real)`, when one reference set is scored against several others."""
    x, y = real.double(), fake.double()
    xx = kernel_self_term(x, chunk) if real_term is None else real_term
    return xx + kernel_self_term(y, chunk) - 2 * _kernel_sum(x, y, False, chunk) / (len(x) * len(y))
