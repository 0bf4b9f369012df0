"""A KV cache layer with room to grow: keys and values are views onto buffers allocated once per batch, and each
decoding step writes its one new position in place.

transformers' `DynamicLayer` appends with `torch.cat`: every step allocates two new tensors per layer and copies the
whole cache into them, so a step's cache traffic grows with the length and the batch (at batch 16, 300 tokens,
SmolLM2's 30 layers in bf16: some 110 MB copied per step, as much as the weights themselves), and the allocator
hands back fresh pages each time. Here the copy happens once, when a batch is formed (prefill, rows joining), with
room for the steps still to come; a step writes `batch x heads x 1 x head_dim` values per layer.

Dropping rows (`batch_select_indices`) copies the buffers once; dropping leading padding columns moves a start
offset (no copy). The attention reads the same values in the same order as from a concatenated cache, so outputs do
not change (tested token for token against `model.generate`).
"""

from __future__ import annotations

from typing import Any

from transformers.cache_utils import DynamicLayer


class RoomyLayer(DynamicLayer):
    """A `DynamicLayer` whose `keys`/`values` are the `[start, end)` columns of preallocated buffers."""

    def __init__(self, keys: Any, values: Any, room: int) -> None:
        super().__init__()
        self._k = _with_room(keys, room)
        self._v = _with_room(values, room)
        self.start, self.end = 0, keys.shape[-2]
        self.device = keys.device
        self.is_initialized = True
        self._views()

    def _views(self) -> None:
        self.keys = self._k[:, :, self.start : self.end]
        self.values = self._v[:, :, self.start : self.end]

    def update(self, key_states: Any, value_states: Any, *args: Any, **kwargs: Any) -> tuple[Any, Any]:
        n = key_states.shape[-2]
        if self.end + n > self._k.shape[-2]:  # out of room (a batch that ran longer than planned): move once
            self._k = _with_room(self.keys, max(n, self.end - self.start))
            self._v = _with_room(self.values, max(n, self.end - self.start))
            self.start, self.end = 0, self.end - self.start
        self._k[:, :, self.end : self.end + n] = key_states
        self._v[:, :, self.end : self.end + n] = value_states
        self.end += n
        self._views()
        return self.keys, self.values

    def batch_select_indices(self, indices: Any) -> None:
        self._k, self._v = self._k[indices], self._v[indices]
        self._views()

    def drop_front(self, columns: int) -> None:
        """Forget the first `columns` positions (padding in every row): the views start later, nothing is copied."""
        self.start += columns
        self._views()


def _with_room(t: Any, room: int) -> Any:
    """A new buffer holding `t` (batch, heads, length, head_dim) in its first `length` columns, `room` columns free."""
    b, h, n, d = t.shape
    buf = t.new_empty((b, h, n + room, d))
    buf[:, :, :n] = t
    return buf


def make_roomy(cache: Any, room: int) -> None:
    """Give the plain layers of `cache` (`DynamicLayer`, or `RoomyLayer` again) buffers with `room` free positions.
    Other layers (a sliding window's, which drops old positions itself; an uninitialized one) are left as they are."""
    cache.layers = [
        RoomyLayer(layer.keys, layer.values, room)
        if type(layer) in (DynamicLayer, RoomyLayer) and layer.is_initialized and layer.keys is not None
        and layer.keys.dim() == 4
        else layer
        for layer in cache.layers
    ]


def drop_front(cache: Any, columns: int) -> None:
    """Forget the first `columns` positions of every layer (columns that are padding in every row)."""
    for layer in cache.layers:
        if isinstance(layer, RoomyLayer):
            layer.drop_front(columns)
        else:
            layer.keys, layer.values = layer.keys[:, :, columns:], layer.values[:, :, columns:]
