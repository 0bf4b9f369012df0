"""Preflight: everything `ptst run` would find wrong before it spends anything, found without spending anything.

`ptst validate` and the runner both call `preflight(spec, spec_dir)`. It checks what can be checked offline and
cheaply: local dataset files exist and the first rows have the fields the spec names; registry datasets have a
local copy or a way to reach the hub; local model folders exist; each backend's own `preflight()` (a tokenizer of
the right family, an API key) and each judge's (`Judge.preflight`: credentials, endpoint, a local model folder). What needs the network (a hub id, a
model on an API) is listed as *unchecked* rather than guessed at: an error there would be a lie in one direction,
silence a lie in the other.

The result is a `Report` of three lists of one-line messages, each starting with the spec field it concerns.
"""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path

from pydantic import BaseModel, ConfigDict

from ptst.backends.base import BackendSpec, FineTuneBackend, create_backend
from ptst.data import DatasetRef
from ptst.data.loaders import preview
from ptst.data.registry import DatasetInfo
from ptst.errors import PtstError, printable
from ptst.judge.base import Judge
from ptst.spec import Spec


class Report(BaseModel):
    """What preflight found. `errors` stop a run (exit 2); `warnings` do not; `unchecked` could not be verified
    offline and are the user's to confirm."""

    model_config = ConfigDict(frozen=True, extra="forbid")
    errors: tuple[str, ...] = ()
    warnings: tuple[str, ...] = ()
    unchecked: tuple[str, ...] = ()

    @property
    def ok(self) -> bool:
        return not self.errors

    def raise_for_errors(self, source: str) -> None:
        """For the runner: stop with every error in one PreflightError (exit 2) before anything is spent."""
        if self.errors:
            raise PreflightError(source, list(self.errors))


class PreflightError(PtstError):
    """The spec is valid but cannot run as it stands (a missing file, a missing field, an unset key)."""

    exit_code = 2

    def __init__(self, source: str, problems: list[str]):
        self.source = source
        self.problems = [printable(p) for p in problems]
        if len(problems) == 1:  # one problem: one line, as every user error
            super().__init__(f"{source}: {problems[0]}")
            return
        head = f"{source}: {len(problems)} problems found before anything was spent"
        super().__init__(head + "".join(f"\n  {p}" for p in problems))


WARNING = "warning: "  # a plug-in's preflight line that is a warning
CREDENTIALS = "credentials: "  # a plug-in's preflight line naming a missing credential


class _Findings:
    def __init__(self, spending: bool = True) -> None:
        self.spending = spending
        self.errors: list[str] = []
        self.warnings: list[str] = []
        self.unchecked: list[str] = []

    def add(self, lines: Sequence[str], field: str = "") -> None:
        """A backend's or judge's preflight lines: "warning: " ones are warnings; "credentials: " ones (a missing
        key) are errors where money would be spent and warnings where none is (estimate); the rest are errors."""
        head = f"{field}: " if field else ""
        for line in lines:
            if line.startswith(WARNING):
                self.warnings.append(head + line.removeprefix(WARNING))
            elif line.startswith(CREDENTIALS):
                (self.errors if self.spending else self.warnings).append(head + line.removeprefix(CREDENTIALS))
            else:
                self.errors.append(head + line)

    def report(self) -> Report:
        return Report(
            errors=tuple(dict.fromkeys(self.errors)),
            warnings=tuple(dict.fromkeys(self.warnings)),
            unchecked=tuple(dict.fromkeys(self.unchecked)),
        )


def preflight(spec: Spec, spec_dir: Path | None = None, *, spending: bool = True, for_run: bool = False) -> Report:
    """Check a validated spec against the machine it would run on. `spec_dir` is the spec file's folder: relative
    dataset paths and `data_dir` are relative to it, as in a run. `spending=False` (`ptst estimate`, which spends
    nothing and so needs no credentials): a missing API key is a warning, not an error. `for_run`: the runner's
    check, which also asks once whether the hub answers when a dataset must come from it (an error if not, before
    any download retries)."""
    found = _Findings(spending)
    _check_datasets(spec, spec_dir, found, for_run=for_run)
    for i, bspec in enumerate(spec.backends):
        _check_backend(i, bspec, found)
    judges = _check_judges(spec, found)
    _check_retired(spec, found, judges)
    return found.report()


# ------------------------------------------------------------------------------------------------------ datasets


def _data_dirs(spec: Spec, spec_dir: Path | None) -> list[Path]:
    if not spec.data_dir:
        return []
    d = Path(spec.data_dir).expanduser()
    return [d if d.is_absolute() or spec_dir is None else spec_dir / d]


def _resolved(ref: DatasetRef, spec_dir: Path | None) -> DatasetRef:
    if ref.path and spec_dir is not None and not Path(ref.path).expanduser().is_absolute():
        return ref.model_copy(update={"path": str(spec_dir / ref.path)})
    return ref


def _dataset_roles(spec: Spec) -> list[tuple[str, DatasetRef, bool]]:
    """(spec field, dataset, whether every row needs an answer), in the order a run loads them."""
    roles: list[tuple[str, DatasetRef, bool]] = []
    if spec.train is not None:
        roles.append(("train.dataset", spec.train.dataset, True))
        roles += [(f"train.extra[{i}].dataset", x.dataset, True) for i, x in enumerate(spec.train.extra)]
        several = isinstance(spec.train.safety_mix, list)
        for i, mix in enumerate(spec.train.mixes):
            if mix is not None:
                roles.append((f"train.safety_mix{f'[{i}]' if several else ''}.dataset", mix.dataset, True))
    roles += [(f"eval.safety[{i}]", ref, False) for i, ref in enumerate(spec.eval.safety)]
    roles += [(f"eval.tasks[{i}]", ref, True) for i, ref in enumerate(spec.eval.tasks)]
    return roles


def _check_datasets(spec: Spec, spec_dir: Path | None, found: _Findings, *, for_run: bool = False) -> None:
    from ptst.data.hub_cache import hub_reachable, is_cached, uncached_line
    from ptst.data.loaders import search_dirs
    from ptst.errors import DataError

    uncached: dict[tuple[str, str | None, str], tuple[DatasetInfo, str]] = {}
    dirs = _data_dirs(spec, spec_dir)
    for d in dirs:
        if not d.is_dir():
            found.warnings.append(f"data_dir: {d} is not a folder; registry datasets are looked for elsewhere")
    for field, ref, require_answer in _dataset_roles(spec):
        try:
            rows = preview(_resolved(ref, spec_dir), data_dirs=dirs, require_answer=require_answer)
        except DataError as e:
            found.errors.append(f"{field}: {e}")
            continue
        if rows is None:
            info = ref.info
            assert info is not None  # only registry datasets come from the hub
            where = ", ".join(str(d) for d in search_dirs(dirs)) or "no data_dir or PTST_DATA_DIR"
            source = (f"the Hugging Face hub ({info.hub_id})" if info.hub_id is not None
                      else f"its pinned download ({info.url}, sha256-checked)")
            found.unchecked.append(
                f"{field}: dataset {info.name!r} has no local copy ({where}); it will be loaded from {source}, which "
                "cannot be checked offline"
            )
            split = ref.resolved_split() or ""
            if info.hub_id is not None and not is_cached(info.hub_id):
                uncached.setdefault((info.hub_id, ref.config or info.config, split),
                                    (info.model_copy(update={"config": ref.config or info.config}), split))
    if uncached:  # one line for all of them, with the command that fetches them
        needed = list(uncached.values())
        if for_run and not hub_reachable():
            found.errors.append(uncached_line(needed, reachable=False))
        else:
            found.warnings.append(uncached_line(needed))


# ------------------------------------------------------------------------------------------------------- backends


def _looks_like_path(model: str) -> bool:
    """A local folder rather than a hub id: hub ids are `name` or `org/name`, never absolute, never `./x`, never
    with two slashes or a backslash."""
    return (
        model.startswith(("/", "./", "../", "~", ".\\", "..\\"))
        or "\\" in model
        or model.count("/") >= 2
        or model.lower().endswith(".gguf")  # a model file, never a hub id
        or Path(model).expanduser().is_dir()
    )


def _runs_locally(backend: FineTuneBackend) -> bool:
    """Whether the backend loads the model itself (from a folder or the local HF cache) rather than calling an API:
    it takes raw-text templates (which only a model run locally can), or it claims a local resource. The cheap test
    comes first: a local backend's `resource()` may import torch to look for a GPU, and validating must not."""
    return "text" in backend.modes or backend.resource() is not None


def _in_hf_cache(model: str) -> bool:
    try:
        from huggingface_hub import try_to_load_from_cache
    except ImportError:
        return False
    try:
        return isinstance(try_to_load_from_cache(model, "config.json"), str)
    except ValueError:  # HFValidationError: not a valid hub id, so it cannot be cached
        return False


def _check_backend(i: int, bspec: BackendSpec, found: _Findings) -> None:
    field = f"backends[{i}] ({bspec.name})"
    try:
        backend = create_backend(bspec)
        problems = list(backend.preflight())
    except PtstError as e:
        found.errors.append(f"{field}: {e}")
        return
    found.add(problems, field)
    problems = [p for p in problems if not p.startswith(WARNING)]
    if backend.simulated:
        found.warnings.append(f"{field}: {bspec.kind} is a simulation; every result built on it is labelled simulated")
        return
    model = bspec.model
    if _looks_like_path(model):
        p = Path(model).expanduser()
        if problems:
            return  # the backend has spoken about its model; a second line about the same folder adds nothing
        if not p.exists():
            found.errors.append(f"{field}.model: local model folder {model} not found; check the path (relative to "
                                "the spec file) or give a hub id")
        elif not p.is_dir() and p.suffix.lower() != ".gguf":  # a GGUF file is a model (its backend checked it)
            found.errors.append(f"{field}.model: {model} is a file; give the model's folder (config.json, weights)")
        return
    if _runs_locally(backend):
        if problems:
            return  # the backend has spoken about its model (a hub id it will not download and cannot find, ...)
        if not _in_hf_cache(model) and bspec.options.get("download") is True:
            found.unchecked.append(
                f"{field}.model: hub id {model!r} (weights and tokenizer) is not in the local Hugging Face cache here; "
                "it is downloaded when the run starts (download: true; needs internet), which cannot be checked offline"
            )
        elif not _in_hf_cache(model):
            how = "the backend must fetch it when the run starts"
            found.unchecked.append(
                f"{field}.model: hub id {model!r} is not in the local Hugging Face cache here; {how} (not checked "
                "offline)"
            )
    else:
        found.unchecked.append(f"{field}.model: {model!r} on the {bspec.kind} API is not checked offline")


# ---------------------------------------------------------------------------------------------------------- judge


def _check_judges(spec: Spec, found: _Findings) -> list[tuple[str, Judge]]:
    """Each judge of `judges:` through its own contract (`Judge.preflight`, `simulated`, `api_model`): the core never
    asks which kind a judge is. Each line names its judge's field (`judge`, or `judges[i]` under `judges:`). Returns
    (field, judge) for the judges that could be built (for the retired-model check)."""
    from ptst.judging import create_one

    judges = []
    for i, js in enumerate(spec.judge_specs):
        field = "judge" if spec.judges is None else f"judges[{i}]"
        try:
            judge = create_one(spec, js)  # `base_url: inherit` takes the openai backend's endpoint and key
            problems = judge.preflight()
        except PtstError as e:
            found.errors.append(f"{field}: {e}")
            continue
        judges.append((field, judge))
        found.add([_judge_field(line, field) for line in problems])
        if judge.simulated:
            found.warnings.append(f"{field}: the {judge.kind} judge is a simulation; every verdict is labelled simulated")
        model = judge.api_model()
        if model is not None:
            found.unchecked.append(f"{field}.model: {model!r} at the judge's endpoint is not checked offline")
    return judges


def _judge_field(line: str, field: str) -> str:
    """A judge's preflight line (which names its own options as `judge...`) with its field in the spec."""
    for tag in (WARNING, CREDENTIALS, ""):
        if line.startswith(tag + "judge"):
            return tag + field + line[len(tag) + len("judge"):]
    return line


# -------------------------------------------------------------------------------------------------- retired models


def _check_retired(spec: Spec, found: _Findings, judges: Sequence[tuple[str, Judge]] = (),
                   today: str | None = None) -> None:
    """A warning for every model of the spec in the dated table of retired models (`resources/retired_models.json`),
    naming the date, what stopped working and the successor: the paper's gpt-3.5-turbo-0613 takes no new
    fine-tuning jobs. A warning, not an error: the vendor, not ptst, has the last word (and a date in the future is
    an announcement)."""
    import json
    from datetime import date
    from importlib import resources

    table = json.loads(resources.files("ptst.resources").joinpath("retired_models.json").read_text(encoding="utf-8"))
    now = today or date.today().isoformat()
    used = [(f"backends[{i}] ({b.name}).model", b.model, spec.train is not None) for i, b in enumerate(spec.backends)]
    used += [(f"{field}.model", model, False) for field, model in ((f, j.api_model()) for f, j in judges)
             if model is not None]
    for field, model, trains in used:
        row = table["models"].get(model.split(":")[1] if model.startswith("ft:") else model)
        if row is None or (not trains and "inference" not in row["applies_to"]):
            continue
        stops = " and ".join({"fine_tuning": "new fine-tuning jobs", "inference": "requests"}[a]
                             for a in row["applies_to"] if a == "inference" or trains)
        when = f"was retired on {row['retired']}" if row["retired"] <= now else f"will be retired on {row['retired']}"
        found.warnings.append(f"{field}: {model} {when} ({stops} refused; announced {row['announced']}); its "
                              f"successor is {row['successor']} (source: ptst/resources/retired_models.json)")
