"""Thin ipywidgets explorers over precomputed results (nothing is retrained when a slider moves).

Each explorer is a pure view function `show_*(results, ...)` that draws one figure and prints one
line, plus an `*_explorer(results)` that wraps it with `ipywidgets.interactive`. Notebooks call the
view once with defaults (so a static render shows the picture), then display the explorer.
"""
from __future__ import annotations

import ipywidgets as widgets
import matplotlib.pyplot as plt
import torch

from . import plots
from .subspace import fit_basis, principal_angles

__all__ = ["projection_summary", "show_projection", "k_explorer", "plane_summary", "show_plane", "plane_explorer"]


# ---------------------------------------------------------------- notebook 01: choose k

def _at(values, ks, k):
    return float(values[list(int(x) for x in ks).index(int(k))])


def projection_summary(sweep: dict, k: int) -> str:
    """One line of numbers for the k slider: error and loss of the first series at this k."""
    ks = sweep["k"]
    if int(k) not in [int(x) for x in ks]:
        raise ValueError(f"k={k} was not precomputed: choose one of {[int(x) for x in ks]}")
    name = next(iter(sweep["loss"]))
    label = sweep.get("labels", {}).get(name, name)
    line = (f"k = {int(k)}: {label}: relative error {_at(sweep['rel_error'][name], ks, k):.3f}, "
            f"task loss {_at(sweep['loss'][name], ks, k):.3f}")
    if sweep.get("loss_ref") is not None:
        line += f"  (trained, unprojected: {float(sweep['loss_ref']):.3f})"
    return line


def show_projection(sweep: dict, k: int) -> None:
    """Draw reconstruction error and task loss against k with k marked, and print the numbers.

    sweep: {"k": ks, "rel_error": {name: per-k}, "loss": {name: per-k}, optional "labels",
            "k_star", "loss_ref"}  (toy.projected_losses gives one series).
    """
    print(projection_summary(sweep, k))
    plots.projection_vs_k(sweep["k"], sweep["rel_error"], sweep["loss"], labels=sweep.get("labels"),
                          k=int(k), k_star=sweep.get("k_star"), loss_ref=sweep.get("loss_ref"))
    plt.show()


def k_explorer(sweep: dict, k: int | None = None) -> widgets.interactive:
    """An IntSlider named "k" over the precomputed ks that redraws show_projection."""
    ks = [int(x) for x in sweep["k"]]
    k = k if k is not None else sweep.get("k_star", ks[0])
    slider = widgets.IntSlider(value=int(k), min=min(ks), max=max(ks), step=1, description="k",
                               continuous_update=False)
    return widgets.interactive(show_projection, sweep=widgets.fixed(sweep), k=slider)


# ---------------------------------------------------------------- notebook 00: the plane in 3-D

def plane_summary(W: torch.Tensor, n_tasks: int, U: torch.Tensor | None = None) -> dict:
    """Fit a plane (k=2) to the first n_tasks weight vectors: the plane, off-plane share, angle to U."""
    if not 3 <= n_tasks <= W.shape[0]:
        raise ValueError(f"n_tasks must be between 3 and {W.shape[0]} (precomputed), got {n_tasks}")
    full = fit_basis(W[:n_tasks], k=2, method="full")
    out = {"basis": full, "off_plane": float(full.explained_variance_ratio[2:].sum())}
    if U is not None:
        out["angle_deg"] = float(torch.rad2deg(principal_angles(full, U)).max())
    return out


def show_plane(W_by_noise: dict, noise: float, n_tasks: int, U: torch.Tensor | None = None) -> None:
    """3-D scatter of the first n_tasks models trained at this noise level, with their fitted plane."""
    W = W_by_noise[noise][:n_tasks]
    s = plane_summary(W, n_tasks, U)
    line = f"noise {noise:g}, {n_tasks} tasks: {s['off_plane']:.1%} of the spread is off the plane"
    if "angle_deg" in s:
        line += f"; fitted plane is {s['angle_deg']:.1f} deg from the true trail"
    print(line)
    plots.plane_3d(W, s["basis"].components, s["basis"].mean, title=f"task noise {noise:g}")
    plt.show()


def plane_explorer(W_by_noise: dict, U: torch.Tensor | None = None, n_tasks: int | None = None) -> widgets.interactive:
    """Sliders for the noise level (precomputed levels) and the number of tasks shown."""
    levels = sorted(W_by_noise)
    n_max = min(W.shape[0] for W in W_by_noise.values())
    noise = widgets.SelectionSlider(options=levels, value=levels[len(levels) // 2], description="noise",
                                    continuous_update=False)
    tasks = widgets.IntSlider(value=n_tasks or n_max, min=3, max=n_max, step=1, description="tasks",
                              continuous_update=False)
    return widgets.interactive(show_plane, W_by_noise=widgets.fixed(W_by_noise), noise=noise, n_tasks=tasks,
                               U=widgets.fixed(U))
