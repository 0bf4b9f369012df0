"""Content digests of files: one streamed sha256, remembered per (path, size, mtime) within a process.

Identities that must change when a file changes (a tokenizer's fingerprint, a GGUF model, a local adapter) hash the
file's bytes; a multi-gigabyte file is read in 1 MiB blocks, and read once per process while it is unchanged.
"""

from __future__ import annotations

import hashlib
from functools import lru_cache
from pathlib import Path

_BLOCK = 1 << 20


def file_sha256(path: str | Path) -> str:
    """The sha256 (hex) of the file's bytes; OSError when it cannot be read."""
    p = Path(path).expanduser()
    st = p.stat()
    return _sha256(str(p), st.st_size, st.st_mtime_ns)


@lru_cache(maxsize=32)
def _sha256(path: str, size: int, mtime_ns: int) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as f:
        for block in iter(lambda: f.read(_BLOCK), b""):
            h.update(block)
    return h.hexdigest()
