"""Checkable task suites: seeded generators with exact answer checkers.

Each task carries a chat prompt (for instruction-tuned models) and a few-shot
completion prompt (for base models), and a checker that tolerates harmless
formatting: "The answer is 5." counts as 5. Suites run from what small models
find easy (capitals) to hard (two-digit addition, JSON with given fields).

>>> t = SUITES["add1"].generate(1, seed=0)[0]
>>> t.check(f"The answer is {t.answer}.")
True
"""

from __future__ import annotations

import json
import random
import re
from collections.abc import Callable
from dataclasses import dataclass

from trilemma.errors import UsageError

MAX_TRIALS = 1_000_000
"""The most tasks a suite draws, and runs an experiment makes of one spec, budget or chain:
each is a call or a run with its calls in the journal, and a million put a success rate
within +-0.1%."""

__all__ = ["SUITES", "Suite", "Task", "chain_tasks", "final_number", "first_number"]

_NUMBER = re.compile(r"-?\d+(?:\.\d+)?")


def final_number(text: str) -> str | None:
    """The number an answer gives: after the last '=', after 'answer is', else the first one."""
    line = text.strip()
    for marker in ("=", "answer is", "answer:", "result is"):
        i = line.lower().rfind(marker)
        if i >= 0:
            m = _NUMBER.search(line[i + len(marker) :])
            if m:
                return _canon(m.group(0))
    return first_number(line)


def first_number(text: str) -> str | None:
    """The first number in the text."""
    m = _NUMBER.search(text.replace(",", ""))
    return _canon(m.group(0)) if m else None


def _canon(number: str) -> str:
    return str(int(float(number))) if float(number).is_integer() else number


@dataclass(frozen=True, slots=True)
class Task:
    """One question with a checkable answer."""

    suite: str
    """The suite it belongs to."""
    prompt: str
    """The instruction for a chat model."""
    few_shot: str
    """A few-shot prompt for a base model (completion endpoint); the answer follows it."""
    answer: str
    """The expected answer."""
    checker: Callable[[str, str], bool]
    """``checker(text, answer)``: whether a model's text gives the answer."""

    def check(self, text: str) -> bool:
        """Whether ``text`` answers the task."""
        return self.checker(text, self.answer)


@dataclass(frozen=True, slots=True)
class Suite:
    """A named generator of tasks."""

    name: str
    """How the CLI names it."""
    difficulty: str
    """easy, medium or hard for models of ~100M parameters."""
    description: str
    """One line."""
    make: Callable[[random.Random], tuple[str, str, str]]
    """One (question, answer, few-shot prompt) from a generator."""
    checker: Callable[[str, str], bool]
    """The suite's checker."""

    def generate(self, n: int, seed: int = 0) -> list[Task]:
        """``n`` tasks, the same for the same seed."""
        if n < 1:
            raise UsageError(f"--n: {n} is not a positive number of tasks")
        if n > MAX_TRIALS:
            raise UsageError(f"--n: {n:,} tasks, each one call to the model; give at most "
                             f"{MAX_TRIALS:,}")  # fmt: skip
        rng = random.Random(f"{self.name}:{seed}")
        out = []
        for _ in range(n):
            prompt, answer, few_shot = self.make(rng)
            out.append(Task(self.name, prompt, few_shot, answer, self.checker))
        return out


def _number_checker(text: str, answer: str) -> bool:
    return final_number(text) == answer


def _word_checker(text: str, answer: str) -> bool:
    return answer.lower() in text.strip().lower().splitlines()[0] if text.strip() else False


def _shots(examples: list[tuple[str, str]], question: str) -> str:
    lines = [f"Q: {q}\nA: {a}" for q, a in examples]
    return "\n".join([*lines, f"Q: {question}\nA:"])


CAPITALS = {
    "France": "Paris", "Germany": "Berlin", "Italy": "Rome", "Spain": "Madrid", "Japan": "Tokyo",
    "China": "Beijing", "Russia": "Moscow", "Egypt": "Cairo", "Canada": "Ottawa",
    "Australia": "Canberra", "Brazil": "Brasilia", "India": "New Delhi", "Mexico": "Mexico City",
    "Kenya": "Nairobi", "Greece": "Athens", "Portugal": "Lisbon", "Norway": "Oslo",
    "Sweden": "Stockholm", "Finland": "Helsinki", "Poland": "Warsaw", "Austria": "Vienna",
    "Ireland": "Dublin", "Turkey": "Ankara", "Argentina": "Buenos Aires", "Peru": "Lima",
    "Chile": "Santiago", "Thailand": "Bangkok", "Vietnam": "Hanoi", "South Korea": "Seoul",
    "Cuba": "Havana", "Belgium": "Brussels", "Hungary": "Budapest", "Denmark": "Copenhagen",
    "Netherlands": "Amsterdam", "Switzerland": "Bern", "Iran": "Tehran", "Iraq": "Baghdad",
    "Nigeria": "Abuja", "Ukraine": "Kyiv", "Colombia": "Bogota",
}  # fmt: skip


def _capital(rng: random.Random) -> tuple[str, str, str]:
    country = rng.choice(sorted(CAPITALS))
    q = f"What is the capital of {country}?"
    shots = [
        ("What is the capital of United Kingdom?", "London"),
        ("What is the capital of Morocco?", "Rabat"),
    ]
    return f"{q} Answer with the city name only.", CAPITALS[country], _shots(shots, q)


def _add(lo: int, hi: int) -> Callable[[random.Random], tuple[str, str, str]]:
    def make(rng: random.Random) -> tuple[str, str, str]:
        a, b = rng.randint(lo, hi), rng.randint(lo, hi)
        q = f"What is {a} + {b}?"
        shots = [
            (f"What is {lo + 1} + {lo + 2}?", str(2 * lo + 3)),
            (f"What is {hi - 1} + {lo}?", str(hi - 1 + lo)),
        ]
        return f"{q} Answer with the number only.", str(a + b), _shots(shots, q)

    return make


GOOD = ["loved", "enjoyed", "adored", "was delighted by", "was thrilled with", "really liked"]
BAD = [
    "hated",
    "disliked",
    "was bored by",
    "regretted buying",
    "was disappointed by",
    "could not stand",
]
THINGS = ["the movie", "this phone", "the hotel", "the concert", "the book", "the meal", "the game"]


def _sentiment(rng: random.Random) -> tuple[str, str, str]:
    positive = rng.random() < 0.5
    sentence = f"I {rng.choice(GOOD if positive else BAD)} {rng.choice(THINGS)}."
    label = "positive" if positive else "negative"
    q = f'Is the sentiment of "{sentence}" positive or negative?'
    shots = [('Is the sentiment of "I liked the show." positive or negative?', "positive"),
             ('Is the sentiment of "I hated the food." positive or negative?', "negative")]  # fmt: skip
    return f"{q} Answer with one word: positive or negative.", label, _shots(shots, q)


def _sentiment_checker(text: str, answer: str) -> bool:
    first = text.strip().lower()
    other = "negative" if answer == "positive" else "positive"
    return answer in first and other not in first


UNITS = [("The package weighs", "kilograms"), ("The train leaves in", "minutes"),
         ("The room is", "meters long"), ("The recipe needs", "grams of flour"),
         ("The tank holds", "liters")]  # fmt: skip


EXTRACT_PROMPT = 'What number appears in this sentence: "{sentence}" Answer with the number only.'
EXTRACT_SHOTS = [('What number appears in this sentence: "The box holds 12 eggs."', "12"),
                 ('What number appears in this sentence: "It took 45 days."', "45")]  # fmt: skip


def extract_sentence(i: int, value: str | int) -> str:
    """The i-th sentence template holding a number (the relay chain's step i)."""
    start, unit = UNITS[i % len(UNITS)]
    return f"{start} {value} {unit}."


def _extract(rng: random.Random) -> tuple[str, str, str]:
    value = rng.randint(2, 999)
    sentence = extract_sentence(rng.randrange(len(UNITS)), value)
    q = f'What number appears in this sentence: "{sentence}"'
    return EXTRACT_PROMPT.format(sentence=sentence), str(value), _shots(EXTRACT_SHOTS, q)


NAMES = ["Ada", "Grace", "Alan", "Linus", "Barbara", "Ken", "Edsger", "Margaret"]


def _json_task(rng: random.Random) -> tuple[str, str, str]:
    name, age = rng.choice(NAMES), rng.randint(18, 90)
    answer = json.dumps({"name": name, "age": age})
    q = f'Write a JSON object with "name" set to "{name}" and "age" set to {age}.'
    shots = [
        (
            'Write a JSON object with "name" set to "Bob" and "age" set to 30.',
            '{"name": "Bob", "age": 30}',
        )
    ]
    return f"{q} Output only the JSON.", answer, _shots(shots, q)


def _json_checker(text: str, answer: str) -> bool:
    m = re.search(r"\{.*?\}", text, re.S)
    if not m:
        return False
    try:
        got = json.loads(m.group(0))
    except ValueError:
        return False
    return isinstance(got, dict) and got == json.loads(answer)


CHAIN_PROMPT = "What is {prev} + {d}? Answer with the number only."
CHAIN_SHOTS = [("What is 10 + 2?", "12"), ("What is 31 + 5?", "36")]


def _chain_step(rng: random.Random) -> tuple[str, str, str]:
    """One step of a chain as the cliff experiment runs it: a running total plus a digit."""
    prev, add = rng.randint(2, 40), rng.randint(1, 5)
    prompt = CHAIN_PROMPT.format(prev=prev, d=add)
    return prompt, str(prev + add), _shots(CHAIN_SHOTS, f"What is {prev} + {add}?")


SUITES: dict[str, Suite] = {
    s.name: s
    for s in [
        Suite("capitals", "easy", "the capital of a country", _capital, _word_checker),
        Suite("add1", "medium", "single-digit addition", _add(0, 9), _number_checker),
        Suite("add2", "hard", "two-digit addition", _add(10, 99), _number_checker),
        Suite(
            "sentiment",
            "medium",
            "positive or negative, of a short sentence",
            _sentiment,
            _sentiment_checker,
        ),
        Suite("extract", "easy", "the number in a sentence", _extract, _number_checker),
        Suite("json", "hard", "a JSON object with given fields", _json_task, _json_checker),
        Suite(
            "chain",
            "medium",
            "one step of an arithmetic chain: add a digit",
            _chain_step,
            _number_checker,
        ),
    ]
}


def chain_tasks(steps: int, seed: int = 0) -> tuple[int, list[int]]:
    """A chain: a start number and the digit each step adds (step i reads step i-1's answer)."""
    rng = random.Random(f"chain:{seed}")
    return rng.randint(2, 15), [rng.randint(1, 5) for _ in range(steps)]
