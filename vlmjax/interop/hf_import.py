"""`--from hf`: a Hugging Face CLIPModel directory -> a vlmjax run directory."""

import logging
import os

import numpy as np

from vlmjax.errors import CheckpointError
from vlmjax.interop import hf_clip_layout as layout
from vlmjax.interop import hf_files
from vlmjax.interop.hf_clip_config import OPENAI_MEAN, OPENAI_STD, vlmjax_config
from vlmjax.interop.workdir_writer import write_workdir
from vlmjax.tokenizers import Tokenizer
from vlmjax.tokenizers.clip_bpe import ClipBpeTokenizer
from vlmjax.tokenizers.hf_tokenizer import HFTokenizer
from vlmjax.train.param_groups import map_with_path

log = logging.getLogger(__name__)
PREPROCESSOR = "preprocessor_config.json"


def param_shapes(cfg: dict, vocab_size: int) -> dict[str, tuple[int, ...]]:
    """{param path: shape} of the model `cfg` describes (traced abstractly, no memory)."""
    from flax import nnx

    from vlmjax.train.state import model_builder
    build = model_builder(cfg, vocab_size, cfg["tokenizer"]["context_length"])
    abstract = nnx.to_pure_dict(nnx.state(nnx.eval_shape(lambda: build(nnx.Rngs(0)))))
    flat = {}
    map_with_path(lambda path, leaf: flat.__setitem__(path, tuple(leaf.shape)), abstract)
    return flat


def map_tensors(tensors: dict[str, np.ndarray], cfg: dict, vocab_size: int,
                source: str) -> dict[str, np.ndarray]:
    """{vlmjax param path: array} from HF tensors; every HF tensor must be used exactly once."""
    shapes = param_shapes(cfg, vocab_size)
    image, text = cfg["model"]["image"], cfg["model"]["text"]
    entries = layout.clip_entries(image["depth"], image["heads"], text["depth"], text["heads"])
    known = {e.hf for e in entries}
    for name in sorted(tensors):
        if name not in known and not name.endswith(layout.IGNORED_SUFFIXES):
            raise CheckpointError(f"{source}: tensor {name} (shape {tensors[name].shape}) maps to "
                                  "no vlmjax parameter; this is not a plain CLIPModel or its "
                                  "config.json does not match its weights")
    values = {}
    for entry in entries:
        if entry.hf not in tensors:
            raise CheckpointError(f"{source} has no tensor {entry.hf} (for {entry.ours}); the "
                                  "weights do not match config.json")
        want = layout.hf_shape(shapes[entry.ours], entry)
        if tensors[entry.hf].shape != want:
            raise CheckpointError(f"{source}: tensor {entry.hf} has shape "
                                  f"{tensors[entry.hf].shape} but config.json implies {want} "
                                  f"(vlmjax {entry.ours} {shapes[entry.ours]})")
        values[entry.ours] = layout.to_ours(tensors[entry.hf], entry)
    width = image["width"]
    values.update({path: np.zeros((width,), np.float32) for path in layout.ZERO_ONLY})
    return values


def _image_stats(source: str) -> tuple[tuple, tuple]:
    path = os.path.join(source, PREPROCESSOR)
    if not os.path.isfile(path):
        log.warning("no %s in %s: using OpenAI CLIP's image mean/std", PREPROCESSOR, source)
        return OPENAI_MEAN, OPENAI_STD
    pre = hf_files.read_json(source, PREPROCESSOR)
    return tuple(pre.get("image_mean", OPENAI_MEAN)), tuple(pre.get("image_std", OPENAI_STD))


def _tokenizer(source: str, directory: str) -> tuple[Tokenizer, str]:
    """The run's tokenizer stored in `directory` (original files kept beside), and its kind."""
    kind = hf_files.copy_tokenizer_files(source, directory)
    if kind == "clip_bpe":
        tok = ClipBpeTokenizer.from_path(directory)
    else:
        tok = HFTokenizer.from_file(os.path.join(directory, hf_files.TOKENIZER_JSON),
                                    clip_clean=True, source="hf_json")
    tok.save(directory)
    return tok, kind


def import_hf(source: str, workdir: str) -> None:
    """Converts the CLIPModel in `source` into a vlmjax run directory `workdir`."""
    hf = hf_files.read_json(source, "config.json")
    mean, std = _image_stats(source)
    # Validate the architecture before touching weights or writing anything.
    vlmjax_config(hf, mean, std)
    os.makedirs(workdir, exist_ok=True)
    tok_dir = os.path.abspath(os.path.join(workdir, "tokenizer"))
    tokenizer, kind = _tokenizer(source, tok_dir)
    config = vlmjax_config(hf, mean, std, tokenizer_kind=kind,
                           tokenizer_path=tok_dir if kind == "clip_bpe" else
                           os.path.join(tok_dir, hf_files.TOKENIZER_JSON))
    vocab = config.tokenizer.vocab_size
    if tokenizer.vocab_size != vocab:
        raise CheckpointError(f"the tokenizer in {source} has {tokenizer.vocab_size} tokens but "
                              f"text_config.vocab_size is {vocab} (tensor text_model.embeddings."
                              "token_embedding.weight); use the model's own tokenizer files")
    values = map_tensors(hf_files.read_tensors(source), config.to_dict(), vocab, source)
    write_workdir(config, values, vocab, workdir, source)
    log.info("converted %s -> %s", source, workdir)
