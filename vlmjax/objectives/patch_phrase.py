"""Patch-to-phrase: CLIP's global loss plus a local term aligning patches with item phrases.

The local term is region-word matching from captions alone (no boxes, no masks): every
caption's item phrases ("a sandal", "an ankle boot", what a noun-phrase parser extracts) are
embedded by the text tower, and a phrase meets an image through its patches: the score of
image i and phrase j pools the cosines of i's projected patch tokens with j,
- "attention" (default): sum_p softmax_p(cos_p / pool_temperature) cos_p, a soft maximum
  whose gradient reaches every patch that looks like the phrase (PACL's patch weighting);
- "max": the best patch (multiple-instance learning's max pooling); "mean": every patch.
Scores scaled by the model's `phrase_logit_scale` are contrasted both ways over the global
batch (multiple-instance contrast): each phrase against every image (its own image, and every
image with a phrase of identical tokens, are its positives: a target spread evenly over them),
each image against every phrase (its own phrases and their duplicates are its positives).
Paraphrases of one class in other images remain negatives, as captions sharing an item are in
CLIP; softmax contrast then ranks every image holding the class above the others rather than
pushing them down (a sigmoid's independent labels would). The global term is CLIP's softmax
(`global_loss`="softmax") or SigLIP's sigmoid over (image, caption) pairs.

`local_loss`="sigmoid" replaces the local contrast by SigLIP's independent labels on the same
pooled scores: z_iq = phrase_logit_scale * pooled_iq + phrase_logit_bias, label +1 where q is
one of i's phrases (or a duplicate), -1 elsewhere, loss -sum log sigmoid(label z) over the
valid phrases, divided by their number. A negative pushes down the patches of i that look most
like q, whatever they hold, so patches of empty canvas learn to score below the bias for every
class: the bias becomes a background threshold learned in pre-training (dense evaluation with
background="model"), where the softmax contrast leaves background patches unconstrained.
Duplicate phrases of other images are positives, not negatives, as above.
"softmax_and_sigmoid" adds both terms (the contrast for the alignment, the pairwise negatives
for the background), at the one phrase temperature. "balanced_sigmoid" weighs each phrase's
positives and negatives equally (the mean loss over its positive images plus the mean over its
negative ones, halved): about one image in five holds a given class here, and the plain sum
lets a bias that calls every pair negative win (SigLIP's -10 start suits batches of 32k, not
128).

`assignment_weight` > 0 adds a term that makes phrases compete for patches within each image.
Both local terms above score image i against phrase q by pooling cosines over i's patches
before any softmax over phrases, so patches that each hold a summary of the whole canvas
(every item's direction, as the CLIP term's gradient through a mean-pooled image embedding
pushes them) satisfy them as well as patches that each hold their own item: whether a run
localises then depends on its seed. The assignment term normalises per patch first (weakly
supervised segmentation's multiple-instance form): each patch p of image i takes a softmax
over i's own phrases (identical ones merged) and, with model.patch_phrase.null_phrase, the
learned null phrase (the background every canvas holds), at the phrase temperature:
pi_pq = softmax_q(phrase_logit_scale * cos(p, q)). Phrase q's presence is pi_pq pooled over
the patches (`pool`, as above) and the term is -log presence, averaged over the valid
(image, phrase) pairs and the null: every phrase, and the background, must own some patch
outright, which a patch holding a summary of several items cannot give any of them.
Paraphrases of one class in one image ("a bag", "a purse") still compete and cap each other's
presence; other images' phrases do not enter (the contrast terms rank them).

loss = global + local_weight * local + assignment_weight * assignment.
"""

from collections.abc import Mapping

import jax
import jax.numpy as jnp

from vlmjax.errors import ConfigError
from vlmjax.objectives.contrastive import (
    CONTRASTIVE_OPTIONS,
    check_contrastive_options,
    softmax_contrastive,
)
from vlmjax.objectives.objective import Objective
from vlmjax.objectives.sigmoid import sigmoid_contrastive

POOLS = ("attention", "max", "mean")
MASKED = -1e30  # a logit left out of a softmax (finite: no inf * 0 in the gradient)
GLOBAL_LOSSES = ("softmax", "sigmoid")
LOCAL_LOSSES = ("softmax", "sigmoid", "balanced_sigmoid", "softmax_and_sigmoid")
OPTIONS = {**CONTRASTIVE_OPTIONS, "global_loss": "softmax", "local_loss": "softmax",
           "local_weight": 1.0, "assignment_weight": 0.0,
           "pool": "attention", "pool_temperature": 0.1, "match_duplicates": True}


def pool_patches(values: jax.Array, pool: str = "attention", temperature: float = 0.1
                 ) -> jax.Array:
    """[..., n] values over an image's patches -> [...]: their max, mean, or attention-weighted
    mean (softmax of values / temperature: a soft maximum)."""
    if pool == "max":
        return values.max(axis=-1)
    if pool == "mean":
        return values.mean(axis=-1)
    weights = jax.nn.softmax(values / temperature, axis=-1)
    return jnp.sum(weights * values, axis=-1)


def pooled_scores(patches: jax.Array, phrases: jax.Array, pool: str = "attention",
                  temperature: float = 0.1) -> jax.Array:
    """Normalised patches [B, n, e] and phrases [P, e] -> pooled cosines [B, P] (module doc)."""
    sims = jnp.einsum("bne,pe->bpn", patches, phrases.astype(patches.dtype)).astype(jnp.float32)
    return pool_patches(sims, pool, temperature)


def distinct_phrases(phrases: jax.Array, valid: jax.Array) -> jax.Array:
    """bool [B, K]: valid phrases whose tokens [B, K, L] differ from every earlier phrase of
    the same image (identical ones merged into their first)."""
    k = valid.shape[1]
    same = jnp.all(phrases[:, :, None, :] == phrases[:, None, :, :], axis=-1)  # [B, K, K]
    earlier = jnp.tril(jnp.ones((k, k), bool), -1)
    return valid & ~jnp.any(same & earlier[None] & valid[:, None, :], axis=-1)


def assignment_loss(patches: jax.Array, phrases: jax.Array, keep: jax.Array, scale: jax.Array,
                    null: jax.Array | None = None, pool: str = "attention",
                    temperature: float = 0.1) -> tuple[jax.Array, dict[str, jax.Array]]:
    """Per-patch softmax over each image's own phrases (and the null), pooled over its patches:
    -log presence averaged over the kept phrases [B, K] and the null (module doc)."""
    logits = scale * jnp.einsum("bne,bke->bnk", patches,
                                phrases.astype(patches.dtype)).astype(jnp.float32)
    logits = jnp.where(keep[:, None, :], logits, MASKED)
    counted = keep
    if null is not None:
        null_logits = scale * jnp.einsum("bne,e->bn", patches, null.astype(patches.dtype))
        logits = jnp.concatenate([logits, null_logits.astype(jnp.float32)[..., None]], axis=-1)
        counted = jnp.concatenate([keep, jnp.ones_like(keep[:, :1])], axis=1)
    shares = jax.nn.softmax(logits, axis=-1)  # [B, n, K(+1)]
    presence = pool_patches(jnp.swapaxes(shares, 1, 2), pool, temperature)  # [B, K(+1)]
    nll = -jnp.log(jnp.maximum(presence, 1e-12))
    count = jnp.maximum(counted.sum(), 1)
    loss = jnp.sum(jnp.where(counted, nll, 0.0)) / count
    return loss, {"phrase_presence": jnp.sum(jnp.where(counted, presence, 0.0)) / count}


def phrase_positives(phrases: jax.Array, valid: jax.Array, match_duplicates: bool = True
                     ) -> jax.Array:
    """bool [B, B * K]: phrase q (example-major) is image i's own, or (match_duplicates) has the
    same tokens as one of i's phrases; invalid phrases are never positive."""
    b, k = valid.shape
    flat_valid = valid.reshape(b * k)
    if match_duplicates:
        flat = phrases.reshape(b * k, -1)
        same = jnp.all(flat[:, None, :] == flat[None, :, :], axis=-1)
        same = same & flat_valid[:, None] & flat_valid[None, :]
        return same.reshape(b, k, b * k).any(axis=1)
    owner = jnp.arange(b * k) // k
    return (owner[None, :] == jnp.arange(b)[:, None]) & flat_valid[None, :]


def _soft_cross_entropy(logits: jax.Array, targets: jax.Array, allowed: jax.Array,
                        axis: int) -> jax.Array:
    """Cross-entropy of softmax(logits over `allowed` entries along `axis`) against `targets`
    spread evenly over its True entries: one value per row (axis=1) or column (axis=0)."""
    logp = jax.nn.log_softmax(jnp.where(allowed, logits, MASKED), axis=axis)
    weights = targets / jnp.maximum(targets.sum(axis=axis, keepdims=True), 1)
    return -jnp.sum(jnp.where(targets, weights * logp, 0.0), axis=axis)


def local_loss(scores: jax.Array, positives: jax.Array, valid: jax.Array
               ) -> tuple[jax.Array, dict[str, jax.Array]]:
    """Both directions of the multiple-instance contrast on logits [B, P] (module doc)."""
    phrase_ok = valid.reshape(-1)  # [P]
    b = scores.shape[0]
    images_ok = jnp.ones((b, 1), bool)
    per_phrase = _soft_cross_entropy(scores, positives, images_ok, axis=0)  # [P]
    has_phrase = positives.any(axis=1)
    per_image = _soft_cross_entropy(scores, positives, phrase_ok[None, :], axis=1)  # [B]
    phrase_to_image = jnp.sum(jnp.where(phrase_ok, per_phrase, 0)) / jnp.maximum(phrase_ok.sum(), 1)
    image_to_phrase = jnp.sum(jnp.where(has_phrase, per_image, 0)) / jnp.maximum(
        has_phrase.sum(), 1)
    best_image = jnp.argmax(scores, axis=0)
    hit = jnp.take_along_axis(positives, best_image[None, :], axis=0)[0]
    accuracy = jnp.sum(jnp.where(phrase_ok, hit, False)) / jnp.maximum(phrase_ok.sum(), 1)
    return (phrase_to_image + image_to_phrase) / 2, {"phrase_to_image_accuracy": accuracy}


def local_sigmoid_loss(logits: jax.Array, positives: jax.Array, valid: jax.Array,
                       balanced: bool = False) -> tuple[jax.Array, dict[str, jax.Array]]:
    """SigLIP's pairwise loss on phrase logits [B, P] (with bias) against `positives` [B, P]:
    summed over the valid phrases' columns (balanced: each column's positive and negative
    means, halved) and divided by their number (module doc)."""
    phrase_ok = valid.reshape(-1)
    labels = jnp.where(positives, 1.0, -1.0)
    per_pair = -jax.nn.log_sigmoid(labels * logits)
    if balanced:
        def column_mean(selected: jax.Array) -> jax.Array:
            return (jnp.sum(jnp.where(selected, per_pair, 0.0), axis=0)
                    / jnp.maximum(selected.sum(axis=0), 1))
        per_pair = (column_mean(positives) + column_mean(~positives))[None, :] / 2
    loss = jnp.sum(jnp.where(phrase_ok[None, :], per_pair, 0.0)) / jnp.maximum(
        phrase_ok.sum(), 1)
    correct = (logits > 0) == positives
    accuracy = jnp.sum(jnp.where(phrase_ok[None, :], correct, False)) / jnp.maximum(
        phrase_ok.sum() * logits.shape[0], 1)
    return loss, {"phrase_pair_accuracy": accuracy}


def patch_phrase_loss(outputs: Mapping[str, jax.Array], options: Mapping,
                      batch: Mapping[str, jax.Array] | None = None) -> tuple[jax.Array, dict]:
    """global + local_weight * local + assignment_weight * assignment (module doc); phrase
    tokens from batch["phrases"]."""
    if batch is None or "phrases" not in batch:
        raise ValueError("the patch_phrase objective reads the phrase tokens from the batch")
    o = {**OPTIONS, **options}
    scale = outputs["logit_scale"]
    if o["global_loss"] == "sigmoid":
        global_loss, accuracy = sigmoid_contrastive(
            outputs["image_embed"], outputs["text_embed"], scale, outputs["logit_bias"],
            implementation=o["implementation"], chunk_size=o["chunk_size"])
    else:
        global_loss, accuracy = softmax_contrastive(
            outputs["image_embed"], outputs["text_embed"], scale,
            implementation=o["implementation"], chunk_size=o["chunk_size"])
    phrases = outputs["phrase_embed"]
    b, k, e = phrases.shape
    valid = outputs["phrase_valid"]
    pooled = pooled_scores(outputs["patch_embed"], phrases.reshape(b * k, e), o["pool"],
                           o["pool_temperature"])
    positives = phrase_positives(batch["phrases"], valid, o["match_duplicates"])
    logits = outputs["phrase_logit_scale"] * pooled
    local, local_metrics = jnp.float32(0.0), {}
    if o["local_loss"] in ("softmax", "softmax_and_sigmoid"):
        local, local_metrics = local_loss(logits, positives, valid)
    if o["local_loss"] != "softmax":
        pairwise, pair_metrics = local_sigmoid_loss(
            logits + outputs["phrase_logit_bias"], positives, valid,
            balanced=o["local_loss"] == "balanced_sigmoid")
        local, local_metrics = local + pairwise, {**local_metrics, **pair_metrics}
    loss = global_loss + o["local_weight"] * local
    if o["assignment_weight"]:
        keep = distinct_phrases(batch["phrases"], valid)
        assignment, assignment_metrics = assignment_loss(
            outputs["patch_embed"], phrases, keep, outputs["phrase_logit_scale"],
            outputs.get("null_embed"), o["pool"], o["pool_temperature"])
        loss = loss + o["assignment_weight"] * assignment
        local_metrics = {**local_metrics, **assignment_metrics, "assignment_loss": assignment}
    metrics = {"loss": loss, "global_loss": global_loss, "local_loss": local,
               "logit_scale": scale, "phrase_logit_scale": outputs["phrase_logit_scale"],
               **accuracy, **local_metrics}
    for bias in ("logit_bias", "phrase_logit_bias"):
        if bias in outputs:
            metrics[bias] = outputs[bias]
    return loss, metrics


def _check(config: Mapping) -> None:
    check_contrastive_options(config, OPTIONS)
    o = {**OPTIONS, **config["objective"]}
    if (o["pool"] not in POOLS or o["global_loss"] not in GLOBAL_LOSSES
            or o["local_loss"] not in LOCAL_LOSSES):
        raise ConfigError(f"config.objective.pool={o['pool']!r} / global_loss="
                          f"{o['global_loss']!r} / local_loss={o['local_loss']!r}: choose pool "
                          f"in {POOLS}, global_loss in {GLOBAL_LOSSES} and local_loss in "
                          f"{LOCAL_LOSSES}")
    if o["pool_temperature"] <= 0 or min(o["local_weight"], o["assignment_weight"]) < 0:
        raise ConfigError(f"config.objective.pool_temperature={o['pool_temperature']} must be "
                          f"positive and local_weight={o['local_weight']} / assignment_weight="
                          f"{o['assignment_weight']} non-negative")
    if config["model"].get("patch_phrase", {}).get("null_phrase") and not o["assignment_weight"]:
        raise ConfigError("config.model.patch_phrase.null_phrase=True is trained only by the "
                          "assignment term; set --config.objective.assignment_weight=1.0 or "
                          "drop null_phrase")
    if o["global_loss"] == "sigmoid" and not config["model"]["use_logit_bias"]:
        raise ConfigError("config.objective.global_loss='sigmoid' needs a learnable bias; set "
                          "--config.model.use_logit_bias=true")
    if o["local_loss"] != "softmax" and config["model"].get("patch_phrase", {}).get(
            "logit_bias_init") is None:
        raise ConfigError(f"config.objective.local_loss={o['local_loss']!r} needs a learnable "
                          "phrase bias; "
                          "set --config.model.patch_phrase.logit_bias_init=-10.0 (with "
                          "model.patch_phrase.logit_scale_init=2.303, SigLIP's log 10)")


PATCH_PHRASE = Objective(name="patch_phrase", loss=patch_phrase_loss, options=OPTIONS,
                         consumes=frozenset({"embeddings", "phrases"}), check=_check)
