"""`trilemma book` reproduces the seed's Output 32.10.1 from the seed's own code."""

from __future__ import annotations

from pathlib import Path

from trilemma.plan.book import PREMIUM, SMALL, book_report, chain, workflow

from .conftest import ROOT

GOLDEN = (Path(__file__).parent / "data" / "output-32-10-1.txt").read_text().rstrip("\n")
SEED = ROOT.parent / "shared" / "seed" / "chapter-32-10-cost-latency-reliability.txt"


def test_book_matches_output_32_10_1_line_for_line() -> None:
    assert book_report() == GOLDEN


def test_golden_file_is_the_seeds_own_text_when_the_seed_is_present() -> None:
    """The golden copy was cut from the seed; where the seed is beside the clone, they agree."""
    if SEED.exists():
        seed = SEED.read_text()
        start = seed.index("Baseline single premium agent")
        end = seed.index("N=48 steps") + len("N=48 steps  ->  end-to-end success = 48.41%")
        assert seed[start:end] == GOLDEN
    assert GOLDEN.count("\n") == 19


def test_cli_book_prints_the_table_then_the_quirks(cli) -> None:
    r = cli("book")
    assert r.code == 0
    assert r.out.startswith(GOLDEN + "\n")
    assert "parallel_group" in r.out and "11.2 s" in r.out


def test_cli_book_without_notes_is_exactly_the_output(cli) -> None:
    assert cli("book", "--no-notes").out == GOLDEN + "\n"


def test_route_row_latency_comes_from_reused_group_ids() -> None:
    """The quirk: concatenated chains share parallel_group ids 0..n-1."""
    _, quirky, _ = workflow(chain(4, PREMIUM) + chain(8, SMALL))
    honest = [dict(s, parallel_group=i) for i, s in enumerate(chain(4, PREMIUM) + chain(8, SMALL))]
    _, careful, _ = workflow(honest)
    assert round(quirky, 6) == 9.6
    assert round(careful, 6) == 11.2


def test_seed_workflow_counts_retries_as_free() -> None:
    cost0, _, p0 = workflow(chain(12, PREMIUM))
    cost1, _, p1 = workflow(chain(12, PREMIUM), retries=1)
    assert cost0 == cost1
    assert p1 > p0
