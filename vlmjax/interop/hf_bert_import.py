"""`--from hf` with a transformers BertModel directory: BERT as the text tower of a LiT / CLIP run.

A BERT checkpoint is a text tower only; the run's other parts come from
- `config`: a vlmjax config file ("path.py" or "path.py:arg"): the image tower (fresh, from
  its model.image section), the data, optimizer and training settings; and/or
- `image_from`: a vlmjax run directory (trained, or imported e.g. with `--from open_clip`)
  whose image tower and image projection (BatchNorm statistics included) are copied. Without
  `config` the run's whole config is the base; with both, their model.image sections and
  embed_dim must agree.
The text section becomes model.text.kind='bert' with the checkpoint's sizes (its pooler is
used when the checkpoint has one), the tokenizer its WordPiece vocabulary (tokenizer.kind=
'wordpiece'); the text projection, the temperature (and bias) start fresh from the config's
seed. Everything is checked (config.json, every tensor name and shape, the vocabulary against
the tokenizer, the image tower's tensors) before anything is written.
"""

import logging
import math
import os
from collections.abc import Mapping

import jax
import ml_collections
import numpy as np
from flax import nnx

from vlmjax.config import complete, load_config_file, select
from vlmjax.errors import CheckpointError, VlmjaxError
from vlmjax.interop import hf_bert_layout as layout
from vlmjax.interop import hf_files
from vlmjax.interop.model_shapes import variable_shapes
from vlmjax.interop.torch_layout import take_tensors
from vlmjax.interop.workdir_writer import write_workdir
from vlmjax.models.registry import get_family
from vlmjax.tokenizers import Tokenizer
from vlmjax.tokenizers.wordpiece import load_wordpiece
from vlmjax.train.run import flat_params, load_run

log = logging.getLogger(__name__)
# BertConfig.hidden_act -> model.text.hidden_act
HIDDEN_ACTS = {"gelu": "gelu", "gelu_new": "gelu_tanh", "gelu_pytorch_tanh": "gelu_tanh"}
# config.json keys that must keep these values (what else they build).
FIXED = {"position_embedding_type": (("absolute",), "relative position embeddings"),
         "is_decoder": ((False,), "a causal decoder"),
         "add_cross_attention": ((False,), "cross-attention layers")}
READ = ("vocab_size", "hidden_size", "num_hidden_layers", "num_attention_heads",
        "intermediate_size", "hidden_act", "max_position_embeddings", "type_vocab_size",
        "layer_norm_eps")
IMAGE_PATHS = ("image/", "image_proj/")


def _bert_text(hf: Mapping, name: str) -> dict:
    """model.text settings of a BertModel config.json (CheckpointError naming the key)."""
    if hf.get("model_type") != "bert":
        raise CheckpointError(f"{name} has model_type={hf.get('model_type')!r}; a BERT text tower "
                              "needs a BertModel directory (model_type 'bert')")
    for key, (allowed, what) in FIXED.items():
        if hf.get(key, allowed[0]) not in allowed:
            raise CheckpointError(f"{name}: {key}={hf[key]!r} builds {what}, which vlmjax's BERT "
                                  f"does not have; supported: {allowed[0]!r}")
    missing = [k for k in READ if k not in hf]
    if missing:
        raise CheckpointError(f"{name} has no {missing[0]}; is this a BertModel config.json?")
    if hf["hidden_act"] not in HIDDEN_ACTS:
        raise CheckpointError(f"{name}: hidden_act={hf['hidden_act']!r} is not supported; vlmjax's "
                              f"BERT has {', '.join(HIDDEN_ACTS)}")
    if hf["hidden_size"] % hf["num_attention_heads"]:
        raise CheckpointError(f"{name}: num_attention_heads={hf['num_attention_heads']} does not "
                              f"divide hidden_size={hf['hidden_size']}")
    return dict(kind="bert", width=int(hf["hidden_size"]), depth=int(hf["num_hidden_layers"]),
                heads=int(hf["num_attention_heads"]), mlp_dim=int(hf["intermediate_size"]),
                max_positions=int(hf["max_position_embeddings"]),
                type_vocab_size=int(hf["type_vocab_size"]), hidden_act=HIDDEN_ACTS[hf["hidden_act"]],
                ln_eps=float(hf["layer_norm_eps"]), vocab_size=int(hf["vocab_size"]))


def _base(config: str, image_run: object | None) -> ml_collections.ConfigDict:
    """The config the BERT text tower goes into (module doc)."""
    if not config and image_run is None:
        raise CheckpointError("a BERT checkpoint is a text tower only: give the image tower with "
                              "--image-from RUN (a vlmjax run) and/or a vlmjax config with "
                              "--config FILE.py (a fresh image tower)")
    if not config:
        return ml_collections.ConfigDict(image_run.config)
    c = complete(load_config_file(config))
    if image_run is not None:
        ours, theirs = _plain(c.model.to_dict()), _plain(image_run.config["model"])
        for key in ("embed_dim", "image"):
            if ours[key] != theirs[key]:
                raise CheckpointError(f"{config}: model.{key} differs from the image run's "
                                      f"({image_run.workdir}); use that run's model.{key}")
    return c


def _plain(value: object) -> object:
    """Tuples as lists, recursively (a saved config.json has lists where a config has tuples)."""
    if isinstance(value, Mapping):
        return {k: _plain(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [_plain(v) for v in value]
    return value


def _image_values(image_run: object, shapes: Mapping[str, tuple], source: str) -> dict:
    """The image tower's (and image projection's) variables of the run, every one required."""
    values = {k: v for k, v in flat_params(jax.device_get(image_run.weights)).items()
              if k.startswith(IMAGE_PATHS)}
    wanted = sorted(k for k in shapes if k.startswith(IMAGE_PATHS))
    for path in wanted:
        if path not in values:
            raise CheckpointError(f"{source} has no {path}; its image tower does not match the "
                                  "config's model.image")
        if values[path].shape != shapes[path]:
            raise CheckpointError(f"{source}: {path} has shape {values[path].shape} but the "
                                  f"config's model.image needs {shapes[path]}")
    extra = sorted(set(values) - set(wanted))
    if extra:
        raise CheckpointError(f"{source}: {extra[0]} maps to no variable of the config's image "
                              "tower; use the run's own model.image")
    return values


def _fresh_values(cfg: dict, vocab: int) -> dict[str, np.ndarray]:
    """Every variable of the model freshly initialised with the config's seed."""
    family = get_family(cfg["model"])
    model = family.build(cfg["model"], vocab, cfg["tokenizer"]["context_length"],
                         rngs=nnx.Rngs(cfg["seed"]))
    return flat_params(nnx.to_pure_dict(nnx.state(model)))


def _tokenizer(source: str, vocab: int) -> Tokenizer:
    try:
        tokenizer = load_wordpiece(source)
    except VlmjaxError as e:
        raise CheckpointError(f"{source}: no usable BERT tokenizer beside the weights ({e})") from e
    if tokenizer.vocab_size != vocab:
        raise CheckpointError(f"the tokenizer in {source} has {tokenizer.vocab_size} tokens but "
                              f"config.json has vocab_size={vocab} (tensor embeddings."
                              "word_embeddings.weight); use the model's own tokenizer files")
    return tokenizer


def import_bert(source: str, workdir: str, image_from: str = "", config: str = "") -> None:
    """The BertModel in `source` as the text tower of a run written to `workdir`."""
    text = _bert_text(hf_files.read_json(source, "config.json"), os.path.join(source, "config.json"))
    image_run = load_run(image_from, devices=jax.devices()[:1]) if image_from else None
    c = _base(config, image_run)
    select(c, "model.text.kind", "bert")
    c.model.text.update(text)
    c.model.scan_layers = False  # imported layers are unrolled (training may scan them)
    c.tokenizer.kind = "wordpiece"
    c.tokenizer.path = os.path.abspath(os.path.join(workdir, "tokenizer"))
    c.tokenizer.vocab_size = text["vocab_size"]
    if c.tokenizer.context_length > text["max_positions"]:
        raise CheckpointError(f"tokenizer.context_length={c.tokenizer.context_length} exceeds the "
                              f"checkpoint's max_position_embeddings={text['max_positions']}")
    tensors, heads = layout.strip_pretraining(hf_files.read_tensors(source))
    c.model.text.pooler = "pooler.dense.weight" in tensors
    tokenizer = _tokenizer(source, text["vocab_size"])
    cfg = c.to_dict()
    shapes = variable_shapes(cfg, text["vocab_size"])
    entries = layout.bert_entries(text["depth"], text["heads"], c.model.text.pooler)
    values = _fresh_values(cfg, text["vocab_size"])
    values.update(take_tensors(tensors, entries, shapes, source, "config.json",
                               layout.IGNORED_SUFFIXES))
    if image_run is not None:
        values.update(_image_values(image_run, shapes, image_from))
    if heads:
        log.info("left out %d pre-training head tensors (%s, ...): not part of the text tower",
                 len(heads), heads[0])
    if not math.isclose(text["ln_eps"], 1e-12):
        log.info("BERT LayerNorm epsilon %g (model.text.ln_eps)", text["ln_eps"])
    os.makedirs(workdir, exist_ok=True)
    tokenizer.save(c.tokenizer.path)
    write_workdir(c, values, text["vocab_size"], workdir, source)
    log.info("converted %s (BERT text tower, image tower %s) -> %s", source,
             f"from {image_from}" if image_from else "fresh", workdir)
