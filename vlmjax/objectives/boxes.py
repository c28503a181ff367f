"""Box geometry of detection losses: (cx, cy, w, h) <-> (x0, y0, x1, y1) and pairwise IoU / GIoU.

Boxes are in image-relative coordinates ([0, 1] on both axes); corner boxes are [x0, y0, x1, y1)
with x1 >= x0, y1 >= y0. GIoU (Rezatofighi et al. 2019, DETR's box cost and loss) is
IoU - (|C| - |A u B|) / |C| with C the smallest box enclosing both.
"""

import jax
import jax.numpy as jnp

EPS = 1e-7  # keeps empty boxes' IoU / GIoU finite (0 / 0)


def center_to_corners(boxes: jax.Array) -> jax.Array:
    """[..., 4] (cx, cy, w, h) -> (x0, y0, x1, y1)."""
    cx, cy, w, h = jnp.moveaxis(boxes, -1, 0)
    return jnp.stack([cx - w / 2, cy - h / 2, cx + w / 2, cy + h / 2], axis=-1)


def corners_to_center(boxes: jax.Array) -> jax.Array:
    """[..., 4] (x0, y0, x1, y1) -> (cx, cy, w, h)."""
    x0, y0, x1, y1 = jnp.moveaxis(boxes, -1, 0)
    return jnp.stack([(x0 + x1) / 2, (y0 + y1) / 2, x1 - x0, y1 - y0], axis=-1)


def _area(boxes: jax.Array) -> jax.Array:
    return jnp.clip(boxes[..., 2] - boxes[..., 0], 0) * jnp.clip(boxes[..., 3] - boxes[..., 1], 0)


def pairwise_iou_giou(a: jax.Array, b: jax.Array) -> tuple[jax.Array, jax.Array]:
    """Corner boxes a [..., n, 4] and b [..., m, 4] -> (IoU, GIoU) [..., n, m]."""
    a, b = a[..., :, None, :], b[..., None, :, :]
    inter_lo = jnp.maximum(a[..., :2], b[..., :2])
    inter_hi = jnp.minimum(a[..., 2:], b[..., 2:])
    inter = jnp.prod(jnp.clip(inter_hi - inter_lo, 0), axis=-1)
    union = _area(a) + _area(b) - inter
    iou = inter / (union + EPS)
    hull = jnp.prod(jnp.clip(jnp.maximum(a[..., 2:], b[..., 2:])
                             - jnp.minimum(a[..., :2], b[..., :2]), 0), axis=-1)
    return iou, iou - (hull - union) / (hull + EPS)
