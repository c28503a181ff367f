"""open_clip's ModifiedResNet image tower (RN50, RN101, RN50x4, ...): its model-config keys and
which state-dict tensor is which vlmjax parameter or BatchNorm statistic.

vision_cfg.layers is a list of blocks per stage, vision_cfg.width the stem width, head_width
the attention pool's channels per head; the attention pool's output is embed_dim wide and is
the image embedding (vlmjax: model.image.proj='none', output_dim = embed_dim). Convolutions are
[out, in, k, k] (vlmjax [k, k, in, out]); BatchNorm weight/bias/running_mean/running_var are
vlmjax scale/bias/mean/var (num_batches_tracked is not used); the attention pool's q/k/v_proj
and c_proj are Linear layers.
"""

from collections.abc import Mapping

from vlmjax.errors import CheckpointError
from vlmjax.interop.torch_layout import Entry

IGNORED_SUFFIXES = ("num_batches_tracked",)
# vision_cfg keys a ModifiedResNet reads (layers, width, head_width, image_size); the ViT-only
# ones are left alone by open_clip when layers is a list.
VIT_ONLY = ("patch_size", "mlp_ratio", "no_ln_pre")


def resnet_image(v: Mapping, embed_dim: int, coca: bool, name: str, image_size: int) -> dict:
    """The vlmjax model.image section of an open_clip ModifiedResNet vision_cfg `v` (defaults
    filled in)."""
    layers = [int(n) for n in v["layers"]]
    if coca:
        raise CheckpointError(f"{name}: a CoCa with a ModifiedResNet image tower (vision_cfg."
                              f"layers={layers}) is not converted; vlmjax converts ResNet CLIPs")
    if v["attentional_pool"]:
        raise CheckpointError(f"{name}: vision_cfg.attentional_pool=True with a ModifiedResNet "
                              "is not an open_clip architecture vlmjax converts")
    width, head_width = int(v["width"]), int(v["head_width"])
    features = width * 2 ** (len(layers) - 1) * 4
    if features % head_width:
        raise CheckpointError(f"{name}: vision_cfg.head_width ({head_width}) does not divide the "
                              f"ResNet's features (width * 32 = {features})")
    if image_size % 32:
        raise CheckpointError(f"{name}: vision_cfg.image_size={image_size} is not a multiple of "
                              "32, the ModifiedResNet's stride")
    return dict(kind="resnet", variant="", image_size=image_size, channels=3,
                layers=tuple(layers), width=width, head_width=head_width,
                output_dim=int(embed_dim), stem_stride=4, strides=(), proj="none")


def _conv(src: str, ours: str) -> list[Entry]:
    return [Entry(f"{src}.weight", f"{ours}/kernel", "patch")]


def _bn(src: str, ours: str) -> list[Entry]:
    return [Entry(f"{src}.weight", f"{ours}/scale", "same"),
            Entry(f"{src}.bias", f"{ours}/bias", "same"),
            Entry(f"{src}.running_mean", f"{ours}/mean", "same"),
            Entry(f"{src}.running_var", f"{ours}/var", "same")]


def resnet_entries(image: Mapping) -> list[Entry]:
    """Every tensor of open_clip's `visual` ModifiedResNet -> vlmjax `image/...` paths."""
    out = []
    for i in (1, 2, 3):
        out += _conv(f"visual.conv{i}", f"image/conv{i}") + _bn(f"visual.bn{i}", f"image/bn{i}")
    width = image["width"]
    cin = width
    for s, depth in enumerate(image["layers"]):
        planes = width * 2 ** s
        for b in range(depth):
            src, ours = f"visual.layer{s + 1}.{b}", f"image/stages/{s}/blocks/{b}"
            for i in (1, 2, 3):
                out += _conv(f"{src}.conv{i}", f"{ours}/conv{i}") + _bn(f"{src}.bn{i}", f"{ours}/bn{i}")
            if b == 0 and (s > 0 or cin != planes * 4):  # CLIP's strides: 1, 2, 2, 2
                out += (_conv(f"{src}.downsample.0", f"{ours}/down_conv")
                        + _bn(f"{src}.downsample.1", f"{ours}/down_bn"))
        cin = planes * 4
    heads = width * 2 ** (len(image["layers"]) - 1) * 4 // image["head_width"]
    pool = "visual.attnpool"
    out.append(Entry(f"{pool}.positional_embedding", "image/pool/pos_embed", "same"))
    for short, name in (("q", "query"), ("k", "key"), ("v", "value")):
        out += [Entry(f"{pool}.{short}_proj.weight", f"image/pool/{name}", "qkv", heads),
                Entry(f"{pool}.{short}_proj.bias", f"image/pool/{name}_bias", "qkv_bias", heads)]
    return out + [Entry(f"{pool}.c_proj.weight", "image/pool/out", "attn_out", heads),
                  Entry(f"{pool}.c_proj.bias", "image/pool/out_bias", "same")]
