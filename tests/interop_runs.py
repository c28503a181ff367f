"""Restoring an imported run and applying its model as evaluation does (shared by interop tests)."""

import dataclasses
from typing import Any

import numpy as np


@dataclasses.dataclass
class RestoredRun:
    cfg: dict
    tokenizer: Any
    layout: Any  # vlmjax.train.state.StateLayout
    params: Any  # the restored parameter tree


def restore_run(workdir: str, devices: list | None = None) -> RestoredRun:
    """The run's config, tokenizer and latest checkpoint, restored by the one run loader that
    `vlmjax.evaluate` uses (on `devices`, default all)."""
    from vlmjax.train.run import load_run
    run = load_run(workdir, devices=devices)
    return RestoredRun(run.config, run.tokenizer, run.layout, run.weights)


def flat_params(run: RestoredRun) -> dict[str, np.ndarray]:
    """{param path: array} of a restored run."""
    import jax

    from vlmjax.train.param_groups import path_string
    leaves = jax.tree_util.tree_flatten_with_path(run.params)[0]
    return {path_string(p): np.asarray(x) for p, x in leaves}


def forward(run: RestoredRun, images: np.ndarray, texts: list[str]) -> dict[str, np.ndarray]:
    """The run's model applied to uint8 NHWC images and texts, normalised with the run's image
    statistics and tokenised with its tokenizer.

    Returns pixels, ids, mask, image / text (L2-normalised embeddings), logits (scale * image @
    text.T, + bias for models with one) and, for CoCa, caption_logits.
    """
    import jax
    from flax import nnx

    from vlmjax.data.normalization import Normalization
    pixels = Normalization.from_config(run.cfg["data"])(images)
    ids, mask = run.tokenizer.encode(texts, run.cfg["tokenizer"]["context_length"])
    batch = {"image": pixels, "text": ids, "text_mask": mask}
    out = jax.jit(lambda p, b: nnx.merge(run.layout.graphdef, p)(b))(run.params, batch)
    logits = out["logit_scale"] * out["image_embed"] @ out["text_embed"].T
    result = {"pixels": np.asarray(pixels), "ids": ids, "mask": mask,
              "image": np.asarray(out["image_embed"]), "text": np.asarray(out["text_embed"]),
              "logits": np.asarray(logits + out.get("logit_bias", 0.0))}
    if "caption_logits" in out:
        result["caption_logits"] = np.asarray(out["caption_logits"])
    return result


def run_forward(workdir: str, images: np.ndarray, texts: list[str]) -> dict[str, np.ndarray]:
    """`forward` of the run in `workdir`, restored on all devices."""
    return forward(restore_run(workdir), images, texts)
