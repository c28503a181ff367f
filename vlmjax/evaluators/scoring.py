"""How evaluators score images against texts: pooled-embedding cosine or FILIP's token-wise form.

The model registry names each family's scoring (`ModelFamily.scoring`), so zero-shot and
retrieval pick the right one for a checkpoint without being told. A scoring turns a model into
image features and text features (pytrees, batch first), scores any image batch against any
text batch in both directions, and builds a zero-shot classifier from prompt features:
- "embedding": the class embedding is the renormalised mean of its prompts' embeddings
  (CLIP's prompt ensemble); both directions are the same cosine matrix.
- "token_wise": FILIP's late interaction; the prompt ensemble averages the token-wise
  similarities over templates (FILIP, Sec. 3.1.2), since there is no single embedding to average.
"""

import dataclasses
from typing import Any

import jax
import jax.numpy as jnp

from vlmjax.models.embedding import l2_normalize
from vlmjax.objectives.token_similarity import dense_token_similarities

Features = Any  # a pytree of arrays whose leaves have the batch first
TOKEN_DIRECTIONS = ("i2t", "t2i", "mean")  # which token-wise similarity zero-shot ranks by


@dataclasses.dataclass(frozen=True)
class EmbeddingScoring:
    """Cosine similarity of the pooled, L2-normalised embeddings (CLIP, SigLIP, CoCa)."""

    def image_features(self, model: Any, images: jax.Array) -> Features:
        return model.encode_image(images)

    def text_features(self, model: Any, ids: jax.Array, mask: jax.Array) -> Features:
        return model.encode_text(ids, mask)

    def scores(self, images: Features, texts: Features) -> tuple[jax.Array, jax.Array]:
        """(image->text, text->image) scores [b_images, b_texts]; equal for cosine scoring."""
        cosine = jnp.einsum("be,te->bt", images, texts)
        return cosine, cosine

    def classifier(self, prompts: Features, num_classes: int) -> Features:
        """[C * T, e] class-major prompt embeddings -> [C, e] renormalised template means."""
        return l2_normalize(prompts.reshape(num_classes, -1, prompts.shape[-1]).mean(axis=1))

    def class_scores(self, images: Features, classifier: Features) -> jax.Array:
        return jnp.einsum("be,ce->bc", images, classifier)


@dataclasses.dataclass(frozen=True)
class TokenWiseScoring:
    """FILIP's token-wise similarities, computed against `text_chunk` texts at a time."""

    direction: str = "i2t"
    text_chunk: int = 64

    def image_features(self, model: Any, images: jax.Array) -> Features:
        tokens = model.encode_image_tokens(images)
        return {"tokens": tokens, "mask": jnp.ones(tokens.shape[:2], bool)}

    def text_features(self, model: Any, ids: jax.Array, mask: jax.Array) -> Features:
        return {"tokens": model.encode_text_tokens(ids, mask), "mask": mask.astype(bool)}

    def scores(self, images: Features, texts: Features) -> tuple[jax.Array, jax.Array]:
        """(s_I, s_T) [b_images, b_texts], texts in chunks so one [b, n, chunk, L] tile exists."""
        t = texts["tokens"].shape[0]
        chunk = min(self.text_chunk, t)
        padded = -(-t // chunk) * chunk
        texts = jax.tree.map(lambda a: jnp.pad(a, [(0, padded - t)] + [(0, 0)] * (a.ndim - 1)), texts)
        chunks = jax.tree.map(lambda a: a.reshape(padded // chunk, chunk, *a.shape[1:]), texts)

        def one(text_chunk: Features) -> tuple[jax.Array, jax.Array]:
            return dense_token_similarities(images["tokens"], images["mask"],
                                            text_chunk["tokens"], text_chunk["mask"])

        s_image, s_text = jax.lax.map(one, chunks)  # [chunks, b, chunk] each
        merge = lambda s: s.transpose(1, 0, 2).reshape(s.shape[1], padded)[:, :t]  # noqa: E731
        return merge(s_image), merge(s_text)

    def classifier(self, prompts: Features, num_classes: int) -> Features:
        """Prompt tokens grouped by class: leaves [C, T, ...]."""
        return jax.tree.map(lambda a: a.reshape(num_classes, -1, *a.shape[1:]), prompts)

    def class_scores(self, images: Features, classifier: Features) -> jax.Array:
        """Token-wise similarity to every prompt, averaged over each class's templates: [b, C]."""
        c, t = classifier["mask"].shape[:2]
        flat = jax.tree.map(lambda a: a.reshape(c * t, *a.shape[2:]), classifier)
        s_image, s_text = self.scores(images, flat)
        scores = {"i2t": s_image, "t2i": s_text, "mean": (s_image + s_text) / 2}[self.direction]
        return scores.reshape(scores.shape[0], c, t).mean(axis=-1)


Scoring = EmbeddingScoring | TokenWiseScoring


def scoring_for(model: Any, token_direction: str = "i2t") -> Scoring:
    """The scoring the model's family declares (`ModelView.scoring`)."""
    if model.scoring == "token_wise":
        if token_direction not in TOKEN_DIRECTIONS:
            raise ValueError(f"token_direction must be one of {TOKEN_DIRECTIONS}, "
                             f"got {token_direction!r}")
        return TokenWiseScoring(direction=token_direction)
    return EmbeddingScoring()
