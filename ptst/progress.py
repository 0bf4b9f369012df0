"""Progress display for long steps (fine-tuning, generation, judging), on stderr via rich.

One shared console keeps bars from different steps from fighting over the terminal; in a pipe or CI it degrades to
nothing, so logs stay clean.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator
from contextlib import contextmanager
from typing import Any

from rich.console import Console
from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn, TimeRemainingColumn

console = Console(stderr=True, highlight=False)


def log(message: str) -> None:
    console.print(message, markup=False, soft_wrap=True)


@contextmanager
def progress_bar(description: str, total: int | None) -> Iterator[Callable[..., None]]:
    """Yield `advance(n=1, info="...")`; `info` is shown after the bar (loss, tokens/s, retries...)."""
    bar = Progress(
        TextColumn("{task.description}"),
        BarColumn(),
        MofNCompleteColumn(),
        TimeElapsedColumn(),
        TimeRemainingColumn(),
        TextColumn("{task.fields[info]}"),
        console=console,
        transient=False,
        disable=not console.is_terminal,
    )
    with bar:
        task = bar.add_task(description, total=total, info="")

        def advance(n: int = 1, info: str | None = None, **_: Any) -> None:
            bar.update(task, advance=n, **({"info": info} if info is not None else {}))

        yield advance
