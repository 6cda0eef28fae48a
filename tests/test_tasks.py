"""Task suites: distinct, deterministic, well-formed; JSONL validation; base scores and default streams."""
import json

import pytest

from shared_subspace import tasks
from shared_subspace.tasks import Example, TaskFormatError, TextTask


@pytest.fixture(scope="module")
def gen():
    return tasks.generation_tasks(seed=0, n_train=32, n_test=16)


@pytest.fixture(scope="module")
def cls():
    return tasks.classification_tasks(seed=0, n_train=48, n_test=24)


def test_suites_are_large_distinct_and_well_formed(gen, cls):
    assert len({t.name for t in gen}) == len(gen) >= 12
    assert len({t.name for t in cls}) == len(cls) >= 8
    for t in gen + cls:
        assert t.kind in tasks.KINDS and t.description
        assert len(t.train) == (32 if t.kind == "generation" else 48)
        assert not {e.input for e in t.train} & {e.input for e in t.test}, f"{t.name}: train/test overlap"
    for t in cls:
        targets = [e.target for e in t.train + t.test]
        assert set(targets) == set(t.labels), t.name
        counts = [targets.count(label) for label in t.labels]
        assert max(counts) - min(counts) <= len(t.labels), f"{t.name}: labels unbalanced {counts}"
    # distinct tasks: the same inputs would get different targets
    assert len({tuple(e.target for e in t.test) for t in gen}) == len(gen)


def test_deterministic_by_seed(gen, cls):
    assert tasks.generation_tasks(seed=0, n_train=32, n_test=16) == gen
    assert tasks.classification_tasks(seed=0, n_train=48, n_test=24) == cls
    other = tasks.generation_tasks(seed=1, n_train=32, n_test=16)
    assert all(a.train != b.train for a, b in zip(gen, other))


def test_generation_targets_letter_level(gen):
    by_name = {t.name: t for t in gen}
    rule = dict((name, f) for name, (_, f) in tasks.GENERATION.items())
    for name in ("uppercase", "reverse", "sort_letters", "double_letters"):
        for e in by_name[name].test:
            word = e.input.replace(" ", "")
            assert e.input == " ".join(word) and e.target == " ".join(rule[name](word))
    e = by_name["swap_case"].test[0]
    assert e.target == e.input.swapcase()
    assert all(e.target in tasks.NUMBER_WORDS for e in by_name["count_letters"].test)
    assert tasks.prompt(by_name["reverse"], Example("k e e p", "p e e k")) == \
        "Write the letters in reverse order.\nInput: k e e p\nOutput:"
    assert tasks.completion(Example("k e e p", "p e e k")) == " p e e k"


def test_score_exact_match_on_first_line():
    t = TextTask("t", "generation", "d", (Example("a", "A"),), (Example("a", "A"), Example("b", "B b")))
    assert t.score([" A\nInput: c", "B b"]) == 1.0
    assert t.score(["a", "B b "]) == 0.5
    with pytest.raises(ValueError, match="1 predictions for 2 test examples"):
        t.score(["A"])


def test_comparison_and_order_labels_follow_the_sentence(cls):
    by_name = {t.name: t for t in cls}
    for e in by_name["comparison"].train + by_name["order"].train:
        names = ("red", "blue") if e.target in ("red", "blue") else ("alice", "bob")
        words = e.input.replace(",", "").split()
        first = min(names, key=words.index)           # the one named first
        second = names[1] if first == names[0] else names[0]
        forward = any(w in words for w in ("heavier", "more", "outweighs")) or \
            ("before" in words and words.index("before") > words.index(first)) or \
            ("after" in words and words.index("after") < words.index(first))
        assert e.target == (first if forward else second), e


# ---------------------------------------------------------------- JSONL

def write(folder, name, lines):
    path = folder / name
    path.write_text("\n".join(line if isinstance(line, str) else json.dumps(line) for line in lines) + "\n")
    return path


def test_shipped_example_folder_loads():
    loaded = {t.name: t for t in tasks.load_jsonl_tasks(tasks.example_tasks_folder())}
    assert loaded["animal_or_plant"].labels == ("animal", "plant")
    assert loaded["capital_city"].kind == "generation" and len(loaded["capital_city"].test) == 3


def test_jsonl_defaults_split_and_labels(tmp_path):
    rows = [{"input": f"x{i}", "target": "yes" if i % 2 else "no"} for i in range(10)]
    write(tmp_path, "mine.jsonl", [{"kind": "classification"}] + rows)
    (t,) = tasks.load_jsonl_tasks(tmp_path)
    assert (t.name, t.labels, len(t.train), len(t.test)) == ("mine", ("no", "yes"), 8, 2)


@pytest.mark.parametrize("lines, message", [
    ([{"input": "a", "target": "b"}, {"input": "c"}], r"bad\.jsonl:2: missing field 'target'"),
    ([], r"bad\.jsonl: empty file"),
    (["", "   "], r"bad\.jsonl: empty file"),
    ([{"input": "a", "target": "b"}, "{not json"], r"bad\.jsonl:2: not valid JSON"),
    ([{"kind": "regression"}, {"input": "a", "target": "b"}], r"bad\.jsonl:1: unknown kind 'regression'"),
    ([{"input": "a", "target": "b"}, {"kind": "generation"}], r"bad\.jsonl:2: a header line .* only be the first"),
    ([{"kind": "classification", "labels": ["x", "y"]}, {"input": "a", "target": "z"}],
     r"bad\.jsonl:2: target 'z' is not among the labels"),
    ([{"input": "a", "target": "b", "split": "dev"}], r"bad\.jsonl:1: unknown split 'dev'"),
    ([{"input": "a", "target": ""}], r"bad\.jsonl:1: field 'target' must be a non-empty string"),
    ([{"input": "a", "target": "b", "split": "train"}], r"bad\.jsonl: needs at least one train and one test"),
    (["[1, 2]"], r"bad\.jsonl:1: expected a JSON object"),
])
def test_jsonl_errors_name_file_and_line(tmp_path, lines, message):
    write(tmp_path, "bad.jsonl", lines)
    with pytest.raises(TaskFormatError, match=message):
        tasks.load_jsonl_tasks(tmp_path)


def test_jsonl_folder_errors(tmp_path):
    with pytest.raises(TaskFormatError, match="no such folder"):
        tasks.load_jsonl_tasks(tmp_path / "nope")
    with pytest.raises(TaskFormatError, match=r"no \*\.jsonl files"):
        tasks.load_jsonl_tasks(tmp_path)


# ---------------------------------------------------------------- base scores

def test_probe_scores_cached_by_fingerprint(tmp_path, monkeypatch, cls):
    monkeypatch.setenv("SHARED_SUBSPACE_CACHE", str(tmp_path))
    two = [t for t in cls if t.name in ("formality", "comparison")]
    scores = tasks.base_scores(two)
    assert scores["formality"] > 0.9          # a frozen encoder + linear head solves formality ...
    assert scores["comparison"] < 0.8         # ... but not the red/blue XOR of word order and comparative
    monkeypatch.setattr(tasks, "probe_scores", lambda *a: pytest.fail("cache not used"))
    assert tasks.base_scores(two) == scores


def test_generation_base_scores_run_the_base_lm(tmp_path, monkeypatch):
    from shared_subspace.models import smollm2_folder
    folder = str(smollm2_folder())             # the converted model from the usual cache
    monkeypatch.setenv("SHARED_SUBSPACE_CACHE", str(tmp_path))
    (t,) = [t for t in tasks.generation_tasks(n_train=1, n_test=4) if t.name == "reverse"]
    score = tasks.base_scores([t], model=folder)["reverse"]
    assert 0.0 <= score <= 1.0 and list(tmp_path.glob("tasks/base_generation_*.json"))


def test_default_stream_drops_tasks_the_base_solves(monkeypatch):
    fake = lambda ts, model=None: {t.name: (0.99 if t.name in ("formality", "emotion") else 0.5) for t in ts}
    monkeypatch.setattr(tasks, "base_scores", fake)
    names = [t.name for t in tasks.default_stream("classification", n_train=8, n_test=8)]
    assert "formality" not in names and "emotion" not in names and len(names) == len(tasks.CLASSIFICATION) - 2
    with pytest.raises(ValueError, match="unknown kind 'vision'"):
        tasks.default_stream("vision")
