"""Named ViT sizes (Ti/S/B/L/H/g) and resolution of `model.image` into explicit sizes."""

from collections.abc import Mapping

from vlmjax.errors import ConfigError

# name -> (width, depth, heads, mlp_dim), as in the ViT/CLIP papers and big_vision.
VIT_SIZES = {
    "Ti": (192, 12, 3, 768),
    "S": (384, 12, 6, 1536),
    "B": (768, 12, 12, 3072),
    "L": (1024, 24, 16, 4096),
    "H": (1280, 32, 16, 5120),
    "g": (1408, 40, 16, 6144),
}
SIZE_KEYS = ("width", "depth", "heads", "mlp_dim")


def resolve_vit(image: Mapping) -> dict:
    """Returns `image` with width/depth/heads/mlp_dim/patch_size filled from `variant` if set.

    A variant is exactly "<size>/<patch>" (e.g. "B/16"); explicit sizes must then be left at 0,
    so that a config never silently mixes a named size with a hand-set one.
    """
    out = dict(image)
    variant = image.get("variant", "")
    if variant:
        size, sep, patch = variant.partition("/")
        if size not in VIT_SIZES or not sep or not patch.isdigit():
            raise ConfigError(f"config.model.image.variant={variant!r} is not a ViT variant; use "
                              f"<size>/<patch> with size in {'/'.join(VIT_SIZES)}, e.g. 'B/16'")
        for key, value in zip(SIZE_KEYS, VIT_SIZES[size], strict=True):
            if image.get(key, 0) not in (0, value):
                raise ConfigError(f"config.model.image.{key}={image[key]} conflicts with "
                                  f"variant {variant!r} ({value}); set it to 0 or drop the variant")
            out[key] = value
        out["patch_size"] = int(patch)
    else:
        missing = [k for k in SIZE_KEYS if image.get(k, 0) <= 0]
        if missing:
            raise ConfigError(f"config.model.image.{missing[0]} is not set and there is no "
                              "variant; set model.image.variant (e.g. 'B/16') or all of "
                              f"{', '.join(SIZE_KEYS)}")
    return out
