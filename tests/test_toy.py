"""Planted-subspace toy tasks: data follow the formulas, gradient descent solves them, PCA recovers U."""
import pytest
import torch

from shared_subspace import nulls, subspace, toy
from shared_subspace.subspace import SubspaceError


@pytest.fixture(scope="module")
def linear():
    tasks = toy.planted_tasks(50, 20, 3, task_noise=0.05, n_train=80, n_test=100, seed=1)
    W, history = toy.train_linear_models(tasks, steps=200, lr=0.2, seed=1)
    return tasks, W, history


def test_planted_weights_follow_the_formula():
    tasks = toy.planted_tasks(30, 12, 2, task_noise=0.0, seed=3)
    assert torch.allclose(tasks.U @ tasks.U.T, torch.eye(2), atol=1e-5)
    # with no task noise every w_t - w0 lies exactly in span(U)
    offsets = tasks.W_true - tasks.w0
    inside = (offsets @ tasks.U.T) @ tasks.U
    assert torch.allclose(inside, offsets, atol=1e-5)
    assert tasks.X_train.shape == (30, 100, 12) and tasks.y_test.shape == (30, 200)
    assert (tasks.n_tasks, tasks.dim, tasks.k_star) == (30, 12, 2)


def test_same_seed_same_tasks_and_noise_moves_off_the_trail():
    a = toy.planted_tasks(10, 8, 2, task_noise=0.0, seed=5)
    b = toy.planted_tasks(10, 8, 2, task_noise=0.5, seed=5)
    c = toy.planted_tasks(10, 8, 2, task_noise=0.0, seed=5)
    assert torch.equal(a.W_true, c.W_true) and torch.equal(a.U, b.U)
    off = b.W_true - a.W_true  # tau * xi_t, typical length tau
    assert 0.2 < off.norm(dim=1).mean() < 0.8


def test_linear_labels_match_weights():
    tasks = toy.planted_tasks(5, 10, 2, label_noise=0.0, seed=0)
    y_hat = torch.einsum("tnd,td->tn", tasks.X_train, tasks.W_true)
    assert torch.allclose(y_hat, tasks.y_train, atol=1e-5)
    assert torch.allclose(toy.task_loss(tasks.W_true, tasks), torch.zeros(5), atol=1e-8)


def test_gradient_descent_reaches_least_squares(linear):
    tasks, W, history = linear
    assert history[-1] < 0.05 * history[0]
    # the GD solution matches the per-task least-squares solution
    W_ls = torch.linalg.lstsq(tasks.X_train, tasks.y_train.unsqueeze(-1)).solution.squeeze(-1)
    assert torch.allclose(W, W_ls, atol=1e-3)
    assert toy.task_loss(W, tasks).mean() < 1.5 * toy.task_loss(tasks.W_true, tasks).mean()


def test_pca_recovers_planted_subspace_and_null_counts_k_star(linear):
    tasks, W, _ = linear
    basis = subspace.fit_basis(W, k=3)
    assert subspace.principal_angles(basis, tasks.U).rad2deg().max() < 10
    lo, hi = nulls.null_band(nulls.noise_spectrum(50, 20, draws=50))
    r = basis.explained_variance_ratio
    assert int((r[: len(hi)] > hi).sum()) == 3


def test_projected_losses_too_small_k_costs(linear):
    tasks, W, _ = linear
    basis = subspace.fit_basis(W, k=6)
    out = toy.projected_losses(basis, W, tasks)
    assert out["k"].tolist() == list(range(7))
    assert out["rel_error"][0] == pytest.approx(1.0)
    assert torch.all(out["rel_error"][1:] <= out["rel_error"][:-1] + 1e-6)  # nested bases: monotone
    assert out["loss"][2] > 2 * out["loss"][3]
    # k = 0 is the mean-only control
    mean_loss = toy.task_loss(basis.mean.expand_as(W), tasks).mean()
    assert out["loss"][0] == pytest.approx(float(mean_loss), rel=1e-5)


def test_logistic_tasks_train_and_share_a_subspace():
    tasks = toy.planted_tasks(60, 10, 2, task_noise=0.05, n_train=400, kind="logistic", seed=2)
    assert set(tasks.y_train.unique().tolist()) <= {0.0, 1.0}
    W, history = toy.train_linear_models(tasks, steps=300, lr=1.0, weight_decay=1e-3, seed=2)
    assert history[-1] < history[0] - 0.1
    angles = subspace.principal_angles(subspace.fit_basis(W, k=2), tasks.U).rad2deg()
    assert angles.max() < 20


def test_subset_keeps_rows():
    tasks = toy.planted_tasks(10, 6, 2, seed=0)
    sub = tasks.subset(range(7, 10))
    assert torch.equal(sub.W_true, tasks.W_true[7:]) and torch.equal(sub.X_test, tasks.X_test[7:])


@pytest.mark.parametrize("kwargs, match", [
    (dict(kind="poisson"), "unknown task kind"),
    (dict(k_star=0), "k_star must be between 1 and dim"),
    (dict(k_star=9), "k_star must be between 1 and dim"),
    (dict(task_noise=-1.0), "noise levels must be non-negative"),
    (dict(n_tasks=0), "must be positive"),
    (dict(signal_scales=(1.0,)), "signal_scales needs 2 entries"),
])
def test_planted_tasks_bad_inputs(kwargs, match):
    args = dict(n_tasks=4, dim=8, k_star=2) | kwargs
    with pytest.raises(SubspaceError, match=match):
        toy.planted_tasks(**args)


def test_task_loss_and_training_bad_inputs():
    tasks = toy.planted_tasks(4, 8, 2, seed=0)
    with pytest.raises(SubspaceError, match="one row per task"):
        toy.task_loss(torch.zeros(3, 8), tasks)
    with pytest.raises(SubspaceError, match="split must be"):
        toy.task_loss(tasks.W_true, tasks, split="val")
    with pytest.raises(SubspaceError, match="contains NaN"):
        toy.task_loss(torch.full((4, 8), float("nan")), tasks)
    with pytest.raises(SubspaceError, match="steps must be >= 1"):
        toy.train_linear_models(tasks, steps=0)
    with pytest.raises(SubspaceError, match="diverged"):
        toy.train_linear_models(tasks, steps=200, lr=50.0)
