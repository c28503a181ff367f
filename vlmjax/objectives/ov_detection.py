"""Open-vocabulary detection by distillation (ViLD's two losses on an OWL-ViT-style set predictor).

Every image token predicts a box, a class embedding (scored against the teacher's class text
embeddings: the model's "class_logits" over the base classes of the batch, and a learned
"background_logit") and an objectness logit (`models.ov_detector`). Per image, ground-truth
boxes (base classes only) are matched one-to-one to tokens by the Hungarian algorithm
(`objectives.hungarian`, jitted in the step) on DETR's cost
    match_class * class cost + match_l1 * L1(cx, cy, w, h) - match_giou * GIoU,
the class cost being -p(class) under the softmax over [background, classes] ("softmax") or the
focal cost of Deformable DETR / OWL-ViT ("focal"). Losses, summed with their weights:
- class (ViLD-text): "softmax": cross-entropy over [background, base classes], unmatched tokens
  target the background with weight `background_weight` (DETR's eos_coef), a weighted mean;
  "focal": OWL-ViT's sigmoid focal loss per class (unmatched tokens: all zero), / boxes;
- l1, giou: DETR's box losses on matched pairs, / boxes;
- image (ViLD-image): L1 between a matched token's class embedding and the teacher's embedding
  of the box's crops (batch["box_targets"]), summed over dimensions, / boxes; with
  batch["distill_boxes"] / "distill_valid" / "distill_targets" (class-agnostic regions, e.g.
  every item's box as ViLD's proposals would find them, novel items included, never labelled)
  the term is over those instead, matched to tokens on the box costs alone;
- objectness: binary cross-entropy of "matched or not", mean over tokens (OWLv2's objectness).
Batch: "boxes" [b, M, 4] (x0, y0, x1, y1 in [0, 1]), "box_labels" int32 [b, M] (base-class index,
-1 for padding), "box_targets" [b, M, e].
"""

from collections.abc import Mapping

import jax
import jax.numpy as jnp

from vlmjax.objectives.boxes import center_to_corners, corners_to_center, pairwise_iou_giou
from vlmjax.objectives.hungarian import hungarian_match
from vlmjax.objectives.objective import Objective
from vlmjax.options import fail, require_choice

CLASS_LOSSES = ("softmax", "focal")
OPTIONS = {
    "class_loss": "softmax",  # softmax (ViLD-text, learned background) | focal (OWL-ViT)
    "background_weight": 0.1,  # softmax: weight of unmatched tokens' background targets
    "focal_alpha": 0.25,
    "focal_gamma": 2.0,
    "class_weight": 1.0,
    "l1_weight": 5.0,
    "giou_weight": 2.0,
    "image_weight": 1.0,  # ViLD-image; 0 trains ViLD-text alone
    "objectness_weight": 1.0,
    "match_class": 1.0,
    "match_l1": 5.0,
    "match_giou": 2.0,
}
WEIGHTS = ("background_weight", "class_weight", "l1_weight", "giou_weight", "image_weight",
           "objectness_weight", "match_class", "match_l1", "match_giou", "focal_gamma")


def _focal_terms(logits: jax.Array, alpha: float, gamma: float) -> tuple[jax.Array, jax.Array]:
    """Per-logit focal losses (positive, negative) of sigmoid(logits)."""
    p = jax.nn.sigmoid(logits)
    positive = alpha * (1 - p) ** gamma * -jax.nn.log_sigmoid(logits)
    negative = (1 - alpha) * p ** gamma * -jax.nn.log_sigmoid(-logits)
    return positive, negative


def match_cost(outputs: Mapping[str, jax.Array], boxes: jax.Array, labels: jax.Array,
               options: Mapping) -> jax.Array:
    """[b, M, n]: the cost of matching ground truth m to token n (module doc); padding rows 0."""
    o = {**OPTIONS, **options}
    gt = jnp.clip(labels, 0)
    logits = outputs["class_logits"].astype(jnp.float32)  # [b, n, K]
    if o["class_loss"] == "softmax":
        full = jnp.concatenate([outputs["background_logit"][..., None].astype(jnp.float32),
                                logits], axis=-1)
        probs = jax.nn.softmax(full, axis=-1)[..., 1:]
        per_class = -probs
    else:
        positive, negative = _focal_terms(logits, o["focal_alpha"], o["focal_gamma"])
        per_class = positive - negative
    class_cost = jnp.take_along_axis(per_class, gt[:, None, :], axis=-1)  # [b, n, M]
    class_cost = jnp.swapaxes(class_cost, 1, 2)
    valid = labels >= 0
    return (jnp.where(valid[..., None], o["match_class"] * class_cost, 0.0)
            + box_cost(outputs, boxes, valid, o))


def box_cost(outputs: Mapping[str, jax.Array], boxes: jax.Array, valid: jax.Array,
             options: Mapping) -> jax.Array:
    """[b, M, n]: match_l1 * L1 - match_giou * GIoU of region m and token n; invalid rows 0."""
    o = {**OPTIONS, **options}
    pred = outputs["pred_boxes"].astype(jnp.float32)
    l1 = jnp.abs(corners_to_center(boxes)[:, :, None, :] - pred[:, None, :, :]).sum(-1)
    _, giou = pairwise_iou_giou(boxes, center_to_corners(pred))
    return jnp.where(valid[..., None], o["match_l1"] * l1 - o["match_giou"] * giou, 0.0)


def image_distillation(outputs: Mapping[str, jax.Array], targets: jax.Array, valid: jax.Array,
                       columns: jax.Array) -> jax.Array:
    """ViLD-image: mean over valid regions of the L1 distance (summed over dimensions) between
    the class embedding of the region's token (`columns` [b, M]) and its target [b, M, e]."""
    embed = jnp.take_along_axis(outputs["class_embed"].astype(jnp.float32), columns[..., None],
                                axis=1)
    l1 = jnp.abs(embed - targets.astype(jnp.float32)).sum(-1)
    return jnp.sum(jnp.where(valid, l1, 0.0)) / jnp.maximum(valid.sum(), 1).astype(jnp.float32)


def detection_losses(outputs: Mapping[str, jax.Array], boxes: jax.Array, labels: jax.Array,
                     targets: jax.Array | None, columns: jax.Array, options: Mapping
                     ) -> dict[str, jax.Array]:
    """Every loss term (module doc) given the matched token `columns` [b, M] of each box; the
    image term on the labelled boxes' `targets` (None: left to the caller, 0 here)."""
    o = {**OPTIONS, **options}
    valid = labels >= 0
    n = outputs["pred_boxes"].shape[1]
    num_boxes = jnp.maximum(valid.sum(), 1).astype(jnp.float32)
    assign = jax.nn.one_hot(columns, n, dtype=jnp.float32) * valid[..., None]  # [b, M, n]
    matched = assign.sum(1) > 0  # [b, n]
    token_label = jnp.round(jnp.einsum("bmn,bm->bn", assign, (labels + 1).astype(jnp.float32))
                            ).astype(jnp.int32) - 1  # -1: background
    logits = outputs["class_logits"].astype(jnp.float32)
    k = logits.shape[-1]
    if o["class_loss"] == "softmax":
        full = jnp.concatenate([outputs["background_logit"][..., None].astype(jnp.float32),
                                logits], axis=-1)
        ce = -jnp.take_along_axis(jax.nn.log_softmax(full, axis=-1), (token_label + 1)[..., None],
                                  axis=-1)[..., 0]
        weight = jnp.where(matched, 1.0, o["background_weight"])
        class_loss = jnp.sum(weight * ce) / jnp.maximum(weight.sum(), 1e-12)
    else:
        onehot = jax.nn.one_hot(token_label, k, dtype=jnp.float32)  # all zero for -1
        positive, negative = _focal_terms(logits, o["focal_alpha"], o["focal_gamma"])
        class_loss = jnp.sum(onehot * positive + (1 - onehot) * negative) / num_boxes
    pred = jnp.take_along_axis(outputs["pred_boxes"].astype(jnp.float32), columns[..., None],
                               axis=1)  # [b, M, 4]
    l1 = jnp.abs(pred - corners_to_center(boxes)).sum(-1)
    iou, giou = pairwise_iou_giou(center_to_corners(pred)[..., None, :], boxes[..., None, :])
    iou, giou = iou[..., 0, 0], giou[..., 0, 0]
    masked = lambda x: jnp.sum(jnp.where(valid, x, 0.0)) / num_boxes  # noqa: E731
    out = {"class_loss": class_loss, "l1_loss": masked(l1), "giou_loss": masked(1 - giou),
           "matched_iou": masked(iou)}
    objectness = outputs["objectness"].astype(jnp.float32)
    out["objectness_loss"] = jnp.mean(-jnp.where(matched, jax.nn.log_sigmoid(objectness),
                                                 jax.nn.log_sigmoid(-objectness)))
    if targets is not None:
        out["image_loss"] = image_distillation(outputs, targets, valid, columns)
    else:
        out["image_loss"] = jnp.zeros((), jnp.float32)
    best = jnp.argmax(jnp.take_along_axis(logits, columns[..., None], axis=1), axis=-1)
    out["class_accuracy"] = masked((best == labels).astype(jnp.float32))
    out["loss"] = (o["class_weight"] * out["class_loss"] + o["l1_weight"] * out["l1_loss"]
                   + o["giou_weight"] * out["giou_loss"] + o["image_weight"] * out["image_loss"]
                   + o["objectness_weight"] * out["objectness_loss"])
    return out


def ov_detection_loss(outputs: Mapping[str, jax.Array], options: Mapping,
                      batch: Mapping[str, jax.Array] | None = None) -> tuple[jax.Array, dict]:
    """Hungarian matching then the weighted losses (module doc)."""
    if batch is None or "boxes" not in batch or "box_labels" not in batch:
        raise ValueError("the ov_detection objective reads boxes and box_labels from the batch: "
                         "train on data.name='fashion_mnist_scenes_detection'")
    o = {**OPTIONS, **options}
    boxes, labels = batch["boxes"].astype(jnp.float32), batch["box_labels"]
    if labels.shape[1] > outputs["pred_boxes"].shape[1]:
        raise ValueError(f"{labels.shape[1]} boxes per image but only "
                         f"{outputs['pred_boxes'].shape[1]} tokens to match them to")
    columns = hungarian_match(match_cost(outputs, boxes, labels, o))
    regions = "distill_boxes" in batch
    targets = batch.get("box_targets") if o["image_weight"] > 0 and not regions else None
    metrics = detection_losses(outputs, boxes, labels, targets, columns, o)
    if regions and o["image_weight"] > 0:
        valid = batch["distill_valid"]
        region_columns = hungarian_match(box_cost(outputs, batch["distill_boxes"].astype(
            jnp.float32), valid, o))
        metrics["image_loss"] = image_distillation(outputs, batch["distill_targets"], valid,
                                                   region_columns)
        metrics["loss"] = metrics["loss"] + o["image_weight"] * metrics["image_loss"]
    if "logit_scale" in outputs:
        metrics["logit_scale"] = jnp.mean(outputs["logit_scale"])
    return metrics["loss"], metrics


def _check(config: Mapping) -> None:
    o = {**OPTIONS, **config["objective"]}
    require_choice(o, "objective", "class_loss", CLASS_LOSSES)
    for key in WEIGHTS:
        if not o[key] >= 0:
            fail(f"objective.{key}", f"is {o[key]}", "use a non-negative weight")
    if not 0 < o["focal_alpha"] < 1:
        fail("objective.focal_alpha", f"is {o['focal_alpha']}", "use a fraction, e.g. 0.25")


OV_DETECTION = Objective(name="ov_detection", loss=ov_detection_loss, options=OPTIONS,
                         consumes=frozenset({"detections"}), check=_check)
