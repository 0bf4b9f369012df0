"""The public surface for backend authors: everything a backend needs from ptst, in one import.

    from ptst.backends.api import FineTuneBackend, Conversation, Rendered, TrainJob, ModelRef, log, progress_bar

A backend (built in or a plugin) imports ptst through this module only: the contract (`FineTuneBackend`, its spec
entry and options), what crosses the boundary (`Conversation` and the frozen types), the errors the runner
understands, a retry helper, and how to talk to the user (stdlib `logging` under `ptst.backends`, and progress bars
drawn by the callback the runner passes in). A backend never imports the UI (`ptst.progress`) or the OpenAI client's
internals.

- the contract: `FineTuneBackend`, `BackendSpec`, `BackendOptions`, `OnResponse`, `Template`, `create_backend`
- what crosses the boundary: `Conversation`, `Rendered`, `TrainJob`, `ModelRef`, `Estimate`, `JobLedger`,
  `GenerationConfig`, `Hyperparameters`, `LoraSpec`, `Frozen` (the base of frozen option models)
- errors the runner understands: `PtstError` and its kinds (`UsageError`, `DataError`, `CredentialsError`: one line,
  exit 2, the user's to fix; `BackendError`: the cell fails; `JobFailed`: the job ended without a model, recorded
  while the run goes on), and `require` (an optional dependency, or the extra that installs it)
- retries and secrets: `retry_call`, `backoff` (tenacity), `redact` (an API key out of a message)
- talking to the user: `log`, `backend_logger` (stdlib logging under `LOGGER_NAME`), `progress_bar` (`Advance`),
  and for the runner's side `set_progress_handler` (`ProgressHandler`)

Names are only added here, never renamed or removed; `tests/test_backend_surface.py` holds the plugin
example and every module under `ptst/backends` to that.
"""

from __future__ import annotations

from ptst.backends.base import (
    BackendOptions,
    BackendSpec,
    FineTuneBackend,
    OnResponse,
    create_backend,
)
from ptst.backends.reporting import (
    LOGGER_NAME,
    Advance,
    ProgressHandler,
    backend_logger,
    log,
    progress_bar,
    set_progress_handler,
)
from ptst.conversation import Conversation
from ptst.errors import (
    BackendError,
    CredentialsError,
    DataError,
    JobFailed,
    PtstError,
    UsageError,
    redact,
    require,
)
from ptst.retry import backoff, retry_call
from ptst.templates import Template
from ptst.types import (
    Estimate,
    Frozen,
    GenerationConfig,
    Hyperparameters,
    JobLedger,
    LoraSpec,
    ModelRef,
    Rendered,
    TrainJob,
)

__all__ = [
    "LOGGER_NAME",
    "Advance",
    "BackendError",
    "BackendOptions",
    "BackendSpec",
    "Conversation",
    "CredentialsError",
    "DataError",
    "Estimate",
    "FineTuneBackend",
    "Frozen",
    "GenerationConfig",
    "Hyperparameters",
    "JobFailed",
    "JobLedger",
    "LoraSpec",
    "ModelRef",
    "OnResponse",
    "ProgressHandler",
    "PtstError",
    "Rendered",
    "Template",
    "TrainJob",
    "UsageError",
    "backend_logger",
    "backoff",
    "create_backend",
    "log",
    "progress_bar",
    "redact",
    "require",
    "retry_call",
    "set_progress_handler",
]
