"""Digits tasks and small MLPs: sklearn's bundled 8x8 digits (offline), turned into many related tasks.

A task is the digits data seen through a transform: a pixel permutation, a rotation or flip of
the image, a subset of classes, or a relabelling. Every transform is deterministic by seed.
"""
from __future__ import annotations

from dataclasses import dataclass
from functools import lru_cache

import numpy as np
import torch
from torch import nn

__all__ = ["DigitsTask", "load_digits_tensors", "make_task", "MLP", "train_classifier", "accuracy"]

N_PIXELS, N_CLASSES = 64, 10


@dataclass(frozen=True)
class DigitsTask:
    """One classification task on 8x8 digits: inputs (N x 64, standardized) and integer labels."""

    name: str
    X_train: torch.Tensor
    y_train: torch.Tensor
    X_test: torch.Tensor
    y_test: torch.Tensor
    n_classes: int = N_CLASSES
    description: str = ""


@lru_cache(maxsize=4)
def load_digits_tensors(test_fraction: float = 0.3, seed: int = 0):
    """(X_train, y_train, X_test, y_test) as float32/int64 tensors, pixels scaled to [0, 1]."""
    from sklearn.datasets import load_digits
    from sklearn.model_selection import train_test_split

    X, y = load_digits(return_X_y=True)
    X = (X / 16.0).astype(np.float32)
    Xtr, Xte, ytr, yte = train_test_split(X, y, test_size=test_fraction, random_state=seed, stratify=y)
    return (torch.from_numpy(Xtr), torch.from_numpy(ytr).long(), torch.from_numpy(Xte), torch.from_numpy(yte).long())


def _image_op(X: torch.Tensor, op) -> torch.Tensor:
    return op(X.reshape(-1, 8, 8)).reshape(-1, N_PIXELS).contiguous()


def make_task(kind: str = "identity", seed: int = 0, *, classes=None, name: str | None = None,
              split_seed: int = 0) -> DigitsTask:
    """A digits task.

    kind: "identity" | "permute" (random pixel permutation) | "rotate90" | "rotate180" | "rotate270"
          | "flip_lr" | "flip_ud" | "transpose" | "labelmap" (random relabelling)
    classes: keep only these digit classes (labels remapped to 0..len-1)
    """
    Xtr, ytr, Xte, yte = load_digits_tensors(seed=split_seed)
    g = torch.Generator().manual_seed(seed)
    n_classes = N_CLASSES
    if classes is not None:
        classes = list(classes)
        remap = torch.full((N_CLASSES,), -1, dtype=torch.long)
        remap[torch.tensor(classes)] = torch.arange(len(classes))
        keep_tr, keep_te = remap[ytr] >= 0, remap[yte] >= 0
        Xtr, ytr, Xte, yte = Xtr[keep_tr], remap[ytr[keep_tr]], Xte[keep_te], remap[yte[keep_te]]
        n_classes = len(classes)
    ops = {
        "identity": lambda x: x,
        "rotate90": lambda x: torch.rot90(x, 1, (1, 2)), "rotate180": lambda x: torch.rot90(x, 2, (1, 2)),
        "rotate270": lambda x: torch.rot90(x, 3, (1, 2)), "flip_lr": lambda x: torch.flip(x, (2,)),
        "flip_ud": lambda x: torch.flip(x, (1,)), "transpose": lambda x: x.transpose(1, 2),
    }
    if kind == "permute":
        perm = torch.randperm(N_PIXELS, generator=g)
        Xtr, Xte = Xtr[:, perm], Xte[:, perm]
    elif kind == "labelmap":
        mapping = torch.randperm(n_classes, generator=g)
        ytr, yte = mapping[ytr], mapping[yte]
    elif kind in ops:
        Xtr, Xte = _image_op(Xtr, ops[kind]), _image_op(Xte, ops[kind])
    else:
        raise ValueError(f"unknown digits task kind {kind!r}: use identity, permute, labelmap or one of {sorted(ops)}")
    label = name or (f"{kind}-{seed}" if kind in {"permute", "labelmap"} else kind)
    if classes is not None and name is None:
        label += "-classes" + "".join(map(str, classes))
    return DigitsTask(label, Xtr, ytr, Xte, yte, n_classes, description=f"digits, {kind}, seed {seed}")


class MLP(nn.Module):
    """in -> hidden -> ... -> out with ReLU; layers named fc1, fc2, ... (LoRA targets them by name)."""

    def __init__(self, sizes=(64, 32, 32, 10)):
        super().__init__()
        self.sizes = tuple(sizes)
        for i, (a, b) in enumerate(zip(sizes[:-1], sizes[1:]), start=1):
            setattr(self, f"fc{i}", nn.Linear(a, b))
        self.n_layers = len(sizes) - 1

    def forward(self, x):
        for i in range(1, self.n_layers + 1):
            x = getattr(self, f"fc{i}")(x)
            if i < self.n_layers:
                x = torch.relu(x)
        return x


def train_classifier(model: nn.Module, X: torch.Tensor, y: torch.Tensor, *, epochs: int = 30,
                     lr: float = 1e-2, batch_size: int = 64, weight_decay: float = 0.0, seed: int = 0,
                     params=None) -> list[float]:
    """Adam on cross-entropy, minibatches shuffled by seed; returns the loss per epoch."""
    g = torch.Generator().manual_seed(seed)
    params = [p for p in (params if params is not None else model.parameters()) if p.requires_grad]
    opt = torch.optim.Adam(params, lr=lr, weight_decay=weight_decay)
    losses = []
    model.train()
    for _ in range(epochs):
        order = torch.randperm(len(X), generator=g)
        total = 0.0
        for start in range(0, len(X), batch_size):
            idx = order[start:start + batch_size]
            loss = nn.functional.cross_entropy(model(X[idx]), y[idx])
            opt.zero_grad()
            loss.backward()
            opt.step()
            total += loss.item() * len(idx)
        losses.append(total / len(X))
    model.eval()
    return losses


@torch.no_grad()
def accuracy(model: nn.Module, X: torch.Tensor, y: torch.Tensor) -> float:
    """Fraction of correct argmax predictions."""
    model.eval()
    return (model(X).argmax(-1) == y).float().mean().item()
