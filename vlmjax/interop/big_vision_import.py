"""`--from big_vision`: a big_vision SigLIP two-tower `.npz` + its SentencePiece model -> a run.

Supported: big_vision's `two_towers` with the `vit` image model (learned position embedding,
MAP head, optional `img/head`) and the `text_transformer` text model with pool_type "last"
(optional `txt/head`), scanned or unscanned encoders, `t` and optional `b`. Sizes come from
the tensor shapes; what the weights cannot tell (text pooling, activation, LayerNorm epsilon,
tokenization) is big_vision's SigLIP setting: pool_type "last", flax's tanh GELU, epsilon 1e-6,
`tokenize(eos="sticky", pad_value=1)` with lowercasing, images value_range(-1, 1).
"""

import logging
import math
import os
import zipfile

import ml_collections
import numpy as np

from vlmjax.errors import CheckpointError
from vlmjax.interop import big_vision_layout as layout
from vlmjax.interop.workdir_writer import imported_config, param_shapes, write_workdir
from vlmjax.tokenizers.sentencepiece_tokenizer import MODEL_FILE, SentencePieceTokenizer

log = logging.getLogger(__name__)

# Sub-trees that hold the parameters in full training checkpoints (big_vision's load_params);
# everything outside them (optimizer state) is not a parameter.
PARAM_PREFIXES = ("params/", "opt/target/")
DEFAULT_TOKENIZER = "sentencepiece.model"  # looked for beside the .npz without --tokenizer
PAD_ID = 1  # SigLIP's tokenize(..., pad_value=1): c4_en's and mc4's EOS
NORM_EPS = 1e-6  # flax nn.LayerNorm
# value_range(-1, 1): x / 255 * 2 - 1 = (x / 255 - 0.5) / 0.5
IMAGE_MEAN = IMAGE_STD = 0.5

# Tensors of big_vision variants vlmjax cannot represent exactly: name -> why.
UNSUPPORTED = {
    "img/cls": "ViT pool_type 'tok' (big_vision adds the position embedding before the class "
               "token; vlmjax adds it to both)",
    "img/pre_logits/kernel": "ViT rep_size (a tanh pre-logits layer)",
    "txt/MAPHead_0/probe": "text pool_type 'map'",
}


def _recover_dtype(x: np.ndarray) -> np.ndarray:
    """float32 of a stored array; numpy saves bfloat16 as 2-byte void (big_vision's recover_dtype)."""
    if x.dtype.kind == "V" and x.dtype.itemsize == 2:
        import ml_dtypes
        x = x.view(ml_dtypes.bfloat16)
    return np.asarray(x, np.float32)


def read_npz(path: str) -> dict[str, np.ndarray]:
    """The parameters of a big_vision .npz as {"img/...": float32 array}, prefixes removed."""
    if not os.path.isfile(path):
        raise CheckpointError(f"{path} does not exist; --source must be a big_vision .npz "
                              "checkpoint (e.g. webli_en_b16_224_63724782.npz)")
    try:
        with np.load(path, allow_pickle=False) as npz:
            stored = {name: npz[name] for name in npz.files}
    except (OSError, ValueError, zipfile.BadZipFile) as e:
        raise CheckpointError(f"cannot read {path} as a .npz checkpoint: {e}") from e
    for prefix in PARAM_PREFIXES:
        inside = {k[len(prefix):]: v for k, v in stored.items() if k.startswith(prefix)}
        if inside:
            log.info("%s: using the %d arrays under %s (%d others, e.g. optimizer state, are "
                     "not parameters)", path, len(inside), prefix, len(stored) - len(inside))
            stored = inside
            break
    return {k: _recover_dtype(v) for k, v in stored.items()}


def _check_supported(tensors: dict[str, np.ndarray], source: str) -> None:
    """Refuses, by tensor name, the big_vision variants that would not import exactly."""
    for name, what in UNSUPPORTED.items():
        if name in tensors:
            raise CheckpointError(f"{source} has {name}: {what} is not supported by vlmjax")
    for name, what in (("img/MAPHead_0/probe", "an image tower without a MAP head (pool_type "
                        "gap/0/none cannot be told apart from the weights)"),
                       ("img/pos_embedding", "a ViT without learned position embeddings "
                        "(posemb 'sincos2d')"),
                       ("t", "a two-tower model without its temperature t")):
        if name not in tensors:
            raise CheckpointError(f"{source} has no {name}: {what} is not supported; "
                                  "--from big_vision reads SigLIP two-tower checkpoints")


def _shape(tensors: dict[str, np.ndarray], name: str, ndim: int, source: str) -> tuple[int, ...]:
    if name not in tensors:
        raise CheckpointError(f"{source} has no tensor {name}; is this a big_vision SigLIP "
                              "two-tower checkpoint?")
    shape = tensors[name].shape
    if len(shape) != ndim:
        raise CheckpointError(f"{source}: tensor {name} has shape {shape}, expected {ndim} axes")
    return shape


def _tower_sizes(tensors: dict[str, np.ndarray], encoder: str, source: str) -> dict[str, int]:
    """depth, heads (from the query kernel [w, heads, head_dim]) and mlp_dim of one encoder."""
    block = f"{encoder}/encoderblock_0"
    _, heads, _ = _shape(tensors, f"{block}/MultiHeadDotProductAttention_0/query/kernel", 3, source)
    _, mlp_dim = _shape(tensors, f"{block}/MlpBlock_0/Dense_0/kernel", 2, source)
    return {"depth": layout.block_depth(list(tensors), encoder, source), "heads": heads,
            "mlp_dim": mlp_dim}


def _head_dim(tensors: dict[str, np.ndarray], tower: str, width: int, source: str
              ) -> tuple[str, int]:
    """(model.<tower>.proj, output width) of `tower`'s optional Dense head."""
    if f"{tower}/head/kernel" not in tensors:
        return "none", width
    return "linear_bias", _shape(tensors, f"{tower}/head/kernel", 2, source)[1]


def vlmjax_config(tensors: dict[str, np.ndarray], source: str) -> ml_collections.ConfigDict:
    """The vlmjax config of the SigLIP in `tensors` (per-block names, see layout.unscan)."""
    _check_supported(tensors, source)
    p, p2, channels, width = _shape(tensors, "img/embedding/kernel", 4, source)
    if p != p2:
        raise CheckpointError(f"{source}: img/embedding/kernel has non-square patches {p}x{p2}")
    _, num_patches, _ = _shape(tensors, "img/pos_embedding", 3, source)
    grid = math.isqrt(num_patches)
    if grid * grid != num_patches:
        raise CheckpointError(f"{source}: img/pos_embedding has {num_patches} positions, not a "
                              "square grid; only square images are supported")
    vocab, text_width = _shape(tensors, "txt/Embed_0/embedding", 2, source)
    _, context_length, _ = _shape(tensors, "txt/pos_embedding", 3, source)
    image_proj, image_out = _head_dim(tensors, "img", width, source)
    text_proj, text_out = _head_dim(tensors, "txt", text_width, source)
    if image_out != text_out:
        raise CheckpointError(f"{source}: the image tower outputs {image_out} features "
                              f"({'img/head/kernel' if image_proj != 'none' else 'no img/head'}) "
                              f"but the text tower {text_out} "
                              f"({'txt/head/kernel' if text_proj != 'none' else 'no txt/head'})")
    c = imported_config("sentencepiece", "", context_length, vocab, (IMAGE_MEAN,) * channels,
                        (IMAGE_STD,) * channels)
    c.model.name = "two_tower"
    c.model.activation = "gelu_tanh"
    c.model.norm_eps = NORM_EPS
    c.model.embed_dim = int(image_out)
    c.model.image.update(variant="", image_size=grid * p, channels=channels, patch_size=p,
                         width=width, pool="map", ln_pre=False, proj=image_proj,
                         **_tower_sizes(tensors, layout.IMAGE_ENCODER, source))
    c.model.text.update(width=text_width, causal=False, pool="last", proj=text_proj,
                        **_tower_sizes(tensors, layout.TEXT_ENCODER, source))
    t = float(tensors["t"].reshape(-1)[0])
    c.model.use_logit_bias = "b" in tensors
    c.objective.name = "siglip" if c.model.use_logit_bias else "clip"
    c.model.logit_scale_init = math.log(10.0)  # SigLIP's init, for training from scratch only
    # big_vision does not clamp the temperature: keep the imported exp(t) below the clamp.
    c.model.max_logit_scale = max(c.model.max_logit_scale, math.ceil(math.exp(t)))
    return c


def map_tensors(tensors: dict[str, np.ndarray], origin: dict[str, str], cfg: dict,
                source: str) -> dict[str, np.ndarray]:
    """{vlmjax param path: array}; every big_vision tensor must be used exactly once."""
    model = cfg["model"]
    entries = layout.siglip_entries(model["image"]["depth"], model["text"]["depth"],
                                    model["image"]["proj"] != "none",
                                    model["text"]["proj"] != "none", model["use_logit_bias"])
    known = {e.bv for e in entries}
    for name in sorted(tensors):
        if name not in known:
            raise CheckpointError(f"{source}: tensor {origin.get(name, name)} (shape "
                                  f"{tensors[name].shape}) maps to no vlmjax parameter; only "
                                  "big_vision SigLIP two-tower checkpoints (vit with MAP head + "
                                  "text_transformer) convert")
    shapes = param_shapes(cfg, cfg["tokenizer"]["vocab_size"])
    values = {}
    for entry in entries:
        name = origin.get(entry.bv, entry.bv)
        if entry.bv not in tensors:
            raise CheckpointError(f"{source} has no tensor {name} (for {entry.ours})")
        want = layout.bv_shape(shapes[entry.ours], entry)
        if tensors[entry.bv].shape != want:
            raise CheckpointError(f"{source}: tensor {name} has shape {tensors[entry.bv].shape} "
                                  f"but the model its other tensors describe needs {want} "
                                  f"(vlmjax {entry.ours} {shapes[entry.ours]})")
        values[entry.ours] = layout.to_ours(tensors[entry.bv], entry)
    return values


def _tokenizer(path: str, vocab: int) -> SentencePieceTokenizer:
    """The SentencePiece model at `path` with SigLIP's tokenization conventions."""
    if not os.path.isfile(path):
        raise CheckpointError(f"tokenizer file {path} does not exist; pass --tokenizer "
                              "PATH.model, the SentencePiece model the checkpoint was trained "
                              "with (SigLIP English: c4_en = gs://t5-data/vocabs/cc_en.32000/"
                              "sentencepiece.model)")
    tok = SentencePieceTokenizer(path, add_eos=True, ascii_lower=True, pad_id=PAD_ID)
    if tok.vocab_size != vocab:
        raise CheckpointError(f"tokenizer file {path} has {tok.vocab_size} pieces but tensor "
                              f"txt/Embed_0/embedding has {vocab} rows; pass the tokenizer the "
                              "checkpoint was trained with")
    if tok.sp.eos_id() != PAD_ID:
        log.warning("%s: EOS is id %d, but SigLIP pads with id %d (its c4_en/mc4 EOS); padding "
                    "as SigLIP does", path, tok.sp.eos_id(), PAD_ID)
    return tok


def import_big_vision(source: str, workdir: str, tokenizer: str | None = None) -> None:
    """Converts the big_vision SigLIP `.npz` at `source` into a vlmjax run directory `workdir`."""
    tensors, origin = layout.unscan(read_npz(source))
    if "txt/Encoder_0/pos_embedding" in tensors:
        # Older text towers added a second position embedding inside the encoder; big_vision's
        # loader folds it into txt/pos_embedding, and so does this.
        extra = tensors.pop("txt/Encoder_0/pos_embedding")
        tensors["txt/pos_embedding"] = tensors.get("txt/pos_embedding", 0) + extra
    # Everything is checked (architecture, every tensor, tokenizer) before anything is written.
    config = vlmjax_config(tensors, source)
    tok = _tokenizer(tokenizer or os.path.join(os.path.dirname(os.path.abspath(source)),
                                               DEFAULT_TOKENIZER), config.tokenizer.vocab_size)
    values = map_tensors(tensors, origin, config.to_dict(), source)
    tok_dir = os.path.abspath(os.path.join(workdir, "tokenizer"))
    tok.save(tok_dir)  # the .model file byte for byte, and the conventions in its spec
    config.tokenizer.path = os.path.join(tok_dir, MODEL_FILE)
    write_workdir(config, values, config.tokenizer.vocab_size, workdir, source)
    log.info("converted %s -> %s", source, workdir)
