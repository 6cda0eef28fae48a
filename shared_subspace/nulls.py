"""Null models and controls: what a spectrum or a reconstruction looks like with no shared subspace.

* i.i.d. noise: the explained-variance spectrum of an N x D stack of Gaussian noise, simulated,
  and its large-matrix limit, the Marchenko-Pastur law. For m = min(N, D), M = max(N, D) and
  gamma = m / M, the eigenvalues of X X^T / M (unit variance) have density

      p(x) = sqrt((b - x)(x - a)) / (2 pi gamma x),   a = (1 - sqrt(gamma))^2, b = (1 + sqrt(gamma))^2

* shuffled weights: each column permuted independently across rows; keeps every coordinate's
  spread across models but destroys the directions they share.
* mean-only / basis-only / random-basis reconstructions: the controls a subspace must beat.
"""
from __future__ import annotations

import numpy as np
import torch

from .subspace import Basis, SubspaceError, as_stack, explained_variance_ratio, orthonormalize

__all__ = ["marchenko_pastur_pdf", "marchenko_pastur_spectrum", "noise_spectrum", "shuffled_spectrum",
           "null_band", "mean_only", "basis_only", "random_basis"]


def _shape(n: int, d: int, center: bool) -> tuple[int, int]:
    if n < 1 or d < 1:
        raise SubspaceError(f"a stack needs at least one row and column, got {n} x {d}")
    n_eff = n - 1 if center else n  # centering removes one degree of freedom
    if n_eff < 1:
        raise SubspaceError("a centered null needs at least 2 rows")
    return n_eff, d


def marchenko_pastur_pdf(x: np.ndarray, gamma: float) -> np.ndarray:
    """The Marchenko-Pastur density (unit variance, ratio gamma <= 1) at x."""
    if not 0 < gamma <= 1:
        raise SubspaceError(f"gamma must be in (0, 1], got {gamma}")
    a, b = (1 - np.sqrt(gamma)) ** 2, (1 + np.sqrt(gamma)) ** 2
    x = np.asarray(x, dtype=float)
    inside = (x > a) & (x < b)
    out = np.zeros_like(x)
    out[inside] = np.sqrt((b - x[inside]) * (x[inside] - a)) / (2 * np.pi * gamma * x[inside])
    return out


def marchenko_pastur_spectrum(n: int, d: int, *, center: bool = True) -> torch.Tensor:
    """Expected explained-variance ratios (descending, length min(N', D)) of N x D i.i.d. noise.

    The i-th largest eigenvalue is placed at the (i - 1/2)/m upper quantile of the law.
    """
    n_eff, d = _shape(n, d, center)
    m, M = min(n_eff, d), max(n_eff, d)
    gamma = m / M
    a, b = (1 - np.sqrt(gamma)) ** 2, (1 + np.sqrt(gamma)) ** 2
    grid = np.linspace(a, b, 20001)
    cdf = np.concatenate([[0.0], np.cumsum(np.diff(grid) * 0.5 * (marchenko_pastur_pdf(grid[1:], gamma)
                                                                   + marchenko_pastur_pdf(grid[:-1], gamma)))])
    cdf /= cdf[-1]
    quantiles = 1 - (np.arange(m) + 0.5) / m
    eig = np.interp(quantiles, cdf, grid)
    return explained_variance_ratio(torch.from_numpy(np.sqrt(eig)))


def noise_spectrum(n: int, d: int, *, draws: int = 20, center: bool = True, seed: int = 0) -> torch.Tensor:
    """Simulated explained-variance ratios (draws x min(N', D)) of N x D standard Gaussian stacks."""
    n_eff, d = _shape(n, d, center)
    g = torch.Generator().manual_seed(seed)
    out = []
    for _ in range(draws):
        X = torch.randn(n, d, generator=g)
        if center:
            X = X - X.mean(0)
        s = torch.linalg.svdvals(X)[: min(n_eff, d)]
        out.append(explained_variance_ratio(s))
    return torch.stack(out)


def shuffled_spectrum(X, *, draws: int = 20, center: bool = True, seed: int = 0) -> torch.Tensor:
    """Explained-variance ratios of X with each column permuted independently across rows."""
    X = as_stack(X)
    n, d = X.shape
    n_eff, _ = _shape(n, d, center)
    g = torch.Generator().manual_seed(seed)
    out = []
    for _ in range(draws):
        idx = torch.argsort(torch.rand(n, d, generator=g), dim=0)
        Xs = torch.gather(X, 0, idx)
        if center:
            Xs = Xs - Xs.mean(0)
        out.append(explained_variance_ratio(torch.linalg.svdvals(Xs)[: min(n_eff, d)]))
    return torch.stack(out)


def null_band(spectra: torch.Tensor, q: tuple[float, float] = (0.05, 0.95)) -> tuple[torch.Tensor, torch.Tensor]:
    """Lower and upper quantiles across draws of a (draws x m) stack of null spectra."""
    qs = torch.quantile(spectra.double(), torch.tensor(q, dtype=torch.float64), dim=0)
    return qs[0].to(spectra.dtype), qs[1].to(spectra.dtype)


# ---------------------------------------------------------------- reconstruction controls

def mean_only(basis: Basis, X) -> torch.Tensor:
    """Every row replaced by the basis mean: what the group average alone gives."""
    X = as_stack(X)
    return basis.mean.expand(X.shape[0], -1).clone()


def basis_only(basis: Basis, X) -> torch.Tensor:
    """Each row projected onto the span of the directions with no mean: (x V^T) V."""
    X = as_stack(X)
    return (X @ basis.components.T) @ basis.components


def random_basis(like: Basis, k: int | None = None, *, seed: int = 0) -> Basis:
    """A random k-dimensional orthonormal basis with the same mean: the control for 'any k directions'."""
    k = like.k if k is None else k
    if not 1 <= k <= like.dim:
        raise SubspaceError(f"k={k} must be between 1 and the dimension {like.dim}")
    g = torch.Generator().manual_seed(seed)
    V = orthonormalize(torch.randn(k, like.dim, generator=g, dtype=torch.float64)).to(like.components.dtype)
    return Basis(V, like.mean, like.singular_values, like.centered, "random")
