"""Progress for long stages: rich bars on a terminal, plain lines in logs, nothing with --quiet (warnings still)."""

from __future__ import annotations

import logging
import sys
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager

from rich.progress import (
    BarColumn,
    MofNCompleteColumn,
    Progress,
    TextColumn,
    TimeElapsedColumn,
    TimeRemainingColumn,
)

STEPS = 10  # a log (not a terminal) gets a line at every tenth of a stage


class Reporter:
    def __init__(self, quiet: bool = False) -> None:
        self.quiet = quiet
        self.terminal = sys.stderr.isatty()

    def line(self, message: str) -> None:
        if not self.quiet:
            print(message, file=sys.stderr, flush=True)

    @staticmethod
    def warn(message: str) -> None:
        """A warning that changes what the result means: printed even with --quiet."""
        print(message, file=sys.stderr, flush=True)

    @contextmanager
    def stage(self, description: str, total: int) -> Iterator[Callable[[int], None]]:
        """Yield a function that advances the stage by n items; the display says how long is left."""
        if self.quiet:
            yield lambda n: None
            return
        if self.terminal:
            columns = (
                TextColumn("{task.description}"),
                BarColumn(),
                MofNCompleteColumn(),
                TimeElapsedColumn(),
                TextColumn("left"),
                TimeRemainingColumn(),
            )
            with Progress(*columns, transient=True) as bar:
                task = bar.add_task(description, total=total)
                yield lambda n: bar.advance(task, n)
            return
        start = time.perf_counter()
        done = [0]

        def advance(n: int) -> None:
            before, done[0] = done[0], done[0] + n
            if done[0] < total and before * STEPS // max(total, 1) < done[0] * STEPS // max(total, 1):
                elapsed = time.perf_counter() - start
                left = elapsed * (total - done[0]) / done[0]
                self.line(f"{description}: {done[0]}/{total}, {elapsed:.0f} s, about {left:.0f} s left")

        yield advance
        self.line(f"{description}: {done[0]}/{total} in {time.perf_counter() - start:.1f} s")


@contextmanager
def quiet_loggers(*names: str | None) -> Iterator[None]:
    """Raise the given loggers (None: the root logger) to ERROR for a block: exporters, the quantizer and the
    fusion log advice that is not for our users."""
    loggers = [logging.getLogger(name) for name in names]
    levels = [logger.level for logger in loggers]
    for logger in loggers:
        logger.setLevel(logging.ERROR)
    try:
        yield
    finally:
        for logger, level in zip(loggers, levels):
            logger.setLevel(level)
