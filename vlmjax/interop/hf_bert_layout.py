"""Which transformers BertModel tensor is which parameter of vlmjax's BERT text tower (text/...).

BertModel keeps its tensors at the top level (embeddings., encoder.layer.N., pooler.); the
BertFor* heads of pre-training checkpoints (BertForPreTraining, BertForMaskedLM: the hub's
bert-base-uncased) put them under "bert." beside their "cls." heads, which are not part of the
text tower and are left out. Linear weights are [out, in]; attention projections map to
[width, heads, head_dim] like every vlmjax attention.
"""

from collections.abc import Mapping

import numpy as np

from vlmjax.interop.torch_layout import Entry

PREFIX = "bert."
HEADS_PREFIX = "cls."  # pre-training heads (masked LM, next sentence): not the text tower
IGNORED_SUFFIXES = ("position_ids",)  # a buffer older checkpoints saved


def strip_pretraining(tensors: Mapping[str, np.ndarray]) -> tuple[dict[str, np.ndarray], list[str]]:
    """(the BertModel tensors, the names of pre-training head tensors left out)."""
    if not any(k.startswith(PREFIX) for k in tensors):
        return dict(tensors), []
    heads = sorted(k for k in tensors if k.startswith(HEADS_PREFIX))
    return {k.removeprefix(PREFIX): v for k, v in tensors.items()
            if not k.startswith(HEADS_PREFIX)}, heads


def _ln(src: str, ours: str) -> list[Entry]:
    return [Entry(f"{src}.weight", f"{ours}/scale", "same"),
            Entry(f"{src}.bias", f"{ours}/bias", "same")]


def bert_entries(depth: int, heads: int, pooler: bool) -> list[Entry]:
    """Every tensor of a BertModel with `depth` layers (and its pooler when `pooler`)."""
    out = [Entry("embeddings.word_embeddings.weight", "text/token_embed", "same"),
           Entry("embeddings.position_embeddings.weight", "text/pos_embed", "same"),
           Entry("embeddings.token_type_embeddings.weight", "text/type_embed", "same"),
           *_ln("embeddings.LayerNorm", "text/ln_embed")]
    for i in range(depth):
        s, o = f"encoder.layer.{i}", f"text/layers/{i}"
        for name in ("query", "key", "value"):
            out += [Entry(f"{s}.attention.self.{name}.weight", f"{o}/attn/{name}", "qkv", heads),
                    Entry(f"{s}.attention.self.{name}.bias", f"{o}/attn/{name}_bias", "qkv_bias",
                          heads)]
        out += [Entry(f"{s}.attention.output.dense.weight", f"{o}/attn/out", "attn_out", heads),
                Entry(f"{s}.attention.output.dense.bias", f"{o}/attn/out_bias", "same"),
                *_ln(f"{s}.attention.output.LayerNorm", f"{o}/ln_attn"),
                Entry(f"{s}.intermediate.dense.weight", f"{o}/mlp/fc1", "linear"),
                Entry(f"{s}.intermediate.dense.bias", f"{o}/mlp/fc1_bias", "same"),
                Entry(f"{s}.output.dense.weight", f"{o}/mlp/fc2", "linear"),
                Entry(f"{s}.output.dense.bias", f"{o}/mlp/fc2_bias", "same"),
                *_ln(f"{s}.output.LayerNorm", f"{o}/ln_mlp")]
    if pooler:
        out += [Entry("pooler.dense.weight", "text/pooler", "linear"),
                Entry("pooler.dense.bias", "text/pooler_bias", "same")]
    return out
