"""Linear layers with their weights laid out once for oneDNN, for decoding on a CPU.

A decoding step multiplies a few rows by every weight matrix. `torch.nn.functional.linear` in bfloat16 hands each
call to oneDNN, which first copies the weight into its blocked layout, so every step reads each weight twice and
writes it once. Measured on a Zen 4 core (1 thread, batch 4): SmolLM2's 49152 x 576 lm_head took 7.1 ms plain
against 2.7 ms with the weight reordered beforehand (7.9 against 20.6 GB/s), a 1536 x 576 projection 97 against
57 us; a whole SmolLM2 step 62 against 40 ms. So the generator reorders each Linear weight once
(`torch.ops.mkldnn._reorder_linear_weight`) and calls the packed kernel during decoding.

Numerics: the packed kernel is the one `linear` reaches in bfloat16, so outputs are bit-identical and greedy tokens
equal `model.generate`'s. That is checked at run time on this CPU and torch, on the model's own first Linear: where
the packed result differs by a bit (float32, where `linear` takes MKL's sgemm instead), nothing is packed. The
packing is a context, not a change to the model: the resident base that training shares is left as it was, and
LoRA layers left unmerged (peft's, wrapping a Linear) keep their own forward around a packed base.
"""

from __future__ import annotations

import contextlib
from collections.abc import Iterator
from typing import Any

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


class PackedLinears:
    """The packed weights of a model's plain `torch.nn.Linear` layers, made once, applied while decoding."""

    def __init__(self, model: Any, batch_hint: int = 4) -> None:
        """Pack `model`'s bfloat16 Linears (None: nothing), for about `batch_hint` rows, if that is exact here."""
        torch = import_torch()
        self.packed: dict[Any, Any] = {}
        ops = _kernel_ops()
        if model is None:  # not on a CPU
            return
        # bfloat16 only (LoRA's own float32 Linears over a bf16 base stay as they are); no hooks installed already
        linears = [m for m in model.modules() if type(m) is torch.nn.Linear and m.weight.device.type == "cpu"
                   and m.weight.dtype == torch.bfloat16 and "forward" not in vars(m)]
        if ops is None or not linears:
            return
        reorder, self._linear = ops
        with torch.inference_mode():
            try:
                self.packed = {m: reorder(m.weight.detach(), batch_hint) for m in linears}
            except RuntimeError:  # this CPU or build has no such kernel
                self.packed = {}
                return
            if not self._exact(linears[0]):
                self.packed = {}

    def _exact(self, m: Any) -> bool:
        """Whether the packed kernel gives `linear`'s result bit for bit, for one and for several rows."""
        torch = import_torch()
        g = torch.Generator().manual_seed(0)
        for rows in ((1, 1), (3, 5)):
            x = torch.randn(*rows, m.in_features, generator=g).to(m.weight.dtype)
            if not torch.equal(self._call(m, x), torch.nn.functional.linear(x, m.weight, m.bias)):
                return False
        return True

    def _call(self, m: Any, x: Any) -> Any:
        return self._linear(x, self.packed[m], m.bias, "none", [], "")

    def __bool__(self) -> bool:
        return bool(self.packed)

    @contextlib.contextmanager
    def applied(self) -> Iterator[None]:
        """Each packed Linear's forward calls the packed kernel inside the block; as before after it."""
        for m in self.packed:
            m.forward = lambda x, m=m: self._call(m, x)
        try:
            yield
        finally:
            for m in self.packed:
                vars(m).pop("forward", None)  # back to the class's forward
