"""The critical path under the run's concurrency slots, replayed as the executor schedules.

Each call holds one of ``concurrency`` slots (and its model's ``max_concurrency``) while it
runs; when more calls are ready than slots, the longest remaining path goes first. The
planner's ``latency_s.scheduled`` replays that and the executor measures the same.
"""

from __future__ import annotations

import random
from pathlib import Path
from typing import Any

import pytest

from trilemma import estimate, parse_workflow
from trilemma.journal import Journal
from trilemma.plan import slots
from trilemma.plan.simulate import simulate
from trilemma.plan.slots import may_bind
from trilemma.run.session import execute
from trilemma.spec import Workflow

EXAMPLES = Path(__file__).resolve().parents[1] / "examples"


def spec(steps: list[str], concurrency: int | None = 16, model: str = "") -> Workflow:
    head = "version: 1\n" + (f"concurrency: {concurrency}\n" if concurrency else "")
    return parse_workflow(
        head + f"models:\n  m: {{usd_per_call: 0.01, latency_s: 1.0, p_ok: 1.0{model}}}\n"
        "steps:\n" + "\n".join(f"  - {s}" for s in steps) + "\n"
    )


def wide(n: int, **kw: Any) -> Workflow:
    return spec([f"{{id: s{i}, model: m}}" for i in range(n)], **kw)


def scheduled(wf: Workflow) -> float:
    s = estimate(wf).latency_scheduled_s
    assert s is not None
    return s


# a gateway's, and two whose limits bind
WORKFLOWS = sorted(p for p in EXAMPLES.glob("*.yaml")
                   if p.name not in ("gateway.yaml", "fan-out.yaml", "rate-limited.yaml"))  # fmt: skip


@pytest.mark.parametrize("path", WORKFLOWS, ids=lambda p: p.name)
def test_where_no_limit_binds_it_is_the_critical_path(path: Path) -> None:
    wf = parse_workflow(path.read_text())
    e = estimate(wf)
    assert e.latency_scheduled_s == pytest.approx(e.latency_critical_s, abs=1e-9)


def test_calls_wait_for_a_free_slot() -> None:
    assert scheduled(wide(40)) == pytest.approx(3.0)  # 16, 16, then 8
    assert scheduled(wide(40, concurrency=40)) == pytest.approx(1.0)
    assert scheduled(wide(16)) == pytest.approx(1.0)
    assert scheduled(wide(40, concurrency=100, model=", max_concurrency: 10")) == pytest.approx(4.0)
    # a vote's five samples in two slots: 2, 2, then 1
    assert scheduled(spec(["{id: v, model: m, vote: {samples: 5}}"], 2)) == pytest.approx(3.0)
    # a debate's round waits for all its agents, then the judge
    debate = spec(["{id: d, model: m, debate: {agents: 3, rounds: 2, judge: true}}"], 2)
    assert scheduled(debate) == pytest.approx(5.0)  # 2 + 2 a round, then the judge


def test_the_expected_and_worst_figures_are_replayed_too() -> None:
    """Each step's calls held as often as its attempts are sent (at worst all) and
    replayed: forty one-second steps that always pass take 3 s expected and worst, not 1 s.
    With retries the expected figure is drawn in the slots (the replay of mean times, 3.72
    s, was a lower bound: the runs take 5.35 s on average)."""
    e = estimate(wide(40))
    assert (e.latency_expected_s, e.latency_worst_s) == pytest.approx((3.0, 3.0))
    steps = [f"{{id: s{i}, model: m, retries: 2}}" for i in range(40)]
    slotted, alone = (estimate(parse_workflow(spec(steps, c).model_dump_json()
                                              .replace('"p_ok":1.0', '"p_ok":0.8')))
                      for c in (16, 100))  # fmt: skip
    assert alone.latency_expected_s > 1.0  # the retries and their backoff
    # forty steps in three rounds of slots, each call held 1.24 times on average, 3 at worst
    assert slotted.latency_expected_s > 1.3 * 3 * 1.24
    slotted_spec = parse_workflow(spec(steps, 16).model_dump_json().replace('"p_ok":1.0', '"p_ok":0.8'))
    drawn = simulate(slotted_spec, 40_000, seed=5, halt=False).latency_s.mean
    assert slotted.latency_expected_s == pytest.approx(drawn, rel=0.03) == slotted.latency_in_slots_s
    assert slotted.latency_worst_s == pytest.approx(3 * 3.0)
    assert alone.latency_in_slots_s is None and estimate(slotted_spec) == slotted  # a fixed seed
    assert alone.latency_worst_s == pytest.approx(4.5)  # three calls and two backoffs


def test_the_longest_remaining_path_goes_first() -> None:
    """A four-step chain beside twelve lone steps in two slots: the chain is never kept
    waiting, so the run takes the sixteen calls' share of the slots, 8 s, not 4 + 6."""
    chain = [f"{{id: c{i}, model: m{', after: [c' + str(i - 1) + ']' if i else ''}}}" for i in range(4)]
    lone = [f"{{id: x{i}, model: m}}" for i in range(12)]
    assert scheduled(spec(chain + lone, 2)) == pytest.approx(8.0)
    assert scheduled(spec(chain + lone, 1)) == pytest.approx(16.0)


@pytest.mark.parametrize(("concurrency", "limit"), [(3, ""), (6, ", max_concurrency: 1")])
def test_the_executor_takes_the_scheduled_time(tmp_path: Path, concurrency: int, limit: str) -> None:
    """A random DAG of votes and calls on two models, in three slots (or six, one model
    limited to one call at a time, its calls holding a global slot while they wait for it):
    the run's measured latency against the replay (0.05 s calls; timer slack aside)."""
    rng = random.Random(5)
    steps = []
    for i in range(30):
        after = sorted({f"s{rng.randrange(i)}" for _ in range(rng.randint(0, 2))}) if i else []
        kind = ", vote: {samples: 3}" if rng.random() < 0.3 else ""
        model = "n" if rng.random() < 0.4 else "m"
        steps.append(f"{{id: s{i}, model: {model}, after: [{', '.join(after)}]{kind}}}")
    wf = parse_workflow(
        f"version: 1\nconcurrency: {concurrency}\nmodels:\n"
        "  m: {usd_per_call: 0.01, latency_s: 0.05, p_ok: 1.0}\n"
        f"  n: {{usd_per_call: 0.01, latency_s: 0.03, p_ok: 1.0{limit}}}\n"
        "steps:\n" + "\n".join(f"  - {s}" for s in steps) + "\n"
    )
    e = estimate(wf)
    assert e.latency_scheduled_s is not None
    assert e.latency_scheduled_s > 1.3 * e.latency_critical_s  # the slots bind
    r = execute(wf, journal=Journal(tmp_path / "j.db"), seed=1)
    assert r.status == "ok"
    assert r.latency_s == pytest.approx(e.latency_scheduled_s, rel=0.1)


def test_estimate_and_run_say_the_slots_bind(cli: Any, write: Any, tmp_path: Path) -> None:
    path = write("version: 1\nmodels:\n  m: {usd_per_call: 0.0, latency_s: 0.02, p_ok: 1.0}\n"
                 "steps:\n" + "\n".join(f"  - {{id: s{i}, model: m}}" for i in range(40)) + "\n")  # fmt: skip
    r = cli("estimate", path)
    assert r.code == 0 and "critical path takes 0.06s in them, not 0.02s" in r.out
    assert cli("estimate", path, "--json").json()["latency_s"]["scheduled"] == pytest.approx(0.06)
    run = cli("run", path, "--journal", tmp_path / "j.db")
    assert run.code == 0 and "(0.06s in its slots)" in run.out
    doc = cli("run", path, "--journal", tmp_path / "j.db", "--json").json()
    assert doc["predicted"]["latency_s"]["scheduled"] == pytest.approx(0.06)
    page = tmp_path / "run.html"
    assert cli("report", doc["run_id"], "--journal", tmp_path / "j.db", "--out", page).code == 0
    assert "0.02s critical path (0.06s in its slots)" in page.read_text()
    calm = cli("estimate", EXAMPLES / "ticket.yaml")
    assert "concurrency:" not in calm.out
    mc = cli("simulate", path, "--runs", "1000")
    assert mc.code == 0 and "each trajectory's calls wait for them" in " ".join(mc.out.split())
    doc = cli("simulate", path, "--runs", "1000", "--json").json()
    assert doc["latency_s"]["mean"] == pytest.approx(0.06)  # in the slots, as estimated
    assert "slots" not in cli("simulate", EXAMPLES / "ticket.yaml", "--runs", "1000").out


def test_a_spec_whose_calls_all_fit_at_once_is_not_replayed() -> None:
    """``may_bind`` spares the replay (every run estimates its spec first) only where no call
    of the critical path's schedule would wait for a slot: then the replay is that path."""
    def binds(wf: Workflow) -> bool:
        return may_bind(wf, {r.id: r.latency_s for r in estimate(wf).per_step})

    assert not binds(wide(16)) and binds(wide(17))
    assert binds(wide(8, concurrency=100, model=", max_concurrency: 4"))
    chain = [f"{{id: c{i}, model: m{', after: [c' + str(i - 1) + ']' if i else ''}}}" for i in range(40)]
    assert not binds(spec(chain, 1))  # forty calls, never two at once
    rng = random.Random(8)
    spared = held = 0
    for _ in range(60):
        n = rng.randint(1, 12)
        steps = [f"{{id: s{i}, model: m, after: [{', '.join(sorted({f's{rng.randrange(i)}' for _ in range(rng.randint(0, 2))}) if i else [])}]"
                 f"{rng.choice(['', ', vote: {samples: 3}', ', debate: {agents: 2, rounds: 2}'])}}}"
                 for i in range(n)]  # fmt: skip
        wf = spec(steps, rng.randint(1, 20))
        e = estimate(wf)
        replayed = slots.scheduled(wf, {r.id: r.latency_s for r in e.per_step})
        assert e.latency_scheduled_s == pytest.approx(replayed)
        if not binds(wf):
            spared += 1
            assert replayed == pytest.approx(e.latency_critical_s)
        held += replayed > e.latency_critical_s * 1.01
    assert spared > 10 and held > 10


def test_optimize_holds_the_latency_budget_in_the_slots(cli: Any, write: Any) -> None:
    """Forty steps of at least 0.5 s meet a 1.2 s latency budget as if every call could go at
    once, but not in 16 slots (three rounds): no answer, and a note that says why and what to
    do; in 40 slots the answer is there, and no note about the slots."""
    steps = "\n".join(f"  - {{id: s{i}, model: small, candidates: [small, big]}}" for i in range(40))
    path = write("version: 1\nmodels:\n  small: {usd_per_call: 0.001, latency_s: 0.5, p_ok: 0.9}\n"
                 f"  big: {{usd_per_call: 0.01, latency_s: 1.0, p_ok: 0.99}}\nsteps:\n{steps}\n")  # fmt: skip
    r = cli("optimize", path, "--max-latency", "1.2", "--min-reliability", "0.5", "--json")
    assert r.code == 1
    doc = r.json()
    assert doc["feasible"] is False and doc["chosen_spec"] is None
    (note,) = [n for n in doc["notes"] if n.startswith("concurrency:")]
    assert "fits the 1.2s latency budget in the run's 16 concurrency slots" in note
    assert "raise `concurrency:`" in note
    assert any(f["over_in_slots"] for f in doc["frontier"])  # met on paper, not in the slots
    wide_enough = path.read_text().replace("version: 1\n", "version: 1\nconcurrency: 40\n")
    doc = cli("optimize", write(wide_enough, "wide.yaml"), "--max-latency", "1.2",
              "--min-reliability", "0.5", "--json").json()  # fmt: skip
    assert doc["feasible"] is True
    assert not [n for n in doc["notes"] if n.startswith("concurrency:")]
    assert not any(f["over_in_slots"] for f in doc["frontier"])


def _six(concurrency: int) -> Workflow:
    small = "{usd_per_call: 0.001, latency_s: 0.5, p_ok: 1.0}"
    big = "{usd_per_call: 0.01, latency_s: 0.2, p_ok: 1.0}"
    steps = "\n".join(f"  - {{id: s{i}, model: small, candidates: [small, big]}}" for i in range(6))
    return parse_workflow(f"version: 1\nconcurrency: {concurrency}\nmodels:\n  small: {small}\n"
                          f"  big: {big}\nsteps:\n{steps}\n")  # fmt: skip


def test_optimize_passes_over_what_only_fits_without_the_slots(tmp_path: Path) -> None:
    """Six steps in three slots under a 0.9 s budget: six slow cheap calls take 1.0 s in
    them (two rounds), so the answer is three slow and three quick ones (0.5 s, then 0.2 s);
    the 22 cheaper configurations (six, five or four slow calls) are passed over, and the
    executor measures what the estimate said on both."""
    from trilemma.plan.optimize import optimize
    from trilemma.spec import Budget

    wf = _six(3)
    r = optimize(wf, Budget(deadline_s=0.9), max_retries=0)
    assert r.best is not None and r.best_estimate is not None
    assert sorted(s.model for s in r.best.steps) == ["big"] * 3 + ["small"] * 3
    assert r.best_estimate.latency_worst_s == pytest.approx(0.7)
    (note,) = [n for n in r.notes if n.startswith("concurrency: 22 configuration(s) ranked")]
    assert "meet the 0.9s latency budget only as if every ready call could go at once" in note
    assert "in the chosen spec's 3 slots its critical path takes 0.70s, not 0.50s" in r.notes[-1]
    assert "the 0.9s latency budget was held in them" in r.notes[-1]
    assert not any(c.cost_worst < 0.033 - 1e-9 for c in r.candidates)  # those over it are gone
    over = [c for c in r.frontier if r.over_in_slots(c)]  # the frontier says which they are
    assert over and all(c.cost_worst < 0.033 - 1e-9 for c in over) and r.chosen not in over
    from rich.console import Console

    from trilemma.report.tables import frontier_table

    console = Console(width=400, record=True)
    console.print(frontier_table(r.frontier, r))
    text = console.export_text()
    rows = [x for x in text.splitlines() if "$" in x]
    assert sum("not in slots" in x for x in rows) == len(over)
    # the answer is off the paper frontier ($0.006 is as quick there): shown in its place
    (chosen,) = [x for x in rows if "chosen" in x]
    assert "$0.0330" in chosen and "yes, chosen" in chosen and rows.index(chosen) == 1
    said = " ".join(text.split())  # the caption wraps at the table's width
    assert "not in slots: meets the budgets as if every ready call could go at once" in said
    assert "chosen: off the frontier by these figures" in said
    cheapest = optimize(_six(6), Budget(deadline_s=0.9), max_retries=0)  # slots enough: all slow
    assert cheapest.best is not None
    assert [s.model for s in cheapest.best.steps] == ["small"] * 6
    all_slow = parse_workflow(cheapest.best.model_dump_json().replace('"concurrency":6', '"concurrency":3'))
    assert estimate(all_slow).latency_scheduled_s == pytest.approx(1.0)
    measured = [execute(w, journal=Journal(tmp_path / f"{i}.db"), seed=1).latency_s
                for i, w in enumerate((r.best, all_slow))]  # fmt: skip
    assert measured[0] == pytest.approx(0.7, rel=0.1) and measured[0] < 0.9
    assert measured[1] == pytest.approx(1.0, rel=0.1) and measured[1] > 0.9


def test_optimize_gives_up_after_slot_tries(monkeypatch: pytest.MonkeyPatch) -> None:
    """Configurations that differ only in which alike step gets which model are checked
    once: two checks (six slow calls; five) rule out seven configurations."""
    from trilemma.plan import optimize as opt
    from trilemma.spec import Budget

    monkeypatch.setattr(opt, "SLOT_TRIES", 2)
    r = opt.optimize(_six(3), Budget(deadline_s=0.9), max_retries=0)
    assert r.best is None
    (note,) = [n for n in r.notes if n.startswith("concurrency:")]
    assert note.startswith("concurrency: none of the 7 best configuration(s) that meet the budgets")
    assert ("(their calls wait for them; 2 checked, alike steps once; single-step exchanges "
            "from the best found none)") in note
    assert len(r.candidates) == 64 - 7  # every configuration fits without the slots
    monkeypatch.setattr(opt, "SLOT_TRIES", 4)  # six, five, four slow ones; three fit
    r = opt.optimize(_six(3), Budget(deadline_s=0.9), max_retries=0)
    assert r.best is not None and sorted(s.model for s in r.best.steps) == ["big"] * 3 + ["small"] * 3


def test_steps_alike_in_all_but_their_id_share_a_key() -> None:
    from trilemma.plan.optimize import Candidate, Choice, _alike

    wf = parse_workflow("version: 1\nmodels:\n  m: {usd_per_call: 0.01, latency_s: 1.0, p_ok: 1.0}\n"
                        "  n: {usd_per_call: 0.02, latency_s: 0.5, p_ok: 1.0}\nsteps:\n"
                        "  - {id: a, model: m}\n  - {id: b, model: m}\n"
                        "  - {id: c, model: m, after: [a]}\n")  # fmt: skip
    key = _alike(wf)
    m, n = Choice("m", 0, False, None), Choice("n", 0, False, None)

    def cand(*cs: Choice) -> Candidate:
        return Candidate(cs, False, 0.0, 0.0, 0.0, 1.0)

    assert key(cand(n, m, m)) != key(cand(m, n, m))  # a has a dependent, b has none
    wf2 = parse_workflow(wf.model_dump_json().replace('"after":["a"]', '"after":["a","b"]'))
    key2 = _alike(wf2)
    assert key2(cand(n, m, m)) == key2(cand(m, n, m))  # now alike
    assert key2(cand(n, m, m)) != key2(cand(n, m, n))


# The Monte Carlo in the slots: each trajectory's steps take the slots in the replay's order.


def test_the_monte_carlo_waits_for_slots_as_the_replay_does() -> None:
    from trilemma.plan.simulate import simulate, simulate_loop

    for wf, expected in ((wide(40), 3.0), (wide(40, concurrency=40), 1.0),
                         (spec(["{id: v, model: m, vote: {samples: 5}}"], 2), 3.0),
                         (wide(40, concurrency=100, model=", max_concurrency: 10"), 4.0)):  # fmt: skip
        assert simulate(wf, 2000, seed=1).latency_s.mean == pytest.approx(expected)
        assert simulate_loop(wf, 50, seed=1)[2] == pytest.approx(expected)


def test_a_deadline_in_the_slots_cuts_every_run(cli: Any, write: Any) -> None:
    """Forty 1 s steps meet a 2.5 s deadline as if every call could go at once; in 16 slots
    every run is cut (3 s), as the estimate's deadline line says; in 40, none is."""
    steps = "\n".join(f"  - {{id: s{i}, model: m}}" for i in range(40))
    body = ("models:\n  m: {usd_per_call: 0.01, latency_s: 1.0, p_ok: 1.0, latency_jitter: 0.1}\n"
            f"steps:\n{steps}\n")  # fmt: skip
    doc = cli("simulate", write("version: 1\n" + body), "--deadline", "2.5", "--runs", "2000",
              "--json").json()  # fmt: skip
    assert doc["success_rate"] == 0.0 and doc["deadline_rate"] == 1.0
    assert doc["cost_usd"]["mean"] == pytest.approx(0.32, abs=0.002)  # 32 answered by then
    doc = cli("simulate", write("version: 1\nconcurrency: 40\n" + body, "wide.yaml"), "--deadline",
              "2.5", "--runs", "2000", "--json").json()  # fmt: skip
    assert doc["success_rate"] == 1.0


def _random_dag(rng: random.Random, n: int, jitter: float, extra: str = "") -> Workflow:
    steps = []
    for i in range(n):
        deps = sorted({f"s{rng.randrange(i)}" for _ in range(rng.randint(0, 2))}) if i else []
        kind = rng.choice(["", "", ", vote: {samples: 3}", ", debate: {agents: 2, rounds: 2}"])
        steps.append(f"{{id: s{i}, model: {rng.choice('ab')}, after: [{', '.join(deps)}]{kind}{extra}}}")
    return parse_workflow(
        f"version: 1\nconcurrency: {rng.randint(1, 5)}\nmodels:\n"
        f"  a: {{usd_per_call: 0.01, latency_s: 0.02, p_ok: 0.9, latency_jitter: {jitter}}}\n"
        f"  b: {{usd_per_call: 0.01, latency_s: 0.04, p_ok: 0.9, latency_jitter: {jitter}, "
        f"max_concurrency: {rng.randint(1, 3)}}}\n"
        "steps:\n" + "\n".join(f"  - {s}" for s in steps) + "\n")  # fmt: skip


def test_without_jitter_the_monte_carlo_is_the_replay() -> None:
    """On random DAGs of calls, votes and debates in 1-5 slots (a model limited too), each
    trajectory that sends every call once takes the replay's time, in both Monte Carlos."""
    from trilemma.plan.simulate import simulate, simulate_loop

    rng = random.Random(3)
    bound = 0
    for _ in range(30):
        wf = parse_workflow(_random_dag(rng, rng.randint(2, 15), 0.0).model_dump_json()
                            .replace('"p_ok":0.9', '"p_ok":1.0'))  # fmt: skip
        e = estimate(wf)
        bound += e.slots_bind
        assert simulate(wf, 200, seed=1).latency_s.mean == pytest.approx(e.latency_scheduled_s)
        assert simulate_loop(wf, 5, seed=1)[2] == pytest.approx(e.latency_scheduled_s)
    assert bound > 10


def test_the_two_monte_carlos_agree_in_the_slots() -> None:
    """With jitter, retries (whose backoff holds no slot), a ceiling and an early stop."""
    from trilemma.plan.simulate import simulate, simulate_loop

    rng = random.Random(5)
    for k in range(4):
        wf = _random_dag(rng, 10, 0.4, ", retries: 1")
        if k == 2:
            wf = parse_workflow(wf.model_dump_json().replace('"stop_when":null', '"stop_when":"s5"'))
        cap = 0.3 if k == 3 else None
        fast = simulate(wf, 40_000, seed=2, max_cost_usd=cap)
        ok, cost, latency = simulate_loop(wf, 8_000, seed=2, max_cost_usd=cap)
        assert latency == pytest.approx(fast.latency_s.mean, rel=0.04)
        assert cost == pytest.approx(fast.cost_usd.mean, rel=0.04)
        assert ok == pytest.approx(fast.success_rate, abs=0.03)


def test_the_monte_carlo_in_the_slots_is_what_the_executor_measures(tmp_path: Path) -> None:
    """A jittery random DAG in its slots: the Monte Carlo's mean latency within 10% of 12
    runs'; without the slots the Monte Carlo would say far less."""
    from trilemma.plan.simulate import simulate

    wf = _random_dag(random.Random(4), 14, 0.3)
    wf = parse_workflow(wf.model_dump_json().replace('"p_ok":0.9', '"p_ok":1.0'))
    e = estimate(wf)
    assert e.slots_bind
    predicted = simulate(wf, 20_000, seed=1).latency_s.mean
    runs = [execute(wf, journal=Journal(tmp_path / f"{i}.db"), seed=i).latency_s for i in range(12)]
    assert sum(runs) / len(runs) == pytest.approx(predicted, rel=0.10)
    assert predicted > e.latency_critical_s * 3


def test_a_call_ready_late_takes_the_slot_freed_last() -> None:
    """The Monte Carlo takes calls in the replay's order; one held up behind a backoff
    takes, of the slots free when it is ready, the one freed last, leaving the others to
    calls after it in the order but ready before it; where none is free, the first to free."""
    import numpy as np

    from trilemma.plan.simulate import _fitting, _fitting_one

    free = np.array([[0.1, 0.5, 2.0], [0.1, 0.5, 2.0], [3.0, 2.0, 4.0]])
    assert _fitting(free, np.array([1.0, 0.05, 1.0])).tolist() == [1, 0, 1]
    assert [_fitting_one(list(f), a) for f, a in zip(free, (1.0, 0.05, 1.0), strict=True)] == [
        1, 0, 1]  # fmt: skip


def test_retrying_steps_behind_backoffs_take_the_time_measured(tmp_path: Path) -> None:
    """Forty retrying steps of a random DAG in four slots (p 0.8, up to two retries, jitter):
    the mean latency of the runs that succeed, predicted and measured over 100 runs at a
    tenth of real time. Taking the first freed slot, the Monte Carlo said 3.15 s against
    2.94 s measured (2.64 s if the slots never bound); now 2.96 s."""
    from trilemma.experiments.trials import repeat
    from trilemma.plan.simulate import simulate

    rng = random.Random(1)
    steps = []
    for i in range(40):
        deps = sorted({f"s{rng.randrange(i)}" for _ in range(rng.randint(0, 2))}) if i else []
        steps.append(f"{{id: s{i}, model: {rng.choice('ab')}, after: [{', '.join(deps)}], "
                     "retries: 2}")  # fmt: skip
    wf = parse_workflow(
        "version: 1\nconcurrency: 4\nmodels:\n"
        "  a: {usd_per_call: 0.01, latency_s: 0.1, p_ok: 0.8, latency_jitter: 0.3}\n"
        "  b: {usd_per_call: 0.01, latency_s: 0.2, p_ok: 0.8, latency_jitter: 0.3}\n"
        "steps:\n" + "".join(f"  - {s}\n" for s in steps)
    )  # fmt: skip
    s = simulate(wf, 20_000, seed=1, keep=True).samples
    assert s is not None
    predicted = float(s["latency"][s["ok"]].mean())
    trials = repeat(wf, 100, Journal(tmp_path / "j.db"), seed=0, time_scale=0.1)
    measured = [t.latency_s for t in trials if t.status == "ok"]
    assert len(measured) > 50
    assert sum(measured) / len(measured) == pytest.approx(predicted, rel=0.05)


def test_a_refusal_when_the_stop_passes_does_not_fail_the_run() -> None:
    """In the slots the vote's samples go first and the dear call waits for a slot, which
    frees as the stop step passes: the run ends there, and the ceiling's refusal comes no
    sooner. Both Monte Carlos count it so (the vectorised one counted the call the ceiling
    refused as a failure that ended the run)."""
    from trilemma.plan.simulate import simulate, simulate_loop

    wf = parse_workflow("""version: 1
concurrency: 4
stop_when: s0
models:
  a: {usd_per_call: 0.01, latency_s: 0.02, p_ok: 1.0, latency_jitter: 0.3}
  b: {usd_per_1m_input: 1.0, usd_per_1m_output: 2.0, latency_s: 0.04, p_ok: 0.9}
steps:
  - {id: s0, model: b}
  - {id: s1, model: a, escalate: [b], retries: 1}
  - {id: s2, model: b, vote: {samples: 3}}
  - {id: s3, model: b, after: [s2]}
""")
    fast = simulate(wf, 20_000, seed=1, max_cost_usd=0.0093)
    ok, _, _ = simulate_loop(wf, 3_000, seed=1, max_cost_usd=0.0093)
    assert fast.success_rate == pytest.approx(0.81, abs=0.02)
    assert ok == pytest.approx(fast.success_rate, abs=0.02)


# The executor sends by priority when a step fans out.


def test_a_fanned_out_step_on_the_longer_path_takes_the_free_slots_first(tmp_path: Path) -> None:
    """A vote of three (then a step after it) beside a lone call, in three slots: the vote's
    samples go first, as the replay has it (0.10 s). Its samples are tasks that first run a
    turn after the lone call's, which took a slot first (0.15 s) until they took theirs in
    the vote's own turn."""
    wf = parse_workflow("version: 1\nconcurrency: 3\nmodels:\n"
                        "  m: {usd_per_call: 0.01, latency_s: 0.05, p_ok: 1.0}\nsteps:\n"
                        "  - {id: x, model: m}\n  - {id: v, model: m, vote: {samples: 3}}\n"
                        "  - {id: c, model: m, after: [v]}\n")  # fmt: skip
    assert scheduled(wf) == pytest.approx(0.10)
    for i in range(3):
        r = execute(wf, journal=Journal(tmp_path / f"{i}.db"), seed=i)
        assert r.status == "ok" and r.latency_s == pytest.approx(0.10, rel=0.12)


def test_no_slot_is_lost_when_runs_are_cut(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """Deadlines and early stops cut random runs of votes and debates in two or three slots
    in flight: every slot taken is given back (a call cancelled before its task ran
    included), and nothing waits for one."""
    from trilemma.run import executor as ex
    from trilemma.run.limits import PriorityLimiter

    made: list[tuple[PriorityLimiter, int]] = []

    class Counted(PriorityLimiter):
        def __init__(self, slots: int) -> None:
            super().__init__(slots)
            made.append((self, slots))

    monkeypatch.setattr(ex, "PriorityLimiter", Counted)
    # p answers, and in its turn v (below it) takes slots for its three samples; s0 answers
    # in the same turn of the loop, stops the run and cancels v before the samples ran
    stops = parse_workflow("version: 1\nconcurrency: 8\nstop_when: s0\nmodels:\n"
                           "  m: {usd_per_call: 0.01, latency_s: 0.05, p_ok: 1.0}\nsteps:\n"
                           "  - {id: p, model: m}\n  - {id: s0, model: m}\n"
                           "  - {id: v, model: m, after: [p], vote: {samples: 3}}\n"
                           "  - {id: c, model: m, after: [v]}\n")  # fmt: skip
    for i in range(3):
        made.clear()
        r = execute(stops, journal=Journal(tmp_path / f"stop{i}.db"), seed=i)
        assert r.status == "ok" and r.latency_s == pytest.approx(0.05, rel=0.2)
        assert [(limiter.free, size) for limiter, size in made] == [(8, 8)]
    rng = random.Random(11)
    cut = 0
    for i in range(24):
        wf = _random_dag(rng, 8, 0.3)
        wf = wf.model_copy(update={"concurrency": rng.randint(2, 3)})
        if i % 2:
            wf = wf.model_copy(update={"stop_when": f"s{rng.randrange(8)}"})
        made.clear()
        r = execute(wf, journal=Journal(tmp_path / f"{i}.db"), seed=i,
                    deadline_s=rng.choice([0.03, 0.06, 0.1, None]))  # fmt: skip
        cut += r.status != "ok"
        for limiter, size in made:
            assert limiter.free == size and not limiter._waiters
    assert cut > 5


def test_the_expected_latency_in_the_slots_is_drawn_where_times_vary(cli: Any) -> None:
    """examples/fan-out.yaml: twelve jittery, retried summaries in four slots, then a merge.
    A replay of mean times said 5.44 s; the runs take 6.22 s on average (no deadline)."""
    from .conftest import EXAMPLES

    wf = parse_workflow((EXAMPLES / "fan-out.yaml").read_text()).with_budget(deadline_s=None)
    e = estimate(wf)
    assert e.latency_in_slots_s is not None and e.latency_expected_s == e.latency_in_slots_s
    assert e.latency_expected_s == pytest.approx(simulate(wf, 40_000, seed=2, halt=False).latency_s.mean,
                                                 rel=0.02)  # fmt: skip
    assert e.latency_worst_s >= e.latency_expected_s
    replayed = estimate(wf, draw_slots=False)  # the optimizer's search on worst figures
    assert replayed.latency_in_slots_s is None
    assert replayed.latency_expected_s == pytest.approx(5.44, abs=0.01)
    assert replayed.latency_expected_s < e.latency_expected_s - 0.5
    got = cli("estimate", EXAMPLES / "fan-out.yaml", "--json").json()["latency_s"]
    assert got["in_slots"] == got["expected"] == pytest.approx(e.latency_in_slots_s, abs=1e-6)
    said = " ".join(cli("estimate", EXAMPLES / "fan-out.yaml").out.split())
    assert "the expected latency is the mean of 2,048 runs drawn in them" in said


def test_the_slots_draws_are_kept_per_spec(monkeypatch: pytest.MonkeyPatch) -> None:
    """A batch or compare's runs estimate one spec many times: it is drawn once."""
    import trilemma.plan.simulate as sim
    from trilemma.plan import estimate as est

    from .conftest import EXAMPLES

    drawn: list[int] = []
    real = sim.simulate
    monkeypatch.setattr(sim, "simulate", lambda *a, **k: drawn.append(1) or real(*a, **k))
    est._drawn.cache_clear()
    wf = parse_workflow((EXAMPLES / "fan-out.yaml").read_text())
    first = estimate(wf, draw_runs=False).latency_expected_s
    assert estimate(wf, draw_runs=False).latency_expected_s == first and len(drawn) == 1
    assert estimate(wf.with_budget(max_cost_usd=1.0), draw_runs=False).latency_expected_s == first  # drawn alike (no ceiling)
    estimate(wf.model_copy(update={"concurrency": 3}), draw_runs=False)
    assert len(drawn) == 3  # each other spec draws its own
    estimate(wf), estimate(wf)  # fan-out.yaml is 98.9% reliable: its halting runs, once
    assert len(drawn) == 4


def test_an_early_stop_in_the_slots_is_drawn_in_them() -> None:
    """fan-out.yaml's merge as the stop, one step after it, no deadline: the stop's
    schedule left the four slots out (3.55 s expected) where the runs take 6.23 s."""
    from .conftest import EXAMPLES

    doc = (EXAMPLES / "fan-out.yaml").read_text().replace("budget: {deadline_s: 4.5}", "")
    doc += "  - {id: polish, model: large, after: [merge]}\nstop_when: merge\n"
    wf = parse_workflow(doc)
    e = estimate(wf)
    assert e.stop is not None and e.latency_in_slots_s is not None
    assert e.latency_expected_s == pytest.approx(simulate(wf, 40_000, seed=2, halt=False).latency_s.mean,
                                                 rel=0.02)  # fmt: skip
    assert e.latency_worst_s >= e.latency_scheduled_s + 0.8  # replayed in the slots too
    assert estimate(wf, draw_slots=False).latency_expected_s < 4.0  # the stop's own schedule
