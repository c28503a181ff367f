"""Which Hugging Face CLIPModel tensor is which vlmjax parameter, and how its layout differs.

One table serves both directions (import and export), so they cannot drift apart. Each entry
names the HF key, the vlmjax path ("image/encoder/layers/0/attn/query") and a layout kind
(torch_layout.py lists the kinds).

HF CLIP's patch convolution has no bias: vlmjax's `image/patch_bias` is zero on import, and on
export it is folded into the position embeddings of the patch tokens (`fold_patch_bias`), which
is exact because the bias reaches every patch token and nothing else.

Text pooling agrees: HF pools at the first `eos_token_id` (or at argmax of the ids for configs
with the old eos id 2), vlmjax at the last real token of the mask; with CLIP BPE, whose
end-of-text id is the largest and only appears last, both are the same position.
"""

import numpy as np

from vlmjax.interop.torch_layout import Entry

# HF buffers that are not parameters (older checkpoints saved them).
IGNORED_SUFFIXES = ("embeddings.position_ids",)
# vlmjax parameters that HF CLIP does not have; imported as zeros (exported by fold_patch_bias).
ZERO_ONLY = ("image/patch_bias",)
PATCH_BIAS = "image/patch_bias"
POSITION_KEY = "vision_model.embeddings.position_embedding.weight"


def fold_patch_bias(position: np.ndarray, patch_bias: np.ndarray) -> np.ndarray:
    """HF position embeddings [1 + patches, d] with the patch bias added to the patch rows.

    vlmjax computes (patch @ W + patch_bias) + pos; HF has no patch bias, so patch_bias moves
    into pos for the patch tokens only: row 0 is the class token, which the bias never reaches.
    """
    if position.ndim != 2 or position.shape[1:] != patch_bias.shape:
        raise ValueError(f"position embeddings {position.shape} do not fit a patch bias "
                         f"{patch_bias.shape}")
    out = np.array(position, np.float32)
    out[1:] += patch_bias
    return out


def _layer_entries(hf_prefix: str, our_prefix: str, depth: int, heads: int) -> list[Entry]:
    out = []
    for i in range(depth):
        hf, ours = f"{hf_prefix}.encoder.layers.{i}", f"{our_prefix}/encoder/layers/{i}"
        for name, proj in (("query", "q_proj"), ("key", "k_proj"), ("value", "v_proj")):
            out.append(Entry(f"{hf}.self_attn.{proj}.weight", f"{ours}/attn/{name}", "qkv", heads))
            out.append(Entry(f"{hf}.self_attn.{proj}.bias", f"{ours}/attn/{name}_bias",
                             "qkv_bias", heads))
        out += [
            Entry(f"{hf}.self_attn.out_proj.weight", f"{ours}/attn/out", "attn_out", heads),
            Entry(f"{hf}.self_attn.out_proj.bias", f"{ours}/attn/out_bias", "same"),
            Entry(f"{hf}.layer_norm1.weight", f"{ours}/ln_attn/scale", "same"),
            Entry(f"{hf}.layer_norm1.bias", f"{ours}/ln_attn/bias", "same"),
            Entry(f"{hf}.layer_norm2.weight", f"{ours}/ln_mlp/scale", "same"),
            Entry(f"{hf}.layer_norm2.bias", f"{ours}/ln_mlp/bias", "same"),
            Entry(f"{hf}.mlp.fc1.weight", f"{ours}/mlp/fc1", "linear"),
            Entry(f"{hf}.mlp.fc1.bias", f"{ours}/mlp/fc1_bias", "same"),
            Entry(f"{hf}.mlp.fc2.weight", f"{ours}/mlp/fc2", "linear"),
            Entry(f"{hf}.mlp.fc2.bias", f"{ours}/mlp/fc2_bias", "same"),
        ]
    return out


def clip_entries(image_depth: int, image_heads: int, text_depth: int, text_heads: int
                 ) -> list[Entry]:
    """Every tensor of a HF CLIPModel with these depths and head counts."""
    v, t = "vision_model", "text_model"
    return [
        Entry("logit_scale", "logit_scale", "same"),
        Entry(f"{v}.embeddings.class_embedding", "image/cls_token", "same"),
        Entry(f"{v}.embeddings.patch_embedding.weight", "image/patch_embed", "patch"),
        Entry(f"{v}.embeddings.position_embedding.weight", "image/pos_embed", "same"),
        Entry(f"{v}.pre_layrnorm.weight", "image/ln_pre/scale", "same"),
        Entry(f"{v}.pre_layrnorm.bias", "image/ln_pre/bias", "same"),
        *_layer_entries(v, "image", image_depth, image_heads),
        Entry(f"{v}.post_layernorm.weight", "image/ln_post/scale", "same"),
        Entry(f"{v}.post_layernorm.bias", "image/ln_post/bias", "same"),
        Entry("visual_projection.weight", "image_proj/kernel", "linear"),
        Entry(f"{t}.embeddings.token_embedding.weight", "text/token_embed", "same"),
        Entry(f"{t}.embeddings.position_embedding.weight", "text/pos_embed", "same"),
        *_layer_entries(t, "text", text_depth, text_heads),
        Entry(f"{t}.final_layer_norm.weight", "text/ln_final/scale", "same"),
        Entry(f"{t}.final_layer_norm.bias", "text/ln_final/bias", "same"),
        Entry("text_projection.weight", "text_proj/kernel", "linear"),
    ]
