"""The config keys that belong to no component, with their defaults, and `base_config()`.

Experiment configs start from `base_config()` (these keys plus the default components' own
options) and override what they need; a key that is neither here nor a chosen component's is
a typo, and `validate` reports it with the closest known key.
"""

import ml_collections
from ml_collections import config_dict

# Logical axis name -> mesh axes. Parameters and activations are annotated with the logical
# names; only these rules decide how they are laid out on the mesh (MaxText's scheme).
# Activations name their model axis "embed" too: it maps to nothing there because "batch" has
# already taken "fsdp" (a mesh axis is used at most once per array), so FSDP shards only the
# parameters and their optimizer moments along "embed".
DEFAULT_SHARDING_RULES = (
    ("batch", ("data", "fsdp")),
    ("length", None),
    ("layers", None),
    ("embed", "fsdp"),
    ("mlp", "tensor"),
    ("heads", "tensor"),
    ("kv", None),
    ("vocab", "tensor"),
    ("joint", None),
    ("patch", None),
)


# The objective a config trains when it names none.
DEFAULT_OBJECTIVE = "clip"


def channel_stat(value: float) -> config_dict.FieldReference:
    """A field that accepts a float or a per-channel list (ConfigDict fields are typed otherwise)."""
    return config_dict.FieldReference(value, field_type=object)


def fixed_config() -> ml_collections.ConfigDict:
    """The sections that belong to no component (mesh, optimizer, train) with their defaults,
    and the keys that choose each component. Components' own keys come from their registries
    (`config.schema`)."""
    c = ml_collections.ConfigDict()
    c.seed = 0

    # Mesh axis sizes; -1 means "all remaining devices". Product must equal the device count.
    c.mesh = ml_collections.ConfigDict(dict(data=-1, fsdp=1, tensor=1))
    c.sharding_rules = DEFAULT_SHARDING_RULES

    c.data = ml_collections.ConfigDict(dict(name="fashion_mnist"))  # vlmjax.data.registry
    c.tokenizer = ml_collections.ConfigDict(dict(kind="trained_bpe"))  # vlmjax.tokenizers
    # model.name: vlmjax.models.registry; model.image/text.kind: vlmjax.models.towers
    c.model = ml_collections.ConfigDict(dict(name="two_tower"))
    c.model.image = ml_collections.ConfigDict(dict(kind="vit"))
    c.model.text = ml_collections.ConfigDict(dict(kind="transformer"))
    c.objective = ml_collections.ConfigDict(dict(name=DEFAULT_OBJECTIVE))  # vlmjax.objectives

    c.optimizer = ml_collections.ConfigDict()
    c.optimizer.lr = 5e-4
    c.optimizer.b1 = 0.9
    c.optimizer.b2 = 0.98
    c.optimizer.eps = 1e-6
    c.optimizer.weight_decay = 0.2
    # Parameters whose path matches get no weight decay: every bias (query_bias, fc1_bias, ...),
    # norm scales, the temperature, class tokens, probes and position embeddings. Matched by
    # name because scanned layers give every parameter a leading layer axis (so "fewer than 2
    # dimensions", open_clip's rule, no longer singles them out).
    c.optimizer.no_decay = r"(^|/|_)(bias|scale|cls_token|probe|pos_embed|logit_scale_t2i)$"
    c.optimizer.warmup_steps = 10_000
    c.optimizer.schedule = "cosine"  # cosine | constant
    c.optimizer.end_lr_ratio = 0.0
    c.optimizer.grad_clip_norm = 1.0  # 0 disables

    c.train = ml_collections.ConfigDict()
    c.train.batch_size = 256  # global batch: every loss sees all of it, whatever the mesh
    # Micro-batches per step for contrastive objectives: embeddings of all micro-batches are
    # cached, the loss is taken over the full batch, then each micro-batch is recomputed with
    # gradients (GradCache / open_clip's accum_freq): the same update as one big batch.
    c.train.grad_accum_steps = 1
    c.train.num_steps = 1000
    c.train.log_every = 50
    c.train.checkpoint_every = 500
    c.train.keep_checkpoints = 3
    # Steps between evaluations of every evaluator whose evals.<name>.every is -1 (0: only at
    # the end).
    c.train.eval_every = 0
    c.train.locked_tower = ""  # "" | image | text  (LiT)
    # Fault tolerance (README "When things go wrong"): stop cleanly (checkpoint, exit status 75)
    # after this many seconds of training (0: no limit), e.g. a little under a job's time limit.
    c.train.time_limit_seconds = 0.0
    # A step with a non-finite loss or gradient is skipped; this many in a row stop the run.
    c.train.max_consecutive_skips = 10

    # Named evaluator instances; each has a `kind` from the evaluator registry.
    c.evals = ml_collections.ConfigDict()
    return c
