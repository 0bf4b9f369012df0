"""`ptst render|templates|list|schema`: the commands that show what ptst knows (exactly what a backend's model sees,
the templates, the registries, the spec's JSON Schema) without reading or writing a run. ptst.cli wires them into
its parser; each command imports what it needs when it runs, so `ptst --help` and `ptst validate` stay light.
"""

from __future__ import annotations

import argparse
import json
import sys

from ptst.errors import UsageError

DEFAULT_MODELS = {
    "llama2": "meta-llama/Llama-2-7b-chat-hf",
    "mistral": "mistralai/Mistral-7B-Instruct-v0.2",
    "openai": "gpt-3.5-turbo-0613",
    "mock": "mock-chat",
}


def cmd_templates(args: argparse.Namespace) -> int:
    from rich.table import Table

    from ptst.cli.listing import templates

    custom = {}
    if args.spec:
        from ptst.spec import load_spec

        custom = load_spec(args.spec).custom_templates
    headers, rows = templates(custom)  # the same rows as `ptst list templates`
    table = Table(*headers)
    for row in rows:
        table.add_row(*row)
    from ptst.report.terminal import terminal_console

    terminal_console().print(table)
    return 0


def cmd_render(args: argparse.Namespace) -> int:
    from ptst.backends.base import BackendSpec, create_backend
    from ptst.templates import resolve

    custom = {}
    if args.spec:
        from ptst.spec import load_spec

        custom = load_spec(args.spec).custom_templates
    options = {"tokenizer": args.tokenizer} if args.tokenizer else {}
    if not args.model and args.backend not in DEFAULT_MODELS:
        raise UsageError(f"--backend {args.backend} needs --model (a local HF-format directory or a cached hub id)")
    try:
        bspec = BackendSpec(kind=args.backend, model=args.model or DEFAULT_MODELS[args.backend], **options)
    except ValueError as e:
        raise UsageError(f"--backend {args.backend}: {e}".splitlines()[0]) from e
    backend = create_backend(bspec)
    try:
        template = resolve(args.template, custom)
    except KeyError as e:
        raise UsageError(f"--template: {e}") from None
    if not backend.supports(template):
        raise UsageError(
            f"--template {args.template}: {template.mode}-mode templates are not supported by the {args.backend} backend"
        )
    conv = template.apply(args.query, backend.family, answer=args.answer)
    if args.tokenizer:
        backend.render(conv)  # loads the given tokenizer: one of another family is an error, even for plain text
    out = sys.stdout
    text = None if (args.tokens or args.json) else backend.plain_text(conv)
    if text is not None:
        # Local backends: the text needs no tokenizer, so show it even where none is installed.
        out.write(text + "\n")
        return 0
    r = backend.render(conv)
    if args.json:
        out.write(json.dumps(r.to_json(), ensure_ascii=False) + "\n")
        return 0
    if r.messages is not None:
        out.write(json.dumps(list(r.messages), ensure_ascii=False, indent=2) + "\n")
    elif r.text is not None:
        out.write(r.text + "\n")
    if args.tokens:
        if r.input_ids is None:
            raise UsageError(f"--tokens: the {args.backend} backend renders no token ids")
        out.write("input_ids: " + " ".join(map(str, r.input_ids)) + "\n")
        if r.labels is not None:
            out.write("labels: " + " ".join(map(str, r.labels)) + "\n")
    return 0


def cmd_list(args: argparse.Namespace) -> int:
    """`ptst list WHAT`: a table (or JSON rows) read from the registries."""
    from ptst.cli.listing import LISTINGS, render, templates

    if args.what == "templates" and args.spec:
        from ptst.spec import load_spec

        headers, rows = templates(load_spec(args.spec).custom_templates)
    else:
        headers, rows = LISTINGS[args.what]()
    if args.json:
        sys.stdout.write(json.dumps([dict(zip(headers, r, strict=True)) for r in rows], indent=2) + "\n")
        return 0
    from ptst.report.terminal import terminal_console

    console = terminal_console()
    console.print("\n".join(render(headers, rows, console.width)), markup=False, highlight=False)
    return 0


def cmd_schema(args: argparse.Namespace) -> int:
    from ptst.spec_schema import spec_schema

    sys.stdout.write(json.dumps(spec_schema(), indent=2) + "\n")
    return 0
