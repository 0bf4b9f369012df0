"""Releasing the vLLM engine never swallows a failure silently: a process-group teardown that fails is a warning
naming the error (GPU memory may stay held), and the release goes on."""

from __future__ import annotations

import sys
import types

import pytest

pytest.importorskip("torch")

from ptst.backends.local import vllm


def test_a_failed_teardown_is_a_warning(monkeypatch: pytest.MonkeyPatch, capsys):
    state = types.ModuleType("vllm.distributed.parallel_state")

    def destroy_model_parallel():
        raise RuntimeError("Default process group has not been initialized")

    state.destroy_model_parallel = destroy_model_parallel  # type: ignore[attr-defined]
    state.destroy_distributed_environment = lambda: None  # type: ignore[attr-defined]
    for name in ("vllm", "vllm.distributed"):
        monkeypatch.setitem(sys.modules, name, types.ModuleType(name))
    monkeypatch.setitem(sys.modules, "vllm.distributed.parallel_state", state)
    monkeypatch.setattr(vllm, "_ENGINE", object())
    vllm.release_vllm()
    assert vllm._ENGINE is None
    err = " ".join(capsys.readouterr().err.split())
    assert ("warning: vLLM's process groups were not torn down (Default process group has not been initialized); "
            "GPU memory may stay held") in err
