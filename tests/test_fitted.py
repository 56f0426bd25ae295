"""Tables on narrow terminals: headers wrap and names fold before a figure is cut."""

from __future__ import annotations

import io

from rich.console import Console
from rich.table import Table

from trilemma.report.fitted import FittedTable

HEADERS = ("step", "model", "calls", "retries", "cost book", "cost expected", "cost worst",
           "latency", "p attempt", "p step", "critical")  # fmt: skip
FIGURES = ("$0.1800", "$0.1827", "$0.3600", "4.00s", "0.9850", "0.9998")


def estimate_like(table: type[Table], **kw: object) -> Table:
    t = table(title="Estimate of ticket.yaml", title_justify="left", **kw)
    for h in HEADERS:
        t.add_column(h, justify="left" if h in ("step", "model") else "right")
    for step in ("triage", "diagnose", "draft"):
        t.add_row(step, "premium", "6", "1", *FIGURES[:3], FIGURES[3], *FIGURES[4:], "*")
    return t


def shown(t: Table, width: int) -> list[str]:
    console = Console(width=width, record=True, file=io.StringIO())
    console.print(t)
    return console.export_text().splitlines()


def test_on_a_wide_terminal_it_is_rich_s_own_table() -> None:
    assert shown(estimate_like(FittedTable), 150) == shown(estimate_like(Table), 150)


def test_at_100_columns_every_figure_and_header_word_is_whole() -> None:
    plain = "\n".join(shown(estimate_like(Table), 100))
    assert "$0.18…" in plain or "$0.1…" in plain  # rich alone cuts the figures
    lines = shown(estimate_like(FittedTable), 100)
    text = "\n".join(lines)
    assert "…" not in text, text
    assert max(map(len, lines)) <= 100
    for word in ("diagnose", "premium", "expected", "attempt", "critical", *FIGURES):
        assert word in text, word


def test_at_120_columns_headers_wrap_and_keep_their_spaces() -> None:
    lines = shown(estimate_like(FittedTable), 120)
    text = "\n".join(lines)
    assert "…" not in text and max(map(len, lines)) <= 120
    assert "│ triage   │" in text  # the spaces beside the borders are kept where they fit


def compare_like() -> FittedTable:
    t = FittedTable()
    for h in ("spec", "success", "cost", "latency", "calls", "q/$"):
        t.add_column(h, justify="left" if h == "spec" else "right")
    t.add_row("examples/a-rather-long-spec-name.yaml", "100.00% [83.89%, 100.00%]", "$0.0300",
              "2.14s", "1.00", "33.3")  # fmt: skip
    return t


def test_a_name_too_long_for_the_terminal_folds_and_the_figures_stay_whole() -> None:
    t = compare_like()
    lines = shown(t, 52)
    text = "\n".join(lines)
    assert "…" not in text and max(map(len, lines)) <= 52, text
    for figure in ("100.00%", "[83.89%,", "$0.0300", "2.14s", "1.00", "33.3"):
        assert figure in text, figure
    body = [line for line in lines[2:] if line.strip()]  # under the header and its rule
    assert "─" in lines[1] and "│" not in "".join(lines)  # no lines between columns left
    folded = "".join(line.split(" ")[0] for line in body)  # the name, on three lines
    assert folded == "examples/a-rather-long-spec-name.yaml"


def test_at_80_columns_the_lines_between_columns_go_before_a_figure_is_cut() -> None:
    t = FittedTable(title="Estimate of ticket.yaml", title_justify="left")
    for h in HEADERS[:-1]:  # the estimate marks its critical steps in the step's name
        t.add_column(h, justify="left" if h in ("step", "model") else "right")
    for step in ("triage*", "diagnose*", "draft*"):
        t.add_row(step, "premium", "6", "1", *FIGURES)
    lines = shown(t, 80)
    text = "\n".join(lines)
    assert "…" not in text and max(map(len, lines)) <= 80, text
    assert "┃" not in text and "│" not in text and "─" in text  # a rule under the header only
    for word in ("diagnose", "premium", "expected", "attempt", *FIGURES):
        assert word in text, word


def test_a_table_without_borders_keeps_the_spaces_between_its_columns() -> None:
    text = "\n".join(shown(estimate_like(FittedTable, box=None), 100))
    assert "$0.1800$0.1827" not in text and "$0.1800 " in text


def sweep_like() -> FittedTable:
    t = FittedTable(title="Budget sweep of cascade.yaml, 50 runs per budget", caption="planner")
    for h in ("budget", "success", "predicted", "stopped", "spend mean", "predicted ",
              "spend max", "outputs back", "latency mean", "baseline over", "baseline ok within"):
        t.add_column(h.strip(), justify="left" if h == "budget" else "right", no_wrap=h == "budget")
    for budget, row in (("baseline", ("98.00%", "99.84%", "0", "$0.0125", "$0.0110", "$0.0360",
                                      "98.00%", "1.77s", "-", "-")),
                        ("$0.006", ("78.00%", "84.31%", "11", "$0.0054", "$0.0057", "$0.0060",
                                    "82.67%", "1.22s", "22.00%", "78.00%"))):  # fmt: skip
        t.add_row(budget, *row)
    return t


def test_figures_that_cannot_fit_side_by_side_are_shown_a_row_at_a_time() -> None:
    """Eleven columns of figures on 80 columns: psql's expanded display, not cut figures."""
    assert "…" in "\n".join(shown(_as_table(sweep_like()), 80))  # rich alone cuts figures
    lines = shown(sweep_like(), 80)
    text = "\n".join(lines)
    assert "…" not in text and max(map(len, lines)) <= 80, text
    assert lines[0] == "Budget sweep of cascade.yaml, 50 runs per budget"
    start = lines.index("$0.006")  # the row's first cell heads its block
    block = [line.split() for line in lines[start + 1:start + 11]]
    assert block[0] == ["success", "78.00%"] and block[1] == ["predicted", "84.31%"]
    assert block[9] == ["baseline", "ok", "within", "78.00%"]
    assert lines[start + 1].startswith("  success") and lines[-1] == "planner"
    assert lines[start + 2].endswith("84.31%") and lines[start + 3].endswith(" 11")  # aligned
    assert shown(sweep_like(), 160) == shown(_as_table(sweep_like()), 160)  # wide: a table


def test_a_name_is_not_folded_to_a_sliver_the_rows_are_stacked() -> None:
    lines = shown(compare_like(), 46)  # the name would keep fewer than MIN_FOLD cells
    assert lines[0] == "examples/a-rather-long-spec-name.yaml", lines
    assert lines[1].split() == ["success", "100.00%", "[83.89%,", "100.00%]"]


def _as_table(t: FittedTable) -> Table:
    plain = Table(title=t.title, caption=t.caption, caption_justify=t.caption_justify)
    for c in t.columns:
        plain.add_column(c.header, justify=c.justify, no_wrap=c.no_wrap)
    for row in zip(*(list(c.cells) for c in t.columns), strict=True):
        plain.add_row(*row)
    return plain


def test_an_empty_table_too_wide_for_its_terminal_still_renders() -> None:
    """`cache stats` on an empty cache at 80 columns raised TypeError (max() of one word)."""
    t = FittedTable(title="Cache of j.db", caption="empty: steps with `cached:` fill it")
    for h in ("model", "answers", "with embeddings", "hits served", "semantic hits", "oldest"):
        t.add_column(h)
    lines = shown(t, 50)
    assert "…" not in "\n".join(lines) and max(map(len, lines)) <= 50
    assert "answers" in "\n".join(lines) and lines[-1].strip().startswith("empty")


def test_the_room_goes_to_values_that_wrap_before_headers() -> None:
    """A wrapped value costs a line in every row, a wrapped header one: optimize's frontier
    at 80 columns gave its headers their one line and its levers five lines a row."""
    t = FittedTable()
    for h in ("cost worst", "cost expected", "latency", "reliability", "meets budget"):
        t.add_column(h, justify="right")
    t.add_column("levers")
    for retries in range(0, 40, 5):
        t.add_row("$0.0240", "$0.0246", "1.30s", "66.29%", "yes", f"12 small; {retries} retries; parallel")
    lines = shown(t, 80)
    body = lines[lines.index(next(line for line in lines if "┡" in line)) + 1:-1]
    assert len(body) <= 2 * 8, "\n".join(lines)  # two lines a row at most
    assert "cost expected" not in "\n".join(lines)  # the header wrapped instead


def test_a_table_drawn_narrow_then_wide_is_a_whole_table_the_second_time() -> None:
    """The fitting is for one width: it used to stay in the table's columns."""
    t = sweep_like()
    assert "baseline" in shown(t, 80)  # stacked at 80 columns: the first cell heads a block
    assert shown(t, 160) == shown(_as_table(sweep_like()), 160)


def test_stacked_values_keep_their_column_s_alignment() -> None:
    lines = shown(estimate_like(FittedTable), 40)
    block = lines[lines.index("triage") + 1:lines.index("diagnose")]
    assert block[0].split() == ["model", "premium"] and block[0].endswith("premium")
    calls = next(line for line in block if line.split()[0] == "calls")
    assert calls.endswith(" 6") and len(calls) == len(block[0])  # a figure, to the right


def test_a_title_or_caption_wider_than_the_table_takes_the_terminal_s_width() -> None:
    """rich wraps them at the table's width: optimize's title took three lines above its
    three narrow columns on a 150-column terminal."""
    title = "Optimized by beam (width 256) + exchange: 137,438,953,472 configurations, 227 evaluated"
    note = "budget on worst figures: cost <= $0.1000, reliability >= 95.00%"

    def narrow(kind: type[Table], **kw: object) -> Table:
        t = kind(title=title, title_justify="left", caption=note, caption_justify="left", **kw)
        for h in ("", "original", "chosen"):
            t.add_column(h)
        t.add_row("cost worst", "$0.3600", "$0.0480")
        return t

    assert shown(narrow(Table), 150)[0] != title  # rich alone wraps it
    lines = shown(narrow(FittedTable), 150)
    assert lines[0] == title and lines[-1] == note
    assert lines[1].startswith("┏") and lines[-2].startswith("└")
    at60 = [line.rstrip() for line in shown(narrow(FittedTable), 60)]  # wrapped at the terminal's
    assert " ".join(at60[:2]) == title and max(map(len, at60)) <= 60
    centred = narrow(FittedTable, title_style="bold")
    centred.title_justify = "center"  # stays on the table, as rich has it
    assert shown(centred, 150)[0] != title
