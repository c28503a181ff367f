"""A tiny study for tests and for trying the study machinery: objective x model size x steps x seed
of the tiny test CLIP (seconds per run on a CPU).

    python -m vlmjax.study --config configs/study/tiny_test.py --workdir runs/tiny_study --dry_run
    python -m vlmjax.study --config configs/study/tiny_test.py:quick --workdir runs/tiny_quick \
        --config.data.dir=/usr/share/datasets/fashion-mnist

"full" (the default) has 2 objectives x 2 sizes x 2 step counts x 2 seeds = 16 runs; "quick" only
objective x seed at 20 steps (4 runs). `steps` stands in for a data-size axis (images seen =
steps x batch 32) until a data-fraction key exists.
"""

import math

TINY = "configs/test/tiny_clip.py"


def get_study(arg: str = "full") -> dict:
    objectives = {
        "clip": {"objective.name": "clip"},
        # SigLIP's own starting temperature and bias, as configs/test/tiny_clip.py:siglip sets them.
        "siglip": {"objective.name": "siglip", "model.use_logit_bias": True,
                   "model.logit_scale_init": math.log(10.0)},
    }
    if arg == "quick":
        return {"config": TINY, "overrides": {"train.num_steps": 20, "train.checkpoint_every": 10},
                "axes": {"objective": objectives, "seed": {"seed": [0, 1]}}}
    if arg != "full":
        raise ValueError(f"tiny_test.py takes 'full' or 'quick', got {arg!r}")
    sizes = {  # both towers' widths (heads divide them); embed_dim follows
        "w16": {"model.image.width": 16, "model.text.width": 16, "model.embed_dim": 16},
        "w32": {"model.image.width": 32, "model.text.width": 32, "model.embed_dim": 32,
                "model.image.mlp_dim": 64, "model.text.mlp_dim": 64},
    }
    return {
        "config": TINY,
        "overrides": {"train.checkpoint_every": 10},
        "axes": {"objective": objectives, "size": sizes, "steps": {"train.num_steps": [10, 20]},
                 "seed": {"seed": [0, 1]}},
        "scaling": {"data": {"axis": "steps", "x": {"10": 320, "20": 640}}, "model": "size"},
    }
