"""The learning-rate schedule of a local training job, one value per optimizer step.

`linear`, `cosine` and `constant` are transformers' schedulers (warmup, then decay over the run). `step` is what
llama-recipes, the code the paper's Llama runs were built on, uses: `StepLR(step_size=1, gamma)` stepped once per
epoch, so every step of epoch `e` (from 0) runs at `learning_rate * gamma**e`. It is written here as a per-step
`LambdaLR`, because ptst steps its scheduler after every optimizer step (and saves it in checkpoints that way).
"""

from __future__ import annotations

import math
from typing import Any

from ptst.types import Hyperparameters


def build_scheduler(optimizer: Any, hp: Hyperparameters, total_steps: int, steps_per_epoch: int) -> Any:
    """The scheduler for `total_steps` optimizer steps, `steps_per_epoch` of them per epoch."""
    if hp.lr_scheduler == "step":
        import torch

        per_epoch = max(1, steps_per_epoch)
        gamma = hp.lr_gamma
        return torch.optim.lr_scheduler.LambdaLR(optimizer, lambda i: gamma ** (i // per_epoch))
    from transformers import get_scheduler

    return get_scheduler(
        hp.lr_scheduler, optimizer, num_warmup_steps=math.ceil(hp.warmup_ratio * total_steps),
        num_training_steps=total_steps,
    )
