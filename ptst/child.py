"""Starting a Python child process of ptst that imports nothing from the user's working directory.

`python -m MODULE` puts the working directory first on the child's `sys.path`, so a `secrets.py`, `json.py` or
`base64.py` in the folder where a user runs `ptst run` would execute inside the run. The child starts isolated
(`-I`: no working directory, no PYTHON* variables, no user site) and is given its path explicitly: the folder this
ptst is imported from first (a source checkout wins over an installed copy, as in the parent), then the
interpreter's own path, then the parent's other entries (plugins) less the working directory. `-P` would do the
first part too, but it is Python 3.11+ and ptst supports 3.10.
"""

from __future__ import annotations

import sys
from pathlib import Path

# argv: [-c, ROOT, N, EXTRA * N, MODULE, ARGS...]; runs MODULE as __main__ with sys.argv = [MODULE, ARGS...]
_BOOT = (
    "import sys, runpy; a = sys.argv; n = int(a[2]); sys.path[:0] = [a[1]]; sys.path += a[3:3 + n]; "
    "sys.argv = a[3 + n:]; runpy.run_module(sys.argv[0], run_name='__main__', alter_sys=True)"
)


def _unsafe(entry: str, cwd: Path) -> bool:
    """'' and the working directory (however spelled) are where a user's files shadow modules."""
    if not entry:
        return True
    try:
        return Path(entry).resolve() == cwd
    except OSError:
        return True


def module_command(module: str, *args: str) -> list[str]:
    """The argv that runs `python -m module args...` isolated from the working directory."""
    import ptst

    root = str(Path(ptst.__file__).resolve().parents[1])
    cwd = Path.cwd().resolve()
    extras = [p for p in sys.path if not _unsafe(p, cwd) and p != root]
    return [sys.executable, "-I", "-c", _BOOT, root, str(len(extras)), *extras, module, *args]
