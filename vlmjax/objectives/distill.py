"""Image-level knowledge distillation: the student's own loss plus terms from a frozen teacher.

With student embeddings (image u_i, text v_j, logit scale s), their maps into the teacher's
space (u'_i, v'_j: `model.distill.projection`), and the teacher's (image a_i, text b_j, logit
scale s_t), all L2-normalised, over the global batch of B pairs:
- student: CLIP's softmax or SigLIP's sigmoid loss on (u, v) (`student_loss`);
- feature (CLIP-KD's feature distillation; ViLD-image's L1): mean over pairs of
  d(u'_i, a_i) and d(v'_i, b_i), averaged over the two sides, with d = 1 - cos ("cosine"),
  ||x - y||^2 ("mse", = 2 (1 - cos) on the unit sphere: CLIP-KD's form) or ||x - y||_1 ("l1");
- affinity (TinyCLIP's affinity mimicking; open_clip's DistillClipLoss up to the teacher's
  entropy, a constant): KL(softmax(T) || softmax(S)) of each row (image -> text) and each
  column (text -> image), mean over rows and columns, averaged over the two directions, with
  S = s u v^T the student's and T = s_t a b^T the teacher's logits (each at its own
  temperature);
- interactive (CLIP-KD's interactive contrastive learning): student image u'_i as the anchor
  among the teacher's texts b_j, and student text v'_i among the teacher's images a_j, softmax
  cross-entropy at the student's scale s with the pair's own as the positive, averaged.
loss = student + feature_weight * feature + affinity_weight * affinity
       + interactive_weight * interactive.
Every term is a function of global arrays: under jit with a sharded batch it equals the
single-device value on the concatenated batch.
"""

from collections.abc import Mapping

import jax
import jax.numpy as jnp
import optax

from vlmjax.objectives.contrastive import (
    CONTRASTIVE_OPTIONS,
    check_contrastive_options,
    softmax_contrastive,
)
from vlmjax.objectives.objective import Objective
from vlmjax.objectives.sigmoid import sigmoid_contrastive
from vlmjax.options import fail, require_choice, require_non_negative

STUDENT_LOSSES = ("clip", "siglip")
FEATURE_LOSSES = ("cosine", "mse", "l1")
OPTIONS = {**CONTRASTIVE_OPTIONS, "student_loss": "clip", "student_weight": 1.0,
           "feature_weight": 0.0, "feature_loss": "cosine", "affinity_weight": 1.0,
           "interactive_weight": 0.0}


def feature_distance(student: jax.Array, teacher: jax.Array, kind: str = "cosine") -> jax.Array:
    """Mean over rows of the distance between normalised embeddings [B, e] (module doc)."""
    student, teacher = student.astype(jnp.float32), teacher.astype(jnp.float32)
    if kind == "cosine":
        return jnp.mean(1.0 - jnp.sum(student * teacher, axis=-1))
    if kind == "mse":
        return jnp.mean(jnp.sum(jnp.square(student - teacher), axis=-1))
    if kind == "l1":
        return jnp.mean(jnp.sum(jnp.abs(student - teacher), axis=-1))
    raise ValueError(f"unknown feature loss {kind!r}; choose one of {FEATURE_LOSSES}")


def _kl_rows(teacher_logits: jax.Array, student_logits: jax.Array) -> jax.Array:
    """Mean over rows of KL(softmax(teacher row) || softmax(student row))."""
    teacher_logp = jax.nn.log_softmax(teacher_logits, axis=-1)
    student_logp = jax.nn.log_softmax(student_logits, axis=-1)
    return jnp.mean(jnp.sum(jnp.exp(teacher_logp) * (teacher_logp - student_logp), axis=-1))


def affinity_kl(image: jax.Array, text: jax.Array, scale: jax.Array, teacher_image: jax.Array,
                teacher_text: jax.Array, teacher_scale: jax.Array) -> jax.Array:
    """KL between the teacher's and the student's image-text distributions, both directions."""
    student = scale * jnp.einsum("ie,te->it", image, text).astype(jnp.float32)
    teacher = teacher_scale * jnp.einsum("ie,te->it", teacher_image, teacher_text).astype(
        jnp.float32)
    return (_kl_rows(teacher, student) + _kl_rows(teacher.T, student.T)) / 2


def _anchored_ce(anchors: jax.Array, candidates: jax.Array, scale: jax.Array) -> jax.Array:
    """Softmax cross-entropy of each anchor among the candidates, its own row the positive."""
    logits = scale * jnp.einsum("ie,te->it", anchors, candidates).astype(jnp.float32)
    labels = jnp.arange(logits.shape[0])
    return optax.softmax_cross_entropy_with_integer_labels(logits, labels).mean()


def interactive_contrastive(image: jax.Array, text: jax.Array, scale: jax.Array,
                            teacher_image: jax.Array, teacher_text: jax.Array) -> jax.Array:
    """Student image among teacher texts and student text among teacher images, averaged."""
    return (_anchored_ce(image, teacher_text, scale) + _anchored_ce(text, teacher_image, scale)) / 2


def distill_loss(outputs: Mapping[str, jax.Array], options: Mapping,
                 batch: Mapping[str, jax.Array] | None = None) -> tuple[jax.Array, dict]:
    """student + weighted feature, affinity and interactive terms (module doc)."""
    o = {**OPTIONS, **options}
    image, text, scale = outputs["image_embed"], outputs["text_embed"], outputs["logit_scale"]
    if o["student_loss"] == "siglip":
        student, accuracy = sigmoid_contrastive(
            image, text, scale, outputs["logit_bias"], implementation=o["implementation"],
            chunk_size=o["chunk_size"])
    else:
        student, accuracy = softmax_contrastive(
            image, text, scale, implementation=o["implementation"], chunk_size=o["chunk_size"])
    teacher_image, teacher_text = outputs["teacher_image_embed"], outputs["teacher_text_embed"]
    mapped_image, mapped_text = outputs["distill_image_embed"], outputs["distill_text_embed"]
    terms = {"student_loss": student}
    if o["feature_weight"]:
        terms["feature_loss"] = (feature_distance(mapped_image, teacher_image, o["feature_loss"])
                                 + feature_distance(mapped_text, teacher_text,
                                                    o["feature_loss"])) / 2
    if o["affinity_weight"]:
        terms["affinity_loss"] = affinity_kl(image, text, scale, teacher_image, teacher_text,
                                             outputs["teacher_logit_scale"])
    if o["interactive_weight"]:
        terms["interactive_loss"] = interactive_contrastive(mapped_image, mapped_text, scale,
                                                            teacher_image, teacher_text)
    weights = {"student_loss": o["student_weight"], "feature_loss": o["feature_weight"],
               "affinity_loss": o["affinity_weight"], "interactive_loss": o["interactive_weight"]}
    loss = sum(weights[k] * v for k, v in terms.items())
    metrics = {"loss": loss, **terms, "logit_scale": scale,
               "teacher_logit_scale": outputs["teacher_logit_scale"], **accuracy}
    if "logit_bias" in outputs:
        metrics["logit_bias"] = outputs["logit_bias"]
    return loss, metrics


def check_distill_objective(config: Mapping) -> None:
    """Known losses, non-negative weights, a bias for SigLIP, and a teacher width the feature and
    interactive terms can compare with (else model.distill.projection='linear')."""
    check_contrastive_options(config, OPTIONS)
    o = {**OPTIONS, **config["objective"]}
    require_choice(o, "objective", "student_loss", STUDENT_LOSSES)
    require_choice(o, "objective", "feature_loss", FEATURE_LOSSES)
    require_non_negative(o, "objective", "student_weight", "feature_weight", "affinity_weight",
                         "interactive_weight")
    model = config["model"]
    if o["student_loss"] == "siglip" and not model["use_logit_bias"]:
        fail("objective.student_loss", "='siglip' needs a learnable bias",
             "set --config.model.use_logit_bias=true (SigLIP inits: logit_scale_init=2.3026, "
             "logit_bias_init=-10)")
    distill = model.get("distill", {})
    teacher_model = distill.get("teacher_model") or {}
    uses_features = o["feature_weight"] or o["interactive_weight"]
    if uses_features and teacher_model and distill.get("projection") == "none" and (
            teacher_model["embed_dim"] != model["embed_dim"]):
        fail("model.distill.projection", f"='none' but the teacher's embed_dim "
             f"({teacher_model['embed_dim']}) differs from the student's ({model['embed_dim']}), "
             "which objective.feature_weight / interactive_weight compare",
             "set --config.model.distill.projection=linear (a learned map into the teacher's "
             "space)")


DISTILL = Objective(name="distill", loss=distill_loss, options=OPTIONS,
                    consumes=frozenset({"embeddings", "teacher"}), check=check_distill_objective)
