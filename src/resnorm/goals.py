"""Goal lines: what a page set out to reach, what it measured, and whether it got there.

Every goal a page sets is printed as one line that a reader (and a test) can read at a glance::

    GOAL exact_match_test: 99.93% (target >= 99.9%) met

:func:`check` returns a :class:`Goal`; printing it gives that line. The comparison is done on
the numbers, not on their rounded text, so a value shown as ``99.90%`` may still be missed.
"""

from __future__ import annotations

import math
import operator
import re
from dataclasses import dataclass
from typing import Callable, Iterable

OPS: dict[str, Callable[[float, float], bool]] = {
    ">=": operator.ge, ">": operator.gt, "<=": operator.le, "<": operator.lt,
}
NAME = re.compile(r"^[A-Za-z0-9_.\-]+$")
LINE = re.compile(r"^GOAL (?P<name>[A-Za-z0-9_.\-]+): (?P<measured>.+) \(target (?P<op>>=|<=|>|<) "
                  r"(?P<target>.+)\) (?P<verdict>met|missed|not measured)$")


def _format(value: float, fmt: str) -> str:
    if fmt == "%":
        return f"{100 * value:.2f}%"
    if fmt == "s":
        return f"{value:.1f} s"
    if fmt == "x":
        return f"{value:.2f}x"
    return format(value, fmt)


@dataclass(frozen=True)
class Goal:
    """One goal: ``measured <op> target``. ``measured=None`` means it could not be measured here."""

    name: str
    measured: float | None
    op: str
    target: float
    fmt: str = ".4g"  # "%" (fractions shown as percent), "s" (seconds), "x" (ratios), or a format spec
    note: str = ""

    def __post_init__(self):
        if not NAME.match(self.name):
            raise ValueError(f"goal name {self.name!r} must be letters, digits, '_', '.', '-' (no spaces)")
        if self.op not in OPS:
            raise ValueError(f"goal op must be one of {sorted(OPS)}, got {self.op!r}")

    @property
    def met(self) -> bool | None:
        if self.measured is None or (isinstance(self.measured, float) and math.isnan(self.measured)):
            return None
        return bool(OPS[self.op](self.measured, self.target))

    @property
    def verdict(self) -> str:
        return {True: "met", False: "missed", None: "not measured"}[self.met]

    def line(self) -> str:
        shown = "-" if self.met is None else _format(self.measured, self.fmt)
        text = f"GOAL {self.name}: {shown} (target {self.op} {_format(self.target, self.fmt)}) {self.verdict}"
        return f"{text}" if not self.note else f"{text}  [{self.note}]"

    def __str__(self) -> str:
        return self.line()


def check(name: str, measured: float | None, op: str, target: float, fmt: str = ".4g", note: str = "",
          show: bool = True) -> Goal:
    """Build a :class:`Goal` and (by default) print its line."""
    goal = Goal(name, None if measured is None else float(measured), op, float(target), fmt, note)
    if show:
        print(goal.line())
    return goal


def parse(text: str) -> list[dict]:
    """Every goal line in ``text`` (for tests): name, measured, op, target, verdict as strings."""
    out = []
    for raw in text.splitlines():
        line = raw.split("  [", 1)[0].rstrip()
        m = LINE.match(line)
        if m:
            out.append(m.groupdict())
    return out


def summary(goals: Iterable[Goal]) -> str:
    """``"3 of 4 goals met (1 missed, 0 not measured)"``."""
    goals = list(goals)
    met = sum(g.met is True for g in goals)
    missed = sum(g.met is False for g in goals)
    return f"{met} of {len(goals)} goals met ({missed} missed, {len(goals) - met - missed} not measured)"
