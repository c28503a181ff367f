"""Restoring an imported run and applying its model as evaluation does (shared by interop tests)."""

import dataclasses
import os
from typing import Any

import numpy as np


@dataclasses.dataclass
class RestoredRun:
    cfg: dict
    tokenizer: Any
    layout: Any  # vlmjax.train.state.StateLayout
    params: Any  # the restored parameter tree


def restore_run(workdir: str, devices: list | None = None) -> RestoredRun:
    """The run's config, tokenizer and latest checkpoint, restored as `vlmjax.evaluate` does
    (on `devices`, default all)."""
    from vlmjax.parallel.mesh import make_mesh
    from vlmjax.train.checkpoint import Checkpointer
    from vlmjax.train.state import state_layout
    from vlmjax.train.workdir import load_saved_config, tokenizer_for_run
    cfg = load_saved_config(workdir).to_dict()
    tok = tokenizer_for_run(cfg, workdir)
    layout = state_layout(cfg, tok.vocab_size, cfg["tokenizer"]["context_length"],
                          make_mesh(cfg["mesh"], devices))
    with Checkpointer(os.path.join(workdir, "checkpoints"), read_only=True) as ckpt:
        state, _, _ = ckpt.restore(None, layout.abstract)
    return RestoredRun(cfg, tok, layout, state["params"])


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

    from vlmjax.train.step import normalize_images
    pixels = normalize_images(images, run.cfg["data"]["image_mean"], run.cfg["data"]["image_std"])
    ids, mask = run.tokenizer.encode(texts, run.cfg["tokenizer"]["context_length"])
    out = jax.jit(lambda p, *xs: nnx.merge(run.layout.graphdef, p)(*xs))(run.params, pixels,
                                                                          ids, mask)
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
