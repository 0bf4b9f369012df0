"""A lock per paid external job, shared by every ptst run of this user on this machine, whatever its `--out`.

The run folder's lock (`ptst.store.lock`) keeps two runs out of one folder; two runs of one spec into different
folders would each find no job (the other's `create` not yet visible through the API's metadata) and both create it:
8 jobs instead of 4. A backend takes this lock, keyed by the job's key, around "find the job, else create it", so the
second run waits the few seconds the first needs to create it, then finds it. It lives in the per-user state folder:
$PTST_STATE_DIR, else $XDG_STATE_HOME/ptst, else ~/.local/state/ptst.
"""

from __future__ import annotations

import fcntl
import hashlib
import os
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

from ptst.errors import UsageError


def state_dir() -> Path:
    explicit = os.environ.get("PTST_STATE_DIR")
    if explicit:
        return Path(explicit).expanduser()
    base = os.environ.get("XDG_STATE_HOME") or str(Path("~/.local/state").expanduser())
    return Path(base) / "ptst"


@contextmanager
def job_lock(key: str) -> Iterator[None]:
    """Hold the machine-wide lock of external job `key` (blocking: its holder only looks up or creates the job)."""
    folder = state_dir() / "jobs"
    try:
        folder.mkdir(parents=True, exist_ok=True)
        f = open(folder / (hashlib.sha256(key.encode()).hexdigest()[:32] + ".lock"), "a+")  # noqa: SIM115
    except OSError as e:
        raise UsageError(
            f"{folder}: cannot write the per-user job locks ({e.strerror}) that keep two runs from creating the same "
            "paid job; fix its permissions or set PTST_STATE_DIR to a writable folder"
        ) from e
    with f:
        fcntl.flock(f, fcntl.LOCK_EX)
        try:
            yield
        finally:
            fcntl.flock(f, fcntl.LOCK_UN)
