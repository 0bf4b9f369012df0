"""User-facing errors: each carries a one-line message that names what is wrong and what to do.

The CLI prints `error: <message>` and exits with `exit_code`; it never shows a traceback for these. Exit codes:
0 complete, 2 user error (spec, data, paths, credentials, budget, busy or unreadable run folder), 3 finished with
failed jobs or cells (`RunIncomplete`, results written), 130 interrupted, 1 only for bugs.
"""

from __future__ import annotations

from collections.abc import Iterable


def printable(text: str) -> str:
    """`text` with any lone surrogate (a `\\udfff` JSON escape that pairs with nothing) written as its escape: such a
    character cannot be encoded, so printing a message quoting it would crash instead of telling the user."""
    try:
        text.encode("utf-8")
    except UnicodeEncodeError:
        return text.encode("utf-8", "backslashreplace").decode("utf-8")
    return text


def surrogate_problem(text: str) -> str | None:
    """Why a text cannot be used (None when it can): a lone surrogate, which no file, hash or API request can carry."""
    try:
        text.encode("utf-8")  # C speed; UTF-8 refuses exactly the surrogates
    except UnicodeEncodeError as e:
        return (f"holds a lone surrogate ({printable(text[e.start])} at character {e.start + 1}), which no file or API "
                "can carry; a \\uD800-\\uDFFF escape must be half of a pair — remove it or write the character itself")
    return None


def redact(text: str, secrets: Iterable[str | None]) -> str:
    """`text` with every non-empty secret (an API key) replaced by `***`, before it reaches a log, an exception or
    the store."""
    for secret in secrets:
        if secret:
            text = text.replace(secret, "***")
    return text
def first_line(e: BaseException, limit: int = 160) -> str:
    """What a one-line user error quotes of the exception it wraps: the first line of its message (its type's name
    when it has none), cut to `limit` characters. The whole exception stays its cause, printed by `--debug`."""
    lines = str(e).strip().splitlines()
    text = lines[0] if lines else type(e).__name__
    return text if len(text) <= limit else text[: limit - 3] + "..."


class PtstError(Exception):
    exit_code = 1

    def __init__(self, message: str):
        message = printable(message)
        super().__init__(message)
        self.message = message

    def __str__(self) -> str:
        return self.message


class SpecError(PtstError):
    """The spec is invalid; `problems` lists every `path: message` found."""

    exit_code = 2

    def __init__(self, source: str, problems: list[str]):
        self.source = source
        self.problems = [printable(p) for p in problems]
        head = f"{source}: {len(problems)} problem{'s' if len(problems) != 1 else ''}"
        super().__init__(head + "".join(f"\n  {p}" for p in problems))


class UsageError(PtstError):
    """A command-line argument is unusable."""

    exit_code = 2


class DataError(PtstError):
    """A data file or row is unusable; the message names the file and line."""

    exit_code = 2


class CredentialsError(PtstError):
    exit_code = 2


class MissingExtra(PtstError):
    exit_code = 2

    def __init__(self, what: str, extra: str):
        super().__init__(f"{what} needs the '{extra}' extra: pip install 'ptst[{extra}]'")


class BudgetExceeded(PtstError):
    """The cost estimate exceeds budget_usd and --yes was not given: nothing was started."""

    exit_code = 2


class RunLocked(PtstError):
    """Another process holds the run folder; the message names its pid."""

    exit_code = 2


class StoreError(PtstError):
    """The run store cannot be used (unreadable, corrupt, another key schema, disk full); the message says what
    can be recovered and how to start over."""

    exit_code = 2


EXIT_INCOMPLETE = 3  # the run finished, results are written, but some jobs or cells failed


class BackendError(PtstError):
    """A backend could not do its work (API fault after retries, model cannot be loaded...)."""


# A job the vendor's API itself ended without a model (JobFailed): a plain re-run leaves it alone (it would fail the
# same way, at a price), `--retry-failed` resubmits it. Any other failed job ("error": a connection that broke, a
# model that could not load) is retried by a plain re-run.
API_FAILED = frozenset({"failed", "cancelled"})


class JobFailed(BackendError):
    """A fine-tuning job ended without a model. The runner records it for the cell and goes on with the others."""

    def __init__(self, status: str, code: str | None, message: str):
        self.status = status
        self.code = code
        super().__init__(f"fine-tuning job {status}" + (f" [{code}]" if code else "") + f": {message}")


def require(module: str, what: str, extra: str):
    """Import an optional dependency, or raise the one-line hint naming the extra to install."""
    import importlib

    try:
        return importlib.import_module(module)
    except ImportError as e:  # pragma: no cover - exercised only where the extra is missing
        raise MissingExtra(what, extra) from e
