"""The content fingerprint recorded next to a run's reports, so a re-run that changed nothing rebuilds nothing.

Reports are a pure function of the results, the per-sample records and the ptst version that draws them. Rebuilding
them (figures in three formats, tables, the per-sample data) costs seconds and imports matplotlib; a finished `ptst
run` repeated with the same spec on the same store should cost little more than `ptst validate`. So the writer
records a fingerprint of what the reports were made from, with each file's sha256, and `ptst run` skips the rebuild
when it matches and every file it lists still holds the bytes written. `ptst report DIR` always rebuilds: asking for reports is asking for them to be drawn.

The fingerprint covers: the ptst version and `REPORT_FORMAT` (bumped when the report code changes what it writes
without a version bump, as during development), the results (minus `finished_at`, which every run restamps: a
re-run that did no work keeps the reports, and the finish time they state, as they were), and a stamp of the store's
tables (`RunStore.stamp`: row counts and the latest write time of each), which moves when a response, verdict, job or cell changes.
"""

from __future__ import annotations

import hashlib
import json
from pathlib import Path

from ptst import __version__
from ptst.results import Results

REPORT_FORMAT = 2
FINGERPRINT_FILE = ".report-fingerprint.json"


def fingerprint(results: Results, stamps: list[dict[str, list]]) -> str:
    """A hex digest of everything the reports of `results` are drawn from (see the module docstring)."""
    data = results.model_dump(mode="json", exclude={"finished_at"})
    blob = json.dumps([__version__, REPORT_FORMAT, data, stamps], sort_keys=True, ensure_ascii=True)
    return hashlib.sha256(blob.encode("utf-8")).hexdigest()


def recorded(out_dir: Path) -> tuple[str, dict[Path, str]] | None:
    """The fingerprint and each file's sha256 recorded by the last write into `out_dir`; None if absent, unreadable
    or from a writer that recorded no digests."""
    try:
        d = json.loads((out_dir / FINGERPRINT_FILE).read_text(encoding="utf-8"))
        return str(d["fingerprint"]), {out_dir / p: str(h) for p, h in d["sha256"].items()}
    except (OSError, ValueError, KeyError, TypeError, AttributeError):
        return None


def _sha256(path: Path) -> str | None:
    try:
        return hashlib.sha256(path.read_bytes()).hexdigest()
    except OSError:
        return None


def up_to_date(out_dir: Path, fp: str) -> list[Path] | None:
    """The report files when the recorded fingerprint is `fp` and every recorded file still holds the bytes written
    (a results.json edited, truncated or replaced by junk is rewritten, not trusted); else None."""
    rec = recorded(out_dir)
    if rec is None or rec[0] != fp or not all(_sha256(p) == h for p, h in rec[1].items()):
        return None
    return list(rec[1])


def record_text(fp: str, out_dir: Path, paths: list[Path]) -> str:
    digests = {p.relative_to(out_dir).as_posix(): _sha256(p) for p in paths}
    return json.dumps({"fingerprint": fp, "ptst_version": __version__, "files": list(digests), "sha256": digests},
                      indent=1) + "\n"
