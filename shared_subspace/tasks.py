"""Text task suites behind one interface: name, train/test examples, exact-match score.

    generation_tasks(seed)       >= 12 letter-level tasks for a causal LM ("k e e p" -> "p e e k")
    classification_tasks(seed)   >= 8 sentence-classification tasks for an encoder
    load_jsonl_tasks(folder)     a user's own tasks, one JSONL file per task (docs/jsonl_tasks.md)
    base_scores(tasks)           what the model scores before any adapter (cached)
    default_stream(kind)         the tasks the base model does not already solve

Everything is generated offline from `shared_subspace/data/lexicons.json` and a seed: the same
seed gives the same examples on every machine (`random.Random(f"{task}:{seed}")`).

Generation tasks work on space-separated letters. In a prototype, SmolLM2-135M with a rank-8 LoRA
learned uppercase and reversal to > 90% exact match in ~20 steps only with letters spaced out
(each letter its own token); word-level reversal, digit addition and next-letter did not get there.

A causal LM sees `prompt(task, example)` and should continue with `completion(example)`:

    Reverse the letters.            <- task.description
    Input: k e e p
    Output: p e e k                 <- " " + target
"""
from __future__ import annotations

import hashlib
import json
import random
from dataclasses import dataclass
from functools import lru_cache
from importlib import resources
from pathlib import Path
from typing import Callable, Sequence

from . import runtime
from .cli import command

KINDS = ("generation", "classification")
PROBE_THRESHOLD = 0.95   # a frozen encoder + linear head above this: the task teaches nothing about adapters
BASE_THRESHOLD = 0.90    # a base model above this already solves the task


@dataclass(frozen=True)
class Example:
    input: str
    target: str


@dataclass(frozen=True)
class TextTask:
    name: str
    kind: str                     # "generation" | "classification"
    description: str
    train: tuple[Example, ...]
    test: tuple[Example, ...]
    labels: tuple[str, ...] = ()  # classification: the label names; targets are among them

    def score(self, predictions: Sequence[str]) -> float:
        """Exact match against the test targets: mean_i [normalize(pred_i) == target_i], in [0, 1]."""
        if len(predictions) != len(self.test):
            raise ValueError(f"task {self.name!r}: {len(predictions)} predictions for {len(self.test)} test examples")
        return sum(normalize(p) == e.target.strip() for p, e in zip(predictions, self.test)) / max(len(self.test), 1)

    def fingerprint(self) -> str:
        """A short hash of the task's content (names a cached result)."""
        text = json.dumps([self.name, self.kind, self.description, self.labels,
                           [(e.input, e.target) for e in self.train + self.test]])
        return hashlib.sha1(text.encode()).hexdigest()[:16]


def normalize(prediction: str) -> str:
    """The first non-empty line of a prediction, stripped (a causal LM may keep talking after it)."""
    lines = [line.strip() for line in str(prediction).strip().splitlines()]
    return next((line for line in lines if line), "")


def prompt(task: TextTask, example: Example) -> str:
    """The text a causal LM sees for a generation example; the answer follows as completion()."""
    return f"{task.description}\nInput: {example.input}\nOutput:"


def completion(example: Example) -> str:
    """What the causal LM should write after prompt(): a space, then the target."""
    return " " + example.target


@lru_cache(maxsize=1)
def lexicons() -> dict:
    """The word lists shipped in shared_subspace/data/lexicons.json."""
    return json.loads(resources.files("shared_subspace").joinpath("data/lexicons.json").read_text())


def _build(name: str, kind: str, description: str, make: Callable[[random.Random, str], tuple[str, str]],
           labels: Sequence[str], seed: int, n_train: int, n_test: int) -> TextTask:
    """Draw n_train + n_test distinct examples; classification labels are balanced (round robin).

    make(rng, label) -> (input, target); for generation tasks `labels` is [""] and ignored.
    """
    rng = random.Random(f"{name}:{seed}")
    seen, examples = set(), []
    for _ in range(50 * (n_train + n_test)):
        if len(examples) == n_train + n_test:
            break
        x, y = make(rng, labels[len(examples) % len(labels)])
        if x not in seen:
            seen.add(x)
            examples.append(Example(x, y))
    else:
        raise ValueError(f"task {name!r}: could not draw {n_train + n_test} distinct examples")
    rng.shuffle(examples)
    return TextTask(name, kind, description, tuple(examples[:n_train]), tuple(examples[n_train:]),
                    tuple(labels) if kind == "classification" else ())


# ---------------------------------------------------------------- generation tasks

VOWELS = "aeiou"
CONSONANTS = "bcdfghjklmnpqrstvwxyz"
NUMBER_WORDS = ("zero", "one", "two", "three", "four", "five", "six", "seven", "eight", "nine", "ten")


def _word(rng: random.Random) -> str:
    """A random 3-6 letter pseudo-word with at least one vowel and one consonant."""
    while True:
        w = "".join(rng.choice(VOWELS) if rng.random() < 0.4 else rng.choice(CONSONANTS)
                    for _ in range(rng.randint(3, 6)))
        if any(c in VOWELS for c in w) and any(c not in VOWELS for c in w):
            return w


def _spaced(letters) -> str:
    return " ".join(letters)


GENERATION = {  # name -> (instruction, f(word) -> target letters); the input is the spaced word
    "uppercase": ("Write the letters in uppercase.", lambda w: w.upper()),
    "reverse": ("Write the letters in reverse order.", lambda w: w[::-1]),
    "first_letter": ("Write only the first letter.", lambda w: w[0]),
    "last_letter": ("Write only the last letter.", lambda w: w[-1]),
    "double_letters": ("Write every letter twice.", lambda w: "".join(c + c for c in w)),
    "sort_letters": ("Sort the letters alphabetically.", lambda w: "".join(sorted(w))),
    "drop_vowels": ("Remove the vowels.", lambda w: "".join(c for c in w if c not in VOWELS)),
    "vowels_only": ("Keep only the vowels.", lambda w: "".join(c for c in w if c in VOWELS)),
    "rotate_left": ("Move the first letter to the end.", lambda w: w[1:] + w[0]),
    "repeat_word": ("Write the letters two times.", lambda w: w + w),
    "capitalize_first": ("Capitalize the first letter.", lambda w: w[0].upper() + w[1:]),
    "first_and_last": ("Write the first and the last letter.", lambda w: w[0] + w[-1]),
    "alternate_case": ("Uppercase every other letter, starting with the first.",
                       lambda w: "".join(c.upper() if i % 2 == 0 else c for i, c in enumerate(w))),
    "reverse_uppercase": ("Write the letters in reverse order and in uppercase.", lambda w: w[::-1].upper()),
}


def _generation_example(rule):
    def make(rng, _label):
        w = _word(rng)
        return _spaced(w), _spaced(rule(w))
    return make


def _swap_case(rng, _label):
    w = "".join(c.upper() if rng.random() < 0.5 else c for c in _word(rng))
    return _spaced(w), _spaced(w.swapcase())


def _count_letters(rng, _label):
    w = _word(rng)
    return _spaced(w), NUMBER_WORDS[len(w)]


def generation_tasks(seed: int = 0, n_train: int = 256, n_test: int = 64) -> list[TextTask]:
    """16 letter-level tasks on random pseudo-words; inputs are spaced letters ("k e e p")."""
    tasks = [_build(name, "generation", instruction, _generation_example(rule), [""], seed, n_train, n_test)
             for name, (instruction, rule) in GENERATION.items()]
    tasks.append(_build("swap_case", "generation", "Swap upper and lower case.", _swap_case,
                        [""], seed, n_train, n_test))
    tasks.append(_build("count_letters", "generation", "How many letters? Answer with a word.",
                        _count_letters, [""], seed, n_train, n_test))
    return tasks


# ---------------------------------------------------------------- classification tasks

def _number_words(n: int) -> str:
    L = lexicons()
    return L["units"][n] if n < 20 else (L["tens"][n // 10] + ("-" + L["units"][n % 10] if n % 10 else ""))


def _topic(rng, label):
    L = lexicons()
    other = rng.choice([t for t in L["topics"] if t != label])
    text = rng.choice(L["topic_templates"]).format(name=rng.choice(L["names"]), noun=rng.choice(L["topics"][label]),
                                                   when=rng.choice(L["when"]))
    distractor = rng.choice(L["distractors"]).format(other=rng.choice(L["topics"][other]))
    return (f"{distractor} {text}" if rng.random() < 0.5 else f"{text} {distractor}"), label


def _sentiment(rng, label):
    L = lexicons()
    flip = {"positive": "negative", "negative": "positive"}
    thing = rng.choice(L["things"])
    form = rng.randrange(4)
    if form == 0:     # plain
        return f"the {thing} was {rng.choice(L[label])}", label
    if form == 1:     # negated: "not awful" reads positive
        return f"the {thing} was not {rng.choice(L[flip[label]])} at all", label
    if form == 2:     # contrast: the clause after "but" decides
        return f"i expected the {thing} to be {rng.choice(L[flip[label]])} but it was {rng.choice(L[label])}", label
    return f"nobody could call the {thing} {rng.choice(L[flip[label]])}", label


def _question(rng, label):
    L = lexicons()
    v, name, obj = rng.choice(L["verbs"]), rng.choice(L["names"]), rng.choice(L["objects"])
    aux, verb = rng.choice([("did", v["base"]), ("has", v["part"]), ("can", v["base"]), ("will", v["base"]),
                            ("should", v["base"]), ("could", v["base"])])
    tail = rng.choice(["", " today", " again", " after lunch", " for us"])
    if label == "question":
        return f"{aux} {name} {verb} the {obj}{tail}", label
    return f"{name} {aux} {verb} the {obj}{tail}", label


def _negation(rng, label):
    """Did the event happen? Double negations make single negation words unreliable."""
    L = lexicons()
    v, name, obj = rng.choice(L["verbs"]), rng.choice(L["names"]), rng.choice(L["objects"])
    happened = [f"{name} {v['past']} the {obj}", f"it is not true that {name} never {v['past']} the {obj}",
                f"{name} did not fail to {v['base']} the {obj}", f"{name} certainly {v['past']} the {obj}",
                f"no one doubts that {name} {v['past']} the {obj}"]
    not_happened = [f"{name} did not {v['base']} the {obj}", f"{name} never {v['past']} the {obj}",
                    f"it is not true that {name} {v['past']} the {obj}", f"{name} failed to {v['base']} the {obj}",
                    f"no one saw {name} {v['base']} the {obj} because it never happened"]
    return rng.choice(happened if label == "happened" else not_happened), label


def _tense(rng, label):
    """Tense of the main clause; a subordinate clause in another tense comes before or after it."""
    L = lexicons()
    (v, w), (name, name2) = rng.sample(L["verbs"], 2), rng.sample(L["names"], 2)
    form = {"past": lambda v: v["past"], "present": lambda v: v["third"], "future": lambda v: "will " + v["base"]}
    other = rng.choice([t for t in form if t != label])
    main = f"{name} {form[label](v)} the {rng.choice(L['objects'])}"
    sub = f"{name2} {form[other](w)} the {rng.choice(L['objects'])}"
    conj = rng.choice(["because", "although", "even if", "while"])
    return (f"{main} {conj} {sub}" if rng.random() < 0.5 else f"{conj} {sub}, {main}"), label


def _agreement(rng, label):
    """Is the one who acted singular or plural? A noun of the other number stands before or after it."""
    L = lexicons()
    head, other, place = *rng.sample(L["nouns"], 2), rng.choice(L["places"])
    actor = head["many"] if label == "plural" else head["one"]
    bystander = other["one"] if label == "plural" else other["many"]
    verb = rng.choice(L["intransitive_past"])
    return rng.choice([f"the {actor} near the {bystander} {verb}",
                       f"next to the {bystander} at the {place}, the {actor} {verb}",
                       f"the {bystander} watched while the {actor} {verb}",
                       f"the {bystander} said that the {actor} {verb}"]), label


def _formality(rng, label):
    L = lexicons()
    return rng.choice(L[label]).format(verb=rng.choice(L["verbs"])["base"], object=rng.choice(L["objects"])), label


def _parity(rng, label):
    L = lexicons()
    n = rng.randrange(2, 100)
    if (n % 2 == 0) != (label == "even"):
        n += 1 if n < 99 else -1
    return f"{rng.choice(L['names'])} has {_number_words(n)} {rng.choice(L['countables'])}", label


def _comparison(rng, label):
    """Which box is heavier, the red or the blue one? Word order and the comparative both matter (XOR)."""
    L = lexicons()
    box = rng.choice(L["containers"])
    light = "blue" if label == "red" else "red"
    a, b = (label, light) if rng.random() < 0.5 else (light, label)   # a is named first
    more = a == label
    return rng.choice([f"the {a} {box} is {'heavier' if more else 'lighter'} than the {b} one",
                       f"the {a} {box} weighs {'more' if more else 'less'} than the {b} one",
                       f"the {a} {box} {'outweighs' if more else 'is outweighed by'} the {b} one"]), label


def _order(rng, label):
    """Who arrived first, alice or bob? 'before'/'after' and the order of the names both matter (XOR)."""
    second = "bob" if label == "alice" else "alice"
    a, b = (label, second) if rng.random() < 0.5 else (second, label)   # a is named first
    event = rng.choice(["arrived", "left the party", "finished the race", "woke up", "called home"])
    rel = "before" if a == label else "after"
    return rng.choice([f"{a} {event} {rel} {b} did", f"{rel} {b} {event.split()[0]}, {a} had already {event}"
                       if rel == "before" else f"{a} {event} {rel} {b} had"]), label


def _count(rng, label):
    L = lexicons()
    k = NUMBER_WORDS.index(label)
    items = rng.sample(L["items"], k)
    return f"in the basket: {', '.join(items[:-1])} and {items[-1]}", label


def _emotion(rng, label):
    L = lexicons()
    return f"{rng.choice(L['names'])} felt {rng.choice(L['emotions'][label])} {rng.choice(L['emotion_causes'])}", label


CLASSIFICATION = {  # name -> (description, make, labels)
    "topic": ("topic of a templated sentence (sports, food, tech, weather) with a distractor phrase from another topic",
              _topic, ("sports", "food", "tech", "weather")),
    "sentiment": ("sentiment from a small lexicon, with negation ('not awful') and contrast ('expected X but it was Y')",
                  _sentiment, ("positive", "negative")),
    "question": ("question or statement, without punctuation: only word order tells ('did bob fix' / 'bob did fix')",
                 _question, ("question", "statement")),
    "negation": ("did the event happen? single and double negations ('it is not true that X never ...')",
                 _negation, ("happened", "not_happened")),
    "tense": ("tense of the main clause (past, present, future); a subordinate clause has another tense",
              _tense, ("past", "present", "future")),
    "agreement": ("is the noun that acted singular or plural? a noun of the other number stands nearby",
                  _agreement, ("singular", "plural")),
    "formality": ("formal or informal request", _formality, ("formal", "informal")),
    "parity": ("is the number written in words even or odd ('has thirty-seven stamps')",
               _parity, ("even", "odd")),
    "comparison": ("which box is heavier, the red or the blue one? comparatives and word order flip it",
                   _comparison, ("red", "blue")),
    "order": ("who did it first, alice or bob? 'before'/'after' and the order of the names both matter",
              _order, ("alice", "bob")),
    "count": ("how many items are listed (two to five)", _count, ("two", "three", "four", "five")),
    "emotion": ("emotion word from a lexicon (joy, anger, fear, sadness)", _emotion,
                ("joy", "anger", "fear", "sadness")),
}


def _with_filler(make):
    """Half of the sentences get a neutral filler phrase before or after: noise for a mean-pooled probe."""
    def noisy(rng, label):
        text, target = make(rng, label)
        r = rng.random()
        if r < 0.25:
            return f"{rng.choice(lexicons()['fillers'])}, {text}", target
        if r < 0.5:
            return f"{text}, {rng.choice(lexicons()['fillers'])}", target
        return text, target
    return noisy


def classification_tasks(seed: int = 0, n_train: int = 256, n_test: int = 128) -> list[TextTask]:
    """12 sentence-classification tasks with balanced labels, generated from the shipped lexicons."""
    return [_build(name, "classification", description, _with_filler(make), labels, seed, n_train, n_test)
            for name, (description, make, labels) in CLASSIFICATION.items()]


# ---------------------------------------------------------------- JSONL task folders

class TaskFormatError(ValueError):
    """A JSONL task file that breaks the format (the message names the file and line)."""


SPLITS = ("train", "test")


def _read_jsonl(path: Path) -> TextTask:
    header, rows = {}, []
    lines = path.read_text(encoding="utf-8").splitlines()
    if not any(line.strip() for line in lines):
        raise TaskFormatError(f"{path}: empty file (expected one JSON object per line; see docs/jsonl_tasks.md)")
    for number, line in enumerate(lines, 1):
        if not line.strip():
            continue
        where = f"{path}:{number}"
        try:
            row = json.loads(line)
        except json.JSONDecodeError as exc:
            raise TaskFormatError(f"{where}: not valid JSON ({exc.msg})") from None
        if not isinstance(row, dict):
            raise TaskFormatError(f"{where}: expected a JSON object, got {type(row).__name__}")
        if "input" not in row and "target" not in row:   # a header line
            if rows or header:
                raise TaskFormatError(f"{where}: a header line (kind/description/labels) may only be the first line")
            unknown = set(row) - {"kind", "description", "labels"}
            if unknown:
                raise TaskFormatError(f"{where}: unknown header field(s) {sorted(unknown)}; "
                                      "allowed: kind, description, labels")
            if row.get("kind", "generation") not in KINDS:
                raise TaskFormatError(f"{where}: unknown kind {row['kind']!r}; choose one of {', '.join(KINDS)}")
            if not isinstance(row.get("labels", []), list) or not all(isinstance(x, str) for x in row.get("labels", [])):
                raise TaskFormatError(f"{where}: labels must be a list of strings")
            header = row
            continue
        for field in ("input", "target"):
            if field not in row:
                raise TaskFormatError(f"{where}: missing field {field!r} (each example needs input and target)")
            if not isinstance(row[field], str) or not row[field].strip():
                raise TaskFormatError(f"{where}: field {field!r} must be a non-empty string")
        if row.get("split", "train") not in SPLITS:
            raise TaskFormatError(f"{where}: unknown split {row['split']!r}; use 'train' or 'test'")
        rows.append((number, row))
    if not rows:
        raise TaskFormatError(f"{path}: no examples (lines with input and target)")
    kind = header.get("kind", "generation")
    labels = tuple(header.get("labels") or (sorted({r["target"] for _, r in rows}) if kind == "classification" else ()))
    for number, row in rows:
        if labels and row["target"] not in labels:
            raise TaskFormatError(f"{path}:{number}: target {row['target']!r} is not among the labels {list(labels)}")
    if any("split" in r for _, r in rows):
        train = [Example(r["input"], r["target"]) for _, r in rows if r.get("split", "train") == "train"]
        test = [Example(r["input"], r["target"]) for _, r in rows if r.get("split") == "test"]
    else:  # no splits given: every fifth example is a test example
        examples = [Example(r["input"], r["target"]) for _, r in rows]
        train = [e for i, e in enumerate(examples) if i % 5 != 4]
        test = [e for i, e in enumerate(examples) if i % 5 == 4]
    if not train or not test:
        raise TaskFormatError(f"{path}: needs at least one train and one test example "
                              f"(got {len(train)} train, {len(test)} test)")
    return TextTask(path.stem, kind, header.get("description", path.stem.replace("_", " ")),
                    tuple(train), tuple(test), labels)


def load_jsonl_tasks(folder: str | Path) -> list[TextTask]:
    """One TextTask per `*.jsonl` file in `folder` (sorted by name); the format is in docs/jsonl_tasks.md."""
    folder = Path(folder).expanduser()
    if not folder.is_dir():
        raise TaskFormatError(f"{folder}: no such folder of JSONL task files")
    paths = sorted(folder.glob("*.jsonl"))
    if not paths:
        raise TaskFormatError(f"{folder}: no *.jsonl files in this folder")
    return [_read_jsonl(p) for p in paths]


def example_tasks_folder() -> Path:
    """The shipped folder of example JSONL tasks (a template for your own)."""
    return Path(str(resources.files("shared_subspace").joinpath("data/jsonl_example")))


# ---------------------------------------------------------------- base-model scores

def probe_scores(tasks: Sequence[TextTask], model: str = "bundled:minilm") -> dict[str, float]:
    """Frozen encoder + linear head: logistic regression on mean-pooled embeddings, test accuracy per task."""
    from sklearn.linear_model import LogisticRegression
    from .models import embed, load_model

    encoder, tokenizer = load_model(model, kind="encoder")
    scores = {}
    for task in tasks:
        X_train = embed(encoder, tokenizer, [e.input for e in task.train]).numpy()
        X_test = embed(encoder, tokenizer, [e.input for e in task.test]).numpy()
        head = LogisticRegression(max_iter=2000).fit(X_train, [e.target for e in task.train])
        scores[task.name] = task.score(list(head.predict(X_test)))
    return scores


def generation_scores(tasks: Sequence[TextTask], model: str = "bundled:smollm2", batch_size: int = 32) -> dict[str, float]:
    """Exact match of the base causal LM's greedy answers to prompt(task, example), per task."""
    from .models import generate, load_model

    lm, tokenizer = load_model(model, kind="causal_lm")
    scores = {}
    for task in tasks:
        longest = max(len(tokenizer(e.target)["input_ids"]) for e in task.test)
        predictions = generate(lm, tokenizer, [prompt(task, e) for e in task.test],
                               max_new_tokens=longest + 4, batch_size=batch_size)
        scores[task.name] = task.score(predictions)
    return scores


def base_scores(tasks: Sequence[TextTask], model: str | None = None, *, rebuild: bool = False) -> dict[str, float]:
    """Score of the untrained model per task, cached in runtime.cache_dir("tasks") by task fingerprint.

    classification: a frozen encoder (default bundled:minilm) + a trained linear head;
    generation: the base causal LM (default bundled:smollm2), greedy, exact match.
    """
    kinds = {t.kind for t in tasks}
    if len(kinds) != 1:
        raise ValueError(f"base_scores needs tasks of one kind, got {sorted(kinds)}")
    kind = kinds.pop()
    model = model or ("bundled:minilm" if kind == "classification" else "bundled:smollm2")
    path = runtime.cache_dir("tasks") / f"base_{kind}_{hashlib.sha1(model.encode()).hexdigest()[:8]}.json"
    cache = json.loads(path.read_text()) if path.exists() and not rebuild else {}
    todo = [t for t in tasks if t.fingerprint() not in cache]
    if todo:
        fresh = (probe_scores if kind == "classification" else generation_scores)(todo, model)
        cache.update({t.fingerprint(): fresh[t.name] for t in todo})
        tmp = path.with_suffix(".tmp")
        tmp.write_text(json.dumps(cache, indent=1))
        tmp.replace(path)
    return {t.name: cache[t.fingerprint()] for t in tasks}


def default_stream(kind: str = "classification", seed: int = 0, n_train: int | None = None,
                   n_test: int | None = None, *, threshold: float | None = None,
                   model: str | None = None) -> list[TextTask]:
    """The suite's tasks that the base model does not already solve.

    classification: drops tasks a frozen encoder + linear head gets above PROBE_THRESHOLD (0.95);
    generation: drops tasks the base LM gets above BASE_THRESHOLD (0.90).
    """
    if kind not in KINDS:
        raise ValueError(f"unknown kind {kind!r}; choose one of {', '.join(KINDS)}")
    make = classification_tasks if kind == "classification" else generation_tasks
    sizes = {k: v for k, v in (("n_train", n_train), ("n_test", n_test)) if v is not None}
    tasks = make(seed, **sizes)
    threshold = threshold if threshold is not None else (PROBE_THRESHOLD if kind == "classification" else BASE_THRESHOLD)
    scores = base_scores(tasks, model)
    return [t for t in tasks if scores[t.name] <= threshold]


def suite_report(kind: str = "classification", seed: int = 0, *, model: str | None = None,
                 rebuild: bool = False) -> list[dict]:
    """One row per task of a suite: name, description, base score, chance level, and whether default_stream keeps it.

    base: frozen encoder + trained linear head (classification) or the base LM's exact match (generation);
    chance: 1 / number of labels for classification (what the encoder with an untrained head scores), else 0.
    """
    tasks = (classification_tasks if kind == "classification" else generation_tasks)(seed)
    threshold = PROBE_THRESHOLD if kind == "classification" else BASE_THRESHOLD
    scores = base_scores(tasks, model, rebuild=rebuild)
    return [{"task": t.name, "description": t.description, "base": round(scores[t.name], 3),
             "chance": round(1 / len(t.labels), 3) if t.labels else 0.0,
             "in_default_stream": scores[t.name] <= threshold} for t in tasks]


@command("tasks", "score the base models on every task suite (cached) and print which tasks the streams keep")
def _cli(args) -> int:
    for kind in ("classification", "generation"):
        base = "frozen MiniLM + linear head" if kind == "classification" else "base SmolLM2, exact match"
        print(f"== {kind} tasks ({base})")
        for row in suite_report(kind, rebuild=getattr(args, "rebuild", False)):
            keep = "stream" if row["in_default_stream"] else "solved"
            print(f"{row['task']:>18}  {row['base']:.3f} (chance {row['chance']:.2f})  {keep:6}  {row['description']}")
    return 0


_cli.builds_cache = True
