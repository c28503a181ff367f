"""Knowledge distillation: a two-tower student beside a frozen teacher, in one module.

The student is CLIP's `TwoTower` built from the usual `model.image` / `model.text` sections:
its `encode_image` / `encode_text` are what evaluators and exports see. The teacher is any
embedding family (two_tower, CoCa, ...) built from `model.distill.teacher_model`, the teacher
run's own model section, which the train layer copies from the teacher run's config.json
together with the pinned `model.distill.teacher_step` (so config.json alone rebuilds the model:
evaluation needs no teacher directory). The teacher's weights are `Frozen` variables, not
`nnx.Param`s: the train state keeps them in "model_state" (checkpointed and sharded like
parameters), so they get no gradient, no optimizer state, no weight decay and no share of the
gradient norm; the step only threads them through unchanged.

Called on a batch the module returns the student's outputs (`TwoTower`) plus the teacher's
embeddings and logit scale on the same images and token ids, and the student's embeddings
mapped into the teacher's space ("distill_image_embed" / "distill_text_embed": through a
learned linear map when `model.distill.projection='linear'`, else the student's own), which
the feature and interactive losses of `objectives.distill` compare with the teacher's.
"""

from collections.abc import Callable, Mapping

import jax
import jax.numpy as jnp
from flax import nnx

from vlmjax.models.embedding import l2_normalize
from vlmjax.models.family import ModelFamily
from vlmjax.models.projection import Projection
from vlmjax.models.two_tower import TwoTower, tower_rngs
from vlmjax.options import fail, require_choice

PROJECTIONS = ("none", "linear")
# model.distill: the teacher run, its pinned step (-1: the latest, resolved and recorded when
# training starts), how the student's embeddings reach the teacher's width, and the teacher's
# model section (filled from the teacher run by the train layer; its schema is the model schema
# of the family it names, see models.registry.NESTED_MODELS).
OPTIONS = {"distill": {"teacher": "", "teacher_step": -1, "projection": "none",
                       "teacher_model": {}}}
TEACHER_PREFIX = "teacher"  # the teacher's variables: "teacher/image/...", in model_state


class Frozen(nnx.Variable):
    """A teacher weight: a variable that is not an nnx.Param, so it is never trained."""


def freeze(module: nnx.Module) -> nnx.Module:
    """`module` with every nnx.Param re-typed as Frozen (metadata such as logical axes kept)."""
    for _, node in list(nnx.iter_graph(module)):
        if not isinstance(node, nnx.Module):
            continue
        for name, value in list(vars(node).items()):
            if isinstance(value, nnx.Param):
                setattr(node, name, Frozen(value.get_value(), **value.get_metadata()))
    left = jax.tree.leaves(nnx.state(module, nnx.Param))
    if left:
        raise ValueError(f"{len(left)} teacher parameters are held outside module attributes "
                         "and could not be frozen")
    return module


def teacher_model_section(model: Mapping) -> Mapping:
    """The teacher's model section, or ValueError when the train layer has not filled it."""
    section = model["distill"]["teacher_model"]
    if not section:
        raise ValueError("model.distill.teacher_model is empty: train through vlmjax.train, "
                         "which copies it from the teacher run (model.distill.teacher)")
    return section


TRAINING_ONLY = ("image_to_teacher", "text_to_teacher")  # the student-to-teacher projections


def student_view(cfg: dict, params: dict | None) -> tuple[dict, dict | None]:
    """The distilled run as the two-tower student it is (export): model.name 'two_tower', no
    distill section, the training-only projections dropped; the teacher is model state, never
    a parameter."""
    model = {k: v for k, v in cfg["model"].items() if k != "distill"}
    student = {**cfg, "model": {**model, "name": "two_tower"}}
    if params is None:
        return student, None
    return student, {k: v for k, v in params.items() if k not in TRAINING_ONLY}


class Distill(TwoTower):
    """A two-tower student, a frozen teacher and the student-to-teacher projections."""

    def __init__(self, model: Mapping, vocab_size: int, context_length: int, *, rngs: nnx.Rngs,
                 teacher_family: Callable[[Mapping], ModelFamily]):
        super().__init__(model, vocab_size, context_length, rngs=rngs)
        section = teacher_model_section(model)
        # The teacher reads the student's token ids: same tokenizer, same context length
        # (checked when the teacher is resolved), so the same vocabulary size.
        teacher = teacher_family(section).build(section, vocab_size, context_length, rngs=rngs)
        self.teacher = freeze(teacher)
        width, teacher_width = model["embed_dim"], section["embed_dim"]
        kind = model["distill"]["projection"]
        self.image_to_teacher = (Projection("linear", width, teacher_width, rngs=rngs)
                                 if kind == "linear" else None)
        self.text_to_teacher = (Projection("linear", width, teacher_width, rngs=rngs)
                                if kind == "linear" else None)

    def _to_teacher(self, projection: Projection | None, embed: jax.Array) -> jax.Array:
        return embed if projection is None else l2_normalize(projection(embed))

    def __call__(self, batch: Mapping[str, jax.Array], *, train: bool = False,
                 rng: jax.Array | None = None) -> dict[str, jax.Array]:
        image_rng, text_rng = tower_rngs(rng)
        image = self.image(batch["image"], train=train, rng=image_rng)["pooled"]
        text = self.text(batch["text"], batch["text_mask"], train=train, rng=text_rng)["pooled"]
        image_embed = l2_normalize(self.image_proj(image))
        text_embed = l2_normalize(self.text_proj(text))
        # The teacher in inference mode (no dropout, no patch masking, BatchNorm statistics).
        teacher = {
            "teacher_image_embed": self.teacher.encode_image(batch["image"]),
            "teacher_text_embed": self.teacher.encode_text(batch["text"], batch["text_mask"]),
            "teacher_logit_scale": jnp.exp(self.teacher.logit_scale[...]),
        }
        out = {
            "image_embed": image_embed,
            "text_embed": text_embed,
            "logit_scale": jnp.exp(self.logit_scale[...]),
            "distill_image_embed": self._to_teacher(self.image_to_teacher, image_embed),
            "distill_text_embed": self._to_teacher(self.text_to_teacher, text_embed),
            **jax.tree.map(jax.lax.stop_gradient, teacher),
        }
        if self.logit_bias is not None:
            out["logit_bias"] = self.logit_bias[...]
        return out


def check_distill(cfg: Mapping, families: Mapping[str, ModelFamily]) -> None:
    """A teacher run named; once resolved, a teacher family with embeddings whose images are
    the student's (size, channels). Run-dependent checks (the directory, its step, tokenizer and
    normalisation) are the train layer's, when it resolves the teacher."""
    model = cfg["model"]
    distill = model["distill"]
    require_choice(distill, "model.distill", "projection", PROJECTIONS)
    if not distill["teacher"]:
        fail("model.distill.teacher", "is empty", "set it to the run directory of the teacher, "
             "e.g. --config.model.distill.teacher=workdir/demo_clip")
    if distill["teacher_step"] < -1:
        fail("model.distill.teacher_step", f"is {distill['teacher_step']}",
             "use a checkpoint step of the teacher run, or -1 for its latest")
    section = distill["teacher_model"]
    if not section:
        return  # resolved from the teacher run when training starts
    name = section.get("name")
    family = families.get(name) if isinstance(name, str) else None
    if family is None or name == "distill" or "embedding" not in family.capabilities:
        fail("model.distill.teacher", f"={distill['teacher']!r} is a {name!r} model, which "
             "gives no pooled image/text embeddings to distil",
             "use a two_tower, CoCa or patch_phrase run as the teacher")
    for key in ("image_size", "channels"):
        student, teacher = model["image"][key], section["image"][key]
        if student != teacher:
            fail(f"model.image.{key}", f"={student} differs from the teacher's ({teacher}); the "
                 "teacher sees the student's images", f"set --config.model.image.{key}={teacher}")
