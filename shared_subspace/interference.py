"""Interference monitors: watch a new task pull the shared weights away from earlier tasks.

Two signals, recorded every `every` training steps while a method learns task t:

* gradient alignment: cos(-g_t, delta_j) for every earlier task j, where g_t is the gradient of
  task t's loss on the shared trainable parameters and delta_j = theta_after_j - theta_before_j is
  the update that training on task j made. cos < 0: the next step of task t undoes part of what
  task j learned (interference); cos > 0: it pushes the same way (transfer); cos ~ 0: the two
  live in (nearly) orthogonal directions.
* score drift: the score of every earlier task j, measured during training of task t, so one
  sees *when* forgetting happens (often within the first few steps).
"""
from __future__ import annotations

from typing import Callable, Iterable

import numpy as np
import torch

__all__ = ["flat", "cosine", "update_cosines", "InterferenceMonitor", "curves"]


def flat(tensors: Iterable[torch.Tensor]) -> torch.Tensor:
    """Concatenate tensors into one float32 vector (detached, on CPU)."""
    return torch.cat([t.detach().reshape(-1).float().cpu() for t in tensors])


def cosine(a: torch.Tensor, b: torch.Tensor) -> float:
    """cos(a, b) = <a, b> / (|a| |b|); 0.0 if either vector is zero."""
    na, nb = a.norm(), b.norm()
    if na == 0 or nb == 0:
        return 0.0
    return float(a @ b / (na * nb))


def update_cosines(grad: torch.Tensor, updates: dict[int, torch.Tensor]) -> dict[int, float]:
    """cos(-grad, delta_j) for each earlier task j: the new descent direction against old updates."""
    return {j: cosine(-grad, d) for j, d in sorted(updates.items())}


class InterferenceMonitor:
    """Records gradient/update cosines and earlier tasks' scores while a method trains.

    A method calls `begin_task(t, params)` before training task t, `observe(t, step, grad, score)`
    every step (the monitor keeps one in `every`), and `end_task(t, params)` after it.
    `score(j)` returns the current score of earlier task j.
    """

    def __init__(self, every: int = 10):
        if every < 1:
            raise ValueError(f"monitor interval must be at least 1 step, got {every}")
        self.every = every
        self.updates: dict[int, torch.Tensor] = {}
        self.records: list[dict] = []
        self._start: torch.Tensor | None = None

    def begin_task(self, task_id: int, params: Iterable[torch.Tensor]) -> None:
        self._start = flat(params)

    def observe(self, task_id: int, step: int, grad: Callable[[], torch.Tensor] | torch.Tensor,
                score: Callable[[int], float]) -> None:
        """Record cosines and earlier scores at `step` (0-based) if step % every == 0."""
        if step % self.every or not self.updates:
            return
        g = grad() if callable(grad) else grad
        earlier = sorted(j for j in self.updates if j < task_id)
        self.records.append({"task": task_id, "step": step,
                             "cos": update_cosines(g, {j: self.updates[j] for j in earlier}),
                             "scores": {j: float(score(j)) for j in earlier}})

    def end_task(self, task_id: int, params: Iterable[torch.Tensor]) -> None:
        if self._start is None:
            raise RuntimeError("end_task called without begin_task")
        self.updates[task_id] = flat(params) - self._start
        self._start = None

    def to_dict(self) -> dict:
        """JSON-able records: one per observation, {"task", "step", "cos": {j: c}, "scores": {j: s}}."""
        return {"every": self.every,
                "records": [{"task": r["task"], "step": r["step"],
                             "cos": {str(j): c for j, c in r["cos"].items()},
                             "scores": {str(j): s for j, s in r["scores"].items()}} for r in self.records]}

    def state_dict(self) -> dict:
        return {"every": self.every, "updates": dict(self.updates), "records": list(self.records)}

    def load_state_dict(self, state: dict) -> None:
        self.every, self.updates, self.records = state["every"], dict(state["updates"]), list(state["records"])

    def curves(self, task_id: int):
        """(steps, {j: cosines}, {j: scores}) recorded while task `task_id` trained."""
        return curves(self.to_dict(), task_id)


def curves(monitor: dict, task_id: int) -> tuple[np.ndarray, dict[int, np.ndarray], dict[int, np.ndarray]]:
    """From a monitor's `to_dict()` (e.g. StreamResult.monitors): (steps, {j: cosines}, {j: scores}) of task_id."""
    recs = [r for r in monitor.get("records", []) if r["task"] == task_id]
    if not recs:
        raise ValueError(f"no interference records for task {task_id}: was it monitored (and not the first task)?")
    steps = np.array([r["step"] for r in recs])
    js = sorted(recs[0]["cos"], key=int)
    return (steps, {int(j): np.array([r["cos"][j] for r in recs]) for j in js},
            {int(j): np.array([r["scores"][j] for r in recs]) for j in js})
