"""Toy tasks with a planted shared subspace: many linear (or logistic) regressions in R^D.

Task t has true weights on a planted k*-dimensional trail plus a small private step off it:

    w_t = w_0 + U^T c_t + tau * xi_t,    U (k* x D) orthonormal,  c_t ~ N(0, diag(s^2)),
                                          xi_t ~ N(0, I_D / D)   (so ||tau xi_t|| ~ tau)

and its own data  x ~ N(0, I_D),  y = x . w_t + sigma eps   (linear)
                                   y ~ Bernoulli(sigmoid(x . w_t))   (logistic).

Each model is then trained from a random start by full-batch gradient descent on its own data
only; the stack of the N trained weight vectors (N x D) is what the subspace code analyses.
"""
from __future__ import annotations

from dataclasses import dataclass

import torch
import torch.nn.functional as F

from .subspace import Basis, SubspaceError, as_stack, orthonormalize, project, reconstruct
from .nulls import mean_only

__all__ = ["PlantedTasks", "planted_tasks", "task_loss", "train_linear_models", "projected_losses"]

KINDS = ("linear", "logistic")


@dataclass(frozen=True)
class PlantedTasks:
    """N related regression tasks whose true weights share a planted subspace.

    U         (k*, D)      orthonormal planted basis (the trail)
    w0        (D,)         shared mean of the true weights
    W_true    (N, D)       true weights of every task
    X_train   (N, n, D)    inputs, y_train (N, n) targets; same for the test split
    """

    U: torch.Tensor
    w0: torch.Tensor
    W_true: torch.Tensor
    X_train: torch.Tensor
    y_train: torch.Tensor
    X_test: torch.Tensor
    y_test: torch.Tensor
    kind: str = "linear"
    task_noise: float = 0.0
    label_noise: float = 0.0

    @property
    def n_tasks(self) -> int:
        return self.W_true.shape[0]

    @property
    def dim(self) -> int:
        return self.W_true.shape[1]

    @property
    def k_star(self) -> int:
        return self.U.shape[0]

    def subset(self, rows) -> "PlantedTasks":
        """The same tasks restricted to some rows (e.g. fit tasks vs held-out tasks)."""
        rows = torch.as_tensor(rows)
        return PlantedTasks(self.U, self.w0, self.W_true[rows], self.X_train[rows], self.y_train[rows],
                            self.X_test[rows], self.y_test[rows], self.kind, self.task_noise, self.label_noise)


def planted_tasks(n_tasks: int, dim: int, k_star: int, task_noise: float = 0.1, *, n_train: int = 100,
                  n_test: int = 200, label_noise: float = 0.5, signal_scales=None, mean_scale: float = 1.0,
                  kind: str = "linear", seed: int = 0) -> PlantedTasks:
    """Sample N tasks whose true weights lie near a planted k*-dimensional subspace of R^D.

    signal_scales  std of each planted coefficient (default: linspace(1.5, 0.75, k*), a decaying
                   spectrum); task_noise  the typical length tau of each task's off-trail step.
    The random draws happen in a fixed order, so changing task_noise with the same seed moves the
    same tasks further off the same trail.
    """
    if kind not in KINDS:
        raise SubspaceError(f"unknown task kind {kind!r}: use one of {KINDS}")
    if n_tasks < 1 or dim < 1 or n_train < 1 or n_test < 1:
        raise SubspaceError(f"n_tasks, dim, n_train and n_test must be positive, got "
                            f"{n_tasks}, {dim}, {n_train}, {n_test}")
    if not 1 <= k_star <= dim:
        raise SubspaceError(f"k_star must be between 1 and dim={dim}, got {k_star}")
    if task_noise < 0 or label_noise < 0:
        raise SubspaceError(f"noise levels must be non-negative, got task_noise={task_noise}, "
                            f"label_noise={label_noise}")
    s = torch.linspace(1.5, 0.75, k_star) if signal_scales is None else torch.as_tensor(signal_scales, dtype=torch.float32)
    if s.shape != (k_star,):
        raise SubspaceError(f"signal_scales needs {k_star} entries (one per planted direction), got {tuple(s.shape)}")
    g = torch.Generator().manual_seed(seed)
    w0 = mean_scale * torch.randn(dim, generator=g) / dim ** 0.5
    U = orthonormalize(torch.randn(k_star, dim, generator=g, dtype=torch.float64)).float()
    c = torch.randn(n_tasks, k_star, generator=g) * s
    xi = torch.randn(n_tasks, dim, generator=g) / dim ** 0.5
    W_true = w0 + c @ U + task_noise * xi
    X = torch.randn(n_tasks, n_train + n_test, dim, generator=g)
    logits = torch.einsum("tnd,td->tn", X, W_true)
    if kind == "linear":
        y = logits + label_noise * torch.randn(logits.shape, generator=g)
    else:
        y = torch.bernoulli(torch.sigmoid(logits), generator=g)
    return PlantedTasks(U, w0, W_true, X[:, :n_train].contiguous(), y[:, :n_train].contiguous(),
                        X[:, n_train:].contiguous(), y[:, n_train:].contiguous(), kind, task_noise, label_noise)


def _per_task_loss(W: torch.Tensor, X: torch.Tensor, y: torch.Tensor, kind: str) -> torch.Tensor:
    """Mean loss of each task t on its own data: MSE (linear) or binary cross-entropy (logistic)."""
    logits = torch.einsum("tnd,td->tn", X, W)
    if kind == "linear":
        return ((logits - y) ** 2).mean(1)
    return F.binary_cross_entropy_with_logits(logits, y, reduction="none").mean(1)


def task_loss(W, tasks: PlantedTasks, split: str = "test") -> torch.Tensor:
    """Loss of model t (row t of W) on task t, per task (N,): MSE or cross-entropy."""
    W = as_stack(W, "W")
    if W.shape != tasks.W_true.shape:
        raise SubspaceError(f"W has shape {tuple(W.shape)} but there are {tasks.n_tasks} tasks in "
                            f"R^{tasks.dim}: one row per task")
    if split not in ("train", "test"):
        raise SubspaceError(f"split must be 'train' or 'test', got {split!r}")
    X, y = (tasks.X_train, tasks.y_train) if split == "train" else (tasks.X_test, tasks.y_test)
    with torch.no_grad():
        return _per_task_loss(W.float(), X, y, tasks.kind)


def train_linear_models(tasks: PlantedTasks, *, steps: int = 300, lr: float = 0.2, weight_decay: float = 0.0,
                        init_scale: float = 0.1, seed: int = 0):
    """Train one model per task by full-batch gradient descent, all tasks batched in one tensor.

    W <- W - lr * grad_W [ sum_t L_t(w_t) + weight_decay/2 ||W||^2 ]   (each task sees only its data)
    Starts from w_t ~ N(0, init_scale^2 I / D). Returns (W (N x D), mean train loss per step).
    """
    if steps < 1 or lr <= 0:
        raise SubspaceError(f"steps must be >= 1 and lr > 0, got steps={steps}, lr={lr}")
    g = torch.Generator().manual_seed(seed)
    W = (init_scale * torch.randn(tasks.n_tasks, tasks.dim, generator=g) / tasks.dim ** 0.5).requires_grad_()
    history = torch.empty(steps)
    for step in range(steps):
        losses = _per_task_loss(W, tasks.X_train, tasks.y_train, tasks.kind)
        objective = losses.sum() + 0.5 * weight_decay * (W ** 2).sum()
        (grad,) = torch.autograd.grad(objective, W)
        with torch.no_grad():
            W -= lr * grad
        history[step] = losses.detach().mean()
    if not torch.isfinite(W).all():
        raise SubspaceError(f"gradient descent diverged (lr={lr} is too large for these tasks)")
    return W.detach(), history


def projected_losses(basis: Basis, W, tasks: PlantedTasks, ks=None, split: str = "test") -> dict:
    """Replace every model by its projection onto the top-k basis, for each k, and measure it.

    W_hat_k = mu + ((W - mu) V_k^T) V_k   (k = 0: the mean alone)
    Returns {"k": (K,), "rel_error": (K,) mean ||w - w_hat|| / ||w - mu||, "loss": (K,) mean task loss}.
    """
    W = as_stack(W, "W")
    ks = list(range(0, basis.k + 1)) if ks is None else [int(k) for k in ks]
    rel_error, loss = [], []
    for k in ks:
        if k == 0:
            W_hat = mean_only(basis, W)
        else:
            b = basis.truncate(k)
            W_hat = reconstruct(b, project(b, W))
        d = (W - basis.mean).norm(dim=1).clamp_min(torch.finfo(W.dtype).tiny)
        rel_error.append(((W - W_hat).norm(dim=1) / d).mean())
        loss.append(task_loss(W_hat, tasks, split).mean())
    return {"k": torch.tensor(ks), "rel_error": torch.stack(rel_error), "loss": torch.stack(loss)}
