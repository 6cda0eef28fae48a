"""Share: the factor-basis math, the PEFT integration, the continual method, export, memory accounting."""
import numpy as np
import pytest
import torch

from shared_subspace import digits, memory
from shared_subspace.baselines import DigitsBackbone
from shared_subspace.continual import Method, run_stream
from shared_subspace.share import (BasisFactor, Share, attach_basis_factors, canonical_factors,
                                   fit_factor_basis, reproject)


def _proj_err(Q, F):
    return float((F - Q @ (Q.T @ F)).norm() / F.norm())


# ---------------------------------------------------------------- math

def test_canonical_factors_best_rank_and_balanced():
    g = torch.Generator().manual_seed(0)
    B, A = torch.randn(20, 5, generator=g, dtype=torch.float64), torch.randn(5, 30, generator=g, dtype=torch.float64)
    Bc, Ac = canonical_factors(B, A, 5)
    assert torch.allclose(Bc @ Ac, B @ A, atol=1e-10)                       # same delta_W, other gauge
    assert torch.allclose(Bc.norm(dim=0), Ac.norm(dim=1), atol=1e-10)       # balanced: ||b_i|| = ||a_i||
    B3, A3 = canonical_factors(B, A, 3)                                      # Eckart-Young: best rank 3
    s = torch.linalg.svdvals(B @ A)
    assert torch.isclose(torch.linalg.norm(B @ A - B3 @ A3), s[3:].norm(), atol=1e-8)
    with pytest.raises(ValueError, match="do not chain"):
        canonical_factors(B, A.T, 2)


def test_literal_refit_collapses_k_to_Nr_minus_1():
    """The trap: N adapters of rank r give a centered stack of rank <= N r - 1, whatever k is asked."""
    g = torch.Generator().manual_seed(1)
    F = torch.randn(64, 2 * 4, generator=g)                                  # N = 2 adapters, r = 4
    Q, n_data = fit_factor_basis(F, 16, fill="literal")
    assert Q.shape == (64, 7) and n_data == 7
    for fill in ("mean", "previous", "random"):
        Q, n_data = fit_factor_basis(F, 16, fill=fill, previous=torch.linalg.qr(torch.randn(64, 16, generator=g))[0])
        assert Q.shape == (64, 16)
        assert torch.allclose(Q.T @ Q, torch.eye(16), atol=1e-5)
    Q, n_data = fit_factor_basis(F, 16, fill="mean")
    assert n_data == 8 and _proj_err(Q, F) < 1e-5                           # mean + 7 centered: the whole span
    Q, _ = fit_factor_basis(F, 16, fill="random")
    assert _proj_err(Q, F) > 1e-3                                            # the mean is missing from the span
    with pytest.raises(ValueError, match="unknown fill"):
        fit_factor_basis(F, 4, fill="average")
    with pytest.raises(ValueError, match="between 1 and the factor dimension"):
        fit_factor_basis(F, 65)


def test_previous_fill_keeps_old_span_and_reproject_is_exact():
    g = torch.Generator().manual_seed(2)
    old = torch.linalg.qr(torch.randn(32, 10, generator=g))[0]
    eps = torch.randn(10, 3, generator=g)
    F = old @ eps                                                            # an old task inside the old basis
    new, _ = fit_factor_basis(F, 10, fill="previous", previous=old)
    angles = torch.linalg.svdvals(new.T @ old)
    assert torch.allclose(angles, torch.ones(10), atol=1e-5)                 # same span, rotated
    assert torch.allclose(new @ reproject(new, old, eps), F, atol=1e-5)


# ---------------------------------------------------------------- PEFT integration

def test_basis_factor_inside_peft_matches_B_A_and_trains_only_coefficients():
    from peft import LoraConfig, get_peft_model

    torch.manual_seed(0)
    mlp = digits.MLP((64, 16, 16, 10))
    model = get_peft_model(mlp, LoraConfig(r=3, lora_alpha=6, target_modules=["fc1"]))
    alpha, beta = torch.linalg.qr(torch.randn(64, 8))[0], torch.linalg.qr(torch.randn(16, 8))[0]
    (fA, fB), = attach_basis_factors(model, {"fc1": (alpha, beta)}, p=2, q=1).values()
    with torch.no_grad():
        for t in (fA.coeffs, fA.temp, fB.coeffs, fB.temp):
            t.normal_()
    B, A = fB.weight, fA.weight
    assert B.shape == (16, 3) and A.shape == (3, 64)
    x = torch.randn(5, 64)
    hidden = x @ (mlp.fc1.base_layer.weight + B @ A).T + mlp.fc1.base_layer.bias    # scaling set to 1
    assert torch.allclose(model.base_model.model.fc1(x), hidden, atol=1e-5)
    trainable = {n for n, p in fA.named_parameters()} | {n for n, p in fB.named_parameters()}
    assert trainable == {"coeffs", "temp"} and not fA.basis.requires_grad
    with pytest.raises(KeyError, match="no PEFT LoRA layer"):
        attach_basis_factors(model, {"fc9": (alpha, beta)}, p=2)
    with pytest.raises(ValueError, match="side must be"):
        BasisFactor(alpha, 2, side="C")


# ---------------------------------------------------------------- the method

@pytest.fixture(scope="module")
def tiny():
    torch.manual_seed(0)
    mlp = digits.MLP((64, 16, 16, 10))
    digits.train_classifier(mlp, *digits.load_digits_tensors()[:2], epochs=5)
    tasks = [digits.make_task(kind, seed=s) for kind, s in (("permute", 1), ("rotate90", 0), ("flip_lr", 0), ("permute", 2))]
    return DigitsBackbone(mlp), tasks


def test_share_runs_on_the_engine_without_forgetting(tiny, tmp_path):
    backbone, tasks = tiny
    share = Share(backbone, k=8, p=2, n_init=2, epochs=3, lr=3e-2)
    assert isinstance(share, Method)
    res = run_stream(share, tasks, progress=False, checkpoint_dir=tmp_path)
    R = res.R
    assert np.allclose(R[-1], np.diag(R), atol=1e-9)                         # q = 0: the refit only rotates
    assert res.metrics()["BWT"] == 0.0
    assert np.diag(R).mean() > 0.25                                           # it did learn (chance is 0.1)
    s = share.storage()
    formula = memory.share_params(share.dims, 8, 2)
    assert s["shared"] == formula["shared"] and s["per_task"] == formula["per_task"]
    # resume from the state dict: the same scores
    again = Share(backbone, k=8, p=2, n_init=2, epochs=3, lr=3e-2)
    again.load_state_dict(share.state_dict())
    assert again.score(1, tasks[1]) == share.score(1, tasks[1])
    other = Share(backbone, k=4, p=2, n_init=2, epochs=3, lr=3e-2)
    with pytest.raises(ValueError, match="another config"):
        other.load_state_dict(share.state_dict())
    with pytest.raises(ValueError, match="stream order"):
        share.learn(7, tasks[0])


def test_literal_fill_collapses_and_random_control_keeps_k(tiny):
    backbone, tasks = tiny
    literal = Share(backbone, k=8, p=2, n_init=2, epochs=1, fill="literal")
    for i, task in enumerate(tasks[:2]):
        literal.learn(i, task)
    assert {v["k_A"] for v in literal.history[-1]["bases"].values()} == {3}   # 2 * 2 - 1
    control = Share(backbone, k=8, p=2, basis="random", epochs=1)
    control.learn(0, tasks[0])
    assert all(a.shape[1] == 8 for a, _ in control.bases.values())
    with pytest.raises(ValueError, match="unknown fill"):
        Share(backbone, fill="nope")


def test_exported_task_loads_in_peft_with_the_same_outputs(tiny, tmp_path):
    from peft import PeftModel

    backbone, tasks = tiny
    share = Share(backbone, k=8, p=2, n_init=1, q=1, epochs=2)
    for i, task in enumerate(tasks[:3]):
        share.learn(i, task)
    X = tasks[1].X_test
    for t in (0, 1, 2):
        folder = share.export_peft(t, tmp_path / f"task{t}")
        assert (folder / "adapter_config.json").exists()
        peft_model = PeftModel.from_pretrained(backbone.frozen_copy(), folder).eval()
        with torch.no_grad():
            assert torch.allclose(peft_model(X), share.logits(t, X), atol=1e-5)


# ---------------------------------------------------------------- memory

def test_memory_formulas_and_bytes():
    dims = {"fc1": (64, 64), "fc2": (64, 10)}
    assert memory.lora_params(dims, 8) == 8 * (128 + 74)
    s = memory.share_params(dims, 16, 2)
    assert s == {"shared": 16 * 64 * 2 + 16 * 64 + 10 * 10, "per_task": 2 * (32 + 26)}
    per, seq, share = (memory.storage_curve(m, [1, 10], dims, r=8, k=16, p=2, head=5)
                       for m in ("per_task_lora", "sequential_lora", "share"))
    assert per == [1621, 16210] and seq == [1621, 1666] and share[1] - share[0] == 9 * (s["per_task"] + 5)
    assert memory.nbytes({"a": torch.zeros(3, dtype=torch.float32), "b": [torch.zeros(2, dtype=torch.float64)]}) == 28
    table = memory.storage_table([1, 5], dims, r=8, k=16, p=2)
    assert set(table["method"]) == {"per_task_lora", "sequential_lora", "share"} and (table["bytes"] == 4 * table["params"]).all()
    with pytest.raises(ValueError, match="unknown method"):
        memory.storage_curve("ewc", [1], dims)
    with pytest.raises(ValueError, match="dims is empty"):
        memory.lora_params({}, 8)


def test_text_task_exports_encoder_adapter_and_head(tmp_path):
    """MiniLM: the exported PEFT folder + head.safetensors reproduce Share's logits for that task."""
    from peft import PeftModel
    from safetensors.torch import load_file

    from shared_subspace import streams
    from shared_subspace.baselines import TextBackbone

    backbone = TextBackbone(max_length=16)
    task = streams.text_stream(1, n_train=16, n_test=8)[0]
    share = Share(backbone, k=4, p=2, n_init=1, epochs=1, batch_size=16)
    share.learn(0, task)
    folder = share.export_peft(0, tmp_path / "text0")
    head = torch.nn.Linear(backbone.feature_dim, len(task.labels))
    head.load_state_dict(load_file(folder / "head.safetensors"))
    encoder = PeftModel.from_pretrained(backbone.frozen_copy(), folder).eval()
    X, _ = backbone.data(task, "test")
    with torch.no_grad():
        assert torch.allclose(backbone.logits(encoder, X, head), share.logits(0, X), atol=1e-4)
