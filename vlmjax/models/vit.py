"""Vision Transformer image tower: patches -> pre-LN encoder -> pooled features and tokens.

FLIP's patch masking (Li et al. 2023; open_clip's `patch_dropout`): with `mask_ratio` > 0 a
random fraction of the patch tokens is dropped during training only (the class token is always
kept), so the encoder runs on fewer tokens; evaluation sees every patch.
"""

import dataclasses
from collections.abc import Mapping

import jax
import jax.numpy as jnp
from flax import nnx

from vlmjax.models import layers
from vlmjax.models.sizes import resolve_vit
from vlmjax.models.tower import TowerSettings, TowerSpec
from vlmjax.options import fail, require_choice
from vlmjax.parallel.logical import constrain

POOLS = ("cls", "gap", "map")
OPTIONS = {
    "variant": "",  # "B/16" etc. sets width/depth/heads/mlp_dim/patch_size
    "patch_size": 16,
    "width": 0,
    "depth": 0,
    "heads": 0,
    "mlp_dim": 0,
    "pool": "cls",  # cls | gap | map
    "ln_pre": False,
    "mask_ratio": 0.0,  # FLIP: fraction of patch tokens dropped in training steps
}


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
    mask_ratio: float = 0.0

    @classmethod
    def from_config(cls, image: Mapping) -> "VitConfig":
        resolved = resolve_vit(image)
        fields = {f.name for f in dataclasses.fields(cls)}
        return cls(**{k: v for k, v in resolved.items() if k in fields})

    @property
    def num_patches(self) -> int:
        return (self.image_size // self.patch_size) ** 2


def kept_patches(num_patches: int, mask_ratio: float) -> int:
    """How many patch tokens a masked training step keeps (at least one, as open_clip)."""
    return max(1, int(num_patches * (1 - mask_ratio)))


class VisionTransformer(nnx.Module):
    """ViT with class-token, global-average or MAP pooling; `norm_eps` for every LayerNorm."""

    def __init__(self, cfg: VitConfig, settings: TowerSettings, *, rngs: nnx.Rngs):
        if cfg.pool not in POOLS:
            raise ValueError(f"pool must be one of {POOLS}, got {cfg.pool!r}")
        p, w, eps = cfg.patch_size, cfg.width, settings.norm_eps
        self.cfg, self.width, self.head = cfg, w, settings.head
        self.dtype = settings.compute_dtype
        self.patch_embed = layers.param(rngs, layers.xavier(in_axis=(0, 1, 2), out_axis=3),
                                        (p, p, cfg.channels, w), (None, None, None, "embed"))
        self.patch_bias = layers.param(rngs, layers.zeros, (w,), ("embed",))
        num_tokens = cfg.num_patches + (cfg.pool == "cls")
        self.pos_embed = layers.param(rngs, layers.normal(w ** -0.5), (num_tokens, w),
                                      (None, "embed"))
        if cfg.pool == "cls":
            self.cls_token = layers.param(rngs, layers.normal(w ** -0.5), (w,), ("embed",))
        self.ln_pre = layers.LayerNorm(w, rngs=rngs, eps=eps) if cfg.ln_pre else None
        self.encoder = layers.Encoder(w, cfg.depth, cfg.heads, cfg.mlp_dim, settings.activation,
                                      rngs=rngs, remat=settings.remat, scan=settings.scan_layers,
                                      norm_eps=eps)
        if settings.head:
            self.ln_post = layers.LayerNorm(w, rngs=rngs, eps=eps)
            if cfg.pool == "map":
                self.map_head = layers.AttentionPool(w, cfg.heads, cfg.mlp_dim, settings.activation,
                                                     rngs=rngs, norm_eps=eps)

    def patchify(self, images: jax.Array) -> jax.Array:
        """[b, H, W, c] -> [b, n, p, p, c] in row-major patch order."""
        b, h, w, c = images.shape
        p = self.cfg.patch_size
        x = images.reshape(b, h // p, p, w // p, p, c).transpose(0, 1, 3, 2, 4, 5)
        return x.reshape(b, (h // p) * (w // p), p, p, c)

    def _mask_patches(self, x: jax.Array, rng: jax.Array) -> jax.Array:
        """A random subset of `kept_patches` patch tokens per example (FLIP), in patch order."""
        keep = kept_patches(x.shape[1], self.cfg.mask_ratio)
        noise = jax.random.uniform(rng, x.shape[:2])
        kept = jnp.sort(jax.lax.top_k(noise, keep)[1], axis=-1)
        return jnp.take_along_axis(x, kept[:, :, None], axis=1)

    def encode_tokens(self, images: jax.Array, *, train: bool = False,
                      rng: jax.Array | None = None) -> jax.Array:
        """Patches (+ class token) through the encoder, before ln_post: [b, n (+1), d]."""
        dt = self.dtype
        images = images.astype(dt)
        patches = self.patchify(images)
        b, n = patches.shape[:2]
        # bnpqc,pqcd->bnd as one matmul of the rows [b*n, p*p*c] x [p*p*c, d] (`layers.dense`):
        # with the einsum, XLA:CPU computed the kernel gradient as [d, p*p*c] and transposed it,
        # and built the transposed input gradient [d, b*n] in one fusion that recomputed the
        # whole residual-gradient chain of the encoder.
        kernel = self.patch_embed[...].astype(dt)
        x = layers.dense(patches.reshape(b, n, -1), kernel.reshape(-1, kernel.shape[-1]),
                         self.patch_bias[...].astype(dt))
        pos = self.pos_embed[...].astype(dt)
        cls_pos, patch_pos = (pos[:1], pos[1:]) if self.cfg.pool == "cls" else (None, pos)
        x = x + patch_pos
        if train and self.cfg.mask_ratio > 0:
            if rng is None:
                raise ValueError("patch masking (mask_ratio > 0) needs the step's rng in training")
            x = self._mask_patches(x, rng)
        if self.cfg.pool == "cls":
            cls = self.cls_token[...].astype(dt) + cls_pos[0]
            x = jnp.concatenate([jnp.broadcast_to(cls, (x.shape[0], 1, x.shape[-1])), x], axis=1)
        x = constrain(x, ("batch", "length", "embed"))
        if self.ln_pre is not None:
            x = self.ln_pre(x)
        return self.encoder(x)

    def __call__(self, images: jax.Array, *, train: bool = False,
                 rng: jax.Array | None = None) -> dict[str, jax.Array]:
        """images: [b, H, W, c] normalised floats -> {"pooled", "tokens", "mask"} (module doc of
        `models.tower`); with head=False {"tokens": encoder output incl. class token, "mask"}."""
        x = self.encode_tokens(images, train=train, rng=rng)
        if not self.head:
            return {"tokens": x, "mask": jnp.ones(x.shape[:2], bool)}
        x = self.ln_post(x)
        if self.cfg.pool == "cls":
            pooled, tokens = x[:, 0], x[:, 1:]
        elif self.cfg.pool == "gap":
            pooled, tokens = x.mean(axis=1), x
        else:
            pooled, tokens = self.map_head(x)[:, 0], x
        return {"pooled": pooled, "tokens": tokens, "mask": jnp.ones(tokens.shape[:2], bool)}


def check_vit(cfg: Mapping, prefix: str) -> None:
    """Sizes resolvable, patches tiling the image, heads dividing the width, known pooling."""
    image = cfg["model"]["image"]
    resolved = resolve_vit(image)  # raises on unknown variants or missing sizes
    require_choice(image, prefix, "pool", POOLS)
    if resolved["patch_size"] <= 0 or image["image_size"] % resolved["patch_size"]:
        fail(f"{prefix}.image_size", f"({image['image_size']}) is not a multiple of the patch "
             f"size ({resolved['patch_size']})", "use a multiple of the patch size")
    if resolved["width"] % resolved["heads"]:
        fail(f"{prefix}.heads", f"({resolved['heads']}) does not divide the width "
             f"({resolved['width']})", "pick heads that divide the width")
    if not 0 <= image["mask_ratio"] < 1:
        fail(f"{prefix}.mask_ratio", f"is {image['mask_ratio']}",
             "use a fraction in [0, 1), e.g. 0.5 (FLIP) or 0 (no masking)")


def build_vit(section: Mapping, settings: TowerSettings, *, rngs: nnx.Rngs) -> VisionTransformer:
    return VisionTransformer(VitConfig.from_config(section), settings, rngs=rngs)


VIT = TowerSpec(build=build_vit, options=OPTIONS, check=check_vit,
                width=lambda section: resolve_vit(section)["width"])
