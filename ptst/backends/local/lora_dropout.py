"""Fast LoRA dropout: the LoRA branch as one autograd function that keeps a one-byte mask.

peft's LoRA dropout keeps a float32 copy of every dropped input; this computes the same distribution while saving
the activation (shared by q_proj and v_proj) and a bool mask, recomputing the dropped input in backward.
"""

from __future__ import annotations

from typing import Any

from ptst.backends.local.models import import_torch

_DROPOUT_FN: Any = None


def dropout_lora_a():  # type: ignore[no-untyped-def]
    """`h = (x * mask * scale) @ A.T` as one autograd function that saves x, a bool mask and A.

    peft casts x to the adapter's float32, drops it into a new float32 tensor and keeps that (plus the mask) for
    backward, separately for q_proj and v_proj: about 10 bytes per activation element. Here x (2 bytes in bf16, one
    tensor shared by q_proj and v_proj) and a 1-byte mask per layer are kept, and the dropped input is recomputed
    in backward in the activation dtype. Same distribution as peft's `Dropout(x)`: element-wise on x, scaled 1/(1-p).
    """
    global _DROPOUT_FN
    if _DROPOUT_FN is None:
        torch = import_torch()

        class DropoutLoraA(torch.autograd.Function):  # type: ignore[name-defined,misc]  # torch is imported lazily
            @staticmethod
            def forward(ctx, x, mask, a, scale):  # type: ignore[no-untyped-def]
                ctx.save_for_backward(x, mask, a)
                ctx.scale = scale
                return (x * mask).mul_(scale) @ a.t()

            @staticmethod
            def backward(ctx, gh):  # type: ignore[no-untyped-def]
                x, mask, a = ctx.saved_tensors
                gx = ga = None
                if ctx.needs_input_grad[0]:
                    gx = (gh @ a).mul_(mask).mul_(ctx.scale)
                if ctx.needs_input_grad[2]:
                    xd = (x * mask).mul_(ctx.scale)
                    ga = gh.reshape(-1, gh.shape[-1]).t() @ xd.reshape(-1, xd.shape[-1])
                return gx, None, ga, None

        _DROPOUT_FN = DropoutLoraA
    return _DROPOUT_FN


def lora_delta(x, a, b, scaling: float, p: float, mask=None):  # type: ignore[no-untyped-def]
    """The LoRA branch `B(A(dropout(x))) * scaling`, computed in x's dtype (adapter weights stay float32 for AdamW)."""
    torch = import_torch()
    a = a.to(x.dtype)
    b = b.to(x.dtype)
    if p > 0:
        if mask is None:
            mask = torch.empty(x.shape, dtype=torch.bool, device=x.device).bernoulli_(1.0 - p)
        h = dropout_lora_a().apply(x, mask.to(torch.bool), a, 1.0 / (1.0 - p))
    else:
        h = x @ a.t()
    return (h @ b.t()) * scaling


def install_fast_lora(model) -> int:  # type: ignore[no-untyped-def]
    """Route every vanilla peft LoRA Linear through `lora_delta` (training only). Returns the number patched."""
    import types

    torch = import_torch()
    from peft.tuners.lora import Linear as LoraLinear

    def forward(self, x, *args, **kwargs):  # type: ignore[no-untyped-def]
        result = self.base_layer(x, *args, **kwargs)
        if self.disable_adapters or self.merged:
            return result
        for name in self.active_adapters:
            if name not in self.lora_A:
                continue
            drop = self.lora_dropout[name]
            p = float(drop.p) if isinstance(drop, torch.nn.Dropout) and self.training else 0.0
            delta = lora_delta(x, self.lora_A[name].weight, self.lora_B[name].weight, self.scaling[name], p)
            result = result + delta.to(result.dtype)
        return result

    n = 0
    for module in model.modules():
        if isinstance(module, LoraLinear) and not getattr(module, "lora_variant", None) and not module.use_dora.get(
            "default", False
        ):
            module.forward = types.MethodType(forward, module)  # type: ignore[method-assign]  # the point: swap forward
            n += 1
    return n

