"""Pinned downloads of registry datasets that are not on the Hugging Face hub (Safety-Tuned LLaMAs lives in a GitHub
repository): fetched once over https into `$XDG_CACHE_HOME/ptst/data`, in the registry's local layout, and kept only
when the bytes match the pinned sha256, so a run reads exactly the file the registry names."""

from __future__ import annotations

import hashlib
import os
from pathlib import Path

from ptst.data.registry import DatasetInfo
from ptst.errors import DataError
from ptst.progress import log


def download_dir() -> Path:
    """Where pinned downloads of datasets not on the hub are kept (`$XDG_CACHE_HOME/ptst/data`)."""
    return Path(os.environ.get("XDG_CACHE_HOME") or "~/.cache").expanduser() / "ptst" / "data"


def download(info: DatasetInfo) -> Path:
    """Fetch a registry dataset's pinned file once, checked against its sha256 before it is kept."""
    import urllib.request

    assert info.url is not None and info.local
    target = download_dir() / info.local[0].path
    try:
        with urllib.request.urlopen(info.url, timeout=60) as r:
            body = r.read()
    except OSError as e:
        raise DataError(
            f"dataset {info.name!r}: no local copy and the download from {info.url} failed ({e}); put the file "
            f"({info.local[0].path}) in a folder named by data_dir or PTST_DATA_DIR"
        ) from e
    digest = hashlib.sha256(body).hexdigest()
    if info.url_sha256 is not None and digest != info.url_sha256:
        raise DataError(f"dataset {info.name!r}: the file at {info.url} has sha256 {digest}, not the pinned "
                        f"{info.url_sha256}; nothing was kept — get the file yourself and set data_dir")
    target.parent.mkdir(parents=True, exist_ok=True)
    tmp = target.with_suffix(target.suffix + ".part")
    tmp.write_bytes(body)
    tmp.replace(target)
    log(f"downloaded {info.name} from {info.url} to {target}")
    return target
