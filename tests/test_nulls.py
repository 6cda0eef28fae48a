"""Null spectra against the Marchenko-Pastur law, and the reconstruction controls."""
import numpy as np
import pytest
import torch
from scipy import integrate

from shared_subspace.nulls import (
    basis_only, marchenko_pastur_pdf, marchenko_pastur_spectrum, mean_only, noise_spectrum,
    null_band, random_basis, shuffled_spectrum,
)
from shared_subspace.subspace import SubspaceError, fit_basis, principal_angles


@pytest.mark.parametrize("gamma", [0.1, 0.5, 1.0])
def test_mp_density_integrates_to_one_with_unit_mean(gamma):
    a, b = (1 - gamma ** 0.5) ** 2, (1 + gamma ** 0.5) ** 2
    mass = integrate.quad(lambda x: marchenko_pastur_pdf(np.array([x]), gamma)[0], a, b, limit=200)[0]
    mean = integrate.quad(lambda x: x * marchenko_pastur_pdf(np.array([x]), gamma)[0], a, b, limit=200)[0]
    assert mass == pytest.approx(1, abs=1e-3) and mean == pytest.approx(1, abs=1e-3)


@pytest.mark.parametrize("n, d", [(100, 400), (200, 200), (400, 120)])
def test_simulated_noise_matches_marchenko_pastur(n, d):
    simulated = noise_spectrum(n, d, draws=10, seed=0).mean(0)
    law = marchenko_pastur_spectrum(n, d)
    assert simulated.shape == law.shape
    m = len(law)
    bulk = slice(m // 20, m - m // 20)  # edges fluctuate (Tracy-Widom); compare the bulk
    dev = (simulated[bulk].double() - law[bulk]).abs() * m  # in units of the mean ratio 1/m
    assert dev.max() < 0.1, f"max deviation {dev.max():.3f} of the mean ratio"
    # the largest ratio sits near the upper edge (1 + sqrt(gamma))^2, scaled by the total
    assert simulated[0] == pytest.approx(float(law[0]), rel=0.1)


def test_planted_signal_rises_above_the_null_band():
    g = torch.Generator().manual_seed(0)
    n, d, k_star = 60, 300, 3
    X = torch.randn(n, k_star, generator=g) * 4 @ torch.randn(k_star, d, generator=g) / d ** 0.5 \
        + torch.randn(n, d, generator=g)
    ratios = fit_basis(X).explained_variance_ratio
    lo, hi = null_band(noise_spectrum(n, d, draws=20))
    assert (ratios[:k_star] > hi[:k_star]).all()
    assert int((ratios > hi).sum()) == k_star


def test_shuffled_null_destroys_shared_directions_but_keeps_columns():
    g = torch.Generator().manual_seed(1)
    X = torch.randn(50, 2, generator=g) * 5 @ torch.randn(2, 80, generator=g) + 0.1 * torch.randn(50, 80, generator=g)
    real = fit_basis(X).explained_variance_ratio
    shuffled = shuffled_spectrum(X, draws=5)
    assert real[:2].sum() > 0.95
    assert shuffled.mean(0)[:2].sum() < 0.5


def test_controls():
    X = torch.randn(10, 6, dtype=torch.float64) + 2
    b = fit_basis(X, k=2)
    assert torch.allclose(mean_only(b, X), b.mean.expand(10, 6))
    B = basis_only(b, X)
    assert torch.allclose(B @ b.components.T, X @ b.components.T)  # same coordinates in the span
    r = random_basis(b, 2, seed=3)
    assert torch.allclose(r.components @ r.components.T, torch.eye(2, dtype=torch.float64), atol=1e-10)
    assert principal_angles(r, b).min() > 1e-3
    with pytest.raises(SubspaceError, match="k=7 must be between 1 and the dimension 6"):
        random_basis(b, 7)


def test_bad_null_shapes():
    with pytest.raises(SubspaceError, match="at least 2 rows"):
        noise_spectrum(1, 10)
    with pytest.raises(SubspaceError, match="at least one row and column"):
        marchenko_pastur_spectrum(0, 10)
    with pytest.raises(SubspaceError, match="gamma must be in"):
        marchenko_pastur_pdf(np.ones(3), 2.0)
