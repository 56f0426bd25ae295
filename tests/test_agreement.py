"""The tests that say whether what runs measured agrees with the plan (plan/agreement.py)."""

from __future__ import annotations

import math
import random
import statistics

import pytest

from trilemma.plan.agreement import (
    binomial_p,
    drawn_mean_figure,
    holm,
    mean_figure,
    mean_interval,
    mean_p,
    off_plan,
    student_p,
    student_t95,
)


def _brute(k: int, n: int, p: float) -> float:
    pmf = [math.comb(n, i) * p**i * (1 - p) ** (n - i) for i in range(n + 1)]
    return min(1.0, math.fsum(x for x in pmf if x <= pmf[k] * (1 + 1e-7)))


def test_the_exact_binomial_p_value_sums_every_count_no_likelier() -> None:
    """On both sides of the mean, as R's binom.test and scipy's binomtest: every count of
    small trials, and random ones."""
    for n in range(1, 40):
        for p in (0.5, 1 / 3, 0.1, 0.9, 0.995, 0.005):
            for k in range(n + 1):
                assert binomial_p(k, n, p) == pytest.approx(_brute(k, n, p), abs=1e-12), (k, n, p)
    rng = random.Random(7)
    for _ in range(2_000):
        n = rng.randint(1, 150)
        p, k = rng.uniform(0.001, 0.999), rng.randint(0, n)
        assert binomial_p(k, n, p) == pytest.approx(_brute(k, n, p), abs=1e-12), (k, n, p)
    # one miss in ten at 0.995 happens 4.9% of the time; the doubled tail said 9.8%
    assert binomial_p(9, 10, 0.995) == pytest.approx(1 - 0.995**10)


def test_the_exact_binomial_p_value_at_the_edges() -> None:
    assert binomial_p(0, 0, 0.5) == 1.0  # nothing measured: nothing contradicted
    assert binomial_p(0, 50, 0.0) == 1.0 and binomial_p(1, 50, 0.0) == 0.0
    assert binomial_p(50, 50, 1.0) == 1.0 and binomial_p(49, 50, 1.0) == 0.0
    assert binomial_p(0, 10**6, 0.01) == 0.0  # its first term underflows: far beyond chance
    # a million trials sums only the tail's few thousand terms, and agrees with the normal
    z = (400_000 - 10**6 * 0.4003) / math.sqrt(10**6 * 0.4003 * 0.5997)
    assert binomial_p(400_000, 10**6, 0.4003) == pytest.approx(math.erfc(abs(z) / math.sqrt(2)), rel=0.02)


def test_the_exact_test_never_alarms_more_often_than_its_level() -> None:
    """Where the Wilson interval's coverage dips (p near 1, a few trials), the exact test
    keeps its false alarms under 5%: summed over every outcome k of n trials."""
    for n in (10, 15, 30, 60):
        for p in (0.9, 0.985, 0.995):
            alarms = math.fsum(math.comb(n, k) * p**k * (1 - p) ** (n - k)
                               for k in range(n + 1) if binomial_p(k, n, p) <= 0.05)  # fmt: skip
            assert alarms <= 0.05, (n, p, alarms)


def test_the_mean_s_p_value() -> None:
    values = [1.0, 1.1, 0.9, 1.05, 0.95] * 20
    se = statistics.stdev(values) / math.sqrt(len(values))
    assert mean_p(values, 1.0) == pytest.approx(1.0)
    assert mean_p(values, 1.0 + student_t95(99) * se) == pytest.approx(0.05, abs=1e-9)
    assert mean_p(values, 1.0 + 1.959964 * se) == pytest.approx(0.0528, abs=1e-4)  # t, not z
    assert mean_p([2.0], 1.0) == 1.0  # one value: no spread to weigh it by
    assert mean_p([2.0, 2.0], 2.0) == 1.0 and mean_p([2.0, 2.0], 1.0) == 0.0
    # a Monte Carlo's mean of calls that all cost $0.03 is 0.03000000000000001
    assert mean_p([0.03] * 40, 0.03000000000000001) == 1.0


def test_student_s_t_against_its_closed_forms_and_tables() -> None:
    for t in (0.0, 0.1, 0.7, 1.0, 2.5, 12.7, 1e3):
        assert student_p(t, 1) == pytest.approx(1 - 2 / math.pi * math.atan(t), abs=1e-14)  # Cauchy
        assert student_p(t, 2) == pytest.approx(1 - t / math.sqrt(2 + t * t), abs=1e-14)
        assert student_p(t, 10**8) == pytest.approx(math.erfc(t / math.sqrt(2)), abs=1e-8)  # normal
    for df, quantile in ((1, 12.7062), (2, 4.3027), (4, 2.7764), (10, 2.2281), (39, 2.0227),
                         (100, 1.9840), (10**6, 1.9600)):  # fmt: skip
        assert student_t95(df) == pytest.approx(quantile, abs=1e-4), df
        assert student_p(student_t95(df), df) == pytest.approx(0.05, abs=1e-9)


def test_the_mean_s_test_alarms_at_its_level_on_few_values() -> None:
    """Five latencies drawn around the figure: the normal test called 12% of them off at 5%;
    Student's t, 5%. Its 95% interval holds the figure exactly when the test does not."""
    rng = random.Random(5)
    checks, alarms = 20_000, 0
    for _ in range(checks):
        values = [rng.gauss(1.0, 0.2) for _ in range(5)]
        p = mean_p(values, 1.0)
        alarms += p <= 0.05
        lo, hi = mean_interval(values)  # type: ignore[misc]
        assert (lo <= 1.0 <= hi) == (p > 0.05) or abs(p - 0.05) < 1e-9
    assert 0.045 <= alarms / checks <= 0.055
    assert mean_interval([1.0]) is None


def test_holm_keeps_the_chance_of_any_false_alarm_at_its_level() -> None:
    """Ten true figures, each p uniform: at 95% each, some alarm in ~40% of checks; weighed
    together, in at most 5%."""
    rng = random.Random(3)
    checks = 4_000
    apart = together = 0
    for _ in range(checks):
        ps = [rng.random() for _ in range(10)]
        apart += any(p <= 0.05 for p in ps)
        together += any(holm(ps))
    assert apart / checks > 0.35 and together / checks <= 0.06
    assert holm([]) == [] and holm([0.0, 1.0]) == [True, False]
    assert holm([0.01, 0.02, 0.04]) == [True, True, True]  # 0.01<=0.0167, 0.02<=0.025, 0.04<=0.05


def test_a_batch_s_success_is_off_the_plan_no_more_often_than_chance_says() -> None:
    """Summed over every count of runs ok: the 99% Wilson interval a batch used to read called
    one miss in twenty runs of a debate planned at 0.995 off, which 9.5% of honest batches
    see; the exact test, at most 5% of them, at any size and plan."""
    assert off_plan([0.01] * 20, 19, None, 0.995) == (None, None)
    for n in (20, 30, 60, 100):
        for p in (0.9, 0.99, 0.995):
            alarms = math.fsum(math.comb(n, k) * p**k * (1 - p) ** (n - k)
                               for k in range(n + 1) if off_plan([0.01] * n, k, None, p)[1])  # fmt: skip
            assert alarms <= 0.05, (n, p, alarms)


def test_a_batch_s_cost_and_success_are_weighed_together() -> None:
    """15 of 20 runs ok at 0.9 planned (p 0.043) is off weighed alone, not beside the cost
    (Holm's first mark: 2.5%); 14 of 20 (p 0.011) is off either way. Honest batches whose
    runs' costs are skewed (a retry doubles a bill) called one of the two off 8.5% of the
    time, each test apart; together, 5.4% (the t test of bills as skewed as an exponential's
    alarms a little more often than its level: 6.8% at 5% over 40 runs)."""
    alone = off_plan([0.01] * 20, 15, None, 0.9)[1]
    assert alone is not None and alone.p_value == pytest.approx(0.0432, abs=1e-4)
    assert off_plan([0.01] * 20, 15, 0.01, 0.9) == (None, None)
    off = off_plan([0.01] * 20, 14, 0.01, 0.9)[1]
    assert off is not None and (off.field, off.measured, off.profile) == ("success", 0.7, 0.9)
    assert off.p_value == pytest.approx(0.0113, abs=1e-4)
    assert off_plan([0.01] * 19, 5, 0.02, 0.99) == (None, None)  # too few runs to weigh
    never = off_plan([0.01] * 20, 19, 0.01, 1.0)[1]  # planned never to fail: contradicted outright
    assert never is not None and (never.measured, never.profile, never.p_value) == (0.95, 1.0, 0.0)
    rng = random.Random(3)
    batches, alarms = 4_000, 0
    for _ in range(batches):
        costs = [rng.expovariate(100.0) for _ in range(40)]  # $0.01 a run on average
        ok = sum(rng.random() < 0.9 for _ in range(40))
        alarms += off_plan(costs, ok, 0.01, 0.9) != (None, None)
    assert alarms / batches <= 0.06


def _two_point(n: int, dear: int, price: float = 5.7) -> list[float]:
    """``n`` bills, ``dear`` of them at ``price`` times the rest's $1: a route whose dear branch
    is rare (routed.yaml's runs take a 5.7x branch 14% of the time)."""
    return [price] * dear + [1.0] * (n - dear)


def test_a_mean_weighed_against_the_plan_s_draws_holds_its_level_where_bills_are_skewed() -> None:
    """Honest batches of 40 runs whose bills take a 5.7x branch 14% of the time: the t test
    calls their mean off more often than its 5% (a batch that drew the branch twice looks
    cheaper than the values' own spread explains), the means of the plan's draws at most 5%.
    Where the branch is taken 25% of the time against 14% planned (33% dearer), the draws
    catch it more often than the t test (44% against 31%: the t test's skew hides a dear
    batch as it shows a cheap one)."""
    drawn = _two_point(2048, 287)  # 14.0%
    planned = statistics.fmean(drawn)
    rng = random.Random(11)
    batches = 1_000

    def alarms(share: float, test) -> float:
        said = 0
        for _ in range(batches):
            values = [5.7 if rng.random() < share else 1.0 for _ in range(40)]
            (f,) = test(values)
            said += f.p_value <= 0.05 and f.material
        return said / batches

    t_test = alarms(287 / 2048, lambda v: mean_figure("cost", planned, v, 0.1))
    by_draws = alarms(287 / 2048, lambda v: drawn_mean_figure("cost", planned, v, drawn, 0.1))
    assert t_test > 0.06 and by_draws <= 0.05, (t_test, by_draws)
    dear_t = alarms(0.25, lambda v: mean_figure("cost", planned, v, 0.1))
    dear_by_draws = alarms(0.25, lambda v: drawn_mean_figure("cost", planned, v, drawn, 0.1))
    assert dear_by_draws > dear_t + 0.05 and dear_by_draws > 0.4, (dear_t, dear_by_draws)


def test_a_batch_that_drew_the_dear_branch_twice_is_chance_by_the_plan_s_draws() -> None:
    drawn = _two_point(2048, 287)
    planned = statistics.fmean(drawn)
    twice = _two_point(40, 2)  # 27% under the plan: P(2 or fewer of 40 at 14%) = 6.8%
    by_t = off_plan(twice, 40, planned, 1.0)[0]
    assert by_t is not None and by_t.p_value < 0.02  # the values' own spread is small
    assert off_plan(twice, 40, planned, 1.0, cost_drawn=drawn) == (None, None)
    (f,) = drawn_mean_figure("cost", planned, twice, drawn, 0.1)
    assert f.p_value == pytest.approx(2 * 0.068, abs=0.01) and f.ci95[0] <= planned <= f.ci95[1]
    never = off_plan(_two_point(40, 0), 40, planned, 1.0, cost_drawn=drawn)[0]  # P = 0.24%
    assert never is not None and never.p_value < 0.01 and not never.ci95[0] <= planned <= never.ci95[1]
    # a plan figure a little off its own draws' mean (a halting run's cost worked out, the
    # draws' share of dear runs 0.2% under it) weighs the bills the draws can make: one dear
    # run of forty is 2 x 1.8% of batches (scaling the draws to the figure had said 0.6%)
    (once,) = drawn_mean_figure("cost", planned * 1.008, _two_point(40, 1), drawn, 0.1)
    assert once.p_value == pytest.approx(2 * 0.0182, abs=0.005)
    # the same values judged alike (a fixed seed); bills and draws twice as dear, alike too
    assert drawn_mean_figure("cost", planned, twice, drawn, 0.1) == [f]
    doubled = drawn_mean_figure("cost", 2 * planned, [2 * x for x in twice], [2 * x for x in drawn], 0.1)
    assert doubled[0].p_value == f.p_value


def test_the_plan_s_draws_give_way_where_they_cannot_weigh() -> None:
    values = [0.01, 0.012, 0.011, 0.009] * 5
    for drawn in ([], [0.0] * 10):  # nothing drawn, or a plan of nothing
        assert drawn_mean_figure("cost", 0.01, values, drawn, 0.1) == mean_figure("cost", 0.01, values, 0.1)
    assert drawn_mean_figure("cost", 0.0, values, [0.01], 0.1) == mean_figure("cost", 0.0, values, 0.1)
    # past 10,000 runs of bills of many kinds, the normal law of the plan's spread
    drawn = [0.01 * (1 + i / 1000) for i in range(1000)]
    planned = statistics.fmean(drawn)
    (same,) = drawn_mean_figure("cost", planned, [planned] * 20_000, drawn, 0.1)
    assert same.p_value == 1.0 and same.ci95[0] < planned < same.ci95[1]
    (off,) = drawn_mean_figure("cost", planned, [1.2 * planned] * 20_000, drawn, 0.1)
    assert off.p_value < 1e-12 and off.material
    # bills of few kinds are counted exactly at any size: 20,000 runs, 14.0% dear as planned
    two = _two_point(2048, 287)
    (counted,) = drawn_mean_figure("cost", statistics.fmean(two), _two_point(20_000, 2802), two, 0.1)
    assert counted.p_value > 0.5
    (flat,) = drawn_mean_figure("cost", 0.01, [0.01] * 20_000, [0.01] * 100, 0.1)
    assert flat.p_value == 1.0


def test_bills_of_many_kinds_are_resampled_run_by_run() -> None:
    """Bills drawn from a lognormal (every one its own: past 64 distinct bills the runs are
    resampled one by one): honest batches of 40 drawn from the plan's own runs are called
    off at about the test's level; batches twice as dear, nearly always."""
    rng = random.Random(4)
    drawn = [rng.lognormvariate(0.0, 1.0) for _ in range(5_000)]
    planned = statistics.fmean(drawn)
    honest = dear = 0
    for _ in range(200):
        values = [rng.choice(drawn) for _ in range(40)]
        (f,) = drawn_mean_figure("cost", planned, values, drawn, 0.1)
        honest += f.p_value <= 0.05 and f.material
        (g,) = drawn_mean_figure("cost", planned, [2.0 * v for v in values], drawn, 0.1)
        dear += g.p_value <= 0.05 and g.material
    assert honest / 200 <= 0.08 and dear / 200 >= 0.85, (honest, dear)
