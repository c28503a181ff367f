"""The patch-phrase model: CLIP's two towers that also embed each patch and each item phrase.

Same parameters as `TwoTower` (so LiT, sharding rules, checkpoints and every evaluator carry
over) plus `phrase_logit_scale`, the temperature of the local patch-to-phrase term
(`objectives.patch_phrase`), and `phrase_logit_bias` where model.patch_phrase.logit_bias_init is
set (its sigmoid form; a patch scoring below the bias for every class is background), and
`null_phrase` where model.patch_phrase.null_phrase is set: a learned embedding that every canvas
holds (its background), which the local term's per-patch assignment (objectives.patch_phrase)
offers every patch beside the image's phrases; a patch closer to it than to every class is
background (dense evaluation with background="model"). Called on
a batch with "phrases" / "phrase_mask" ([b, k, l]: each example's item phrases tokenized alone,
`data.scenes_source` with data.phrases), it returns the global embeddings and, in the joint
space, every patch token ("patch_embed" [b, n, e]) and every phrase ("phrase_embed" [b, k, e],
"phrase_valid" [b, k]).
"""

from collections.abc import Mapping

import jax
import jax.numpy as jnp
from flax import nnx

from vlmjax.models import layers
from vlmjax.models.dense import dense_embeddings
from vlmjax.models.embedding import l2_normalize
from vlmjax.models.two_tower import TwoTower, scalar, tower_rngs
from vlmjax.options import fail


class PatchPhrase(TwoTower):
    """Two towers with per-patch and per-phrase outputs for a local objective."""

    def __init__(self, model: Mapping, vocab_size: int, context_length: int, *, rngs: nnx.Rngs):
        super().__init__(model, vocab_size, context_length, rngs=rngs)
        own = model["patch_phrase"]
        self.patch_tokens = own["patch_tokens"]
        self.phrase_logit_scale = scalar(rngs, own["logit_scale_init"])
        self.phrase_logit_bias = (None if own["logit_bias_init"] is None
                                  else scalar(rngs, own["logit_bias_init"]))
        self.null_phrase = (layers.param(rngs, layers.normal(1.0), (model["embed_dim"],),
                                         ("joint",)) if own["null_phrase"] else None)

    def __call__(self, batch: Mapping[str, jax.Array], *, train: bool = False,
                 rng: jax.Array | None = None) -> dict[str, jax.Array]:
        if "phrases" not in batch:
            raise ValueError("the patch_phrase model trains on batches with item phrases: set "
                             "data.phrases=True on a scenes source")
        image_rng, text_rng = tower_rngs(rng)
        image = self.image(batch["image"], train=train, rng=image_rng)
        phrases, phrase_mask = batch["phrases"], batch["phrase_mask"]
        b, k, length = phrases.shape
        phrase_embed = self.encode_text(phrases.reshape(b * k, length),
                                        phrase_mask.reshape(b * k, length), train=train,
                                        rng=None if text_rng is None else jax.random.fold_in(
                                            text_rng, 1))
        if self.patch_tokens == "maskclip":  # the last block's value path: less image summary
            patches = dense_embeddings(self, batch["image"], "maskclip")
            patches = patches.reshape(patches.shape[0], -1, patches.shape[-1])
        else:
            patches = l2_normalize(self.image_proj(image["tokens"]))
        out = {
            "image_embed": l2_normalize(self.image_proj(image["pooled"])),
            "patch_embed": patches,
            "text_embed": self.encode_text(batch["text"], batch["text_mask"], train=train,
                                           rng=text_rng),
            "phrase_embed": phrase_embed.reshape(b, k, -1),
            "phrase_valid": phrase_mask.any(axis=-1),
            "logit_scale": jnp.exp(self.logit_scale[...]),
            "phrase_logit_scale": jnp.exp(self.phrase_logit_scale[...]),
        }
        if self.logit_bias is not None:
            out["logit_bias"] = self.logit_bias[...]
        if self.phrase_logit_bias is not None:
            out["phrase_logit_bias"] = self.phrase_logit_bias[...]
        if self.null_phrase is not None:
            out["null_embed"] = l2_normalize(self.null_phrase[...])
        return out


# logit_scale_init: log(1 / 0.07), CLIP's; logit_bias_init: None (no bias, the softmax local
# term) or a float (the sigmoid local term, e.g. SigLIP's -10 with scale log 10).
# patch_tokens: the patches the local term sees: "tokens" (the tower's, as evaluated by the
# "tokens" dense method) or "maskclip" (the last block's value path, models.dense).
# null_phrase: a learned background embedding (module doc), for the objective's assignment term.
OPTIONS = {"patch_phrase": {"logit_scale_init": 2.6592600369262695, "logit_bias_init": None,
                            "patch_tokens": "tokens", "null_phrase": False}}


def check_patch_phrase(cfg: Mapping) -> None:
    """Training batches must carry the phrases."""
    if not cfg["data"].get("phrases", False):
        fail("data.phrases", "is not set, but model.name='patch_phrase' aligns patches with the "
             "items' phrases", "train on data.name='fashion_mnist_scenes' with "
             "--config.data.phrases=True")
