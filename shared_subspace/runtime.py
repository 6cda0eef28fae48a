"""Where and how the kit runs: fast/full mode, cache folder, device, threads, seeds.

Every notebook reads these in its first (`parameters`) cell, so one environment variable
switches the whole kit between a classroom-sized fast mode and the full experiments.
"""
from __future__ import annotations

import os
import random
import shutil
import tempfile
from contextlib import contextmanager
from pathlib import Path

import numpy as np
import torch

FAST_ENV = "SHARED_SUBSPACE_FAST"
CACHE_ENV = "SHARED_SUBSPACE_CACHE"
THREADS_ENV = "SHARED_SUBSPACE_THREADS"


def fast_mode() -> bool:
    """True when SHARED_SUBSPACE_FAST is set to 1/true/yes (tests and CI set it)."""
    return os.environ.get(FAST_ENV, "0").strip().lower() in {"1", "true", "yes", "on"}


def cache_dir(*parts: str) -> Path:
    """The folder for results that take long to compute.

    `$SHARED_SUBSPACE_CACHE` if set (the Makefile sets `<repo>/.cache/shared-subspace`),
    else `~/.cache/shared-subspace`. Deleting it is always safe: everything is rebuilt on demand
    (`make cache` rebuilds it all at once).
    """
    root = Path(os.environ.get(CACHE_ENV) or Path.home() / ".cache" / "shared-subspace")
    path = root.joinpath(*parts)
    path.mkdir(parents=True, exist_ok=True)
    return path


def choose_device(prefer: str | None = None) -> torch.device:
    """CUDA, then MPS, then CPU (or `prefer` if given)."""
    if prefer:
        return torch.device(prefer)
    if torch.cuda.is_available():
        return torch.device("cuda")
    if getattr(torch.backends, "mps", None) is not None and torch.backends.mps.is_available():
        return torch.device("mps")
    return torch.device("cpu")


def has_fast_bf16(device) -> bool:
    """Whether bfloat16 matmuls run natively on `device` (then autocast to bf16 speeds training up):
    a CUDA GPU that supports bf16, or a CPU with AVX512-BF16 or AMX (Linux /proc/cpuinfo flags).
    Elsewhere bf16 is emulated and slower than float32."""
    device = torch.device(device)
    if device.type == "cuda":
        return torch.cuda.is_bf16_supported()
    if device.type != "cpu":
        return False
    try:
        flags = Path("/proc/cpuinfo").read_text()
    except OSError:
        return False
    return " avx512_bf16" in flags or " amx_bf16" in flags


def set_threads(n: int | None = None) -> int:
    """Set torch's CPU thread count and return it.

    Default: `$SHARED_SUBSPACE_THREADS` if set, else 1 on machines with at most 2 cores (on a
    busy 2-core laptop two threads were measured many times slower than one), else half the cores.
    """
    if n is None:
        env = os.environ.get(THREADS_ENV)
        cores = os.cpu_count() or 1
        n = int(env) if env else (1 if cores <= 2 else max(1, cores // 2))
    if n < 1:
        raise ValueError(f"thread count must be at least 1, got {n}")
    torch.set_num_threads(n)
    return n


def seed_everything(seed: int = 0) -> torch.Generator:
    """Seed python, numpy and torch; return a torch Generator seeded the same way."""
    random.seed(seed)
    np.random.seed(seed)
    torch.manual_seed(seed)
    return torch.Generator().manual_seed(seed)


@contextmanager
def atomic_folder(folder):
    """Write a folder all at once: yields a temporary sibling; on success it replaces `folder`.

    An interrupted or failed write leaves the old folder (if any) untouched and no temporary behind.
    """
    folder = Path(folder)
    folder.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=f".{folder.name}-", dir=folder.parent))
    try:
        tmp.chmod(0o755)
        yield tmp
        if folder.exists():
            shutil.rmtree(folder)
        os.replace(tmp, folder)
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
