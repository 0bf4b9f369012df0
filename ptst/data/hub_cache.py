"""Whether a registry dataset that would come from the Hugging Face hub is already in the local cache, the command
that puts it there, and whether the hub can be reached at all.

`ptst validate` names every hub dataset that is neither on this machine nor cached, in one line with the command that
fetches them, so nobody learns it from a download that fails mid-run. `ptst run` asks once whether the hub answers (one
TCP connection, a few seconds at most, no retries) before loading anything: `datasets` would otherwise spend half a
minute retrying an unreachable hub before its own error. Everything here reads folders and environment variables; only
`hub_reachable` touches the network, and only when the hub is not declared offline.
"""

from __future__ import annotations

import os
import re
import socket
from collections.abc import Sequence
from pathlib import Path
from urllib.parse import urlparse

from ptst.data.registry import DatasetInfo

PROBE_TIMEOUT_S = 3.0
"""One connection attempt to the hub; a machine without a route fails at once, a silent firewall after this."""

_OFF = ("1", "true", "yes", "on")


def offline_variable() -> str | None:
    """The variable that declares the hub unreachable (HF_HUB_OFFLINE or HF_DATASETS_OFFLINE), if one does."""
    return next((v for v in ("HF_HUB_OFFLINE", "HF_DATASETS_OFFLINE") if os.environ.get(v, "").strip().lower() in _OFF),
                None)


def hub_offline() -> bool:
    return offline_variable() is not None


def _hf_home() -> Path:
    return Path(os.environ.get("HF_HOME") or Path(os.environ.get("XDG_CACHE_HOME") or "~/.cache") / "huggingface")


_UPPER_UPPER = re.compile(r"([A-Z]+)([A-Z][a-z])")
_LOWER_UPPER = re.compile(r"([a-z\d])([A-Z])")


def _snake(name: str) -> str:
    """The folder name `datasets` gives a repository name (its `naming.camelcase_to_snakecase`: `GSM-Danger` ->
    `gsm-danger`, `DirectHarm4` -> `direct_harm4`), written out so that validating never imports `datasets`."""
    return _LOWER_UPPER.sub(r"\1_\2", _UPPER_UPPER.sub(r"\1_\2", name)).lower()


def is_cached(hub_id: str) -> bool:
    """A prepared copy in the `datasets` cache (`{namespace}___{name}`) or the repository's files in the hub cache
    (`datasets--{org}--{name}`), the two places `datasets.load_dataset` reads from offline."""
    datasets_cache = Path(os.environ.get("HF_DATASETS_CACHE") or _hf_home() / "datasets").expanduser()
    hub_cache = Path(os.environ.get("HF_HUB_CACHE") or os.environ.get("HUGGINGFACE_HUB_CACHE")
                     or _hf_home() / "hub").expanduser()
    namespace, _, name = hub_id.rpartition("/")
    prepared = f"{namespace}___{_snake(name)}" if namespace else _snake(name)
    return (datasets_cache / prepared).is_dir() or (hub_cache / ("datasets--" + hub_id.replace("/", "--"))).is_dir()


def fetch_command(needed: Sequence[tuple[DatasetInfo, str]]) -> str:
    """One shell command that loads each (dataset, split) into the local cache exactly as a run would."""
    calls = []
    for info, split in needed:
        assert info.hub_id is not None
        config = f", {info.config!r}" if info.config else ""
        calls.append(f"d.load_dataset({info.hub_id!r}{config}, split={split!r})")
    return f'python -c "import datasets as d; {"; ".join(calls)}"'


def uncached_line(needed: Sequence[tuple[DatasetInfo, str]], *, reachable: bool = True) -> str:
    """The one line naming every hub dataset that is not on this machine, with the command that fetches them;
    `reachable=False` (a run that found the hub unreachable) says the run cannot start."""
    names = ", ".join(f"{info.name} ({info.hub_id}, {split})" for info, split in needed)
    then = ("the run downloads them first (internet needed)" if reachable else
            "the Hugging Face hub cannot be reached from here"
            + (f" (declared offline: {offline_variable()})" if hub_offline() else "")
            + ", so the run cannot load them")
    return (f"datasets: {names} are neither on this machine nor in the Hugging Face cache; {then}. Fetch them "
            f"where the hub is reachable (or set data_dir to local copies): {fetch_command(needed)}")


def hub_reachable() -> bool:
    """One TCP connection to the hub's host (HF_ENDPOINT, default huggingface.co), no retries; False when declared
    offline."""
    if hub_offline():
        return False
    url = urlparse(os.environ.get("HF_ENDPOINT") or "https://huggingface.co")
    port = url.port or (443 if url.scheme == "https" else 80)
    try:
        with socket.create_connection((url.hostname or "huggingface.co", port), timeout=PROBE_TIMEOUT_S):
            return True
    except OSError:
        return False
