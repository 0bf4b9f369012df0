"""Progress display for a run, on stderr via rich: one live view of every stage, safe to update from worker threads.

A run's stages (train, generate, judge) advance at once, so the runner shows one view with each stage's done/total,
ETA and the money spent so far (`RunProgress`). Backends' own bars (`progress_bar`: a job's training steps, an upload)
join that view as extra rows while it is live, since a terminal holds one live display at a time. In a pipe or CI
log nothing is redrawn: the view prints a plain summary line at most every `PLAIN_INTERVAL_S` seconds and at the end.
"""

from __future__ import annotations

import threading
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from typing import Any, Self

from rich.console import Console
from rich.progress import (
    BarColumn,
    MofNCompleteColumn,
    Progress,
    TextColumn,
    TimeElapsedColumn,
    TimeRemainingColumn,
)

console = Console(stderr=True, highlight=False)
STAGES = ("train", "generate", "judge")
PLAIN_INTERVAL_S = 10.0

_active: RunProgress | None = None  # the run's live view, which backends' bars join


def log(message: str) -> None:
    console.print(message, markup=False, soft_wrap=True)


def _bar() -> Progress:
    return Progress(
        TextColumn("{task.description}"),
        BarColumn(),
        MofNCompleteColumn(),
        TimeElapsedColumn(),
        TimeRemainingColumn(),
        TextColumn("{task.fields[info]}"),
        console=console,
        transient=False,
        disable=not console.is_terminal,
    )


@contextmanager
def progress_bar(description: str, total: int | None) -> Iterator[Callable[..., None]]:
    """Yield `advance(n=1, info="...")`; `info` is shown after the bar (loss, tokens/s, retries...)."""
    view = _active
    if view is not None and view.bar is not None:
        task = view.bar.add_task("  " + description, total=total, info="")
        try:
            yield lambda n=1, info=None, **_: view.bar.update(  # type: ignore[union-attr]
                task, advance=n, **({"info": info} if info is not None else {})
            )
        finally:
            view.bar.remove_task(task)
        return
    if view is not None:  # a plain (non-terminal) run view: backends' bars stay silent, the summary line covers them
        yield lambda n=1, info=None, **_: None
        return
    bar = _bar()
    with bar:
        task = bar.add_task(description, total=total, info="")

        def advance(n: int = 1, info: str | None = None, **_: Any) -> None:
            if info is None:
                bar.update(task, advance=n)
            else:
                bar.update(task, advance=n, info=info)

        yield advance


class RunProgress:
    """Done/total, ETA and money per stage. Thread-safe: workers call `advance`, `add_total` and `spend`."""

    def __init__(self, totals: dict[str, int], *, live: bool | None = None, clock: Callable[[], float] = time.monotonic):
        self.live = console.is_terminal if live is None else live
        self.clock = clock
        self.total = {s: totals.get(s, 0) for s in STAGES}
        self.done = dict.fromkeys(STAGES, 0)
        self.usd: dict[str, float | None] = dict.fromkeys(STAGES, 0.0)
        self.started = clock()
        self._last_line = 0.0
        self._last_text = ""
        self._lock = threading.Lock()
        self.bar: Progress | None = _bar() if self.live else None
        self._tasks: dict[str, Any] = {}

    def __enter__(self) -> Self:
        global _active
        if self.bar is not None:
            self.bar.start()
            for s in STAGES:
                self._tasks[s] = self.bar.add_task(s, total=self.total[s] or None, info="")
        _active = self
        return self

    def __exit__(self, *exc: object) -> None:
        global _active
        _active = None
        if self.bar is not None:
            self.bar.stop()
        else:
            self._plain(force=True)

    def advance(self, stage: str, n: int = 1) -> None:
        with self._lock:
            self.done[stage] += n
        self._refresh(stage)

    def add_total(self, stage: str, n: int) -> None:
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

    def money(self) -> str:
        known = [u for u in self.usd.values() if u is not None]
        unknown = any(u is None for u in self.usd.values())
        return f"${sum(known):,.2f}" + ("+?" if unknown else "")

    def line(self) -> str:
        """The plain summary: each stage's done/total and ETA, and the money spent so far."""
        elapsed = self.clock() - self.started
        parts = []
        with self._lock:
            for s in STAGES:
                d, t = self.done[s], self.total[s]
                eta = f" eta {int((t - d) * elapsed / d)}s" if 0 < d < t else ""
                parts.append(f"{s} {d}/{t}{eta}")
        return f"[{int(elapsed)}s] " + " · ".join(parts) + f" · spent {self.money()}"

    def _refresh(self, stage: str) -> None:
        if self.bar is not None:
            with self._lock:
                self.bar.update(self._tasks[stage], completed=self.done[stage], total=self.total[stage] or None,
                                info=f"spent {self.money()}" if stage == "train" else "")
        else:
            self._plain()

    def _plain(self, force: bool = False) -> None:
        now = self.clock()
        if force or now - self._last_line >= PLAIN_INTERVAL_S:
            text = self.line()
            if text != self._last_text:  # nothing new: no line
                self._last_line, self._last_text = now, text
                log(text)
