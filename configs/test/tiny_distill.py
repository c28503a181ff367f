"""A tiny distillation run for tests: a narrower student of the tiny CLIP (configs/test/
tiny_clip.py) distilled from a tiny CLIP teacher run. Tests set model.distill.teacher to the
teacher's workdir. `get_config("siglip")`: the student's own loss is SigLIP's.
"""

import math
import os

import ml_collections

from vlmjax.config import load_config_file, select
from vlmjax.errors import ConfigError

ARGS = ("clip", "siglip")  # the student's own loss


def get_config(arg: str = "clip") -> ml_collections.ConfigDict:
    if arg not in ARGS:
        raise ConfigError(f"{__file__}: unknown argument {arg!r}; choose clip or siglip "
                          "(path.py:siglip)")
    c = load_config_file(os.path.join(os.path.dirname(os.path.abspath(__file__)), "tiny_clip.py"))
    select(c, "model.name", "distill")
    select(c, "objective.name", "distill")
    c.model.distill.projection = "linear"  # the student's joint space (8) is narrower (16)
    c.model.embed_dim = 8
    c.model.image.update(width=8, mlp_dim=16)
    c.model.text.update(width=8, mlp_dim=16)
    c.objective.update(student_loss=arg, feature_weight=1.0, affinity_weight=1.0,
                       interactive_weight=0.5)
    if arg == "siglip":
        c.model.use_logit_bias = True
        c.model.logit_scale_init = math.log(10.0)
    c.train.num_steps = 6
    c.train.log_every = 3
    c.train.checkpoint_every = 3
    return c
