"""Which open_clip state-dict tensor is which vlmjax parameter (ViT CLIP and CoCa).

open_clip's attention is torch's nn.MultiheadAttention: query, key and value are stacked in
`in_proj_weight` [3d, d] and `in_proj_bias` [3d] (parts 0, 1, 2 of a packed entry), except in
a CoCa pooler whose key/value width differs from its own, which stores `q_proj_weight`,
`k_proj_weight`, `v_proj_weight` (and still one `in_proj_bias`). Projections (`visual.proj`,
`text_projection`) are [in, out] matrices, as vlmjax's. The patch convolution has no bias:
vlmjax's `image/patch_bias` is imported as zeros.

CLIP keeps its text tower at the top level (token_embedding, transformer, ...); CustomTextCLIP
and CoCa under `text.`. CoCa's text tower has `text.positional_embedding` with one row more than
the context (the appended CLS's position) and `text.cls_emb`; `fold_cls_position` turns the two
into vlmjax's pos_embed [context, d] and a CLS token that carries its position embedding.
"""

import numpy as np

from vlmjax.errors import CheckpointError
from vlmjax.interop.torch_layout import Entry

ZERO_ONLY = ("image/patch_bias",)
QKV = ("query", "key", "value")


def _attention(src: str, ours: str, heads: int, packed: bool = True) -> list[Entry]:
    """An nn.MultiheadAttention at `src` -> a layers.Attention at `ours`."""
    out = []
    for part, name in enumerate(QKV):
        out.append(Entry(f"{src}.in_proj_weight", f"{ours}/{name}", "qkv", heads, part, 3)
                   if packed else Entry(f"{src}.{name[0]}_proj_weight", f"{ours}/{name}", "qkv",
                                        heads))
        out.append(Entry(f"{src}.in_proj_bias", f"{ours}/{name}_bias", "qkv_bias", heads, part, 3))
    return out + [Entry(f"{src}.out_proj.weight", f"{ours}/out", "attn_out", heads),
                  Entry(f"{src}.out_proj.bias", f"{ours}/out_bias", "same")]


def _norm(src: str, ours: str) -> list[Entry]:
    return [Entry(f"{src}.weight", f"{ours}/scale", "same"),
            Entry(f"{src}.bias", f"{ours}/bias", "same")]


def _mlp(src: str, ours: str) -> list[Entry]:
    return [Entry(f"{src}.c_fc.weight", f"{ours}/fc1", "linear"),
            Entry(f"{src}.c_fc.bias", f"{ours}/fc1_bias", "same"),
            Entry(f"{src}.c_proj.weight", f"{ours}/fc2", "linear"),
            Entry(f"{src}.c_proj.bias", f"{ours}/fc2_bias", "same")]


def _blocks(src: str, ours: str, depth: int, heads: int) -> list[Entry]:
    """open_clip Transformer.resblocks -> layers.Encoder layers (unrolled)."""
    out = []
    for i in range(depth):
        s, o = f"{src}.resblocks.{i}", f"{ours}/layers/{i}"
        out += [*_norm(f"{s}.ln_1", f"{o}/ln_attn"), *_attention(f"{s}.attn", f"{o}/attn", heads),
                *_norm(f"{s}.ln_2", f"{o}/ln_mlp"), *_mlp(f"{s}.mlp", f"{o}/mlp")]
    return out


def _vit_trunk(image: dict, heads: int) -> list[Entry]:
    out = [Entry("visual.conv1.weight", "image/patch_embed", "patch"),
           Entry("visual.class_embedding", "image/cls_token", "same"),
           Entry("visual.positional_embedding", "image/pos_embed", "same"),
           *_blocks("visual.transformer", "image/encoder", image["depth"], heads)]
    if image["ln_pre"]:
        out += _norm("visual.ln_pre", "image/ln_pre")
    return out


def _text_tower(prefix: str, ours: str, text: dict, depth: int) -> list[Entry]:
    return [Entry(f"{prefix}token_embedding.weight", f"{ours}/token_embed", "same"),
            Entry(f"{prefix}positional_embedding", f"{ours}/pos_embed", "same"),
            *_blocks(f"{prefix}transformer", f"{ours}/encoder", depth, text["heads"]),
            *_norm(f"{prefix}ln_final", f"{ours}/ln_final"),
            Entry(f"{prefix}text_projection", f"{ours}_proj/kernel", "same")]


def clip_text_entries(model: dict, text_prefix: str) -> list[Entry]:
    """The text tower and temperature (and bias) tensors of an open_clip CLIP (text tower under
    `text_prefix`: "" or "text."), whatever its image tower."""
    text = model["text"]
    out = [Entry("logit_scale", "logit_scale", "same"),
           *_text_tower(text_prefix, "text", text, text["depth"])]
    if model["use_logit_bias"]:
        out.append(Entry("logit_bias", "logit_bias", "same"))
    return out


def clip_entries(model: dict, text_prefix: str) -> list[Entry]:
    """Every tensor of an open_clip ViT CLIP (text tower under `text_prefix`: "" or "text.")."""
    image = model["image"]
    return [*_vit_trunk(image, image["heads"]), *_norm("visual.ln_post", "image/ln_post"),
            Entry("visual.proj", "image_proj/kernel", "same"),
            *clip_text_entries(model, text_prefix)]


def coca_entries(model: dict, pooler_packed: bool) -> list[Entry]:
    """Every tensor of an open_clip CoCa (open_clip's pooler and decoder layout)."""
    image, text, coca = model["image"], model["text"], model["coca"]
    out = [Entry("logit_scale", "logit_scale", "same"), *_vit_trunk(image, image["heads"]),
           Entry("visual.attn_pool.query", "image_head/pool/probe", "same"),
           *_norm("visual.attn_pool.ln_q", "image_head/pool/ln_q"),
           *_norm("visual.attn_pool.ln_k", "image_head/pool/ln_k"),
           *_attention("visual.attn_pool.attn", "image_head/pool/attn", coca["pooler_heads"],
                       pooler_packed),
           *_norm("visual.ln_post", "image_head/ln_post"),
           Entry("visual.proj", "image_head/proj", "same"),
           *_text_tower("text.", "text", text, text["depth"]),
           Entry("text.cls_emb", "text/cls_token", "same"),
           *_norm("text_decoder.ln_final", "decoder/ln_final"),
           Entry("text_decoder.text_projection", "decoder/head", "same")]
    heads = text["heads"]
    for i in range(coca["multimodal_depth"]):
        s, x, o = f"text_decoder.resblocks.{i}", f"text_decoder.cross_attn.{i}", f"decoder/layers/{i}"
        out += [*_norm(f"{s}.ln_1", f"{o}/ln_self"), *_attention(f"{s}.attn", f"{o}/self_attn", heads),
                *_norm(f"{s}.ln_2", f"{o}/ln_self_mlp"), *_mlp(f"{s}.mlp", f"{o}/self_mlp"),
                *_norm(f"{x}.ln_1", f"{o}/ln_cross"), *_norm(f"{x}.ln_1_kv", f"{o}/ln_image"),
                *_attention(f"{x}.attn", f"{o}/cross_attn", heads),
                *_norm(f"{x}.ln_2", f"{o}/ln_mlp"), *_mlp(f"{x}.mlp", f"{o}/mlp")]
    return out


def fold_cls_position(tensors: dict[str, np.ndarray], context_length: int, source: str) -> None:
    """CoCa: moves row `context_length` of text.positional_embedding into text.cls_emb, in place.

    open_clip adds position embedding L (L = the text length, the context length for tokenizer
    output) to the CLS it appends; vlmjax's CLS has no position embedding of its own, so it
    carries that row. Exact whenever texts are padded to the context length, as vlmjax's
    tokenizers do.
    """
    pos, cls = "text.positional_embedding", "text.cls_emb"
    for name in (pos, cls):
        if name not in tensors:
            raise CheckpointError(f"{source} has no tensor {name}; is it a CoCa checkpoint?")
    rows = tensors[pos].shape[0]
    if rows != context_length + 1:
        raise CheckpointError(f"{source}: tensor {pos} has shape {tensors[pos].shape} but a CoCa "
                              f"with text_cfg.context_length={context_length} has "
                              f"{context_length + 1} rows (vlmjax text/pos_embed + the CLS's)")
    if tensors[cls].shape != tensors[pos].shape[1:]:
        raise CheckpointError(f"{source}: tensor {cls} has shape {tensors[cls].shape} but "
                              f"{pos} has width {tensors[pos].shape[1:]} (vlmjax text/cls_token)")
    tensors[cls] = tensors[cls] + tensors[pos][context_length]
    tensors[pos] = tensors[pos][:context_length]
