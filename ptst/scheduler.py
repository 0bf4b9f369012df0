"""Run a graph of work with everything independent at once: the executor under `ptst.runner`.

A run is a graph: fine-tuning job -> generation per cell -> judging per cell. Backends' calls block (OpenAI's
`fine_tune` polls until the job is done, a local one trains for hours), so each task runs in a worker thread, and a
finished task hands back the tasks it unblocks. Concurrency is bounded per *slot*: a task names the slots it occupies
("jobs:openai" bounded by the backend's `max_concurrent_jobs`, "resource:cuda:0" bounded to one so local training and
local generation on one device take turns, "judge"), and starts only when every slot it names has room. Wall time is
then about the longest chain, not the sum. Tasks start in submission order among those that fit.

Worker threads are daemons: on Ctrl-C or an error the main thread returns at once and the process may exit while a
remote job is still being polled — the job keeps running at the vendor and a re-run finds it again (the ledger).
"""

from __future__ import annotations

import queue
import threading
from collections.abc import Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass, field

POLL_S = 0.2  # how often the main thread wakes to notice Ctrl-C while workers run


@dataclass
class Task:
    """One unit of work. `run` returns the tasks it unblocks (a trained model's cells, a generated cell's judging)."""

    name: str
    run: Callable[[], Sequence[Task]]
    slots: tuple[str, ...] = ()


@dataclass
class Scheduler:
    limits: Mapping[str, int]  # slot -> most tasks at once; a slot not named here is unbounded
    _ready: list[Task] = field(default_factory=list)
    _in_use: dict[str, int] = field(default_factory=dict)
    peak: dict[str, int] = field(default_factory=dict)  # the most tasks each slot held at once (for tests, benchmarks)

    def submit(self, tasks: Iterable[Task]) -> None:
        self._ready.extend(tasks)

    def _fits(self, t: Task) -> bool:
        return all(self._in_use.get(s, 0) < self.limits.get(s, 1 << 30) for s in t.slots)

    def run(self) -> None:
        """Run every task and those they unblock; re-raise the first exception a task raises (after which nothing
        new starts)."""
        done: queue.Queue[tuple[Task, Sequence[Task], BaseException | None]] = queue.Queue()
        running = 0
        while self._ready or running:
            for t in [t for t in self._ready if self._fits(t)]:
                if not self._fits(t):  # an earlier task of this pass took the room
                    continue
                self._ready.remove(t)
                for s in t.slots:
                    self._in_use[s] = self._in_use.get(s, 0) + 1
                    self.peak[s] = max(self.peak.get(s, 0), self._in_use[s])
                threading.Thread(target=_work, args=(t, done), name=f"ptst:{t.name}", daemon=True).start()
                running += 1
            if not running:
                raise RuntimeError(f"unschedulable tasks (a slot limit below 1?): {[t.name for t in self._ready]}")
            try:
                task, follow, exc = done.get(timeout=POLL_S)
            except queue.Empty:
                continue
            running -= 1
            for s in task.slots:
                self._in_use[s] -= 1
            if exc is not None:
                self._ready.clear()
                raise exc
            self._ready.extend(follow)


def _work(task: Task, done: queue.Queue) -> None:
    try:
        follow = task.run()
    except BaseException as e:  # noqa: BLE001 — carried to the main thread, which re-raises it
        done.put((task, (), e))
        return
    done.put((task, follow or (), None))


class Claims:
    """Keys being worked on right now, so two concurrent cells that share an item (the same query and response to
    judge) do it once. Thread-safe."""

    def __init__(self) -> None:
        self._keys: set[str] = set()
        self._lock = threading.Lock()

    def claim(self, keys: Iterable[str]) -> set[str]:
        """Claim what nobody holds; returns the keys now held by the caller."""
        with self._lock:
            mine = {k for k in keys if k not in self._keys}
            self._keys |= mine
            return mine

    def release(self, keys: Iterable[str]) -> None:
        with self._lock:
            self._keys -= set(keys)
