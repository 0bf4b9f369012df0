"""The run store (`RunStore`): one SQLite file per output directory holding every result the moment it exists.
See `ptst.store.store` for how its parts fit together."""

from ptst.store.jobs import JobRecord, bad_model_ref
from ptst.store.responses import Judged
from ptst.store.store import RunStore

__all__ = ["JobRecord", "Judged", "RunStore", "bad_model_ref"]
