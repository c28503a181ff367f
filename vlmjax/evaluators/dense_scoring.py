"""Class scores of dense (per-patch) image features against class prompts.

The model family's scoring (`evaluators.scoring`) decides how a patch meets a prompt:
- "embedding" (CLIP, SigLIP, patch-phrase): cosine of the patch embedding with the class
  embedding (the renormalised mean of its prompts' embeddings);
- "token_wise" (FILIP): the patch is a one-token image, so FILIP's s_I (direction "i2t") is its
  best cosine over the prompt's tokens, s_T ("t2i") the mean over the prompt's tokens of that
  cosine; averaged over the templates as FILIP's prompt ensemble.
Extra prompts (background prompts) are scored like classes of one template each. Regions pool
patches with weights (RoI pooling): embeddings are averaged then renormalised, token-wise
scores are averaged (s_I of the image restricted to the region's patches).
"""

from collections.abc import Sequence
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np
from flax import nnx

from vlmjax.evaluators.context import EvalContext
from vlmjax.evaluators.global_batches import padded_global_batch
from vlmjax.evaluators.scoring import Scoring, TokenWiseScoring, scoring_for
from vlmjax.models.embedding import l2_normalize
from vlmjax.parallel.mesh import batch_shards, replicated


class DensePrompts:
    """The prompts of `classnames` x `templates` plus `extra` prompts, encoded per parameters
    into a classifier of len(classnames) + len(extra) groups."""

    def __init__(self, ctx: EvalContext, classnames: Sequence[str], templates: Sequence[str],
                 extra: Sequence[str] = (), token_direction: str = "i2t", batch_size: int = 500):
        self.ctx, self.batch_size = ctx, batch_size
        self.scoring: Scoring = scoring_for(ctx.model, token_direction)
        self.num_groups = len(classnames) + len(extra)
        # Every group has len(templates) prompts: an extra prompt is repeated (the same mean).
        texts = [t.format(c=c) for c in classnames for t in templates]
        texts += [p for p in extra for _ in templates]
        ids, mask = ctx.tokenizer.encode(texts, ctx.context_length)
        self.prompts = {"text": ids, "text_mask": mask}
        scoring, graphdef = self.scoring, ctx.graphdef

        def encode(params: dict, batch: dict) -> Any:
            model = nnx.merge(graphdef, params)
            return scoring.text_features(model, batch["text"], batch["text_mask"])

        self._encode = jax.jit(encode, out_shardings=replicated(ctx.mesh))

    def classifier(self, params: dict) -> Any:
        """Embedding scoring: [groups, e]; token-wise: prompt tokens and masks [groups, T, ...]."""
        n = len(self.prompts["text"])
        shards = batch_shards(self.ctx.batch_sharding)
        size = -(-min(n, self.batch_size) // shards) * shards
        chunks = []
        for start in range(0, n, size):
            batch, real = padded_global_batch(self.prompts, start, size, self.ctx.batch_sharding)
            chunks.append(jax.tree.map(lambda a, real=real: np.asarray(jax.device_get(a))[:real],
                                       self._encode(params, batch)))
        features = jax.tree.map(lambda *parts: jnp.asarray(np.concatenate(parts)), *chunks)
        return jax.device_put(self.scoring.classifier(features, self.num_groups),
                              replicated(self.ctx.mesh))


def _token_wise_patch_scores(scoring: TokenWiseScoring, patches: jax.Array, classifier: dict
                             ) -> jax.Array:
    """[..., e] patches x prompt tokens [K, T, L, e] -> [..., K] (module doc)."""
    tokens, mask = classifier["tokens"], classifier["mask"].astype(bool)
    sims = jnp.einsum("...e,ktle->...ktl", patches, tokens.astype(patches.dtype))
    s_image = jnp.max(jnp.where(mask, sims, -jnp.inf), axis=-1)
    s_text = jnp.sum(jnp.where(mask, sims, 0.0), axis=-1) / jnp.maximum(mask.sum(-1), 1)
    scores = {"i2t": s_image, "t2i": s_text, "mean": (s_image + s_text) / 2}[scoring.direction]
    return scores.mean(axis=-1)


def patch_scores(scoring: Scoring, patches: jax.Array, classifier: Any) -> jax.Array:
    """Normalised patch embeddings [..., e] -> class scores [..., K]."""
    if isinstance(scoring, TokenWiseScoring):
        return _token_wise_patch_scores(scoring, patches, classifier)
    return jnp.einsum("...e,ke->...k", patches, classifier.astype(patches.dtype))


def region_scores(scoring: Scoring, patches: jax.Array, weights: jax.Array, classifier: Any
                  ) -> jax.Array:
    """patches [b, n, e], region weights over patches [b, r, n] (rows summing to 1) ->
    [b, r, K] scores of each pooled region."""
    if isinstance(scoring, TokenWiseScoring):
        return jnp.einsum("brn,bnk->brk", weights, patch_scores(scoring, patches, classifier))
    pooled = l2_normalize(jnp.einsum("brn,bne->bre", weights, patches))
    return patch_scores(scoring, pooled, classifier)
