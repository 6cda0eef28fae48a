"""shared_subspace.lora: real PEFT adapters on the bundled MiniLM (tiny settings), round trips, bad inputs."""
from __future__ import annotations

import json
from dataclasses import replace

import pytest
import torch

from shared_subspace import lora, tasks
from shared_subspace.lora import LoraError
from shared_subspace.models import load_model

MODEL = "bundled:minilm"
TINY = lora.LoraSettings(r=2, alpha=4, steps=3, lr=1e-2, batch_size=8, max_length=16, n_train=16, n_test=8)


def rel(a, b):
    return float((a - b).norm() / b.norm())


@pytest.fixture(scope="module")
def suite():
    return tasks.classification_tasks(seed=0, n_train=TINY.n_train, n_test=TINY.n_test)[:3]


@pytest.fixture(scope="module")
def zoo(tmp_path_factory, suite):
    folder = tmp_path_factory.mktemp("zoo")
    entries = lora.build_zoo(MODEL, suite, TINY, seeds=(0, 1), folder=folder, progress=False)
    return entries, lora.load_zoo(entries)


def base_for(task):
    model, tok = load_model(MODEL, kind="sequence_classification", num_labels=len(task.labels))
    return model, tok


def logits(model, tok, task):
    enc = tok([e.input for e in task.test], padding=True, return_tensors="pt")
    with torch.no_grad():
        return model(**enc).logits


# ---------------------------------------------------------------- training and the zoo

def test_zoo_is_cached_and_complete(zoo, suite, tmp_path):
    entries, adapters = zoo
    assert len(entries) == 6 and {e.task for e in entries} == {t.name for t in suite}
    assert all((e.path / "adapter_model.safetensors").is_file() for e in entries)
    assert [a.name for a in adapters] == [f"{e.task}-s{e.seed}" for e in entries]
    again = lora.build_zoo(MODEL, suite, TINY, seeds=(0, 1), folder=entries[0].path.parent, progress=False)
    assert [e.seconds for e in again] == [e.seconds for e in entries]  # read from the cache, not retrained
    one = replace(TINY, steps=1)
    first = lora.build_zoo(MODEL, suite[:1], one, folder=tmp_path, progress=False)
    changed = replace(suite[0], train=suite[0].train[1:])
    retrained = lora.build_zoo(MODEL, [changed], one, folder=tmp_path, progress=False)
    assert retrained[0].seconds != first[0].seconds  # a changed task invalidates its cached adapter


def test_shared_init_shares_A_and_own_init_does_not(suite):
    task = suite[0]
    As = {}
    for shared in (True, False):
        for seed in (0, 1):
            model, tok = base_for(task)
            pm, _ = lora.train_adapter(model, tok, task, replace(TINY, steps=0, shared_init=shared), seed=seed)
            As[shared, seed] = lora.from_model(pm).A
    m = sorted(As[True, 0])[0]
    assert torch.equal(As[True, 0][m], As[True, 1][m])
    assert not torch.allclose(As[False, 0][m], As[False, 1][m])


def test_from_model_matches_saved_folder(suite, tmp_path):
    task = suite[0]
    model, tok = base_for(task)
    pm, losses = lora.train_adapter(model, tok, task, TINY, base_name=MODEL)
    assert len(losses) == TINY.steps
    pm.save_pretrained(tmp_path / "a", save_embedding_layers=False)
    live, saved = lora.from_model(pm, name="a"), lora.load_adapter(tmp_path / "a")
    assert live.base_model == saved.base_model == MODEL
    assert live.modules == saved.modules and len(live.modules) == 12  # 6 layers x (query, value)
    for m in live.modules:
        assert torch.equal(live.A[m], saved.A[m]) and torch.equal(live.B[m], saved.B[m])
    assert set(saved.extra) == {"classifier.weight", "classifier.bias"}
    assert saved.A[live.modules[0]].shape == (TINY.r, 384) and saved.scaling == TINY.alpha / TINY.r


def test_delta_convention_matches_peft(zoo, suite):
    """applied(base, s B A, head) gives PEFT's own logits for the saved adapter."""
    from peft import PeftModel

    entries, adapters = zoo
    task = suite[0]
    base, tok = base_for(task)
    with lora.applied(base, adapters[0].deltas(), adapters[0].extra):
        ours = logits(base, tok, task)
    after = logits(base, tok, task)
    peft_model = PeftModel.from_pretrained(base_for(task)[0], entries[0].path).eval()
    theirs = logits(peft_model, tok, task)
    assert torch.allclose(ours, theirs, atol=1e-5)
    assert not torch.allclose(after, theirs, atol=1e-3)  # applied() restored the base model


# ---------------------------------------------------------------- bases: the round trip

@pytest.mark.parametrize("level", ["factors", "delta_W"])
def test_full_k_rebuild_equals_original(zoo, level):
    _, adapters = zoo
    zb = lora.fit_zoo_basis(adapters, level=level)
    assert zb.k == len(adapters) - 1
    for a in adapters:
        rebuilt = lora.rebuild(zb, lora.project(zb, a), like=a)
        deltas = rebuilt.deltas() if level == "factors" else rebuilt
        for m in a.modules:
            assert rel(deltas[m], a.delta_W(m)) < 1e-5
            if level == "factors":
                assert rel(rebuilt.A[m], a.A[m]) < 1e-5 and rel(rebuilt.B[m], a.B[m]) < 1e-5


def test_controls(zoo):
    _, adapters = zoo
    zb = lora.fit_zoo_basis(adapters[:-1], level="delta_W")
    a, m = adapters[-1], adapters[0].modules[0]
    mean = lora.delta_stack(adapters[:-1], m).mean(0).reshape(a.delta_W(m).shape)
    assert torch.allclose(lora.reconstruct(zb, a, control="mean_only")[m], mean, atol=1e-7)
    full = lora.reconstruct(zb, a, k=zb.k)[m]
    err = [rel(lora.reconstruct(zb, a, k=k)[m], a.delta_W(m)) for k in range(1, zb.k + 1)]
    assert all(e2 <= e1 + 1e-6 for e1, e2 in zip(err, err[1:]))  # more directions never hurt in-span error
    x = a.delta_W(m)
    assert 0.01 < float((full - x).norm() / (x - mean).norm()) <= 1  # held out: only partly in the others' span
    basis_only = lora.reconstruct(zb, a, k=zb.k, control="basis_only")[m]
    V = zb.bases[(m, "delta_W")].components.float()
    x = a.delta_W(m).reshape(-1)
    assert torch.allclose(basis_only.reshape(-1), (x @ V.T) @ V, atol=1e-6)
    with pytest.raises(LoraError, match="control must be"):
        lora.reconstruct(zb, a, control="median")


def test_rebuilt_folder_loads_in_peft_with_same_logits(zoo, suite, tmp_path):
    from peft import PeftModel

    _, adapters = zoo
    zb = lora.fit_zoo_basis(adapters, level="factors", k=2)
    a = adapters[0]
    rebuilt = lora.rebuild(zb, lora.project(zb, a), like=a, name="rebuilt")
    assert rel(rebuilt.delta_W(a.modules[0]), a.delta_W(a.modules[0])) > 1e-4  # k=2 really changed it
    folder = lora.save_adapter(rebuilt, tmp_path / "rebuilt")
    task = next(t for t in suite if t.name == a.task)
    base, tok = base_for(task)
    with lora.applied(base, rebuilt.deltas(), rebuilt.extra):
        expected = logits(base, tok, task)
    loaded = PeftModel.from_pretrained(base_for(task)[0], folder).eval()
    assert torch.allclose(logits(loaded, tok, task), expected, atol=1e-5)
    again = lora.load_adapter(folder)
    assert all(torch.equal(again.A[m], rebuilt.A[m]) for m in a.modules)


def test_factors_from_deltas_is_exact_up_to_rank(zoo, tmp_path):
    _, adapters = zoo
    a = adapters[0]
    same = lora.factors_from_deltas(a.deltas(), a)
    for m in a.modules:
        assert rel(same.delta_W(m), a.delta_W(m)) < 1e-5
    merged = lora.merge(adapters, "mean_delta")
    low = lora.factors_from_deltas(merged, a, r=1)
    assert all(low.A[m].shape[0] == 1 for m in a.modules)
    assert lora.load_adapter(lora.save_adapter(low, tmp_path / "low")).r == 1
    with pytest.raises(LoraError, match="exceeds the size"):
        lora.factors_from_deltas(merged, a, r=10_000)


# ---------------------------------------------------------------- merging

def test_merges(zoo, suite, tmp_path):
    from peft import PeftModel

    entries, adapters = zoo
    m = adapters[0].modules[0]
    mean_f = lora.merge(adapters, "mean_factors")
    assert rel(lora.merge(adapters, "subspace")[m], mean_f[m]) < 1e-5  # centered subspace merge == mean
    assert rel(lora.merge(adapters, "subspace_uncentered", k=len(adapters))[m], mean_f[m]) < 1e-5
    assert rel(lora.merge(adapters, "subspace_uncentered", k=1)[m], mean_f[m]) > 1e-4
    manual = torch.stack([a.delta_W(m) for a in adapters]).mean(0)
    assert rel(lora.merge(adapters, "mean_delta")[m], manual) < 1e-5
    assert rel(lora.merge(adapters, "task_arithmetic", lam=0.5)[m], 0.5 * len(adapters) * manual) < 1e-5
    ties = lora.merge(adapters, "ties", density=0.2)[m]
    kept = (ties != 0).float().mean()
    assert 0 < kept < 1  # trimmed
    # task arithmetic equals PEFT's own add_weighted_adapter(..., "cat") on the same-head adapters
    pair = [a for a in adapters if a.task == suite[0].name]
    folders = [lora.save_adapter(lora.without_head(a), tmp_path / a.name) for a in pair]  # PEFT refuses heads
    peft_model = PeftModel.from_pretrained(base_for(suite[0])[0], folders[0], adapter_name="a0")
    peft_model.load_adapter(folders[1], adapter_name="a1")
    peft_model.add_weighted_adapter(["a0", "a1"], [0.3, 0.3], "cat", combination_type="cat")
    layer = peft_model.base_model.model.get_submodule(m)
    theirs = layer.get_delta_weight("cat")
    assert rel(lora.merge(pair, "task_arithmetic", lam=0.3)[m], theirs) < 1e-5
    with pytest.raises(LoraError, match="unknown merge method"):
        lora.merge(adapters, "average")


def test_experiment_rows(zoo, suite):
    _, adapters = zoo
    base, tok = base_for(suite[0])
    held = [a.name for a in adapters if a.task == suite[0].name]
    rows = lora.heldout_scores(base, tok, adapters, suite, ks=[1, 99], heldout=held, hold_out=["task", "none"],
                               progress=False)
    controls = {(r["hold_out"], r["level"], r["control"]) for r in rows}
    assert {("-", "-", "original"), ("-", "-", "none"), ("task", "factors", "basis"),
            ("task", "delta_W", "mean_only"), ("none", "delta_W", "basis_only")} <= controls
    assert max(r["k"] for r in rows if r["hold_out"] == "task") == 3  # capped: 4 adapters of 2 other tasks
    assert max(r["k"] for r in rows if r["hold_out"] == "none") == 5  # all 6 adapters, centered
    assert all(0 <= r["score"] <= 1 for r in rows)
    score = {(r["adapter"], r["hold_out"], r["level"], r["control"], r["k"]): r["score"] for r in rows}
    for name in held:  # in-sample at full k is the adapter itself
        assert score[(name, "none", "delta_W", "basis", 5)] == score[(name, "-", "-", "original", None)]
    with pytest.raises(LoraError, match="hold_out must be"):
        lora.heldout_scores(base, tok, adapters, suite, ks=[1], hold_out="seed")
    zb = lora.fit_zoo_basis(adapters[2:], level="factors")
    errs = lora.projection_errors(zb, adapters[:2], ks=[0, 1, 3])
    assert {r["side"] for r in errs} == {"A", "B"} and all(0 <= r["error"] <= 1 + 1e-6 for r in errs)
    merged = lora.merge_scores(base, tok, adapters, suite, methods=["mean_delta"], progress=False)
    assert {r["method"] for r in merged} == {"individual", "none", "mean_delta"} and len(merged) == 9


# ---------------------------------------------------------------- bad inputs

def _edited(adapter, **config):
    return replace(adapter, config={**adapter.config, **config})


def test_refuses_other_base_model(zoo):
    _, adapters = zoo
    other = _edited(adapters[1], base_model_name_or_path="bundled:smollm2")
    with pytest.raises(LoraError, match="base model 'bundled:smollm2'.*one base model"):
        lora.check_compatible([adapters[0], other])
    with pytest.raises(LoraError, match="base model"):
        lora.fit_zoo_basis([adapters[0], other])


def test_refuses_other_targets_and_ranks(suite):
    task = suite[0]
    made = {}
    for key, settings in {"ref": TINY, "targets": replace(TINY, target_modules=("query", "key")),
                          "rank": replace(TINY, r=4, alpha=8), "alpha": replace(TINY, alpha=16)}.items():
        model, tok = base_for(task)
        pm, _ = lora.train_adapter(model, tok, task, replace(settings, steps=0), base_name=MODEL)
        made[key] = lora.from_model(pm, name=key)
    with pytest.raises(LoraError, match="other target modules"):
        lora.check_compatible([made["ref"], made["targets"]])
    with pytest.raises(LoraError, match="rank r=4 but 'ref' has rank r=2"):
        lora.load_adapters([made["ref"], made["rank"]])
    with pytest.raises(LoraError, match="scaling"):
        lora.check_compatible([made["ref"], made["alpha"]])
    with pytest.raises(LoraError, match="target modules \\['nope'\\] are not linear layers"):
        lora.train_adapter(base_for(task)[0], None, task, replace(TINY, target_modules=("nope",)))


def test_refuses_other_shapes(zoo):
    _, adapters = zoo
    a = adapters[0]
    m = a.modules[0]
    wider = replace(a, name="wide", A={**a.A, m: torch.zeros(a.r, 512)})
    with pytest.raises(LoraError, match="another model shape"):
        lora.check_compatible([a, wider])


def test_bad_folders(zoo, tmp_path):
    entries, adapters = zoo
    with pytest.raises(LoraError, match="no adapter folder"):
        lora.load_adapter(tmp_path / "missing")
    (tmp_path / "empty").mkdir()
    with pytest.raises(LoraError, match="not a PEFT adapter folder: missing adapter_config.json"):
        lora.load_adapter(tmp_path / "empty")
    dora = lora.save_adapter(_edited(adapters[0], use_dora=True), tmp_path / "dora")
    with pytest.raises(LoraError, match="DoRA"):
        lora.load_adapter(dora)
    broken = lora.save_adapter(adapters[0], tmp_path / "broken")
    (broken / "adapter_config.json").write_text("{not json")
    with pytest.raises(LoraError, match="not valid JSON"):
        lora.load_adapter(broken)
    cfg = json.loads((entries[0].path / "adapter_config.json").read_text())
    wrong_r = lora.save_adapter(adapters[0], tmp_path / "wrong_r")
    (wrong_r / "adapter_config.json").write_text(json.dumps({**cfg, "r": 3}))
    with pytest.raises(LoraError, match="do not match its rank r=3"):
        lora.load_adapter(wrong_r)
    with pytest.raises(LoraError, match="no adapters given"):
        lora.check_compatible([])
    with pytest.raises(LoraError, match="cannot read an adapter from int"):
        lora.load_adapters([3])
    with pytest.raises(LoraError, match="level must be"):
        lora.fit_zoo_basis(adapters, level="weights")


# ---------------------------------------------------------------- causal LM path (a tiny random Llama)

def test_generation_training_masks_prompt_and_predicts():
    from transformers import LlamaConfig, LlamaForCausalLM

    _, tok = load_model(MODEL, kind="encoder")
    tok.eos_token = tok.sep_token
    tok.model_input_names = ["input_ids", "attention_mask"]  # a causal LM takes no token_type_ids
    gen = tasks.generation_tasks(seed=0, n_train=8, n_test=4)[0]
    data = lora._generation_batches(tok, gen, list(gen.train), 64)
    ex = gen.train[0]
    n_prompt = len(tok(tasks.prompt(gen, ex))["input_ids"])
    target = tok(tasks.completion(ex), add_special_tokens=False)["input_ids"] + [tok.eos_token_id]
    assert (data["labels"][0, :n_prompt] == -100).all()
    assert data["labels"][0, n_prompt:n_prompt + len(target)].tolist() == target
    torch.manual_seed(0)
    config = LlamaConfig(vocab_size=tok.vocab_size, hidden_size=32, intermediate_size=64, num_hidden_layers=2,
                         num_attention_heads=4, num_key_value_heads=4, pad_token_id=tok.pad_token_id,
                         eos_token_id=tok.eos_token_id, bos_token_id=tok.cls_token_id)
    settings = replace(TINY, target_modules=("q_proj", "v_proj"), steps=4, max_length=64)
    pm, losses = lora.train_adapter(LlamaForCausalLM(config), tok, gen, settings)
    assert len(losses) == 4 and all(torch.isfinite(torch.tensor(losses)))
    answers = lora.predict(pm, tok, gen)
    assert len(answers) == len(gen.test) and all(isinstance(s, str) for s in answers)
    assert len(lora.from_model(pm).modules) == 4


def test_cli_command_registered():
    from shared_subspace import cli

    cli._register_all()
    help_, run = cli.COMMANDS["lora-zoo"]
    assert run.builds_cache and "LoRA" in help_
    import argparse

    parser = argparse.ArgumentParser()
    run.add_arguments(parser)
    args = parser.parse_args(["--fast", "--model", "smollm2", "--rebuild"])
    assert args.fast and args.rebuild and args.model == "smollm2"
    assert lora.preset("minilm", fast=True).r <= lora.preset("minilm", fast=False).r
    with pytest.raises(LoraError, match="no preset for model"):
        lora.preset("gpt5")
