"""The complete set of config keys with their defaults: the schema every config is checked against.

Experiment configs start from `base_config()` and override what they need; a key that is not
here is a typo, and `validate` reports it with the closest known key.
"""

import math

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


# Keys that take a float or a per-channel list (see `channel_stat`).
PER_CHANNEL_KEYS = ("data.image_mean", "data.image_std")


def channel_stat(value: float) -> config_dict.FieldReference:
    """A field that accepts a float or a per-channel list (ConfigDict fields are typed otherwise)."""
    return config_dict.FieldReference(value, field_type=object)


def base_config() -> ml_collections.ConfigDict:
    """Every known key with its default value and type."""
    c = ml_collections.ConfigDict()
    c.seed = 0

    # Mesh axis sizes; -1 means "all remaining devices". Product must equal the device count.
    c.mesh = ml_collections.ConfigDict(dict(data=-1, fsdp=1, tensor=1))
    c.sharding_rules = DEFAULT_SHARDING_RULES

    c.data = ml_collections.ConfigDict()
    c.data.name = "fashion_mnist"
    c.data.dir = "/usr/share/datasets/fashion-mnist"
    c.data.split = "train"
    # Normalisation applied on device: one value for every channel, or one per channel (a list
    # as long as model.image.channels, e.g. CLIP's (0.48145466, 0.4578275, 0.40821073)).
    c.data.image_mean = channel_stat(0.5)
    c.data.image_std = channel_stat(0.5)
    c.data.flip = False  # random horizontal flip
    c.data.translate = 0  # random shift by up to this many pixels (zero padded)
    c.data.num_threads = 2  # grain read threads
    c.data.prefetch = 2  # batches prepared ahead, on device
    # data.name="image_text": image-caption pairs from web-scale shards (vlmjax/data/image_text_*).
    c.data.web = ml_collections.ConfigDict()
    # "prepared:DIR" (array_record shards of `python -m vlmjax.data.prepare`: global shuffle,
    # exact resume) or "tar:PATTERN" (webdataset tars streamed: a directory, glob or brace range).
    c.data.web.sources = ()
    c.data.web.weights = ()  # mixture weights, one per source; () mixes uniformly
    c.data.web.num_workers = 2  # decoding processes per host (0: in the training process)
    c.data.web.worker_buffer = 2  # batches each worker prepares ahead
    c.data.web.cycle_length = 4  # tar shards each worker reads at once (interleaved)
    c.data.web.crop = "random_resized"  # random_resized | center (resize shorter side + centre crop)
    c.data.web.crop_scale = (0.9, 1.0)  # RandomResizedCrop area fraction (open_clip's default)
    c.data.web.crop_ratio = (3 / 4, 4 / 3)  # RandomResizedCrop aspect ratio range
    # Samples outside these bounds are skipped (counted as absurd_size).
    c.data.web.min_image_size = 8
    c.data.web.max_image_size = 16384
    c.data.web.max_aspect_ratio = 20.0

    c.tokenizer = ml_collections.ConfigDict()
    c.tokenizer.kind = "trained_bpe"  # clip_bpe | hf_json | sentencepiece | trained_bpe | ...
    c.tokenizer.path = ""
    c.tokenizer.vocab_size = 1024  # for trained tokenizers
    c.tokenizer.context_length = 16

    c.model = ml_collections.ConfigDict()
    c.model.name = "two_tower"
    c.model.embed_dim = 128
    c.model.activation = "gelu"  # gelu (exact erf) | quick_gelu | gelu_tanh (flax's nn.gelu)
    # Epsilon of every LayerNorm of the two-tower model (CLIP 1e-5; big_vision/flax 1e-6).
    c.model.norm_eps = 1e-5
    c.model.dtype = "float32"  # compute dtype; parameters stay float32
    # Activation rematerialisation per transformer block: none | full | dots | dots_no_batch
    # (jax.checkpoint_policies: nothing_saveable, dots_saveable, dots_with_no_batch_dims_saveable).
    c.model.remat = "none"
    c.model.scan_layers = False  # one scanned block per tower instead of unrolled layers
    c.model.logit_scale_init = math.log(1 / 0.07)
    c.model.max_logit_scale = 100.0
    c.model.use_logit_bias = False
    c.model.logit_bias_init = -10.0
    c.model.image = ml_collections.ConfigDict()
    c.model.image.variant = ""  # "B/16" etc. sets width/depth/heads/mlp_dim/patch_size
    c.model.image.image_size = 224
    c.model.image.channels = 3
    c.model.image.patch_size = 16
    c.model.image.width = 0
    c.model.image.depth = 0
    c.model.image.heads = 0
    c.model.image.mlp_dim = 0
    c.model.image.pool = "cls"  # cls | gap | map
    c.model.image.ln_pre = False
    # Output head into the joint space: linear (CLIP, no bias) | linear_bias (big_vision's Dense
    # head) | none (pooled features are the embedding; embed_dim must equal the width).
    c.model.image.proj = "linear"
    c.model.text = ml_collections.ConfigDict()
    c.model.text.width = 512
    c.model.text.depth = 12
    c.model.text.heads = 8
    c.model.text.mlp_dim = 2048
    # CLIP: causal attention pooled at the end-of-text token (the last real token of the mask).
    # big_vision SigLIP: causal=False (every position, padding included, attends to every other)
    # and pool="last" (the last position of the padded sequence).
    c.model.text.causal = True
    c.model.text.pool = "eot"  # eot | last
    c.model.text.proj = "linear"  # as model.image.proj
    # CoCa only (model.name="coca"): the text decoder's width/heads/mlp_dim are model.text.*;
    # model.text.depth is unused (the decoder has unimodal_depth + multimodal_depth layers).
    c.model.coca = ml_collections.ConfigDict()
    c.model.coca.pooler = "paper"  # paper (caption + contrastive poolers) | open_clip (one pooler)
    c.model.coca.caption_queries = 256  # queries of the captioning pooler (open_clip: incl. the 1st)
    c.model.coca.pooler_heads = 8
    c.model.coca.unimodal_depth = 6
    c.model.coca.multimodal_depth = 6
    # open_clip's CoCa layout (`--from open_clip` sets both; see models/text_decoder.py):
    # decoder_block: paper (self-attn, cross-attn, MLP) | open_clip (self-attn, MLP, cross, MLP);
    # cls_mask: real_tokens (the CLS attends to real tokens and itself) | open_clip (its
    # shifted mask: real tokens and the first padding position).
    c.model.coca.decoder_block = "paper"
    c.model.coca.cls_mask = "real_tokens"

    # FILIP only (model.name="filip"): a second temperature for the text->image direction.
    c.model.filip = ml_collections.ConfigDict()
    c.model.filip.temperature_per_direction = False

    c.objective = ml_collections.ConfigDict(dict(name="clip"))

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
    c.train.eval_every = 0  # 0: evaluate only at the end
    c.train.locked_tower = ""  # "" | image | text  (LiT)
    # Fault tolerance (README "When things go wrong"): stop cleanly (checkpoint, exit status 75)
    # after this many seconds of training (0: no limit), e.g. a little under a job's time limit.
    c.train.time_limit_seconds = 0.0
    # A step with a non-finite loss or gradient is skipped; this many in a row stop the run.
    c.train.max_consecutive_skips = 10

    # Named evaluator instances; each has a `kind` from the evaluator registry.
    c.evals = ml_collections.ConfigDict()
    return c
