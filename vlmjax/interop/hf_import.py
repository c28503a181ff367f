"""`--from hf`: a Hugging Face CLIPModel directory -> a vlmjax run directory; a BertModel
directory becomes the text tower of a LiT / CLIP run (`hf_bert_import`, with `image_from` and/or
`config` giving the rest)."""

import logging
import os

import numpy as np

from vlmjax.errors import CheckpointError
from vlmjax.interop import hf_clip_layout as layout
from vlmjax.interop import hf_files
from vlmjax.interop.hf_bert_import import import_bert
from vlmjax.interop.hf_clip_config import OPENAI_MEAN, OPENAI_STD, vlmjax_config
from vlmjax.interop.torch_layout import take_tensors
from vlmjax.interop.workdir_writer import param_shapes, write_workdir

log = logging.getLogger(__name__)
PREPROCESSOR = "preprocessor_config.json"


def map_tensors(tensors: dict[str, np.ndarray], cfg: dict, vocab_size: int,
                source: str) -> dict[str, np.ndarray]:
    """{vlmjax param path: array} from HF tensors; every HF tensor must be used exactly once."""
    image, text = cfg["model"]["image"], cfg["model"]["text"]
    entries = layout.clip_entries(image["depth"], image["heads"], text["depth"], text["heads"])
    values = take_tensors(tensors, entries, param_shapes(cfg, vocab_size), source, "config.json",
                          layout.IGNORED_SUFFIXES)
    values.update({path: np.zeros((image["width"],), np.float32) for path in layout.ZERO_ONLY})
    return values


def _image_stats(source: str) -> tuple[tuple, tuple]:
    path = os.path.join(source, PREPROCESSOR)
    if not os.path.isfile(path):
        log.warning("no %s in %s: using OpenAI CLIP's image mean/std", PREPROCESSOR, source)
        return OPENAI_MEAN, OPENAI_STD
    pre = hf_files.read_json(source, PREPROCESSOR)
    return tuple(pre.get("image_mean", OPENAI_MEAN)), tuple(pre.get("image_std", OPENAI_STD))


def import_hf(source: str, workdir: str, image_from: str = "", config: str = "") -> None:
    """Converts the CLIPModel in `source` into a vlmjax run directory `workdir`; a BertModel
    into the text tower of a run whose image tower comes from run `image_from` and/or the
    vlmjax config file `config` (`hf_bert_import`)."""
    hf = hf_files.read_json(source, "config.json")
    if hf.get("model_type") == "bert":
        import_bert(source, workdir, image_from=image_from, config=config)
        return
    if image_from or config:
        raise CheckpointError(f"{source} holds a {hf.get('model_type')!r} model: --image-from "
                              "and --config are for a BERT text tower (model_type 'bert')")
    mean, std = _image_stats(source)
    # Validate the architecture before touching weights or writing anything.
    vlmjax_config(hf, mean, std)
    os.makedirs(workdir, exist_ok=True)
    tokenizer, kind, path = hf_files.store_tokenizer(
        source, os.path.abspath(os.path.join(workdir, "tokenizer")))
    config = vlmjax_config(hf, mean, std, tokenizer_kind=kind, tokenizer_path=path)
    vocab = config.tokenizer.vocab_size
    if tokenizer.vocab_size != vocab:
        raise CheckpointError(f"the tokenizer in {source} has {tokenizer.vocab_size} tokens but "
                              f"text_config.vocab_size is {vocab} (tensor text_model.embeddings."
                              "token_embedding.weight); use the model's own tokenizer files")
    values = map_tensors(hf_files.read_tensors(source), config.to_dict(), vocab, source)
    write_workdir(config, values, vocab, workdir, source)
    log.info("converted %s -> %s", source, workdir)
