"""`--from open_clip`: an open_clip checkpoint and its model config -> a vlmjax run directory.

--source is a state-dict file (open_clip_model.safetensors, open_clip_pytorch_model.bin, or a
training checkpoint epoch_N.pt: {"state_dict": ...} with DataParallel's "module." prefixes) or a
directory holding one under open_clip's names (a Hugging Face hub open_clip repository).
--model-config is open_clip's model-config JSON (model_configs/<name>.json); without it the
open_clip_config.json beside the checkpoint is read. .safetensors needs no PyTorch.

The tokenizer is CLIP BPE, taken from beside the checkpoint (vocab.json + merges.txt as hub
repositories carry it, or open_clip's bpe_simple_vocab_16e6.txt.gz), else from an installed
open-clip-torch package; the run stores its own copy.
"""

import logging
import os
import shutil
from collections.abc import Mapping

import numpy as np

from vlmjax.errors import CheckpointError
from vlmjax.interop import hf_files
from vlmjax.interop import open_clip_layout as layout
from vlmjax.interop.model_shapes import variable_shapes
from vlmjax.interop.open_clip_config import OpenClipModel, vlmjax_config
from vlmjax.interop.open_clip_resnet import IGNORED_SUFFIXES, resnet_entries
from vlmjax.interop.torch_layout import take_tensors
from vlmjax.interop.workdir_writer import write_workdir
from vlmjax.tokenizers import Tokenizer, clip_bpe

log = logging.getLogger(__name__)
# Checkpoint names in a directory, in order of preference (safetensors needs no torch).
CHECKPOINTS = ("open_clip_model.safetensors", "open_clip_pytorch_model.bin",
               "open_clip_pytorch_model.pt", "open_clip_pytorch_model.pth")
CONFIG = "open_clip_config.json"
HF_TOKENIZER_FILES = (*hf_files.TOKENIZER_FILES, hf_files.TOKENIZER_JSON)
SCALARS = ("logit_scale", "logit_bias")  # [1] with open_clip's nonscalar_logit_scale


def find_checkpoint(source: str) -> str:
    """The state-dict file `source` names, or the preferred one in directory `source`."""
    if os.path.isfile(source):
        return source
    if not os.path.isdir(source):
        raise CheckpointError(f"{source} does not exist; --source is an open_clip checkpoint "
                              "file or a directory holding one")
    for name in CHECKPOINTS:
        if os.path.isfile(os.path.join(source, name)):
            return os.path.join(source, name)
    raise CheckpointError(f"no open_clip checkpoint in {source} (looked for "
                          f"{', '.join(CHECKPOINTS)}); pass the checkpoint file as --source")


def read_state_dict(path: str) -> dict[str, np.ndarray]:
    """The checkpoint's tensors (float32 NumPy), unwrapped from {"state_dict": ...}, without
    "module." prefixes, with [1]-shaped logit scale/bias as scalars (as open_clip loads them)."""
    if path.endswith(".safetensors"):
        tensors = hf_files.load_safetensors(path)
    else:
        state = hf_files.load_torch(path)
        if isinstance(state, Mapping) and "state_dict" in state:
            state = state["state_dict"]
        if not isinstance(state, Mapping):
            raise CheckpointError(f"{path} holds a {type(state).__name__}, not a state dict; "
                                  "TorchScript (OpenAI JIT) checkpoints are not supported")
        tensors = hf_files.torch_to_numpy(state, path)
    if tensors and all(k.startswith("module.") for k in tensors):
        tensors = {k.removeprefix("module."): v for k, v in tensors.items()}
    for name in SCALARS:
        if name in tensors and tensors[name].shape == (1,):
            tensors[name] = tensors[name].reshape(())
    return tensors


def store_tokenizer(source_dir: str, directory: str) -> tuple[Tokenizer, str, str]:
    """The CLIP BPE tokenizer (see the module doc) stored in `directory`: (tokenizer, config
    tokenizer.kind, tokenizer.path); a CheckpointError names the missing file."""
    if any(os.path.isfile(os.path.join(source_dir, f)) for f in HF_TOKENIZER_FILES):
        return hf_files.store_tokenizer(source_dir, directory)
    found = os.path.join(source_dir, clip_bpe.BPE_GZ_NAME)
    if not os.path.isfile(found):
        found = clip_bpe.default_bpe_path()
        if not found:
            raise CheckpointError(
                f"{os.path.join(source_dir, clip_bpe.BPE_GZ_NAME)} does not exist, nor "
                f"vocab.json + merges.txt, and open-clip-torch is not installed; copy "
                f"{clip_bpe.BPE_GZ_NAME} (inside the open-clip-torch wheel) beside the checkpoint")
        log.info("tokenizer: the CLIP BPE vocabulary of the installed open_clip, %s", found)
    os.makedirs(directory, exist_ok=True)
    path = os.path.join(directory, clip_bpe.BPE_GZ_NAME)
    shutil.copyfile(found, path)
    tok = clip_bpe.ClipBpeTokenizer.from_bpe_gz(path)
    tok.save(directory)
    return tok, "clip_bpe", path


def map_tensors(tensors: dict[str, np.ndarray], model: OpenClipModel,
                shapes: dict[str, tuple[int, ...]], source: str, config_name: str
                ) -> dict[str, np.ndarray]:
    """{vlmjax param path: array} from an open_clip state dict; every tensor used exactly once.

    `shapes` are the shapes of the model's variables (`model_shapes.variable_shapes`: parameters
    and, for a ResNet, BatchNorm statistics).
    """
    cfg = model.config.to_dict()
    if model.resnet:
        prefix = "text." if "text.text_projection" in tensors else ""
        entries = [*resnet_entries(cfg["model"]["image"]),
                   *layout.clip_text_entries(cfg["model"], prefix)]
        return take_tensors(tensors, entries, shapes, source, config_name, IGNORED_SUFFIXES)
    if model.coca:
        layout.fold_cls_position(tensors, cfg["tokenizer"]["context_length"], source)
        entries = layout.coca_entries(cfg["model"], model.pooler_packed)
    else:
        prefix = "text." if "text.text_projection" in tensors else ""  # CustomTextCLIP's layout
        entries = layout.clip_entries(cfg["model"], prefix)
    values = take_tensors(tensors, entries, shapes, source, config_name)
    width = cfg["model"]["image"]["width"]
    values.update({path: np.zeros((width,), np.float32) for path in layout.ZERO_ONLY})
    return values


def import_open_clip(source: str, workdir: str, model_config: str = "") -> None:
    """Converts the open_clip model at `source` (config `model_config`) into run `workdir`."""
    checkpoint = find_checkpoint(source)
    config_path = model_config or os.path.join(os.path.dirname(checkpoint), CONFIG)
    raw = hf_files.read_json(*os.path.split(os.path.abspath(config_path)), hint=(
        "pass open_clip's model-config JSON of this checkpoint with --model-config "
        "(open_clip's model_configs/<name>.json)"))
    vlmjax_config(raw, config_path)  # refuse an unsupported architecture before writing anything
    os.makedirs(workdir, exist_ok=True)
    tokenizer, kind, path = store_tokenizer(os.path.dirname(checkpoint),
                                            os.path.abspath(os.path.join(workdir, "tokenizer")))
    model = vlmjax_config(raw, config_path, kind, path)
    vocab = model.config.tokenizer.vocab_size
    if tokenizer.vocab_size != vocab:
        raise CheckpointError(f"the tokenizer ({path}) has {tokenizer.vocab_size} tokens but "
                              f"{config_path} has text_cfg.vocab_size={vocab} (tensor "
                              "token_embedding.weight); use the model's own tokenizer files")
    shapes = variable_shapes(model.config.to_dict(), vocab)
    values = map_tensors(read_state_dict(checkpoint), model, shapes, checkpoint, config_path)
    write_workdir(model.config, values, vocab, workdir, checkpoint)
    kind = "CoCa" if model.coca else "ResNet CLIP" if model.resnet else "CLIP"
    log.info("converted %s (%s) -> %s", checkpoint, kind, workdir)
