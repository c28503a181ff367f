"""Vision Transformer image tower: patches -> pre-LN encoder -> pooled, projected embedding."""

import dataclasses
from collections.abc import Mapping

import jax
import jax.numpy as jnp
from flax import nnx

from vlmjax.models import layers, projection
from vlmjax.models.sizes import resolve_vit
from vlmjax.parallel.logical import constrain

POOLS = ("cls", "gap", "map")


@dataclasses.dataclass(frozen=True)
class VitConfig:
    """Explicit sizes of a ViT tower (named variants are resolved before this)."""

    image_size: int
    channels: int
    patch_size: int
    width: int
    depth: int
    heads: int
    mlp_dim: int
    pool: str = "cls"
    ln_pre: bool = False
    proj: str = "linear"  # projection.KINDS

    @classmethod
    def from_config(cls, image: Mapping) -> "VitConfig":
        resolved = resolve_vit(image)
        fields = {f.name for f in dataclasses.fields(cls)}
        return cls(**{k: v for k, v in resolved.items() if k in fields})

    @property
    def num_patches(self) -> int:
        return (self.image_size // self.patch_size) ** 2


class VisionTransformer(nnx.Module):
    """ViT with class-token, global-average or MAP pooling and a projection head.

    `norm_eps` is every LayerNorm's epsilon (CLIP 1e-5, big_vision/flax 1e-6).
    """

    def __init__(self, cfg: VitConfig, embed_dim: int, activation: str, *, rngs: nnx.Rngs,
                 remat: str = "none", scan_layers: bool = False, norm_eps: float = 1e-5):
        if cfg.pool not in POOLS:
            raise ValueError(f"pool must be one of {POOLS}, got {cfg.pool!r}")
        p, w = cfg.patch_size, cfg.width
        self.cfg = cfg
        self.patch_embed = layers.param(rngs, layers.xavier(in_axis=(0, 1, 2), out_axis=3),
                                        (p, p, cfg.channels, w), (None, None, None, "embed"))
        self.patch_bias = layers.param(rngs, layers.zeros, (w,), ("embed",))
        num_tokens = cfg.num_patches + (cfg.pool == "cls")
        self.pos_embed = layers.param(rngs, layers.normal(w ** -0.5), (num_tokens, w),
                                      (None, "embed"))
        if cfg.pool == "cls":
            self.cls_token = layers.param(rngs, layers.normal(w ** -0.5), (w,), ("embed",))
        self.ln_pre = layers.LayerNorm(w, rngs=rngs, eps=norm_eps) if cfg.ln_pre else None
        self.encoder = layers.Encoder(w, cfg.depth, cfg.heads, cfg.mlp_dim, activation, rngs=rngs,
                                      remat=remat, scan=scan_layers, norm_eps=norm_eps)
        self.ln_post = layers.LayerNorm(w, rngs=rngs, eps=norm_eps)
        if cfg.pool == "map":
            self.map_head = layers.AttentionPool(w, cfg.heads, cfg.mlp_dim, activation, rngs=rngs,
                                                 norm_eps=norm_eps)
        projection.add_projection(self, cfg.proj, w, embed_dim, rngs)

    def patchify(self, images: jax.Array) -> jax.Array:
        """[b, H, W, c] -> [b, n, p, p, c] in row-major patch order."""
        b, h, w, c = images.shape
        p = self.cfg.patch_size
        x = images.reshape(b, h // p, p, w // p, p, c).transpose(0, 1, 3, 2, 4, 5)
        return x.reshape(b, (h // p) * (w // p), p, p, c)

    def encode_tokens(self, images: jax.Array) -> jax.Array:
        """Patches (+ class token) through the encoder, before ln_post: [b, n (+1), d]."""
        dt = images.dtype
        x = jnp.einsum("bnpqc,pqcd->bnd", self.patchify(images), self.patch_embed[...].astype(dt))
        x = x + self.patch_bias[...].astype(dt)
        if self.cfg.pool == "cls":
            cls = jnp.broadcast_to(self.cls_token[...].astype(dt), (x.shape[0], 1, x.shape[-1]))
            x = jnp.concatenate([cls, x], axis=1)
        x = constrain(x + self.pos_embed[...].astype(dt), ("batch", "length", "embed"))
        if self.ln_pre is not None:
            x = self.ln_pre(x)
        return self.encoder(x)

    def __call__(self, images: jax.Array) -> dict[str, jax.Array]:
        """images: [b, H, W, c] normalised floats -> {"embedding": [b, e], "tokens": [b, n, d]}."""
        x = self.ln_post(self.encode_tokens(images))
        if self.cfg.pool == "cls":
            pooled, tokens = x[:, 0], x[:, 1:]
        elif self.cfg.pool == "gap":
            pooled, tokens = x.mean(axis=1), x
        else:
            pooled, tokens = self.map_head(x)[:, 0], x
        return {"embedding": projection.project(self, self.cfg.proj, pooled), "tokens": tokens}
