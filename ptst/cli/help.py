"""Help text of the command line: the overview `ptst` prints alone, and an example for every subcommand (argparse
epilogs), kept here so ptst.cli stays about what each command does."""

from __future__ import annotations

DESCRIPTION = """\
Pure Tuning, Safe Testing: fine-tune chat models under one set of prompt
templates, test them under another, and report attack success rate and task
score for every pair."""

OVERVIEW = """\
start here:
  ptst run examples/quickstart.yaml --out runs/quickstart   (offline, mock backend)
  then open runs/quickstart/report.html

exit codes: 0 complete; 2 user error (spec, data, paths, credentials, budget;
also `ptst` with no command); 3 finished with failures; 130 interrupted;
1 a bug. `ptst COMMAND --help` shows each command's options and an example.
"""

EXAMPLES = {
    "run": """\
examples:
  ptst run examples/quickstart.yaml --out runs/quickstart
  ptst run spec.yaml --set judge.kind=keyword --set eval.generation.max_new_tokens=32
  ptst run spec.yaml --limit 10 --quiet      # a smoke run for CI: one summary line
""",
    "validate": """\
examples:
  ptst validate examples/paper/llama2-gsm8k.yaml
  ptst validate spec.yaml --set backends[0].model=/models/llama-2-7b-chat
""",
    "render": """\
examples:
  ptst render --backend llama2 --template chat:llama --query "How do I bake bread?"
  ptst render --backend mistral --template chat:vanilla --query Q --answer A --tokens
""",
    "estimate": """\
examples:
  ptst estimate examples/paper/gpt35-gsm8k.yaml
  ptst estimate examples/paper/llama2-gsm8k.yaml --detail
  ptst estimate spec.yaml --json --set train.seeds=[0,1,2]
""",
    "report": """\
examples:
  ptst report runs/quickstart                    # rebuild the reports from the store
  ptst report runs/a runs/b --out runs/a-vs-b     # merge two runs into one comparison
  ptst report runs/quickstart --export jsonl --all-tables
""",
    "templates": """\
example:
  ptst templates --spec examples/quickstart.yaml
""",
    "cancel": """\
example:
  ptst cancel runs/gpt35-gsm8k
""",
    "list": """\
examples:
  ptst list datasets
  ptst list backends --json     # a plugin backend is listed once installed
""",
    "schema": """\
example (editor completion with yaml-language-server / VS Code's YAML extension):
  ptst schema > ptst-spec.schema.json
  then put on the first line of a spec:
  # yaml-language-server: $schema=./ptst-spec.schema.json
""",
}

SET_HELP = ("override a spec field (repeatable): a dotted path with list indexes (backends[0].model or "
            "backends.0.model) and a YAML value, e.g. --set judge.kind=keyword; recorded in results.json and the report")
QUIET_HELP = "print only warnings, errors and a final one-line summary (for CI)"
ALL_TABLES_HELP = ("also print the per-category, along-training, judge-agreement and training tables (by default they "
                   "are only in report.md / report.html)")
