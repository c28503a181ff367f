"""Reading and writing the files of a Hugging Face model directory: config, weights, tokenizer.

Weights come from model.safetensors (or its shards, model.safetensors.index.json) through
`safetensors.numpy` (no PyTorch); only a directory with nothing but pytorch_model.bin (or its
shards) needs torch.
"""

import json
import os
import shutil
from collections.abc import Callable, Mapping
from typing import Any

import numpy as np

from vlmjax.errors import CheckpointError
from vlmjax.tokenizers import Tokenizer

SAFETENSORS = "model.safetensors"
TORCH_BIN = "pytorch_model.bin"
SAFETENSORS_INDEX = "model.safetensors.index.json"
TORCH_BIN_INDEX = "pytorch_model.bin.index.json"
TOKENIZER_FILES = ("vocab.json", "merges.txt")
TOKENIZER_JSON = "tokenizer.json"


def read_json(source: str, name: str, hint: str = "") -> dict:
    """source/name parsed, or a CheckpointError naming the missing or broken file (and `hint`)."""
    path = os.path.join(source, name)
    if not os.path.isfile(path):
        hint = hint or (f"--source must be a Hugging Face model directory (save_pretrained "
                        f"output) with {name}")
        raise CheckpointError(f"{path} does not exist; {hint}")
    try:
        with open(path) as f:
            return json.load(f)
    except (OSError, json.JSONDecodeError) as e:
        raise CheckpointError(f"cannot read {path}: {e}") from e


def load_safetensors(path: str) -> dict[str, np.ndarray]:
    """All tensors of one .safetensors file as float32 NumPy arrays (no PyTorch needed)."""
    from safetensors.numpy import load_file
    return {k: np.asarray(v, np.float32) for k, v in load_file(path).items()}


def load_torch(path: str) -> Any:
    """torch.load of a PyTorch pickle on the CPU (weights only); names the file if torch is absent."""
    try:
        import torch
    except ImportError:
        raise CheckpointError(f"{path} is a PyTorch pickle and torch is not installed; install "
                              "torch, or give the weights as .safetensors (safetensors.torch."
                              "save_file / save_pretrained(..., safe_serialization=True))") from None
    return torch.load(path, map_location="cpu", weights_only=True)


def torch_to_numpy(state: Mapping[str, Any], path: str) -> dict[str, np.ndarray]:
    """A PyTorch state dict as float32 NumPy arrays; a non-tensor entry is an error naming it."""
    import torch
    out = {}
    for k, v in state.items():
        if not isinstance(v, torch.Tensor):
            raise CheckpointError(f"{path}: entry {k!r} is a {type(v).__name__}, not a tensor; "
                                  "expected a state dict of tensors")
        out[k] = v.detach().to(torch.float32).numpy()
    return out


def _load_torch_tensors(path: str) -> dict[str, np.ndarray]:
    return torch_to_numpy(load_torch(path), path)


# (single file, its sharded index, loader), in order of preference: safetensors needs no torch.
WEIGHT_FILES = ((SAFETENSORS, SAFETENSORS_INDEX, load_safetensors),
                (TORCH_BIN, TORCH_BIN_INDEX, _load_torch_tensors))


def read_sharded(source: str, index_name: str,
                 load: Callable[[str], dict[str, np.ndarray]]) -> dict[str, np.ndarray]:
    """The tensors of a sharded checkpoint: index.json's weight_map {tensor: shard file}.

    Every tensor the index lists must be in its shard, and every shard tensor in the index.
    """
    weight_map = read_json(source, index_name).get("weight_map")
    if not isinstance(weight_map, dict) or not weight_map:
        raise CheckpointError(f"{os.path.join(source, index_name)} has no \"weight_map\" "
                              "{tensor name: shard file}; is it a transformers index file?")
    tensors: dict[str, np.ndarray] = {}
    for shard in sorted(set(weight_map.values())):
        path = os.path.join(source, shard)
        if not os.path.isfile(path):
            raise CheckpointError(f"{path} does not exist but {index_name} lists it; download "
                                  "every shard of the checkpoint")
        for name, value in load(path).items():
            if weight_map.get(name) != shard:
                raise CheckpointError(f"{path} holds tensor {name}, which {index_name} places "
                                      f"in {weight_map.get(name)!r}; the index does not match "
                                      "the shards")
            tensors[name] = value
    missing = sorted(set(weight_map) - set(tensors))
    if missing:
        raise CheckpointError(f"{index_name} lists tensor {missing[0]} in "
                              f"{weight_map[missing[0]]}, which does not hold it "
                              f"({len(missing)} missing in all)")
    return tensors


def read_tensors(source: str) -> dict[str, np.ndarray]:
    """All tensors of the model as float32 NumPy arrays: model.safetensors, else its sharded
    index, else pytorch_model.bin (or its index; these need torch)."""
    for single, index, load in WEIGHT_FILES:
        if os.path.isfile(os.path.join(source, single)):
            return load(os.path.join(source, single))
        if os.path.isfile(os.path.join(source, index)):
            return read_sharded(source, index, load)
    names = ", ".join(name for files in WEIGHT_FILES for name in files[:2])
    raise CheckpointError(f"no weights in {source} (looked for {names}); save the model with "
                          "save_pretrained(dir)")


def write_tensors(tensors: dict[str, np.ndarray], path: str) -> None:
    """model.safetensors with the metadata transformers expects ({"format": "pt"}), readable as
    any new file is (safetensors itself creates it owner-only, 0600)."""
    from safetensors.numpy import save_file
    save_file({k: np.require(v, np.float32, "C") for k, v in tensors.items()}, path,
              metadata={"format": "pt"})
    umask = os.umask(0)
    os.umask(umask)
    os.chmod(path, 0o666 & ~umask)


def copy_tokenizer_files(source: str, directory: str) -> str:
    """Copies vocab.json + merges.txt (else tokenizer.json) from source; returns the kind found.

    "clip_bpe" for the vocab/merges pair, "hf_json" for tokenizer.json alone.
    """
    os.makedirs(directory, exist_ok=True)
    present = [os.path.isfile(os.path.join(source, f)) for f in TOKENIZER_FILES]
    if all(present):
        for name in TOKENIZER_FILES:
            shutil.copyfile(os.path.join(source, name), os.path.join(directory, name))
        return "clip_bpe"
    if os.path.isfile(os.path.join(source, TOKENIZER_JSON)):
        shutil.copyfile(os.path.join(source, TOKENIZER_JSON), os.path.join(directory, TOKENIZER_JSON))
        return "hf_json"
    missing = TOKENIZER_FILES[present.index(False)]
    raise CheckpointError(f"{os.path.join(source, missing)} does not exist and there is no "
                          f"{TOKENIZER_JSON}; the tokenizer files must sit beside the weights "
                          "(CLIPTokenizer.save_pretrained(dir) writes them)")


def store_tokenizer(source: str, directory: str) -> tuple[Tokenizer, str, str]:
    """The tokenizer files beside the weights in `source`, stored as the run's tokenizer in
    `directory` (originals kept beside): (tokenizer, config tokenizer.kind, tokenizer.path)."""
    from vlmjax.tokenizers.clip_bpe import ClipBpeTokenizer
    from vlmjax.tokenizers.hf_tokenizer import HFTokenizer
    kind = copy_tokenizer_files(source, directory)
    if kind == "clip_bpe":
        tok, path = ClipBpeTokenizer.from_path(directory), directory
    else:
        path = os.path.join(directory, TOKENIZER_JSON)
        tok = HFTokenizer.from_file(path, clip_clean=True, source="hf_json")
    tok.save(directory)
    return tok, kind, path
