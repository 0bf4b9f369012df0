"""A damaged checkpoint is never skipped silently: the resume search warns naming the file, then resumes from the
checkpoint before it (a kill or a full disk while writing the newest checkpoint must not cost the whole job)."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

torch = pytest.importorskip("torch")

from ptst.backends.local import resume
from ptst.backends.local.adapters import METADATA_FILE


def _checkpoint(outdir: Path, step: int, fingerprint: str) -> Path:
    d = outdir / f"checkpoint-{step}"
    d.mkdir(parents=True)
    (d / "adapter_model.safetensors").write_bytes(b"weights")
    (d / METADATA_FILE).write_text(json.dumps({"step": step}))
    torch.save({"fingerprint": fingerprint, "step": step}, d / resume.STATE_FILE)
    torch.save({"python": None}, d / resume.rng_file(0))
    return d


def test_a_damaged_newest_checkpoint_warns_and_the_one_before_resumes(tmp_path: Path, capsys):
    older = _checkpoint(tmp_path, 2, "fp")
    newest = _checkpoint(tmp_path, 4, "fp")
    assert resume.find_resume_checkpoint(tmp_path, "fp", 1) == newest
    state = newest / resume.STATE_FILE
    state.write_bytes(state.read_bytes()[:40])  # torn mid-write
    capsys.readouterr()
    assert resume.find_resume_checkpoint(tmp_path, "fp", 1) == older
    err = " ".join(capsys.readouterr().err.split())  # rich may wrap the long path
    assert f"warning: checkpoint file {state} is damaged" in err
    assert "resuming from the checkpoint before it" in err


def test_a_damaged_rng_file_also_falls_back_with_a_warning(tmp_path: Path, capsys):
    older = _checkpoint(tmp_path, 2, "fp")
    newest = _checkpoint(tmp_path, 4, "fp")
    rng = newest / resume.rng_file(0)
    rng.write_bytes(b"not a torch file")
    assert resume.find_resume_checkpoint(tmp_path, "fp", 1) == older
    assert f"checkpoint file {rng} is damaged" in " ".join(capsys.readouterr().err.split())


def test_every_checkpoint_damaged_starts_over_after_naming_each(tmp_path: Path, capsys):
    dirs = [_checkpoint(tmp_path, s, "fp") for s in (2, 4)]
    for d in dirs:
        (d / resume.STATE_FILE).write_bytes(b"")
    assert resume.find_resume_checkpoint(tmp_path, "fp", 1) is None
    err = " ".join(capsys.readouterr().err.split())
    assert all(f"checkpoint file {d / resume.STATE_FILE} is damaged" in err for d in dirs)
