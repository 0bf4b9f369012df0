"""One registry type for every name a spec can use: backends, judges, task metrics, datasets and templates.

A spec names things (`kind: openai`, `judge: {kind: rubric}`, `metric: exact_match`, `safety: [advbench]`,
`templates: [chat:llama]`), and each name is looked up in a `Registry`. One type means one behaviour everywhere: the
same one-line error with a did-you-mean for a typo, the same listing for `ptst list`, and the same plug-in mechanism.
The model is lm-evaluation-harness's single generic registry:

- Entries are lazy: a "module:object" string is imported on first use, so listing names or validating a spec never
  imports torch or openai. Cheap values (a metric, a parsed data file's rows) may be registered as objects.
- A registry with an entry-point `group` also holds the entries other packages declare, so a package adds a backend,
  judge or metric without editing ptst:

      [project.entry-points."ptst.judges"]
      llamaguard3 = "my_pkg.judge:Judge"

  A built-in name wins over a plugin of the same name (a plugin cannot silently change what `rubric` means).
- A registry may be filled from a data file on first use (`load`): datasets and templates are resources, not code.

A registry is a mapping (name -> loaded value), so code reads it like the dicts it replaced; assigning a name
registers an object (tests and embedding programs use this).
"""

from __future__ import annotations

import difflib
import importlib
import threading
from collections.abc import Callable, Iterable, Iterator, MutableMapping
from dataclasses import dataclass
from importlib.metadata import entry_points
from typing import Any, Generic, TypeVar, cast

T = TypeVar("T")


def did_you_mean(name: str, known: Iterable[str], listing: str | None = None) -> str:
    """The tail of an unknown-name message: the closest known name, else the list of names (or, for a long one, the
    command that lists them)."""
    known = list(known)
    close = difflib.get_close_matches(name, known, n=1, cutoff=0.6)
    if close:
        return f" — did you mean {close[0]!r}?"
    if listing is not None and len(known) > 12:
        return f" ({len(known)} known: see `{listing}`)"
    return f" (known: {', '.join(known)})"


class UnknownName(KeyError, ValueError):
    """A name no registry entry has. A KeyError for mapping code, a ValueError for pydantic validators (which turn
    it into the spec problem `field: unknown ...`)."""

    def __init__(self, what: str, name: str, known: Iterable[str], listing: str | None = None, key: str | None = None):
        self.what, self.name, self.key = what, name, key or name  # key: the name as the registry compares it
        self.message = f"unknown {what} {name!r}{did_you_mean(self.key, known, listing)}"
        super().__init__(self.message)

    def __str__(self) -> str:
        return self.message


class PluginError(ValueError):
    """A plugin's entry point names something that cannot be imported or is not what its group takes: the user's
    environment is at fault, so it is a one-line error naming the plugin's distribution and target."""


@dataclass(frozen=True)
class Entry:
    """One registered name: where its value comes from, and the line `ptst list` shows for it."""

    name: str
    target: str = ""  # "module:object" for a lazy entry; "" for an object registered as it is
    note: str = ""  # one line for `ptst list`; empty: the value's own description or docstring
    dist: str | None = None  # the distribution that declared a plugin; None for a built-in

    @property
    def source(self) -> str:
        return "built-in" if self.dist is None else f"plugin ({self.dist})"


class Registry(MutableMapping[str, T], Generic[T]):
    """Names -> values of one kind, built-in entries first (in registration order), then plugins by name.

    `what` names the kind in messages ("judge kind", "task metric"); `group` is the entry-point group plugins use;
    `check` tells a loaded value is of the right kind (`expects` says what that is, for the error); `default_attr`
    is the object taken from a target that names only a module; `normalize` maps a written name to its key (dataset
    names are case-insensitive); `load` fills the registry from a data file on first use; `listing` is the command
    an unknown-name message points to when the names are too many to list.
    """

    def __init__(
        self,
        what: str,
        *,
        group: str | None = None,
        check: Callable[[object], bool] | None = None,
        expects: str = "",
        default_attr: str | None = None,
        normalize: Callable[[str], str] | None = None,
        load: Callable[[], Iterable[tuple[str, T]]] | None = None,
        listing: str | None = None,
    ):
        self.what = what
        self.listing = listing
        self.group = group
        self._check = check
        self._expects = expects
        self._default_attr = default_attr
        self._normalize = normalize or (lambda name: name)
        self._load = load
        self._entries: dict[str, Entry] = {}
        self._values: dict[str, T] = {}
        self._plugins: dict[str, Entry] | None = None
        self._lock = threading.RLock()  # the first use may come from several worker threads at once

    # -- registering ---------------------------------------------------------------------------------------------

    def add(self, name: str, target: str | T, note: str = "") -> None:
        """Register `name`: a "module:object" string is imported when first used; anything else is the value."""
        key = self._normalize(name)
        self._values.pop(key, None)
        if self._plugins is not None:
            self._plugins.pop(key, None)  # a built-in name wins over a plugin, even one found before it was added
        if isinstance(target, str):
            self._entries[key] = Entry(key, target, note)
        else:
            self._entries[key] = Entry(key, "", note)
            self._values[key] = target

    def __setitem__(self, name: str, value: T) -> None:
        self._filled()
        self.add(name, value, self._entries[k].note if (k := self._normalize(name)) in self._entries else "")

    def __delitem__(self, name: str) -> None:
        key = self._normalize(name)
        self._filled()
        if key not in self._entries:
            raise self.unknown(name)
        del self._entries[key]
        self._values.pop(key, None)

    def cache_clear(self) -> None:
        """Forget the plugins found so far (and their loaded values): the next use reads the entry points again."""
        for key in self._plugins or {}:
            self._values.pop(key, None)
        self._plugins = None

    # -- reading -------------------------------------------------------------------------------------------------

    def _filled(self) -> dict[str, Entry]:
        if self._load is not None:
            with self._lock:
                if self._load is not None:
                    for name, value in self._load():
                        self.add(name, value)
                    self._load = None
        return self._entries

    def _plugin_entries(self) -> dict[str, Entry]:
        plugins = self._plugins
        if plugins is None:
            with self._lock:
                found: dict[str, Entry] = {}
                if self.group is not None:
                    builtin = self._filled()
                    for ep in entry_points(group=self.group):
                        key = self._normalize(ep.name)
                        if key not in builtin:
                            found[key] = Entry(key, ep.value, dist=ep.dist.name if ep.dist is not None else "?")
                self._plugins = plugins = dict(sorted(found.items()))
        return plugins

    def entry(self, name: str) -> Entry:
        """The entry for `name` (nothing imported); UnknownName with a did-you-mean when there is none."""
        key = self._normalize(name)
        found = self._filled().get(key) or self._plugin_entries().get(key)
        if found is None:
            raise self.unknown(name)
        return found

    def entries(self) -> list[Entry]:
        return [*self._filled().values(), *self._plugin_entries().values()]

    def names(self) -> list[str]:
        return [e.name for e in self.entries()]

    def unknown(self, name: str) -> UnknownName:
        return UnknownName(self.what, name, self.names(), self.listing, key=self._normalize(name))

    def __getitem__(self, name: str) -> T:
        """The value for `name`, imported on first use."""
        e = self.entry(name)
        if e.name not in self._values:
            self._values[e.name] = self._import(e)
        return self._values[e.name]

    def _import(self, e: Entry) -> T:
        module, _, attr = e.target.partition(":")
        attr = attr or self._default_attr or ""
        try:
            value: Any = importlib.import_module(module)
            for part in filter(None, attr.split(".")):
                value = getattr(value, part)
        except (ImportError, AttributeError) as err:
            if e.dist is None:
                raise  # a built-in that does not import is a bug in ptst, not a user error
            raise PluginError(f"{self.what} {e.name!r} from plugin {e.dist} ({self.group}: {e.target}) cannot be "
                              f"loaded: {type(err).__name__}: {err}") from err
        if self._check is not None and not self._check(value):
            origin = f"plugin {e.dist}, " if e.dist is not None else ""
            raise PluginError(f"{self.what} {e.name!r} ({origin}{e.target}) is not {self._expects or 'usable'}")
        return cast(T, value)

    def __contains__(self, name: object) -> bool:
        if not isinstance(name, str):
            return False
        key = self._normalize(name)
        return key in self._filled() or key in self._plugin_entries()

    def __iter__(self) -> Iterator[str]:
        return iter(self.names())

    def __len__(self) -> int:
        return len(self.entries())

    def describe(self, name: str) -> str:
        """The line `ptst list` shows: the registered note, else the value's `description` or the first line of its
        (or its module's) docstring. A plugin that cannot be loaded says why instead of breaking the listing."""
        e = self.entry(name)
        if e.note:
            return e.note
        try:
            value: Any = self[e.name]
        except PluginError as err:
            return str(err)
        text = getattr(value, "description", None)
        if not isinstance(text, str) or not text:
            module = importlib.import_module(getattr(value, "__module__", None) or e.target.partition(":")[0])
            text = getattr(value, "__doc__", None) if isinstance(value, type) else None
            text = text or module.__doc__ or ""
        lines = text.strip().splitlines()
        return lines[0].strip() if lines else ""

    def __repr__(self) -> str:
        return f"Registry({self.what!r}: {', '.join(self.names())})"
