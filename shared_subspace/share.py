"""Share: continual LoRA in one shared subspace (Kaushik, Vaidya et al., arXiv 2602.06043), on PEFT.

Per adapted module (a Linear W, d_in -> d_out) two frozen orthonormal bases are kept:

    beta  (d_out x k)  for the B factors          alpha (d_in x k)  for the A factors

and a task t is only its coefficients, pseudo-rank p:

    B_t = beta @ eps_B_t   (d_out x p)      A_t = (alpha @ eps_A_t)^T   (p x d_in)
    delta_W_t = B_t A_t    -> 2 k p numbers per module instead of r (d_in + d_out) for LoRA

Stream:
  1. the first `n_init` tasks train ordinary LoRA adapters (rank p + q); their factors, stacked
     column-wise and mean-centered, give the first bases (subspace.fit_basis);
  2. each later task trains only eps_B, eps_A (+ q temporary factor pairs that may leave the basis);
  3. after every task the bases are refit on [old tasks rebuilt from basis and coefficients | new
     task's factors] and every old task is re-projected analytically: eps = basis_new^T @ factor.

The trap. N adapters of rank r give N r factor columns; centered, they span at most N r - 1
directions. Asking for a larger k cannot be answered by the data, and a literal refit silently
shrinks the basis (`fill="literal"`). `fill` decides what completes the basis to k directions:

    "mean"      the (uncentered) mean direction first, then the centered directions, then the
                previous basis, then random directions  (default: the span of the data is kept whole)
    "previous"  centered directions, then the previous basis, then random directions
    "random"    centered directions, then random directions
    "literal"   centered directions only: k collapses to the rank of the centered stack

`basis="random"` is the control: random orthonormal alpha, beta of the same k, never refit.

PEFT integration: the model is an ordinary `get_peft_model` LoRA model; in each LoRA layer the
`lora_A` / `lora_B` Linear is swapped for a `BasisFactor` whose weight is built from the frozen
basis and the trainable coefficients, so PEFT's own forward runs unchanged. Any task exports as a
standard PEFT LoRA adapter folder (`export_peft`), loadable with `PeftModel.from_pretrained`.
"""
from __future__ import annotations

import json
import math
import time
from dataclasses import asdict, dataclass
from pathlib import Path

import torch
from torch import nn

from . import runtime
from .baselines import _batched, _device, _take
from .subspace import SubspaceError, fit_basis

__all__ = [
    "ShareConfig", "Share", "BasisFactor", "FILLS", "canonical_factors", "fit_factor_basis",
    "reproject", "attach_basis_factors", "lora_factors", "export_peft", "sweep", "load_sweep",
]

FILLS = ("mean", "previous", "random", "literal")
RTOL = 1e-5   # directions weaker than this (relative) are float32 round-off, not data


# ---------------------------------------------------------------- the math (pure functions)

def canonical_factors(B: torch.Tensor, A: torch.Tensor, rank: int) -> tuple[torch.Tensor, torch.Tensor]:
    """The best rank-`rank` factors of delta_W = B A, balanced: B' = U sqrt(S), A' = sqrt(S) V^T.

    LoRA factors are defined only up to an invertible mixing (B G)(G^-1 A); this canonical form
    (from the SVD of B A, computed through QR of the thin factors) removes that freedom before
    factors of different tasks are stacked. Columns beyond the rank of B A are zero.
    """
    if B.ndim != 2 or A.ndim != 2 or B.shape[1] != A.shape[0]:
        raise ValueError(f"B (d_out x r) and A (r x d_in) do not chain: {tuple(B.shape)} @ {tuple(A.shape)}")
    if rank < 1:
        raise ValueError(f"rank must be at least 1, got {rank}")
    dtype = B.dtype
    Qb, Rb = torch.linalg.qr(B.double())
    Qa, Ra = torch.linalg.qr(A.double().T)
    U, S, Vh = torch.linalg.svd(Rb @ Ra.T)
    U, V = Qb @ U, Qa @ Vh.T
    m = min(rank, S.numel())
    root = S[:m].sqrt()
    Bc = torch.zeros(B.shape[0], rank, dtype=torch.float64)
    Ac = torch.zeros(rank, A.shape[1], dtype=torch.float64)
    Bc[:, :m], Ac[:m] = U[:, :m] * root, (V[:, :m] * root).T
    return Bc.to(dtype), Ac.to(dtype)


def _complete(Q: torch.Tensor, candidates: torch.Tensor | None, k: int) -> torch.Tensor:
    """Append to the orthonormal columns Q (d x m) the strongest directions of `candidates` outside span(Q)."""
    if candidates is None or Q.shape[1] >= k or candidates.numel() == 0:
        return Q
    R = candidates - Q @ (Q.T @ candidates)
    U, S, _ = torch.linalg.svd(R, full_matrices=False)
    scale = max(candidates.norm(dim=0).max().item(), 1e-30)
    keep = S > RTOL * scale
    U = U[:, keep][:, : k - Q.shape[1]]
    return torch.linalg.qr(torch.cat([Q, U], 1))[0]


def fit_factor_basis(F: torch.Tensor, k: int, *, fill: str = "mean", previous: torch.Tensor | None = None,
                     seed: int = 0) -> tuple[torch.Tensor, int]:
    """An orthonormal basis (d x k') for the factor columns F (d x n), and how many directions the data gave.

    Centered directions come from subspace.fit_basis on the rows F^T (mean-centered SVD); at most
    n - 1 of them exist. `fill` completes them to k (see the module docstring); with "literal"
    k' = min(k, rank of the centered stack) and the basis shrinks.
    """
    if fill not in FILLS:
        raise ValueError(f"unknown fill {fill!r}: use one of {FILLS}")
    if F.ndim != 2:
        raise ValueError(f"factor stack must be 2-D (d x n columns), got shape {tuple(F.shape)}")
    d, n = F.shape
    if not 1 <= k <= d:
        raise ValueError(f"k={k} must be between 1 and the factor dimension d={d}")
    F64 = F.double()
    mean = F64.mean(1, keepdim=True)
    Q = torch.zeros(d, 0, dtype=torch.float64)
    if fill == "mean" and mean.norm() > 1e-12 * max(F64.norm().item(), 1e-30):
        Q = mean / mean.norm()
    if n >= 2 and (F64 - mean).norm() > 1e-12 * max(F64.norm().item(), 1e-30):
        fit = fit_basis(F64.T, center=True)                             # mean-centered SVD of the columns
        strong = fit.singular_values[: fit.k] > RTOL * fit.singular_values[0]
        Q = _complete(Q, fit.components[strong].T, k)                  # d x rank(centered stack)
    n_data = Q.shape[1]
    if fill in ("mean", "previous") and previous is not None:
        Q = _complete(Q, previous.double(), k)
    if fill != "literal" and Q.shape[1] < k:
        g = torch.Generator().manual_seed(seed)
        Q = _complete(Q, torch.randn(d, k, generator=g, dtype=torch.float64), k)
    if Q.shape[1] == 0:
        raise SubspaceError("the factor stack has no direction at all (all factors are zero)")
    return Q[:, :k].to(F.dtype).contiguous(), n_data


def reproject(new_basis: torch.Tensor, old_basis: torch.Tensor, coeffs: torch.Tensor) -> torch.Tensor:
    """Coefficients of the factor old_basis @ coeffs in the new basis: eps' = new^T (old @ eps)."""
    return new_basis.T @ (old_basis @ coeffs)


def random_orthonormal(d: int, k: int, seed: int = 0) -> torch.Tensor:
    """d x k orthonormal columns from a seeded Gaussian (QR): the random-basis control."""
    g = torch.Generator().manual_seed(seed)
    return torch.linalg.qr(torch.randn(d, k, generator=g, dtype=torch.float64))[0].float()


# ---------------------------------------------------------------- PEFT integration

class BasisFactor(nn.Module):
    """A LoRA factor that lives in a frozen basis, dropped in where PEFT keeps lora_A / lora_B.

    side "A":  weight = [ (basis @ coeffs)^T ; temp^T ]    ((p + q) x d_in),  basis d_in x k
    side "B":  weight = [  basis @ coeffs    ,  temp   ]   (d_out x (p + q)), basis d_out x k
    Only `coeffs` (k x p) and `temp` (d x q) are trainable; `basis` is a buffer.
    """

    def __init__(self, basis: torch.Tensor, p: int, q: int = 0, *, side: str):
        super().__init__()
        if side not in ("A", "B"):
            raise ValueError(f"side must be 'A' or 'B', got {side!r}")
        self.side = side
        self.register_buffer("basis", basis.float().contiguous())
        d, k = basis.shape
        self.coeffs = nn.Parameter(torch.zeros(k, p))
        self.temp = nn.Parameter(torch.zeros(d, q))

    @property
    def weight(self) -> torch.Tensor:
        # PEFT reads lora_A.weight (for its dtype) just before calling lora_A(x): build the weight once
        # and let the next forward reuse it while the parameters are unchanged (their version counters).
        F = self.basis @ self.coeffs if self.temp.shape[1] == 0 else \
            torch.cat([self.basis @ self.coeffs, self.temp], 1)           # d x (p + q)
        W = F.T if self.side == "A" else F
        self._cached = (self.coeffs._version, self.temp._version, torch.is_grad_enabled(), W)
        return W

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        cached, self._cached = getattr(self, "_cached", None), None
        fresh = cached is not None and cached[:3] == (self.coeffs._version, self.temp._version, torch.is_grad_enabled())
        W = cached[3] if fresh else self.weight
        self._cached = None
        return nn.functional.linear(x, W)


def _lora_layers(model: nn.Module) -> dict[str, nn.Module]:
    """{name in the base model: PEFT LoRA layer} (PEFT's "base_model.model." prefix removed)."""
    from peft.tuners.lora import LoraLayer
    prefix = "base_model.model."
    return {name.removeprefix(prefix): m for name, m in model.named_modules() if isinstance(m, LoraLayer)}


def attach_basis_factors(peft_model: nn.Module, bases: dict[str, tuple[torch.Tensor, torch.Tensor]],
                         p: int, q: int = 0, adapter: str = "default") -> dict[str, tuple[BasisFactor, BasisFactor]]:
    """Swap lora_A / lora_B of every PEFT LoRA layer for BasisFactors over bases[name] = (alpha, beta).

    Sets the layer's scaling to 1 (B_t A_t is the whole update). Returns {name: (factor_A, factor_B)}.
    """
    layers = _lora_layers(peft_model)
    missing = set(bases) - set(layers)
    if missing:
        raise KeyError(f"no PEFT LoRA layer named {sorted(missing)}; LoRA layers are {sorted(layers)}")
    out = {}
    for name, (alpha, beta) in bases.items():
        layer = layers[name]
        if alpha.shape[0] != layer.in_features or beta.shape[0] != layer.out_features:
            raise ValueError(f"{name}: bases {tuple(alpha.shape)}, {tuple(beta.shape)} do not fit "
                             f"a {layer.in_features} -> {layer.out_features} layer")
        device = layer.get_base_layer().weight.device
        fA, fB = BasisFactor(alpha, p, q, side="A").to(device), BasisFactor(beta, p, q, side="B").to(device)
        layer.lora_A[adapter], layer.lora_B[adapter] = fA, fB
        layer.scaling[adapter] = 1.0
        out[name] = (fA, fB)
    return out


def lora_factors(peft_model: nn.Module, adapter: str = "default") -> dict[str, tuple[torch.Tensor, torch.Tensor]]:
    """{module name: (B, A)} of a PEFT LoRA model, with the scaling folded into B."""
    return {name: (layer.lora_B[adapter].weight.detach() * layer.scaling[adapter],
                   layer.lora_A[adapter].weight.detach())
            for name, layer in _lora_layers(peft_model).items()}


# ---------------------------------------------------------------- the method

@dataclass
class ShareConfig:
    """Hyperparameters of a Share run (JSON-able; part of a checkpoint's identity)."""

    k: int = 16                      # basis size per module and side (capped at the side's dimension)
    p: int = 4                       # pseudo-rank: coefficient columns per task
    q: int = 0                       # temporary factor pairs per task (trained, folded into the basis, not stored)
    n_init: int = 2                  # first tasks trained as plain LoRA (rank p + q) to seed the bases
    fill: str = "mean"               # how a basis is completed to k directions (FILLS)
    basis: str = "data"              # "data" (Share) | "random" (control: random bases, never refit)
    epochs: int = 10
    lr: float = 1e-2                 # coefficients and temporary factors
    init_lr: float | None = None     # the seed adapters (default: lr)
    head_lr: float | None = None     # per-task heads (text; default: lr)
    batch_size: int = 64
    weight_decay: float = 0.0
    seed: int = 0

    def __post_init__(self):
        if self.fill not in FILLS:
            raise ValueError(f"unknown fill {self.fill!r}: use one of {FILLS}")
        if self.basis not in ("data", "random"):
            raise ValueError(f"basis must be 'data' or 'random', got {self.basis!r}")
        for name, low in (("k", 1), ("p", 1), ("q", 0), ("n_init", 0), ("epochs", 1), ("batch_size", 1)):
            if getattr(self, name) < low:
                raise ValueError(f"{name} must be at least {low}, got {getattr(self, name)}")
        if self.basis == "data" and self.n_init < 1:
            raise ValueError("a data basis needs n_init >= 1 seed adapters (or use basis='random')")


class Share:
    """Share as a continual Method (continual.run_stream): learn, score by task id, storage, state.

    backbone: a baselines.DigitsBackbone or TextBackbone (what the network is, its LoRA targets,
    how data reaches it, whether tasks share the output layer or get a head each).
    """

    def __init__(self, backbone, config: ShareConfig | None = None, **overrides):
        from peft import LoraConfig, get_peft_model

        self.cfg = ShareConfig(**{**asdict(config or ShareConfig()), **overrides})
        self.backbone = backbone
        self.name = "Share" if self.cfg.basis == "data" else "Share (random basis)"
        if self.cfg.basis == "data" and self.cfg.fill != "mean":
            self.name += f" (fill={self.cfg.fill})"
        r = self.cfg.p + self.cfg.q
        lora = LoraConfig(r=r, lora_alpha=r, lora_dropout=0.0, target_modules=list(backbone.targets))
        self.model = get_peft_model(backbone.frozen_copy(), lora).eval()
        self.dims = {name: (m.in_features, m.out_features) for name, m in _lora_layers(self.model).items()}
        self.bases: dict[str, tuple[torch.Tensor, torch.Tensor]] = {}    # module -> (alpha, beta)
        self.coeffs: list[dict | None] = []   # task -> {module: (eps_A, eps_B)}; None while a seed adapter
        self.seeds: list[dict] = []           # seed adapters before the bases exist: {module: (B, A)}
        self.heads: list[nn.Linear | None] = []
        self.history: list[dict] = []        # per task: basis sizes, directions from data, seconds
        if self.cfg.basis == "random":
            self.bases = {name: (random_orthonormal(d_in, min(self.cfg.k, d_in), self.cfg.seed + 2 * i),
                                 random_orthonormal(d_out, min(self.cfg.k, d_out), self.cfg.seed + 2 * i + 1))
                          for i, (name, (d_in, d_out)) in enumerate(self.dims.items())}

    # -- the Method interface -----------------------------------------------------------
    def config(self) -> dict:
        return {"name": "share", **asdict(self.cfg), **self.backbone.config()}

    @property
    def n_tasks(self) -> int:
        return len(self.coeffs)

    def learn(self, task_id: int, task) -> None:
        """Train task `task_id` (seed LoRA, or coefficients + temporary factors), then refit and re-project."""
        if task_id != self.n_tasks:
            raise ValueError(f"Share learns tasks in stream order: expected task_id {self.n_tasks}, got {task_id}")
        t0 = time.perf_counter()
        seeding = not self.bases
        p, q = self.cfg.p, self.cfg.q
        if seeding:   # a plain LoRA of rank p + q: identity "bases", every column free
            factors = attach_basis_factors(self.model, self._identity(), p + q, 0)
        else:
            factors = attach_basis_factors(self.model, self.bases, p, q)
        g = torch.Generator().manual_seed(self.cfg.seed * 100003 + task_id)
        with torch.no_grad():   # LoRA's start: A uniform in its free coordinates, B = 0, so delta_W = 0
            for fA, _ in factors.values():
                k = fA.coeffs.shape[0]
                fA.coeffs.uniform_(-1 / math.sqrt(k), 1 / math.sqrt(k), generator=g)
                fA.temp.uniform_(-1 / math.sqrt(fA.temp.shape[0]), 1 / math.sqrt(fA.temp.shape[0]), generator=g)
        head = self._new_head(task_id, task)
        lr = (self.cfg.init_lr or self.cfg.lr) if seeding else self.cfg.lr
        groups = [{"params": [t for f in factors.values() for m in f for t in m.parameters()], "lr": lr}]
        if head is not None:
            groups.append({"params": list(head.parameters()), "lr": self.cfg.head_lr or self.cfg.lr})
        self._fit(task_id, task, groups, head)
        self.heads.append(head)
        new = {name: canonical_factors(fB.weight.detach(), fA.weight.detach(), p)      # (B, A), rank p
               for name, (fA, fB) in factors.items()}
        info = {"task": task_id, "seeding": seeding, "seconds_train": time.perf_counter() - t0}
        if seeding:
            self.seeds.append(new)
            self.coeffs.append(None)
            if len(self.seeds) == self.cfg.n_init:
                info["bases"] = self._fit_bases()
        else:
            info["bases"] = self._refit(new)
        info["seconds"] = time.perf_counter() - t0
        self.history.append(info)

    @torch.no_grad()
    def score(self, task_id: int, task) -> float:
        """Test score with task `task_id`'s adapter and head (an unlearned task: no adapter, a fresh head)."""
        if task_id < self.n_tasks:
            self.load_task(task_id)
            head = self.heads[task_id]
        else:
            attach_basis_factors(self.model, self._identity(), self.cfg.p, 0)   # zero coefficients: the base
            head = self._new_head(task_id, task)
        X, _ = self.backbone.data(task, "test")
        return self.backbone.score(task, self._predict(X, head))

    def storage(self) -> dict:
        """Parameters really stored: bases (shared), coefficients and heads (per task)."""
        shared = sum(a.numel() + b.numel() for a, b in self.bases.values())
        coeffs = sum(e.numel() for c in self.coeffs if c for pair in c.values() for e in pair)
        coeffs += sum(f.numel() for s in self.seeds for pair in s.values() for f in pair)
        heads = sum(t.numel() for h in self.heads if h is not None for t in h.parameters())
        n = max(self.n_tasks, 1)
        return {"shared": int(shared), "per_task": (coeffs + heads) / n, "total": int(shared + coeffs + heads),
                "per_task_coeffs": coeffs / n, "per_task_heads": heads / n}

    def monitors(self) -> dict:
        """What run_stream stores beside R: per-task basis sizes (directions kept, from data) and times."""
        return {"history": self.history, "storage": self.storage()}

    def state_dict(self) -> dict:
        return {"config": self.config(), "bases": self.bases, "coeffs": self.coeffs, "seeds": self.seeds,
                "heads": [None if h is None else h.state_dict() for h in self.heads], "history": self.history}

    def load_state_dict(self, state: dict) -> None:
        if state["config"] != self.config():
            raise ValueError(f"this checkpoint was written by a Share run with another config: {state['config']}")
        self.bases, self.coeffs, self.seeds = dict(state["bases"]), list(state["coeffs"]), list(state["seeds"])
        self.history = list(state["history"])
        self.heads = []
        for sd in state["heads"]:
            head = None
            if sd is not None:
                head = nn.Linear(sd["weight"].shape[1], sd["weight"].shape[0])
                head.load_state_dict(sd)
            self.heads.append(head)

    # -- the shared subspace ----------------------------------------------------------------
    def _identity(self) -> dict:
        return {name: (torch.eye(d_in), torch.eye(d_out)) for name, (d_in, d_out) in self.dims.items()}

    def _fit_bases(self) -> dict:
        """Seed the bases from the first adapters (mean-centered SVD of their stacked factors) and project them."""
        kept = {}
        for name, (d_in, d_out) in self.dims.items():
            As = torch.cat([s[name][1].T for s in self.seeds], 1)                    # d_in  x N p
            Bs = torch.cat([s[name][0] for s in self.seeds], 1)                      # d_out x N p
            alpha, nA = fit_factor_basis(As, min(self.cfg.k, d_in), fill=self.cfg.fill, seed=self.cfg.seed)
            beta, nB = fit_factor_basis(Bs, min(self.cfg.k, d_out), fill=self.cfg.fill, seed=self.cfg.seed + 1)
            self.bases[name] = (alpha, beta)
            kept[name] = {"k_A": alpha.shape[1], "k_B": beta.shape[1], "data_A": nA, "data_B": nB}
        first = self.n_tasks - len(self.seeds)
        for i, s in enumerate(self.seeds):
            self.coeffs[first + i] = self._project(s)
        self.seeds = []
        return kept

    def _project(self, factors: dict) -> dict:
        """{module: (B, A)} -> {module: (eps_A, eps_B)} = (alpha^T A^T, beta^T B)."""
        return {name: (self.bases[name][0].T @ A.T, self.bases[name][1].T @ B) for name, (B, A) in factors.items()}

    def _refit(self, new: dict) -> dict:
        """Refit the bases on [old tasks rebuilt | new task] and re-project every old task analytically."""
        if self.cfg.basis == "random":             # the control keeps its random bases
            self.coeffs.append(self._project(new))
            return {}
        kept = {}
        seed = self.cfg.seed + 7919 * self.n_tasks
        for name, (d_in, d_out) in self.dims.items():
            alpha, beta = self.bases[name]
            As = torch.cat([alpha @ c[name][0] for c in self.coeffs] + [new[name][1].T], 1)
            Bs = torch.cat([beta @ c[name][1] for c in self.coeffs] + [new[name][0]], 1)
            alpha2, nA = fit_factor_basis(As, min(self.cfg.k, d_in), fill=self.cfg.fill, previous=alpha, seed=seed)
            beta2, nB = fit_factor_basis(Bs, min(self.cfg.k, d_out), fill=self.cfg.fill, previous=beta, seed=seed + 1)
            for c in self.coeffs:
                eA, eB = c[name]
                c[name] = (reproject(alpha2, alpha, eA), reproject(beta2, beta, eB))
            self.bases[name] = (alpha2, beta2)
            kept[name] = {"k_A": alpha2.shape[1], "k_B": beta2.shape[1], "data_A": nA, "data_B": nB}
        self.coeffs.append(self._project(new))
        return kept

    def task_factors(self, task_id: int) -> dict[str, tuple[torch.Tensor, torch.Tensor]]:
        """{module: (B_t, A_t)} of a learned task, rebuilt: B_t = beta @ eps_B, A_t = (alpha @ eps_A)^T."""
        if not 0 <= task_id < self.n_tasks:
            raise IndexError(f"task {task_id} has not been learned: Share knows tasks 0..{self.n_tasks - 1}")
        c = self.coeffs[task_id]
        if c is None:                              # a seed adapter, before the bases exist
            return dict(self.seeds[task_id - (self.n_tasks - len(self.seeds))])
        return {name: (self.bases[name][1] @ eB, (self.bases[name][0] @ eA).T) for name, (eA, eB) in c.items()}

    @torch.no_grad()
    def load_task(self, task_id: int) -> None:
        """Put task `task_id`'s coefficients into the model (inference by task id)."""
        c = self.coeffs[task_id] if 0 <= task_id < self.n_tasks else None
        if c is None:
            factors = self.task_factors(task_id)
            for name, (fA, fB) in attach_basis_factors(self.model, self._identity(), self.cfg.p, 0).items():
                fA.coeffs.copy_(factors[name][1].T)
                fB.coeffs.copy_(factors[name][0])
            return
        for name, (fA, fB) in attach_basis_factors(self.model, self.bases, self.cfg.p, 0).items():
            fA.coeffs.copy_(c[name][0])
            fB.coeffs.copy_(c[name][1])

    # -- training and prediction ---------------------------------------------------------------
    def _new_head(self, task_id: int, task) -> nn.Linear | None:
        if self.backbone.shared_head:
            return None
        torch.manual_seed(self.cfg.seed * 100003 + task_id)
        return nn.Linear(self.backbone.feature_dim, self.backbone.n_classes(task)).to(_device(self.model))

    def _fit(self, task_id: int, task, groups, head) -> None:
        from .continual import step_bar

        X, y = self.backbone.data(task, "train")
        n, bs = len(y), self.cfg.batch_size
        opt = torch.optim.Adam(groups, weight_decay=self.cfg.weight_decay)
        g = torch.Generator().manual_seed(self.cfg.seed * 100003 + task_id)
        self.model.train()
        with step_bar(self.cfg.epochs * math.ceil(n / bs), desc=f"{self.name} task {task_id} ({task.name})") as bar:
            for _ in range(self.cfg.epochs):
                for idx in torch.randperm(n, generator=g).split(bs):
                    loss = nn.functional.cross_entropy(self.backbone.logits(self.model, _take(X, idx), head), y[idx])
                    opt.zero_grad()
                    loss.backward()
                    opt.step()
                    bar.update(1)
        self.model.eval()

    def _predict(self, X, head) -> torch.Tensor:
        return _batched(lambda b: self.backbone.predict(self.model, b, head), X, self.backbone.eval_batch)

    @torch.no_grad()
    def logits(self, task_id: int, X) -> torch.Tensor:
        """Share's own inference for a learned task: logits of inputs X (as backbone.data gives them)."""
        self.load_task(task_id)
        return self.backbone.logits(self.model, X, self.heads[task_id])

    # -- export ------------------------------------------------------------------------------------
    def export_peft(self, task_id: int, folder) -> Path:
        """Write task `task_id` as a standard PEFT LoRA adapter folder (rank p, lora_alpha = p: scaling 1).

        A per-task head (text) is saved beside it as head.safetensors.
        """
        folder = export_peft(self.backbone.frozen_copy(), self.task_factors(task_id), folder)
        if self.heads[task_id] is not None:
            from safetensors.torch import save_file
            save_file({k: v.contiguous() for k, v in self.heads[task_id].state_dict().items()}, folder / "head.safetensors")
        return folder


def export_peft(base_model: nn.Module, factors: dict[str, tuple[torch.Tensor, torch.Tensor]], folder) -> Path:
    """Save {module: (B, A)} as a PEFT LoRA adapter folder for `base_model` (r = p, lora_alpha = p: scaling 1)."""
    from peft import LoraConfig, get_peft_model

    if not factors:
        raise ValueError("no factors to export")
    r = next(iter(factors.values()))[0].shape[1]
    cfg = LoraConfig(r=r, lora_alpha=r, lora_dropout=0.0, target_modules=sorted(factors))
    model = get_peft_model(base_model, cfg)
    layers = _lora_layers(model)
    with torch.no_grad():
        for name, (B, A) in factors.items():
            layers[name].lora_B["default"].weight.copy_(B)
            layers[name].lora_A["default"].weight.copy_(A)
    folder = Path(folder)
    model.save_pretrained(folder)
    return folder


# ---------------------------------------------------------------- experiments: both streams, cached runs, sweeps

# Stream sizes per mode (fast: tests and classrooms; full: the notebook's real numbers). Text uses
# notebook 04's recipe (baselines.RECIPES); digits trains 20 epochs per task (fast: 8) for every method.
SETTINGS = {
    "digits": {"full": {"n_tasks": 10, "epochs": 30}, "fast": {"n_tasks": 10, "epochs": 8}},
    "text": {"full": {"n_tasks": 8, "n_train": 64, "n_test": 48, "epochs": 3},
             "fast": {"n_tasks": 3, "n_train": 64, "n_test": 32, "epochs": 2}},
    # a causal LM (notebook 07): SmolLM2 on a CPU by default, a 1B model on a GPU
    "causal": {"full": {"n_tasks": 4, "n_train": 64, "n_test": 32, "epochs": 2},
               "fast": {"n_tasks": 2, "n_train": 40, "n_test": 16, "epochs": 2}},
}
# Share's default per stream, and the LoRA baselines' (same epochs, batches and data as Share).
SHARE_DEFAULTS = {"digits": {"k": 24, "p": 2, "n_init": 4, "lr": 3e-2},
                  "text": {"k": 16, "p": 4, "n_init": 1, "lr": 3e-2, "init_lr": 3e-3, "batch_size": 16},
                  "causal": {"k": 16, "p": 4, "n_init": 1, "lr": 3e-2, "init_lr": 3e-3, "batch_size": 8}}
LORA_DEFAULTS = {"digits": {"r": 8, "alpha": 16, "lr": 1e-2, "batch_size": 64},
                 "text": {"r": 8, "alpha": 16, "lr": 2e-3, "head_lr": 1e-2, "batch_size": 16},
                 "causal": {"r": 8, "alpha": 16, "lr": 3e-3, "batch_size": 8}}
BASELINES = ("per_task_lora", "sequential_lora", "joint_lora")
# The sweep grid per stream and mode: every (k, p, q) is one full run over the stream; the
# random-basis control runs at every (k, p) with k in random_ks.
GRID = {
    "digits": {"full": {"ks": (8, 16, 24), "ps": (2,), "qs": (0, 2), "random_ks": (8, 24)},
               "fast": {"ks": (8, 24), "ps": (2,), "qs": (0,), "random_ks": (8, 24)}},
    "text": {"full": {"ks": (16,), "ps": (4,), "qs": (0,), "random_ks": ()},   # a MiniLM run is slow on a CPU
             "fast": {"ks": (16,), "ps": (4,), "qs": (0,), "random_ks": ()}},
}
# The runs notebook 05 shows besides the sweep (the CLI builds them into the cache).
NOTEBOOK_RUNS = {"digits": ("share", "literal", "random", "per_task_lora", "sequential_lora", "joint_lora"),
                 "text": ("share", "per_task_lora"),
                 "causal": ("sequential_lora", "per_task_lora", "share")}     # notebook 07
_BACKBONES: dict = {}


def _mode(fast: bool | None) -> str:
    return "fast" if (runtime.fast_mode() if fast is None else fast) else "full"


def setup(stream: str, fast: bool | None = None, model: str = "bundled:smollm2"):
    """(backbone, tasks, settings) of the digits, MiniLM text or causal-LM stream at this mode's size
    (`model` names the causal LM: bundled SmolLM2, a hub id or a folder)."""
    from . import streams
    from .baselines import CausalBackbone, DigitsBackbone, TextBackbone

    if stream not in SETTINGS:
        raise ValueError(f"unknown stream {stream!r}: use one of {sorted(SETTINGS)}")
    s = SETTINGS[stream][_mode(fast)]
    if stream == "causal":
        if _BACKBONES.get("causal") is None or _BACKBONES["causal"].name != model:
            _BACKBONES["causal"] = CausalBackbone(model)
        return _BACKBONES["causal"], streams.causal_stream(s["n_tasks"], n_train=s["n_train"], n_test=s["n_test"]), s
    if stream == "digits":
        mlp, tasks = streams.digits_stream(s["n_tasks"])
        if "digits" not in _BACKBONES:
            _BACKBONES["digits"] = DigitsBackbone(mlp)
        return _BACKBONES["digits"], tasks, s
    if "text" not in _BACKBONES:
        _BACKBONES["text"] = TextBackbone()
    return _BACKBONES["text"], streams.text_stream(s["n_tasks"], n_train=s["n_train"], n_test=s["n_test"]), s


def make_method(stream: str, method: str = "share", *, fast: bool | None = None, model: str = "bundled:smollm2",
                **kw):
    """A fresh method for `stream`: "share" (SHARE_DEFAULTS overridden by kw) or one of BASELINES."""
    backbone, _, s = setup(stream, fast, model)
    return _method(stream, method, backbone, s, **kw)


def _method(stream: str, method: str, backbone, s: dict, **kw):
    from . import baselines

    if method == "share":
        return Share(backbone, **{**SHARE_DEFAULTS[stream], "epochs": s["epochs"], **kw})
    classes = {"per_task_lora": baselines.PerTaskLoRA, "sequential_lora": baselines.SequentialLoRA,
               "joint_lora": baselines.JointLoRA}
    if method not in classes:
        raise ValueError(f"unknown method {method!r}: use 'share' or one of {BASELINES}")
    return classes[method](backbone, **{**LORA_DEFAULTS[stream], "epochs": s["epochs"], **kw})


def run(stream: str, method: str = "share", *, fast: bool | None = None, rebuild: bool = False,
        progress: bool = False, model: str = "bundled:smollm2", **kw):
    """One method over one stream, as a continual.StreamResult, cached in cache_dir("share_sweeps").

    The file is named by a hash of the method's whole config, the stream's sizes and task names: the
    same run asked two ways is computed once, and a changed default never returns a stale result.
    `rebuild=True` recomputes.
    """
    import hashlib

    from .continual import StreamResult, run_stream

    mode = _mode(fast)
    backbone, tasks, settings = setup(stream, fast, model)
    m = _method(stream, method, backbone, settings, **kw)
    ident = json.dumps({"config": m.config(), "settings": settings, "tasks": [t.name for t in tasks]},
                       sort_keys=True, default=str)
    path = runtime.cache_dir("share_sweeps", f"{stream}-{mode}") / f"{method}-{hashlib.sha1(ident.encode()).hexdigest()[:12]}.json"
    if path.exists() and not rebuild:
        return StreamResult.load(path)
    result = run_stream(m, tasks, progress=progress, forward_transfer=False, measure_base=False)
    result.save(path)
    return result


def summarize(result) -> dict:
    """ACC, BWT and stored parameters of a StreamResult, as one flat row."""
    mt = result.metrics()
    return {"ACC": mt["ACC"], "BWT": mt["BWT"], "per_task": result.storage["per_task"],
            "shared": result.storage["shared"], "total": result.storage["total"], "seconds": result.wall_time}


def sweep(stream: str, *, ks=None, ps=None, qs=None, random_ks=None, fast: bool | None = None,
          rebuild: bool = False, progress: bool = False):
    """Share over a grid of (k, p, q) (GRID by default) plus the random-basis control at (k in random_ks, p).

    Returns a pandas DataFrame, one row per run: k, p, q, basis, ACC, BWT, per_task, shared, total.
    Every run is cached (see `run`), so a second call only reads JSON files.
    """
    import pandas as pd
    from tqdm.auto import tqdm

    grid = GRID[stream][_mode(fast)]
    ks, ps, qs = ks or grid["ks"], ps or grid["ps"], qs or grid["qs"]
    random_ks = grid["random_ks"] if random_ks is None else random_ks
    points = [(k, p, q, "data") for k in ks for p in ps for q in qs] + [(k, p, 0, "random") for k in random_ks for p in ps]
    rows = []
    for k, p, q, basis in tqdm(points, desc=f"Share sweep ({stream})", disable=not progress):
        kw = {"k": k, "p": p, "q": q} if basis == "data" else {"k": k, "p": p, "basis": "random"}
        rows.append({"k": k, "p": p, "q": q, "basis": basis,
                     **summarize(run(stream, "share", fast=fast, rebuild=rebuild, **kw))})
    return pd.DataFrame(rows)


def load_sweep(stream: str, *, fast: bool | None = None, progress: bool = False):
    """The default sweep of `stream` plus the baselines' rows (method column), from the cache or computed."""
    import pandas as pd

    df = sweep(stream, fast=fast, progress=progress).assign(method="share")
    base = [{"method": m, **summarize(run(stream, m, fast=fast))} for m in ("per_task_lora", "joint_lora")
            if m in NOTEBOOK_RUNS[stream]]
    return pd.concat([df, pd.DataFrame(base)], ignore_index=True)


def _cli(args) -> int:
    streams_, both = getattr(args, "streams", ["digits", "text"]), getattr(args, "both_modes", False)
    for stream in streams_:
        for fast in ([True, False] if both else [bool(args.fast)]):
            for m in NOTEBOOK_RUNS[stream]:   # what notebook 05 reads besides the sweep
                kw = {"fill": "literal"} if m == "literal" else {"basis": "random"} if m == "random" else {}
                method = "share" if m in ("share", "literal", "random") else m
                print(stream, m, summarize(run(stream, method, fast=fast, rebuild=args.rebuild, progress=True,
                                               model=getattr(args, "model", "bundled:smollm2"), **kw)))
            if stream in GRID:
                print(sweep(stream, fast=fast, rebuild=args.rebuild, progress=True).to_string())
    return 0


def _register() -> None:
    from .cli import command

    _cli.add_arguments = lambda p: (
        p.add_argument("--streams", nargs="+", default=["digits", "text"], choices=["digits", "text", "causal"],
                       help="causal: notebook 07's runs on a causal LM (see --model)"),
        p.add_argument("--model", default="bundled:smollm2", help="the causal LM of the causal stream: "
                       "bundled:smollm2, a hub id (e.g. a 1B model, on a GPU) or a folder"),
        p.add_argument("--fast", action="store_true", help="the small fast-mode sizes"),
        p.add_argument("--both-modes", action="store_true", help="fast and full"),
        p.add_argument("--rebuild", action="store_true", help="recompute cached runs"))
    _cli.builds_cache = True
    command("share-sweep", "Share: baselines and the k / p / q sweep on the digits and text streams "
            "(cached in share_sweeps)")(_cli)


_register()
