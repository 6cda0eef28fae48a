"""The elastic basis: grow when a new task's update leaves the subspace, prune idle directions, cap k.

Rows of X are one task's update vectors in R^D (rows of a LoRA delta_W, or flattened weight changes
of an MLP). The basis V (k x D, orthonormal rows, uncentered) starts empty. Per observation:

    error  = ||X - X V^T V||_F / ||X||_F                       relative projection error (before)
    grow   if error > threshold:  R = X - X V^T V = U S Q^T,  add the top m rows of Q^T, m the
           smallest with  ||X V^T||^2 + sum_{i<=m} s_i^2  >=  energy * ||X||^2   (GPM's rule)
    usage  C += (X V^T)^T (X V^T) / ||X||_F^2                   each task's energy, normalized to 1
    cap    if k > k_max: rotate V to the eigenvectors of C, keep the k_max with the largest energy
    prune  every prune_every observations: rotate V to the eigenvectors of C and drop the
           directions holding less than prune_energy of trace(C)

After growing, error <= sqrt(1 - energy); so energy >= 1 - threshold^2 is required, or a task seen
twice would grow the basis twice. The seed's advice (start at 128, grow to 256, cap at 512) is a
claim to measure with this class, not a default: k_max and the thresholds are the knobs.
"""
from __future__ import annotations

import copy
import math

import torch

from .subspace import Basis, SubspaceError, as_stack

__all__ = ["residual_directions", "relative_error", "captured_energy", "ElasticBasis",
           "flat_params", "with_update", "fine_tune_updates", "digits_cycles", "FAMILIES", "PRESETS"]


def _components(basis, dim: int) -> torch.Tensor:
    """The k x D matrix of a basis (a Basis, a tensor, or None for the empty basis), in float64."""
    if basis is None:
        return torch.zeros(0, dim, dtype=torch.float64)
    V = basis.components if isinstance(basis, Basis) else torch.as_tensor(basis)
    if V.ndim != 2 or V.shape[1] != dim:
        raise SubspaceError(f"X has {dim} columns but the basis has shape {tuple(V.shape)}: both must live in R^{dim}")
    return V.to(torch.float64)


def _stack(X) -> torch.Tensor:
    return as_stack(X).to(torch.float64)


def captured_energy(X, basis) -> float:
    """||X V^T||_F^2 / ||X||_F^2: the fraction of X's energy inside the span of the basis rows."""
    X = _stack(X)
    V = _components(basis, X.shape[1])
    total = float(X.pow(2).sum())
    return float((X @ V.T).pow(2).sum()) / total if total > 0 else 1.0


def relative_error(X, basis) -> float:
    """||X - X V^T V||_F / ||X||_F for an uncentered basis with orthonormal rows V (0 inside, 1 orthogonal).

    The stack-level (Frobenius) version of subspace.relative_projection_error with mean 0.
    """
    return math.sqrt(max(0.0, 1.0 - captured_energy(X, basis)))


def residual_directions(X, basis, energy: float) -> torch.Tensor:
    """Orthonormal directions (m x D) of the part of X outside the basis, the fewest such that basis +
    new directions capture `energy` of ||X||_F^2 (an empty m = 0 stack if the basis already does).

        R = X - X V^T V = U S Q^T,   m = min { m : ||X V^T||^2 + sum_{i<=m} s_i^2 >= energy ||X||^2 }
    """
    if not 0 < energy <= 1:
        raise SubspaceError(f"energy must be in (0, 1], got {energy}")
    X = _stack(X)
    V = _components(basis, X.shape[1])
    total = float(X.pow(2).sum())
    R = X - (X @ V.T) @ V
    have = total - float(R.pow(2).sum())
    if total == 0 or have >= energy * total * (1 - 1e-12):
        return torch.zeros(0, X.shape[1], dtype=torch.float64)
    _, S, Qh = torch.linalg.svd(R, full_matrices=False)
    gained = have + torch.cumsum(S.pow(2), 0)
    m = int(torch.searchsorted(gained, torch.tensor(energy * total * (1 - 1e-12), dtype=gained.dtype))) + 1
    rank = int((S > S[0] * max(R.shape) * torch.finfo(S.dtype).eps).sum())  # never add numerical noise
    Q = Qh[: min(m, rank)]
    # one Gram-Schmidt pass against V keeps the union orthonormal to rounding
    Q = Q - (Q @ V.T) @ V
    return Q / Q.norm(dim=1, keepdim=True)


class ElasticBasis:
    """A subspace of R^dim that grows, is capped and pruned as tasks' updates are observed.

    threshold     grow when the relative projection error of a new task exceeds it (0..1)
    energy        grow until basis + new directions capture this fraction of the task's energy
    k_max         cap on the number of directions (keeps those carrying most observed energy)
    prune_every   prune after every this many observations (None: never)
    prune_energy  a pruned direction holds less than this fraction of all observed energy
    """

    def __init__(self, dim: int, *, threshold: float = 0.3, energy: float = 0.95, k_max: int | None = None,
                 prune_every: int | None = None, prune_energy: float = 0.01):
        if not isinstance(dim, int) or isinstance(dim, bool) or dim < 1:
            raise SubspaceError(f"dim must be a positive integer, got {dim!r}")
        if not 0 <= threshold < 1:
            raise SubspaceError(f"threshold must be in [0, 1) (a relative projection error), got {threshold}")
        if not 0 < energy <= 1:
            raise SubspaceError(f"energy must be in (0, 1], got {energy}")
        if energy < 1 - threshold ** 2 - 1e-12:
            raise SubspaceError(f"energy={energy} is too low for threshold={threshold}: after growing, the error can "
                                f"still be sqrt(1 - energy) = {math.sqrt(1 - energy):.3f} > threshold; "
                                f"use energy >= 1 - threshold^2 = {1 - threshold ** 2:.3f}")
        k_max = dim if k_max is None else k_max
        if not isinstance(k_max, int) or isinstance(k_max, bool) or k_max < 1:
            raise SubspaceError(f"k_max must be an integer >= 1, got {k_max!r}")
        if prune_every is not None and (not isinstance(prune_every, int) or prune_every < 1):
            raise SubspaceError(f"prune_every must be a positive integer or None, got {prune_every!r}")
        if not 0 <= prune_energy < 1:
            raise SubspaceError(f"prune_energy must be in [0, 1), got {prune_energy}")
        self.dim, self.threshold, self.energy = dim, threshold, energy
        self.k_max, self.prune_every, self.prune_energy = min(k_max, dim), prune_every, prune_energy
        self.V = torch.zeros(0, dim, dtype=torch.float64)      # k x D, orthonormal rows
        self.C = torch.zeros(0, 0, dtype=torch.float64)        # k x k observed energy in basis coordinates
        self.history: list[dict] = []

    @property
    def k(self) -> int:
        return self.V.shape[0]

    @property
    def components(self) -> torch.Tensor:
        """The k x dim orthonormal directions (float64)."""
        return self.V.clone()

    @property
    def usage(self) -> torch.Tensor:
        """Observed energy along each direction, diag(C) (each task contributes at most 1 in total)."""
        return torch.diagonal(self.C).clone()

    def basis(self) -> Basis:
        """The current directions as an uncentered subspace.Basis (for project / reconstruct / nulls)."""
        return Basis(self.V.clone(), torch.zeros(self.dim, dtype=torch.float64),
                     self.usage.clamp_min(0).sqrt(), centered=False, method="elastic")

    def observe(self, X, name: str | None = None) -> dict:
        """Measure X's projection error, grow if it exceeds the threshold, update usage, cap, maybe prune."""
        X = _stack(X)
        if X.shape[1] != self.dim:
            raise SubspaceError(f"X has {X.shape[1]} columns but this elastic basis lives in R^{self.dim}")
        cycle = len(self.history)
        error_before = relative_error(X, self.V)
        added = 0
        if error_before > self.threshold:
            Q = residual_directions(X, self.V, self.energy)
            added = Q.shape[0]
            self.V = torch.cat([self.V, Q])
            self.C = torch.block_diag(self.C, torch.zeros(added, added, dtype=torch.float64))
        coeffs = X @ self.V.T
        total = float(X.pow(2).sum())
        if total > 0:
            self.C = self.C + coeffs.T @ coeffs / total
        pruned = 0
        if self.k > self.k_max:
            self._rotate()
            pruned += self._truncate(self.k_max)
        if self.prune_every and (cycle + 1) % self.prune_every == 0:
            pruned += self.prune()
        record = {"cycle": cycle, "name": name if name is not None else f"task {cycle}", "k": self.k,
                  "error_before": error_before, "error_after": relative_error(X, self.V),
                  "added": added, "pruned": pruned}
        self.history.append(record)
        return record

    def _rotate(self) -> torch.Tensor:
        """Rotate V to the principal axes of the observed energy (C diagonal, descending); return the energies."""
        if self.k == 0:
            return torch.zeros(0, dtype=torch.float64)
        evals, U = torch.linalg.eigh(self.C)
        evals, U = evals.flip(0).clamp_min(0), U.flip(1)
        self.V = U.T @ self.V
        self.C = torch.diag(evals)
        return evals

    def _truncate(self, k: int) -> int:
        """Keep the first k directions (after _rotate: those with the most energy); return how many went."""
        dropped = self.k - k
        self.V, self.C = self.V[:k].contiguous(), self.C[:k, :k].clone()
        return dropped

    def prune(self) -> int:
        """Rotate to the principal axes of the observed energy, drop directions under prune_energy of it."""
        evals = self._rotate()
        total = float(evals.sum())
        if total == 0:
            return 0
        return self._truncate(max(1, int((evals / total >= self.prune_energy).sum())))

    def __repr__(self) -> str:
        return (f"ElasticBasis(dim={self.dim}, k={self.k}, threshold={self.threshold}, energy={self.energy}, "
                f"k_max={self.k_max}, prune_every={self.prune_every}, observed={len(self.history)})")


# ---------------------------------------------------------------- fine-tune cycles on digits

def flat_params(model: torch.nn.Module) -> torch.Tensor:
    """All parameters of a model as one float64 vector (torch.nn.utils.parameters_to_vector)."""
    return torch.nn.utils.parameters_to_vector(model.parameters()).detach().to(torch.float64)


def with_update(model: torch.nn.Module, delta_W: torch.Tensor) -> torch.nn.Module:
    """A copy of the model whose flat parameter vector is theta_0 + delta_W."""
    out = copy.deepcopy(model)
    theta = flat_params(model) + torch.as_tensor(delta_W, dtype=torch.float64)
    torch.nn.utils.vector_to_parameters(theta.to(next(model.parameters()).dtype), out.parameters())
    return out.eval()


def fine_tune_updates(model: torch.nn.Module, task, *, epochs: int = 12, snapshots: int = 4, lr: float = 3e-3,
                      seed: int = 0) -> torch.Tensor:
    """One fine-tune cycle: train a copy of the model on the task (all weights, Adam) and return its
    weight change theta_e - theta_0 at `snapshots` evenly spaced epochs (snapshots x D, last row = final).
    """
    from .digits import train_classifier

    if snapshots < 1 or epochs < snapshots:
        raise SubspaceError(f"need 1 <= snapshots <= epochs, got snapshots={snapshots}, epochs={epochs}")
    net = copy.deepcopy(model)
    for p in net.parameters():
        p.requires_grad_(True)
    theta0 = flat_params(net)
    stops = [round(epochs * (i + 1) / snapshots) for i in range(snapshots)]
    rows, done = [], 0
    for i, stop in enumerate(stops):
        train_classifier(net, task.X_train, task.y_train, epochs=stop - done, lr=lr, seed=seed + 1000 * i)
        done = stop
        rows.append(flat_params(net) - theta0)
    return torch.stack(rows)


FAMILIES = ("stream", "labelmap", "repeat")
PRESETS = {"fast": (12, 4), "full": (30, 6)}   # (epochs, snapshots) per cycle; notebook 06 and the CLI share them


def digits_cycles(family: str = "stream", n_tasks: int = 12, *, epochs: int = 12, snapshots: int = 4,
                  seed: int = 0, rebuild: bool = False):
    """(pretrained MLP, tasks, updates): n_tasks fine-tune cycles of streams.pretrained_digits_mlp, cached.

    family  "stream"    streams.digits_stream: pixel permutations, rotations, flips (diverse inputs)
            "labelmap"  the plain images with a new random labelling per task (same features, new readout)
            "repeat"    rotate90 every time, a new data order per cycle (the same skill revisited)
    updates[t] is the snapshots x D stack of fine_tune_updates for task t.
    """
    from . import digits, runtime, streams

    if family not in FAMILIES:
        raise SubspaceError(f"unknown family {family!r}: use one of {FAMILIES}")
    if family == "stream":
        base, tasks = streams.digits_stream(n_tasks, seed=seed)
    else:
        base = streams.pretrained_digits_mlp(seed)
        tasks = ([digits.make_task("labelmap", seed=1000 * seed + t + 1) for t in range(n_tasks)] if family == "labelmap"
                 else [digits.make_task("rotate90", name=f"rotate90-run{t}") for t in range(n_tasks)])
    path = runtime.cache_dir("elastic") / f"{family}_n{n_tasks}_ep{epochs}_s{snapshots}_seed{seed}.pt"
    if path.exists() and not rebuild:
        updates = torch.load(path, weights_only=True)
    else:
        updates = [fine_tune_updates(base, task, epochs=epochs, snapshots=snapshots,
                                     seed=seed + (t if family == "repeat" else 0)) for t, task in enumerate(tasks)]
        tmp = path.with_suffix(".tmp")
        torch.save(updates, tmp)
        tmp.replace(path)
    return base, tasks, updates


# ---------------------------------------------------------------- command line

def _cli(args) -> int:
    """Build the cached cycles of each family and print the elastic basis's history for each."""
    import pandas as pd

    from . import runtime

    runtime.set_threads()
    fast = bool(getattr(args, "fast", False))
    epochs, snapshots = PRESETS["fast" if fast else "full"]
    for family in getattr(args, "families", FAMILIES):
        _, tasks, updates = digits_cycles(family, getattr(args, "n_tasks", 12), epochs=epochs, snapshots=snapshots,
                                          rebuild=getattr(args, "rebuild", False))
        E = ElasticBasis(updates[0].shape[1], threshold=getattr(args, "threshold", 0.3),
                         energy=getattr(args, "energy", 0.95), k_max=getattr(args, "k_max", None))
        for task, X in zip(tasks, updates):
            E.observe(X, task.name)
        print(f"== {family}: k = {E.k} after {len(tasks)} cycles")
        print(pd.DataFrame(E.history).set_index("cycle").to_string(float_format="%.3f"))
    return 0


def _register() -> None:
    from .cli import command

    _cli.add_arguments = lambda p: (
        p.add_argument("--families", nargs="+", default=list(FAMILIES), choices=FAMILIES),
        p.add_argument("--n-tasks", type=int, default=12, help="fine-tune cycles per family"),
        p.add_argument("--threshold", type=float, default=0.3, help="grow when the projection error exceeds it"),
        p.add_argument("--energy", type=float, default=0.95, help="grow until this energy of a task is captured"),
        p.add_argument("--k-max", type=int, default=None, help="cap on the number of directions"),
        p.add_argument("--fast", action="store_true", help="the small fast-mode fine-tunes"),
        p.add_argument("--rebuild", action="store_true", help="retrain the cached cycles"))
    _cli.builds_cache = True
    command("elastic", "the elastic basis over digits fine-tune cycles (cached in elastic/)")(_cli)


_register()
