"""Reference outputs of open_clip models for tests/test_interop_open_clip.py.

Run in the open_clip environment (.venv-openclip, launch/setup_open_clip.sh), not in .venv:
    python tests/open_clip_reference.py OUT_DIR SPEC.json
SPEC.json: {"models": {name: {"config": open_clip model config, "seed": int, "wrap": bool}},
"texts": [...], "tricky": [...], "images": n}. For each model, OUT_DIR/<name>/ gets the model
config (registered with open_clip.add_model_config and built by open_clip.create_model),
open_clip_model.safetensors, a training-style checkpoint epoch_1.pt ({"state_dict": ...} with
"module." prefixes, loaded back with open_clip.load_checkpoint) and reference.npz: the uint8
images, token ids, image/text embeddings, logits, CoCa caption logits, and open_clip's
tokenizer ids of the tricky strings.
"""

import json
import os
import shutil
import sys

import numpy as np
import open_clip
import torch
from safetensors.torch import save_file


def randomise(model: torch.nn.Module, seed: int) -> None:
    """Non-trivial values everywhere a wrong mapping could hide: LayerNorms, biases, the logit
    scale, the CLS and position embeddings, and the decoder head (left uninitialised)."""
    g = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for name, p in model.named_parameters():
            noise = torch.randn(p.shape, generator=g)
            if name == "logit_scale":
                p.copy_(torch.full_like(p, 2.5) + 0.5 * noise)
            elif name == "text_decoder.text_projection":
                p.copy_(noise * p.shape[0] ** -0.5)
            elif name in ("text.cls_emb", "text.positional_embedding"):
                p.add_(0.3 * noise)
            elif ".ln_" in name or name.startswith(("ln_", "visual.ln_")) or name.endswith("bias"):
                p.add_(0.1 * noise)


def normalise(images: np.ndarray, mean: list, std: list) -> torch.Tensor:
    """uint8 NHWC -> normalised NCHW float32, as open_clip's ToTensor + Normalize."""
    x = torch.tensor(images, dtype=torch.float32).permute(0, 3, 1, 2) / 255.0
    return (x - torch.tensor(mean)[:, None, None]) / torch.tensor(std)[:, None, None]


def reference(name: str, spec: dict, shared: dict, out: str) -> None:
    directory = os.path.join(out, name)
    os.makedirs(directory, exist_ok=True)
    config_path = os.path.join(directory, f"{name}.json")
    with open(config_path, "w") as f:
        json.dump(spec["config"], f)
    preprocess = spec.get("preprocess_cfg")
    if preprocess:  # the Hugging Face hub layout: open_clip_config.json beside the weights
        with open(os.path.join(directory, "open_clip_config.json"), "w") as f:
            json.dump({"model_cfg": spec["config"], "preprocess_cfg": preprocess}, f)
    open_clip.add_model_config(config_path)
    torch.manual_seed(spec["seed"])
    model = open_clip.create_model(name, pretrained=None).eval()
    randomise(model, spec["seed"])
    state = model.state_dict()
    save_file({k: v.contiguous() for k, v in state.items()},
              os.path.join(directory, "open_clip_model.safetensors"))
    torch.save({"epoch": 1, "name": name, "state_dict": {f"module.{k}": v for k, v in state.items()}},
               os.path.join(directory, "epoch_1.pt"))
    open_clip.load_checkpoint(open_clip.create_model(name, pretrained=None),
                              os.path.join(directory, "epoch_1.pt"))  # a real open_clip file
    if spec.get("bpe_beside"):
        shutil.copyfile(os.path.join(os.path.dirname(open_clip.__file__),
                                     "bpe_simple_vocab_16e6.txt.gz"),
                        os.path.join(directory, "bpe_simple_vocab_16e6.txt.gz"))

    tokenizer = open_clip.get_tokenizer(name)
    ids = tokenizer(shared["texts"])
    rng = np.random.default_rng(spec["seed"])
    size = spec["config"]["vision_cfg"]["image_size"]
    images = rng.integers(0, 256, (shared["images"], size, size, 3), dtype=np.uint8)
    stats = preprocess or {"mean": open_clip.OPENAI_DATASET_MEAN, "std": open_clip.OPENAI_DATASET_STD}
    pixels = normalise(images, stats["mean"], stats["std"])
    result = {"images": images, "ids": ids.numpy(),
              "tricky_ids": tokenizer(shared["tricky"]).numpy()}
    with torch.no_grad():
        image = model.encode_image(pixels, normalize=True)
        text = model.encode_text(ids, normalize=True)
        result.update(image=image.numpy(), text=text.numpy(),
                      logits=(model.logit_scale.exp() * image @ text.T).numpy())
        if "multimodal_cfg" in spec["config"]:
            out_dict = model(pixels, ids, output_labels=False)
            np.testing.assert_allclose(out_dict["text_features"].numpy(), result["text"], atol=1e-6)
            result["caption_logits"] = out_dict["logits"].numpy()
    np.savez(os.path.join(directory, "reference.npz"), **result)


def main() -> None:
    out, spec_path = sys.argv[1], sys.argv[2]
    with open(spec_path) as f:
        spec = json.load(f)
    torch.set_num_threads(2)
    for name, model_spec in spec["models"].items():
        reference(name, model_spec, spec, out)


if __name__ == "__main__":
    main()
