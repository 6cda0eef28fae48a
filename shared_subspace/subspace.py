"""The linear algebra of shared subspaces.

Rows of a stack X (N x D) are models, adapters or samples. A basis is the top-k right singular
vectors of the (optionally centered) stack:

    X - 1 mu^T = U S V^T,   basis = V[:, :k]^T  (k x D, orthonormal rows)

    coeffs      = (x - mu) @ basis.T                 project
    x_hat       = mu + coeffs @ basis                reconstruct
    residual    = x - x_hat
    rel. error  = ||residual|| / ||x - mu||          (per row)
    explained variance ratio of direction i = s_i^2 / sum_j s_j^2

Three SVD routes give the same basis (up to sign):
    "full"        torch.linalg.svd of X                      any shape
    "gram"        eigh of X X^T (N x N), then V = X^T U / s   few rows, many columns
    "randomized"  torch.svd_lowrank                           only the top k, large stacks
"""
from __future__ import annotations

import hashlib
import json
import os
import tempfile
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch

__all__ = [
    "Basis", "SubspaceError", "as_stack", "fit_basis", "choose_k", "explained_variance_ratio",
    "project", "reconstruct", "residual", "relative_projection_error", "principal_angles",
    "numerical_rank", "orthonormalize", "save_basis", "load_basis",
]


class SubspaceError(ValueError):
    """Raised for inputs the subspace code cannot use (shapes, NaN/Inf, k out of range, files)."""


@dataclass(frozen=True)
class Basis:
    """A fitted subspace: k orthonormal directions in R^D, the mean, and the full spectrum.

    components       (k, D)   orthonormal rows, sorted by singular value
    mean             (D,)     zeros when the stack was not centered
    singular_values  (m,)     all m = min(N, D) singular values of the (centered) stack
    """

    components: torch.Tensor
    mean: torch.Tensor
    singular_values: torch.Tensor
    centered: bool = True
    method: str = "full"

    @property
    def k(self) -> int:
        return self.components.shape[0]

    @property
    def dim(self) -> int:
        return self.components.shape[1]

    @property
    def explained_variance_ratio(self) -> torch.Tensor:
        return explained_variance_ratio(self.singular_values)

    def truncate(self, k: int) -> "Basis":
        """The same basis keeping only its top-k directions."""
        _check_k(k, self.k, "this basis has only")
        return Basis(self.components[:k], self.mean, self.singular_values, self.centered, self.method)


# ---------------------------------------------------------------- input checks

def as_stack(X, name: str = "X") -> torch.Tensor:
    """X as a 2-D floating tensor with finite entries and at least one row, or a clear error."""
    if isinstance(X, np.ndarray):
        X = torch.from_numpy(X)
    elif isinstance(X, (list, tuple)):
        if len(X) == 0:
            raise SubspaceError(f"{name} is empty: stack at least one vector (rows are models or samples)")
        X = torch.stack([torch.as_tensor(x).reshape(-1) for x in X])
    if not isinstance(X, torch.Tensor):
        raise SubspaceError(f"{name} must be a tensor, array or list of vectors, got {type(X).__name__}")
    if X.ndim != 2:
        raise SubspaceError(f"{name} must be 2-D (rows are models or samples), got shape {tuple(X.shape)}")
    if X.shape[0] == 0 or X.shape[1] == 0:
        raise SubspaceError(f"{name} is empty: shape {tuple(X.shape)}")
    if not X.is_floating_point():
        X = X.to(torch.get_default_dtype())
    rows = _nonfinite_rows(X)
    if rows:
        kind = "NaN" if torch.isnan(X[rows]).any() else "Inf"
        raise SubspaceError(f"{name} contains {kind} values in row(s) {rows[:10]}"
                            f"{' ...' if len(rows) > 10 else ''}: clean or drop those models first")
    return X


def _nonfinite_rows(X: torch.Tensor, block: int = 1 << 22) -> list[int]:
    """Rows holding a NaN or Inf, checked a block of rows at a time (no stack-sized mask)."""
    step = max(1, block // X.shape[1])
    rows = []
    for start in range(0, X.shape[0], step):
        bad = ~torch.isfinite(X[start:start + step]).all(dim=1)
        rows += (torch.nonzero(bad).flatten() + start).tolist()
    return rows


def _check_k(k: int, limit: int, what: str) -> None:
    if not isinstance(k, (int, np.integer)) or isinstance(k, bool):
        raise SubspaceError(f"k must be an integer, got {k!r}")
    if k < 1:
        raise SubspaceError(f"k must be at least 1, got {k}")
    if k > limit:
        raise SubspaceError(f"k={k} is larger than the rank: {what} {limit} independent directions")


def _check_dim(X: torch.Tensor, basis: Basis, name: str = "X") -> None:
    if X.shape[-1] != basis.dim:
        raise SubspaceError(f"{name} has {X.shape[-1]} columns but the basis lives in R^{basis.dim}")


# ---------------------------------------------------------------- spectra and k

def explained_variance_ratio(singular_values: torch.Tensor) -> torch.Tensor:
    """s_i^2 / sum_j s_j^2."""
    power = singular_values.double() ** 2
    total = power.sum()
    return (power / total if total > 0 else power).to(singular_values.dtype)


def numerical_rank(singular_values: torch.Tensor, shape: tuple[int, int]) -> int:
    """Count singular values above max(shape) * eps * s_max (numpy.linalg.matrix_rank's rule)."""
    if singular_values.numel() == 0:
        return 0
    eps = torch.finfo(singular_values.dtype).eps
    tol = singular_values.max() * max(shape) * eps
    return int((singular_values > tol).sum())


def choose_k(singular_values: torch.Tensor, energy: float) -> int:
    """The smallest k whose top-k directions explain at least `energy` of the variance."""
    if not 0 < energy <= 1:
        raise SubspaceError(f"energy must be in (0, 1], got {energy}")
    cumulative = torch.cumsum(explained_variance_ratio(singular_values).double(), 0)
    k = int(torch.searchsorted(cumulative, torch.tensor(energy - 1e-12, dtype=cumulative.dtype))) + 1
    return min(k, singular_values.numel())


# ---------------------------------------------------------------- fitting

def _svd_full(X: torch.Tensor):
    _, S, Vh = torch.linalg.svd(X, full_matrices=False)
    return S, Vh


_CHUNK = 1 << 13  # columns per chunk in the Gram route: N x 8192 float64 at a time


def _gram_spectrum(X: torch.Tensor, mean: torch.Tensor):
    """Few rows, many columns: singular values and left vectors from eigh of G = Xc Xc^T (N x N).

    G is accumulated in float64 over column chunks (squaring the singular values must not square
    the rounding), centering each chunk on the fly: no centered copy of the stack is made.
    """
    G = torch.zeros(X.shape[0], X.shape[0], dtype=torch.float64)
    for start in range(0, X.shape[1], _CHUNK):
        chunk = X[:, start:start + _CHUNK].to(torch.float64, copy=True)
        chunk -= mean[start:start + _CHUNK]
        G.addmm_(chunk, chunk.T)
    evals, U = torch.linalg.eigh(G)
    return evals.flip(0).clamp_min(0).sqrt(), U.flip(1)


def _gram_components(X: torch.Tensor, mean: torch.Tensor, U: torch.Tensor, S: torch.Tensor) -> torch.Tensor:
    """Top directions V^T = U^T Xc / s, one column chunk at a time (only k x D is allocated)."""
    W = (U / S).T.to(X.dtype)
    Vh = torch.empty(W.shape[0], X.shape[1], dtype=X.dtype)
    for start in range(0, X.shape[1], _CHUNK):
        cols = slice(start, start + _CHUNK)
        Vh[:, cols] = W @ (X[:, cols] - mean[cols])
    return Vh


def _svd_randomized(X: torch.Tensor, k: int, seed: int = 0):
    q = min(k + 10, min(X.shape))
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        _, S, V = torch.svd_lowrank(X, q=q, niter=6)
    return S, V.T


def _auto_method(N: int, D: int, k: int | None) -> str:
    m = min(N, D)
    if k is not None and m > 2000 and k <= m // 10:
        return "randomized"
    if D >= 4 * N:
        return "gram"
    return "full"


def fit_basis(X, k: int | None = None, *, energy: float | None = None, center: bool = True,
              method: str = "auto", seed: int = 0) -> Basis:
    """Fit a k-dimensional basis to the rows of X.

    k       number of directions; or
    energy  the smallest k that explains this fraction of the variance (e.g. 0.9); neither: all
    center  subtract the row mean first (PCA); False gives the uncentered SVD
    method  "auto" | "full" | "gram" | "randomized"
    """
    X = as_stack(X)
    if k is not None and energy is not None:
        raise SubspaceError("give k or energy, not both")
    if method not in {"auto", "full", "gram", "randomized"}:
        raise SubspaceError(f"unknown method {method!r}: use auto, full, gram or randomized")
    N, D = X.shape
    if center and N < 2:
        raise SubspaceError("a centered fit needs at least 2 rows: one model has no variance around its mean")
    mean = X.mean(0) if center else torch.zeros(D, dtype=X.dtype)
    max_rank = min(N - 1 if center else N, D)
    if k is not None:
        _check_k(k, max_rank, f"{'a centered' if center else 'an'} {N} x {D} stack has at most")
    if method == "auto":
        method = _auto_method(N, D, k)
    if method == "randomized" and k is None:
        raise SubspaceError("the randomized method needs k: it computes only the top directions")
    if method == "gram":
        S, U = _gram_spectrum(X, mean)
        Vh = None
    else:
        Xc = X - mean if center else X
        S, Vh = _svd_randomized(Xc, k, seed) if method == "randomized" else _svd_full(Xc)
        del Xc
    S = S[:max_rank].to(X.dtype)  # a centered stack has at most N - 1 nonzero singular values
    rank = numerical_rank(S, (N, D)) if Vh is None else min(numerical_rank(S, (N, D)), Vh.shape[0])
    if k is None:
        k = choose_k(S, energy) if energy is not None else max(rank, 1)
    if k > rank:
        raise SubspaceError(f"k={k} is larger than the rank: the {'centered ' if center else ''}stack "
                            f"({N} x {D}) has numerical rank {rank}")
    components = _gram_components(X, mean, U[:, :k], S[:k].double()) if Vh is None else Vh[:k].contiguous()
    return Basis(components, mean, S, center, method)


# ---------------------------------------------------------------- using a basis

def project(basis: Basis, X) -> torch.Tensor:
    """Coefficients (N x k) of the rows of X in the basis: (X - mu) @ basis^T."""
    X = as_stack(X.unsqueeze(0) if isinstance(X, torch.Tensor) and X.ndim == 1 else X)
    _check_dim(X, basis)
    return (X.to(basis.components.dtype) - basis.mean) @ basis.components.T


def reconstruct(basis: Basis, coeffs: torch.Tensor) -> torch.Tensor:
    """mu + coeffs @ basis: the points of the subspace these coefficients name."""
    if coeffs.ndim == 1:
        coeffs = coeffs.unsqueeze(0)
    if coeffs.shape[-1] != basis.k:
        raise SubspaceError(f"coeffs have {coeffs.shape[-1]} columns but the basis has k={basis.k}")
    return basis.mean + coeffs @ basis.components


def residual(basis: Basis, X) -> torch.Tensor:
    """X minus its reconstruction from the basis (the part the subspace misses)."""
    X = as_stack(X.unsqueeze(0) if isinstance(X, torch.Tensor) and X.ndim == 1 else X)
    return X - reconstruct(basis, project(basis, X))


def relative_projection_error(basis: Basis, X) -> torch.Tensor:
    """Per row: ||x - x_hat|| / ||x - mu||; 0 means inside the subspace, 1 means orthogonal to it."""
    X = as_stack(X.unsqueeze(0) if isinstance(X, torch.Tensor) and X.ndim == 1 else X)
    r = residual(basis, X).norm(dim=1)
    d = (X - basis.mean).norm(dim=1)
    return torch.where(d > 0, r / d.clamp_min(torch.finfo(d.dtype).tiny), torch.zeros_like(r))


def orthonormalize(V: torch.Tensor) -> torch.Tensor:
    """Orthonormal rows spanning the rows of V (k x D), via QR."""
    V = as_stack(V, "V")
    Q, _ = torch.linalg.qr(V.T)
    return Q.T


def principal_angles(U, V) -> torch.Tensor:
    """Principal angles (radians, ascending) between the row spaces of U (k1 x D) and V (k2 x D).

    Accepts Basis objects or matrices; rows need not be orthonormal. Angles are arccos of the
    singular values of Q_U Q_V^T (Bjorck & Golub).
    """
    U = U.components if isinstance(U, Basis) else U
    V = V.components if isinstance(V, Basis) else V
    U, V = as_stack(U, "U"), as_stack(V, "V")
    if U.shape[1] != V.shape[1]:
        raise SubspaceError(f"subspaces live in different spaces: R^{U.shape[1]} vs R^{V.shape[1]}")
    Qu, Qv = orthonormalize(U.double()), orthonormalize(V.double())
    cosines = torch.linalg.svdvals(Qu @ Qv.T).clamp(-1, 1)
    return torch.arccos(cosines).to(U.dtype)


# ---------------------------------------------------------------- save / load

_FORMAT = "shared-subspace-basis/1"


def _digest(tensors: dict[str, torch.Tensor]) -> str:
    h = hashlib.sha256()
    for name in sorted(tensors):
        t = tensors[name].detach().cpu().contiguous()
        h.update(name.encode())
        h.update(str(tuple(t.shape)).encode())
        h.update(memoryview(t.reshape(-1).view(torch.uint8).numpy()) if t.numel() else b"")   # no copy
    return h.hexdigest()


def save_basis(basis: Basis, path, **info) -> Path:
    """Write the basis as one safetensors file with JSON metadata; atomic (temp file + rename).

    Extra keyword arguments are stored as JSON in the metadata (e.g. layer name, source models).
    """
    from safetensors.torch import save_file

    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    tensors = {"components": basis.components, "mean": basis.mean,
               "singular_values": basis.singular_values}
    tensors = {k: v.detach().cpu().contiguous() for k, v in tensors.items()}
    meta = {"format": _FORMAT, "centered": basis.centered, "method": basis.method,
            "k": basis.k, "dim": basis.dim, "sha256": _digest(tensors), "info": info}
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
    os.close(fd)
    try:
        save_file(tensors, tmp, metadata={"shared_subspace": json.dumps(meta)})
        with open(tmp, "rb") as f:
            os.fsync(f.fileno())
        os.replace(tmp, path)
    finally:
        if os.path.exists(tmp):
            os.unlink(tmp)
    return path


def load_basis(path, *, with_info: bool = False):
    """Read a basis written by save_basis; a truncated or corrupted file raises SubspaceError."""
    from safetensors import safe_open

    path = Path(path)
    if not path.is_file():
        raise SubspaceError(f"no saved basis at {path}")
    try:
        with safe_open(str(path), framework="pt") as f:
            raw = (f.metadata() or {}).get("shared_subspace")
            tensors = {name: f.get_tensor(name) for name in f.keys()}
    except Exception as exc:  # safetensors raises several types for damaged headers/data
        raise SubspaceError(f"{path} is not a readable basis file (truncated or corrupted?): {exc}") from exc
    if raw is None:
        raise SubspaceError(f"{path} is a safetensors file but not a shared-subspace basis (no metadata)")
    try:
        meta = json.loads(raw)
    except json.JSONDecodeError as exc:
        raise SubspaceError(f"{path} has corrupted basis metadata: {exc}") from exc
    if meta.get("format") != _FORMAT:
        raise SubspaceError(f"{path} has format {meta.get('format')!r}, expected {_FORMAT!r}")
    missing = {"components", "mean", "singular_values"} - tensors.keys()
    if missing:
        raise SubspaceError(f"{path} is missing tensors {sorted(missing)}")
    if _digest(tensors) != meta.get("sha256"):
        raise SubspaceError(f"{path} is corrupted: its checksum does not match the saved one")
    basis = Basis(tensors["components"], tensors["mean"], tensors["singular_values"],
                  bool(meta["centered"]), meta.get("method", "full"))
    if basis.components.shape != (meta["k"], meta["dim"]) or basis.mean.shape != (meta["dim"],):
        raise SubspaceError(f"{path} has inconsistent shapes: components {tuple(basis.components.shape)}, "
                            f"mean {tuple(basis.mean.shape)}")
    return (basis, meta.get("info", {})) if with_info else basis
