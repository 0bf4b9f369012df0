"""The `ptst` command, grouped by what each part does: `app` wires the parser and the run/report/validate/cancel
commands, `estimate` and `inspect` hold the commands that read no run, `help` their texts, `listing` what
`ptst list` and `ptst schema` print. `main` and `build_parser` are the public entry points."""

from ptst.cli.app import _merged_facts, build_parser, main

__all__ = ["_merged_facts", "build_parser", "main"]
