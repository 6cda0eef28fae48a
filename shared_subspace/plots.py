"""Every figure of the kit, in one style. Plotting never computes results: pass it numbers.

Colors mean the same thing in every notebook: the basis/signal is blue, the null is grey,
controls are orange (mean-only), green (basis-only) and red (random basis), thresholds black.
"""
from __future__ import annotations

import matplotlib.pyplot as plt
import matplotlib.ticker as mticker
import numpy as np
import seaborn as sns

COLORS = {
    "basis": "#1f77b4", "signal": "#1f77b4", "null": "#8c8c8c", "mean_only": "#ff7f0e",
    "basis_only": "#2ca02c", "random": "#d62728", "full": "#000000", "threshold": "#000000",
    "heldout": "#9467bd",
}
FIGSIZE = (6.4, 4.0)


def style() -> None:
    """The kit's one plotting style (call once at the top of a notebook)."""
    sns.set_theme(context="notebook", style="whitegrid", palette="deep")
    plt.rcParams.update({"figure.figsize": FIGSIZE, "figure.dpi": 100, "axes.spines.top": False,
                         "axes.spines.right": False, "legend.frameon": False})


def _ax(ax=None, figsize=FIGSIZE):
    if ax is None:
        _, ax = plt.subplots(figsize=figsize)
    return ax


def _np(x):
    return x.detach().cpu().numpy() if hasattr(x, "detach") else np.asarray(x)


def scree(ratios, null_lo=None, null_hi=None, *, k=None, n_show=None, label="weights", ax=None, title=None):
    """Explained-variance ratio per direction (log scale) beside a grey null band."""
    ax = _ax(ax)
    r = _np(ratios)
    n_show = min(len(r), n_show or len(r))
    idx = np.arange(1, n_show + 1)
    if null_lo is not None and null_hi is not None:
        lo, hi = _np(null_lo)[:n_show], _np(null_hi)[:n_show]
        ax.fill_between(idx[: len(lo)], lo, hi, color=COLORS["null"], alpha=0.35, label="null (i.i.d. noise)")
    ax.plot(idx, r[:n_show], "o-", color=COLORS["basis"], ms=3, label=label)
    if k is not None:
        ax.axvline(k, color=COLORS["threshold"], ls="--", lw=1, label=f"k = {k}")
    ax.set(yscale="log", xlabel="direction i", ylabel="explained variance ratio", title=title)
    ax.legend()
    return ax


def cumulative_energy(ratios, *, threshold=None, null_ratios=None, ax=None, title=None, label="weights"):
    """Cumulative explained variance with a horizontal threshold line (and the null's curve)."""
    ax = _ax(ax)
    c = np.cumsum(_np(ratios))
    idx = np.arange(1, len(c) + 1)
    ax.plot(idx, c, color=COLORS["basis"], label=label)
    if null_ratios is not None:
        cn = np.cumsum(_np(null_ratios))
        ax.plot(np.arange(1, len(cn) + 1), cn, color=COLORS["null"], ls="--", label="null")
    if threshold is not None:
        ax.axhline(threshold, color=COLORS["threshold"], ls=":", lw=1)
        k = int(np.searchsorted(c, threshold - 1e-12) + 1)
        ax.axvline(k, color=COLORS["threshold"], ls=":", lw=1)
        ax.annotate(f"{threshold:.0%} at k={k}", (k, threshold), textcoords="offset points", xytext=(6, -14))
    ax.set(xlabel="k", ylabel="cumulative explained variance", ylim=(0, 1.02), title=title)
    ax.legend()
    return ax


def principal_angles(angles, *, labels=None, ax=None, title="principal angles"):
    """Principal angles in degrees, one bar per pair of directions (several series allowed)."""
    ax = _ax(ax)
    series = angles if isinstance(angles, (list, tuple)) else [angles]
    labels = labels or [None] * len(series)
    width = 0.8 / len(series)
    for j, (a, lab) in enumerate(zip(series, labels)):
        deg = np.degrees(_np(a))
        ax.bar(np.arange(1, len(deg) + 1) + (j - (len(series) - 1) / 2) * width, deg, width, label=lab)
    ax.set(xlabel="angle index", ylabel="degrees", ylim=(0, 90), title=title)
    if any(labels):
        ax.legend()
    return ax


def plane_3d(points, basis_components, mean, *, ax=None, title=None, extent=None):
    """3-D scatter of weight vectors with the fitted plane through the mean."""
    if ax is None:
        fig = plt.figure(figsize=(5.5, 5))
        ax = fig.add_subplot(projection="3d")
    P, V, mu = _np(points), _np(basis_components), _np(mean)
    ax.scatter(P[:, 0], P[:, 1], P[:, 2], color=COLORS["signal"], s=14, depthshade=True, label="trained models")
    if V.shape[0] >= 2:
        extent = extent or 1.2 * np.abs(P - mu).max()
        s, t = np.meshgrid(np.linspace(-extent, extent, 2), np.linspace(-extent, extent, 2))
        plane = mu[None, None, :] + s[..., None] * V[0] + t[..., None] * V[1]
        ax.plot_surface(plane[..., 0], plane[..., 1], plane[..., 2], color=COLORS["basis"], alpha=0.18)
    ax.set(xlabel="w1", ylabel="w2", zlabel="w3", title=title)
    return ax


def curve_vs_k(ks, curves: dict, *, ylabel="score", ax=None, title=None, k=None):
    """Lines of a metric against k, one per method/control, in the kit's colors."""
    ax = _ax(ax)
    for name, ys in curves.items():
        ax.plot(_np(ks), _np(ys), "o-", ms=3, label=name.replace("_", " "), color=COLORS.get(name))
    if k is not None:
        ax.axvline(k, color=COLORS["threshold"], ls="--", lw=1)
    ax.set(xlabel="k", ylabel=ylabel, title=title)
    ax.legend()
    return ax


# ---------------------------------------------------------------- toy models (notebooks 00, 01)

def training_curve(losses, *, ax=None, label="mean train loss", title="gradient descent"):
    """Loss per gradient step (log scale)."""
    ax = _ax(ax)
    ax.plot(np.arange(1, len(_np(losses)) + 1), _np(losses), color=COLORS["basis"], label=label)
    ax.set(yscale="log", xlabel="step", ylabel="loss", title=title)
    ax.legend()
    return ax


def scree_mp(ratios, null_lo, null_hi, mp_ratios, *, k=None, n_show=None, label="weights", ax=None, title=None):
    """Scree plot with the simulated null band and the Marchenko-Pastur expectation (dashed grey)."""
    ax = scree(ratios, null_lo, null_hi, k=k, n_show=n_show, label=label, ax=ax, title=title)
    mp = _np(mp_ratios)[: n_show or len(_np(ratios))]
    ax.plot(np.arange(1, len(mp) + 1), mp, ls="--", color=COLORS["null"], lw=1.5, label="Marchenko-Pastur")
    ax.legend()
    return ax


def projection_vs_k(ks, rel_error: dict, loss: dict, *, labels=None, k=None, k_star=None, loss_ref=None,
                    axes=None, title=None):
    """Two panels against k: relative reconstruction error and task loss of the projected models.

    rel_error, loss: {name: values per k}; name picks the color (COLORS) and `labels[name]` the legend.
    k marks the current choice (black dashed), k_star the planted dimension (grey dotted),
    loss_ref a horizontal line for the unprojected models.
    """
    if axes is None:
        _, axes = plt.subplots(1, 2, figsize=(2 * FIGSIZE[0] * 0.8, FIGSIZE[1]), gridspec_kw={"wspace": 0.3})
    labels = labels or {}
    ks = _np(ks)
    for ax, curves, ylabel in ((axes[0], rel_error, "relative reconstruction error"), (axes[1], loss, "task loss")):
        for name, ys in curves.items():
            ax.plot(ks, _np(ys), "o-", ms=3, color=COLORS.get(name), label=labels.get(name, name.replace("_", " ")))
        if k_star is not None:
            ax.axvline(k_star, color=COLORS["null"], ls=":", lw=1.5, label=f"planted k* = {k_star}")
        if k is not None:
            ax.axvline(k, color=COLORS["threshold"], ls="--", lw=1, label=f"k = {k}")
        ax.set(xlabel="k", ylabel=ylabel)
    if loss_ref is not None:
        axes[1].axhline(float(loss_ref), color=COLORS["full"], lw=1, alpha=0.6, label="trained (no projection)")
    axes[1].set_yscale("log")  # plain tick labels: mathtext ones double the redraw time of a widget
    axes[1].yaxis.set_major_locator(mticker.LogLocator(subs=(1.0, 2.0, 5.0)))
    axes[1].yaxis.set_major_formatter(mticker.FormatStrFormatter("%g"))
    axes[1].yaxis.set_minor_formatter(mticker.NullFormatter())
    axes[0].set_ylim(0, 1.05)
    axes[1].legend(fontsize="small", loc="center right", frameon=True, framealpha=0.9)  # fixed: "best" is slow
    if title:
        axes[0].figure.suptitle(title)
    return axes


def scree_grid(panels: dict, *, k=None, n_show=None, label="weights", figsize=None):
    """A row of scree plots, one per panel: panels = {title: (ratios, null_lo, null_hi)}."""
    fig, axes = plt.subplots(1, len(panels), figsize=figsize or (4.2 * len(panels), 3.6), sharey=True)
    axes = np.atleast_1d(axes)
    for ax, (title, (r, lo, hi)) in zip(axes, panels.items()):
        scree(r, lo, hi, k=k, n_show=n_show, label=label, ax=ax, title=title)
        if ax is not axes[0]:
            ax.set_ylabel("")
    fig.tight_layout()
    return axes


def zoo_explorer(ks, ratios, null_lo, null_hi, curves: dict, *, k, layer, ev_at_k, acc_at_k, n_show=None):
    """Left: the layer's scree beside its null, k marked; right: held-out accuracy against k."""
    fig, (a, b) = plt.subplots(1, 2, figsize=(11, 3.8))
    scree(ratios, null_lo, null_hi, k=k, n_show=n_show, ax=a, label="zoo",
          title=f"{layer}: top-{k} explain {ev_at_k:.0%}")
    curve_vs_k(ks, curves, ylabel="held-out accuracy", k=k, ax=b,
               title=f"{layer} projected: accuracy {acc_at_k:.2f} at k={k}")
    b.set_ylim(0, 1)
    fig.tight_layout()
    return a, b


# ---------------------------------------------------------------- continual learning (notebook 04)

def accuracy_heatmap(R, names, *, ax=None, title=None, vmin=0.0, vmax=1.0, annot=True):
    """The accuracy matrix R[i, j] (row: after training task i; column: task j), lower triangle with values.

    Entries above the diagonal (scores before training, if measured) are shown faded.
    """
    R = _np(R).astype(float)
    T = len(R)
    ax = _ax(ax, figsize=(0.55 * T + 2.2, 0.45 * T + 1.6))
    upper = np.triu(np.ones_like(R, dtype=bool), 1)
    sns.heatmap(R, mask=upper | np.isnan(R), ax=ax, vmin=vmin, vmax=vmax, cmap="viridis", annot=annot and T <= 12,
                fmt=".2f", annot_kws={"size": 7}, cbar_kws={"label": "score"}, square=True,
                xticklabels=names, yticklabels=names)
    if np.isfinite(R[upper]).any():
        sns.heatmap(R, mask=~upper | np.isnan(R), ax=ax, vmin=vmin, vmax=vmax, cmap="Greys", alpha=0.35,
                    annot=annot and T <= 12, fmt=".2f", annot_kws={"size": 6, "color": "0.4"}, cbar=False,
                    square=True, xticklabels=names, yticklabels=names)
    ax.set(xlabel="scored on task j", ylabel="after training task i", title=title)
    ax.grid(False)
    ax.tick_params(axis="x", rotation=60, labelsize=7)
    ax.tick_params(axis="y", rotation=0, labelsize=7)
    return ax


def score_curves(R, names, *, ax=None, title=None):
    """Score of each task over the stream (from the moment it was trained): forgetting as falling lines."""
    R = _np(R).astype(float)
    ax = _ax(ax)
    T = len(R)
    colors = sns.color_palette("husl", T)
    for j in range(T):
        ax.plot(np.arange(j, T), R[j:, j], "o-", ms=3, lw=1.2, color=colors[j], label=names[j])
    ax.plot(np.arange(T), [R[i, :i + 1].mean() for i in range(T)],
            color=COLORS["full"], lw=2.5, label="mean over seen tasks")
    ax.set(xlabel="after training task i", ylabel="score", ylim=(0, 1.02), title=title,
           xticks=range(T))
    ax.legend(fontsize=7, ncol=2, loc="lower left")
    return ax


def storage_vs_acc(points: dict, *, ax=None, title="what each method stores, and what it keeps"):
    """Scatter: stored parameters (total, log scale) against final ACC; points = {method: (total, ACC)}."""
    ax = _ax(ax)
    for name, (total, acc) in points.items():
        x = max(float(total), 1.0)
        ax.scatter(x, acc, s=60)
        ax.annotate(name, (x, acc), textcoords="offset points", xytext=(6, 4), fontsize=8)
    ax.set(xscale="log", xlabel="parameters stored (beyond the frozen base; 0 shown at 1)", ylabel="ACC",
           ylim=(0, 1.05), title=title)
    return ax


def interference_curves(steps, cosines: dict, scores: dict, names=None, *, axes=None, title=None):
    """While one task trains: cos(-gradient, earlier update) (left) and earlier tasks' scores (right) per step."""
    if axes is None:
        _, axes = plt.subplots(1, 2, figsize=(11, 3.6))
    names = names or {}
    colors = sns.color_palette("husl", max(1, len(cosines)))
    for c, j in zip(colors, cosines):
        label = names.get(j, f"task {j}")
        axes[0].plot(steps, cosines[j], color=c, label=label)
        axes[1].plot(steps, scores[j], color=c, label=label)
    axes[0].axhline(0, color=COLORS["threshold"], lw=0.8, ls=":")
    axes[0].set(xlabel="training step of the new task", ylabel="cos(-g_new, delta_j)", title="gradient vs earlier updates")
    axes[1].set(xlabel="training step of the new task", ylabel="score of earlier task", ylim=(0, 1.02),
                title="earlier tasks drift")
    axes[1].legend(fontsize=7, ncol=2)
    if title:
        axes[0].figure.suptitle(title, y=1.03)
    return axes


def pareto(df, *, ax=None, title="ACC vs parameters stored per task", highlight=None):
    """Share's sweep as ACC against stored parameters per task (log x), with the baselines marked.

    df: rows with method ("share" | "per_task_lora" | "joint_lora" ...), ACC, per_task, and for Share
    k, p, q, basis. Data-basis points are blue (filled: q = 0, hollow: with temporary factors), the
    random-basis control red; the Pareto front of Share's points is a line. `highlight`=(k, p) rings one point.
    """
    ax = _ax(ax)
    s = df[df["method"] == "share"]
    data, rand = s[s["basis"] == "data"], s[s["basis"] == "random"]
    for q, d in data.groupby("q"):
        ax.scatter(d["per_task"], d["ACC"], s=28, color=COLORS["basis"], label=f"Share (q={q})",
                   facecolors=COLORS["basis"] if q == 0 else "none", zorder=3)
    ax.scatter(rand["per_task"], rand["ACC"], s=22, marker="x", color=COLORS["random"], label="random basis (same k)")
    front = data.sort_values("per_task")
    front = front[front["ACC"] >= front["ACC"].cummax()]
    ax.plot(front["per_task"], front["ACC"], color=COLORS["basis"], lw=1, alpha=0.6)
    marks = {"per_task_lora": ("*", COLORS["full"], "per-task LoRA"), "joint_lora": ("D", COLORS["heldout"], "joint LoRA"),
             "sequential_lora": ("v", COLORS["mean_only"], "sequential LoRA")}
    for method, (marker, color, label) in marks.items():
        b = df[df["method"] == method]
        if len(b):
            ax.scatter(b["per_task"], b["ACC"], s=90, marker=marker, color=color, label=label, zorder=4)
    if highlight is not None:
        h = data[(data["k"] == highlight[0]) & (data["p"] == highlight[1])]
        ax.scatter(h["per_task"], h["ACC"], s=220, facecolors="none", edgecolors=COLORS["threshold"], lw=1.5,
                   label=f"k={highlight[0]}, p={highlight[1]}", zorder=5)
    ax.set(xscale="log", xlabel="parameters stored per task (log)", ylabel="ACC (after the last task)", title=title)
    ax.legend(fontsize=8, loc="lower right")
    return ax


def memory_vs_tasks(table, *, ax=None, title="what is stored as tasks accumulate", bytes_=False):
    """Stored parameters (or bytes) against the number of tasks, one line per method (memory.storage_table)."""
    ax = _ax(ax)
    colors = {"per_task_lora": COLORS["full"], "sequential_lora": COLORS["mean_only"], "share": COLORS["basis"]}
    col = "bytes" if bytes_ else "params"
    for method, d in table.groupby("method", sort=False):
        ax.plot(d["tasks"], d[col], "o-", ms=3, color=colors.get(method), label=method.replace("_", " "))
    ax.set(yscale="log", xlabel="number of tasks", ylabel=f"stored {col} (log)", title=title)
    ax.legend()
    return ax


# ---------------------------------------------------------------- notebook 03: the LoRA adapter zoo

SIDE_TITLES = {"A": "A (r x d_in)", "B": "B (d_out x r)", "delta_W": "delta_W = s B A"}


def factor_spectra(ratios: dict, nulls: dict, *, k=None, title=None, figsize=(12.0, 3.4)):
    """One scree panel per side ("A", "B", "delta_W"): ratios[side] beside the null band nulls[side] = (lo, hi)."""
    fig, axes = plt.subplots(1, len(ratios), figsize=figsize, sharey=True)
    for ax, (side, r) in zip(np.atleast_1d(axes), ratios.items()):
        lo, hi = nulls[side]
        scree(r, lo, hi, k=k, label="adapters", ax=ax, title=SIDE_TITLES.get(side, side))
    if title:
        fig.suptitle(title)
    fig.tight_layout()
    return fig


def spectra_compare(series: dict, null_lo=None, null_hi=None, *, ax=None, title=None, ylabel="explained variance ratio"):
    """Several spectra (label -> ratios) on one log axis beside one grey null band."""
    ax = _ax(ax)
    if null_lo is not None:
        idx = np.arange(1, len(_np(null_lo)) + 1)
        ax.fill_between(idx, _np(null_lo), _np(null_hi), color=COLORS["null"], alpha=0.35, label="null (i.i.d. noise)")
    palette = [COLORS["basis"], COLORS["mean_only"], COLORS["basis_only"], COLORS["heldout"]]
    for (label, r), color in zip(series.items(), palette):
        r = _np(r)
        ax.plot(np.arange(1, len(r) + 1), r, "o-", ms=3, color=color, label=label)
    ax.set(yscale="log", xlabel="direction i", ylabel=ylabel, title=title)
    ax.legend(fontsize=8)
    return ax


def heldout_vs_k(ks, curves: dict, *, original=None, none=None, ax=None, title=None, k=None):
    """Task score against k (curves: basis / mean_only / basis_only ...) with the adapter itself (black)
    and no adapter (grey) as horizontal references."""
    ax = curve_vs_k(ks, curves, ax=ax, title=title, k=k)
    if original is not None:
        ax.axhline(original, color=COLORS["full"], lw=1, label="the adapter itself")
    if none is not None:
        ax.axhline(none, color=COLORS["null"], lw=1, ls=":", label="no adapter (head only)")
    ax.set(ylim=(0, 1.02))
    ax.legend(fontsize=8)
    return ax


def merge_bars(means: dict, *, reference=None, floor=None, ax=None, title="one merged adapter for every task"):
    """Mean task score per merge method (horizontal bars), with the per-task adapters (black line)
    and no adapter (grey dotted line) as references."""
    ax = _ax(ax)
    names = list(means)
    ax.barh(np.arange(len(names)), [means[n] for n in names], color=COLORS["basis"], alpha=0.8)
    ax.set_yticks(np.arange(len(names)), [n.replace("_", " ") for n in names])
    if reference is not None:
        ax.axvline(reference, color=COLORS["full"], lw=1.2, label="per-task adapters")
    if floor is not None:
        ax.axvline(floor, color=COLORS["null"], lw=1.2, ls=":", label="no adapter (head only)")
    ax.set(xlim=(0, 1), xlabel="mean task score", title=title)
    ax.invert_yaxis()
    ax.legend(fontsize=8, loc="lower right")
    return ax


def module_explorer(ratios: dict, nulls: dict, ks, errors: dict, *, k, module, figsize=(12.0, 3.4)):
    """The widget's figure: spectra of one module's A, B and delta_W with a k line, and the held-out
    relative projection error against k (errors: side -> values at ks) with a marker at k."""
    fig, axes = plt.subplots(1, len(ratios) + 1, figsize=figsize)
    for ax, (side, r) in zip(axes, ratios.items()):
        scree(r, *nulls[side], k=k, label=side, ax=ax, title=f"{module}: {SIDE_TITLES.get(side, side)}")
        ax.legend(fontsize=7)
    ax = axes[-1]
    palette = {"A": COLORS["mean_only"], "B": COLORS["basis_only"], "delta_W": COLORS["basis"]}
    ks = _np(ks)
    for side, e in errors.items():
        ax.plot(ks, _np(e), "o-", ms=3, color=palette.get(side), label=side)
        i = int(np.argmin(np.abs(ks - k)))
        ax.plot(ks[i], _np(e)[i], "o", ms=8, mfc="none", color=palette.get(side))
    ax.set(xlabel="k", ylabel="held-out relative error", ylim=(0, 1.05), title="held-out adapters")
    ax.legend(fontsize=7)
    fig.tight_layout()
    return fig


def basis_size(ks: dict, *, k_max=None, names=None, ax=None, title="basis size over fine-tune cycles"):
    """k after each cycle, one line per run (ks: label -> list of k); an optional cap line."""
    ax = _ax(ax)
    palette = [COLORS["basis"], COLORS["heldout"], COLORS["basis_only"], COLORS["mean_only"], COLORS["random"]]
    for i, (label, k) in enumerate(ks.items()):
        null = "null" in label or "shuffled" in label or "random" in label
        ax.plot(np.arange(1, len(k) + 1), _np(k), "o-" if not null else "s--", ms=4, label=label,
                color=COLORS["null"] if null else palette[i % len(palette)])
    if k_max is not None:
        ax.axhline(k_max, color=COLORS["threshold"], ls=":", lw=1, label=f"cap k_max = {k_max}")
    n = max(len(k) for k in ks.values())
    ax.set_xticks(np.arange(1, n + 1), names if names is not None else np.arange(1, n + 1),
                  rotation=45 if names is not None else 0, ha="right" if names is not None else "center")
    ax.set(xlabel="fine-tune cycle", ylabel="directions k", title=title)
    ax.legend(fontsize=8)
    return ax


def projection_errors(before, after, *, threshold=None, names=None, ax=None, title="projection error of each new task"):
    """Relative projection error of each cycle's update before (bars) and after (dots) the basis grew."""
    ax = _ax(ax)
    x = np.arange(1, len(before) + 1)
    ax.bar(x, _np(before), color=COLORS["basis"], alpha=0.5, label="before (basis of earlier tasks)")
    ax.plot(x, _np(after), "o", color=COLORS["basis"], label="after growing")
    if threshold is not None:
        ax.axhline(threshold, color=COLORS["threshold"], ls="--", lw=1, label=f"threshold {threshold}")
    ax.set_xticks(x, names if names is not None else x, rotation=45 if names is not None else 0,
                  ha="right" if names is not None else "center")
    ax.set(ylim=(0, 1.3), xlabel="fine-tune cycle", ylabel="||X - X V^T V|| / ||X||", title=title)
    ax.legend(fontsize=8, loc="upper center", ncol=3)
    return ax


def elastic_explorer(ks, acc, *, threshold, energy, k_fixed=None, acc_fixed=None, acc_full=None, figsize=(12.0, 3.8)):
    """The widget's figure: k over cycles (left) and each task's accuracy with its update projected on
    the final basis (right), for one (threshold, energy) setting; optional fixed-k and full references."""
    fig, (a1, a2) = plt.subplots(1, 2, figsize=figsize)
    basis_size({f"elastic (threshold {threshold}, energy {energy})": ks}, ax=a1, title="basis size k")
    if k_fixed is not None:
        a1.axhline(k_fixed, color=COLORS["mean_only"], ls="--", lw=1, label=f"fixed k = {k_fixed}")
        a1.legend(fontsize=8)
    x = np.arange(1, len(acc) + 1)
    a2.plot(x, _np(acc), "o-", color=COLORS["basis"], label=f"elastic, final k = {int(_np(ks)[-1])}")
    if acc_fixed is not None:
        a2.plot(x, _np(acc_fixed), "s--", color=COLORS["mean_only"], label=f"fixed k = {k_fixed}")
    if acc_full is not None:
        a2.plot(x, _np(acc_full), "-", color=COLORS["full"], lw=1, label="full update")
    a2.set(ylim=(0, 1.02), xlabel="task", ylabel="test accuracy, update projected", title="what the final basis keeps")
    a2.legend(fontsize=8)
    fig.tight_layout()
    return fig


def dimension_vs_tasks(curves: dict, *, seed=None, ax=None, title="directions needed as tasks are added"):
    """k against the number of tasks in the fit (curves: label -> {n: k}), the line k = n, and an optional
    seed rule-of-thumb band (seed: (n_lo, n_hi, k_lo, k_hi))."""
    ax = _ax(ax)
    palette = [COLORS["basis"], COLORS["heldout"], COLORS["basis_only"], COLORS["mean_only"]]
    n_max = max(max(c) for c in curves.values())
    n_all = np.arange(1, n_max + 1)
    ax.plot(n_all, n_all, color=COLORS["threshold"], ls=":", lw=1, label="k = n (every task its own direction)")
    for i, (label, c) in enumerate(curves.items()):
        null = "null" in label or "noise" in label
        n = sorted(c)
        ax.plot(n, [c[x] for x in n], "s--" if null else "o-", ms=9 if i == 0 else 5, lw=4 if i == 0 else 1.5,
                alpha=0.5 if i == 0 else 1, label=label, color=COLORS["null"] if null else palette[i % len(palette)])
    if seed is not None:
        ax.fill_between([seed[0], seed[1]], seed[2], seed[3], color=COLORS["random"], alpha=0.15,
                        label=f"seed's table: {seed[2]}-{seed[3]} for {seed[0]}-{seed[1]} tasks")
        ax.set_yscale("log", base=2)
    ax.set(xlabel="tasks in the fit n", ylabel="directions k", title=title)
    ax.legend(fontsize=8)
    return ax


def dimension_explorer(cum_energy, retained: dict, *, energy, keep, k_energy, k_perf: dict, figsize=(12.0, 3.8)):
    """The widget's figure: cumulative energy of a stack with the k it needs at `energy` (left), and the
    share of the gain kept against k per view (right: label -> (ks, rho)) with the k_P each reaches."""
    fig, (a1, a2) = plt.subplots(1, 2, figsize=figsize)
    c = _np(cum_energy)
    a1.plot(np.arange(1, len(c) + 1), c, "o-", color=COLORS["basis"], ms=4, label="zoo (median module)")
    a1.axhline(energy, color=COLORS["threshold"], ls="--", lw=1, label=f"energy {energy:.2f}")
    a1.axvline(k_energy, color=COLORS["basis"], ls=":", lw=1, label=f"k_E = {k_energy}")
    a1.set(ylim=(0, 1.02), xlabel="directions k", ylabel="cumulative explained variance", title="weights: k_E")
    a1.legend(fontsize=8)
    palette = [COLORS["basis"], COLORS["heldout"], COLORS["mean_only"], COLORS["random"], COLORS["basis_only"]]
    for i, (label, (ks, rho)) in enumerate(retained.items()):
        kp = k_perf.get(label)
        a2.plot(ks, _np(rho), "o-", ms=4, color=palette[i % len(palette)],
                label=f"{label}: k_P = {kp if kp is not None else 'not reached'}")
    a2.axhline(keep, color=COLORS["threshold"], ls="--", lw=1, label=f"keep {keep:.2f}")
    a2.set(ylim=(-0.2, 1.1), xlabel="directions k", ylabel="share of the gain kept", title="tasks: k_P")
    a2.legend(fontsize=8)
    fig.tight_layout()
    return fig
