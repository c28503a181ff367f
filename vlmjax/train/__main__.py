"""`python -m vlmjax.train --config configs/demo/clip_fashion_mnist.py --workdir DIR [--config.k=v]`.

Without --config, the run's own config (DIR/config.json, e.g. written by `vlmjax.convert`) is
used, with any --config.k=v overrides applied to it: fine-tuning or LiT from imported weights.
"""

import os
import sys

from vlmjax.cli import initialize_processes, parse_args, run_main


def main() -> int:
    args, overrides = parse_args(sys.argv[1:], "Pre-train (or resume) and evaluate a model.",
                                 lambda parser: None, prog="python -m vlmjax.train")
    saved_path = os.path.join(args.workdir, "config.json")
    if not args.config and not os.path.isfile(saved_path):
        raise SystemExit(f"error: --config path/to/config.py is required ({saved_path} does not "
                         "exist, so there is no run config to continue from)")
    initialize_processes(args)
    from vlmjax.config import config_from_args
    base = None
    if not args.config:
        from vlmjax.train.workdir import load_saved_config
        base = load_saved_config(args.workdir)
    config = config_from_args(args.config or "", overrides, base=base)
    import jax

    from vlmjax.config import validate
    validate(config, jax.device_count(), jax.process_count())
    check_training_images(config)
    from vlmjax.train.loop import train
    train(config, args.workdir)
    return 0


def check_training_images(config) -> None:
    """ConfigError when the model's image size or channels differ from an on-disk dataset's
    images: they are not resized, and the mismatch would otherwise surface as a JAX shape error
    after compiling. (Not in `validate`: evaluating an imported RGB model keeps the default
    data section, whose images it never trains on.)"""
    from vlmjax.data.datasets import DATASETS, check_dataset
    data, image = config.data, config.model.image
    if data.name in DATASETS:
        check_dataset(data.name, data.dir, key="data.dir", split=data.split,
                      image_size=image.image_size, channels=image.channels)


if __name__ == "__main__":
    run_main(main)
