import math

import pytest
import torch
from hypothesis import given, settings, strategies as st

from shared_subspace import dimension as dim


def planted(n, d, rank, noise=0.0, seed=0):
    """n x d rows in a random rank-`rank` subspace, plus i.i.d. noise."""
    g = torch.Generator().manual_seed(seed)
    X = torch.randn(n, rank, generator=g, dtype=torch.float64) @ torch.randn(rank, d, generator=g, dtype=torch.float64)
    return X + noise * torch.randn(n, d, generator=g, dtype=torch.float64)


# ---------------------------------------------------------------- energy and signal

def test_energy_dimension_by_hand():
    s = torch.tensor([3.0, 2.0, 1.0])            # energies 9, 4, 1 of 14: cumulative 0.643, 0.929, 1
    assert dim.energy_dimension(s, 0.6) == 1
    assert dim.energy_dimension(s, 0.9) == 2
    assert dim.energy_dimension(s, 9 / 14) == 1  # exactly reached counts
    assert dim.energy_dimension(s, 0.95) == 3
    assert dim.energy_dimension(s, 1.0) == 3


def test_energy_dimension_bad_input():
    with pytest.raises(dim.DimensionError, match=r"energy must be in \(0, 1\]"):
        dim.energy_dimension(torch.ones(3), 1.5)
    with pytest.raises(dim.DimensionError, match="stack is empty"):
        dim.energy_dimension(torch.tensor([]), 0.9)
    with pytest.raises(dim.DimensionError, match="all singular values are 0"):
        dim.energy_dimension(torch.zeros(4), 0.9)
    with pytest.raises(dim.DimensionError, match="finite and >= 0"):
        dim.energy_dimension(torch.tensor([1.0, float("nan")]), 0.9)


def test_planted_rank_is_found_and_noise_is_not():
    X = planted(40, 300, rank=3, noise=1e-3)
    s = torch.linalg.svdvals(X - X.mean(0))
    assert dim.energy_dimension(s, 0.99) == 3
    null_k = dim.null_energy_dimension(40, 300, 0.99, draws=5)
    assert null_k > 30                            # noise spreads its energy over almost every direction


def test_signal_dimension_counts_leading_directions_above_the_band():
    hi = torch.full((5,), 0.2)
    assert dim.signal_dimension(torch.tensor([0.5, 0.3, 0.1, 0.25, 0.0]), hi) == 2  # stops at the first dip
    assert dim.signal_dimension(torch.tensor([0.1, 0.1]), hi) == 0
    assert dim.signal_dimension(torch.full((3,), 0.9), hi) == 3                    # compared on min length
    with pytest.raises(dim.DimensionError, match="non-empty"):
        dim.signal_dimension(torch.tensor([]), hi)


def test_signal_dimension_of_a_planted_stack_against_the_noise_band():
    from shared_subspace import nulls
    from shared_subspace.subspace import explained_variance_ratio

    X = planted(30, 500, rank=2, noise=0.05, seed=1)
    ratios = explained_variance_ratio(torch.linalg.svdvals(X - X.mean(0)))
    _, hi = nulls.null_band(nulls.noise_spectrum(30, 500, draws=10))
    assert dim.signal_dimension(ratios, hi) == 2


# ---------------------------------------------------------------- performance

def test_performance_dimension_by_hand():
    scores = {0: 0.55, 1: 0.60, 2: 0.80, 3: 0.91, 4: 0.95, 8: 1.0}     # base 0.5, full 1.0: gain 0.5
    assert dim.retained_gain(0.95, 1.0, 0.5) == pytest.approx(0.9)
    assert dim.performance_dimension(scores, 1.0, 0.5, keep=0.9) == 4   # 0.95 keeps exactly 90% of the gain
    assert dim.performance_dimension(scores, 1.0, 0.5, keep=0.5) == 2
    assert dim.performance_dimension(scores, 1.0, 0.5, keep=1.0) == 8
    assert dim.performance_dimension({1: 0.6, 2: 0.7}, 1.0, 0.5) is None
    # 90% of the gain is stricter than 90% of the score: 0.91 at k = 3 keeps only 82% of this gain
    assert dim.performance_dimension(scores, 1.0, 0.5, keep=0.9) > min(k for k, s in scores.items() if s >= 0.9 * 1.0)


def test_performance_dimension_bad_input():
    with pytest.raises(dim.DimensionError, match="does not beat the base model"):
        dim.performance_dimension({1: 0.5}, full=0.4, base=0.5)
    with pytest.raises(dim.DimensionError, match="scores_by_k is empty"):
        dim.performance_dimension({}, 1.0, 0.5)
    with pytest.raises(dim.DimensionError, match=r"keep must be in \(0, 1\]"):
        dim.performance_dimension({1: 0.9}, 1.0, 0.5, keep=0)
    with pytest.raises(dim.DimensionError, match="integer >= 0"):
        dim.performance_dimension({-1: 0.9}, 1.0, 0.5)


@settings(max_examples=40, deadline=None)
@given(st.lists(st.floats(0, 1), min_size=1, max_size=8), st.floats(0.05, 1.0), st.floats(0.05, 1.0))
def test_performance_dimension_is_monotone_in_keep(raw, keep_a, keep_b):
    scores = {k: s for k, s in enumerate(sorted(raw))}
    lo, hi = sorted((keep_a, keep_b))
    k_lo = dim.performance_dimension(scores, 1.0, 0.0, lo)
    k_hi = dim.performance_dimension(scores, 1.0, 0.0, hi)
    if k_hi is not None:                          # what keeps more also keeps less, no later
        assert k_lo is not None and k_lo <= k_hi
    if k_lo is not None:
        assert dim.retained_gain(scores[k_lo], 1.0, 0.0) >= lo - 1e-12


# ---------------------------------------------------------------- growth with tasks

def test_task_sizes():
    assert dim.task_sizes(1) == [1]
    assert dim.task_sizes(6) == [1, 2, 4, 6]
    assert dim.task_sizes(8) == [1, 2, 4, 8]
    with pytest.raises(dim.DimensionError, match="at least one task"):
        dim.task_sizes(0)


def test_dimension_vs_tasks_related_vs_diverse():
    g = torch.Generator().manual_seed(0)
    u = torch.randn(1, 2000, generator=g, dtype=torch.float64)
    related = (1 + 0.1 * torch.rand(8, 1, generator=g, dtype=torch.float64)) * u \
        + 0.01 * torch.randn(8, 2000, generator=g, dtype=torch.float64)        # one shared direction
    diverse = torch.randn(8, 2000, generator=g, dtype=torch.float64)           # eight unrelated ones
    assert dim.dimension_vs_tasks(related) == {1: 1, 2: 1, 4: 1, 8: 1}
    k = dim.dimension_vs_tasks(diverse)
    assert k[1] == 1 and k[8] >= 7 and list(k.values()) == sorted(k.values())
    assert dim.dimension_vs_tasks(diverse, sizes=[3], energy=1.0) == {3: 3}


def test_dimension_vs_tasks_bad_sizes():
    X = torch.randn(4, 10)
    with pytest.raises(dim.DimensionError, match=r"sizes must lie in \[1, 4\]"):
        dim.dimension_vs_tasks(X, sizes=[2, 5])
    with pytest.raises(dim.DimensionError, match=r"sizes must lie in \[2, 4\]"):
        dim.dimension_vs_tasks(X, sizes=[1, 2], center=True)


# ---------------------------------------------------------------- the rule

def test_recommend_k_rule():
    r = dim.recommend_k(10, 3, k_signal=4, k_max=11)
    assert (r.k, r.warning) == (3, "") and r.rule.startswith("k_P")
    r = dim.recommend_k(10, None, k_signal=4, k_max=11)
    assert r.k == 10 and r.rule.startswith("k_E") and "not shown to carry" in r.warning and "only 4" in r.warning
    assert dim.recommend_k(30, None, k_max=11).k == 11
    assert "capped" in dim.recommend_k(30, 20, k_max=11).rule
    with pytest.raises(dim.DimensionError, match="k_energy must be >= 1"):
        dim.recommend_k(0)
    with pytest.raises(dim.DimensionError, match="k_performance must be an integer >= 0"):
        dim.recommend_k(3, -1)


def test_seed_range():
    assert dim.seed_range(6) == (32, 64)
    assert dim.seed_range(12) == (64, 128)
    assert dim.seed_range(100) == (128, 256)
    assert dim.seed_range(1000) == (256, 512)
    assert dim.seed_range(3) is None
    with pytest.raises(dim.DimensionError, match="n_tasks must be >= 1"):
        dim.seed_range(0)


def test_cached_rows(tmp_path, monkeypatch):
    monkeypatch.setenv("SHARED_SUBSPACE_CACHE", str(tmp_path))
    calls = []

    def compute():
        calls.append(1)
        return [{"k": 1, "score": math.pi}]

    assert dim.cached_rows("t", {"a": 1}, compute) == [{"k": 1, "score": math.pi}]
    assert dim.cached_rows("t", {"a": 1}, compute) == [{"k": 1, "score": math.pi}] and len(calls) == 1
    dim.cached_rows("t", {"a": 2}, compute)       # a changed key recomputes
    assert len(calls) == 2 and len(list((tmp_path / "dimension").glob("t-*.json"))) == 2
    dim.cached_rows("t", {"a": 1}, compute)       # both keys stay cached side by side
    assert len(calls) == 2


def test_adapter_dimensions_on_planted_adapters(tmp_path, capsys):
    from shared_subspace.lora import AdapterFactors

    config = {"r": 2, "lora_alpha": 2, "base_model_name_or_path": "toy", "target_modules": ["q"]}
    g = torch.Generator().manual_seed(0)
    A0 = torch.randn(2, 40, generator=g)

    def adapter(i):  # every B A = b_i (x) a shared A0: a rank-2 family of delta_W
        B = torch.randn(30, 2, generator=g) * 0.01 + torch.randn(1, 2, generator=g) * torch.ones(30, 1)
        return AdapterFactors(f"a{i}", config, {"layer.0.q": A0}, {"layer.0.q": B})

    adapters = [adapter(i) for i in range(8)]
    rows = dim.adapter_dimensions(adapters, 0.9, draws=3)
    assert [r["module"] for r in rows] == ["layer.0.q"]
    assert rows[0]["k_E"] <= 2 < rows[0]["noise k_E"] and rows[0]["k_S"] >= 1
    with pytest.raises(dim.DimensionError, match="at least 3 adapters"):
        dim.adapter_dimensions([adapter(0), adapter(1)])
    # the command line reads PEFT folders and prints the same numbers and a recommended k
    from shared_subspace import cli, lora

    folders = [str(lora.save_adapter(a, tmp_path / a.name)) for a in adapters]
    assert cli.main(["dimension", *folders]) == 0
    out = capsys.readouterr().out
    assert f"layer.0.q  {rows[0]['k_E']:>3}" in out and "8 adapters" in out and "recommended k" in out
