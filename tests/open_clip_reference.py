"""Reference outputs of open_clip models for tests/test_interop_open_clip.py.

Run in the open_clip environment (.venv-openclip, launch/setup_open_clip.sh), not in .venv:
    python tests/open_clip_reference.py OUT_DIR SPEC.json
SPEC.json: {"models": {name: {"config": open_clip model config, "seed": int, "wrap": bool}},
"texts": [...], "tricky": [...], "images": n, "counts": [open_clip model names]}. For each
model, OUT_DIR/<name>/ gets the model config (registered with open_clip.add_model_config and
built by open_clip.create_model), open_clip_model.safetensors, a training-style checkpoint
epoch_1.pt ({"state_dict": ...} with "module." prefixes, loaded back with
open_clip.load_checkpoint) and reference.npz: the uint8 images, token ids, image/text
embeddings, logits, CoCa caption logits, and open_clip's tokenizer ids of the tricky strings;
for ResNet CLIPs also the dense image tokens and a training-mode forward (`resnet_outputs`).
With "counts", OUT_DIR/counts.json holds the parameter and BatchNorm-statistic counts of those
open_clip models (`param_counts`).
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
            elif is_batch_norm(model, name):  # ResNets (bn3 starts at zero in open_clip)
                p.copy_(1.0 + 0.2 * noise)
        for name, b in model.named_buffers():
            if name.endswith("running_mean"):
                b.copy_(0.1 * torch.randn(b.shape, generator=g))
            elif name.endswith("running_var"):
                b.copy_(0.5 + torch.rand(b.shape, generator=g))


def is_batch_norm(model: torch.nn.Module, name: str) -> bool:
    """Whether parameter `name` is the weight of a BatchNorm2d."""
    module = model.get_submodule(name.rpartition(".")[0]) if "." in name else model
    return isinstance(module, torch.nn.BatchNorm2d)


def resnet_outputs(model: torch.nn.Module, pixels: torch.Tensor) -> dict:
    """ModifiedResNet extras: the dense tokens (each position + its position embedding through
    the attention pool's value and output projections, MaskCLIP's formula), and a training-mode
    forward (batch statistics) with the running means it leaves."""
    visual = model.visual
    with torch.no_grad():
        x = visual.layer4(visual.layer3(visual.layer2(visual.layer1(visual.stem(pixels)))))
        x = x.flatten(2).permute(0, 2, 1) + visual.attnpool.positional_embedding[1:]
        tokens = visual.attnpool.c_proj(visual.attnpool.v_proj(x))
        visual.train()
        train_embed = model.encode_image(pixels, normalize=True)
        visual.eval()
    return {"image_tokens": tokens.numpy(), "image_train": train_embed.numpy(),
            "bn1_running_mean": visual.bn1.running_mean.numpy()}


def param_counts(names: list[str], out: str) -> None:
    """counts.json: for each open_clip model name, its model config and its parameters and
    BatchNorm statistics (running mean + var; num_batches_tracked is bookkeeping), in all and
    in `visual`."""
    counts = {}
    for name in names:
        model = open_clip.create_model(name, pretrained=None)
        stats = sum(b.numel() for n, b in model.visual.named_buffers()
                    if n.endswith(("running_mean", "running_var")))
        counts[name] = {"params": sum(p.numel() for p in model.parameters()),
                        "visual_params": sum(p.numel() for p in model.visual.parameters()),
                        "visual_stats": stats, "config": open_clip.get_model_config(name)}
    with open(os.path.join(out, "counts.json"), "w") as f:
        json.dump(counts, f)


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
    if isinstance(spec["config"]["vision_cfg"]["layers"], list):
        result.update(resnet_outputs(model, pixels))
    np.savez(os.path.join(directory, "reference.npz"), **result)


def main() -> None:
    out, spec_path = sys.argv[1], sys.argv[2]
    with open(spec_path) as f:
        spec = json.load(f)
    torch.set_num_threads(2)
    for name, model_spec in spec["models"].items():
        reference(name, model_spec, spec, out)
    if spec.get("counts"):
        param_counts(spec["counts"], out)


if __name__ == "__main__":
    main()
