"""What every evaluator gets: an evaluation context, never the trainer or the raw config.

`EvalContext` offers the model (its graph and the capabilities its family declares), the
tokenizer, the image preprocessing (size, channels, normalisation), the mesh, where on-disk
datasets live, where a checkpoint's evaluation caches go, and the one service an evaluator
cannot build from those: `train_classifier`, the jitted supervised training of a classifier
(fine-tuning), provided by the train layer (dependency inversion: evaluators never import it).
Evaluators read datasets through `data.eval_sources` (dense ones: `data.dense_sources`) and
batch them over the mesh with `evaluators.global_batches`.
"""

import dataclasses
from collections.abc import Callable, Mapping
from typing import Any, Protocol

import jax
from jax.sharding import Mesh

from vlmjax.data.dense_sources import DenseSource, check_dense_source, open_dense_source
from vlmjax.data.eval_sources import EvalSource, check_eval_source, open_eval_source, source_data_dir
from vlmjax.data.normalization import Normalization
from vlmjax.errors import ConfigError
from vlmjax.models.family import ModelFamily
from vlmjax.parallel.logical import Rules
from vlmjax.parallel.mesh import batch_sharding
from vlmjax.tokenizers import Tokenizer


@dataclasses.dataclass(frozen=True)
class ModelView:
    """What evaluators know of the model: its graph, family and declared capabilities."""

    graphdef: Any
    name: str  # the family (cache keys and messages only, never to decide what to run)
    capabilities: frozenset[str]  # models.family.CAPABILITIES
    scoring: str  # the capability its image-text scores use: "embedding" or "token_wise"
    towers: Mapping[str, str]  # tower name -> parameter path regex
    embed_dim: int
    # (log temperature, bias) parameter names of its patch-prompt sigmoid (models.family)
    patch_sigmoid: tuple[str, str] = ("logit_scale", "logit_bias")
    patch_null: str = ""  # the parameter of its learned null (background) embedding, if any

    @classmethod
    def of_family(cls, graphdef: Any, name: str, family: ModelFamily, embed_dim: int
                  ) -> "ModelView":
        """The view of a model of `family` (models.family): what it declares, nothing else."""
        return cls(graphdef=graphdef, name=name, capabilities=family.capabilities,
                   scoring=family.scoring, towers=family.towers, embed_dim=embed_dim,
                   patch_sigmoid=family.patch_sigmoid, patch_null=family.patch_null)

    def require(self, capability: str, evaluator: str, fix: str) -> None:
        """ConfigError unless the model has `capability` (named in the message with `fix`)."""
        if capability not in self.capabilities:
            raise ConfigError(f"{evaluator} needs a model with {capability!r} (e.g. "
                              f"{_EXAMPLES.get(capability, 'another family')}), but model.name="
                              f"{self.name!r} offers {', '.join(sorted(self.capabilities))}; {fix}")


_EXAMPLES = {"embedding": "two_tower, coca", "token_wise": "filip", "captions": "coca",
             "image_tokens": "two_tower, filip, patch_phrase", "detection": "ov_detector",
             "segmentation": "ov_segmenter"}


class ClassifierTrainer(Protocol):
    """Builds the training of a classifier module (`models.classifier`) on labelled batches:
    returns (init(params) -> train state, step(state, batch) -> (state, metrics)), jitted with
    the run's mesh. `trainable` is a regex of the parameter paths that train (the rest is
    locked); `options` has lr, warmup_steps, steps, weight_decay, label_smoothing."""

    def __call__(self, graphdef: Any, abstract_params: Any, trainable: str,
                 options: Mapping) -> tuple[Callable, Callable]: ...


@dataclasses.dataclass(frozen=True)
class EvalContext:
    """Shared, static inputs of evaluators."""

    model: ModelView
    tokenizer: Tokenizer
    context_length: int
    image_size: int
    channels: int
    normalize: Normalization  # uint8 images -> the model's float inputs
    mesh: Mesh
    rules: Rules
    data_dir: str = ""  # where on-disk datasets live (config.data.dir)
    train_classifier: ClassifierTrainer | None = None
    # Evaluating a saved checkpoint (vlmjax.evaluate): which one, and where evaluators may cache
    # what depends only on it (class-prompt features). Empty during training: nothing cached.
    checkpoint: str = ""
    cache_dir: str = ""

    @property
    def batch_sharding(self) -> jax.sharding.NamedSharding:
        return batch_sharding(self.mesh, self.rules)

    @property
    def graphdef(self) -> Any:
        return self.model.graphdef

    @property
    def image(self) -> dict[str, int]:
        """The model's input images: {"image_size", "channels"} (what eval sources resize to)."""
        return {"image_size": self.image_size, "channels": self.channels}

    def default_data_dir(self, dataset: str, data_dir: str) -> str:
        """An evaluator's data_dir, or where on-disk datasets live for one of those ("" lets
        TFDS benchmarks use TFDS's own default)."""
        return source_data_dir(dataset, data_dir, self.data_dir)

    def open_source(self, dataset: str, split: str, data_dir: str = "", limit: int = 0,
                    split_file: str = "", classnames_file: str = "", templates_file: str = ""
                    ) -> EvalSource:
        """A split to evaluate on (`data.eval_sources`), its images at the model's size."""
        return open_eval_source(dataset, split, self.default_data_dir(dataset, data_dir), self.image,
                                limit, split_file, classnames_file, templates_file)

    def open_dense_source(self, dataset: str, split: str, data_dir: str = "", limit: int = 0,
                          classnames_file: str = "", templates_file: str = "",
                          short_side: int = 0, canvas: int = 0) -> DenseSource:
        """A split with masks and/or boxes (`data.dense_sources`): scene canvases at the model's
        size, benchmark images at their protocol's size (or `short_side` / `canvas`)."""
        return open_dense_source(dataset, split, self.default_data_dir(dataset, data_dir),
                                 self.image, limit, classnames_file, templates_file, short_side,
                                 canvas)


@dataclasses.dataclass(frozen=True)
class EvalFacts:
    """What an evaluator's config check may rely on, before anything is built or compiled."""

    capabilities: frozenset[str]
    model_name: str
    data_dir: str
    image_size: int
    channels: int
    batch_shards: int  # evaluation batch sizes must divide over these

    def check_source(self, name: str, dataset: str, split: str, data_dir: str,
                     split_file: str = "", labels: bool = True) -> None:
        """Raises before anything compiles if evaluator `name` cannot read the split at the
        model's image size (`data.eval_sources.check_eval_source`); `labels`: it needs them."""
        key = f"evals.{name}.data_dir" if data_dir else "data.dir"
        try:
            check_eval_source(dataset, split, source_data_dir(dataset, data_dir, self.data_dir),
                              key, image={"image_size": self.image_size, "channels": self.channels},
                              split_file=split_file, labels=labels)
        except ConfigError as e:  # on-disk images of another size than the model's
            raise ConfigError(f"config.evals.{name}.dataset={dataset!r} cannot be evaluated by "
                              f"this model: {e}") from e

    def check_dense_source(self, name: str, dataset: str, split: str, data_dir: str) -> None:
        """`check_source` for a split with masks and/or boxes (`data.dense_sources`)."""
        key = f"evals.{name}.data_dir" if data_dir else "data.dir"
        try:
            check_dense_source(dataset, split, source_data_dir(dataset, data_dir, self.data_dir),
                               key, image={"image_size": self.image_size, "channels": self.channels})
        except ConfigError as e:
            raise ConfigError(f"config.evals.{name}.dataset={dataset!r} cannot be evaluated by "
                              f"this model: {e}") from e

    def require_image_tokens(self, name: str, kind: str) -> None:
        """ConfigError (one line) unless the model gives per-patch embeddings (dense evaluators)."""
        if "image_tokens" not in self.capabilities:
            raise ConfigError(f"config.evals.{name}.kind={kind!r} needs a model with image tokens "
                              f"(per-patch embeddings: model.name two_tower, filip or "
                              f"patch_phrase), but model.name={self.model_name!r} has none "
                              f"(it offers {', '.join(sorted(self.capabilities))}); remove "
                              f"evals.{name} or evaluate such a model")
