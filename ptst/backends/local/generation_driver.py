"""The generation driver of the local backends: prompt ids in, decoded batches out, on one loaded model.

The runner calls a backend's `generate_streaming` with chunk after chunk for one `ModelRef`, so the driver keeps that
model loaded (`Generator`) until another is asked for; one engine holds the GPU at a time, so loading any model
first frees every other backend's generator and vLLM engine. vLLM schedules a whole call itself: its responses come
at the end of the call.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from typing import TYPE_CHECKING

from ptst.backends.base import GenerationConfig, ModelRef
from ptst.backends.local.generate import Generator, release_generators
from ptst.backends.local.vllm import generate_vllm, release_vllm

if TYPE_CHECKING:
    from ptst.backends.local.backend import LocalOptions

Decoded = Callable[[list[tuple[int, list[int]]]], None]  # (prompt index, generated ids) of a finished batch


class GenerationDriver:
    """One backend's loaded generation engine and the calls that drive it."""

    def __init__(self, options: LocalOptions) -> None:
        self.options = options
        self._generator: Generator | None = None

    def generate(self, model: ModelRef, ids: list[list[int]], cfg: GenerationConfig, *, eos_id: int, pad_id: int,
                 stop_ids: Sequence[int], on_batch: Decoded) -> None:
        """Generate for every prompt in `ids`, each decoded batch handed to `on_batch` as it finishes (a kill loses
        at most the batch on the device)."""
        if self.options.engine == "vllm":
            self.close()
            release_generators()  # one engine holds the GPU at a time
            out = generate_vllm(model, ids, cfg, self.options, eos_id=eos_id, stop_ids=tuple(stop_ids))
            on_batch(list(enumerate(out)))
            return
        gen = self.generator_for(model)
        gen.generate(ids, cfg, eos_id=eos_id, pad_id=pad_id, stop_ids=stop_ids, on_batch=on_batch)

    @property
    def current(self) -> Generator | None:
        """The generator loaded last (closed, when another backend's model took the device since)."""
        return self._generator

    def close(self) -> None:
        if self._generator is not None:
            self._generator.close()
            self._generator = None

    def generator_for(self, model: ModelRef) -> Generator:
        """The loaded generator of `model` (base and adapter), loading it when another one is loaded or none is."""
        key = (model.base_model, model.adapter_dir)
        if self._generator is None or self._generator.closed or self._generator.key != key:
            self.close()
            release_generators()  # one engine holds the GPU at a time: another backend's model is freed
            release_vllm()
            o = self.options
            self._generator = Generator.load(
                model.base_model, model.adapter_dir, dtype=o.dtype, device=o.device,
                attn_implementation=o.attn_implementation, merge=o.merge_adapter, max_batch=o.max_generation_batch,
                threads=o.threads,
            )
        return self._generator
