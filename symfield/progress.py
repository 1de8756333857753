"""No hang without a word: a progress bar with a time estimate on stderr, and a budget.

A long computation calls a :class:`Progress` with the fraction of its work done.
After a short calibration (``CALIBRATION`` seconds) the projected run time is
known: a run that would exceed the budget is refused with a
:class:`~symfield.spec.SpecError` naming the parameter that sets the work, its
value and the largest value that fits; a shorter run draws a bar with the
elapsed and the remaining time on stderr.
"""

from __future__ import annotations

import math
import os
import sys
import time
from collections.abc import Callable
from typing import TextIO

from .spec import SpecError

#: Compute budget of one command, seconds (``SYMFIELD_MAX_SECONDS`` overrides it).
MAX_SECONDS = 600.0
#: Seconds of work before the projection is trusted (and the bar appears).
CALIBRATION = 1.0
BAR = 24


def budget() -> float:
    value = os.environ.get("SYMFIELD_MAX_SECONDS")
    try:
        return float(value) if value else MAX_SECONDS
    except ValueError:
        return MAX_SECONDS


class Progress:
    """Report progress of one command; refuse it when its projection exceeds the budget.

    ``parameter`` / ``value`` name what sets the amount of work (e.g. depth); when
    the work is proportional to it (``proportional``) the refusal names the
    largest value that fits in the budget.
    """

    def __init__(self, label: str, parameter: str, value: object, *,
                 proportional: bool = True, stream: TextIO | None = None,
                 limit: float | None = None):
        self.label = label
        self.parameter, self.value, self.proportional = parameter, value, proportional
        self.stream = stream if stream is not None else sys.stderr
        self.limit = budget() if limit is None else limit
        self.start = time.perf_counter()
        self.last_draw = 0.0
        self.drawn = False
        self.stage = ""
        # the projection extrapolates the rate of the current stage
        self.stage_start, self.stage_fraction = self.start, 0.0

    def __call__(self, fraction: float) -> None:
        now = time.perf_counter()
        elapsed = now - self.start
        in_stage = now - self.stage_start
        done = min(fraction, 1.0) - self.stage_fraction
        if in_stage < CALIBRATION or done <= 0:
            return
        total = (self.stage_start - self.start) + in_stage / done * (1 - self.stage_fraction)
        if total > self.limit:
            self.close()
            allowed = (f"the run would take about {total:.0f} s here, over the "
                       f"{self.limit:.0f} s limit")
            if self.proportional and isinstance(self.value, (int, float)):
                fit = max(1, math.floor(float(self.value) * self.limit / total))
                allowed += f": use {self.parameter} <= {fit}"
            raise SpecError(self.parameter, self.value, allowed)
        if now - self.last_draw >= (0.25 if self.stream.isatty() else 5.0):
            self.last_draw = now
            self.draw(fraction, elapsed, total - elapsed)

    def span(self, lo: float, hi: float, stage: str = "") -> Callable[[float], None]:
        """A callback for one stage that covers the fractions [lo, hi] of the work."""
        def report(fraction: float) -> None:
            value = lo + (hi - lo) * min(max(fraction, 0.0), 1.0)
            if stage != self.stage:
                self.stage = stage
                self.stage_start, self.stage_fraction = time.perf_counter(), value
            self(value)
        return report

    def draw(self, fraction: float, elapsed: float, left: float) -> None:
        filled = int(BAR * min(fraction, 1.0))
        stage = f" {self.stage}" if self.stage else ""
        text = (f"symfield: {self.label}{stage} [{'#' * filled}{'.' * (BAR - filled)}] "
                f"{100 * fraction:3.0f}%  {elapsed:.0f} s elapsed, ~{left:.0f} s left")
        if self.stream.isatty():
            self.stream.write("\r" + text.ljust(78))
        else:
            self.stream.write(text + "\n")
        self.stream.flush()
        self.drawn = True

    def close(self) -> None:
        if self.drawn and self.stream.isatty():
            self.stream.write("\n")
            self.stream.flush()
        self.drawn = False
