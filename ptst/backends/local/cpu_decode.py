"""Decoding on a CPU in bfloat16 without the weight copies transformers leaves in every step, bit-exact.

Linear weights laid out once for oneDNN. A decoding step multiplies a few rows by every weight matrix, and
`torch.nn.functional.linear` in bfloat16 hands each call to oneDNN, which first copies the weight into its blocked
layout: every step reads each weight twice and writes it once. Measured on a Zen 4 core (1 thread, batch 4):
SmolLM2's 49152 x 576 lm_head 7.1 ms plain against 2.7 ms reordered beforehand (7.9 against 20.6 GB/s); a 1536 x 576
projection 97 against 57 us. So each Linear weight is reordered once
(`torch.ops.mkldnn._reorder_linear_weight`) and decoding calls the packed kernel. Sibling Linears that read the same
input (q/k/v, gate/up) are packed as one weight and multiplied once: fewer, larger calls.

One-query attention on the key/value heads (the query heads that share one laid out as its rows, instead of sdpa's
`enable_gqa`) was tried and dropped: 4x faster per layer, but its kernel sums in another order, and on SmolLM2 a
greedy token differed from `model.generate`'s (one of 4 prompts, at token 42; 4 of 306 random lengths differ in the
last bit).

Numerics: the packed kernel is the one `linear` reaches in bfloat16, with the same accumulation, so outputs are
bit-identical and greedy tokens equal `model.generate`'s. That is checked at run time on this CPU and torch (the
model's first Linear; one fused group's columns against each member's own `linear`): where a result differs by a bit
(float32, where `linear` takes MKL's sgemm instead), that piece is not used. The direct step of `llama_step.py`
is checked the same way, with the packed weights applied. Both are a context around decoding, not a change to the
model: the resident base that training shares is left as it was, and LoRA layers left unmerged (peft's, wrapping a
Linear) keep their own forward around a packed base.
"""

from __future__ import annotations

import contextlib
from collections.abc import Iterator
from typing import Any

from ptst.backends.local.llama_step import DirectStep
from ptst.backends.local.models import import_torch


def _kernel_ops() -> tuple[Any, Any] | None:
    """(reorder, linear) from torch's oneDNN build, None where this torch has none."""
    torch = import_torch()
    ops = getattr(torch.ops, "mkldnn", None)
    try:
        if not torch.backends.mkldnn.is_available() or ops is None:
            return None
        return ops._reorder_linear_weight, ops._linear_pointwise
    except (AttributeError, RuntimeError):
        return None


SIBLINGS = (("q_proj", "k_proj", "v_proj"), ("gate_proj", "up_proj"))  # Linears that read the same input


class _Fused:
    """Sibling Linears that read the same input, multiplied as one packed weight: the first of them called with a
    new input computes all their outputs, each takes its columns."""

    def __init__(self, members: list[Any], packed: Any) -> None:
        self.members = members
        self.packed = packed
        self.bias = None
        if members[0].bias is not None:
            self.bias = import_torch().cat([m.bias.detach() for m in members])
        self.widths = [m.out_features for m in members]
        self._input: Any = None  # held, not just its id: a new tensor cannot take its place unnoticed
        self._outputs: dict[Any, Any] = {}

    def output(self, linear_fn: Any, m: Any, x: Any) -> Any:
        if x is not self._input or m not in self._outputs:
            out = linear_fn(x, self.packed, self.bias, "none", [], "")
            self._outputs = dict(zip(self.members, out.split(self.widths, dim=-1), strict=True))
            self._input = x
        mine = self._outputs.pop(m)
        if not self._outputs:  # every member has its part: hold nothing (a prefill's outputs are large)
            self._input = None
        return mine

    def clear(self) -> None:
        self._input, self._outputs = None, {}


class PackedLinears:
    """The packed weights of a model's plain `torch.nn.Linear` layers, made once, applied while decoding. Sibling
    Linears that read the same input (q/k/v, gate/up) are packed as one weight: at batch 4, SmolLM2's q, k and v take
    87 us as three calls and 49 us as one, gate and up 126 against 99 (2 threads)."""

    def __init__(self, model: Any, batch_hint: int = 4, *, exact: bool = True) -> None:
        """Pack `model`'s bfloat16 Linears (None: nothing), for about `batch_hint` rows, if that is exact here.
        `exact=False` packs float32 ones too and skips the check: for benchmarks, to show what exactness costs."""
        torch = import_torch()
        self.packed: dict[Any, Any] = {}
        self.fused: dict[Any, _Fused] = {}  # each grouped Linear -> its group
        ops = _kernel_ops()
        if model is None:  # not on a CPU
            return
        # bfloat16 only (LoRA's own float32 Linears over a bf16 base stay as they are); no hooks installed already
        linears = [m for m in model.modules() if type(m) is torch.nn.Linear and m.weight.device.type == "cpu"
                   and (m.weight.dtype == torch.bfloat16 or not exact) and "forward" not in vars(m)]
        if ops is None or not linears:
            return
        reorder, self._linear = ops
        with torch.inference_mode():
            try:
                self.packed = {linears[0]: reorder(linears[0].weight.detach(), batch_hint)}
            except RuntimeError:  # this CPU or build has no such kernel
                self.packed = {}
                return
            if exact and not self._exact(linears[0]):
                self.packed = {}
                return
            # groups first, then the Linears in none: each weight is packed once (a second packed copy of a
            # 135M model is 270 MB more at the peak)
            groups = [_Fused(g, reorder(torch.cat([m.weight.detach() for m in g]), batch_hint))
                      for g in _sibling_groups(model, set(linears))]
            if groups and (exact and not self._fused_exact(groups[0])):
                groups = []
            self.fused = {m: group for group in groups for m in group.members}
            first = self.packed
            self.packed = {m: first[m] if m in first else reorder(m.weight.detach(), batch_hint)
                           for m in linears if m not in self.fused}

    def _exact(self, m: Any) -> bool:
        """Whether the packed kernel gives `linear`'s result bit for bit, for one and for several rows."""
        torch = import_torch()
        g = torch.Generator().manual_seed(0)
        for rows in ((1, 1), (3, 5)):
            x = torch.randn(*rows, m.in_features, generator=g).to(m.weight.dtype)
            if not torch.equal(self._call(m, x), torch.nn.functional.linear(x, m.weight, m.bias)):
                return False
        return True

    def _fused_exact(self, group: _Fused) -> bool:
        """Whether each member's columns of the one product are its own `linear` bit for bit."""
        torch = import_torch()
        g = torch.Generator().manual_seed(1)
        for rows in ((1, 1), (3, 5)):
            m0 = group.members[0]
            x = torch.randn(*rows, m0.in_features, generator=g).to(m0.weight.dtype)
            for m in group.members:
                if not torch.equal(group.output(self._linear, m, x), torch.nn.functional.linear(x, m.weight, m.bias)):
                    group.clear()
                    return False
            group.clear()
        return True

    def _call(self, m: Any, x: Any) -> Any:
        return self._linear(x, self.packed[m], m.bias, "none", [], "")

    def __len__(self) -> int:
        """The Linears served: packed alone or in a group."""
        return len(self.packed) + len(self.fused)

    def __bool__(self) -> bool:
        return bool(self.packed) or bool(self.fused)

    @contextlib.contextmanager
    def applied(self) -> Iterator[None]:
        """Each packed Linear's forward calls the packed kernel inside the block; as before after it."""
        for m in self.packed:
            m.forward = lambda x, m=m: self._call(m, x)
        for m, group in self.fused.items():
            m.forward = lambda x, m=m, group=group: group.output(self._linear, m, x)
        try:
            yield
        finally:
            for m in [*self.packed, *self.fused]:
                vars(m).pop("forward", None)  # back to the class's forward
            for group in set(self.fused.values()):
                group.clear()


def _sibling_groups(model: Any, plain: set[Any]) -> list[list[Any]]:
    """The `SIBLINGS` of each module, as their plain Linears (a LoRA wrapper's `base_layer`): only complete groups of
    packable Linears with the same input size and all or none with a bias."""
    groups = []
    for module in model.modules():
        for names in SIBLINGS:
            found = [getattr(module, n, None) for n in names]
            bases: list[Any] = [getattr(f, "base_layer", f) for f in found]
            if not all(b in plain for b in bases):
                continue
            if len({b.in_features for b in bases}) == 1 and len({b.bias is None for b in bases}) == 1:
                groups.append(bases)
    return groups


class CpuDecoding:
    """What decoding on this CPU uses, decided once per loaded model: packed Linears and the direct step
    (`llama_step.py`); each only where it is bit-exact here."""

    def __init__(self, model: Any, batch_hint: int = 4) -> None:
        self.linears = PackedLinears(model, batch_hint)
        self.step: DirectStep | None = None
        torch = import_torch()
        if model is not None:
            with torch.inference_mode(), self.applied():  # checked with the kernels it will run on
                direct = DirectStep(model)
            self.step = direct if direct.exact else None

    @contextlib.contextmanager
    def applied(self) -> Iterator[None]:
        with self.linears.applied():
            yield
