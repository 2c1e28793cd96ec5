"""Progress of long loops (LOSO folds, importance, bootstrap members, upscaling chunks, trends,
calibration twins, ``prepare`` layers): a rich bar on a terminal, a log line every
:data:`DEFAULT_SECONDS` otherwise (CI, nohup, a cluster job).

The protocol, used by every module with a long loop (science modules take the callback as an
argument and import nothing from here): ``progress(done, total)`` after each unit of work
(``done`` counts units finished so far, work resumed from an earlier run included),
``progress(None, None)`` when the loop is over (also after an error). A *factory* maps a label
to such a callback (:func:`factory`; ``Context.progress_factory``).

Both displays show the same facts: done/total, percent, rate (units per second, measured from
the first update on, so resumed work does not inflate it), the estimated time left and the
time elapsed. Nothing here touches an output file.
"""

from __future__ import annotations

import logging
import math
import os
import time
import weakref
from collections.abc import Callable

from rich.console import Console
from rich.progress import BarColumn, MofNCompleteColumn, Progress, ProgressColumn, Task, TextColumn
from rich.table import Column
from rich.text import Text

log = logging.getLogger(__name__)

#: Environment variable: seconds between two progress log lines when the output is not a
#: terminal (0: a line at every update, as the tests use).
ENV_SECONDS = "ABZFLUX_PROGRESS_SECONDS"
#: Default seconds between two progress log lines.
DEFAULT_SECONDS = 30.0

Update = Callable[[int | None, int | None], None]
Factory = Callable[[str], Update]


def log_interval() -> float:
    """Seconds between two progress log lines: ``$ABZFLUX_PROGRESS_SECONDS`` or
    :data:`DEFAULT_SECONDS`."""
    raw = os.environ.get(ENV_SECONDS, "").strip()
    if not raw:
        return DEFAULT_SECONDS
    try:
        v = float(raw)
    except ValueError:
        raise ValueError(
            f"{ENV_SECONDS}={raw!r}: expected a number of seconds (e.g. 30, or 0 for every update)"
        ) from None
    if not v >= 0 or math.isinf(v):
        raise ValueError(f"{ENV_SECONDS}={raw!r}: expected a finite number of seconds >= 0")
    return v


def clock(seconds: float | None) -> str:
    """``mm:ss`` (``h:mm:ss`` from an hour on); ``--:--`` when unknown."""
    if seconds is None or not math.isfinite(seconds) or seconds < 0:
        return "--:--"
    s = int(round(seconds))
    h, rest = divmod(s, 3600)
    m, s = divmod(rest, 60)
    return f"{h}:{m:02d}:{s:02d}" if h else f"{m:02d}:{s:02d}"


def rate_text(rate: float | None) -> str:
    """Units per second, three significant digits below 100 (``0.351/s``, ``12.4/s``), whole
    numbers from 100 on (``1234/s``); ``?/s`` unknown."""
    if rate is None:
        return "?/s"
    if rate >= 99.95:
        return f"{rate:.0f}/s"
    return f"{rate:.3g}/s" if rate >= 0.001 else f"{rate:.1e}/s"


class Tracker:
    """Done/total, rate, time left and elapsed of one loop (shared by both displays)."""

    def __init__(self, label: str, now: Callable[[], float] = time.monotonic):
        self.label = label
        self.now = now
        self.t0 = now()
        self.done = 0
        self.total: int | None = None
        self.first: tuple[float, int] | None = None  # (time, done) of the first update
        self.last_t = self.t0

    def update(self, done: int, total: int | None) -> None:
        t = self.now()
        if self.first is None:
            self.first = (t, done)
        self.done, self.total, self.last_t = int(done), (None if total is None else int(total)), t

    @property
    def elapsed(self) -> float:
        return self.now() - self.t0

    @property
    def rate(self) -> float | None:
        """Units per second: since the first update when units were done after it (resumed
        work reported first is not counted), else since the loop started."""
        if self.first is None:
            return None
        t1, d1 = self.first
        if self.done > d1 and self.last_t > t1:
            return (self.done - d1) / (self.last_t - t1)
        dt = t1 - self.t0
        return d1 / dt if d1 > 0 and dt > 0 else None

    @property
    def eta(self) -> float | None:
        """Seconds left at the current rate (0 when done)."""
        if self.total is None:
            return None
        if self.done >= self.total:
            return 0.0
        r = self.rate
        return (self.total - self.done) / r if r else None

    def line(self) -> str:
        """``label: done/total (pct), rate/s, ETA mm:ss, elapsed mm:ss``."""
        if self.total:
            count = f"{self.done}/{self.total} ({100 * self.done / self.total:.0f}%)"
        else:
            count = f"{self.done}/{self.total if self.total is not None else '?'}"
        return f"{self.label}: {count}, {rate_text(self.rate)}, ETA {clock(self.eta)}, elapsed {clock(self.elapsed)}"


class LogProgress:
    """A progress callback that logs :meth:`Tracker.line` at INFO at most every ``every`` seconds
    (default :func:`log_interval`), and once more when the loop completes if it logged before."""

    def __init__(
        self,
        label: str,
        every: float | None = None,
        logger: logging.Logger | None = None,
        now: Callable[[], float] = time.monotonic,
    ):
        self.tracker = Tracker(label, now)
        self.every = log_interval() if every is None else every
        self.logger = logger or log
        self.last_log = self.tracker.t0
        self.logged: int | None = None  # done at the last line logged

    def _emit(self) -> None:
        self.logger.info(self.tracker.line())
        self.logged = self.tracker.done
        self.last_log = self.tracker.now()

    def __call__(self, done, total) -> None:
        tr = self.tracker
        if done is None:  # the loop is over: its last state, if lines were logged and it moved since
            if self.logged is not None and self.logged != tr.done:
                self._emit()
            return
        tr.update(done, total)
        complete = tr.total is not None and tr.done >= tr.total
        if tr.now() - self.last_log >= self.every or (complete and self.logged is not None):
            if self.logged != tr.done or self.every == 0:
                self._emit()


class _RateColumn(ProgressColumn):
    def render(self, task: Task) -> Text:
        tr = task.fields.get("tracker")
        return Text(rate_text(tr.rate if tr else None), style="progress.data.speed")


class _EtaColumn(ProgressColumn):
    def render(self, task: Task) -> Text:
        tr = task.fields.get("tracker")
        return Text(f"ETA {clock(tr.eta if tr else None)}", style="progress.remaining")


class _ElapsedColumn(ProgressColumn):
    def render(self, task: Task) -> Text:
        tr = task.fields.get("tracker")
        return Text(clock(tr.elapsed if tr else None), style="progress.elapsed")


#: Width of a bar's columns other than its label: bar, count, rate, time left, elapsed, gaps.
BAR_COLUMNS_WIDTH = 48


class Board:
    """Rich progress bars on one console: one live display for every open loop (loops nest:
    calibration twins > a twin's stages > LOSO folds), stopped when the last one ends. A label
    longer than the console leaves room for is shortened with "…"; the numbers never are."""

    def __init__(self, console: Console):
        self.console = console
        self.progress = Progress(
            TextColumn("{task.description}", table_column=Column(no_wrap=True)),
            BarColumn(bar_width=12),
            MofNCompleteColumn(table_column=Column(no_wrap=True)),
            _RateColumn(table_column=Column(no_wrap=True)),
            _EtaColumn(table_column=Column(no_wrap=True)),
            _ElapsedColumn(table_column=Column(no_wrap=True)),
            console=console,
            transient=True,
        )
        self.open = 0

    def short(self, label: str) -> str:
        room = max(self.console.width - BAR_COLUMNS_WIDTH, 12)
        return label if len(label) <= room else label[: room - 1] + "…"

    def task(self, label: str) -> Update:
        state: dict = {}

        def update(done, total) -> None:
            if done is None:
                if state.pop("task", None) is not None:
                    self.progress.remove_task(state["id"])
                    self.open -= 1
                    if self.open == 0:
                        self.progress.stop()
                return
            if "task" not in state:
                if self.open == 0:
                    self.progress.start()
                self.open += 1
                state["tracker"] = Tracker(label)
                state["id"] = self.progress.add_task(self.short(label), total=total, tracker=state["tracker"])
                state["task"] = True
            state["tracker"].update(done, total)
            self.progress.update(state["id"], completed=done, total=total)

        return update


_BOARDS: weakref.WeakKeyDictionary[Console, Board] = weakref.WeakKeyDictionary()


def _silent(done, total) -> None:
    return None


def factory(console: Console | None = None, *, quiet: bool = False, every: float | None = None) -> Factory:
    """Label -> progress callback: nothing when ``quiet``; bars when ``console`` is a terminal;
    else log lines (every ``every`` seconds, default :func:`log_interval`)."""
    if quiet:
        return lambda label: _silent
    if console is not None and console.is_terminal:
        if console not in _BOARDS:  # one live display per console, whichever factory opens a loop
            _BOARDS[console] = Board(console)
        return _BOARDS[console].task
    every = log_interval() if every is None else every
    return lambda label: LogProgress(label, every=every)


def count(progress: Update | None, total: int) -> Callable[[], None]:
    """A step function for a loop of ``total`` units: each call reports one more unit done
    (``progress`` None: does nothing)."""
    state = [0]

    def advance() -> None:
        state[0] += 1
        if progress is not None:
            progress(state[0], total)

    return advance
