# Copyright (c) AXUNet bundle developers. Licensed under the Apache License, Version 2.0.
"""
Progress of the long steps (synth, prepare, train, evaluate, infer): a tqdm bar with rate and ETA when stderr is a
terminal, plain periodic log lines with the same numbers when it is not (CI, a log file), so that a run written to
a file still says how far it got and how long it has left.

:class:`Progress` counts items; :func:`progress` wraps an iterable with it; :class:`ProgressHandler` attaches it to
an ignite engine (the bundle's trainer and evaluators), counting iterations. Kept beside ignite's ``ProgressBar``,
which writes nothing useful off a terminal and has no ETA over a whole (resumed) run.
"""

from __future__ import annotations

import logging
import operator
import sys
import time
from collections.abc import Iterable, Iterator
from typing import TypeVar

from ignite.engine import Engine, Events
from tqdm import tqdm

__all__ = ["LOG_INTERVAL_SECONDS", "Progress", "progress", "ProgressHandler", "format_duration"]

#: seconds between two log lines when stderr is not a terminal (the last item is always logged)
LOG_INTERVAL_SECONDS = 30.0
_SECONDS_PER_MINUTE = 60
_SECONDS_PER_HOUR = 3600
_PERCENT = 100

logger = logging.getLogger(__name__)
T = TypeVar("T")


def format_duration(seconds: float) -> str:
    """``75`` -> ``1:15``, ``3725`` -> ``1:02:05`` (as tqdm writes times)."""
    seconds = max(0, int(round(seconds)))
    hours, rest = divmod(seconds, _SECONDS_PER_HOUR)
    minutes, secs = divmod(rest, _SECONDS_PER_MINUTE)
    return f"{hours}:{minutes:02d}:{secs:02d}" if hours else f"{minutes}:{secs:02d}"


class Progress:
    """
    Count done items of a step; show a tqdm bar on a terminal, else log ``desc: i/n unit (p%), r unit/s, elapsed
    m:ss, ETA m:ss`` at most every `interval_s` seconds, and once more when the step ends.

    Args:
        total: items in the step (``None`` when unknown: no percentage, no ETA).
        desc: what is being done, the start of each line.
        unit: what an item is (``case``, ``iteration``).
        initial: items already done before (a resumed run); not counted in the rate.
        interval_s: seconds between log lines (``0``: one per item).
        enabled: ``False`` shows nothing at all.
        terminal: draw the tqdm bar; default: whether stderr is a terminal.
        log: logger of the log lines (default: this module's).
        leave: keep the finished tqdm bar on the screen.
    """

    def __init__(
        self,
        total: int | None,
        desc: str,
        unit: str = "item",
        initial: int = 0,
        interval_s: float = LOG_INTERVAL_SECONDS,
        enabled: bool = True,
        terminal: bool | None = None,
        log: logging.Logger | None = None,
        leave: bool = True,
    ) -> None:
        self.total = total
        self.desc = desc
        self.unit = unit
        self.initial = self.done = initial
        self.interval_s = interval_s
        self.enabled = enabled
        self.log = log or logger
        self._start = self._last_log = time.monotonic()
        self._logged_done: int | None = None
        terminal = sys.stderr.isatty() if terminal is None else terminal
        self._bar = (
            tqdm(total=total, initial=initial, desc=desc, unit=unit, leave=leave, dynamic_ncols=True)
            if enabled and terminal
            else None
        )

    def update(self, n: int = 1) -> None:
        """`n` more items are done."""
        self.done += n
        if self._bar is not None:
            self._bar.update(n)
        elif self.enabled and time.monotonic() - self._last_log >= self.interval_s:
            self._log_line()

    def close(self) -> None:
        """End the step: close the bar, or log the final line (unless the last update was just logged)."""
        if self._bar is not None:
            self._bar.close()
            self._bar = None
        elif self.enabled and self._logged_done != self.done:
            self._log_line()

    def _log_line(self) -> None:
        now = time.monotonic()
        elapsed = now - self._start
        counted = self.done - self.initial
        rate = counted / elapsed if elapsed > 0 else 0.0
        count = f"{self.done}/{self.total}" if self.total else f"{self.done}"
        percent = f" ({_PERCENT * self.done / self.total:.0f}%)" if self.total else ""
        if self.total and rate > 0:
            eta = format_duration(max(self.total - self.done, 0) / rate)
        else:
            eta = "?" if self.total else "-"
        self.log.info(
            "%s: %s %s%s, %.3g %s/s, elapsed %s, ETA %s",
            self.desc,
            count,
            self.unit,
            percent,
            rate,
            self.unit,
            format_duration(elapsed),
            eta,
        )
        self._last_log, self._logged_done = now, self.done

    def __enter__(self) -> Progress:
        return self

    def __exit__(self, *exc_info) -> None:
        self.close()


def progress(iterable: Iterable[T], total: int | None = None, desc: str = "", **kwargs) -> Iterator[T]:
    """
    Iterate over `iterable` counting its items with a :class:`Progress` (closed when the loop ends or breaks).

    Args:
        iterable: the items.
        total: their number (default: ``len(iterable)`` when it has one).
        desc: what is being done.
        kwargs: the other arguments of :class:`Progress` (``unit``, ``interval_s``, ``enabled`` ...).
    """
    if total is None and hasattr(iterable, "__len__"):
        total = len(iterable)
    with Progress(total, desc, **kwargs) as bar:
        for item in iterable:
            yield item
            bar.update()


class ProgressHandler:
    """
    Progress of an ignite engine's run, over all its epochs: one :class:`Progress` per ``engine.run()`` counting
    iterations (for the bundle's evaluators, with batch size 1: cases). On the trainer it replaces ignite's
    ``ProgressBar``, which shows nothing when stderr is not a terminal and has no run-wide ETA.

    Args:
        desc: what the engine does, the start of each line (default: the engine's class name).
        unit: what an iteration is.
        interval_s: seconds between log lines when stderr is not a terminal.
        enabled: ``False`` attaches nothing.
        leave: keep the finished bar on the terminal (``False`` for the validation run inside training).
    """

    def __init__(
        self,
        desc: str | None = None,
        unit: str = "iteration",
        interval_s: float = LOG_INTERVAL_SECONDS,
        enabled: bool = True,
        leave: bool = True,
    ) -> None:
        self.desc = desc
        self.unit = unit
        self.interval_s = interval_s
        self.enabled = enabled
        self.leave = leave
        self._progress: Progress | None = None

    def attach(self, engine: Engine) -> None:
        if not self.enabled:
            return
        engine.add_event_handler(Events.STARTED, self._start)
        engine.add_event_handler(Events.ITERATION_COMPLETED, self._update)
        for event in (Events.COMPLETED, Events.TERMINATE, Events.EXCEPTION_RAISED):
            engine.add_event_handler(event, self._close)

    def _start(self, engine: Engine) -> None:
        self._close(engine)
        state = engine.state
        # what is left of this run: a resumed trainer starts at epoch k, iteration k * epoch_length; MONAI's
        # evaluators run one epoch from iteration 0 with epoch = the trainer's epoch - 1
        # a loader of unknown length (CaseLoader) may still estimate it (PEP 424's length hint)
        epoch_length = state.epoch_length or operator.length_hint(state.dataloader, 0) or None
        remaining = epoch_length * (state.max_epochs - state.epoch) if epoch_length else None
        self._progress = Progress(
            None if remaining is None else state.iteration + remaining,
            self.desc or type(engine).__name__,
            unit=self.unit,
            initial=state.iteration,  # a resumed training starts past 0
            interval_s=self.interval_s,
            log=engine.logger,
            leave=self.leave,
        )

    def _update(self, engine: Engine) -> None:
        if self._progress is not None:
            self._progress.update()

    def _close(self, engine: Engine, *args) -> None:
        if self._progress is not None:
            self._progress.close()
            self._progress = None
