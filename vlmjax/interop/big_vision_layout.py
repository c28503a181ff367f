"""Which big_vision SigLIP (two_towers: vit + text_transformer) parameter is which vlmjax one.

big_vision names parameters by their flax module path, "/"-joined as its `.npz` checkpoints
store them. Flax keeps kernels as [in, out], attention query/key/value as [width, heads,
head_dim], the attention output as [heads, head_dim, width] and the patch convolution as
[p, p, channels, width]: all the layouts vlmjax uses, so only leading singleton axes differ:

  same     identical layout
  squeeze  a leading axis of 1 dropped (pos_embedding [1, n, w], probe [1, 1, w], t/b [1])

Encoder blocks are named `encoderblock_<i>`; a scanned encoder (`scan=True`) stores one
`encoderblock` whose every array has a leading depth axis, which `unscan` splits into the
per-block names first, so one table covers both.
"""

import dataclasses
import re

import numpy as np

from vlmjax.errors import CheckpointError

IMAGE_ENCODER = "img/Transformer"
TEXT_ENCODER = "txt/Encoder_0"
SCANNED_BLOCK = "encoderblock"
_BLOCK_RE = re.compile(r"^(.*)/encoderblock_(\d+)/")


@dataclasses.dataclass(frozen=True)
class Entry:
    bv: str
    ours: str
    kind: str = "same"


def _attention(bv: str, ours: str) -> list[Entry]:
    out = []
    for name in ("query", "key", "value", "out"):
        out.append(Entry(f"{bv}/{name}/kernel", f"{ours}/{name}"))
        out.append(Entry(f"{bv}/{name}/bias", f"{ours}/{name}_bias"))
    return out


def _norm(bv: str, ours: str) -> list[Entry]:
    return [Entry(f"{bv}/scale", f"{ours}/scale"), Entry(f"{bv}/bias", f"{ours}/bias")]


def _mlp(bv: str, ours: str) -> list[Entry]:
    return [Entry(f"{bv}/Dense_0/kernel", f"{ours}/fc1"), Entry(f"{bv}/Dense_0/bias", f"{ours}/fc1_bias"),
            Entry(f"{bv}/Dense_1/kernel", f"{ours}/fc2"), Entry(f"{bv}/Dense_1/bias", f"{ours}/fc2_bias")]


def _encoder(bv: str, ours: str, depth: int, final_norm: str) -> list[Entry]:
    out = []
    for i in range(depth):
        b, o = f"{bv}/encoderblock_{i}", f"{ours}/encoder/layers/{i}"
        out += (_norm(f"{b}/LayerNorm_0", f"{o}/ln_attn")
                + _attention(f"{b}/MultiHeadDotProductAttention_0", f"{o}/attn")
                + _norm(f"{b}/LayerNorm_1", f"{o}/ln_mlp")
                + _mlp(f"{b}/MlpBlock_0", f"{o}/mlp"))
    return out + _norm(f"{bv}/encoder_norm", f"{ours}/{final_norm}")


def _head(bv: str, ours: str) -> list[Entry]:
    return [Entry(f"{bv}/head/kernel", f"{ours}_proj/kernel"), Entry(f"{bv}/head/bias", f"{ours}_proj/bias")]


def siglip_entries(image_depth: int, text_depth: int, image_head: bool, text_head: bool,
                   bias: bool) -> list[Entry]:
    """Every parameter of a big_vision SigLIP with a MAP-head ViT and a "last"-pooled text tower."""
    map_head = "img/MAPHead_0"
    return [
        Entry("t", "logit_scale", "squeeze"),
        *([Entry("b", "logit_bias", "squeeze")] if bias else []),
        Entry("img/embedding/kernel", "image/patch_embed"),
        Entry("img/embedding/bias", "image/patch_bias"),
        Entry("img/pos_embedding", "image/pos_embed", "squeeze"),
        *_encoder(IMAGE_ENCODER, "image", image_depth, "ln_post"),
        Entry(f"{map_head}/probe", "image/map_head/probe", "squeeze"),
        *_attention(f"{map_head}/MultiHeadDotProductAttention_0", "image/map_head/attn"),
        *_norm(f"{map_head}/LayerNorm_0", "image/map_head/ln"),
        *_mlp(f"{map_head}/MlpBlock_0", "image/map_head/mlp"),
        *(_head("img", "image") if image_head else []),
        Entry("txt/Embed_0/embedding", "text/token_embed"),
        Entry("txt/pos_embedding", "text/pos_embed", "squeeze"),
        *_encoder(TEXT_ENCODER, "text", text_depth, "ln_final"),
        *(_head("txt", "text") if text_head else []),
    ]


def bv_shape(our_shape: tuple[int, ...], entry: Entry) -> tuple[int, ...]:
    """The big_vision shape of the parameter that maps to a vlmjax one of `our_shape`."""
    return (1, *our_shape) if entry.kind == "squeeze" else tuple(our_shape)


def to_ours(x: np.ndarray, entry: Entry) -> np.ndarray:
    """A big_vision array in vlmjax's layout."""
    return x.reshape(x.shape[1:]) if entry.kind == "squeeze" else x


def unscan(tensors: dict[str, np.ndarray]) -> tuple[dict[str, np.ndarray], dict[str, str]]:
    """Scanned `.../encoderblock/...` arrays split into `.../encoderblock_<i>/...`.

    Returns the per-block tensors and, for each name made here, the stored name it came from
    (so errors name what is in the file). Other names pass through unchanged.
    """
    out, origin = {}, {}
    for name, value in tensors.items():
        for encoder in (IMAGE_ENCODER, TEXT_ENCODER):
            prefix = f"{encoder}/{SCANNED_BLOCK}/"
            if name.startswith(prefix) and value.ndim:
                rest = name[len(prefix):]
                for i in range(value.shape[0]):
                    split = f"{encoder}/{SCANNED_BLOCK}_{i}/{rest}"
                    out[split], origin[split] = value[i], f"{name}[{i}]"
                break
        else:
            out[name] = value
    return out, origin


def block_depth(names: list[str], encoder: str, source: str) -> int:
    """Number of `encoder/encoderblock_<i>` blocks; their indices must be 0..depth-1."""
    found = {int(m.group(2)) for n in names if (m := _BLOCK_RE.match(n)) and m.group(1) == encoder}
    if not found:
        raise CheckpointError(f"{source} has no {encoder}/encoderblock_0 (nor a scanned "
                              f"{encoder}/{SCANNED_BLOCK}); is this a big_vision SigLIP checkpoint?")
    if found != set(range(len(found))):
        missing = min(set(range(max(found) + 1)) - found)
        raise CheckpointError(f"{source} has blocks up to {encoder}/encoderblock_{max(found)} "
                              f"but no {encoder}/encoderblock_{missing}")
    return len(found)
