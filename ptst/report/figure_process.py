"""Figures drawn in a child process, while the report's other files are built here.

Why: matplotlib's import (~0.7 s) and drawing (~0.1 s per figure and format) are pure Python that holds the GIL, so in
the run's own process they add to its wall time even from a background thread. A child process, started when a run
is about to produce new results (`start`), imports matplotlib on another core while the run works, then draws each
figure it is sent (every format, and its size for the page) while this process reads the store and writes
samples.js and the tables. On one core it costs about what drawing here does.

The child runs `ptst.report.figure_process` as `__main__`, started isolated (`ptst.child`: `-I` with an explicit
path, so nothing in the user's working directory is imported): no user `__main__` is re-imported (as
multiprocessing's spawn would), it exits when this process closes its stdin or dies (EOF), and its stderr is discarded (a failure comes back
as a message). Anything that goes wrong with it (it could not start, died, or a figure raised there) makes the caller
draw that figure here instead (`Figures.resolve`), where a real bug raises with its own traceback.

Protocol: pickled, length-prefixed frames. Request: (id, draw callable, formats); reply: (id, {"size": (w, h),
fmt: bytes, ...}) or (id, None) when drawing failed.
"""

from __future__ import annotations

import atexit
import pickle
import queue
import struct
import subprocess
import sys
import threading
from collections.abc import Callable, Sequence
from typing import IO, TYPE_CHECKING, Any

if TYPE_CHECKING:
    from matplotlib.figure import Figure

Drawn = dict[str, Any]  # {"size": (width in, height in), "png": bytes, "svg": bytes, "pdf": bytes}
_HEADER = struct.Struct("!Q")


def draw(make: Callable[[], Figure], formats: Sequence[str]) -> Drawn:
    """The figure `make()` rendered in each of `formats`, with its size in inches."""
    from ptst.report.plots import render

    fig = make()
    out: Drawn = {"size": tuple(float(x) for x in fig.get_size_inches())}
    for fmt in formats:
        out[fmt] = render(fig, fmt)
    return out


def _write(stream: IO[bytes], obj: Any) -> None:
    data = pickle.dumps(obj, protocol=pickle.HIGHEST_PROTOCOL)
    stream.write(_HEADER.pack(len(data)) + data)
    stream.flush()


def _read(stream: IO[bytes]) -> Any:
    head = stream.read(_HEADER.size)
    if len(head) < _HEADER.size:
        raise EOFError("figure process closed its pipe")
    (size,) = _HEADER.unpack(head)
    data = stream.read(size)
    if len(data) < size:
        raise EOFError("figure process closed its pipe")
    return pickle.loads(data)


class FigureProcess:
    """The child process and a reader thread that files its replies by request id."""

    def __init__(self) -> None:
        from ptst.child import module_command

        self._proc = subprocess.Popen(module_command("ptst.report.figure_process"), stdin=subprocess.PIPE,
                                      stdout=subprocess.PIPE, stderr=subprocess.DEVNULL)
        self._replies: dict[int, queue.SimpleQueue[Drawn | None]] = {}
        self._lock = threading.Lock()
        self._next = 0
        self.alive = True
        threading.Thread(target=self._read_replies, name="ptst:figure-replies", daemon=True).start()

    def _read_replies(self) -> None:
        assert self._proc.stdout is not None
        try:
            while True:
                rid, drawn = _read(self._proc.stdout)
                with self._lock:
                    box = self._replies.get(rid)
                if box is not None:
                    box.put(drawn)
        except (EOFError, OSError, pickle.UnpicklingError, ValueError):
            pass
        with self._lock:  # every request still waiting gets None: it is drawn in-process instead
            self.alive = False
            for box in self._replies.values():
                box.put(None)

    def submit(self, make: Callable[[], Figure], formats: Sequence[str]) -> Callable[[], Drawn | None]:
        """Send one figure; returns a function that waits for it (None: draw it here instead)."""
        box: queue.SimpleQueue[Drawn | None] = queue.SimpleQueue()
        with self._lock:
            rid, self._next = self._next, self._next + 1
            self._replies[rid] = box
            alive = self.alive
        try:
            if not alive:
                raise BrokenPipeError
            assert self._proc.stdin is not None
            _write(self._proc.stdin, (rid, make, tuple(formats)))
        except (OSError, pickle.PicklingError, AttributeError, TypeError):
            box.put(None)

        def wait() -> Drawn | None:
            got = box.get()
            with self._lock:
                self._replies.pop(rid, None)
            return got

        return wait

    def close(self) -> None:
        try:
            if self._proc.stdin is not None:
                self._proc.stdin.close()
            self._proc.wait(timeout=5)
        except (OSError, subprocess.TimeoutExpired):
            self._proc.kill()


_PROCESS: FigureProcess | None = None


def start() -> None:
    """Start the figure process (once per ptst process; a dead one is replaced). Where it cannot start, figures are
    drawn in-process as before."""
    global _PROCESS
    if _PROCESS is not None and _PROCESS.alive:
        return
    try:
        _PROCESS = FigureProcess()
    except OSError:
        _PROCESS = None
        return
    atexit.register(_PROCESS.close)


def running() -> FigureProcess | None:
    """The live figure process, if one was started."""
    return _PROCESS if _PROCESS is not None and _PROCESS.alive else None


def _serve() -> None:
    """The child: import the renderers first (while the parent works), then draw every request until EOF."""
    from ptst.report.plots import import_renderers

    import_renderers()
    stdin, stdout = sys.stdin.buffer, sys.stdout.buffer
    while True:
        try:
            rid, make, formats = _read(stdin)
        except EOFError:
            return
        try:
            drawn: Drawn | None = draw(make, formats)
        except Exception:  # noqa: BLE001 — not swallowed: the parent redraws in-process, where it raises
            drawn = None
        _write(stdout, (rid, drawn))


if __name__ == "__main__":
    _serve()
