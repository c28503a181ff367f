"""The tower registries: `model.image.kind` and `model.text.kind` -> a tower spec.

Adding a tower kind is one module defining its TowerSpec and one line here.
"""

from collections.abc import Mapping

from flax import nnx

from vlmjax.models import bert, resnet, text, vit
from vlmjax.models.tower import IMAGE_COMMON, TEXT_COMMON, TowerSettings, TowerSpec
from vlmjax.registry import Registry

IMAGE_TOWERS: Registry[TowerSpec] = Registry("model.image.kind", {
    "vit": vit.VIT,
    "resnet": resnet.RESNET,
})
TEXT_TOWERS: Registry[TowerSpec] = Registry("model.text.kind", {
    "transformer": text.TRANSFORMER,
    "bert": bert.BERT,
})
SIDES = {"image": (IMAGE_TOWERS, IMAGE_COMMON), "text": (TEXT_TOWERS, TEXT_COMMON)}


def tower_spec(model: Mapping, side: str) -> TowerSpec:
    """The registered tower that `model.<side>.kind` names (ConfigError otherwise)."""
    return SIDES[side][0].get_or_fail(model[side]["kind"])


def tower_schema(side: str, section: Mapping) -> dict:
    """Keys of `model.<side>` with their defaults for the tower kind `section` names (the
    default kind if it names none): the common keys and the tower's own."""
    registry, common = SIDES[side]
    kind = section.get("kind", common["kind"]) if isinstance(section, Mapping) else common["kind"]
    return {**common, **registry.get_or_fail(kind, f"model.{side}.kind").options, "kind": kind}


def build_tower(model: Mapping, side: str, settings: TowerSettings, rngs: nnx.Rngs) -> nnx.Module:
    """The `side` tower of the model section `model`."""
    return tower_spec(model, side).build(model[side], settings, rngs=rngs)


def tower_width(model: Mapping, side: str) -> int:
    """The feature width of the `side` tower (what its projection maps from)."""
    return tower_spec(model, side).width(model[side])
