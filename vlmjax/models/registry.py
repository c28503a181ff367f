"""The model-family registry (`config.model.name`), the `model` section's keys and its checks.

Adding a family is one module (its nnx.Module, options and check) and one line here.
"""

import math
from collections.abc import Mapping

from flax import nnx

from vlmjax.models import (
    coca,
    distill,
    filip,
    layers,
    ov_detector,
    ov_segmenter,
    patch_phrase,
    stacked,
    two_tower,
)
from vlmjax.models.family import ModelFamily
from vlmjax.models.projection import check_projection
from vlmjax.models.towers import SIDES, tower_schema, tower_spec, tower_width
from vlmjax.options import require_choice, require_positive
from vlmjax.registry import Registry


def _teacher_family(section: Mapping) -> ModelFamily:
    return FAMILIES.get_or_fail(section["name"], "model.distill.teacher_model.name")


def _build_distill(model: Mapping, vocab_size: int, context_length: int, *,
                   rngs: nnx.Rngs) -> distill.Distill:
    return distill.Distill(model, vocab_size, context_length, rngs=rngs,
                           teacher_family=_teacher_family)


FAMILIES: Registry[ModelFamily] = Registry("model.name", {
    "two_tower": ModelFamily(build=two_tower.TwoTower, towers=two_tower.TOWER_PATTERNS,
                             capabilities=frozenset({"embedding", "image_tokens"})),
    "coca": ModelFamily(build=coca.CoCa, towers=coca.COCA_TOWER_PATTERNS,
                        capabilities=frozenset({"embedding", "captions"}),
                        outputs=frozenset({"embeddings", "captions"}),
                        options=coca.OPTIONS, check=coca.check_coca),
    "filip": ModelFamily(build=filip.Filip, towers=two_tower.TOWER_PATTERNS,
                         capabilities=frozenset({"token_wise", "image_tokens"}),
                         outputs=frozenset({"tokens"}),
                         scoring="token_wise", options=filip.OPTIONS, check=filip.check_filip,
                         temperatures=("logit_scale", "logit_scale_t2i")),
    # CLIP's towers whose patches and item phrases also meet in the joint space (a local
    # objective: objectives.patch_phrase); evaluated like two_tower.
    "patch_phrase": ModelFamily(build=patch_phrase.PatchPhrase, towers=two_tower.TOWER_PATTERNS,
                                capabilities=frozenset({"embedding", "image_tokens"}),
                                outputs=frozenset({"embeddings", "phrases"}),
                                options=patch_phrase.OPTIONS, check=patch_phrase.check_patch_phrase,
                                temperatures=("logit_scale", "phrase_logit_scale"),
                                patch_sigmoid=("phrase_logit_scale", "phrase_logit_bias"),
                                patch_null="null_phrase"),
    # A two-tower student beside a frozen teacher run (objectives.distill); evaluated as the
    # student alone.
    "distill": ModelFamily(build=_build_distill, towers=two_tower.TOWER_PATTERNS,
                           capabilities=frozenset({"embedding", "image_tokens"}),
                           outputs=frozenset({"embeddings", "teacher"}), options=distill.OPTIONS,
                           check=lambda cfg: distill.check_distill(cfg, FAMILIES),
                           export_view=distill.student_view),
    # OWL-ViT's per-token box / class-embedding / objectness heads on an image tower, scored
    # against given class embeddings (a teacher's); no text tower (objectives.ov_detection).
    "ov_detector": ModelFamily(build=ov_detector.OVDetector, towers=ov_detector.TOWER_PATTERNS,
                               capabilities=frozenset({"detection"}),
                               outputs=frozenset({"detections"}),
                               options=ov_detector.OPTIONS, check=ov_detector.check_ov_detector),
    # MaskCLIP+'s student: a per-token class embedding on an image tower scored against given
    # class embeddings (a teacher's), upsampled to pixels (objectives.pseudo_segmentation).
    "ov_segmenter": ModelFamily(build=ov_segmenter.OVSegmenter, towers=ov_segmenter.TOWER_PATTERNS,
                                capabilities=frozenset({"segmentation"}),
                                outputs=frozenset({"segmentation"})),
})
# family -> (section, key) of a model section nested in its options (a teacher's): its schema
# is the model schema of the family it names.
NESTED_MODELS = {"distill": ("distill", "teacher_model")}
DTYPES = ("float32", "bfloat16")
# Keys of `model` every family has (each family adds its own sections, each tower its keys).
MODEL_OPTIONS = {
    "name": "two_tower",
    "embed_dim": 128,
    "activation": "gelu",  # gelu (exact erf) | quick_gelu (OpenAI CLIP) | gelu_tanh (flax nn.gelu)
    "norm_eps": 1e-5,  # epsilon of the towers' LayerNorms (CLIP 1e-5; big_vision/flax 1e-6)
    "dtype": "float32",  # compute dtype; parameters stay float32
    # Activation rematerialisation per transformer block: none | full | dots | dots_no_batch
    # (jax.checkpoint_policies: nothing_saveable, dots_saveable, dots_with_no_batch_dims_saveable).
    "remat": "none",
    "scan_layers": False,  # one scanned block per tower instead of unrolled layers
    "logit_scale_init": math.log(1 / 0.07),  # CLIP; SigLIP: log(10)
    "max_logit_scale": 100.0,  # exp(t) is clamped to at most this after every update
    "use_logit_bias": False,  # SigLIP's learnable bias b
    "logit_bias_init": -10.0,
}


def model_schema(model: Mapping) -> dict:
    """Every key of the `model` section with its default, for the family and towers it names."""
    name = model.get("name", MODEL_OPTIONS["name"])
    schema = {**MODEL_OPTIONS, "name": name, **family_options(name),
              **{side: tower_schema(side, model.get(side, {})) for side in SIDES}}
    if name in NESTED_MODELS:
        section, key = NESTED_MODELS[name]
        nested = model.get(section, {})
        nested = nested.get(key, {}) if isinstance(nested, Mapping) else {}
        if isinstance(nested, Mapping) and nested:
            schema[section] = {**schema[section], key: model_schema(nested)}
    return schema


def get_family(model: Mapping) -> ModelFamily:
    """The family `model.name` names (ConfigError listing the registered ones otherwise)."""
    return FAMILIES.get_or_fail(model["name"])


def family_options(name: str) -> Mapping:
    """The `model.*` sections family `name` adds, with their defaults."""
    return FAMILIES.get_or_fail(name).options


def check_model(cfg: Mapping) -> None:
    """The common model keys, then the family's and each tower's own checks (ConfigError)."""
    model = cfg["model"]
    family = get_family(model)
    require_choice(model, "model", "activation", layers.ACTIVATIONS)
    require_choice(model, "model", "dtype", DTYPES)
    require_choice(model, "model", "remat", stacked.REMAT_POLICIES)
    require_positive(model, "model", "embed_dim", "norm_eps", "max_logit_scale")
    for side in SIDES:
        tower_spec(model, side).check(cfg, f"model.{side}")
    require_positive(model["image"], "model.image", "image_size", "channels")
    for side in SIDES:
        check_projection(side, model[side]["proj"], tower_width(model, side), model["embed_dim"])
    family.check(cfg)
