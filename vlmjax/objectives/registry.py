"""The objective registry: `config.objective.name` -> an Objective (one line per objective)."""

from vlmjax.objectives import (
    coca,
    contrastive,
    distill,
    filip,
    ov_detection,
    patch_phrase,
    pseudo_segmentation,
    sigmoid,
)
from vlmjax.objectives.objective import Objective
from vlmjax.registry import Registry

OBJECTIVES: Registry[Objective] = Registry("objective.name", {
    "clip": contrastive.CLIP,
    "siglip": sigmoid.SIGLIP,
    "coca": coca.COCA,
    "filip": filip.FILIP,
    # CLIP plus a patch-to-phrase contrast (region-word matching from captions alone).
    "patch_phrase": patch_phrase.PATCH_PHRASE,
    # The student's CLIP / SigLIP loss plus feature, affinity and interactive terms from a
    # frozen teacher (model.name='distill').
    "distill": distill.DISTILL,
    # Open-vocabulary detection: Hungarian matching, ViLD-text / ViLD-image, DETR box losses.
    "ov_detection": ov_detection.OV_DETECTION,
    # Per-pixel cross-entropy on a teacher's dense pseudo-labels (MaskCLIP+), 255 ignored.
    "pseudo_segmentation": pseudo_segmentation.PSEUDO_SEGMENTATION,
})


def get_objective(name: object) -> Objective:
    """The objective registered as `name`, or a ConfigError listing the known ones."""
    return OBJECTIVES.get_or_fail(name)


def objective_schema(name: str) -> dict:
    """Allowed keys of `config.objective` for objective `name`, with their defaults."""
    return {"name": name, **get_objective(name).options}
