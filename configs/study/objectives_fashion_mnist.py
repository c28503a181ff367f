"""The shipped study: CLIP, SigLIP, CoCa and FILIP x 3 data fractions x 2 model sizes (24 runs),
pre-trained on coarse Fashion-MNIST captions and evaluated by transfer on two offline settings.

    python -m vlmjax.study --config configs/study/objectives_fashion_mnist.py --workdir runs/objectives
    python -m vlmjax.report runs/objectives        # tables, scaling plots and fits in runs/objectives/report

Every run pre-trains on Fashion-MNIST captioned by coarse groups only (data.name=
fashion_mnist_coarse: top, bottoms, dress, footwear, bag), STEPS steps of 256 images on
data.fraction of the 60,000 training images (0.05, 0.2, 1: 3,000 / 12,000 / 60,000 images, each
subset inside the next; the same steps for all, so a smaller set is seen more often), then runs
configs/eval/offline_transfer.py:study at its last step: zero-shot on the 5 coarse groups (the
pre-training task), and on the 10 fine classes (8 names new) and scikit-learn's digits (new
domain, new classes) zero-shot, linear probe, few-shot and unsupervised transfer (FILIP, which
has no single text embedding per class, only zero-shot, linear probe and the few-shot linear
probe and closed form). The report plots each score against the number of pre-training images
(the data axis' x) and against the parameter count (the model axis), per objective.

Sizes: `demo` is the demos' model (ViT 3 x 96 on 7x7 patches, text 2 x 64; CoCa 1 + 1 text
layers), `small` a ViT 2 x 48 and a 1-layer text tower of 32. Sized for about an hour on 2 CPU
cores (see the README for measured times); `:quick` is 3 short runs (CLIP, small, 60 steps, the
three fractions) to try it. This file is also the runs' base config: `get_config(OBJECTIVE)` is that
objective's demo config with the study's data, schedule and evaluators.
"""

import os

import ml_collections

from vlmjax.config import load_config_file, select
from vlmjax.errors import ConfigError

HERE = os.path.abspath(__file__)
CONFIGS = os.path.dirname(os.path.dirname(HERE))
THIS = "configs/study/objectives_fashion_mnist.py"  # as the runs name it (relative to the repo)
# objective -> its demo config (path under configs/, arg) and whether it scores token-wise.
DEMOS = {"clip": ("demo/clip_fashion_mnist.py", "clip", False),
         "siglip": ("demo/clip_fashion_mnist.py", "siglip", False),
         "coca": ("demo/coca_fashion_mnist.py", "paper", False),
         "filip": ("demo/filip_fashion_mnist.py", "", True)}
STEPS, WARMUP = 400, 50
TRAIN_IMAGES = 60_000
FRACTIONS = (0.05, 0.2, 1.0)
SIZES = {
    "small": {"model.embed_dim": 48, "model.image.width": 48, "model.image.depth": 2,
              "model.image.heads": 2, "model.image.mlp_dim": 192, "model.text.width": 32,
              "model.text.depth": 1, "model.text.mlp_dim": 128},
    "demo": {"model.embed_dim": 96},  # the demo configs' sizes as they are
}


def get_config(arg: str = "clip") -> ml_collections.ConfigDict:
    """The base config of the study's runs with objective `arg`."""
    if arg not in DEMOS:
        raise ConfigError(f"{HERE}: unknown objective {arg!r}; choose one of {', '.join(DEMOS)} "
                          "(path.py:coca)")
    demo, demo_arg, token_wise = DEMOS[arg]
    c = load_config_file(os.path.join(CONFIGS, demo) + (f":{demo_arg}" if demo_arg else ""))
    select(c, "data.name", "fashion_mnist_coarse")
    c.train.num_steps = STEPS
    c.optimizer.warmup_steps = WARMUP
    c.train.checkpoint_every = STEPS
    c.train.log_every = 50
    suite = os.path.join(CONFIGS, "eval", "offline_transfer.py") + (
        ":study,token_wise" if token_wise else ":study")
    c.evals = load_config_file(suite).evals
    return c


def get_study(arg: str = "") -> dict:
    if arg not in ("", "quick"):
        raise ValueError(f"objectives_fashion_mnist.py takes no argument or 'quick', got {arg!r}")
    objectives = {name: {"config": f"{THIS}:{name}"} for name in DEMOS}
    if arg == "quick":  # the machinery end to end in minutes: a 3-point data curve of CLIP
        return {"config": f"{THIS}:clip",
                "overrides": {"train.num_steps": 60, "optimizer.warmup_steps": 10,
                              "train.checkpoint_every": 60, **SIZES["small"]},
                "axes": {"fraction": {"data.fraction": list(FRACTIONS)}},
                "scaling": {"data": {"axis": "fraction", "x": _images(FRACTIONS)}}}
    return {
        "config": f"{THIS}:clip",
        "axes": {"objective": objectives,
                 "size": SIZES,
                 "fraction": {"data.fraction": list(FRACTIONS)}},
        # x of the data axis: pre-training images (round(fraction x 60,000)); of the model axis:
        # the parameter count read from each run's checkpoint.
        "scaling": {"data": {"axis": "fraction", "x": _images(FRACTIONS)}, "model": "size"},
    }


def _images(fractions: list[float] | tuple[float, ...]) -> dict[str, int]:
    """{axis label: number of pre-training images} of each fraction (the labels are the values)."""
    return {repr(float(f)): round(f * TRAIN_IMAGES) for f in fractions}

