"""A bound on requests in flight shared by every call of one backend or judge, across threads and event loops.

The runner makes several `generate` calls of one remote backend at once (one per cell), each running its own event
loop in its own worker thread. With a semaphore per call, a backend with `concurrency: 8` had 8 requests in flight
per call; this limit makes it 8 in all, so a kill loses at most `concurrency` requests per backend (each response
is stored as it returns). asyncio's own Semaphore belongs to one loop, hence this small cross-loop one.
"""

from __future__ import annotations

import asyncio
import threading
from collections import deque
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager

__all__ = ["SharedLimit"]


class SharedLimit:
    """At most `n` holders at once, over any number of threads and event loops; waiters are served in order."""

    def __init__(self, n: int):
        self.n = n
        self._used = 0
        self._lock = threading.Lock()
        self._waiters: deque[tuple[asyncio.AbstractEventLoop, asyncio.Future[None]]] = deque()
        self.peak = 0  # the most holders at once (tests and benchmarks read it)

    @asynccontextmanager
    async def hold(self) -> AsyncIterator[None]:
        await self._acquire()
        try:
            yield
        finally:
            self._release()

    async def _acquire(self) -> None:
        loop = asyncio.get_running_loop()
        with self._lock:
            if self._used < self.n and not self._waiters:
                self._used += 1
                self.peak = max(self.peak, self._used)
                return
            waiter: tuple[asyncio.AbstractEventLoop, asyncio.Future[None]] = (loop, loop.create_future())
            self._waiters.append(waiter)
        try:
            await waiter[1]
        except asyncio.CancelledError:
            with self._lock:
                if waiter in self._waiters:  # never granted: just leave the queue
                    self._waiters.remove(waiter)
                    raise
            if waiter[1].done() and not waiter[1].cancelled():  # granted, then cancelled: give the slot back
                self._release()
            raise  # (granted after the cancel: `_grant` sees the cancelled future and gives it back)

    def _release(self) -> None:
        with self._lock:
            while self._waiters:
                loop, fut = self._waiters.popleft()
                if loop.is_closed():
                    continue
                loop.call_soon_threadsafe(self._grant, fut)  # the slot passes to the waiter, `_used` unchanged
                return
            self._used -= 1

    def _grant(self, fut: asyncio.Future[None]) -> None:
        if fut.cancelled():
            self._release()
        else:
            fut.set_result(None)
