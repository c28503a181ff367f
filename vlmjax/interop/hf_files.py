"""Reading and writing the files of a Hugging Face model directory: config, weights, tokenizer.

Weights come from model.safetensors through `safetensors.numpy` (no PyTorch); only a directory
with nothing but pytorch_model.bin needs torch.
"""

import json
import os
import shutil

import numpy as np

from vlmjax.errors import CheckpointError

SAFETENSORS = "model.safetensors"
TORCH_BIN = "pytorch_model.bin"
TOKENIZER_FILES = ("vocab.json", "merges.txt")
TOKENIZER_JSON = "tokenizer.json"


def read_json(source: str, name: str) -> dict:
    """source/name parsed, or a CheckpointError naming the missing or broken file."""
    path = os.path.join(source, name)
    if not os.path.isfile(path):
        raise CheckpointError(f"{path} does not exist; --source must be a Hugging Face model "
                              f"directory (save_pretrained output) with {name}")
    try:
        with open(path) as f:
            return json.load(f)
    except (OSError, json.JSONDecodeError) as e:
        raise CheckpointError(f"cannot read {path}: {e}") from e


def read_tensors(source: str) -> dict[str, np.ndarray]:
    """All tensors of the model as float32 NumPy arrays, from safetensors when present."""
    path = os.path.join(source, SAFETENSORS)
    if os.path.isfile(path):
        from safetensors.numpy import load_file
        return {k: np.asarray(v, np.float32) for k, v in load_file(path).items()}
    path = os.path.join(source, TORCH_BIN)
    if not os.path.isfile(path):
        sharded = [f for f in os.listdir(source) if f.endswith(".index.json")]
        hint = (f"sharded checkpoints ({sharded[0]}) are not supported yet; re-save with "
                "save_pretrained(..., max_shard_size='100GB')" if sharded else
                "save the model with save_pretrained(dir)")
        raise CheckpointError(f"no {SAFETENSORS} or {TORCH_BIN} in {source}; {hint}")
    try:
        import torch
    except ImportError:
        raise CheckpointError(f"{path} is a PyTorch pickle and torch is not installed; install "
                              f"torch, or convert it to {SAFETENSORS} (save_pretrained with "
                              "safe_serialization=True)") from None
    state = torch.load(path, map_location="cpu", weights_only=True)
    return {k: v.detach().to(torch.float32).numpy() for k, v in state.items()}


def write_tensors(tensors: dict[str, np.ndarray], path: str) -> None:
    """model.safetensors with the metadata transformers expects ({"format": "pt"})."""
    from safetensors.numpy import save_file
    save_file({k: np.require(v, np.float32, "C") for k, v in tensors.items()}, path,
              metadata={"format": "pt"})


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
