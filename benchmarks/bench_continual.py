"""Benchmark: every baseline on the digits and the text stream — ACC, BWT, stored parameters, wall time.

    .venv/bin/python benchmarks/bench_continual.py [--fast] [--threads N] [--streams digits text] [--json out.json]

Wall time is per whole stream (training + every evaluation of R), with the torch thread count beside it.
"""
from __future__ import annotations

import argparse
import json
import os
import sys
import time

from shared_subspace import baselines, continual, runtime, streams


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--fast", action="store_true", help="the fast (notebook test) settings")
    p.add_argument("--threads", type=int, default=None, help="torch threads (default: runtime.set_threads())")
    p.add_argument("--streams", nargs="+", default=["digits", "text"], choices=["digits", "text"])
    p.add_argument("--methods", nargs="+", default=list(baselines.METHODS), choices=list(baselines.METHODS))
    p.add_argument("--json", default=None, help="also write the results here")
    args = p.parse_args(argv)
    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    threads = runtime.set_threads(args.threads)
    fast = args.fast or runtime.fast_mode()
    rows = []
    print(f"bench_continual: {'fast' if fast else 'full'} mode, torch threads = {threads}")
    for kind in args.streams:
        r = baselines.recipe(kind, fast)
        t0 = time.perf_counter()
        if kind == "digits":
            mlp, stream = streams.digits_stream(r["n_tasks"])
            backbone = baselines.DigitsBackbone(mlp)
        else:
            stream = streams.text_stream(r["n_tasks"], **r["sizes"])
            backbone = baselines.TextBackbone()
        setup = time.perf_counter() - t0
        print(f"\n== {kind} stream: {len(stream)} tasks ({', '.join(t.name for t in stream)}); setup {setup:.1f} s")
        print(f"{'method':<16} {'ACC':>6} {'BWT':>7} {'per task':>10} {'total':>9} {'wall s':>8} {'threads':>7}")
        for key in args.methods:
            method = baselines.make_method(key, backbone, fast=fast)
            res = continual.run_stream(method, stream, progress=False, forward_transfer=kind == "digits",
                                       measure_base=kind == "digits")
            m, s = res.metrics(), res.storage
            print(f"{res.method:<16} {m['ACC']:6.3f} {m['BWT']:7.3f} {s['per_task']:10.0f} {s['total']:9d} "
                  f"{res.wall_time:8.1f} {res.threads:7d}", flush=True)
            rows.append({"stream": kind, "method": res.method, **m, "stored_per_task": s["per_task"],
                         "stored_total": s["total"], "wall_time_s": res.wall_time, "threads": res.threads,
                         "fast": fast})
    if args.json:
        with open(args.json, "w") as f:
            json.dump(rows, f, indent=1)
    return 0


if __name__ == "__main__":
    sys.exit(main())
