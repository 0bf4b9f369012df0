"""Progress display for a run, on stderr via rich: one live view of every stage, safe to update from worker threads.

A run's stages (train, generate, judge) advance at once, so the runner shows one view with each stage's done/total,
its ETA and its money (`RunProgress`). The totals are fixed when the run is planned: the judge's total counts safety
responses to be given a verdict, and a verdict found in the cache (the same query and response judged in another
cell) counts as done rather than shrinking the total; work that cannot happen because its job or cell failed counts
as done and is shown as failed. Only checkpoints found after training (`eval.checkpoints`) add to the totals.
Backends' own bars (`ptst.backends.api.progress_bar`: a job's training steps, an upload) join the view as extra rows
while it is live, since a terminal holds one live display at a time: `connect_backends` passes `progress_bar` here to
the backends as their progress callback, and shows their `logging` records as `log` lines.

The live view is headed by the run's elapsed time. In a pipe or CI log nothing is redrawn: a plain summary (the
elapsed time, each stage's done/total, ETA and money, and the backends' bars), broken between its parts into lines no
wider than the terminal (`COLUMNS`, else 80), is printed at most every `PLAIN_INTERVAL_S` seconds, also while
nothing advances (a long training job), and once at the end. After Ctrl-C the live view is cleared and replaced by one plain line, and stray worker threads
(daemons, still finishing a request) print nothing more, so no bar is drawn twice. `set_quiet(True)` (`--quiet`)
keeps only warnings and errors.
"""

from __future__ import annotations

import logging
import os
import threading
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from typing import Any

from rich.console import Console
from rich.progress import (
    BarColumn,
    MofNCompleteColumn,
    Progress,
    TextColumn,
    TimeRemainingColumn,
)

console = Console(stderr=True, highlight=False)
STAGES = ("train", "generate", "judge")
PLAIN_INTERVAL_S = 10.0

_active: RunProgress | None = None  # the run's live view, which backends' bars join
_quiet = False  # --quiet: warnings and errors only
_silenced = False  # after Ctrl-C: daemon workers still running must not draw over the shell prompt


def set_quiet(quiet: bool) -> None:
    global _quiet
    _quiet = quiet


def is_quiet() -> bool:
    return _quiet


def log(message: str) -> None:
    """A line for the user on stderr, wrapped to the terminal's width (or `COLUMNS` when set); in a log with no width
    given, one line per message, so it can be searched. Quiet: only warnings and errors."""
    if _silenced or (_quiet and not message.lstrip().startswith(("warning", "error"))):
        return
    wrap = console.is_terminal or "COLUMNS" in os.environ
    console.print(message, markup=False, highlight=False, soft_wrap=not wrap)


def duration(seconds: float) -> str:
    """`45s`, `3m05s`, `2h04m`: short enough for a progress line."""
    s = int(max(seconds, 0))
    if s < 60:
        return f"{s}s"
    if s < 3600:
        return f"{s // 60}m{s % 60:02d}s"
    return f"{s // 3600}h{s % 3600 // 60:02d}m"


DESCRIPTION_WIDTH = 22
"""A bar's name is cut in the middle past this, so a live view fits an 80-column terminal with its numbers whole."""


def _short(text: str, width: int = DESCRIPTION_WIDTH) -> str:
    """`train a-very-lo…short seed 2`: the start and the end of a long name (the end says which seed/step)."""
    if len(text) <= width:
        return text
    keep = width - 1
    return text[: keep - keep // 2] + "…" + text[len(text) - keep // 2:]


class _RunBars(Progress):
    """The live view of a run: its bars under one line with the run's elapsed time (a stage's own bar only shows
    how long that stage has left)."""

    def __init__(self, *columns: Any, started: float, clock: Callable[[], float], **kw: Any) -> None:
        self.started, self._clock = started, clock  # before Progress starts drawing
        super().__init__(*columns, **kw)

    def get_renderables(self) -> Iterator[Any]:
        from rich.text import Text

        yield Text(f"elapsed {duration(self._clock() - self.started)}", style="dim")
        yield self.make_tasks_table(self.tasks)


def _bar(started: float | None = None, clock: Callable[[], float] = time.monotonic) -> Progress:
    """The bars' columns; with `started`, the run's view headed by its elapsed time."""
    from rich.table import Column

    extra: dict[str, Any] = {} if started is None else {"started": started, "clock": clock}
    return (Progress if started is None else _RunBars)(
        TextColumn("{task.description}", table_column=Column(no_wrap=True, overflow="ellipsis")),
        BarColumn(bar_width=10),
        MofNCompleteColumn(table_column=Column(no_wrap=True)),
        TextColumn("eta"),
        TimeRemainingColumn(compact=True),
        TextColumn("{task.fields[info]}", table_column=Column(no_wrap=True, overflow="ellipsis", max_width=26)),
        console=console,
        transient=False,
        disable=not console.is_terminal or _quiet,
        **extra,
    )


@contextmanager
def progress_bar(description: str, total: int | None) -> Iterator[Callable[..., None]]:
    """Yield `advance(n=1, info="...")`; `info` is shown after the bar (loss, tokens/s, retries...)."""
    view = _active
    if _silenced or _quiet:
        yield lambda n=1, info=None, **_: None
        return
    if view is not None and view.bar is not None:
        task = view.bar.add_task("  " + _short(description, DESCRIPTION_WIDTH - 2), total=total, info="")
        try:
            yield lambda n=1, info=None, **_: view.bar.update(  # type: ignore[union-attr]
                task, advance=n, **({"info": info} if info is not None else {})
            )
        finally:
            view.bar.remove_task(task)
        return
    if view is not None:  # a plain (non-terminal) run view: the bar's state joins the periodic line
        key = view.sub_open(description, total)
        try:
            yield lambda n=1, info=None, **_: view.sub_advance(key, n, info)
        finally:
            view.sub_close(key)
        return
    bar = _bar()
    with bar:
        task = bar.add_task(_short(description), total=total, info="")

        def advance(n: int = 1, info: str | None = None, **_: Any) -> None:
            if info is None:
                bar.update(task, advance=n)
            else:
                bar.update(task, advance=n, info=info)

        yield advance


class _BackendLines(logging.Handler):
    """Backends' log records (the `ptst.backends` logger) as `log` lines: wrapped, quiet-aware, silent after Ctrl-C."""

    def emit(self, record: logging.LogRecord) -> None:
        try:
            message = record.getMessage()
            if record.levelno >= logging.WARNING and not message.lstrip().lower().startswith(("warning", "error")):
                message = f"warning: {message}"
            log(message)
        except Exception:  # noqa: BLE001 — a logging handler never raises into the backend that logged (stdlib convention)
            self.handleError(record)


_BACKEND_LINES = _BackendLines()


def connect_backends() -> None:
    """Show backends' output in this view: their `ptst.backends` log records as `log` lines, and their progress bars
    (`ptst.backends.api.progress_bar`) through `progress_bar` here, the callback the runner and the CLI pass in.
    Idempotent."""
    from ptst.backends import reporting

    reporting.set_progress_handler(progress_bar)
    logger = logging.getLogger(reporting.LOGGER_NAME)
    if reporting.DEFAULT_HANDLER in logger.handlers:
        logger.removeHandler(reporting.DEFAULT_HANDLER)
    if _BACKEND_LINES not in logger.handlers:
        logger.addHandler(_BACKEND_LINES)


@contextmanager
def step(what: str) -> Iterator[None]:
    """A visible step with no count (writing the reports): a spinner on a terminal, a line before and after in a
    log, nothing when quiet."""
    if _quiet:
        yield
        return
    started = time.monotonic()
    if console.is_terminal:
        with console.status(what + "…"):
            yield
    else:
        log(what + "…")
        yield
    log(f"{what}: done in {time.monotonic() - started:.1f}s")


class RunProgress:
    """Done/total, ETA and money per stage. Thread-safe: workers call `advance`, `skip`, `add_total` and `spend`.

    `expected_usd`: the estimate of each stage's cost (ptst.estimate) — a stage whose spend the run cannot observe
    (generation and judging are billed per request, not reported back) shows that estimate pro rata, marked `≈`.
    """

    def __init__(self, totals: dict[str, int], *, live: bool | None = None, clock: Callable[[], float] = time.monotonic,
                 expected_usd: dict[str, float | None] | None = None, ticker: bool | None = None,
                 width: int | None = None):
        self.live = (console.is_terminal if live is None else live) and not _quiet
        self.clock = clock
        self.width = width  # plain lines' width; None: the console's (the terminal's, COLUMNS, or 80 in a log)
        self.total = {s: totals.get(s, 0) for s in STAGES}
        self.done = dict.fromkeys(STAGES, 0)
        self.failed = dict.fromkeys(STAGES, 0)
        self.usd: dict[str, float | None] = dict.fromkeys(STAGES, 0.0)
        self.expected = dict(expected_usd or {})
        self.started = clock()
        self._first: dict[str, tuple[float, int]] = {}  # stage -> (time, work done) at its first advance
        self._last_line: float | None = None
        self._last_text = ""
        self._lock = threading.RLock()
        self.bar: Progress | None = _bar(self.started, clock) if self.live else None
        self._tasks: dict[str, Any] = {}
        self._subs: dict[int, list[Any]] = {}  # plain mode: backends' bars, [description, done, total, info]
        self._sub_ids = iter(range(1 << 62))
        self._ticker = (not self.live and not _quiet) if ticker is None else ticker
        self._stop = threading.Event()

    def __enter__(self) -> RunProgress:
        global _active, _silenced
        _silenced = False
        if self.bar is not None:
            self.bar.start()
            for s in STAGES:
                self._tasks[s] = self.bar.add_task(f"{s:<8}", total=self.total[s] or None, info=self._info(s))
        _active = self
        if self._ticker:
            threading.Thread(target=self._tick_loop, name="ptst:progress", daemon=True).start()
        return self

    def __exit__(self, exc_type: type[BaseException] | None, *exc: object) -> None:
        global _active, _silenced
        _active = None
        self._stop.set()
        interrupted = exc_type is not None and issubclass(exc_type, KeyboardInterrupt)
        if interrupted:
            _silenced = True  # the run's daemon threads may still be finishing a request: they stay quiet
        if self.bar is not None:
            if interrupted:
                self.bar.live.transient = True  # clear the live rows; the plain line below says where it stopped
            self.bar.stop()
            if interrupted:
                console.print(self.line(), markup=False, highlight=False)
        elif not _quiet:
            self._plain(force=True)

    # -- updates from workers ------------------------------------------------------------------------------------
    def advance(self, stage: str, n: int = 1) -> None:
        if n <= 0:
            return
        with self._lock:
            self.done[stage] = min(self.done[stage] + n, max(self.total[stage], self.done[stage]))
            self._first.setdefault(stage, (self.clock(), self.done[stage] - self.failed[stage]))
        self._refresh(stage)

    def skip(self, stage: str, n: int) -> None:
        """Work that will not happen (its job or cell failed): counted done, shown as failed; the total stays."""
        if n <= 0:
            return
        with self._lock:
            self.failed[stage] += n
        self.advance(stage, n)

    def add_total(self, stage: str, n: int) -> None:
        """More work found while running (checkpoints listed after training)."""
        if not n:
            return
        with self._lock:
            self.total[stage] += n
        self._refresh(stage)

    def spend(self, stage: str, usd: float | None) -> None:
        """Add a finished step's cost; None (unknown) makes the stage's sum unknown."""
        with self._lock:
            cur = self.usd[stage]
            self.usd[stage] = None if cur is None or usd is None else cur + usd
        self._refresh(stage)

    # plain mode: backends' bars ----------------------------------------------------------------------------------
    def sub_open(self, description: str, total: int | None) -> int:
        with self._lock:
            key = next(self._sub_ids)
            self._subs[key] = [description, 0, total, None]
            return key

    def sub_advance(self, key: int, n: int, info: str | None) -> None:
        with self._lock:
            sub = self._subs.get(key)
            if sub is not None:
                sub[1] += n
                sub[3] = info if info is not None else sub[3]
        self._plain()

    def sub_close(self, key: int) -> None:
        with self._lock:
            self._subs.pop(key, None)

    # -- text ----------------------------------------------------------------------------------------------------
    def _money(self, stage: str) -> str:
        spent = self.usd[stage]
        if stage == "train" or spent != 0.0:  # observed spend (or None: a step was unpriced)
            return "spent " + ("unpriced" if spent is None else f"${spent:,.2f}")
        expected = self.expected.get(stage, 0.0)
        if expected is None:
            return "cost unpriced"
        t = self.total[stage]
        so_far = expected * (self.done[stage] / t if t else 1.0)
        return f"≈${so_far:,.2f}/${expected:,.2f}" if expected else "spent $0.00"

    def _info(self, stage: str) -> str:
        failed = f" · {self.failed[stage]} failed" if self.failed[stage] else ""
        return self._money(stage) + failed

    def money(self) -> str:
        known = [u for u in self.usd.values() if u is not None]
        unknown = any(u is None for u in self.usd.values())
        return f"${sum(known):,.2f}" + ("+?" if unknown else "")

    def _eta(self, stage: str, elapsed: float) -> str:
        """Time left at the stage's own rate: measured from its first advance on (generation may wait minutes for
        training, which says nothing about its speed); until a second advance, from the start of the run."""
        d, t = self.done[stage], self.total[stage]
        worked = d - self.failed[stage]  # skipped work took no time: the rate is the work actually done
        if worked <= 0 or d >= t or elapsed <= 0:
            return ""
        t0, w0 = self._first.get(stage, (self.started, 0))
        since = self.clock() - t0
        if worked > w0 and since > 0:
            return f" eta {duration((t - d) * since / (worked - w0))}"
        return f" eta {duration((t - d) * elapsed / worked)}"

    def _parts(self) -> list[str]:
        """The elapsed time with the first stage, then each other stage's done/total, ETA and money, then the
        backends' bars."""
        elapsed = self.clock() - self.started
        with self._lock:
            parts = [f"{s} {self.done[s]}/{self.total[s]}{self._eta(s, elapsed)} {self._info(s)}" for s in STAGES]
            subs = [f"{d} {n}/{t if t is not None else '?'}" + (f" {i}" if i else "") for d, n, t, i in self._subs.values()]
        return [f"[{duration(elapsed)}] {parts[0]}", *parts[1:], *subs]

    def line(self) -> str:
        """The plain summary on one line."""
        return " | ".join(self._parts())

    def lines(self, width: int) -> list[str]:
        """The plain summary in lines of at most `width` characters, broken only between parts (a stage, a backend's
        bar; the next lines indented), so a log stays searchable part by part; a part wider than `width` alone is
        cut with an ellipsis."""
        out: list[str] = []
        for part in self._parts():
            if out and len(out[-1]) + 3 + len(part) <= width:
                out[-1] += " | " + part
            else:
                out.append(("  " if out else "") + part)
        return [ln if len(ln) <= width else ln[: max(1, width - 1)] + "…" for ln in out]

    def _refresh(self, stage: str) -> None:
        if self.bar is not None:
            with self._lock:
                self.bar.update(self._tasks[stage], completed=self.done[stage], total=self.total[stage] or None,
                                info=self._info(stage))
        else:
            self._plain()

    def tick(self) -> None:
        """Print the plain line if the interval has passed (called by the ticker thread; tests call it)."""
        self._plain()

    def _tick_loop(self) -> None:
        while not self._stop.wait(1.0):
            with self._lock:  # the closing line and a last tick never cross
                if self._stop.is_set():
                    return
            self.tick()

    def _plain(self, force: bool = False) -> None:
        if self.bar is not None or _quiet or _silenced:
            return
        with self._lock:
            now = self.clock()
            if not force and self._last_line is not None and now - self._last_line < PLAIN_INTERVAL_S:
                return
            text = "\n".join(self.lines(self.width or console.width))
            if text == self._last_text:  # nothing new: no line
                return
            self._last_line, self._last_text = now, text
        log(text)
