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
    for i in range(50 * (n_train + n_test)):
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
    L = lexicons()
    v, name, obj = rng.choice(L["verbs"]), rng.choice(L["names"]), rng.choice(L["objects"])
    verb = {"past": v["past"], "present": v["third"], "future": "will " + v["base"]}[label]
    where = rng.choice(["", " in the garden", " at work", " with a friend", " near the station"])
    return f"{name} {verb} the {obj}{where}", label


def _agreement(rng, label):
    """Is the head noun singular or plural? An attractor noun of the other number sits in between."""
    L = lexicons()
    head, place = rng.choice(L["nouns"]), rng.choice(L["places"])
    other = "many" if label == "plural" else "one"
    place = place + "s" if other == "many" else place
    subject = head["many"] if label == "plural" else head["one"]
    return f"the {subject} near the {place} {rng.choice(L['intransitive_past'])}", label


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
    """Which of the two named things is heavier: the first mentioned or the second?"""
    L = lexicons()
    c1, c2 = rng.sample(L["colors"], 2)
    box = rng.choice(L["containers"])
    heavier_first = [f"the {c1} {box} is heavier than the {c2} one", f"the {c1} {box} weighs more than the {c2} one",
                     f"the {c1} {box} outweighs the {c2} one", f"the {c2} {box} is outweighed by the {c1} one"]
    heavier_second = [f"the {c1} {box} is lighter than the {c2} one", f"the {c1} {box} weighs less than the {c2} one",
                      f"the {c2} {box} outweighs the {c1} one", f"the {c1} {box} is outweighed by the {c2} one"]
    while True:  # "first": the colour mentioned first is the heavier (c1 heavier and c1 named first, or neither)
        text = rng.choice(heavier_first + heavier_second)
        first = (text in heavier_first) == (text.split()[1] == c1)
        if first == (label == "first"):
            return text, label


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
    "tense": ("tense of the verb (past, present, future) with regular and irregular verbs",
              _tense, ("past", "present", "future")),
    "agreement": ("is the subject singular or plural? an attractor noun of the other number sits between",
                  _agreement, ("singular", "plural")),
    "formality": ("formal or informal request", _formality, ("formal", "informal")),
    "parity": ("is the number written in words even or odd ('has thirty-seven stamps')",
               _parity, ("even", "odd")),
    "comparison": ("is the thing named first the heavier one? comparatives and passives flip it",
                   _comparison, ("first", "second")),
    "count": ("how many items are listed (two to five)", _count, ("two", "three", "four", "five")),
    "emotion": ("emotion word from a lexicon (joy, anger, fear, sadness)", _emotion,
                ("joy", "anger", "fear", "sadness")),
}


def classification_tasks(seed: int = 0, n_train: int = 256, n_test: int = 128) -> list[TextTask]:
    """11 sentence-classification tasks with balanced labels, generated from the shipped lexicons."""
    return [_build(name, "classification", description, make, labels, seed, n_train, n_test)
            for name, (description, make, labels) in CLASSIFICATION.items()]
