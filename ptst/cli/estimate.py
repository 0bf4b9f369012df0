"""`ptst estimate`: every stage's work and cost before anything is spent, as a table per job and totals or as one
JSON object (errors included, so a script reading --json always gets JSON). ptst.cli wires it into its parser; the
numbers come from ptst.estimate, this module only checks, plans and prints.
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

from ptst.errors import PtstError


def cmd_estimate(args: argparse.Namespace) -> int:
    """Every stage's work and cost before anything is spent: a table per job, then the totals (or one JSON object)."""
    from rich.table import Table

    from ptst.backends.base import create_backend
    from ptst.data.standin import EstimateLoader
    from ptst.downloads import no_downloads
    from ptst.estimate import estimate_run
    from ptst.estimate import usd_text as money
    from ptst.plan import train_jobs
    from ptst.preflight import preflight
    from ptst.runner import limit_datasets, limit_note, load_datasets
    from ptst.spec import load_spec

    spec_path = Path(args.spec)
    try:  # the same checks as `ptst validate`, every problem listed; with --json, as JSON on stdout
        spec = load_spec(spec_path, args.set)
        checked = limit_datasets(spec, args.limit) if args.limit else spec
        preflight(checked, spec_path.resolve().parent).raise_for_errors(str(args.spec))
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
               "overrides": list(args.set)}
        sys.stdout.write(json.dumps(out, indent=2) + "\n")
        return 0

    table = Table("backend", "model", "train template", "seed", "examples", "tokens/epoch", "billed tokens", "USD", "notes")
    for j in est.train:
        e = j.estimate
        table.add_row(
            j.backend, j.model, j.train_template, str(j.seed), f"{e.n_examples:,}",
            f"{e.n_tokens:,}" if e.n_tokens is not None else "?",
            f"{e.n_billed_tokens:,}" if e.n_billed_tokens is not None else "?",
            f"{e.usd:,.4f}" if e.usd is not None else "?", e.notes,
        )
    from ptst.report.terminal import terminal_console

    console = terminal_console()
    if est.train:
        console.print(table)
    by = est.usd_by_stage
    budget = f" (budget_usd {spec.budget_usd:,.2f})" if spec.budget_usd is not None else ""
    console.print(f"total estimated fine-tuning cost: {money(by['train'])}")
    console.print(f"{est.jobs} fine-tuning job(s) {money(by['train'])}; {est.generations:,} generations "
                  f"{money(by['generate'])}; {est.judge_calls:,} judge calls {money(by['judge'])}")
    gpu = ""
    if est.gpu_hours is not None and est.gpu_hours_max is not None:
        lo, hi = est.gpu_hours_range or (est.gpu_hours, est.gpu_hours)
        span = f", {lo:,.1f}-{hi:,.1f} over the GPUs listed" if hi > lo else ""
        gpu = f"; about {est.gpu_hours:,.1f} GPU hours{span} (at most {est.gpu_hours_max:,.1f})"
    if est.cpu_hours is not None and est.cpu_hours_max is not None:
        gpu += f"; about {est.cpu_hours:,.1f} CPU hours (at most {est.cpu_hours_max:,.1f})"
    console.print(f"total estimated cost: {money(est.usd)}, at most {money(est.usd_max)}{budget}{gpu}")
    if args.limit:
        console.print(f"({limit_note(spec, args.limit)})")
    for note in est.notes:
        console.print(f"note: {note}")
    return 0
