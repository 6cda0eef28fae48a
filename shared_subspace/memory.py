"""Memory accounting: what each continual method really stores, in parameters and bytes, vs tasks.

For adapted modules m with shapes d_in(m) -> d_out(m), T tasks and h head parameters per task:

    per-task LoRA (rank r)   T * (sum_m r (d_in + d_out) + h)                    every adapter kept
    sequential LoRA (rank r) sum_m r (d_in + d_out) + T h                        one adapter, overwritten
    Share (k, p)             sum_m k_m (d_in + d_out)                            bases alpha, beta (shared)
                             + T * (sum_m 2 k_m p + h)                           coefficients + heads
      with k_m = min(k, d) per side (a basis cannot have more directions than its dimension).

The means of the centered stacks are not stored: Share rebuilds B_t = beta @ eps_B_t with no
mean term (the mean direction, if wanted, is one of the basis columns). Temporary factors live
only while a task trains. `nbytes` measures what a state really holds, tensor by tensor.
"""
from __future__ import annotations

from typing import Mapping

import torch

__all__ = ["lora_params", "share_params", "storage_curve", "storage_table", "nbytes", "count_params"]

Dims = Mapping[str, tuple[int, int]]   # module name -> (d_in, d_out)


def _check(dims: Dims) -> None:
    if not dims:
        raise ValueError("dims is empty: give {module name: (d_in, d_out)} for the adapted modules")
    for name, d in dims.items():
        if len(d) != 2 or min(d) < 1:
            raise ValueError(f"module {name!r}: dims must be (d_in, d_out) positive integers, got {d}")


def lora_params(dims: Dims, r: int) -> int:
    """One LoRA adapter: sum_m r (d_in + d_out)."""
    _check(dims)
    if r < 1:
        raise ValueError(f"LoRA rank r must be at least 1, got {r}")
    return sum(r * (d_in + d_out) for d_in, d_out in dims.values())


def share_params(dims: Dims, k: int, p: int) -> dict:
    """Share's parameter counts: {"shared": bases, "per_task": coefficients} (no heads)."""
    _check(dims)
    if k < 1 or p < 1:
        raise ValueError(f"k and p must be at least 1, got k={k}, p={p}")
    shared = sum(min(k, d_in) * d_in + min(k, d_out) * d_out for d_in, d_out in dims.values())
    per_task = sum((min(k, d_in) + min(k, d_out)) * p for d_in, d_out in dims.values())
    return {"shared": shared, "per_task": per_task}


def storage_curve(method: str, n_tasks, dims: Dims, *, r: int = 8, k: int = 16, p: int = 4,
                  head: int = 0) -> list[int]:
    """Total stored parameters after each number of tasks in `n_tasks`, by the formulas above."""
    out = []
    for T in n_tasks:
        if method == "per_task_lora":
            out.append(T * (lora_params(dims, r) + head))
        elif method == "sequential_lora":
            out.append(lora_params(dims, r) + T * head)
        elif method == "share":
            s = share_params(dims, k, p)
            out.append(s["shared"] + T * (s["per_task"] + head))
        else:
            raise ValueError(f"unknown method {method!r}: use per_task_lora, sequential_lora or share")
    return out


def storage_table(n_tasks, dims: Dims, *, r: int, k: int, p: int, head: int = 0, bytes_per_param: int = 4):
    """A pandas DataFrame: method x number of tasks -> parameters and bytes (float32 by default)."""
    import pandas as pd

    rows = []
    for method in ("per_task_lora", "sequential_lora", "share"):
        for T, n in zip(n_tasks, storage_curve(method, n_tasks, dims, r=r, k=k, p=p, head=head)):
            rows.append({"method": method, "tasks": T, "params": n, "bytes": n * bytes_per_param,
                         "params_per_task": n / T})
    return pd.DataFrame(rows)


def _tensors(obj):
    if isinstance(obj, torch.Tensor):
        yield obj
    elif isinstance(obj, Mapping):
        for v in obj.values():
            yield from _tensors(v)
    elif isinstance(obj, (list, tuple)):
        for v in obj:
            yield from _tensors(v)


def count_params(obj) -> int:
    """Number of tensor entries in a nested dict/list/tuple of tensors."""
    return sum(t.numel() for t in _tensors(obj))


def nbytes(obj) -> int:
    """Bytes of all tensors in a nested dict/list/tuple (numel * element size)."""
    return sum(t.numel() * t.element_size() for t in _tensors(obj))
