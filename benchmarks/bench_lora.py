"""Benchmark per-task LoRA on SmolLM2: steps to reach 90% exact match on each generation task.

    .venv/bin/python benchmarks/bench_lora.py                         # every generation task, up to 60 steps
    .venv/bin/python benchmarks/bench_lora.py --tasks uppercase,reverse --max-steps 100
    .venv/bin/python benchmarks/bench_lora.py --model bundled:minilm  # the classification suite on MiniLM

For each task: the base model's score, then one LoRA adapter (the notebook's SmolLM2 preset: r=8 on
q_proj/v_proj, bfloat16 autocast on a CPU) trained step by step; every --eval-every steps the test
set is scored (greedy, exact match) and training stops once it reaches --target (0.9). Reported:
steps to the target (or "> max"), best score, seconds per step. A JSON copy goes to
runtime.cache_dir("bench") / "lora_steps_to_target.json".

Measured on 2 busy CPU cores a SmolLM2 step is about 1-3 s, so the default run takes tens of minutes;
on a GPU it takes about a minute.
"""
from __future__ import annotations

import argparse
import json
import sys
import time
import warnings
from dataclasses import replace

import torch

from shared_subspace import lora, runtime
from shared_subspace.models import load_model


def steps_to_target(model_name: str, task, settings, *, target: float, eval_every: int) -> dict:
    """Train one adapter, scoring every `eval_every` steps; stop at `target`."""
    kind = "sequence_classification" if task.kind == "classification" else "causal_lm"
    extra = {"num_labels": len(task.labels)} if task.kind == "classification" else {}
    torch.manual_seed(0)
    model, tok = load_model(model_name, kind=kind, **extra)
    base = lora.score(model, tok, task) if task.kind == "generation" else float("nan")
    curve = []

    def on_step(step, peft_model):
        if step % eval_every and step != settings.steps:
            return False
        curve.append((step, lora.score(peft_model, tok, task, max_length=settings.max_length)))
        return curve[-1][1] >= target

    t0 = time.perf_counter()
    _, losses = lora.train_adapter(model, tok, task, settings, base_name=model_name, on_step=on_step)
    seconds = time.perf_counter() - t0
    reached = next((s for s, v in curve if v >= target), None)
    return {"task": task.name, "base": base, "steps_to_target": reached, "best": max(v for _, v in curve),
            "steps_run": len(losses), "curve": curve, "seconds": seconds,
            "final_loss": losses[-1] if losses else float("nan")}


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--model", default="bundled:smollm2", help="bundled:smollm2 (generation) or bundled:minilm")
    p.add_argument("--tasks", default="", help="comma-separated task names (default: the whole suite)")
    p.add_argument("--max-steps", type=int, default=60)
    p.add_argument("--eval-every", type=int, default=10)
    p.add_argument("--target", type=float, default=0.9)
    p.add_argument("--n-test", type=int, default=32)
    p.add_argument("--threads", type=int, default=None)
    args = p.parse_args(argv)
    warnings.filterwarnings("ignore")
    runtime.set_threads(args.threads)
    short = "smollm2" if "smollm2" in args.model else "minilm"
    settings = replace(lora.preset(short, fast=False), steps=args.max_steps, n_test=args.n_test)
    suite = lora.tasks_for(short, fast=False)
    suite = [replace(t, test=t.test[: args.n_test]) for t in suite]
    if args.tasks:
        wanted = args.tasks.split(",")
        unknown = sorted(set(wanted) - {t.name for t in suite})
        if unknown:
            p.error(f"unknown tasks {unknown}; choose from {[t.name for t in suite]}")
        suite = [t for t in suite if t.name in wanted]
    print(f"{args.model}: r={settings.r} on {list(settings.target_modules)}, lr={settings.lr}, "
          f"batch {settings.batch_size}, up to {args.max_steps} steps, target {args.target:.0%}")
    print(f"{'task':<20}{'base':>6}{'steps to target':>17}{'best':>6}{'s/step':>8}")
    rows = []
    for task in suite:
        r = steps_to_target(args.model, task, settings, target=args.target, eval_every=args.eval_every)
        rows.append(r)
        reached = str(r["steps_to_target"]) if r["steps_to_target"] else f"> {r['steps_run']}"
        print(f"{task.name:<20}{r['base']:>6.2f}{reached:>17}{r['best']:>6.2f}{r['seconds'] / r['steps_run']:>8.2f}",
              flush=True)
    out = runtime.cache_dir("bench") / "lora_steps_to_target.json"
    out.write_text(json.dumps({"model": args.model, "settings": settings.__dict__, "target": args.target,
                               "rows": rows}, indent=1, default=str))
    solved = sum(r["steps_to_target"] is not None for r in rows)
    print(f"{solved}/{len(rows)} tasks reached {args.target:.0%} within {args.max_steps} steps; written to {out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
