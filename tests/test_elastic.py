import math

import numpy as np
import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st

from shared_subspace import elastic, subspace
from shared_subspace.elastic import ElasticBasis
from shared_subspace.subspace import SubspaceError


def planted(n, rank, dim, seed=0, noise=0.0):
    """n rows in a planted rank-dim subspace (orthonormal basis P), plus optional isotropic noise."""
    g = torch.Generator().manual_seed(seed)
    P = subspace.orthonormalize(torch.randn(rank, dim, generator=g, dtype=torch.float64))
    X = torch.randn(n, rank, generator=g, dtype=torch.float64) @ P
    return X + noise * torch.randn(n, dim, generator=g, dtype=torch.float64), P


def test_relative_error_matches_subspace_module():
    X, P = planted(20, 3, 12, noise=0.3)
    basis = subspace.Basis(P, torch.zeros(12, dtype=torch.float64), torch.ones(3, dtype=torch.float64), centered=False)
    want = subspace.residual(basis, X).norm() / X.norm()
    assert elastic.relative_error(X, P) == pytest.approx(float(want), rel=1e-10)
    assert elastic.relative_error(X, None) == 1.0
    assert elastic.relative_error(X, basis) == pytest.approx(float(want), rel=1e-10)


def test_residual_directions_reach_the_energy_and_stay_orthogonal():
    X, _ = planted(30, 6, 20, seed=1, noise=0.05)
    V = subspace.orthonormalize(X[:2])                       # a basis that already holds 2 rows
    Q = elastic.residual_directions(X, V, 0.9)
    U = torch.cat([V, Q])
    assert torch.allclose(U @ U.T, torch.eye(U.shape[0], dtype=torch.float64), atol=1e-10)
    assert elastic.captured_energy(X, U) >= 0.9
    assert elastic.captured_energy(X, U[:-1]) < 0.9           # the fewest directions
    assert elastic.residual_directions(X, U, 0.9).shape == (0, 20)


@settings(max_examples=30, deadline=None)
@given(st.integers(1, 6), st.integers(1, 8), st.integers(0, 10_000),
       st.floats(0.92, 1.0), st.sampled_from([None, 2, 3]), st.sampled_from([None, 4, 9]))
def test_components_stay_orthonormal(n_tasks, rows, seed, energy, prune_every, k_max):
    g = torch.Generator().manual_seed(seed)
    E = ElasticBasis(16, threshold=0.3, energy=energy, k_max=k_max, prune_every=prune_every)
    for _ in range(n_tasks):
        X = torch.randn(rows, 16, generator=g, dtype=torch.float64) * torch.rand(16, generator=g, dtype=torch.float64)
        E.observe(X)
        V = E.components
        assert V.shape == (E.k, 16)
        assert torch.allclose(V @ V.T, torch.eye(E.k, dtype=torch.float64), atol=1e-9)
        assert E.k <= (k_max or 16)
        assert torch.allclose(E.C, E.C.T, atol=1e-12)


def test_grows_only_when_error_exceeds_threshold():
    X, P = planted(40, 4, 30, seed=2)
    E = ElasticBasis(30, threshold=0.3, energy=0.95)
    first = E.observe(X, "a")
    assert first["error_before"] == 1.0 and first["added"] > 0 and first["error_after"] <= math.sqrt(0.05) + 1e-9
    k = E.k
    again = E.observe(planted(40, 4, 30, seed=2)[0][:10] * 3.0, "same subspace")
    assert again["error_before"] <= 0.3 and again["added"] == 0 and E.k == k
    # a task at error 0.5: grows with threshold 0.3, not with threshold 0.6
    Y = torch.cat([X[:10], 0.58 * X[:10].norm(dim=1, keepdim=True) * torch.eye(30, dtype=torch.float64)[29:30].expand(10, 30)])
    err = elastic.relative_error(Y, E.components)
    assert 0.3 < err < 0.6
    lazy = ElasticBasis(30, threshold=0.6, energy=0.95)
    lazy.observe(X)
    assert lazy.observe(Y)["added"] == 0
    assert E.observe(Y)["added"] >= 1
    assert [h["name"] for h in E.history] == ["a", "same subspace", "task 2"]
    assert [h["cycle"] for h in E.history] == [0, 1, 2]


def test_planted_subspace_recovered_with_its_rank():
    rank, dim = 5, 60
    g = torch.Generator().manual_seed(3)
    P = subspace.orthonormalize(torch.randn(rank, dim, generator=g, dtype=torch.float64))
    E = ElasticBasis(dim, threshold=0.1, energy=0.999)
    for t in range(8):   # each task uses a random part of the planted subspace
        coeffs = torch.randn(6, rank, generator=g, dtype=torch.float64) * torch.rand(rank, generator=g, dtype=torch.float64)
        E.observe(coeffs @ P + 1e-6 * torch.randn(6, dim, generator=g, dtype=torch.float64), f"t{t}")
    assert E.k == rank
    angles = subspace.principal_angles(E.components, P)
    assert float(angles.max()) < 1e-3
    assert E.history[-1]["added"] == 0


def test_cap_keeps_the_directions_with_most_energy():
    dim = 10
    I = torch.eye(dim, dtype=torch.float64)
    E = ElasticBasis(dim, threshold=0.1, energy=0.99, k_max=3)
    for i in range(4):
        E.observe(I[i:i + 1].repeat(3, 1))
    E.observe(I[0:1].repeat(5, 1))                  # e0 now carries 2 tasks' energy
    assert E.k == 3
    assert E.history[3]["pruned"] == 1               # the 4th direction pushed one out
    kept = subspace.principal_angles(E.components, I[[0]])
    assert float(kept.max()) < 1e-8                  # the most used direction survived


def test_prune_removes_a_direction_that_carries_no_energy():
    dim = 8
    I = torch.eye(dim, dtype=torch.float64)
    E = ElasticBasis(dim, threshold=0.3, energy=1.0, prune_every=5, prune_energy=0.05)
    X = torch.stack([I[0] + I[1], I[0] - I[1], 1e-4 * I[2]])   # e2 is added (energy 1.0) but carries ~nothing
    E.observe(X)
    assert E.k == 3
    for _ in range(3):
        E.observe(torch.stack([I[0], I[1]]))
    assert E.k == 3
    record = E.observe(torch.stack([I[0], I[1]]))            # 5th observation: prune
    assert record["pruned"] == 1 and E.k == 2
    assert float(subspace.principal_angles(E.components, I[:2]).max()) < 1e-6
    assert E.usage.shape == (2,) and float(E.usage.min()) > 0.9


def test_random_isotropic_updates_grow_linearly():
    """The null: updates that share no directions make k grow by the same amount every task."""
    g = torch.Generator().manual_seed(4)
    E = ElasticBasis(400, threshold=0.3, energy=0.95)
    ks = [E.observe(torch.randn(4, 400, generator=g, dtype=torch.float64))["k"] for _ in range(12)]
    steps = np.diff([0] + ks)
    assert steps.min() >= 3 and steps.max() <= 4                  # ~4 new directions every task
    slope = np.polyfit(np.arange(1, 13), ks, 1)[0]
    assert 3.0 <= slope <= 4.0
    assert np.corrcoef(np.arange(12), ks)[0, 1] > 0.999


def test_basis_object_works_with_subspace_functions():
    X, _ = planted(20, 3, 12, seed=5)
    E = ElasticBasis(12, threshold=0.2, energy=0.999)
    E.observe(X)
    B = E.basis()
    assert B.k == E.k == 3 and not B.centered
    assert float(subspace.relative_projection_error(B, X).max()) < 1e-6


@pytest.mark.parametrize("kwargs, match", [
    ({"dim": 0}, "dim must be a positive integer"),
    ({"dim": 5, "threshold": 1.5}, "threshold must be in"),
    ({"dim": 5, "energy": 0.0}, "energy must be in"),
    ({"dim": 5, "threshold": 0.3, "energy": 0.8}, "too low for threshold"),
    ({"dim": 5, "k_max": 0}, "k_max must be an integer >= 1"),
    ({"dim": 5, "prune_every": 0}, "prune_every must be a positive integer"),
    ({"dim": 5, "prune_energy": 1.0}, "prune_energy must be in"),
])
def test_bad_settings_are_refused(kwargs, match):
    with pytest.raises(SubspaceError, match=match):
        ElasticBasis(**kwargs)


def test_bad_inputs_are_refused():
    E = ElasticBasis(5)
    with pytest.raises(SubspaceError, match="X has 4 columns but this elastic basis lives in R\\^5"):
        E.observe(torch.ones(2, 4))
    bad = torch.ones(2, 5)
    bad[1, 3] = float("nan")
    with pytest.raises(SubspaceError, match="NaN"):
        E.observe(bad)
    with pytest.raises(SubspaceError, match="must be 2-D"):
        E.observe(torch.ones(5))
    with pytest.raises(SubspaceError, match="both must live in R\\^5"):
        elastic.relative_error(torch.ones(2, 5), torch.ones(1, 4))
    with pytest.raises(SubspaceError, match="energy must be in"):
        elastic.residual_directions(torch.ones(2, 5), None, 1.5)
    with pytest.raises(SubspaceError, match="unknown family"):
        elastic.digits_cycles("nope")


def test_fine_tune_updates_are_real_weight_changes():
    from shared_subspace import digits

    torch.manual_seed(0)
    mlp = digits.MLP((64, 16, 10))
    task = digits.make_task("flip_lr")
    U = elastic.fine_tune_updates(mlp, task, epochs=4, snapshots=2)
    assert U.shape == (2, sum(p.numel() for p in mlp.parameters()))
    assert float(U[1].norm()) > float(U[0].norm()) > 0
    before = digits.accuracy(mlp, task.X_test, task.y_test)
    after = digits.accuracy(elastic.with_update(mlp, U[-1]), task.X_test, task.y_test)
    assert after > before + 0.3
    assert torch.equal(elastic.flat_params(elastic.with_update(mlp, torch.zeros(U.shape[1]))), elastic.flat_params(mlp))
    with pytest.raises(SubspaceError, match="snapshots <= epochs"):
        elastic.fine_tune_updates(mlp, task, epochs=1, snapshots=2)


def test_cli_prints_the_history(tmp_path, monkeypatch, capsys):
    from shared_subspace import cli

    monkeypatch.setenv("SHARED_SUBSPACE_CACHE", str(tmp_path))
    assert cli.main(["elastic", "--families", "repeat", "--n-tasks", "2", "--fast", "--k-max", "2"]) == 0
    out = capsys.readouterr().out
    assert "== repeat: k = " in out and "rotate90-run1" in out and "error_before" in out
    assert list((tmp_path / "elastic").glob("repeat_n2_ep12_s4_seed0.pt"))
