"""CLIP's ResNet image tower (ModifiedResNet, Radford et al. 2021; open_clip's layout).

- a stem of three 3x3 convolutions (the first strided) and a 2x2 average pool;
- stages of bottleneck blocks, anti-aliased: a strided block average-pools before its last
  1x1 convolution and before its shortcut's 1x1 convolution (no strided convolution);
- an attention pool: the mean of the final feature map is the query, the map and the mean
  (with a learned position embedding) are keys and values, multi-head; its output projection
  (`output_dim`, CLIP's embed_dim) makes "pooled". "tokens" are every spatial position through
  the value and output projections (MaskCLIP's dense features), in the same space as "pooled".
  Families then use `model.image.proj='none'` with `model.embed_dim == output_dim` (CLIP).
With `head=False` the tower returns the final feature map's positions as its trunk tokens.

BatchNorm statistics are nnx.BatchStat variables (the train state's "model_state"): training
steps (train=True) normalise by the batch's statistics over the GLOBAL batch and update the
running averages; evaluation uses the running averages. `freeze_norm` makes training use and
keep the running averages (fine-tuning, LiT with a locked ResNet).

Generalisations beyond CLIP, for small images: `stem_stride` 4 (CLIP), 2 (no stem pool) or 1
(no stem stride either), and per-stage `strides` (CLIP: 1, 2, 2, 2).
"""

import dataclasses
import math
from collections.abc import Mapping

import jax
import jax.numpy as jnp
from flax import nnx

from vlmjax.errors import ConfigError
from vlmjax.models import layers
from vlmjax.models.convolution import IMPLEMENTATIONS, Conv, avg_pool
from vlmjax.models.tower import TowerSettings, TowerSpec
from vlmjax.options import fail, require_choice, require_positive
from vlmjax.parallel.logical import constrain

EXPANSION = 4  # a bottleneck's output channels / its inner channels
# name -> (blocks per stage, stem width, attention-pool output = CLIP's embed_dim), as open_clip
# 3.3's model_configs/RN*.json (vision_cfg.layers, vision_cfg.width, embed_dim).
RESNET_SIZES = {
    "RN50": ((3, 4, 6, 3), 64, 1024),
    "RN101": ((3, 4, 23, 3), 64, 512),
    "RN50x4": ((4, 6, 10, 6), 80, 640),
    "RN50x16": ((6, 8, 18, 8), 96, 768),
    "RN50x64": ((3, 15, 36, 10), 128, 1024),
}
SIZE_KEYS = ("layers", "width", "output_dim")
STEM_STRIDES = (1, 2, 4)
OPTIONS = {
    "variant": "",  # RN50 | RN101 | RN50x4 | RN50x16 | RN50x64: sets layers, width, output_dim
    "layers": (),  # bottleneck blocks per stage, e.g. (3, 4, 6, 3)
    "width": 0,  # stem width; stage i has width * 2**i inner and 4x as many output channels
    "head_width": 64,  # attention pool: channels per head (open_clip's vision_cfg.head_width)
    "output_dim": 0,  # attention pool output (the tower's width); 0: the feature width
    "stem_stride": 4,  # 4: CLIP (strided conv + 2x2 average pool) | 2: strided conv | 1
    "strides": (),  # per stage; () = CLIP's (1, 2, 2, ...)
    "freeze_norm": False,  # training uses and keeps BatchNorm's running averages
    "bn_momentum": 0.9,  # running average decay (PyTorch's momentum 0.1)
    "bn_eps": 1e-5,
    "conv": "auto",  # auto | xla | im2col (models/convolution.py)
}


def resolve_resnet(image: Mapping) -> dict:
    """`image` with layers/width/output_dim filled from `variant`; explicit sizes must be left
    at their defaults or agree with it, so a config never silently mixes the two."""
    out = dict(image)
    variant = image.get("variant", "")
    if variant:
        if variant not in RESNET_SIZES:
            raise ConfigError(f"config.model.image.variant={variant!r} is not a ResNet variant; "
                              f"use one of {', '.join(RESNET_SIZES)}")
        for key, value in zip(SIZE_KEYS, RESNET_SIZES[variant], strict=True):
            given = tuple(image[key]) if key == "layers" else image.get(key, 0)
            if given not in ((), 0, value):
                raise ConfigError(f"config.model.image.{key}={image[key]} conflicts with variant "
                                  f"{variant!r} ({value}); leave it unset or drop the variant")
            out[key] = value
    out["layers"] = tuple(int(n) for n in out.get("layers", ()))
    out["strides"] = tuple(int(s) for s in out.get("strides", ()))
    return out


@dataclasses.dataclass(frozen=True)
class ResNetConfig:
    """Explicit sizes of a ResNet tower (named variants are resolved before this)."""

    image_size: int
    channels: int
    layers: tuple[int, ...]
    width: int
    head_width: int = 64
    output_dim: int = 0
    stem_stride: int = 4
    strides: tuple[int, ...] = ()
    freeze_norm: bool = False
    bn_momentum: float = 0.9
    bn_eps: float = 1e-5
    conv: str = "auto"

    @classmethod
    def from_config(cls, image: Mapping) -> "ResNetConfig":
        resolved = resolve_resnet(image)
        fields = {f.name for f in dataclasses.fields(cls)}
        return cls(**{k: v for k, v in resolved.items() if k in fields})

    @property
    def stage_strides(self) -> tuple[int, ...]:
        return self.strides or (1,) + (2,) * (len(self.layers) - 1)

    @property
    def total_stride(self) -> int:
        return self.stem_stride * math.prod(self.stage_strides)

    @property
    def features(self) -> int:
        """Channels of the final feature map (CLIP: width * 32)."""
        return self.width * 2 ** (len(self.layers) - 1) * EXPANSION

    @property
    def heads(self) -> int:
        return self.features // self.head_width

    @property
    def out_dim(self) -> int:
        return self.output_dim or self.features

    @property
    def grid(self) -> int:
        """Side of the final feature map."""
        return self.image_size // self.total_stride


def batch_norm(features: int, cfg: ResNetConfig, rngs: nnx.Rngs, zero: bool = False
               ) -> nnx.BatchNorm:
    """BatchNorm over channels; `zero` initialises its scale to 0 (a block's last norm, as
    CLIP: each residual branch starts as the identity)."""
    init = layers.zeros if zero else layers.ones
    return nnx.BatchNorm(features, momentum=cfg.bn_momentum, epsilon=cfg.bn_eps, scale_init=init,
                         scale_metadata={"logical_axes": ("embed",)},
                         bias_metadata={"logical_axes": ("embed",)}, rngs=rngs)


class Norm:
    """How every BatchNorm of the tower is applied in one call: batch or running statistics."""

    def __init__(self, use_running_average: bool):
        self.use_running_average = use_running_average

    def __call__(self, bn: nnx.BatchNorm, x: jax.Array) -> jax.Array:
        return bn(x, use_running_average=self.use_running_average).astype(x.dtype)


class Bottleneck(nnx.Module):
    """1x1 -> 3x3 -> (average pool) -> 1x1 (x4 channels), plus a shortcut, then ReLU."""

    def __init__(self, cin: int, planes: int, stride: int, cfg: ResNetConfig, *, rngs: nnx.Rngs):
        cout = planes * EXPANSION
        self.stride = stride
        self.conv1 = Conv(cin, planes, 1, rngs=rngs, impl=cfg.conv)
        self.bn1 = batch_norm(planes, cfg, rngs)
        self.conv2 = Conv(planes, planes, 3, rngs=rngs, impl=cfg.conv)
        self.bn2 = batch_norm(planes, cfg, rngs)
        self.conv3 = Conv(planes, cout, 1, rngs=rngs, impl=cfg.conv)
        self.bn3 = batch_norm(cout, cfg, rngs, zero=True)
        self.has_shortcut = stride > 1 or cin != cout
        if self.has_shortcut:
            self.down_conv = Conv(cin, cout, 1, rngs=rngs, impl=cfg.conv)
            self.down_bn = batch_norm(cout, cfg, rngs)

    def __call__(self, x: jax.Array, norm: Norm) -> jax.Array:
        out = jax.nn.relu(norm(self.bn1, self.conv1(x)))
        out = jax.nn.relu(norm(self.bn2, self.conv2(out)))
        out = norm(self.bn3, self.conv3(avg_pool(out, self.stride)))
        identity = x
        if self.has_shortcut:
            identity = norm(self.down_bn, self.down_conv(avg_pool(x, self.stride)))
        return constrain(jax.nn.relu(out + identity), ("batch", None, None, "embed"))


class Stage(nnx.Module):
    """`depth` bottlenecks; the first one strides and changes the channels."""

    def __init__(self, cin: int, planes: int, depth: int, stride: int, cfg: ResNetConfig, *,
                 rngs: nnx.Rngs):
        self.blocks = nnx.List([Bottleneck(cin if i == 0 else planes * EXPANSION, planes,
                                           stride if i == 0 else 1, cfg, rngs=rngs)
                                for i in range(depth)])

    def __call__(self, x: jax.Array, norm: Norm) -> jax.Array:
        for block in self.blocks:
            x = block(x, norm)
        return x


class AttentionPool2d(nnx.Module):
    """CLIP's attention pool: the mean token queries [mean; positions] + position embedding."""

    def __init__(self, grid: int, dim: int, heads: int, out_dim: int, *, rngs: nnx.Rngs):
        head_dim = dim // heads
        std = layers.normal(dim ** -0.5)
        self.pos_embed = layers.param(rngs, std, (grid * grid + 1, dim), (None, "embed"))
        for name in ("query", "key", "value"):
            setattr(self, name, layers.param(rngs, std, (dim, heads, head_dim),
                                             ("embed", "heads", "kv")))
            setattr(self, f"{name}_bias", layers.param(rngs, layers.zeros, (heads, head_dim),
                                                       ("heads", "kv")))
        self.out = layers.param(rngs, std, (heads, head_dim, out_dim), ("heads", "kv", "embed"))
        self.out_bias = layers.param(rngs, layers.zeros, (out_dim,), ("embed",))

    def _out(self, o: jax.Array) -> jax.Array:
        heads, head_dim, out_dim = self.out.shape
        kernel = self.out[...].astype(o.dtype).reshape(heads * head_dim, out_dim)
        return layers.dense(o.reshape(*o.shape[:-2], heads * head_dim), kernel,
                            self.out_bias[...].astype(o.dtype))

    def __call__(self, x: jax.Array) -> tuple[jax.Array, jax.Array]:
        """x [b, n, d] (spatial positions) -> (pooled [b, out], tokens [b, n, out]).

        One query, so the key and value projections are moved to the other side of the sums:
        scores_hj = x_j . (W_k,h q_h) (the key bias adds the same to every score of a head, which
        the softmax cancels) and the head's output is (sum_j a_hj x_j) W_v,h + b_v,h. The same
        attention as projecting all n + 1 keys and values, in O(heads d (n + head_dim)) per
        example instead of O(n d^2). Tokens (positions through value and output projections)
        are computed only where they are used.
        """
        dt = x.dtype
        x = jnp.concatenate([x.mean(axis=1, keepdims=True), x], axis=1)
        x = x + self.pos_embed[...].astype(dt)
        heads, head_dim, _ = self.out.shape
        q = layers.dense(x[:, 0], self.query[...].astype(dt), self.query_bias[...].astype(dt))
        u = jnp.einsum("bhk,dhk->bhd", q, self.key[...].astype(dt)) * head_dim ** -0.5
        scores = jnp.einsum("bhd,bnd->bhn", u, x).astype(jnp.float32)
        weights = jax.nn.softmax(scores, axis=-1).astype(dt)
        mixed = jnp.einsum("bhn,bnd->bhd", weights, x)
        value, value_bias = self.value[...].astype(dt), self.value_bias[...].astype(dt)
        pooled = jnp.einsum("bhd,dhk->bhk", mixed, value) + value_bias
        tokens = layers.dense(x[:, 1:], value, value_bias)
        return self._out(pooled), self._out(tokens)


class ModifiedResNet(nnx.Module):
    """CLIP's ResNet: stem, bottleneck stages, attention pool (module doc)."""

    def __init__(self, cfg: ResNetConfig, settings: TowerSettings, *, rngs: nnx.Rngs):
        w, conv = cfg.width, cfg.conv
        self.cfg, self.head = cfg, settings.head
        self.dtype = settings.compute_dtype
        self.width = cfg.out_dim if settings.head else cfg.features
        first = 1 if cfg.stem_stride == 1 else 2
        self.conv1 = Conv(cfg.channels, w // 2, 3, rngs=rngs, stride=first, impl=conv)
        self.bn1 = batch_norm(w // 2, cfg, rngs)
        self.conv2 = Conv(w // 2, w // 2, 3, rngs=rngs, impl=conv)
        self.bn2 = batch_norm(w // 2, cfg, rngs)
        self.conv3 = Conv(w // 2, w, 3, rngs=rngs, impl=conv)
        self.bn3 = batch_norm(w, cfg, rngs)
        stages, cin = [], w
        for i, (depth, stride) in enumerate(zip(cfg.layers, cfg.stage_strides, strict=True)):
            stages.append(Stage(cin, w * 2 ** i, depth, stride, cfg, rngs=rngs))
            cin = w * 2 ** i * EXPANSION
        self.stages = nnx.List(stages)
        if settings.head:
            self.pool = AttentionPool2d(cfg.grid, cfg.features, cfg.heads, cfg.out_dim, rngs=rngs)

    def features(self, images: jax.Array, *, train: bool = False) -> jax.Array:
        """images [b, H, W, c] -> the final feature map's positions [b, h * w, features]."""
        norm = Norm(use_running_average=not train or self.cfg.freeze_norm)
        x = constrain(images.astype(self.dtype), ("batch", None, None, None))
        x = jax.nn.relu(norm(self.bn1, self.conv1(x)))
        x = jax.nn.relu(norm(self.bn2, self.conv2(x)))
        x = jax.nn.relu(norm(self.bn3, self.conv3(x)))
        x = avg_pool(x, 2 if self.cfg.stem_stride == 4 else 1)
        for stage in self.stages:
            x = stage(x, norm)
        return x.reshape(x.shape[0], -1, x.shape[-1])

    def __call__(self, images: jax.Array, *, train: bool = False,
                 rng: jax.Array | None = None) -> dict[str, jax.Array]:
        """images: [b, H, W, c] normalised floats -> {"pooled", "tokens", "mask"} (module doc
        of `models.tower`); with head=False {"tokens": the final feature map, "mask"}."""
        del rng  # no stochastic layers
        x = self.features(images, train=train)
        mask = jnp.ones(x.shape[:2], bool)
        if not self.head:
            return {"tokens": x, "mask": mask}
        pooled, tokens = self.pool(x)
        return {"pooled": pooled, "tokens": constrain(tokens, ("batch", "length", "embed")),
                "mask": mask}


def check_resnet(cfg: Mapping, prefix: str) -> None:
    """Sizes resolvable and positive, strides the image size reaches, heads dividing the
    features, known convolution and BatchNorm settings, BatchNorm frozen in a locked tower:
    each a one-line ConfigError."""
    image = cfg["model"]["image"]
    r = resolve_resnet(image)
    if not r["layers"] or min(r["layers"]) <= 0:
        fail(f"{prefix}.layers", f"is {tuple(image['layers'])}", "give the bottleneck blocks per "
             "stage, e.g. (3, 4, 6, 3), or set model.image.variant (e.g. 'RN50')")
    require_positive(r, prefix, "width", "head_width")
    if r["width"] % 2:
        fail(f"{prefix}.width", f"is {r['width']}", "use an even width (the stem's first "
             "convolutions have width / 2 channels)")
    require_choice(r, prefix, "stem_stride", STEM_STRIDES)
    require_choice(r, prefix, "conv", IMPLEMENTATIONS)
    if r["output_dim"] < 0:
        fail(f"{prefix}.output_dim", f"is {r['output_dim']}", "use 0 (the feature width) or a "
             "positive width")
    if r["strides"] and (len(r["strides"]) != len(r["layers"]) or min(r["strides"]) <= 0):
        fail(f"{prefix}.strides", f"is {r['strides']}", f"give one positive stride per stage "
             f"({len(r['layers'])}), or () for CLIP's (1, 2, 2, ...)")
    if not 0 <= r["bn_momentum"] < 1 or r["bn_eps"] <= 0:
        fail(f"{prefix}.bn_momentum", f"is {r['bn_momentum']} (bn_eps {r['bn_eps']})",
             "use a decay in [0, 1), e.g. 0.9, and a positive bn_eps")
    if cfg["train"]["locked_tower"] == "image" and not image["freeze_norm"]:
        fail(f"{prefix}.freeze_norm", "is False but train.locked_tower='image' (LiT): training "
             "steps would still move the locked ResNet's BatchNorm statistics",
             f"set {prefix}.freeze_norm=True")
    resnet = ResNetConfig.from_config(image)
    if image["image_size"] % resnet.total_stride:
        fail(f"{prefix}.image_size", f"({image['image_size']}) is not a multiple of the ResNet's "
             f"stride ({resnet.total_stride} = stem {resnet.stem_stride} x stages "
             f"{resnet.stage_strides})", "use a multiple of it, or change stem_stride / strides")
    if resnet.features % resnet.head_width:
        fail(f"{prefix}.head_width", f"({resnet.head_width}) does not divide the ResNet's "
             f"features ({resnet.features})", "pick a head width that divides them")


def build_resnet(section: Mapping, settings: TowerSettings, *, rngs: nnx.Rngs) -> ModifiedResNet:
    return ModifiedResNet(ResNetConfig.from_config(section), settings, rngs=rngs)


RESNET = TowerSpec(build=build_resnet, options=OPTIONS, check=check_resnet,
                   width=lambda section: ResNetConfig.from_config(section).out_dim)
