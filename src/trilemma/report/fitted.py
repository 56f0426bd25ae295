"""A rich table that, on a terminal too narrow for it, wraps its headers before it cuts a value."""

from __future__ import annotations

import copy
import dataclasses
from typing import Any

from rich import box
from rich.cells import cell_len
from rich.console import Console, ConsoleOptions, JustifyMethod, RenderableType, RenderResult
from rich.measure import Measurement
from rich.padding import Padding
from rich.style import StyleType
from rich.table import Table
from rich.text import Text

__all__ = ["MIN_FOLD", "FittedTable"]

MIN_FOLD = 12
"""The fewest cells a folded column of names keeps; narrower, the rows are stacked instead."""


class FittedTable(Table):
    """rich's :class:`~rich.table.Table`, narrowed with care when it does not fit.

    Left to itself, rich shrinks the widest columns first: on a 100-column terminal a table
    of ten figures shows "$0.18…" and "expec…" while its headers still have room to wrap.
    This table, when too wide, gives each column at least its longest word (of the header
    or of any value: a figure is never cut, a header or an interval wraps at its spaces),
    then the room left to values that would wrap (a line in every row), then to headers
    (a line once). If even the longest words do not fit and the table has borders between
    its columns, it drops the spaces beside them, then the lines between columns (a space
    parts them, a rule under the header stays); if that is not enough either, its widest
    left-aligned column (names; figures are right-aligned, and ``no_wrap`` keeps an id
    whole) folds onto more lines, if it keeps :data:`MIN_FOLD` cells. Where the figures
    still do not fit side by side, each row is shown as a block of its own, a "header
    value" line a column (as ``psql``'s expanded display), rather than let rich cut them.
    The fitting is made on a copy, for the width at hand. On a terminal wide enough it
    renders exactly as a :class:`Table`, but for a left-aligned title or caption wider than
    the table: rich wraps those at the table's width (optimize's title took three lines above
    a 48-column table on a 150-column terminal); here they take the terminal's. Its caption
    (notes under the figures, often two lines long) is left-aligned unless
    ``caption_justify`` says otherwise: rich centres it, which sets a wrapped note's second
    line adrift in the middle.
    """

    def __init__(self, *args: Any, caption_justify: JustifyMethod = "left", **kwargs: Any) -> None:
        super().__init__(*args, caption_justify=caption_justify, **kwargs)

    def __rich_console__(self, console: Console, options: ConsoleOptions) -> RenderResult:
        spans = [[_span(console, options, c) for c in col.cells] for col in self.columns]
        values = [max((most for _, most in s), default=0) for s in spans]
        width = self._width(console, options, values)
        if width <= options.max_width:
            yield from self._annotated(self, console, options, width)
            return
        fitted = copy.copy(self)  # fitted for this width only: the table may be drawn again
        fitted.columns = [copy.copy(c) for c in self.columns]
        fitted._fit(console, options, spans, values)
        width = fitted._width(console, options, values)
        if width > options.max_width:
            yield from fitted._stacked(console)
        else:
            yield from self._annotated(fitted, console, options, width)

    def _annotated(
        self, table: Table, console: Console, options: ConsoleOptions, width: int
    ) -> RenderResult:
        """``table`` (this one or its fitted copy, ``width`` wide) drawn by rich, with a
        left-aligned title or caption wider than it drawn apart, at the terminal's width."""
        def wide(text: RenderableType | None, justify: JustifyMethod, style: StyleType) -> Text | None:
            if text is None or justify != "left":
                return None  # (a centred one stays centred on the table)
            shown = console.render_str(text, style=style, highlight=False) if isinstance(
                text, str) else text  # as rich draws them  # fmt: skip
            return shown if isinstance(shown, Text) and shown.cell_len > width else None

        title = wide(table.title, table.title_justify, table.title_style or "table.title")
        caption = wide(table.caption, table.caption_justify, table.caption_style or "table.caption")
        if title is None and caption is None:
            yield from Table.__rich_console__(table, console, options)
            return
        drawn = copy.copy(table)
        drawn.title = None if title is not None else table.title
        drawn.caption = None if caption is not None else table.caption
        if title is not None:
            yield title
        yield from Table.__rich_console__(drawn, console, options)
        if caption is not None:
            yield caption

    def _stacked(self, console: Console) -> RenderResult:
        """Each row as a block: its first cell as the heading, then a line for each column."""
        def text(cell: RenderableType, style: str) -> RenderableType:
            return console.render_str(cell, style=style, highlight=False) if isinstance(
                cell, str) else cell  # fmt: skip

        if self.title:
            yield text(self.title, "table.title")
        columns = self.columns[1:]
        for first, *rest in zip(*(list(c.cells) for c in self.columns), strict=True):
            grid = Table.grid(padding=(0, 2), pad_edge=False)
            grid.add_column(no_wrap=True)
            grid.add_column(overflow="fold")
            for column, cell in zip(columns, rest, strict=True):
                if isinstance(cell, str):  # aligned as in its column: figures to the right
                    cell = console.render_str(cell, highlight=False)
                    cell.justify = column.justify
                grid.add_row(str(column.header), cell)
            yield text(first, "bold")
            yield Padding(grid, (0, 0, 0, 2), expand=False)
        if self.caption:
            yield text(self.caption, "table.caption")

    def _width(self, console: Console, options: ConsoleOptions, values: list[int]) -> int:
        """The table's width, measured on one row of each column's widest value (rich's own
        measure of every cell costs a second on a table of thousands of rows)."""
        proxy = copy.copy(self)
        proxy.columns = [dataclasses.replace(c, _cells=["x" * v]) for c, v in zip(self.columns, values, strict=True)]  # fmt: skip
        return proxy.__rich_measure__(console, options).maximum

    def _fit(
        self, console: Console, options: ConsoleOptions, spans: list[list[tuple[int, int]]],
        values: list[int],
    ) -> None:  # fmt: skip
        free = [i for i, c in enumerate(self.columns) if c.width is None]
        least, most = {}, {}
        for i in free:
            header = str(self.columns[i].header)
            least[i] = max((*map(cell_len, header.split()), *(w for w, _ in spans[i])), default=0)
            most[i] = max(cell_len(header), values[i])
            self.columns[i].width = least[i]
        if self.box is not None and self._width(console, options, values) > options.max_width:
            self.padding = (0, 0)
            if self._width(console, options, values) > options.max_width:  # a space, not a line
                self.box, self.show_edge = box.SIMPLE_HEAD, False
        room = options.max_width - self._width(console, options, values)
        foldable = [i for i in free if not self.columns[i].no_wrap  # names, not figures
                    and self.columns[i].justify in ("left", "default")]  # fmt: skip
        if room < 0:  # the widest column of names folds, if that leaves it readable
            widest = max(foldable, key=lambda i: least[i], default=None)
            if widest is not None and least[widest] + room >= MIN_FOLD:
                self.columns[widest].width = least[widest] + room
                self.columns[widest].overflow = "fold"
            return  # (else the rows are stacked)
        # A wrapped value costs a line in every row, a wrapped header one line: the room goes
        # to values first, whole where it can (the columns that need least first), then to
        # those still wrapped, then to headers.
        def widen(i: int, to: int) -> None:
            nonlocal room
            width = self.columns[i].width or 0
            grow = max(min(room, to - width), 0)
            self.columns[i].width, room = width + grow, room - grow

        for i in sorted(free, key=lambda i: values[i] - least[i]):
            if values[i] - least[i] <= room:
                widen(i, values[i])
        for i in sorted(free, key=lambda i: values[i]):  # a value of several words wraps less
            widen(i, values[i])
        for i in sorted(free, key=lambda i: most[i] - (self.columns[i].width or 0)):
            if most[i] - (self.columns[i].width or 0) <= room:
                widen(i, most[i])


def _span(console: Console, options: ConsoleOptions, cell: RenderableType) -> tuple[int, int]:
    """A cell's longest word and longest line, in terminal cells (rich's measure if not text)."""
    if isinstance(cell, str):
        words, lines = cell.split(), cell.splitlines()
        return max(map(cell_len, words), default=0), max(map(cell_len, lines), default=0)
    m = Measurement.get(console, options, cell)
    return m.minimum, m.maximum
