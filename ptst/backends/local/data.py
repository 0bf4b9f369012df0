"""Training data as the trainer sees it: truncation with an audit, the seeded batch plan, and micro-batch layout
(packed into one padding-free row with per-example attention, or padded)."""

from __future__ import annotations

import random
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

from ptst.backends.local.models import import_torch
from ptst.backends.local.render import IGNORE_INDEX


@dataclass(frozen=True)
class Audit:
    """What the trainer will see, printed once per job: silent truncation is how loss masks go wrong unnoticed."""

    n_examples: int
    n_tokens: int
    n_supervised: int
    n_truncated: int
    n_dropped: int
    max_len: int
    max_seq_len: int

    @property
    def supervised_fraction(self) -> float:
        return self.n_supervised / self.n_tokens if self.n_tokens else 0.0

    def describe(self) -> str:
        return (
            f"{self.n_examples} examples, {self.n_tokens:,} tokens, supervised {self.supervised_fraction:.1%}, "
            f"max length {self.max_len} (limit {self.max_seq_len}), truncated {self.n_truncated}, "
            f"dropped {self.n_dropped} (no answer token left)"
        )

    def as_dict(self) -> dict[str, Any]:
        return {
            "n_examples": self.n_examples, "n_tokens": self.n_tokens, "n_supervised": self.n_supervised,
            "supervised_fraction": round(self.supervised_fraction, 6), "n_truncated": self.n_truncated,
            "n_dropped": self.n_dropped, "max_len": self.max_len, "max_seq_len": self.max_seq_len,
        }


def prepare_examples(
    encoded: Sequence[tuple[list[int], list[int]]], max_seq_len: int
) -> tuple[list[tuple[list[int], list[int]]], Audit]:
    """Truncate to `max_seq_len` from the right (the prompt is kept whole; the answer's tail and EOS go), and drop
    examples left without a supervised token. Returns the examples and their audit."""
    out: list[tuple[list[int], list[int]]] = []
    n_trunc = n_drop = max_len = 0
    for ids, labels in encoded:
        max_len = max(max_len, len(ids))
        if len(ids) > max_seq_len:
            n_trunc += 1
            ids, labels = ids[:max_seq_len], labels[:max_seq_len]
        if sum(1 for x in labels[1:] if x != IGNORE_INDEX) == 0:
            n_drop += 1
            continue
        out.append((ids, labels))
    n_tokens = sum(len(i) for i, _ in out)
    n_sup = sum(sum(1 for x in lab if x != IGNORE_INDEX) for _, lab in out)
    return out, Audit(len(encoded), n_tokens, n_sup, n_trunc, n_drop, max_len, max_seq_len)


def plan_batches(
    lengths: Sequence[int], batch_size: int, seed: int, epoch: int, grouping: str
) -> list[list[int]]:
    """The example indices of each micro-batch of one epoch, reproducible from (seed, epoch).

    `packed`/`padded`: a plain shuffle (same composition as a reference padded loop). `length_grouped`: shuffle,
    cut into mega-batches of 64 batches, sort each by length and shuffle the resulting batches, so padded batches
    hold similar lengths while the epoch's order stays random.
    """
    rng = random.Random(f"{seed}:{epoch}")
    order = list(range(len(lengths)))
    rng.shuffle(order)
    if grouping == "length_grouped":
        mega = batch_size * 64
        grouped: list[list[int]] = []
        for i in range(0, len(order), mega):
            chunk = sorted(order[i : i + mega], key=lambda j: -lengths[j])
            grouped += [chunk[k : k + batch_size] for k in range(0, len(chunk), batch_size)]
        rng.shuffle(grouped)
        return grouped
    return [order[i : i + batch_size] for i in range(0, len(order), batch_size)]


def pack_chunks(examples: Sequence[tuple[list[int], list[int]]], size: int) -> list[tuple[list[int], list[int]]]:
    """llama-recipes' packing: every example's ids and labels end to end, in data order, cut into chunks of exactly
    `size` tokens; the tail that fills no chunk is dropped (as its `ConcatDataset` does). An example may straddle
    two chunks. Labels travel with their tokens, so prompts stay unsupervised."""
    from ptst.errors import DataError

    ids = [t for x, _ in examples for t in x]
    labels = [t for _, lab in examples for t in lab]
    n = len(ids) // size
    if n == 0:
        raise DataError(f"chunk_size {size}: the training data has only {len(ids)} tokens, less than one chunk")
    return [(ids[i * size : (i + 1) * size], labels[i * size : (i + 1) * size]) for i in range(n)]


def collate(  # type: ignore[no-untyped-def]
    batch: Sequence[tuple[list[int], list[int]]], batching: str, pad_id: int, device: str
):
    """Model inputs and next-token targets of one micro-batch.

    packed: one row, position ids restart at 0 per example and no attention mask, which transformers turns into a
    per-example (block-diagonal) causal mask; logits only at positions whose next token is supervised.
    padded: right-padded rows with an attention mask (the reference layout; length_grouped uses it too).
    Returns (model kwargs, targets at the kept positions, number of real tokens).
    """
    torch = import_torch()
    if batching == "packed":
        ids = [t for x, _ in batch for t in x]
        labels = [t for _, lab in batch for t in lab]
        pos = [p for x, _ in batch for p in range(len(x))]
        # position i predicts token i+1; an example's last position would predict the next example's BOS: the
        # label there is the next example's first label, always -100 (its prompt), so it is never kept.
        nxt = labels[1:] + [IGNORE_INDEX]
        keep = [i for i, t in enumerate(nxt) if t != IGNORE_INDEX]
        kw = {
            "input_ids": torch.tensor([ids], device=device),
            "position_ids": torch.tensor([pos], device=device),
            "logits_to_keep": torch.tensor(keep, device=device),
        }
        targets = torch.tensor([nxt[i] for i in keep], device=device)
        return kw, targets, len(ids)
    width = max(len(x) for x, _ in batch)
    ids = torch.full((len(batch), width), pad_id, dtype=torch.long)
    mask = torch.zeros((len(batch), width), dtype=torch.long)
    labels = torch.full((len(batch), width), IGNORE_INDEX, dtype=torch.long)
    for r, (x, lab) in enumerate(batch):
        ids[r, : len(x)] = torch.tensor(x)
        mask[r, : len(x)] = 1
        labels[r, : len(x)] = torch.tensor(lab)
    targets = labels[:, 1:]
    kw = {"input_ids": ids.to(device), "attention_mask": mask.to(device)}
    return kw, targets.to(device), sum(len(x) for x, _ in batch)



def split_by_tokens(share: Sequence[int], lengths: Sequence[int], budget: int) -> list[list[int]]:
    """A micro-batch's examples in consecutive groups of at most `budget` tokens (an example longer than that alone):
    each group is one forward/backward, gradients accumulate, and the loss is still divided by the whole window's
    supervised tokens, so the update is the micro-batch's while activation memory is bounded by the budget (on CPU a
    forward's activations are about 1.4 MB per token for a 135M model in float32)."""
    groups: list[list[int]] = []
    size = 0
    for j in share:
        if groups and size + lengths[j] <= budget:
            groups[-1].append(j)
            size += lengths[j]
        else:
            groups.append([j])
            size = lengths[j]
    return groups
