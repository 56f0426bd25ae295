"""A rich table that, on a terminal too narrow for it, wraps its headers before it cuts a value."""

from __future__ import annotations

from rich.console import Console, ConsoleOptions, RenderResult
from rich.measure import Measurement
from rich.table import Table

__all__ = ["FittedTable"]


class FittedTable(Table):
    """rich's :class:`~rich.table.Table`, narrowed with care when it does not fit.

    Left to itself, rich shrinks the widest columns first: on a 100-column terminal a table
    of ten figures shows "$0.18…" and "expec…" while its headers still have room to wrap.
    This table, when too wide, gives each column at least its longest word (of the header
    or of any value: a figure is never cut, a header or an interval wraps at its spaces),
    then the room left to the columns that need least of it to fit on one line. If even
    the longest words do not fit and the table has borders between its columns, it drops
    the spaces beside them, and if that is not enough either, its widest column that may
    wrap (a name, more often than not; ``no_wrap`` keeps an id whole) folds onto more
    lines. On a terminal wide enough it renders exactly as a :class:`Table`.
    """

    def __rich_console__(self, console: Console, options: ConsoleOptions) -> RenderResult:
        if self._width(console, options) > options.max_width:
            self._fit(console, options)
        yield from super().__rich_console__(console, options)

    def _width(self, console: Console, options: ConsoleOptions) -> int:
        return self.__rich_measure__(console, options).maximum

    def _fit(self, console: Console, options: ConsoleOptions) -> None:
        free = [c for c in self.columns if c.width is None]
        least, most, values = [], [], []
        for column in free:
            header = str(column.header)
            cells = [Measurement.get(console, options, c) for c in column.cells]
            least.append(max(*map(len, header.split() or [""]), *(m.minimum for m in cells)))
            values.append(max((m.maximum for m in cells), default=0))
            most.append(max(len(header), values[-1]))
        for column, width in zip(free, least, strict=True):
            column.width = width
        if self.box is not None and self._width(console, options) > options.max_width:
            self.padding = (0, 0)
        room = options.max_width - self._width(console, options)
        foldable = [i for i in range(len(free)) if not free[i].no_wrap]
        if room < 0 and foldable:  # the widest column, a name more often than not, folds
            widest = max(foldable, key=lambda i: least[i])
            free[widest].width = max(least[widest] + room, 4)
            free[widest].overflow = "fold"
            return
        short = sorted(range(len(free)), key=lambda i: most[i] - least[i])
        for i in short:  # whole: a column that then fits on one line
            if most[i] - least[i] <= room:
                free[i].width, room = most[i], room - (most[i] - least[i])
        for i in short:  # the rest where it helps: a value of several words wraps less
            width = free[i].width or 0
            grow = max(min(room, values[i] - width), 0)
            free[i].width, room = width + grow, room - grow
