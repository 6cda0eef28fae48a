"""The model zoo: determinism, manifest, caching, stacking helpers, CLI."""
import json

import pytest
import torch

from shared_subspace import cli, zoo

TINY = zoo.ZooConfig(seen_transforms=("identity", "rotate90"), unseen_transforms=("flip_lr",), labelmaps=1,
                     subsets=1, seeds=2, heldout_seeds=1, pretrain_epochs=2, finetune_epochs=1,
                     independent_epochs=1)


@pytest.fixture(scope="module")
def tiny_zoo(tmp_path_factory):
    root = tmp_path_factory.mktemp("zoo")
    return zoo.build_zoo("finetuned", TINY, root=root, progress=False)


def test_plan_splits_fit_and_heldout():
    members = zoo.plan_members(TINY)
    names = [m["name"] for m in members]
    assert len(names) == len(set(names))
    fit = [m for m in members if m["split"] == "fit"]
    held = [m for m in members if m["split"] == "heldout"]
    assert len(fit) == 4 * TINY.seeds                      # 2 transforms + 1 labelmap + 1 subset, 2 seeds
    fit_tasks = {(m["kind"], m["task_seed"], str(m["classes"])) for m in fit}
    for m in held:                                         # held-out: a new seed, or a task never fitted
        task = (m["kind"], m["task_seed"], str(m["classes"]))
        assert (task in fit_tasks) == (m["group"] == "seen")
        assert m["seed"] >= TINY.seeds or m["group"] == "unseen"


def test_manifest_and_files(tiny_zoo):
    manifest = zoo.load_manifest(tiny_zoo)
    assert manifest["init"] == "finetuned" and manifest["sizes"] == [64, 32, 32, 10]
    assert len(manifest["members"]) == len(zoo.plan_members(TINY))
    entry = manifest["members"][0]
    assert (tiny_zoo / entry["file"]).is_file() and (tiny_zoo / "pretrained.safetensors").is_file()
    entries, states = zoo.load_members(tiny_zoo, "fit")
    assert len(states) == 4 * TINY.seeds and all(e["split"] == "fit" for e in entries)
    # the stored accuracy is the accuracy of the stored weights
    assert zoo.evaluate(states[0], zoo.member_task(entries[0])) == pytest.approx(entries[0]["accuracy"])


def test_deterministic_by_seed(tiny_zoo, tmp_path):
    again = zoo.build_zoo("finetuned", TINY, root=tmp_path, progress=False)
    for entry in zoo.load_manifest(tiny_zoo)["members"]:
        assert (tiny_zoo / entry["file"]).read_bytes() == (again / entry["file"]).read_bytes()


def test_cached_zoo_is_not_rebuilt(tiny_zoo):
    before = (tiny_zoo / "manifest.json").stat().st_mtime_ns
    assert zoo.build_zoo("finetuned", TINY, root=tiny_zoo.parent, progress=False) == tiny_zoo
    assert (tiny_zoo / "manifest.json").stat().st_mtime_ns == before


def test_finetuned_members_start_from_one_init(tiny_zoo, tmp_path):
    from safetensors.torch import load_file
    base = load_file(str(tiny_zoo / "pretrained.safetensors"))
    _, fine = zoo.load_members(tiny_zoo, "fit")
    _, indep = zoo.load_members(zoo.build_zoo("independent", TINY, root=tmp_path, progress=False), "fit")
    dist = lambda states: torch.stack([zoo.stack_layer([s], "fc2")[0] - zoo.stack_layer([base], "fc2")[0]
                                       for s in states]).norm(dim=1).mean()
    assert dist(fine) < 0.5 * dist(indep)


def test_stacking_round_trip(tiny_zoo):
    _, states = zoo.load_members(tiny_zoo, "fit")
    assert zoo.layer_names(states[0]) == ["fc1", "fc2", "fc3"]
    X = zoo.stack_layer(states, "fc1")
    assert X.shape == (len(states), 64 * 32 + 32)
    back = zoo.replace_layer(states[1], "fc1", X[0])
    assert torch.equal(back["fc1.weight"], states[0]["fc1.weight"]) and torch.equal(back["fc2.weight"], states[1]["fc2.weight"])
    with pytest.raises(ValueError, match="fc1 has 2080 parameters but the vector has 5"):
        zoo.unstack_layer(torch.zeros(5), states[0], "fc1")
    assert zoo.zoo_nbytes(states) == len(states) * 4 * sum(t.numel() for t in states[0].values())


def test_bad_inputs(tmp_path):
    with pytest.raises(ValueError, match="unknown zoo init 'pretty'"):
        zoo.build_zoo("pretty", TINY, root=tmp_path)
    with pytest.raises(FileNotFoundError, match="not a built zoo"):
        zoo.load_manifest(tmp_path)


def test_cli_builds_random_zoo(tmp_path, capsys):
    assert cli.main(["zoo", "--fast", "--inits", "random", "--out", str(tmp_path)]) == 0
    folder = next(tmp_path.glob("random-*"))
    manifest = json.loads((folder / "manifest.json").read_text())
    assert manifest["init"] == "random" and manifest["pretrained"] is None
    assert "zoo" in cli.COMMANDS and cli.COMMANDS["zoo"][1].builds_cache
    # an untrained zoo is at chance level
    assert sum(m["accuracy"] for m in manifest["members"]) / len(manifest["members"]) < 0.3


def test_projection_controls(tiny_zoo):
    entries, states = zoo.load_members(tiny_zoo, "fit")
    bases = zoo.fit_layer_bases(states)
    n = len(states)
    x = zoo.stack_layer(states[:1], "fc2")
    b = bases["fc2"]
    # the full centered basis reproduces a fit model; the mean-only control returns the zoo mean
    assert torch.allclose(zoo.layer_projector(b, n - 1, "basis")(x), x, atol=1e-5)
    assert torch.allclose(zoo.layer_projector(b, 1, "mean_only")(x)[0], b.mean)
    assert torch.allclose(zoo.layer_projector(b, 2, "basis_only")(x), (x @ b.components[:2].T) @ b.components[:2])
    r = zoo.layer_projector(b, 2, "random", seed=1)(x)
    assert not torch.allclose(r, zoo.layer_projector(b, 2, "basis")(x), atol=1e-3)
    with pytest.raises(ValueError, match="unknown reconstruction 'median'"):
        zoo.layer_projector(b, 2, "median")
    curves = zoo.accuracy_vs_k(entries, states, bases, [1, n - 1], hows=("basis", "mean_only"))
    assert curves["basis"][1] == pytest.approx(curves["full"][1], abs=1e-6)   # in-sample, full rank: exact
    assert curves["mean_only"][0] == curves["mean_only"][1]                   # the mean does not depend on k
