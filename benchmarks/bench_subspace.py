"""Benchmark the subspace core and the notebook-01 widget (a script, not a timed test).

    python benchmarks/bench_subspace.py                 # widget + 500 x 1,000,000 Gram vs full SVD
    python benchmarks/bench_subspace.py --dim 200000    # a smaller stack

1. k-widget update: build notebook 01's fast-mode results once, then move the "k" slider of
   widgets.k_explorer several times; each move calls the widget's update (redraw) synchronously.
   Median seconds per move (target < 0.5 s).
2. Gram route vs full SVD: fit_basis(X, k, method="gram") vs method="full" on an N x D float32
   stack of Gaussian noise. Each method runs in its own subprocess, so its peak resident memory
   (VmHWM from /proc/self/status, or ru_maxrss elsewhere; both see the torch/LAPACK allocations
   that tracemalloc misses) is its own. Reported: wall and CPU time of the fit, peak RSS, RSS
   above the stack itself, and the ratios full / gram.
   A full SVD that runs past --timeout seconds is reported as such and both routes are re-measured
   at a smaller D.
"""
from __future__ import annotations

import argparse
import contextlib
import io
import json
import os
import statistics
import subprocess
import sys
import time

MB = 1024 ** 2


def bench_widget(moves: int = 10) -> dict:
    import matplotlib
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    from shared_subspace import nulls, runtime, subspace, toy, widgets

    runtime.set_threads()
    n_tasks, dim, k_star = 100, 40, 4  # notebook 01, fast mode
    tasks = toy.planted_tasks(n_tasks, dim, k_star, task_noise=0.1, n_train=4 * dim, seed=0)
    W, _ = toy.train_linear_models(tasks, steps=300, lr=0.2, seed=0)
    n_fit = 80
    basis = subspace.fit_basis(W[:n_fit])
    held_tasks, ks = tasks.subset(range(n_fit, n_tasks)), range(0, 3 * k_star + 1)
    held = toy.projected_losses(basis, W[n_fit:], held_tasks, ks)
    fit = toy.projected_losses(basis, W[:n_fit], tasks.subset(range(n_fit)), ks)
    rand = toy.projected_losses(nulls.random_basis(basis, 3 * k_star, seed=1), W[n_fit:], held_tasks, ks)
    sweep = {"k": held["k"], "k_star": k_star, "loss_ref": float(toy.task_loss(W[n_fit:], held_tasks).mean()),
             "rel_error": {"heldout": held["rel_error"], "basis": fit["rel_error"], "random": rand["rel_error"]},
             "loss": {"heldout": held["loss"], "basis": fit["loss"], "random": rand["loss"]}}
    with contextlib.redirect_stdout(io.StringIO()):  # outside Jupyter the Output widget prints
        explorer = widgets.k_explorer(sweep)
    slider = explorer.children[0]
    wall, cpu = [], []
    for i in range(moves + 1):
        value = (slider.value + 1 + i) % (slider.max + 1)
        t0, c0 = time.perf_counter(), time.process_time()
        with contextlib.redirect_stdout(io.StringIO()):
            slider.value = value       # triggers explorer.update -> show_projection
        # what Jupyter's inline backend then does with the figure: a tight PNG
        plt.gcf().savefig(io.BytesIO(), format="png", bbox_inches="tight")
        wall.append(time.perf_counter() - t0)
        cpu.append(time.process_time() - c0)
        plt.close("all")
    wall, cpu = wall[1:], cpu[1:]      # the first move warms up matplotlib's caches
    return {"median_s": statistics.median(wall), "max_s": max(wall), "median_cpu_s": statistics.median(cpu),
            "moves": moves}


def _child(method: str, n: int, d: int, k: int) -> None:
    """Runs in a fresh process: make the stack, fit once, print one JSON line."""
    import resource

    import psutil
    import torch

    from shared_subspace import runtime, subspace

    threads = runtime.set_threads()
    X = torch.randn(n, d, generator=torch.Generator().manual_seed(0), dtype=torch.float32)
    base = psutil.Process().memory_info().rss
    t0, c0 = time.perf_counter(), time.process_time()
    basis = subspace.fit_basis(X, k=k, method=method)
    seconds, cpu = time.perf_counter() - t0, time.process_time() - c0
    try:  # this process's own high-water mark (ru_maxrss can carry the parent's RSS over fork + exec)
        peak = next(int(line.split()[1]) for line in open("/proc/self/status") if line.startswith("VmHWM")) * 1024
    except OSError:
        peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * (1 if sys.platform == "darwin" else 1024)
    print(json.dumps({"method": method, "n": n, "d": d, "seconds": seconds, "cpu_s": cpu, "peak_rss": peak,
                      "base_rss": base, "threads": threads, "svals": basis.singular_values[:5].tolist()}))


def run_child(method: str, n: int, d: int, k: int, timeout: float) -> dict | None:
    cmd = [sys.executable, __file__, "--child", method, "--rows", str(n), "--dim", str(d), "--k", str(k)]
    try:
        out = subprocess.run(cmd, capture_output=True, text=True, timeout=timeout, check=True)
    except subprocess.TimeoutExpired:
        return None
    except subprocess.CalledProcessError as exc:
        raise RuntimeError(f"{method} on {n} x {d} failed:\n{exc.stderr[-2000:]}") from exc
    return json.loads(out.stdout.strip().splitlines()[-1])


def compare(n: int, d: int, k: int, timeout: float) -> bool:
    """Print Gram vs full for one shape; False if the full SVD ran past the timeout."""
    print(f"\n== Gram route vs full SVD: {n} x {d:,} float32 stack ({n * d * 4 / MB:,.0f} MiB), k={k}")
    gram = run_child("gram", n, d, k, timeout)
    full = run_child("full", n, d, k, timeout)
    rows = [("gram", gram), ("full", full)]
    for name, r in rows:
        if r is None:
            print(f"  {name:5s} did not finish within {timeout:.0f} s")
            continue
        print(f"  {name:5s} {r['seconds']:8.2f} s ({r['cpu_s']:.2f} s CPU)   peak RSS {r['peak_rss'] / MB:8,.0f} MiB   "
              f"above the stack {(r['peak_rss'] - r['base_rss']) / MB:8,.0f} MiB   ({r['threads']} thread(s))")
    if gram and full:
        rel = max(abs(a - b) / a for a, b in zip(gram["svals"], full["svals"]))
        print(f"  ratio full / gram: time {full['seconds'] / gram['seconds']:.1f}x "
              f"(CPU {full['cpu_s'] / gram['cpu_s']:.1f}x), "
              f"peak RSS {full['peak_rss'] / gram['peak_rss']:.2f}x, "
              f"RSS above the stack {(full['peak_rss'] - full['base_rss']) / max(gram['peak_rss'] - gram['base_rss'], 1):.2f}x"
              f"   (top singular values agree to {rel:.1e})")
    return full is not None


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--rows", type=int, default=500)
    p.add_argument("--dim", type=int, default=1_000_000)
    p.add_argument("--k", type=int, default=50)
    p.add_argument("--smaller-dim", type=int, default=100_000, help="D to fall back to when the full SVD is too slow")
    p.add_argument("--timeout", type=float, default=300.0, help="seconds allowed per fit process")
    p.add_argument("--skip-svd", action="store_true", help="only the widget benchmark")
    p.add_argument("--child", choices=["gram", "full"], help=argparse.SUPPRESS)
    args = p.parse_args(argv)
    if args.child:
        _child(args.child, args.rows, args.dim, args.k)
        return 0

    w = bench_widget()
    print(f"== k-widget update (notebook 01, fast mode; redraw + PNG as in Jupyter): median {w['median_s']:.3f} s "
          f"wall ({w['median_cpu_s']:.3f} s CPU), max {w['max_s']:.3f} s over {w['moves']} slider moves "
          f"(target < 0.5 s); load average {os.getloadavg()[0]:.1f} on {os.cpu_count()} cores")
    if args.skip_svd:
        return 0
    print(f"machine: {os.cpu_count()} cores")
    if not compare(args.rows, args.dim, args.k, args.timeout):
        print(f"  the full SVD of {args.rows} x {args.dim:,} is too slow here (> {args.timeout:.0f} s); "
              f"measuring a smaller D as well")
        compare(args.rows, args.smaller_dim, args.k, args.timeout)
    return 0


if __name__ == "__main__":
    sys.exit(main())
