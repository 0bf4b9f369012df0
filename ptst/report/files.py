"""Writing the report files atomically: results.json (the public contract, verbatim), report.md, report.html with
its samples.js, every figure as PNG, SVG and PDF under figures/, every table as LaTeX and CSV under tables/ with
the tidy numeric tables (CSV, and Parquet when pyarrow is installed), and the
content fingerprint that lets a re-run that changed nothing skip all of it (`ptst.report.fingerprint`)."""

from __future__ import annotations

import json
import os
import tempfile
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import TYPE_CHECKING

from ptst.report.fingerprint import FINGERPRINT_FILE, fingerprint, record_text, up_to_date
from ptst.results import Results

if TYPE_CHECKING:
    from ptst.plan import JudgmentKeys
    from ptst.report.samples import SampleRow


def atomic_write(path: Path, text: str | bytes) -> None:
    """Write via a temp file in the same directory + os.replace: readers never see a half-written report."""
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
    try:
        os.chmod(tmp, 0o644)  # mkstemp makes 0600; reports are meant to be shared like any written file
        if isinstance(text, bytes):
            with os.fdopen(fd, "wb") as fb:
                fb.write(text)
                fb.flush()
                os.fsync(fb.fileno())
        else:
            with os.fdopen(fd, "w", encoding="utf-8", newline="\n") as f:
                f.write(text)
                f.flush()
                os.fsync(f.fileno())
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise


Samples = tuple[Sequence[str], Sequence["SampleRow"]]


def write_reports(
    results: Results, out_dir: Path, *, samples: Samples | Callable[[], Samples] | None = None,
    fingerprint_hex: str | None = None, asr_scale: float | None = 100.0,
) -> list[Path]:
    """Write every report file into `out_dir` and return their paths, the main three first. `samples`: (judge names,
    rows) for the per-sample viewer, or a function that reads them (called once the figures are on their way, so
    the figure process draws while they are read); `fingerprint_hex`: recorded beside the reports (see
    `write_run_reports`); `asr_scale`: the top of every ASR heatmap's colour scale in % (None: the page's highest)."""
    # The renderers are imported here: a re-run whose reports are up to date never loads them.
    from ptst.report import figure_process
    from ptst.report.grids import build_grids
    from ptst.report.html import Figures, render_html
    from ptst.report.markdown import render_markdown
    from ptst.report.samples import SAMPLES_FILE, samples_js
    from ptst.report.tables import paper_tables, to_csv, to_latex
    from ptst.report.tidy import tidy_files

    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    grids = build_grids(results)
    figures = Figures(figure_process.running())  # drawn in the figure process, if one runs, while the rest is built
    page = render_html(results, grids, figures=figures, samples=samples is not None, asr_scale=asr_scale)
    files: dict[str, str | bytes] = {
        "results.json": json.dumps(results.model_dump(mode="json"), indent=2, ensure_ascii=False) + "\n",
        "report.md": render_markdown(results, grids),
        "report.html": page,
    }
    if samples is not None:
        files[SAMPLES_FILE] = samples_js(*(samples() if callable(samples) else samples), results.safety_templates)
    for t in paper_tables(results, grids):
        files[f"tables/{t.slug}.tex"] = to_latex(t)
        files[f"tables/{t.slug}.csv"] = to_csv(t)
    files.update(tidy_files(results))  # tables/safety.csv, tasks.csv, ... (+ .parquet): numbers for programs
    files["report.html"] = figures.resolve(page)
    files.update(figures.files)
    fp_path = out_dir / FINGERPRINT_FILE
    fp_path.unlink(missing_ok=True)  # a half-finished rewrite must not pass for the reports it replaces
    paths = []
    for name, text in files.items():
        path = out_dir / name
        path.parent.mkdir(parents=True, exist_ok=True)
        atomic_write(path, text)
        paths.append(path)
    if fingerprint_hex is not None:
        atomic_write(fp_path, record_text(fingerprint_hex, out_dir, paths))
    return paths


def write_run_reports(
    results: Results, runs: Sequence[Path], out_dir: Path | None = None, *, force: bool = False,
    judgment_memo: JudgmentKeys | None = None, asr_scale: float | None = 100.0,
) -> tuple[list[Path], bool]:
    """The reports of one run (or a merge of several) with their per-sample data read from the run stores; skipped
    when the fingerprint recorded in `out_dir` matches and `force` is false. Returns (paths, rebuilt). A colour
    scale other than the default is part of the fingerprint, so a later plain run redraws on the default."""
    from ptst.report.samples import sample_rows
    from ptst.store import RunStore

    out = Path(out_dir) if out_dir is not None else Path(runs[0])
    several = len(runs) > 1
    stamps = []
    for d in runs:
        with RunStore.open(d, lock=False) as store:
            stamps.append(store.stamp())
    fp = fingerprint(results, stamps)
    if asr_scale != 100.0:
        fp += f"-asr-scale-{asr_scale}"
    if not force:
        current = up_to_date(out, fp)
        if current is not None:
            return current, False
    from ptst.report import figure_process

    figure_process.start()  # draws the figures on another core while the samples are read

    def samples() -> Samples:
        judges: list[str] = []
        rows: list[SampleRow] = []
        for d in runs:
            with RunStore.open(d, lock=False) as store:
                names, got = sample_rows(store, run=str(d) if several else None, memo=judgment_memo)
            judges += [n for n in names if n not in judges]
            # a merged report lines each run's verdicts up under the union of judge names
            if names != judges:
                pos = [names.index(j) if j in names else None for j in judges]
                for r in got:
                    r.verdicts = [None if p is None or not r.verdicts else r.verdicts[p] for p in pos]
            rows += got
        return judges, rows

    return write_reports(results, out, samples=samples, fingerprint_hex=fp, asr_scale=asr_scale), True
