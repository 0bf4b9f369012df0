"""`ptst estimate`: every stage's work and cost before anything is spent, on one screen (totals, then per stage and
per backend, each note once; `--detail` adds a row per job) or as one JSON object (errors included, so a script reading --json always gets JSON). ptst.cli wires it into its parser; the
numbers come from ptst.estimate, this module only checks, plans and prints.
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path
from typing import TYPE_CHECKING

from ptst.errors import PtstError

if TYPE_CHECKING:
    from rich.console import Console
    from rich.table import Table

    from ptst.estimate import RunEstimate


def cmd_estimate(args: argparse.Namespace) -> int:
    """Every stage's work and cost before anything is spent: the totals, then per stage and per backend (or one JSON
    object)."""
    from ptst.backends.base import create_backend
    from ptst.data.standin import EstimateLoader
    from ptst.downloads import no_downloads
    from ptst.estimate import estimate_run
    from ptst.plan import train_jobs
    from ptst.preflight import preflight
    from ptst.runner import limit_datasets, limit_note, load_datasets
    from ptst.spec import load_spec

    spec_path = Path(args.spec)
    try:  # the same checks as `ptst validate`, every problem listed; with --json, as JSON on stdout
        spec = load_spec(spec_path, args.set)
        checked = limit_datasets(spec, args.limit) if args.limit else spec
        # Estimate spends nothing, so it needs no credentials: a missing key is a warning here, listed with the
        # numbers (an error in validate and run).
        report = preflight(checked, spec_path.resolve().parent, spending=False)
        report.raise_for_errors(str(args.spec))
        loader = EstimateLoader()  # data not on this machine: the registry's known sizes, never a download
        data = load_datasets(spec, spec_path.resolve().parent, limit=args.limit, loader=loader)
        with no_downloads():  # offline and free: a `download: true` model is not fetched to be estimated
            backends = [(b, create_backend(b)) for b in spec.backends]
            planned = {b.name: train_jobs(spec, b, backend, data) for b, backend in backends}
            est = estimate_run(spec, data, backends, planned)
        est = est.model_copy(update={"notes": (*loader.notes, *est.notes)})
    except PtstError as err:
        if not args.json:
            raise
        problems = list(getattr(err, "problems", None) or [str(err)])
        sys.stdout.write(json.dumps({"spec": str(args.spec), "exit_code": err.exit_code, "errors": problems},
                                    ensure_ascii=False, indent=2) + "\n")
        return err.exit_code
    if args.json:
        out = {"spec": spec.name, "limit": args.limit, **est.to_json(), "budget_usd": spec.budget_usd,
               "overrides": list(args.set), "warnings": list(report.warnings)}
        sys.stdout.write(json.dumps(out, indent=2) + "\n")
        return 0

    from ptst.report.terminal import terminal_console

    console = terminal_console()
    print_estimate(console, est, budget_usd=spec.budget_usd, detail=args.detail,
                   limit=limit_note(spec, args.limit) if args.limit else None)
    for warning in report.warnings:  # a missing key, a retired model: said with the numbers, never instead of them
        console.print(f"warning: {warning}", markup=False)
    return 0


def print_estimate(console: Console, est: RunEstimate, *, budget_usd: float | None, detail: bool = False,
                   limit: str | None = None) -> None:
    """One screen: the totals first, then a table per stage and per backend, each note once (a note shared by
    several jobs names how many); `detail` adds a row per fine-tuning job. Wraps at the console's width."""
    from ptst.estimate import usd_text as money

    by, top = est.usd_by_stage, est.usd_max_by_stage
    budget = f" (budget_usd {budget_usd:,.2f})" if budget_usd is not None else ""
    console.print(f"total estimated cost: {money(est.usd)}, at most {money(est.usd_max)}{budget}")
    if est.gpu_hours is not None and est.gpu_hours_max is not None:
        lo, hi = est.gpu_hours_range or (est.gpu_hours, est.gpu_hours)
        span = f", {lo:,.1f}-{hi:,.1f} over the GPUs listed" if hi > lo else ""
        console.print(f"about {est.gpu_hours:,.1f} GPU hours{span} (at most {est.gpu_hours_max:,.1f})")
    if est.cpu_hours is not None and est.cpu_hours_max is not None:
        console.print(f"about {est.cpu_hours:,.1f} CPU hours (at most {est.cpu_hours_max:,.1f})")
    if limit:
        console.print(f"({limit})")
    stages = _plain("stage", "work", "expected", "at most")
    for stage, work in (("train", f"{est.jobs} fine-tuning job(s)"), ("generate", f"{est.generations:,} generations"),
                        ("judge", f"{est.judge_calls:,} judge calls")):
        stages.add_row(stage, work, money(by.get(stage)), money(top.get(stage, by.get(stage))))
    for col in (2, 3):
        stages.columns[col].justify = "right"
    console.print()
    console.print(stages)
    job_notes = list(dict.fromkeys(j.estimate.notes for j in est.train if j.estimate.notes))
    if est.train:
        backends = _plain("backend", "model", "jobs", "examples", "billed tokens", "train USD")
        backends.columns[1].overflow = "fold"  # a model id is never cut: it is what the user checks
        for col in range(2, 6):
            backends.columns[col].justify = "right"
        for backend, model in dict.fromkeys((j.backend, j.model) for j in est.train):
            jobs = [j for j in est.train if (j.backend, j.model) == (backend, model)]
            billed = [j.estimate.n_billed_tokens for j in jobs]
            usd = [j.estimate.usd for j in jobs]
            backends.add_row(
                backend, model, str(len(jobs)), f"{sum(j.estimate.n_examples for j in jobs):,}",
                "?" if None in billed else f"{sum(b or 0 for b in billed):,}",
                money(None if None in usd else sum(u or 0.0 for u in usd)),
            )
        console.print()
        console.print(backends)
    if detail and est.train:
        console.print()
        console.print(_jobs_table(est, job_notes))
    console.print()
    notes = [(n, sum(1 for j in est.train if j.estimate.notes == n)) for n in job_notes]
    for k, (note, count) in enumerate(notes, 1):
        console.print(f"[{k}] {count} job(s): {note}", markup=False)
    for note in est.notes:
        console.print(f"note: {note}", markup=False)
    if not detail and est.train:
        console.print("(a row per fine-tuning job: --detail; every number as JSON: --json)")


def _plain(*headers: str) -> Table:
    """A table with a rule under its header and no frame: two spaces between columns, none at the edges."""
    from rich import box
    from rich.table import Table

    return Table(*headers, box=box.SIMPLE_HEAD, show_edge=False, pad_edge=False, collapse_padding=True)


def _jobs_table(est: RunEstimate, job_notes: list[str]) -> Table:
    """A row per fine-tuning job (tokens per epoch, billed tokens over every epoch); labels fold onto a second line,
    numbers are never cut."""
    from ptst.estimate import usd_text as money

    def count(v: int | None) -> str:
        return f"{v:,}" if v is not None else "?"

    rows = [(j.backend, j.train_template, str(j.seed), count(j.estimate.n_examples), count(j.estimate.n_tokens),
             count(j.estimate.n_billed_tokens), money(j.estimate.usd),
             f"[{job_notes.index(j.estimate.notes) + 1}]" if j.estimate.notes else "") for j in est.train]
    table = _plain()
    # Short headers, so the numbers keep their width at 80 columns (tokens: per epoch; billed: over every epoch).
    for i, head in enumerate(("backend", "train template", "seed", "examples", "tokens", "billed", "USD", "note")):
        if i < 2:
            table.add_column(head, overflow="fold")
        else:
            table.add_column(head, justify="right", no_wrap=True)
    for r in rows:
        table.add_row(*r)
    return table
