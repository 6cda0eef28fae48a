"""Run a continual-learning method over a task stream and record the accuracy matrix R.

    for i, task in enumerate(stream):
        method.learn(i, task)
        R[i, j] = method.score(j, stream[j])   for every j <= i   (and j = i + 1: forward transfer)

A method is anything with the small `Method` interface below (baselines, Share, the elastic
basis all plug in here). After each finished task the run writes an atomic checkpoint
(`checkpoint.pt` in `checkpoint_dir`); a killed run started again with the same method, stream
and `checkpoint_dir` resumes after the last finished task, and one with another configuration
is refused. Results (R, base scores, config and seeds, storage, wall time and thread count)
save to and load from JSON.
"""
from __future__ import annotations

import contextvars
import json
import os
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Callable, Protocol, Sequence, runtime_checkable

import numpy as np
import torch
from tqdm.auto import tqdm

from shared_subspace import metrics

__all__ = ["Method", "StreamResult", "run_stream", "step_bar", "check_stream", "n_test_examples",
           "CHECKPOINT_NAME", "ConfigMismatchError"]

CHECKPOINT_NAME = "checkpoint.pt"
_PROGRESS = contextvars.ContextVar("shared_subspace_progress", default=True)


@runtime_checkable
class Method(Protocol):
    """The interface every continual method implements (see notes in each baseline)."""

    name: str

    def config(self) -> dict:
        """JSON-able hyperparameters and seeds; two runs with equal configs are interchangeable."""

    def learn(self, task_id: int, task) -> None:
        """Train on one task; `task_id` is its position in the stream."""

    def score(self, task_id: int, task) -> float:
        """Test score in [0, 1] (task id known at inference)."""

    def storage(self) -> dict:
        """Parameters really stored beyond the frozen base model: {"shared", "per_task", "total"}."""

    def state_dict(self) -> dict:
        """Everything needed to resume after the last finished task (torch.save-able)."""

    def load_state_dict(self, state: dict) -> None:
        """Restore what `state_dict` returned."""


class ConfigMismatchError(ValueError):
    """A checkpoint was written by another method, configuration or stream."""


def step_bar(total: int, desc: str = "steps"):
    """A per-step tqdm bar for a method's training loop; silent when run_stream(progress=False)."""
    return tqdm(total=total, desc=desc, leave=False, disable=not _PROGRESS.get())


def n_test_examples(task) -> int:
    """Number of test examples of a digits task (X_test) or a text task (test)."""
    if hasattr(task, "X_test"):
        return len(task.X_test)
    if hasattr(task, "test"):
        return len(task.test)
    raise TypeError(f"task {getattr(task, 'name', task)!r} has neither X_test nor test: cannot be scored")


def check_stream(stream: Sequence) -> list[str]:
    """Validate a stream (non-empty, named tasks, unique names, test examples); return the names."""
    stream = list(stream)
    if not stream:
        raise ValueError("empty stream: give at least one task")
    names, first = [], {}
    for i, task in enumerate(stream):
        name = getattr(task, "name", None)
        if not isinstance(name, str) or not name:
            raise TypeError(f"task at position {i} has no name (tasks need a non-empty .name)")
        if name in first:
            raise ValueError(f"stream repeats task name {name!r} (positions {first[name]} and {i}): "
                             "task names must be unique")
        first[name] = i
        if n_test_examples(task) == 0:
            raise ValueError(f"task {name!r} (position {i}) has no test examples: it cannot be scored")
        names.append(name)
    return names


@dataclass
class StreamResult:
    """The outcome of one run: R[i, j] = score on task j after training task i (NaN: not measured)."""

    method: str
    names: list[str]
    R: np.ndarray
    base: np.ndarray
    config: dict
    storage: dict
    wall_time: float
    threads: int
    task_times: list[float] = field(default_factory=list)
    monitors: dict = field(default_factory=dict)

    @property
    def T(self) -> int:
        return len(self.names)

    def metrics(self) -> dict:
        """ACC, BWT, forgetting (Avalanche and Mammoth), FWT: see shared_subspace.metrics."""
        return metrics.summary(self.R, self.base)

    def to_dict(self) -> dict:
        d = asdict(self)
        d["R"] = _nan_to_none(self.R)
        d["base"] = _nan_to_none(self.base)
        d["metrics"] = self.metrics()
        return d

    def save(self, path) -> Path:
        """Write JSON atomically (NaN stored as null)."""
        path = Path(path)
        path.parent.mkdir(parents=True, exist_ok=True)
        text = json.dumps(self.to_dict(), indent=1, default=_json_default)
        _atomic_write(path, lambda f: f.write(text.encode()))
        return path

    @classmethod
    def from_dict(cls, d: dict) -> "StreamResult":
        d = {k: v for k, v in d.items() if k != "metrics"}
        d["R"] = np.array([[np.nan if x is None else x for x in row] for row in d["R"]], dtype=float)
        d["base"] = np.array([np.nan if x is None else x for x in d["base"]], dtype=float)
        return cls(**d)

    @classmethod
    def load(cls, path) -> "StreamResult":
        return cls.from_dict(json.loads(Path(path).read_text()))


def _nan_to_none(a):
    a = np.asarray(a, dtype=float)
    return [_nan_to_none(x) for x in a] if a.ndim > 1 else [None if np.isnan(x) else float(x) for x in a]


def _json_default(x):
    if isinstance(x, (np.integer,)):
        return int(x)
    if isinstance(x, (np.floating,)):
        return float(x)
    if isinstance(x, np.ndarray):
        return x.tolist()
    raise TypeError(f"not JSON-able: {type(x).__name__}")


def _atomic_write(path: Path, write: Callable) -> None:
    """Write to a temporary file beside `path`, fsync, then rename over it (never a half file)."""
    tmp = path.with_name(f".{path.name}.{os.getpid()}.tmp")
    with open(tmp, "wb") as f:
        write(f)
        f.flush()
        os.fsync(f.fileno())
    os.replace(tmp, path)


def _jsonable(x) -> object:
    return json.loads(json.dumps(x, default=_json_default))


def _run_config(method, names, forward_transfer, measure_base) -> dict:
    return _jsonable({"method": method.name, "method_config": method.config(), "tasks": names,
                      "forward_transfer": forward_transfer, "measure_base": measure_base})


def _diff(a: dict, b: dict, prefix="") -> list[str]:
    keys = sorted(set(a) | set(b))
    out = []
    for k in keys:
        va, vb = a.get(k, "<missing>"), b.get(k, "<missing>")
        if isinstance(va, dict) and isinstance(vb, dict):
            out += _diff(va, vb, f"{prefix}{k}.")
        elif va != vb:
            out.append(f"{prefix}{k}: checkpoint {va!r} vs now {vb!r}")
    return out


def _score(method, j, task) -> float:
    s = float(method.score(j, task))
    if not (np.isfinite(s) and -1e-9 <= s <= 1 + 1e-9):
        raise ValueError(f"method {method.name!r} scored task {task.name!r} as {s}: scores must lie in [0, 1]")
    return s


def run_stream(method: Method, stream: Sequence, *, checkpoint_dir=None, progress: bool = True,
               forward_transfer: bool = True, measure_base: bool = True,
               on_task_end: Callable[[int, "StreamResult"], None] | None = None) -> StreamResult:
    """Train `method` on each task of `stream` in order; after each, score every task seen so far.

    forward_transfer: also score task i+1 right after task i (fills R[i, i+1]; FWT needs it).
    measure_base: score every task before any training (`base`, the FWT reference).
    checkpoint_dir: write `checkpoint.pt` there after each finished task and resume from it if
        present (refused with ConfigMismatchError if it was written by another configuration).
    on_task_end(i, partial_result): called after task i is finished and checkpointed.
    Returns a StreamResult; the thread count is torch's at the time of the run.
    """
    if not isinstance(method, Method):
        raise TypeError(f"{type(method).__name__} does not implement the Method interface "
                        "(name, config, learn, score, storage, state_dict, load_state_dict)")
    stream = list(stream)
    names = check_stream(stream)
    T = len(stream)
    config = _run_config(method, names, forward_transfer, measure_base)
    R = np.full((T, T), np.nan)
    base = np.full(T, np.nan)
    task_times: list[float] = []
    done, elapsed = 0, 0.0

    ckpt = Path(checkpoint_dir) / CHECKPOINT_NAME if checkpoint_dir is not None else None
    if ckpt is not None and ckpt.exists():
        state = torch.load(ckpt, map_location="cpu", weights_only=False)
        if state["config"] != config:
            diffs = "; ".join(_diff(state["config"], config)[:6])
            raise ConfigMismatchError(
                f"checkpoint {ckpt} was written by another configuration ({diffs}); "
                "refusing to resume: delete it or pass another checkpoint_dir")
        method.load_state_dict(state["method_state"])
        R, base, task_times = np.array(state["R"]), np.array(state["base"]), list(state["task_times"])
        done, elapsed = state["done"], state["wall_time"]

    def result() -> StreamResult:
        monitors = method.monitors() if callable(getattr(method, "monitors", None)) else {}
        return StreamResult(method.name, names, R.copy(), base.copy(), config, dict(method.storage()),
                            elapsed, torch.get_num_threads(), list(task_times), monitors)

    token = _PROGRESS.set(progress)
    try:
        start = time.perf_counter()
        if measure_base and done == 0:
            base[:] = [_score(method, j, task) for j, task in enumerate(stream)]
        bar = tqdm(range(done, T), desc=f"{method.name}", disable=not progress, initial=done, total=T)
        for i in bar:
            bar.set_postfix_str(names[i])
            t0 = time.perf_counter()
            method.learn(i, stream[i])
            for j in range(i + 1):
                R[i, j] = _score(method, j, stream[j])
            if forward_transfer and i + 1 < T:
                R[i, i + 1] = _score(method, i + 1, stream[i + 1])
            task_times.append(time.perf_counter() - t0)
            elapsed += time.perf_counter() - start
            start = time.perf_counter()
            if ckpt is not None:
                ckpt.parent.mkdir(parents=True, exist_ok=True)
                state = {"config": config, "done": i + 1, "R": R, "base": base, "task_times": task_times,
                         "wall_time": elapsed, "method_state": method.state_dict()}
                _atomic_write(ckpt, lambda f: torch.save(state, f))
            if on_task_end is not None:
                on_task_end(i, result())
        elapsed += time.perf_counter() - start
    finally:
        _PROGRESS.reset(token)
    return result()


# ---------------------------------------------------------------- command line

def _cli(args) -> int:
    from shared_subspace import baselines, runtime, streams

    threads = runtime.set_threads(args.threads)
    fast = args.fast or runtime.fast_mode()
    r = baselines.recipe(args.stream, fast)
    if args.stream == "digits":
        mlp, stream = streams.digits_stream(args.n_tasks or r["n_tasks"], seed=args.seed)
        backbone = baselines.DigitsBackbone(mlp)
    else:
        stream = streams.text_stream(args.n_tasks or r["n_tasks"], seed=args.seed, **r["sizes"])
        backbone = baselines.TextBackbone()
    method = baselines.make_method(args.method, backbone, fast=fast, seed=args.seed)
    res = run_stream(method, stream, checkpoint_dir=args.checkpoint_dir, progress=True,
                     forward_transfer=args.stream == "digits", measure_base=args.stream == "digits")
    m = res.metrics()
    print(f"{res.method} on {args.stream} ({res.T} tasks): ACC {m['ACC']:.3f}  BWT {m['BWT']:+.3f}  "
          f"stored per task {res.storage['per_task']:.0f}, total {res.storage['total']}  "
          f"wall {res.wall_time:.1f} s with {threads} torch thread(s)")
    if args.out:
        print("results:", res.save(args.out))
    return 0


def _cli_arguments(p) -> None:
    p.add_argument("--stream", choices=["digits", "text"], default="digits")
    p.add_argument("--method", default="sequential", help="sequential, per_task, joint, frozen, linear_head")
    p.add_argument("--n-tasks", type=int, default=None)
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--checkpoint-dir", default=None, help="checkpoint after each task here; resume from it")
    p.add_argument("--out", default=None, help="write the StreamResult JSON here")
    p.add_argument("--fast", action="store_true")
    p.add_argument("--threads", type=int, default=None, help="torch threads (default: runtime.set_threads())")


_cli.add_arguments = _cli_arguments
from shared_subspace.cli import command  # noqa: E402

command("continual", "run a baseline over the digits or text stream with checkpoints; prints ACC, BWT, storage")(_cli)
