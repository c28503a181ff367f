"""open_clip's side of bench/train_step.py: a worker that times open_clip train steps on request.

Run by bench/train_step.py with `.venv-openclip/bin/python` (launch/setup_open_clip.sh), never by
hand. It reads one JSON command per line on stdin and answers one JSON line on stdout:

- {"cmd": "build", "arch": {...}, "batch": "path.npz", "threads": 2, "compile": true,
  "device": "cpu" | "cuda"}: builds `open_clip.CLIP` or `open_clip.CoCa` with exactly the given
  architecture (FLIP's masking as open_clip's `patch_dropout`), its loss (`ClipLoss`,
  `CoCaLoss`, or the FILIP loss below on open_clip's towers) and AdamW with open_clip's
  parameter groups, gradient clipping and temperature clamp; warms up eager and (with
  "compile") a `torch.compile`d copy of model + loss. With arch["dtype"] "bfloat16" the forward
  and loss run under `torch.autocast(device, torch.bfloat16)` on float32 weights (open_clip's
  `--precision amp_bf16`). Answers compile time, parameter count, torch's thread counts and the
  device's measured matmul rate in that dtype.
- {"cmd": "time", "mode": "eager" | "compiled", "steps": n}: answers the n step times (s).
- {"cmd": "exit"}.

The batch (uint8 NHWC images, int32 token ids padded with 0, bool mask) is the one vlmjax
trains on; images are normalised once here (open_clip's data loader does it outside the step).
"""

import copy
import json
import math
import sys
import time

import numpy as np
import open_clip
import torch
import torch.nn.functional as functional
from open_clip.loss import ClipLoss, CoCaLoss


def filip_loss(image_tokens: torch.Tensor, text_tokens: torch.Tensor, text_mask: torch.Tensor,
               logit_scale: torch.Tensor) -> torch.Tensor:
    """FILIP's token-wise late-interaction loss (PROTOCOLS.md), dense, in plain PyTorch.

    image_tokens [B, n, e], text_tokens [B, m, e] (L2-normalised), text_mask [B, m] True for real
    tokens. s_I(i, j) = mean_k max_r <x_ik, y_jr> over valid r; s_T(i, j) = mean over valid r of
    max_k <x_ik, y_jr>; loss = (CE over rows of s * s_I + CE over columns of s * s_T) / 2.
    """
    sim = torch.einsum("ine,jme->ijnm", image_tokens, text_tokens)  # [B_img, B_txt, n, m]
    valid = text_mask[None, :, None, :]
    s_i = sim.masked_fill(~valid, float("-inf")).amax(dim=3).mean(dim=2)  # [B_img, B_txt]
    best = sim.amax(dim=2)  # [B_img, B_txt, m]
    m = text_mask.to(best.dtype)[None]
    s_t = (best * m).sum(-1) / m.sum(-1).clamp(min=1)
    labels = torch.arange(sim.shape[0])
    return (functional.cross_entropy(logit_scale * s_i, labels)
            + functional.cross_entropy((logit_scale * s_t).t(), labels)) / 2


def build_model(arch: dict) -> torch.nn.Module:
    """open_clip.CLIP / CoCa with the architecture vlmjax sent (see bench/train_step.py)."""
    image, text = arch["image"], arch["text"]
    vision_cfg = dict(image_size=image["image_size"], patch_size=image["patch_size"],
                      width=image["width"], layers=image["depth"],
                      head_width=image["width"] // image["heads"],
                      mlp_ratio=image["mlp_dim"] / image["width"], no_ln_pre=not image["ln_pre"],
                      pool_type={"cls": "tok", "gap": "avg"}[image["pool"]],
                      patch_dropout=image.get("mask_ratio", 0.0))
    text_cfg = dict(context_length=text["context_length"], vocab_size=text["vocab_size"],
                    width=text["width"], heads=text["heads"], layers=text["depth"],
                    mlp_ratio=text["mlp_dim"] / text["width"])
    torch.manual_seed(0)
    if arch["kind"] == "coca":
        coca = arch["coca"]
        vision_cfg.update(attentional_pool=True, attn_pooler_heads=coca["pooler_heads"],
                          attn_pooler_queries=coca["caption_queries"], output_tokens=True)
        text_cfg.update(embed_cls=True, output_tokens=True)
        multimodal_cfg = dict(context_length=text["context_length"], vocab_size=text["vocab_size"],
                              width=text["width"], heads=text["heads"],
                              layers=coca["multimodal_depth"], mlp_ratio=text["mlp_dim"] // text["width"])
        model = open_clip.CoCa(arch["embed_dim"], multimodal_cfg, text_cfg, vision_cfg,
                               quick_gelu=arch["quick_gelu"])
    else:
        # FILIP needs the text tower's tokens: CustomTextCLIP keeps the tower as one module
        # (`model.text`); the architecture is CLIP's.
        filip = arch["kind"] == "filip"
        if filip:
            vision_cfg["output_tokens"] = True
            text_cfg["output_tokens"] = True
        model = (open_clip.CustomTextCLIP if filip else open_clip.CLIP)(
            arch["embed_dim"], vision_cfg, text_cfg, quick_gelu=arch["quick_gelu"])
    if image["channels"] != 3:  # open_clip's patch embedding is hard-wired to RGB
        conv = model.visual.conv1
        model.visual.conv1 = torch.nn.Conv2d(image["channels"], conv.out_channels,
                                             conv.kernel_size, conv.stride, bias=False)
    return model


class Trainer:
    """One model, its loss and optimizer; `step()` is one full train step on the fixed batch."""

    def __init__(self, model: torch.nn.Module, arch: dict, batch: dict, compiled: bool,
                 device: str = "cpu"):
        self.model, self.kind, self.device = model.to(device), arch["kind"], device
        self.autocast = arch.get("dtype", "float32") == "bfloat16"
        opt = arch["optimizer"]
        decay = [p for n, p in model.named_parameters() if p.ndim >= 2 and "embedding" not in n
                 and "logit_scale" not in n]
        no_decay = [p for n, p in model.named_parameters() if not (
            p.ndim >= 2 and "embedding" not in n and "logit_scale" not in n)]
        self.optimizer = torch.optim.AdamW(
            [{"params": no_decay, "weight_decay": 0.0},
             {"params": decay, "weight_decay": opt["weight_decay"]}],
            lr=opt["lr"], betas=(opt["b1"], opt["b2"]), eps=opt["eps"])
        self.clip_norm, self.max_log_scale = opt["grad_clip_norm"], math.log(arch["max_logit_scale"])
        self.batch = {k: v.to(device) for k, v in batch.items()}
        self.clip_loss = ClipLoss()
        self.coca_loss = CoCaLoss(caption_loss_weight=arch.get("caption_weight", 2.0),
                                  clip_loss_weight=arch.get("contrastive_weight", 1.0), pad_id=0)
        self.loss_fn = torch.compile(self.loss) if compiled else self.loss

    def loss(self, images: torch.Tensor, text: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
        if self.kind == "coca":
            out = self.model(images, text)
            losses = self.coca_loss(out["image_features"], out["text_features"], out["logits"],
                                    out["labels"], out["logit_scale"])
            return sum(losses)
        if self.kind == "filip":
            _, image_tokens = self.model.visual(images)
            _, text_tokens = self.model.text(text)
            image_tokens = functional.normalize(image_tokens @ self.model.visual.proj, dim=-1)
            text_tokens = functional.normalize(text_tokens @ self.model.text.text_projection, dim=-1)
            return filip_loss(image_tokens, text_tokens, mask, self.model.logit_scale.exp())
        image_features, text_features, logit_scale = self.model(images, text)
        return self.clip_loss(image_features, text_features, logit_scale)

    def step(self) -> float:
        with torch.autocast(self.device, dtype=torch.bfloat16, enabled=self.autocast):
            loss = self.loss_fn(self.batch["image"], self.batch["text"], self.batch["mask"])
        self.optimizer.zero_grad(set_to_none=True)
        loss.backward()
        if self.clip_norm > 0:
            torch.nn.utils.clip_grad_norm_(self.model.parameters(), self.clip_norm)
        self.optimizer.step()
        with torch.no_grad():
            self.model.logit_scale.clamp_(0, self.max_log_scale)
        return loss.item()  # waits for the device


def matmul_rate(device: str, dtype: str, size: int = 2048, repeats: int = 3) -> float:
    """Best FLOP/s of a size^3 matmul in `dtype` on `device` (torch's own kernels)."""
    a = torch.ones(size, size, dtype=getattr(torch, dtype), device=device)
    best = float("inf")
    for _ in range(repeats + 1):
        if device == "cuda":
            torch.cuda.synchronize()
        start = time.perf_counter()
        (a @ a).sum().item()
        best = min(best, time.perf_counter() - start)
    return 2 * size ** 3 / best


def load_batch(path: str, arch: dict) -> dict:
    """The shared batch, images normalised to float NCHW as open_clip's loader would give them."""
    data = np.load(path)
    mean = torch.tensor(arch["image_mean"], dtype=torch.float32).reshape(1, -1, 1, 1)
    std = torch.tensor(arch["image_std"], dtype=torch.float32).reshape(1, -1, 1, 1)
    images = torch.from_numpy(data["image"]).permute(0, 3, 1, 2).float().div(255.0)
    return {"image": ((images - mean) / std).contiguous(),
            "text": torch.from_numpy(data["text"]).long(),
            "mask": torch.from_numpy(data["text_mask"]).bool()}


def timed(trainer: Trainer, steps: int) -> tuple[list[float], list[float]]:
    """Wall and process CPU seconds of each of `steps` steps."""
    times, cpu = [], []
    for _ in range(steps):
        start, start_cpu = time.perf_counter(), time.process_time()
        trainer.step()
        times.append(time.perf_counter() - start)
        cpu.append(time.process_time() - start_cpu)
    return times, cpu


def main() -> None:
    trainers: dict[str, Trainer] = {}
    for line in sys.stdin:
        cmd = json.loads(line)
        if cmd["cmd"] == "exit":
            return
        if cmd["cmd"] == "build":
            torch.set_num_threads(cmd["threads"])
            arch, device = cmd["arch"], cmd.get("device", "cpu")
            batch = load_batch(cmd["batch"], arch)
            model = build_model(arch)
            trainers = {"eager": Trainer(model, arch, batch, compiled=False, device=device)}
            answer = {"params": sum(p.numel() for p in model.parameters()),
                      "torch": torch.__version__, "open_clip": open_clip.__version__,
                      "threads": torch.get_num_threads(),
                      "interop_threads": torch.get_num_interop_threads(),
                      "peak": matmul_rate(device, arch.get("dtype", "float32"))}
            if cmd["compile"]:
                trainers["compiled"] = Trainer(copy.deepcopy(model), arch, batch, compiled=True,
                                               device=device)
                start = time.perf_counter()
                trainers["compiled"].step()
                answer["compile_s"] = time.perf_counter() - start
            for trainer in trainers.values():
                timed(trainer, cmd.get("warmup", 2))
            answer["loss"] = trainers["eager"].step()
        elif cmd["cmd"] == "time":
            times, cpu = timed(trainers[cmd["mode"]], cmd["steps"])
            answer = {"times": times, "cpu": cpu}
        else:
            raise ValueError(f"unknown command {cmd['cmd']!r}")
        print(json.dumps(answer), flush=True)


if __name__ == "__main__":
    main()
