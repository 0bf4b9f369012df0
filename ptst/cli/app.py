"""`ptst run|validate|render|estimate|report|templates|cancel|list|schema` — the command-line face of the library.

Exit codes: 0 complete; 2 user error, one line on stderr (spec, data, paths, credentials, budget exceeded without
--yes, run folder busy or unreadable; `ptst` with no command, which prints the help); 3 finished with failed jobs or
cells (results written; `--retry-failed` resubmits jobs the API failed, a plain re-run retries the rest); 130
interrupted; 1 only for bugs (with their traceback). A closed stdout (`ptst run ... | head`) is not an error.
`ptst --debug COMMAND` (or PTST_DEBUG=1) prints a user error's traceback with its causes above the one line: the
errors keep the exception they wrap (`raise ... from e`), so a bug report carries what the library or API said.
Help texts and examples are in ptst.cli.help, `--set` in ptst.overrides, `list`/`schema` in ptst.cli.listing; the
`estimate` command is ptst.cli.estimate, `render`/`templates`/`list`/`schema` are ptst.cli.inspect.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import traceback
from pathlib import Path
from typing import TYPE_CHECKING, Any

from ptst import __version__
from ptst.cli.estimate import cmd_estimate
from ptst.cli.help import ALL_TABLES_HELP, DESCRIPTION, EXAMPLES, OVERVIEW, QUIET_HELP, SET_HELP
from ptst.cli.inspect import cmd_list, cmd_render, cmd_schema, cmd_templates
from ptst.errors import PtstError, UsageError

if TYPE_CHECKING:
    from ptst.results import Results

DEBUG_ENV = "PTST_DEBUG"  # as --debug: a user error's traceback with its causes


def _console():
    from ptst.report.terminal import terminal_console

    return terminal_console()


def cmd_validate(args: argparse.Namespace) -> int:
    """Validate the spec, then preflight it: every error (exit 2), warning and unchecked item, then a summary."""
    from ptst.preflight import preflight
    from ptst.spec import judge_label, load_spec, ptst_warning

    spec_path = Path(args.spec)
    spec = load_spec(spec_path, args.set)
    report = preflight(spec, spec_path.resolve().parent)
    warnings = [*report.warnings, *filter(None, [ptst_warning(spec)])]
    for line in report.errors:
        print(f"error: {line}", file=sys.stderr)
    for line in warnings:
        print(f"warning: {line}")
    for line in report.unchecked:
        print(f"unchecked: {line}")
    if report.errors:
        n = len(report.errors)
        print(f"{args.spec}: {n} problem{'s' if n != 1 else ''} found before anything was spent", file=sys.stderr)
        return 2
    n_train = len(spec.train.templates) * len(spec.train.seeds) if spec.train else 0
    judges = [judge_label(j) for j in spec.judge_specs]
    print(
        f"{args.spec}: ok — {len(spec.backends)} backend(s), {n_train} fine-tuning job(s) per backend, "
        f"{len(spec.eval.templates)} test template(s), {len(spec.eval.safety)} safety benchmark(s), "
        f"{len(spec.eval.tasks)} task(s), {'judges' if len(judges) > 1 else 'judge'} {', '.join(judges)}; "
        f"{len(warnings)} warning(s), {len(report.unchecked)} unchecked"
    )
    return 0


def _default_out(spec_path: Path, name: str) -> Path:
    return Path("runs") / name


def cmd_run(args: argparse.Namespace) -> int:
    from ptst import progress
    from ptst.errors import EXIT_INCOMPLETE
    from ptst.plan import JudgmentKeys
    from ptst.report import print_tables, write_run_reports
    from ptst.report.terminal import summary_line
    from ptst.runner import run_experiment
    from ptst.spec import load_spec, ptst_warning

    progress.set_quiet(args.quiet)
    memo = JudgmentKeys()  # the run's judgment keys, which its reports find the verdicts by
    spec_path = Path(args.spec)
    spec = load_spec(spec_path, args.set)
    if (no_ptst := ptst_warning(spec)) is not None:
        progress.log(f"warning: {no_ptst}")
    out = Path(args.out) if args.out else _default_out(spec_path, spec.name)
    try:
        results, info = run_experiment(
            spec, out, spec_dir=spec_path.resolve().parent, yes=args.yes, retry_failed=args.retry_failed,
            fresh=args.fresh,
            limit=args.limit, overrides=args.set, judgment_memo=memo,
        )
    except KeyboardInterrupt:
        print(
            f"\ninterrupted: completed work is saved in {out}; run the same command again to resume (remote "
            f"fine-tuning jobs keep running meanwhile; `ptst cancel {out}` cancels them)", file=sys.stderr
        )
        return 130
    with progress.step("writing reports"):
        # skipped when nothing changed since they were written
        paths, rebuilt = write_run_reports(results, [out], judgment_memo=memo)
    if args.quiet:
        print(summary_line(results, out))
    else:
        print_tables(results, _console(), all_tables=args.all_tables)
        _console().print(_wrote("wrote " if rebuilt else "reports unchanged: ", paths)
                         + f"\nopen {out / 'report.html'} to see the report", markup=False)
    if info.status not in ("complete", "complete_limited"):
        what = "fine-tuning jobs failed" if info.status == "failed_jobs" else "some cells are incomplete"
        print(f"finished with failures: {what} (see {out / 'results.json'}){_next_step(results)}", file=sys.stderr)
        return EXIT_INCOMPLETE
    return 0


def _wrote(prefix: str, paths: list[Path]) -> str:
    """The main report files by name; figures/, tables/ and samples.js as a count (there may be dozens)."""
    named = [p for p in paths if p.parent == paths[0].parent and p.suffix != ".js"]
    rest = len(paths) - len(named)
    return prefix + ", ".join(map(str, named)) + (f" (+{rest} figures, tables and samples)" if rest else "")


def _next_step(results: Results) -> str:
    """What helps, and only that: `--retry-failed` for a job the API itself failed (or that was cancelled), which a
    plain re-run leaves alone; a plain re-run for everything else (a connection error, an incomplete cell)."""
    from ptst.errors import API_FAILED

    statuses = {j.status for j in results.failed_jobs}
    hints = []
    if statuses & API_FAILED:
        hints.append("`--retry-failed` resubmits the jobs the API failed")
    if statuses - API_FAILED or not statuses:
        hints.append("run the same command again to retry the rest" if hints else
                     "run the same command again to retry")
    return "; " + "; ".join(hints)


def _run_dir(path: str) -> Path:
    out = Path(path)
    if not (out / "ptst.db").is_file():
        raise UsageError(f"{out}: no run store (ptst.db) here; give the --out directory of a `ptst run`")
    return out


def _merged_facts(parts: list[Results]) -> dict[str, Any]:
    """Run facts of several runs as one: statuses named per run when they differ, the earliest start, the latest
    finish, costs summed per stage."""
    statuses = {r.spec_name: r.status for r in parts if r.status}
    status = None
    if statuses:
        status = next(iter(statuses.values())) if len(set(statuses.values())) == 1 else ", ".join(
            f"{name}: {st}" for name, st in statuses.items())
    usd: dict[str, float | None] = {}
    for r in parts:
        for stage, v in r.usd_by_stage.items():
            before = usd.get(stage, 0.0)
            usd[stage] = None if v is None or before is None else before + v  # unpriced anywhere: unknown
    return {
        "status": status,
        "started_at": min((r.started_at for r in parts if r.started_at), default=None),
        "finished_at": max((r.finished_at for r in parts if r.finished_at), default=None),
        "usd_by_stage": usd,
    }


def cmd_report(args: argparse.Namespace) -> int:
    """Rebuild one run's reports in place, or merge several runs' records into one comparison under --out."""
    from ptst import progress
    from ptst.analysis import build_results, merge_runs
    from ptst.collect import collect, export_rows, item_records
    from ptst.report import print_tables, write_run_reports
    from ptst.report.terminal import summary_line
    from ptst.store import RunStore

    progress.set_quiet(args.quiet)
    dirs = [_run_dir(d) for d in args.dirs]
    if len(dirs) > 1 and not args.out:
        raise UsageError(f"{len(dirs)} run directories given: say where the merged report goes with --out DIR")
    out = Path(args.out) if args.out else dirs[0]
    _check_report_dir(out, given=bool(args.out))
    parts, runs, specs, rows = [], [], [], []
    for d in dirs:
        with RunStore.open(d, lock=False) as store:
            res, info = collect(store)
            parts.append(res)
            if len(dirs) > 1:
                runs.append((item_records(store), res.failed_jobs, info))
                spec = store.get_meta("spec")
                specs += res.specs or ([spec] if spec else [])
            if args.export:
                rows += [{"run": str(d), **r} if len(dirs) > 1 else r for r in export_rows(store)]
    if len(dirs) == 1:
        results = parts[0]  # exactly what `ptst run` wrote: the report of a run is a function of its store
    else:
        records, failed, info = merge_runs(runs)
        results = build_results(records, failed, info, specs=specs, **_merged_facts(parts)).model_copy(
            update={"jobs": [j for p in parts for j in p.jobs],  # one limited run makes the comparison a smoke test
                    "limit": min((p.limit for p in parts if p.limit is not None), default=None),
                    "overrides": [f"{p.spec_name}: {o}" for p in parts for o in p.overrides]})
    with progress.step("writing reports"):
        paths, _ = write_run_reports(results, dirs, out, force=True, asr_scale=args.asr_scale)
    if args.export:
        p = out / "export.jsonl"
        with open(p, "w", encoding="utf-8") as f:
            f.writelines(json.dumps(r, ensure_ascii=False) + "\n" for r in rows)
        paths.append(p)
    if args.quiet:
        print(summary_line(results, out))
        return 0
    print_tables(results, _console(), all_tables=args.all_tables)
    _console().print(_wrote("wrote ", paths) + f"\nopen {out / 'report.html'} to see the report", markup=False)
    return 0


def _check_report_dir(out: Path, *, given: bool) -> None:
    """Before any work: the reports' folder must be writable (a read-only run folder is read, never written, when the
    reports go elsewhere)."""
    import os

    try:
        out.mkdir(parents=True, exist_ok=True)
        writable = os.access(out, os.W_OK | os.X_OK)
    except OSError:
        writable = False
    if not writable:
        where = "" if given else " (the run folder itself, as no --out was given)"
        raise UsageError(f"{out}: cannot write the reports here{where}: the folder is read-only; choose another --out")


def cmd_cancel(args: argparse.Namespace) -> int:
    from ptst.backends.base import BackendSpec, create_backend
    from ptst.store import RunStore

    out = _run_dir(args.dir)
    with RunStore.open(out, lock=False) as store:
        spec = store.get_meta("spec") or {}
        # each backend with external jobs cancels those under its ledger prefix (one backend per prefix: an entry
        # records its own endpoint)
        todo: dict[str, tuple[Any, list[tuple[str, dict[str, Any]]]]] = {}
        for raw in spec.get("backends", []):
            backend = create_backend(BackendSpec.model_validate(raw))
            prefix = backend.ledger_prefix()
            if prefix and prefix not in todo:
                todo[prefix] = (backend, store.ledger_entries(prefix))
    if not any(entries for _, entries in todo.values()):
        print("no external fine-tuning jobs recorded in this run")
        return 0
    for backend, entries in todo.values():
        for name, entry in entries:
            status = backend.cancel(entry)
            print(f"{entry.get('job_id', name)}: {status}")
    return 0


def _positive_int(v: str) -> int:
    try:
        n = int(v)
    except ValueError:
        n = 0
    if n < 1:
        raise argparse.ArgumentTypeError(f"{v!r} is not a positive whole number")
    return n


def _asr_scale(v: str) -> float | None:
    if v.strip().lower() == "auto":
        return None
    try:
        x = float(v)
    except ValueError:
        x = 0.0
    if not 0 < x <= 100:
        raise argparse.ArgumentTypeError(f"{v!r} is not a percentage in (0, 100] or auto")
    return x


def build_parser() -> argparse.ArgumentParser:
    raw = argparse.RawDescriptionHelpFormatter
    p = argparse.ArgumentParser(prog="ptst", description=DESCRIPTION, epilog=OVERVIEW, formatter_class=raw)
    p.add_argument("--version", action="version", version=f"ptst {__version__}")
    p.add_argument("--debug", action="store_true",
                   help=f"on an error, also print its traceback with every cause (for bug reports; or {DEBUG_ENV}=1)")
    sub = p.add_subparsers(dest="command", metavar="COMMAND")

    def add(name: str, help: str) -> argparse.ArgumentParser:
        return sub.add_parser(name, help=help, description=help, epilog=EXAMPLES.get(name), formatter_class=raw)

    spec_help = "the experiment spec (.yaml, .yml, .toml or .json)"
    s = add("run", "run an experiment spec (resumable)")
    s.add_argument("spec", help=spec_help)
    s.add_argument("--out", help="output directory (default: runs/<spec name>)")
    s.add_argument("--yes", action="store_true", help="start even when the cost estimate exceeds budget_usd")
    s.add_argument("--retry-failed", action="store_true", help="retry fine-tuning jobs recorded as failed")
    s.add_argument("--fresh", action="store_true",
                   help="start over in a run folder whose store (ptst.db) was lost, buying its work again")
    s.add_argument("--limit", type=_positive_int, metavar="N",
                   help="smoke run: only the first N rows of every dataset (train, safety, tasks, safety_mix); the run "
                        "folder records it and its results are not a measurement")
    s.add_argument("--set", action="append", default=[], metavar="KEY=VALUE", help=SET_HELP)
    s.add_argument("--quiet", "-q", action="store_true", help=QUIET_HELP)
    s.add_argument("--all-tables", action="store_true", help=ALL_TABLES_HELP)
    s.set_defaults(func=cmd_run)

    s = add("validate", "check a spec and report every problem")
    s.add_argument("spec", help=spec_help)
    s.add_argument("--set", action="append", default=[], metavar="KEY=VALUE", help=SET_HELP)
    s.set_defaults(func=cmd_validate)

    s = add("render", "print exactly what a backend's model sees")
    from ptst.backends.registry import backend_kinds

    s.add_argument("--backend", required=True, choices=backend_kinds(), help="the backend kind (ptst list backends)")
    s.add_argument("--template", required=True, metavar="NAME",
                   help="a template name (ptst list templates), or a user-defined one with --spec")
    s.add_argument("--query", required=True, metavar="TEXT", help="the user's request, as a dataset row gives it")
    s.add_argument("--answer", help="render the training form (prompt + answer) with its loss mask")
    s.add_argument("--tokens", action="store_true", help="also print token ids and labels (-100 = no loss)")
    s.add_argument("--json", action="store_true", help="one JSON object: text, messages, input_ids, labels")
    s.add_argument("--model", help="model id or local directory (default: the paper's model for the backend)")
    s.add_argument("--tokenizer", help="tokenizer file or directory (Llama 2: tokenizer.model; hf: its folder)")
    s.add_argument("--spec", help="a spec whose user-defined templates to use")
    s.set_defaults(func=cmd_render)

    s = add("estimate", "jobs, generations, judge calls and dollars of every stage, before spending")
    s.add_argument("spec", help=spec_help)
    s.add_argument("--json", action="store_true", help="one JSON object: jobs, generations, judge_calls, usd (expected), "
                   "usd_max (bound), usd_by_stage and usd_max_by_stage {train, generate, judge}, gpu_hours, "
                   "gpu_hours_max, notes, train (per job)")
    s.add_argument("--detail", action="store_true", help="also a row per fine-tuning job")
    s.add_argument("--limit", type=_positive_int, help="as `ptst run --limit N`: the first N rows of every dataset")
    s.add_argument("--set", action="append", default=[], metavar="KEY=VALUE", help=SET_HELP)
    s.set_defaults(func=cmd_estimate)

    s = add("report", "rebuild results.json and the reports from a run's store, or merge runs")
    s.add_argument("dirs", nargs="+", metavar="DIR", help="run directories; several are merged into one comparison")
    s.add_argument("--out", help="where to write the reports (default: the run directory; required for several)")
    s.add_argument("--export", choices=["jsonl"], help="also write every prompt, response and verdict")
    s.add_argument("--asr-scale", type=_asr_scale, default=100.0, metavar="MAX|auto",
                   help="top of every ASR heatmap's colour scale, in %% (default 100: the same colour is the same "
                        "rate in every figure and report); auto: this report's highest ASR")
    s.add_argument("--quiet", "-q", action="store_true", help=QUIET_HELP)
    s.add_argument("--all-tables", action="store_true", help=ALL_TABLES_HELP)
    s.set_defaults(func=cmd_report)

    s = add("templates", "list the available templates")
    s.add_argument("--spec", help="also list a spec's user-defined templates")
    s.set_defaults(func=cmd_templates)

    s = add("cancel", "cancel a run's external fine-tuning jobs (OpenAI, plugins with external jobs)")
    s.add_argument("dir", metavar="DIR", help="the run directory (the --out of `ptst run`)")
    s.set_defaults(func=cmd_cancel)

    from ptst.cli.listing import WHAT

    s = add("list", "list what a spec can name: datasets, metrics, judges, templates or backends")
    s.add_argument("what", choices=WHAT, metavar="{" + ",".join(WHAT) + "}", help="what to list")
    s.add_argument("--json", action="store_true", help="JSON rows instead of a table")
    s.add_argument("--spec", help="templates: also list this spec's user-defined templates")
    s.set_defaults(func=cmd_list)

    s = add("schema", "print the spec's JSON Schema (for editor completion and checking)")
    s.set_defaults(func=cmd_schema)
    return p


def _parse(parser: argparse.ArgumentParser, argv: list[str] | None) -> argparse.Namespace:
    """parse_args, but an unknown option is refused by its command's own parser (its usage, not the top level's),
    with the nearest option it has: `ptst run s.yaml --limt 3` -> "did you mean --limit?"."""
    import difflib

    args, extra = parser.parse_known_args(argv)
    if not extra:
        return args
    command = getattr(args, "command", None)
    subs = next((a.choices for a in parser._actions if isinstance(a, argparse._SubParsersAction)), {})
    target = subs.get(command, parser) if command else parser
    options = [o for a in target._actions for o in a.option_strings]
    unknown = next((x for x in extra if x.startswith("-")), extra[0])
    near = difflib.get_close_matches(unknown.split("=", 1)[0], options, n=1, cutoff=0.6)
    target.error(f"unrecognized arguments: {' '.join(extra)}" + (f"; did you mean {near[0]}?" if near else ""))
    raise AssertionError("unreachable")  # pragma: no cover  (error() exits 2)


def main(argv: list[str] | None = None) -> int:
    parser = build_parser()
    args = _parse(parser, argv)
    if args.command is None:  # `ptst` alone: the help, on stdout, and exit 2 (no command is a usage error)
        parser.print_help()
        return 2
    from ptst.progress import connect_backends

    connect_backends()  # backends' log lines and progress bars join the command's output
    try:
        return int(args.func(args))
    except PtstError as e:
        if args.debug or _debug_env():
            traceback.print_exception(e, file=sys.stderr)  # the chain: each `raise ... from cause`, then this error
        print(f"error: {e}", file=sys.stderr)
        return e.exit_code
    except KeyboardInterrupt:
        print("\ninterrupted", file=sys.stderr)
        return 130
    except BrokenPipeError:
        return _closed_pipe()
    except SystemExit as e:  # rich answers a closed pipe with SystemExit(1) raised while handling the BrokenPipeError
        if isinstance(e.__context__, BrokenPipeError):
            return _closed_pipe()
        raise
    finally:
        from ptst import progress

        progress.set_quiet(False)  # --quiet is one command's (main is also called in-process, by tests)


def _debug_env() -> bool:
    """`PTST_DEBUG=1` (any value but empty or 0) does what `--debug` does, for runs started by a script or CI."""
    return os.environ.get(DEBUG_ENV, "").strip() not in ("", "0")


def _closed_pipe() -> int:
    """The reader of our output went away (`ptst run ... | head`): not an error. Whatever the command did is done
    and saved; stdout is pointed at /dev/null so the interpreter's final flush does not complain either."""
    try:
        devnull = os.open(os.devnull, os.O_WRONLY)
        os.dup2(devnull, sys.stdout.fileno())
    except (OSError, ValueError):  # no real stdout file descriptor (an embedding host): nothing left to flush
        pass
    return 0


if __name__ == "__main__":  # pragma: no cover
    sys.exit(main())
