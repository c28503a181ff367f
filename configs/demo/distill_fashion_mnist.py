"""Demo: the demo CLIP (configs/demo/clip_fashion_mnist.py) distilled into a student of about a
quarter of its parameters, on captioned Fashion-MNIST; zero-shot on its test set.

Train the teacher first (`bash launch/demo.sh` writes workdir/demo_clip), then
`python -m vlmjax.train --config configs/demo/distill_fashion_mnist.py --workdir workdir/distill`
(another teacher: --config.model.distill.teacher=RUN). `get_config("alone")` is the same student
trained alone with CLIP's loss, same steps and data (bench/distill_table.py compares the two).
The student shares the teacher's tokenizer, context length, image size and normalisation (the
teacher reads the student's inputs); its joint space (48) reaches the teacher's (96) through a
learned linear map for the feature and interactive terms.
"""

import os

import ml_collections

from vlmjax.config import load_config_file, select
from vlmjax.errors import ConfigError

ARGS = ("distill", "alone")
TEACHER = "workdir/demo_clip"  # where `bash launch/demo.sh` trains the demo CLIP


def get_config(arg: str = "distill") -> ml_collections.ConfigDict:
    if arg not in ARGS:
        raise ConfigError(f"{__file__}: unknown argument {arg!r}; choose distill or alone "
                          "(path.py:alone)")
    c = load_config_file(os.path.join(os.path.dirname(os.path.abspath(__file__)),
                                      "clip_fashion_mnist.py"))
    # The student: 2 + 2 narrower blocks (about 0.13M parameters against the teacher's 0.52M).
    c.model.embed_dim = 48
    c.model.image.update(width=48, depth=2, heads=2, mlp_dim=192)
    c.model.text.update(width=32, depth=2, heads=2, mlp_dim=128)
    if arg == "distill":
        select(c, "model.name", "distill")
        c.model.distill.teacher = TEACHER
        c.model.distill.projection = "linear"
        select(c, "objective.name", "distill")
        c.objective.update(student_loss="clip", affinity_weight=1.0, feature_weight=1.0,
                           feature_loss="cosine", interactive_weight=1.0)
    return c
