"""An open-vocabulary detector: OWL-ViT's per-token heads on an image tower (ViT or ResNet).

Every image token (a ViT patch, a ResNet feature-map position: `tower["tokens"]`, laid out
row-major on a square grid) predicts, after a LayerNorm:
- a box (cx, cy, w, h) = sigmoid(MLP(token) + bias), OWL-ViT's box bias being the inverse
  sigmoid of the token's own cell (its centre, and the cell side as width and height), so an
  untrained head already predicts one box per cell;
- a class embedding (a linear map into the joint space, L2-normalised) scored against class
  queries q (unit vectors: the teacher's class text embeddings, fixed) as OWL-ViT does,
  logit = (cos + shift(token)) * scale(token) * exp(logit_scale), shift linear and
  scale = elu(linear) + 1 per token; a learned background embedding is scored the same way
  (ViLD-text's background, used by the softmax loss);
- an objectness logit (an MLP, OWLv2).
No text tower: the classifier is whatever class embeddings the caller gives, so classes never
seen in training are detected through their text embeddings alone. Called on a training batch
with "class_embed" [b, K, e] it returns the outputs `objectives.ov_detection` consumes;
`detect(images, queries)` serves evaluation.
"""

import math
from collections.abc import Mapping

import jax
import jax.numpy as jnp
from flax import nnx

from vlmjax.models import layers
from vlmjax.models.embedding import l2_normalize
from vlmjax.models.tower import TowerSettings
from vlmjax.models.towers import build_tower
from vlmjax.models.two_tower import scalar
from vlmjax.options import require_positive

OPTIONS = {"ov_detector": {
    "box_bias": True,  # OWL-ViT's per-token box bias (False: every token starts at the centre)
    "head_depth": 3,  # layers of the box MLP (OWL-ViT: 3)
}}
TOWER_PATTERNS = {"image": r"^image/"}


class _Head(nnx.Module):
    """An MLP width -> width ... -> out (gelu between layers); `zero_out`: its last layer starts
    at zero (the head's output starts at its bias: a cell's box, shift 0, scale 1)."""

    def __init__(self, width: int, out: int, depth: int, *, rngs: nnx.Rngs,
                 zero_out: bool = False):
        sizes = [width] * depth + [out]
        inits = [layers.xavier()] * (depth - 1) + [layers.zeros if zero_out else layers.xavier()]
        self.kernels = nnx.List([layers.param(rngs, init, (a, b), ("embed", None)) for init, a, b
                                 in zip(inits, sizes[:-1], sizes[1:], strict=True)])
        self.biases = nnx.List([layers.param(rngs, layers.zeros, (b,), (None,))
                                for b in sizes[1:]])

    def __call__(self, x: jax.Array) -> jax.Array:
        for i, (kernel, bias) in enumerate(zip(self.kernels, self.biases, strict=True)):
            x = layers.dense(x, kernel[...].astype(x.dtype), bias[...].astype(x.dtype))
            if i < len(self.kernels) - 1:
                x = jax.nn.gelu(x, approximate=False)
        return x


def box_bias(grid: int) -> jax.Array:
    """[grid * grid, 4]: inverse sigmoid of each cell's (cx, cy, side, side), row-major."""
    centres = (jnp.arange(grid, dtype=jnp.float32) + 0.5) / grid
    cy, cx = jnp.meshgrid(centres, centres, indexing="ij")
    side = jnp.full_like(cx, 1.0 / grid)
    boxes = jnp.stack([cx, cy, side, side], axis=-1).reshape(grid * grid, 4)
    boxes = jnp.clip(boxes, 1e-4, 1 - 1e-4)
    return jnp.log(boxes) - jnp.log1p(-boxes)


def corners(boxes: jax.Array) -> jax.Array:
    """[..., 4] (cx, cy, w, h) -> (x0, y0, x1, y1)."""
    cx, cy, w, h = jnp.moveaxis(boxes, -1, 0)
    return jnp.stack([cx - w / 2, cy - h / 2, cx + w / 2, cy + h / 2], axis=-1)


class OVDetector(nnx.Module):
    """An image tower with OWL-ViT's box, class-embedding and objectness heads (module doc)."""

    def __init__(self, model: Mapping, vocab_size: int, context_length: int, *, rngs: nnx.Rngs):
        settings = TowerSettings.from_model(model, vocab_size, context_length)
        self.image = build_tower(model, "image", settings, rngs)
        width, embed = self.image.width, model["embed_dim"]
        opts = model["ov_detector"]
        self.use_box_bias = bool(opts["box_bias"])
        self.token_norm = layers.LayerNorm(width, rngs=rngs, eps=model["norm_eps"])
        self.box_head = _Head(width, 4, opts["head_depth"], rngs=rngs, zero_out=True)
        self.objectness_head = _Head(width, 1, 2, rngs=rngs)
        self.class_head = _Head(width, embed, 1, rngs=rngs)
        self.shift_head = _Head(width, 1, 1, rngs=rngs, zero_out=True)
        self.scale_head = _Head(width, 1, 1, rngs=rngs, zero_out=True)
        self.background = layers.param(rngs, layers.normal(embed ** -0.5), (embed,), ("joint",))
        self.logit_scale = scalar(rngs, model["logit_scale_init"])

    def token_outputs(self, images: jax.Array, *, train: bool = False,
                      rng: jax.Array | None = None) -> dict[str, jax.Array]:
        """Normalised images [b, H, W, c] -> per token "pred_boxes" (cx, cy, w, h) [b, n, 4],
        "class_embed" [b, n, e] (unit), "objectness" [b, n] and the scoring terms."""
        tokens = self.image(images, train=train, rng=rng)["tokens"]
        n = tokens.shape[1]
        grid = math.isqrt(n)
        if grid * grid != n:
            raise ValueError(f"the ov_detector places its {n} image tokens on a square grid; use "
                             "an image tower whose tokens are its patches (ViT pool 'gap' or "
                             "'cls', ResNet)")
        x = self.token_norm(tokens)
        raw = self.box_head(x).astype(jnp.float32)
        if self.use_box_bias:
            raw = raw + box_bias(grid)
        return {
            "pred_boxes": jax.nn.sigmoid(raw),
            "class_embed": l2_normalize(self.class_head(x).astype(jnp.float32)),
            "objectness": self.objectness_head(x)[..., 0].astype(jnp.float32),
            "logit_shift": self.shift_head(x)[..., 0].astype(jnp.float32),
            "token_scale": (jax.nn.elu(self.scale_head(x)[..., 0]) + 1).astype(jnp.float32)
            * jnp.exp(self.logit_scale[...]),
        }

    def score(self, out: Mapping[str, jax.Array], queries: jax.Array) -> dict[str, jax.Array]:
        """Per-token "class_logits" [b, n, K] of unit queries [b, K, e] or [K, e], and the
        "background_logit" [b, n]."""
        queries = queries.astype(jnp.float32)
        spec = "bne,bke->bnk" if queries.ndim == 3 else "bne,ke->bnk"
        cos = jnp.einsum(spec, out["class_embed"], queries)
        background = out["class_embed"] @ l2_normalize(self.background[...])
        shift, scale = out["logit_shift"], out["token_scale"]
        return {"class_logits": (cos + shift[..., None]) * scale[..., None],
                "background_logit": (background + shift) * scale}

    def detect(self, images: jax.Array, queries: jax.Array) -> dict[str, jax.Array]:
        """Evaluation: corner boxes [b, n, 4] in [0, 1], class logits against queries [K, e],
        background logit and objectness logit per token."""
        out = self.token_outputs(images)
        return {"boxes": corners(out["pred_boxes"]), "objectness": out["objectness"],
                **self.score(out, queries)}

    def __call__(self, batch: Mapping[str, jax.Array], *, train: bool = False,
                 rng: jax.Array | None = None) -> dict[str, jax.Array]:
        if "class_embed" not in batch:
            raise ValueError("the ov_detector trains on batches with the teacher's class "
                             "embeddings: data.name='fashion_mnist_scenes_detection'")
        out = self.token_outputs(batch["image"], train=train, rng=rng)
        return {**out, **self.score(out, batch["class_embed"]),
                "logit_scale": jnp.exp(self.logit_scale[...])}


def check_ov_detector(cfg: Mapping) -> None:
    """Head sizes positive (one line)."""
    require_positive(cfg["model"]["ov_detector"], "model.ov_detector", "head_depth")
