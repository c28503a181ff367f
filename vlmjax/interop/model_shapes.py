"""{path: shape} of every variable of the model a config describes: parameters AND non-parameter
state (BatchNorm statistics), which an import must fill alike. Traced abstractly (no memory)."""

from collections.abc import Mapping

import jax
from flax import nnx

from vlmjax.models.registry import get_family


def variable_shapes(cfg: Mapping, vocab_size: int) -> dict[str, tuple[int, ...]]:
    """{'image/conv1/kernel': (3, 3, 3, 32), 'image/bn1/mean': (32,), ...} of `cfg`'s model."""
    family = get_family(cfg["model"])
    abstract = nnx.eval_shape(lambda: family.build(
        cfg["model"], vocab_size, cfg["tokenizer"]["context_length"], rngs=nnx.Rngs(0)))
    leaves = jax.tree_util.tree_flatten_with_path(nnx.to_pure_dict(nnx.state(abstract)))[0]
    return {"/".join(str(getattr(k, "key", k)) for k in path): tuple(leaf.shape)
            for path, leaf in leaves}

