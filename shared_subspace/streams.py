"""Task streams for continual learning: an ordered list of tasks with unique names.

    digits_stream(n_tasks=10, seed=0) -> (base_mlp, tasks)   pixel permutations, rotations, flips
    text_stream(n_tasks=8, seed=0)    -> tasks               MiniLM classification tasks a linear probe does not solve

The digits MLP is pretrained once on plain digits and cached; every digits task keeps the 10
classes, so the tasks share the output layer and differ only in what the input pixels mean.
"""
from __future__ import annotations

import torch

from shared_subspace import digits, runtime

__all__ = ["DIGITS_KINDS", "pretrained_digits_mlp", "digits_stream", "text_stream", "reorder"]

# The first ten digits tasks, interleaving the three families so any prefix mixes them.
DIGITS_KINDS = ("permute", "rotate90", "flip_lr", "permute", "rotate180", "flip_ud", "permute",
                "rotate270", "transpose", "permute")
MLP_SIZES = (64, 64, 64, 10)


def pretrained_digits_mlp(seed: int = 0, *, epochs: int = 40, rebuild: bool = False) -> digits.MLP:
    """digits.MLP(64, 64, 64, 10) trained on plain digits (cached in cache_dir("streams"))."""
    path = runtime.cache_dir("streams") / f"digits_mlp_{'-'.join(map(str, MLP_SIZES))}_seed{seed}_ep{epochs}.pt"
    torch.manual_seed(seed)
    mlp = digits.MLP(MLP_SIZES)
    if path.exists() and not rebuild:
        mlp.load_state_dict(torch.load(path, map_location="cpu", weights_only=True))
    else:
        task = digits.make_task("identity")
        digits.train_classifier(mlp, task.X_train, task.y_train, epochs=epochs, lr=1e-2, seed=seed)
        tmp = path.with_suffix(".tmp")
        torch.save(mlp.state_dict(), tmp)
        tmp.replace(path)
    mlp.eval()
    for p in mlp.parameters():
        p.requires_grad_(False)
    return mlp


def digits_stream(n_tasks: int = 10, seed: int = 0) -> tuple[digits.MLP, list[digits.DigitsTask]]:
    """(pretrained MLP, n_tasks digits tasks): permutations, rotations and flips, 10 classes each.

    The first 10 tasks follow DIGITS_KINDS (permutation seeds derived from `seed`); beyond 10,
    more pixel permutations. Names are unique (permute-<seed>, rotate90, ...).
    """
    if not 1 <= n_tasks <= 10 + 1000:
        raise ValueError(f"n_tasks must be between 1 and 1010, got {n_tasks}")
    kinds = list(DIGITS_KINDS[:n_tasks]) + ["permute"] * max(0, n_tasks - len(DIGITS_KINDS))
    tasks, n_perm = [], 0
    for kind in kinds:
        if kind == "permute":
            n_perm += 1
            tasks.append(digits.make_task("permute", seed=1000 * seed + n_perm))
        else:
            tasks.append(digits.make_task(kind))
    return pretrained_digits_mlp(seed), tasks


def text_stream(n_tasks: int = 8, seed: int = 0, **sizes) -> list:
    """The first `n_tasks` tasks of tasks.classification_tasks(seed, **sizes) that are worth adapting.

    A task that a frozen encoder + trained linear head already solves (probe score above
    tasks.PROBE_THRESHOLD, 0.95) teaches nothing about adapters and is skipped; probe scores are
    computed only for the tasks looked at, and cached.
    """
    from shared_subspace.tasks import PROBE_THRESHOLD, base_scores, classification_tasks

    suite = classification_tasks(seed=seed, **sizes)
    if not 1 <= n_tasks <= len(suite):
        raise ValueError(f"n_tasks must be between 1 and {len(suite)} (classification tasks available), got {n_tasks}")
    stream, start = [], 0
    while len(stream) < n_tasks and start < len(suite):
        batch = suite[start:start + n_tasks - len(stream)]
        start += len(batch)
        scores = base_scores(batch)
        stream += [t for t in batch if scores[t.name] <= PROBE_THRESHOLD]
    if len(stream) < n_tasks:
        raise ValueError(f"only {len(stream)} of {len(suite)} classification tasks are not already solved by a "
                         f"frozen encoder + linear head; asked for {n_tasks}")
    return stream


# Generation tasks in order of how fast a per-task LoRA learns them on SmolLM2 (docs/tasks.md: 10-25 steps)
CAUSAL_ORDER = ("uppercase", "first_letter", "capitalize_first", "last_letter", "repeat_word", "first_and_last")


def causal_stream(n_tasks: int = 4, seed: int = 0, **sizes) -> list:
    """The first `n_tasks` generation tasks of CAUSAL_ORDER (the quickest to learn), from
    tasks.generation_tasks(seed, **sizes): a base causal LM scores 0 on each, an adapter learns each."""
    from shared_subspace.tasks import generation_tasks

    if not 1 <= n_tasks <= len(CAUSAL_ORDER):
        raise ValueError(f"n_tasks must be between 1 and {len(CAUSAL_ORDER)}, got {n_tasks}")
    suite = {t.name: t for t in generation_tasks(seed=seed, **sizes)}
    return [suite[name] for name in CAUSAL_ORDER[:n_tasks]]


def reorder(stream: list, order) -> list:
    """The stream in another order: `order` is a permutation of range(len(stream))."""
    order = list(order)
    if sorted(order) != list(range(len(stream))):
        raise ValueError(f"order must be a permutation of 0..{len(stream) - 1}, got {order}")
    return [stream[i] for i in order]
