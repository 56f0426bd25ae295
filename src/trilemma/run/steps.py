"""Step kinds: what one attempt of a step sends, and how it picks its answer.

Each kind gets a ``call(messages, role)`` function (the executor's: budget,
limits and ledger included) and returns the attempt's :class:`Answer`. The
ledger shows every call by its role.
"""

from __future__ import annotations

import asyncio
import re
from collections import Counter
from collections.abc import Awaitable, Callable, Coroutine, Iterable, Mapping, Sequence
from dataclasses import dataclass
from typing import Any

from trilemma.providers.base import CUT, Completion, Message
from trilemma.spec import Step

__all__ = ["Answer", "CallFn", "answer_of", "pick_route", "route_prompt", "run_kind"]

CallFn = Callable[[Sequence[Message], str], Awaitable[Completion]]

REFINE = "Critique your answer above, then give an improved final answer and nothing else."
CRITIQUE = (
    "Other agents answered:\n{others}\n\nCritique their answers and yours, then give your "
    "revised final answer and nothing else."
)
JUDGE = (
    "Candidate answers to the task above:\n{answers}\n\nReply with the single best answer, "
    "copied exactly, and nothing else."
)


@dataclass(slots=True)  # not frozen: it is made once per attempt
class Answer:
    """An attempt's answer (read-only by convention)."""

    text: str
    """What goes downstream if the gate accepts it."""
    verdict: bool | None
    """The simulator's knowledge of right or wrong; None from a real model."""
    cut: bool = False
    """The text stopped at ``max_tokens``: it ends where the tokens ran out."""


ROUTE = (
    "Before anyone answers the task above: which kind of task is it? Reply with one word, "
    "one of: {labels}."
)


def route_prompt(route: Mapping[str, object]) -> str:
    """What a routed step's classifier is asked after the task."""
    return ROUTE.format(labels=", ".join(route))


def pick_route(text: str, route: Mapping[str, object]) -> str:
    """The branch a classifier's reply names: the first label in it, else the first branch.

    >>> pick_route("This looks HARD to me.", {"easy": 1, "hard": 2})
    'hard'
    >>> pick_route("not sure", {"easy": 1, "hard": 2})
    'easy'
    """
    found = [(m.start(), label) for label in route
             for m in [re.search(rf"\b{re.escape(label)}\b", text, re.IGNORECASE)] if m]  # fmt: skip
    return min(found)[1] if found else next(iter(route))


def _norm(text: str) -> str:
    return re.sub(r"\s+", " ", text.strip().lower())


def _most_common(texts: Sequence[str]) -> int:
    """Where the most frequent text first comes (whitespace and case ignored)."""
    normed = [_norm(t) for t in texts]
    counts = Counter(normed)
    best = max(counts.values())
    return next(i for i, n in enumerate(normed) if counts[n] == best)


def majority(answers: Sequence[Completion]) -> Answer:
    """The most frequent answer (whitespace and case ignored); ties go to the earliest."""
    a = answers[_most_common([a.text for a in answers])]
    return Answer(a.text.strip(), a.verdict, a.finish_reason == CUT)


def answer_of(step: Step, calls: Sequence[Mapping[str, Any]]) -> str | None:
    """The answer one finished attempt of ``step`` gave, picked from its calls as the journal
    keeps them (``role`` and ``response``, in the order they were made) by the rule its
    kind picks by when it runs; None if a call it needs has no answer.

    >>> from trilemma.spec import Step
    >>> vote = Step.model_validate({"id": "v", "model": "m", "vote": {"samples": 3}})
    >>> answer_of(vote, [{"role": f"sample {i}", "response": r}
    ...                  for i, r in enumerate(["7", " 8", "8 "], 1)])
    '8'
    """
    if calls and step.route is not None and calls[0]["role"].startswith("route: "):
        label = calls[0]["role"].removeprefix("route: ")
        if label in step.route:
            step, calls = step.branch_step(label), calls[1:]
    if step.debate is not None and step.debate.judge:
        picked = [c for c in calls if c["role"] == "judge"]
    elif step.debate is not None:
        picked = [c for c in calls if c["role"].endswith(f" round {step.debate.rounds}")]
    elif step.vote is not None:
        picked = [c for c in calls if c["role"].startswith("sample ")]
    else:
        picked = list(calls[-1:])
    texts = [c["response"] for c in picked]
    if not texts or any(t is None for t in texts):
        return None
    return str(texts[_most_common(texts) if step.by_majority else -1]).strip()


def run_kind(step: Step, base: list[Message], call: CallFn) -> Coroutine[Any, Any, Answer]:
    """One attempt of ``step`` from its base messages, to await."""
    if step.debate is not None:
        return _debate(step, base, call)
    if step.vote is not None:
        return _vote(step, base, call)
    return _refined_call(step, base, call)


async def _together(calls: Iterable[Awaitable[Completion]]) -> list[Completion]:
    """Calls made in parallel; a failure is raised once every call has settled.

    A call that was sent is paid for: when one call of a round fails (the budget
    refuses it, say), the others run to their answers and are billed and journaled,
    rather than being left behind in flight when the attempt gives up.
    """
    settled = await asyncio.gather(*calls, return_exceptions=True)
    answers = [o for o in settled if not isinstance(o, BaseException)]
    if len(answers) < len(settled):
        raise next(o for o in settled if isinstance(o, BaseException))
    return answers


async def _vote(step: Step, base: list[Message], call: CallFn) -> Answer:
    """Self-consistency: the samples in parallel, then the majority answer."""
    assert step.vote is not None
    samples = await _together(call(base, f"sample {i + 1}") for i in range(step.vote.samples))
    return majority(samples)


async def _refined_call(step: Step, base: list[Message], call: CallFn) -> Answer:
    """One call, then ``debate_rounds`` rounds of self-critique (the seed's sequential rounds)."""
    messages = list(base) if step.debate_rounds else base  # copied only if rounds extend it
    c = await call(messages, "call")
    for r in range(step.debate_rounds):
        messages += [{"role": "assistant", "content": c.text}, {"role": "user", "content": REFINE}]
        c = await call(messages, f"refine {r + 1}")
    return Answer(c.text.strip(), c.verdict, c.finish_reason == CUT)


async def _debate(step: Step, base: list[Message], call: CallFn) -> Answer:
    """Agents propose in parallel, then critique and revise with the others' answers in view."""
    assert step.debate is not None
    n = step.debate.agents
    threads = [list(base) for _ in range(n)]
    answers: list[Completion] = []
    for rnd in range(1, step.debate.rounds + 1):
        if rnd > 1:
            for i, thread in enumerate(threads):
                others = "\n".join(
                    f"- agent {j + 1}: {a.text.strip()}" for j, a in enumerate(answers) if j != i
                )
                thread += [
                    {"role": "assistant", "content": answers[i].text},
                    {"role": "user", "content": CRITIQUE.format(others=others or "(none)")},
                ]
        answers = await _together(call(threads[i], f"agent {i + 1} round {rnd}") for i in range(n))
    if not step.debate.judge:
        return majority(answers)
    listing = "\n".join(f"{i + 1}. {a.text.strip()}" for i, a in enumerate(answers))
    verdict = await call(
        [*base, {"role": "user", "content": JUDGE.format(answers=listing)}], "judge"
    )
    return Answer(verdict.text.strip(), verdict.verdict, verdict.finish_reason == CUT)
