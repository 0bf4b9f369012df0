"""The run folder's lock: one process at a time per output directory, and a refused second one is told who holds it.

An exclusive `flock` on `DIR/ptst.lock`, held for the whole command; the holder's pid is written at a fixed width
so a reader never sees it half-written.
"""

from __future__ import annotations

import fcntl
import os
import time
from pathlib import Path
from typing import IO

from ptst.errors import RunLocked, UsageError

PID_WIDTH = 12  # the lock file's pid, padded to a fixed width: one write replaces it whole, never half


def acquire(d: Path) -> IO[str]:
    """The directory lock: held for the whole run; a second process is refused with the holder's pid."""
    try:
        lock_file = open(d / "ptst.lock", "a+")  # noqa: SIM115 - held for the whole run
    except OSError as e:
        raise UsageError(f"{d}: cannot write the run lock ({e.strerror}); choose another --out") from e
    try:
        fcntl.flock(lock_file, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except BlockingIOError:
        holder = _holder(lock_file)
        lock_file.close()
        raise RunLocked(
            f"{d}: another ptst process ({f'pid {holder}' if holder else 'pid not yet written'}) is using this "
            "directory; wait for it to finish or choose another --out"
        ) from None
    # One fixed-width write at offset 0 (no truncate first): a reader never sees the file empty or half-written.
    os.pwrite(lock_file.fileno(), f"{os.getpid():<{PID_WIDTH}}".encode()[:PID_WIDTH], 0)
    os.ftruncate(lock_file.fileno(), PID_WIDTH)
    return lock_file


def release(lock_file: IO[str]) -> None:
    fcntl.flock(lock_file, fcntl.LOCK_UN)
    lock_file.close()


def _holder(lock_file: IO[str], wait_s: float = 1.0) -> str | None:
    """The holder's pid from the lock file. It takes the lock before writing its pid, so an empty file is read again
    for up to `wait_s` before giving up."""
    deadline = time.monotonic() + wait_s
    while True:
        text = os.pread(lock_file.fileno(), 64, 0).decode("ascii", errors="replace").strip()
        if text.isdigit() or time.monotonic() >= deadline:
            return text if text.isdigit() else None
        time.sleep(0.02)
