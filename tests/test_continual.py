"""The continual engine: R's layout, JSON, checkpoints, a really killed run resumed, bad streams."""
import os
import subprocess
import sys
import textwrap
from dataclasses import dataclass

import numpy as np
import pytest

from shared_subspace import continual
from shared_subspace.continual import ConfigMismatchError, StreamResult, run_stream


@dataclass(frozen=True)
class Toy:
    name: str
    test: tuple = ("x",)


class Remember:
    """Scores 1 on learned tasks, forgetting a fraction `decay` of each per later task."""

    name = "remember"

    def __init__(self, decay=0.25, seed=0):
        self.decay, self.seed, self.learned = decay, seed, []

    def config(self):
        return {"decay": self.decay, "seed": self.seed}

    def learn(self, task_id, task):
        self.learned.append(task_id)

    def score(self, task_id, task):
        if task_id not in self.learned:
            return 0.5
        return max(0.0, 1.0 - self.decay * (len(self.learned) - 1 - self.learned.index(task_id)))

    def storage(self):
        return {"shared": 1, "per_task": 2.0, "total": 1 + 2 * len(self.learned)}

    def state_dict(self):
        return {"learned": list(self.learned)}

    def load_state_dict(self, state):
        self.learned = list(state["learned"])


STREAM = [Toy("a"), Toy("b"), Toy("c")]


def test_R_layout_and_metrics():
    res = run_stream(Remember(), STREAM, progress=False)
    expected = np.array([[1.0, 0.5, np.nan], [0.75, 1.0, 0.5], [0.5, 0.75, 1.0]])
    np.testing.assert_allclose(res.R, expected)
    np.testing.assert_allclose(res.base, [0.5, 0.5, 0.5])
    m = res.metrics()
    assert m["ACC"] == pytest.approx(0.75) and m["BWT"] == pytest.approx(-0.375) and m["FWT"] == 0.0
    assert res.names == ["a", "b", "c"] and res.storage["total"] == 7 and res.threads >= 1
    assert res.config["method_config"] == {"decay": 0.25, "seed": 0} and len(res.task_times) == 3


def test_no_forward_transfer_leaves_nan_above_diagonal():
    res = run_stream(Remember(), STREAM, progress=False, forward_transfer=False, measure_base=False)
    assert np.isnan(res.R[np.triu_indices(3, 1)]).all() and np.isnan(res.base).all()
    assert np.isnan(res.metrics()["FWT"])


def test_json_round_trip(tmp_path):
    res = run_stream(Remember(), STREAM, progress=False, forward_transfer=False)
    back = StreamResult.load(res.save(tmp_path / "r.json"))
    np.testing.assert_array_equal(back.R, res.R)
    assert back.config == res.config and back.metrics() == pytest.approx(res.metrics(), nan_ok=True)


def test_checkpoint_resume_in_process(tmp_path):
    calls = []
    run_stream(Remember(), STREAM[:2], progress=False, checkpoint_dir=tmp_path)   # another stream ...
    with pytest.raises(ConfigMismatchError, match="another configuration.*tasks"):
        run_stream(Remember(), STREAM, progress=False, checkpoint_dir=tmp_path)
    with pytest.raises(ConfigMismatchError, match="decay"):                       # ... another config
        run_stream(Remember(decay=0.5), STREAM[:2], progress=False, checkpoint_dir=tmp_path)
    method = Remember()
    res = run_stream(method, STREAM[:2], progress=False, checkpoint_dir=tmp_path,
                     on_task_end=lambda i, r: calls.append(i))
    assert calls == [] and method.learned == [0, 1]            # finished: nothing retrained
    assert res.R[1, 0] == 0.75


@pytest.mark.parametrize("stream, error, msg", [
    ([], ValueError, "empty stream"),
    ([Toy("a"), Toy("b", test=())], ValueError, "'b'.*no test examples"),
    ([Toy("a"), Toy("b"), Toy("a")], ValueError, "repeats task name 'a'.*positions 0 and 2"),
    ([Toy("")], TypeError, "no name"),
])
def test_bad_streams(stream, error, msg):
    with pytest.raises(error, match=msg):
        run_stream(Remember(), stream, progress=False)


def test_bad_methods():
    with pytest.raises(TypeError, match="Method interface"):
        run_stream(object(), STREAM, progress=False)

    class Over(Remember):
        def score(self, task_id, task):
            return 2.0
    with pytest.raises(ValueError, match=r"\[0, 1\]"):
        run_stream(Over(), STREAM, progress=False)


KILLABLE = textwrap.dedent("""
    import os, sys
    from shared_subspace import baselines, continual, runtime, streams
    runtime.set_threads(1)

    def run(ckpt, out, die_after=None):
        mlp, tasks = streams.digits_stream(4)
        method = baselines.SequentialLoRA(baselines.DigitsBackbone(mlp), epochs=2, batch_size=128)
        learned = []
        learn = method.learn
        method.learn = lambda i, t: (learned.append(i), learn(i, t))
        def maybe_die(i, partial):
            if die_after == i:
                os._exit(17)          # a hard kill: no cleanup, no finally
        continual.run_stream(method, tasks, checkpoint_dir=ckpt, progress=False, on_task_end=maybe_die).save(out)
        return learned

    if __name__ == "__main__":
        die = os.environ.get("DIE_AFTER")
        print("learned", run(sys.argv[1], sys.argv[2], int(die) if die else None))
""")


def _run(script, ckpt, out, **env):
    return subprocess.run([sys.executable, "-c", script, str(ckpt), str(out)], capture_output=True, text=True,
                          env={**os.environ, **env}, timeout=300)


def test_killed_run_resumes_and_loses_nothing(tmp_path):
    killed = _run(KILLABLE, tmp_path / "ckpt", tmp_path / "a.json", DIE_AFTER="1")
    assert killed.returncode == 17, killed.stderr
    assert (tmp_path / "ckpt" / continual.CHECKPOINT_NAME).exists() and not (tmp_path / "a.json").exists()
    resumed = _run(KILLABLE, tmp_path / "ckpt", tmp_path / "a.json")
    assert resumed.returncode == 0, resumed.stderr
    assert "learned [2, 3]" in resumed.stdout                  # tasks 0 and 1 were not retrained
    namespace = {"__name__": "killable"}
    exec(KILLABLE, namespace)                                   # the same run, uninterrupted, in this process
    assert namespace["run"](tmp_path / "ckpt2", tmp_path / "b.json") == [0, 1, 2, 3]
    a, b = StreamResult.load(tmp_path / "a.json"), StreamResult.load(tmp_path / "b.json")
    np.testing.assert_allclose(a.R, b.R, atol=1e-6)            # same numbers as an uninterrupted run
    assert a.metrics()["BWT"] < 0 and len(a.task_times) == 4
