"""Widgets: the views draw from precomputed numbers, the sliders exist and a move redraws."""
import matplotlib

matplotlib.use("Agg")

import matplotlib.pyplot as plt  # noqa: E402
import pytest  # noqa: E402
import torch  # noqa: E402

from shared_subspace import subspace, toy, widgets  # noqa: E402


@pytest.fixture(scope="module")
def sweep():
    tasks = toy.planted_tasks(30, 12, 3, n_train=60, seed=0)
    W, _ = toy.train_linear_models(tasks, steps=150, seed=0)
    basis = subspace.fit_basis(W, k=8)
    out = toy.projected_losses(basis, W, tasks)
    return {"k": out["k"], "k_star": 3, "loss_ref": float(toy.task_loss(W, tasks).mean()),
            "rel_error": {"basis": out["rel_error"]}, "loss": {"basis": out["loss"]},
            "labels": {"basis": "fit tasks"}}


@pytest.fixture(autouse=True)
def close_figures():
    yield
    plt.close("all")


def test_projection_summary_reports_the_numbers_at_k(sweep):
    line = widgets.projection_summary(sweep, 2)
    assert line.startswith("k = 2: fit tasks")
    assert f"{float(sweep['loss']['basis'][2]):.3f}" in line
    assert widgets.projection_summary(sweep, 2) != widgets.projection_summary(sweep, 3)
    with pytest.raises(ValueError, match="was not precomputed"):
        widgets.projection_summary(sweep, 99)


def test_show_projection_draws_two_panels_with_k_marked(sweep, capsys):
    widgets.show_projection(sweep, 5)
    assert "k = 5" in capsys.readouterr().out
    fig = plt.gcf()
    assert len(fig.axes) == 2
    labels = [line.get_label() for line in fig.axes[1].get_lines()]
    assert "k = 5" in labels and "planted k* = 3" in labels


def test_k_explorer_slider_named_k_redraws(sweep, capsys):
    w = widgets.k_explorer(sweep)
    slider = w.children[0]
    assert slider.description == "k" and slider.value == 3
    assert (slider.min, slider.max) == (0, 8)
    capsys.readouterr()
    slider.value = 1  # a move calls the update synchronously
    assert "k = 1" in capsys.readouterr().out


def test_plane_summary_and_explorer():
    W_by_noise = {}
    for noise in (0.0, 2.0):
        tasks = toy.planted_tasks(20, 3, 2, task_noise=noise, seed=0)
        W_by_noise[noise] = toy.train_linear_models(tasks, steps=100, seed=0)[0]
    flat = widgets.plane_summary(W_by_noise[0.0], 20, tasks.U)
    thick = widgets.plane_summary(W_by_noise[2.0], 20, tasks.U)
    assert flat["off_plane"] < 0.01 < thick["off_plane"]
    assert flat["angle_deg"] < 5
    assert flat["basis"].k == 2
    with pytest.raises(ValueError, match="n_tasks must be between 3 and 20"):
        widgets.plane_summary(W_by_noise[0.0], 2)
    w = widgets.plane_explorer(W_by_noise, U=tasks.U)
    noise, n_tasks = w.children[0], w.children[1]
    assert (noise.description, n_tasks.description) == ("noise", "tasks")
    assert list(noise.options) == [0.0, 2.0] and n_tasks.max == 20
    assert torch.is_tensor(W_by_noise[0.0])


def test_toy_figures_draw_what_they_are_given():
    from shared_subspace import plots
    ax = plots.training_curve(torch.tensor([4.0, 2.0, 1.0]))
    assert ax.get_yscale() == "log" and list(ax.get_lines()[0].get_ydata()) == [4.0, 2.0, 1.0]
    ratios = torch.tensor([0.6, 0.3, 0.1])
    ax = plots.scree_mp(ratios, ratios * 0.5, ratios * 0.8, torch.tensor([0.4, 0.35, 0.25]), k=1)
    assert "Marchenko-Pastur" in [line.get_label() for line in ax.get_lines()]
