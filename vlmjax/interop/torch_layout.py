"""PyTorch state-dict tensors <-> vlmjax parameters: table entries, layout conversions, mapping.

A source's table (hf_clip_layout.py, open_clip_layout.py) lists one `Entry` per vlmjax
parameter: the PyTorch key, the vlmjax path ("image/encoder/layers/0/attn/query") and a layout
kind:

  same       identical layout
  linear     torch Linear weight [out, in] <-> [in, out]
  qkv        [heads * head_dim, dim] <-> [dim, heads, head_dim]
  qkv_bias   [heads * head_dim] <-> [heads, head_dim]
  attn_out   [dim, heads * head_dim] <-> [heads, head_dim, dim]
  patch      conv [out, in, p, p] <-> [p, p, in, out]

`part`/`parts` take one equal slice along axis 0 of a packed tensor (torch MultiheadAttention's
in_proj_weight / in_proj_bias hold query, key and value stacked: parts=3).
"""

import dataclasses
from collections.abc import Iterable, Mapping

import numpy as np

from vlmjax.errors import CheckpointError


@dataclasses.dataclass(frozen=True)
class Entry:
    key: str
    ours: str
    kind: str
    heads: int = 0
    part: int = 0
    parts: int = 1


def to_ours(x: np.ndarray, entry: Entry) -> np.ndarray:
    """A PyTorch tensor (its `part` slice for packed ones) in vlmjax's layout."""
    if entry.parts > 1:
        x = np.split(x, entry.parts, axis=0)[entry.part]
    h = entry.heads
    if entry.kind == "linear":
        return x.T
    if entry.kind == "qkv":
        return x.T.reshape(x.shape[1], h, x.shape[0] // h)
    if entry.kind == "qkv_bias":
        return x.reshape(h, x.shape[0] // h)
    if entry.kind == "attn_out":
        return x.T.reshape(h, x.shape[1] // h, x.shape[0])
    if entry.kind == "patch":
        return x.transpose(2, 3, 1, 0)
    return x


def to_torch(x: np.ndarray, entry: Entry) -> np.ndarray:
    """A vlmjax parameter in PyTorch's layout (the inverse of `to_ours`; unpacked entries only)."""
    if entry.parts > 1:
        raise ValueError(f"{entry.key} is packed ({entry.parts} parts): export it whole")
    if entry.kind == "linear":
        return x.T
    if entry.kind == "qkv":
        return x.reshape(x.shape[0], -1).T
    if entry.kind == "qkv_bias":
        return x.reshape(-1)
    if entry.kind == "attn_out":
        return x.reshape(-1, x.shape[-1]).T
    if entry.kind == "patch":
        return x.transpose(3, 2, 0, 1)
    return x


def torch_shape(our_shape: tuple[int, ...], entry: Entry) -> tuple[int, ...]:
    """The shape of the whole PyTorch tensor (all parts) that maps to a parameter of `our_shape`."""
    one = to_torch(np.broadcast_to(np.float32(0), our_shape),
                   dataclasses.replace(entry, part=0, parts=1)).shape
    return one if entry.parts == 1 else (one[0] * entry.parts, *one[1:])


def take_tensors(tensors: Mapping[str, np.ndarray], entries: Iterable[Entry],
                 shapes: Mapping[str, tuple[int, ...]], source: str, config_name: str,
                 ignored_suffixes: tuple[str, ...] = ()) -> dict[str, np.ndarray]:
    """{vlmjax path: array} for `entries`; every tensor of `tensors` must be used.

    `shapes` holds the vlmjax parameter shapes of the model `config_name` describes. An unused
    tensor, a missing one or a shape mismatch raises a CheckpointError naming the tensor (and
    the parameter).
    """
    entries = list(entries)
    known = {e.key for e in entries}
    for name in sorted(tensors):
        if name not in known and not name.endswith(ignored_suffixes):
            raise CheckpointError(f"{source}: tensor {name} (shape {tensors[name].shape}) maps to "
                                  f"no vlmjax parameter; the checkpoint holds an architecture "
                                  f"vlmjax does not convert, or {config_name} does not match it")
    values = {}
    for entry in entries:
        if entry.key not in tensors:
            raise CheckpointError(f"{source} has no tensor {entry.key} (for {entry.ours}); the "
                                  f"weights do not match {config_name}")
        want = torch_shape(shapes[entry.ours], entry)
        if tensors[entry.key].shape != want:
            raise CheckpointError(f"{source}: tensor {entry.key} has shape "
                                  f"{tensors[entry.key].shape} but {config_name} implies {want} "
                                  f"(vlmjax {entry.ours} {shapes[entry.ours]})")
        values[entry.ours] = to_ours(tensors[entry.key], entry)
    return values
