"""The subspace core against numpy/sklearn references, property tests, and bad inputs."""
import numpy as np
import pytest
import torch
from hypothesis import given, settings, strategies as st
from sklearn.decomposition import PCA

from shared_subspace.subspace import (
    Basis, SubspaceError, choose_k, explained_variance_ratio, fit_basis, load_basis, principal_angles,
    project, reconstruct, relative_projection_error, residual, save_basis,
)

METHODS = ["full", "gram", "randomized"]


def planted(n=40, d=200, k_star=4, noise=1e-3, seed=0):
    """Rows = mu + coeffs @ V (k_star planted directions) + small noise."""
    g = torch.Generator().manual_seed(seed)
    V = torch.linalg.qr(torch.randn(d, k_star, generator=g, dtype=torch.float64))[0].T
    scales = torch.linspace(5, 2, k_star, dtype=torch.float64)
    C = torch.randn(n, k_star, generator=g, dtype=torch.float64) * scales
    mu = torch.randn(d, generator=g, dtype=torch.float64)
    return mu + C @ V + noise * torch.randn(n, d, generator=g, dtype=torch.float64), V


def assert_same_rows_up_to_sign(A, B, atol):
    A, B = np.asarray(A), np.asarray(B)
    signs = np.sign((A * B).sum(1, keepdims=True))
    np.testing.assert_allclose(A * signs, B, atol=atol)


@pytest.mark.parametrize("method", METHODS)
def test_matches_numpy_svd_on_planted_data(method):
    X, _ = planted()
    basis = fit_basis(X, k=4, method=method)
    Xc = (X - X.mean(0)).numpy()
    _, S, Vt = np.linalg.svd(Xc, full_matrices=False)
    assert_same_rows_up_to_sign(basis.components.numpy(), Vt[:4], atol=1e-6)
    np.testing.assert_allclose(basis.singular_values[:4].numpy(), S[:4], rtol=1e-6)


@pytest.mark.parametrize("method", ["full", "gram"])
def test_matches_numpy_svd_on_random_data(method):
    X = torch.randn(30, 90, generator=torch.Generator().manual_seed(1), dtype=torch.float64)
    basis = fit_basis(X, k=10, method=method)
    _, S, Vt = np.linalg.svd((X - X.mean(0)).numpy(), full_matrices=False)
    assert_same_rows_up_to_sign(basis.components.numpy(), Vt[:10], atol=1e-8)
    np.testing.assert_allclose(basis.singular_values.numpy()[:29], S[:29], rtol=1e-8)


@pytest.mark.parametrize("method", METHODS)
def test_matches_sklearn_pca(method):
    X, _ = planted(n=60, d=80, seed=3)
    basis = fit_basis(X, k=4, method=method)
    pca = PCA(n_components=4, svd_solver="full").fit(X.numpy())
    assert_same_rows_up_to_sign(basis.components.numpy(), pca.components_, atol=1e-6)
    np.testing.assert_allclose(basis.mean.numpy(), pca.mean_, atol=1e-12)
    np.testing.assert_allclose(basis.explained_variance_ratio[:4].numpy(), pca.explained_variance_ratio_, rtol=1e-6)
    coeffs = project(basis, X).numpy()
    ref = pca.transform(X.numpy())
    np.testing.assert_allclose(np.abs(coeffs), np.abs(ref), atol=1e-6)


def test_uncentered_matches_plain_svd():
    X = torch.randn(20, 50, generator=torch.Generator().manual_seed(2), dtype=torch.float64) + 3
    basis = fit_basis(X, k=5, center=False)
    _, S, Vt = np.linalg.svd(X.numpy(), full_matrices=False)
    assert torch.all(basis.mean == 0)
    assert_same_rows_up_to_sign(basis.components.numpy(), Vt[:5], atol=1e-8)


def test_planted_subspace_recovered_and_reconstructed():
    X, V = planted(noise=1e-4)
    basis = fit_basis(X, k=4)
    assert principal_angles(basis, V).max() < 1e-3
    assert relative_projection_error(basis, X).max() < 1e-3
    np.testing.assert_allclose(reconstruct(basis, project(basis, X)).numpy(), X.numpy(), atol=1e-3)
    assert residual(basis, X).shape == X.shape


def test_choose_k_by_energy():
    s = torch.tensor([3.0, 2.0, 1.0, 0.5])  # powers 9, 4, 1, .25 -> cumulative .632, .912, .982, 1
    assert choose_k(s, 0.6) == 1
    assert choose_k(s, 0.9) == 2
    assert choose_k(s, 0.95) == 3
    assert choose_k(s, 1.0) == 4
    X, _ = planted(noise=1e-3)
    assert fit_basis(X, energy=0.999).k == 4


def test_principal_angles_known_case():
    e = torch.eye(3)
    U = e[:2]                                    # xy plane
    V = torch.stack([e[0], (e[1] + e[2]) / 2 ** 0.5])  # x and the y=z diagonal
    np.testing.assert_allclose(np.degrees(principal_angles(U, V).numpy()), [0, 45], atol=1e-5)


def test_save_load_round_trip(tmp_path):
    X, _ = planted()
    basis = fit_basis(X, k=3)
    path = save_basis(basis, tmp_path / "layer.safetensors", layer="fc1", n_models=40)
    loaded, info = load_basis(path, with_info=True)
    assert info == {"layer": "fc1", "n_models": 40}
    for name in ("components", "mean", "singular_values"):
        assert torch.equal(getattr(loaded, name), getattr(basis, name))
    assert not list(tmp_path.glob("*.tmp")), "atomic write leaves no temporary file"


# ---------------------------------------------------------------- properties

@settings(max_examples=30, deadline=None)
@given(n=st.integers(3, 25), d=st.integers(2, 40), seed=st.integers(0, 10_000), center=st.booleans())
def test_basis_orthonormal_and_projection_idempotent(n, d, seed, center):
    X = torch.randn(n, d, generator=torch.Generator().manual_seed(seed), dtype=torch.float64)
    k = max(1, min(n - 1, d) // 2)
    basis = fit_basis(X, k=k, center=center)
    V = basis.components
    np.testing.assert_allclose((V @ V.T).numpy(), np.eye(k), atol=1e-8)
    once = reconstruct(basis, project(basis, X))
    twice = reconstruct(basis, project(basis, once))
    np.testing.assert_allclose(twice.numpy(), once.numpy(), atol=1e-8)
    assert (relative_projection_error(basis, X) <= 1 + 1e-9).all()


@settings(max_examples=20, deadline=None)
@given(seed=st.integers(0, 10_000))
def test_explained_variance_ratios_sum_to_one(seed):
    X = torch.randn(10, 15, generator=torch.Generator().manual_seed(seed), dtype=torch.float64)
    r = fit_basis(X).explained_variance_ratio
    assert abs(float(r.sum()) - 1) < 1e-10 and (r[:-1] >= r[1:] - 1e-12).all()


# ---------------------------------------------------------------- bad inputs

@pytest.mark.parametrize("bad, message", [
    (torch.tensor([[1.0, float("nan")], [0.0, 1.0]]), r"NaN values in row\(s\) \[0\]"),
    (torch.tensor([[1.0, 2.0], [float("inf"), 1.0]]), r"Inf values in row\(s\) \[1\]"),
    (torch.zeros(5), r"must be 2-D .* got shape \(5,\)"),
    (torch.zeros(2, 3, 4), r"must be 2-D"),
    (torch.zeros(0, 4), r"empty"),
    ([], r"empty"),
    ("weights", r"must be a tensor"),
])
def test_bad_stacks_raise_clear_errors(bad, message):
    with pytest.raises(SubspaceError, match=message):
        fit_basis(bad)


def test_k_out_of_range():
    X = torch.randn(5, 20)
    with pytest.raises(SubspaceError, match=r"k=5 is larger than the rank: a centered 5 x 20 stack has at most 4"):
        fit_basis(X, k=5)
    with pytest.raises(SubspaceError, match="k must be at least 1"):
        fit_basis(X, k=0)
    with pytest.raises(SubspaceError, match="numerical rank 2"):
        fit_basis(torch.randn(6, 2) @ torch.randn(2, 30), k=3, center=False)
    with pytest.raises(SubspaceError, match="at least 2 rows"):
        fit_basis(torch.randn(1, 4))
    with pytest.raises(SubspaceError, match="k or energy, not both"):
        fit_basis(X, k=2, energy=0.9)
    with pytest.raises(SubspaceError, match="energy must be in"):
        fit_basis(X, energy=1.5)
    with pytest.raises(SubspaceError, match="basis has only 2"):
        fit_basis(X, k=2).truncate(3)


def test_projection_shape_mismatch():
    basis = fit_basis(torch.randn(6, 10), k=2)
    with pytest.raises(SubspaceError, match="has 7 columns but the basis lives in R\\^10"):
        project(basis, torch.randn(3, 7))
    with pytest.raises(SubspaceError, match="coeffs have 3 columns but the basis has k=2"):
        reconstruct(basis, torch.randn(4, 3))
    with pytest.raises(SubspaceError, match="different spaces"):
        principal_angles(torch.randn(2, 10), torch.randn(2, 11))


def test_corrupted_and_truncated_files(tmp_path):
    basis = fit_basis(torch.randn(8, 30), k=3)
    path = save_basis(basis, tmp_path / "b.safetensors")
    data = path.read_bytes()

    (tmp_path / "trunc.safetensors").write_bytes(data[: len(data) // 2])
    with pytest.raises(SubspaceError, match="not a readable basis file"):
        load_basis(tmp_path / "trunc.safetensors")

    flipped = bytearray(data)
    flipped[-5] ^= 0xFF  # one byte of tensor data
    (tmp_path / "flip.safetensors").write_bytes(bytes(flipped))
    with pytest.raises(SubspaceError, match="corrupted: its checksum does not match"):
        load_basis(tmp_path / "flip.safetensors")

    (tmp_path / "junk.safetensors").write_bytes(b"not a file at all")
    with pytest.raises(SubspaceError, match="not a readable basis file"):
        load_basis(tmp_path / "junk.safetensors")

    with pytest.raises(SubspaceError, match="no saved basis"):
        load_basis(tmp_path / "missing.safetensors")

    from safetensors.torch import save_file
    save_file({"x": torch.zeros(2)}, str(tmp_path / "other.safetensors"))
    with pytest.raises(SubspaceError, match="not a shared-subspace basis"):
        load_basis(tmp_path / "other.safetensors")


def test_failed_save_keeps_the_old_file(tmp_path, monkeypatch):
    basis = fit_basis(torch.randn(8, 30), k=3)
    path = save_basis(basis, tmp_path / "b.safetensors")
    before = path.read_bytes()

    import safetensors.torch as st_torch

    def boom(*a, **k):
        raise OSError("disk full")
    monkeypatch.setattr(st_torch, "save_file", boom)
    with pytest.raises(OSError, match="disk full"):
        save_basis(fit_basis(torch.randn(8, 30), k=2), path)
    assert path.read_bytes() == before
    assert not list(tmp_path.glob("*.tmp"))


def test_explained_variance_ratio_of_zero_spectrum():
    assert torch.all(explained_variance_ratio(torch.zeros(3)) == 0)
    assert isinstance(fit_basis(torch.randn(4, 6), k=1), Basis)


def test_cli_commands_keep_their_arguments(capsys):
    """Every command's options reach argparse, whenever the module set add_arguments."""
    from shared_subspace import cli

    cli._register_all()
    assert {"cache", "models", "zoo", "extract", "lora-zoo", "continual", "share-sweep"} <= cli.COMMANDS.keys()
    with pytest.raises(SystemExit) as exit_info:
        cli.main(["models", "--help"])
    assert exit_info.value.code == 0 and "--rebuild" in capsys.readouterr().out
