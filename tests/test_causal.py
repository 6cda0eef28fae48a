"""The causal-LM backbone: generation tasks through the continual engine (SequentialLoRA, Share)."""
import pytest
import torch

from shared_subspace import baselines, continual, lora, share, streams, tasks


@pytest.fixture(scope="module")
def backbone():
    return baselines.CausalBackbone("bundled:smollm2")


@pytest.fixture(scope="module")
def stream():
    return streams.causal_stream(2, n_train=24, n_test=12)


def test_data_trains_only_on_the_completion(backbone, stream):
    inputs, y = backbone.data(stream[0], "train")
    ids, mask = inputs["input_ids"], inputs["attention_mask"]
    assert y.shape == (ids.shape[0], ids.shape[1] - 1)
    for i in range(3):
        supervised = (y[i] != -100).nonzero().flatten()
        # the supervised positions are contiguous, end at the last real token, and predict it (EOS)
        assert torch.equal(supervised, torch.arange(supervised[0], supervised[-1] + 1))
        last = int(mask[i].sum()) - 1
        assert supervised[-1] == last - 1 and y[i, last - 1] == backbone.tokenizer.eos_token_id
        text = backbone.tokenizer.decode(y[i, supervised[:-1]])
        assert text.strip() == stream[0].train[i].target
    logits = backbone.logits(backbone.model, {k: v[:2] for k, v in inputs.items()})
    assert logits.shape == (2, backbone.model.config.vocab_size, ids.shape[1] - 1) and logits.dtype == torch.float32


def test_teacher_forced_exact_match_equals_greedy_generation(backbone, stream):
    m = baselines.PerTaskLoRA(backbone, r=8, alpha=16, epochs=3, lr=3e-3, batch_size=8)
    m.learn(0, stream[0])
    inputs, y = backbone.data(stream[0], "test")
    with torch.no_grad():
        pred = backbone.predict(m.model, inputs)
    per_example = ((pred == y) | (y == -100)).all(1).tolist()
    answers = lora.predict(m.model, backbone.tokenizer, stream[0])
    assert per_example == [a == e.target for a, e in zip(answers, stream[0].test)]
    assert 0 < sum(per_example)                                 # a real check: some answers are right
    assert m.score(0, stream[0]) == pytest.approx(sum(per_example) / len(per_example))


def test_share_runs_on_a_causal_lm(backbone, stream):
    m = share.Share(backbone, k=8, p=2, n_init=1, lr=3e-2, init_lr=3e-3, batch_size=8, epochs=1)
    result = continual.run_stream(m, stream, progress=False, forward_transfer=False, measure_base=False)
    assert result.R.shape == (2, 2) and not torch.isnan(torch.tensor(result.R[1])).any()
    lora_r8 = baselines.n_params(baselines.SequentialLoRA(backbone, r=8).lora.values())   # one r=8 adapter
    assert m.storage()["per_task"] < lora_r8 / 10


def test_refuses_classification_tasks_and_unknown_streams(backbone):
    task = tasks.classification_tasks(n_train=8, n_test=8)[0]
    with pytest.raises(ValueError, match="is a classification task: a CausalBackbone learns generation tasks"):
        backbone.data(task, "train")
    with pytest.raises(ValueError, match="n_tasks must be between 1 and 6"):
        streams.causal_stream(7)
    with pytest.raises(ValueError, match="unknown stream 'audio'"):
        share.setup("audio")
