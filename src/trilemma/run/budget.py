"""Spend that cannot overrun: reserve the worst case before a call, settle after.

Everything runs on one event loop, and nothing awaits between the check and
the reservation, so concurrent calls cannot together cross the ceiling.
"""

from __future__ import annotations

import time
from collections.abc import Callable
from dataclasses import dataclass

from trilemma._format import dollars
from trilemma._tasks import loop_now, run_wall_clock
from trilemma.errors import BudgetExhausted, DeadlineExceeded

__all__ = ["Clock", "Reservation", "SpendGuard", "over_ceiling"]

EPS = 1e-12


def over_ceiling(
    amount: float, ceiling: float, spent: float, reserved: float, scope: str = ""
) -> BudgetExhausted:
    """The refusal of a call whose worst case ``amount`` would cross ``ceiling``; ``scope``
    says whose spend the figures count."""
    return BudgetExhausted(
        f"a call's worst case {dollars(amount)} would take spend past the {dollars(ceiling)} "
        f"ceiling ({dollars(spent)} spent, {dollars(reserved)} held by calls in flight{scope})"
    )


@dataclass(slots=True)
class Reservation:
    """Dollars held for one call until it settles."""

    amount: float
    """Held, the call's worst case."""
    open: bool = True
    """Not yet settled or released."""
    shared: Reservation | None = None
    """The same call's hold under a ceiling shared with other runs, if there is one."""


class SpendGuard:
    """A cost ceiling (None: none) and what has been spent and reserved under it."""

    def __init__(self, ceiling: float | None, spent: float = 0.0) -> None:
        self.ceiling = ceiling
        self.spent = spent
        self.reserved = 0.0
        self.holding = 0
        """Reservations open; at none, ``reserved`` is exactly 0, without float drift."""
        self.refused = 0
        """Calls not sent because their reservation would have crossed the ceiling."""

    def reserve(self, amount: float) -> Reservation:
        """Hold ``amount``, or raise BudgetExhausted and send nothing."""
        if self.ceiling is not None and self.spent + self.reserved + amount > self.ceiling + EPS:
            self.refused += 1
            raise over_ceiling(amount, self.ceiling, self.spent, self.reserved)
        self.reserved += amount
        self.holding += 1
        return Reservation(amount)

    def fits(self, amount: float) -> bool:
        """``amount`` can be held now without crossing the ceiling (nothing is held)."""
        return self.ceiling is None or self.spent + self.reserved + amount <= self.ceiling + EPS

    def settle(self, r: Reservation, cost: float) -> None:
        """The call answered and cost ``cost``: release the hold, count the spend."""
        self._close(r)
        self.spent += cost

    def release(self, r: Reservation) -> None:
        """The call returned only an error: nothing is billed."""
        self._close(r)

    def _close(self, r: Reservation) -> None:
        if r.open:
            r.open = False
            self.holding -= 1
            # adding and taking back 0.1, 0.2 and 0.3 leaves 5.6e-17, shown as "$-0.0000"
            self.reserved = self.reserved - r.amount if self.holding else 0.0

    @property
    def exhausted(self) -> bool:
        """A reservation has been refused."""
        return self.refused > 0


class Clock:
    """A wall-clock deadline (epoch seconds; None: none), which carries over a resume, kept
    on the event loop's clock from the moment the Clock is made (:attr:`due`).

    On a virtual clock (a simulated trial's) the deadline nears by the idle time the loop
    skips as well, and :attr:`now` reads the run's wall clock, which the journal's times are
    written in. ``within``: a deadline that many seconds from the Clock's making, which a
    run's latency counts from as well (:attr:`started`), so a run cut by it never measures
    less, and one it did not cut more only by the event loop's last turn (microseconds).
    """

    def __init__(self, deadline_at: float | None = None, *, within: float | None = None) -> None:
        self.now: Callable[[], float] = run_wall_clock()
        """Epoch seconds as the run sees them (``time.time`` but on a virtual clock)."""
        self.started = loop_now()
        """The event loop's clock when the Clock was made."""
        wall = time.time()
        self.deadline_at = wall + within if within is not None else deadline_at
        self.due = None if self.deadline_at is None else self.started + (self.deadline_at - wall)
        """The deadline on the event loop's clock (None: none)."""

    def remaining(self) -> float | None:
        """Seconds left (None without a deadline)."""
        return None if self.due is None else self.due - loop_now()

    def check(self) -> None:
        """Raise DeadlineExceeded once the deadline has passed."""
        left = self.remaining()
        if left is not None and left <= 0:
            raise DeadlineExceeded("the run's deadline passed")
