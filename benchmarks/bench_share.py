"""Benchmark Share: its training step against a plain PEFT LoRA step, and the sweep figures.

    .venv/bin/python benchmarks/bench_share.py            # MiniLM + digits step times, sweeps of this mode
    .venv/bin/python benchmarks/bench_share.py --fast     # the fast-mode sweeps (tiny)
    .venv/bin/python benchmarks/bench_share.py --no-sweep # step times only

1. Step time. One training step (forward, cross-entropy, backward, Adam) on the same model and the
   same batch: a plain PEFT LoRA layer (rank p) against Share (the same PEFT layer whose lora_A /
   lora_B are BasisFactors: weight = basis @ coeffs, k x p coefficients trained). Steps of the two
   alternate (A B A B ...) so a busy machine slows both alike; the ratio is of the medians, from
   one run. Target (issue 6): Share / LoRA <= 1.1 on MiniLM. The digits MLP is printed too: there
   a step is microseconds, so the few extra small matmuls weigh more.
2. Sweeps: Share's ACC and stored parameters per task over k, p, q and the random-basis control,
   beside per-task and joint LoRA, on the digits and the MiniLM text stream (share.load_sweep:
   read from the cache when `shared-subspace share-sweep` built it, else computed).
"""
from __future__ import annotations

import argparse
import statistics
import time

import torch
from torch import nn


def _step_timer(model, params, batch, y, logits_fn):
    opt = torch.optim.Adam(params, lr=1e-3)

    def step():
        t0 = time.perf_counter()
        loss = nn.functional.cross_entropy(logits_fn(model, batch), y)
        opt.zero_grad()
        loss.backward()
        opt.step()
        return time.perf_counter() - t0
    return step


def step_times(backbone, task, *, k: int, p: int, q: int = 0, steps: int = 20, batch_size: int = 32) -> dict:
    """Median seconds per training step: plain PEFT LoRA (rank p + q) vs Share (k, p, q)."""
    from peft import LoraConfig, get_peft_model

    from shared_subspace.share import Share

    torch.manual_seed(0)
    X, y = backbone.data(task, "train")
    idx = torch.arange(batch_size)
    batch = {kk: v[idx] for kk, v in X.items()} if isinstance(X, dict) else X[idx]
    y = y[idx]
    head = None if backbone.shared_head else nn.Linear(backbone.feature_dim, backbone.n_classes(task))

    def logits(model, b):
        return backbone.logits(model, b, head)

    r = p + q
    lora = get_peft_model(backbone.frozen_copy(), LoraConfig(r=r, lora_alpha=r, target_modules=backbone.targets))
    lora.train()
    lora_params = [t for t in lora.parameters() if t.requires_grad] + (list(head.parameters()) if head else [])

    share = Share(backbone, k=k, p=p, q=q, n_init=1, basis="random")   # bases exist: the coefficient phase
    from shared_subspace.share import attach_basis_factors
    factors = attach_basis_factors(share.model, share.bases, p, q)
    for fA, _ in factors.values():
        nn.init.normal_(fA.coeffs, std=0.1)
    share.model.train()
    share_params = [t for f in factors.values() for m in f for t in m.parameters()] + (list(head.parameters()) if head else [])

    step_lora = _step_timer(lora, lora_params, batch, y, logits)
    step_share = _step_timer(share.model, share_params, batch, y, logits)
    for _ in range(3):                       # warm-up
        step_lora(), step_share()
    t_lora, t_share = [], []
    for _ in range(steps):
        t_lora.append(step_lora())
        t_share.append(step_share())
    a, b = statistics.median(t_lora), statistics.median(t_share)
    return {"lora_s": a, "share_s": b, "ratio": b / a,
            "trainable_lora": sum(t.numel() for t in lora_params), "trainable_share": sum(t.numel() for t in share_params)}


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--fast", action="store_true", help="fast-mode sweeps")
    parser.add_argument("--no-sweep", action="store_true")
    parser.add_argument("--steps", type=int, default=20)
    args = parser.parse_args(argv)

    from shared_subspace import runtime, share

    runtime.set_threads()
    print(f"threads: {torch.get_num_threads()}")
    for stream in ("text", "digits"):
        backbone, tasks, _ = share.setup(stream, fast=True)
        cfg = share.SHARE_DEFAULTS[stream]
        t = step_times(backbone, tasks[0], k=cfg["k"], p=cfg["p"], steps=args.steps,
                       batch_size=32 if stream == "text" else 64)
        print(f"[step] {stream:6s} k={cfg['k']} p={cfg['p']}: LoRA {1e3 * t['lora_s']:.2f} ms, "
              f"Share {1e3 * t['share_s']:.2f} ms, ratio Share/LoRA = {t['ratio']:.3f} "
              f"(trainable: LoRA {t['trainable_lora']:,}, Share {t['trainable_share']:,})")
    if not args.no_sweep:
        import pandas as pd
        pd.set_option("display.width", 160)
        for stream in ("digits", "text"):
            df = share.load_sweep(stream, fast=args.fast or None, progress=True)
            print(f"\n[sweep] {stream} ({'fast' if args.fast or runtime.fast_mode() else 'full'} mode)")
            print(df.round(4).to_string(index=False))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
