"""How many dimensions does a domain need? Three answers and one rule that combines them.

    energy_dimension       k_E: the fewest directions holding `energy` of a stack's variance
                                k_E = min{k : sum_{i<=k} s_i^2 / sum_i s_i^2 >= energy}
    null_energy_dimension  the same k_E for i.i.d. Gaussian noise of the stack's shape (median over draws)
    signal_dimension       k_S: leading directions whose explained-variance ratio is above a null's upper band
    performance_dimension  k_P: the fewest directions whose projected held-out adapters keep `keep` of the
                                adapter's gain over the base model (this kit's d90, see below)
    dimension_vs_tasks     k_E of the first n rows of a stack, n = 1, 2, 4, ..., N (how k grows with tasks)
    recommend_k            one k from k_E, k_P and k_S, by a stated rule

The kit's d90 is not Li et al.'s. Li et al. (2018) TRAIN in a RANDOM d-dimensional subspace of all
parameters, theta = theta_0 + P theta_d, and call d90 the smallest d whose trained model reaches 90% of
the full model's score. Here a trained adapter is PROJECTED (no training) onto the top-k directions of
a basis FITTED on OTHER adapters, and k_P is the smallest k that keeps 90% of the GAIN over the base
model, (score_k - base) / (full - base) >= 0.9. Projection can only do worse than training in the same
subspace, and 90% of the gain is stricter than 90% of the score when the base model is far above 0.
"""
from __future__ import annotations

import hashlib
import json
import math
import statistics
from dataclasses import dataclass, replace
from typing import Callable, Mapping, Sequence

import torch

from . import lora, nulls, runtime, subspace
from .cli import command

__all__ = ["DimensionError", "energy_dimension", "null_energy_dimension", "signal_dimension", "retained_gain",
           "performance_dimension", "task_sizes", "dimension_vs_tasks", "Recommendation", "recommend_k",
           "SEED_TABLE", "seed_range", "random_basis_scores", "cached_rows", "adapter_dimensions"]


class DimensionError(ValueError):
    """Input a dimension estimate cannot use (empty, non-finite, out of range, no gain to keep)."""


def _check_fraction(x: float, name: str) -> None:
    if not 0 < x <= 1:
        raise DimensionError(f"{name} must be in (0, 1], got {x}")


def _svals(singular_values) -> torch.Tensor:
    s = torch.as_tensor(singular_values, dtype=torch.float64).reshape(-1)
    if s.numel() == 0:
        raise DimensionError("no singular values given: the stack is empty")
    if not torch.isfinite(s).all() or (s < 0).any():
        raise DimensionError("singular values must be finite and >= 0")
    if float(s.square().sum()) == 0:
        raise DimensionError("all singular values are 0: a stack of zeros has no dimension")
    return s


# ---------------------------------------------------------------- from the spectrum

def energy_dimension(singular_values, energy: float = 0.9) -> int:
    """k_E = min{k : sum_{i<=k} s_i^2 / sum_i s_i^2 >= energy} (singular values in descending order)."""
    _check_fraction(energy, "energy")
    return subspace.choose_k(_svals(singular_values), energy)


def null_energy_dimension(n: int, d: int, energy: float = 0.9, *, center: bool = True, draws: int = 20,
                          seed: int = 0) -> int:
    """Median k_E of `draws` N x D stacks of i.i.d. Gaussian noise: what k_E is with no shared structure.

    Noise with D >> N spreads its variance evenly, so its k_E is close to the rank (N - 1 centered, N not).
    """
    _check_fraction(energy, "energy")
    if draws < 1:
        raise DimensionError(f"draws must be >= 1, got {draws}")
    return _median_energy_k(nulls.noise_spectrum(n, d, draws=draws, center=center, seed=seed), energy)


def _median_energy_k(spectra: torch.Tensor, energy: float) -> int:
    """Median k_E over the rows of a (draws x m) stack of explained-variance ratios."""
    return int(statistics.median(subspace.choose_k(r.double().sqrt(), energy) for r in spectra))


def signal_dimension(ratios, null_hi) -> int:
    """k_S = number of LEADING directions whose explained-variance ratio exceeds the null's upper band.

    ratios   (m,) explained-variance ratios of the data, descending
    null_hi  (m',) the null's upper quantile per rank (nulls.null_band(...)[1]); compared on min(m, m')
    """
    r = torch.as_tensor(ratios, dtype=torch.float64).reshape(-1)
    hi = torch.as_tensor(null_hi, dtype=torch.float64).reshape(-1)
    if r.numel() == 0 or hi.numel() == 0:
        raise DimensionError("signal_dimension needs a non-empty spectrum and null band")
    m = min(r.numel(), hi.numel())
    above = (r[:m] > hi[:m]).tolist() + [False]
    return above.index(False)


# ---------------------------------------------------------------- from task scores

def retained_gain(score: float, full: float, base: float) -> float:
    """rho = (score - base) / (full - base): the share of the adapter's gain a reconstruction keeps."""
    gain = full - base
    if not gain > 0:
        raise DimensionError(f"the adapter does not beat the base model (full={full:.3f}, base={base:.3f}): "
                             "with no positive gain there is nothing to keep")
    return (score - base) / gain


def performance_dimension(scores_by_k: Mapping[int, float], full: float, base: float,
                          keep: float = 0.9) -> int | None:
    """k_P = min{k : (score_k - base) / (full - base) >= keep}, or None if no k given reaches it.

    scores_by_k  k -> held-out score of the adapter projected onto the top-k directions (k >= 0)
    full, base   the adapter's own score and the base model's score (no adapter)
    """
    _check_fraction(keep, "keep")
    if not scores_by_k:
        raise DimensionError("scores_by_k is empty: score the projected adapter at one k at least")
    if any(int(k) != k or k < 0 for k in scores_by_k):
        raise DimensionError(f"every k must be an integer >= 0, got {sorted(scores_by_k)}")
    for k in sorted(scores_by_k):
        if retained_gain(scores_by_k[k], full, base) >= keep - 1e-12:
            return int(k)
    return None


# ---------------------------------------------------------------- growth with the number of tasks

def task_sizes(n: int) -> list[int]:
    """1, 2, 4, ... up to n, and n itself: the fit sizes of a k-vs-tasks curve."""
    if n < 1:
        raise DimensionError(f"need at least one task, got {n}")
    out, s = [], 1
    while s < n:
        out.append(s)
        s *= 2
    return out + [n]


def dimension_vs_tasks(X, sizes: Sequence[int] | None = None, energy: float = 0.9, *,
                       center: bool = False) -> dict[int, int]:
    """n -> k_E of the stack's first n rows (rows in the order tasks arrive; one row per task):
    subspace.fit_basis(X[:n], energy=energy, center=center).k.

    Uncentered by default, so one task has k_E = 1 and k_E <= n: related tasks (one direction,
    other lengths) stay near 1, unrelated ones climb towards n. Centered, n rows give at most n - 1.
    """
    _check_fraction(energy, "energy")
    X = subspace.as_stack(X)
    sizes = task_sizes(X.shape[0]) if sizes is None else sorted(set(sizes))
    if not sizes or sizes[0] < (2 if center else 1) or sizes[-1] > X.shape[0]:
        raise DimensionError(f"sizes must lie in [{2 if center else 1}, {X.shape[0]}] (the rows of X), got {sizes}")
    return {n: subspace.fit_basis(X[:n].double(), energy=energy, center=center).k for n in sizes}


# ---------------------------------------------------------------- one k

@dataclass(frozen=True)
class Recommendation:
    k: int
    rule: str        # which branch of the rule gave k
    warning: str     # "" or what to be careful about


def recommend_k(k_energy: int, k_performance: int | None = None, *, k_signal: int | None = None,
                k_max: int | None = None) -> Recommendation:
    """One k by a short rule:

    1. the tasks decide: k = k_P when held-out adapters reached the kept gain (k_P not None);
    2. otherwise the weights decide: k = k_E (the basis then stores the zoo's adapters; nothing shows it
       carries new ones: the warning says so);
    3. k is capped at k_max (the directions a basis can have: N - 1 for N centered adapters);
    4. warn when k exceeds k_S: the directions beyond k_S look like noise.
    """
    for name, v in (("k_energy", k_energy), ("k_performance", k_performance), ("k_signal", k_signal),
                    ("k_max", k_max)):
        if v is not None and (int(v) != v or v < 0):
            raise DimensionError(f"{name} must be an integer >= 0 or None, got {v!r}")
    if k_energy < 1:
        raise DimensionError(f"k_energy must be >= 1, got {k_energy}")
    if k_performance is not None:
        k, rule, warn = k_performance, "k_P: held-out adapters keep the gain at this k", []
    else:
        k, rule = k_energy, "k_E: no k_P (not measured, or no k kept the held-out gain), so the energy k of the zoo"
        warn = ["the basis stores this zoo; it is not shown to carry held-out adapters"]
    if k_max is not None and k > k_max:
        k, rule = k_max, rule + f", capped at k_max={k_max}"
    if k_signal is not None and k > k_signal:
        warn.append(f"only {k_signal} directions are above the null; the rest look like noise")
    return Recommendation(int(k), rule, "; ".join(warn))


# ---------------------------------------------------------------- the seed's rule of thumb (claims to test)

SEED_TABLE = (  # (tasks from, tasks to, k from, k to, use case) as the seed conversation states it
    (5, 10, 32, 64, "5-10 related tasks"),
    (10, 50, 64, 128, "10-50 tasks"),
    (50, 200, 128, 256, "50-200 tasks"),
    (200, math.inf, 256, 512, "200+ diverse tasks"),
)


def seed_range(n_tasks: int) -> tuple[int, int] | None:
    """The seed's suggested shared-subspace size for n tasks: its first row that holds n (None below
    the table: < 5 tasks)."""
    if n_tasks < 1:
        raise DimensionError(f"n_tasks must be >= 1, got {n_tasks}")
    return next(((lo_k, hi_k) for lo, hi, lo_k, hi_k, _ in SEED_TABLE if lo <= n_tasks <= hi), None)


# ---------------------------------------------------------------- experiments (rows for a DataFrame)

def random_basis_scores(model, tokenizer, adapters, tasks, *, ks: Sequence[int], heldout: Sequence[str],
                        level: str = "delta_W", seed: int = 0) -> list[dict]:
    """The random-basis control of lora.heldout_scores: each held-out adapter (hold_out="task") projected
    onto k random orthonormal directions through the same mean, mu + P_rand (x - mu)."""
    by_name = {t.name: t for t in tasks}
    rows = []
    for a in [x for x in adapters if x.name in heldout]:
        zb = lora.fit_zoo_basis([b for b in adapters if b.task != a.task], level=level)
        for k in sorted({min(k, zb.k) for k in ks if k > 0}):
            rand = replace(zb, bases={key: nulls.random_basis(b, k, seed=seed) for key, b in zb.bases.items()})
            s = lora.score_deltas(model, tokenizer, by_name[a.task], lora.reconstruct(rand, a, k), a.extra)
            rows.append({"task": a.task, "adapter": a.name, "hold_out": "task", "level": level,
                         "control": "random", "k": k, "score": s})
    return rows


def cached_rows(name: str, key: dict, compute: Callable[[], list[dict]], *, rebuild: bool = False) -> list[dict]:
    """compute() once, then read runtime.cache_dir("dimension")/<name>-<hash of key>.json."""
    digest = hashlib.sha256(json.dumps(key, sort_keys=True).encode()).hexdigest()[:10]
    path = runtime.cache_dir("dimension") / f"{name}-{digest}.json"
    if not rebuild and path.is_file():
        saved = json.loads(path.read_text())
        if saved.get("key") == json.loads(json.dumps(key)):
            return saved["rows"]
    rows = compute()
    tmp = path.with_suffix(".tmp")
    tmp.write_text(json.dumps({"key": key, "rows": rows}))
    tmp.replace(path)
    return rows


# ---------------------------------------------------------------- command line

def adapter_dimensions(adapters, energy: float = 0.9, *, draws: int = 10, seed: int = 0) -> list[dict]:
    """Per module of a set of LoRA adapters: k_E and k_S of the centered delta_W stack, and noise's k_E.

    The noise is simulated once per module shape (d_out * d_in) and gives both the band of k_S and noise k_E.
    """
    if len(adapters) < 3:
        raise DimensionError(f"need at least 3 adapters to measure a dimension, got {len(adapters)}")
    _check_fraction(energy, "energy")
    N, ref = len(adapters), adapters[0]
    ratios = lora.stack_spectra(adapters, level="delta_W")
    dims = {m: ref.B[m].shape[0] * ref.A[m].shape[1] for m in ref.modules}
    noise = {D: nulls.noise_spectrum(N, D, draws=draws, seed=seed) for D in set(dims.values())}
    null_hi = {D: nulls.null_band(spectra)[1] for D, spectra in noise.items()}
    null_k = {D: _median_energy_k(spectra, energy) for D, spectra in noise.items()}
    return [{"module": m, "k_E": energy_dimension(ratios[(m, "delta_W")].sqrt(), energy),
             "k_S": signal_dimension(ratios[(m, "delta_W")], null_hi[D]), "noise k_E": null_k[D]}
            for m, D in dims.items()]


def _cli(args) -> int:
    """shared-subspace dimension FOLDER [FOLDER ...] [--energy 0.9]"""
    runtime.set_threads()
    adapters = lora.load_adapters(args.adapters)
    rows = adapter_dimensions(adapters, args.energy)
    width = max(len(r["module"]) for r in rows)
    print(f"{'module':<{width}}  k_E  noise k_E  k_S")
    for r in rows:
        print(f"{r['module']:<{width}}  {r['k_E']:>3}  {r['noise k_E']:>9}  {r['k_S']:>3}")
    k_E = int(statistics.median(r["k_E"] for r in rows))
    k_S = int(statistics.median(r["k_S"] for r in rows))
    rec = recommend_k(k_E, None, k_signal=k_S, k_max=len(adapters) - 1)
    print(f"{len(adapters)} adapters: median k_E = {k_E} (energy {args.energy}), k_S = {k_S}; "
          f"recommended k = {rec.k} ({rec.rule})")
    if rec.warning:
        print(f"warning: {rec.warning}; score held-out adapters (notebook 08) for k_P")
    return 0


def _cli_arguments(p) -> None:
    p.add_argument("adapters", nargs="+", help="PEFT LoRA adapter folders trained on one base model")
    p.add_argument("--energy", type=float, default=0.9, help="energy threshold of k_E (default 0.9)")


_cli.add_arguments = _cli_arguments
command("dimension", "how many directions a set of LoRA adapters needs: k_E, noise k_E, k_S, a recommended k")(_cli)
