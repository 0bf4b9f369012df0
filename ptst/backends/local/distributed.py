"""Several GPUs: the backend writes the job to a file and runs `torchrun -m ptst.backends.local.distributed
JOBFILE` (DDP, rank 0 saves), so the runner and its SQLite store stay single-process."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import tempfile
from collections.abc import Sequence
from pathlib import Path

from ptst.backends.local.models import import_torch, resolve_device
from ptst.backends.local.train import TrainSettings, train_lora
from ptst.errors import BackendError

WORKER_MODULE = "ptst.backends.local.distributed"


def launch_distributed(
    settings: TrainSettings, examples: Sequence[tuple[list[int], list[int]]], outdir: Path, nproc: int
) -> None:
    """Run `train_lora` under torchrun with `nproc` processes (DDP); the job travels in a JSON file."""
    outdir.mkdir(parents=True, exist_ok=True)
    with tempfile.NamedTemporaryFile("w", suffix=".json", dir=outdir, delete=False, prefix="job-") as f:
        json.dump({"settings": settings.model_dump(mode="json"), "examples": examples, "outdir": str(outdir)}, f)
        jobfile = f.name
    cmd = [
        sys.executable, "-m", "torch.distributed.run", "--standalone", f"--nproc_per_node={nproc}",
        "-m", WORKER_MODULE, jobfile,
    ]
    try:
        proc = subprocess.run(cmd, check=False)
    finally:
        Path(jobfile).unlink(missing_ok=True)
    if proc.returncode != 0:
        raise BackendError(
            f"distributed training ({nproc} processes) failed with exit code {proc.returncode}; see the worker "
            "output above, or set nproc_per_node: 1"
        )


def worker_main(argv: Sequence[str]) -> int:
    """Entry point of one torchrun rank: `python -m ptst.backends.local.distributed JOBFILE`."""
    torch = import_torch()
    job = json.loads(Path(argv[0]).read_text())
    settings = TrainSettings.model_validate(job["settings"])
    examples = [(list(x), list(y)) for x, y in job["examples"]]
    world = int(os.environ.get("WORLD_SIZE", "1"))
    if world > 1:
        cuda = resolve_device(settings.device).startswith("cuda")
        torch.distributed.init_process_group(backend="nccl" if cuda else "gloo")
    try:
        train_lora(settings, examples, Path(job["outdir"]))
    except BaseException:
        # No barrier here: a rank that failed would wait for ranks that may never arrive (or have died), and the
        # job would hang instead of failing. Leave the group and exit non-zero; torchrun stops the other ranks.
        if world > 1:
            torch.distributed.destroy_process_group()
        raise
    if world > 1:
        torch.distributed.barrier()  # every rank finished: rank 0's adapter is on disk before any rank exits
        torch.distributed.destroy_process_group()
    return 0


if __name__ == "__main__":  # torchrun worker
    sys.exit(worker_main(sys.argv[1:]))
