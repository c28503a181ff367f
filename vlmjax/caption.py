"""`python -m vlmjax.caption --workdir DIR IMAGE...`: caption images with a trained CoCa run.

Loads the run's config.json, tokenizer and checkpoint (latest, or --step) on one device, reads
each image with PIL (converted to the model's channels and image size) and prints
`path<TAB>caption` per image.
"""

import sys
from collections.abc import Mapping, Sequence

import numpy as np

from vlmjax.cli import initialize_processes, parse_args, run_main

METHODS = ("greedy", "beam", "sample")


def read_images(paths: Sequence[str], image_size: int, channels: int) -> np.ndarray:
    """uint8 images [n, size, size, channels]: grayscale or RGB, resized like the training data."""
    from PIL import Image, UnidentifiedImageError

    from vlmjax.errors import DataError

    out = []
    for path in paths:
        try:
            with Image.open(path) as image:
                image = image.convert("L" if channels == 1 else "RGB")
                image = image.resize((image_size, image_size), Image.Resampling.BICUBIC)
        except (OSError, UnidentifiedImageError) as e:
            raise DataError(f"cannot read image {path!r}: {e}") from e
        out.append(np.asarray(image, np.uint8).reshape(image_size, image_size, channels))
    return np.stack(out)


def caption_images(config: Mapping, workdir: str, paths: Sequence[str], *, step: int | None = None,
                   method: str = "greedy", num_beams: int = 4, max_len: int | None = None
                   ) -> list[str]:
    """Captions of the images at `paths` from the run's checkpoint `step` (latest if None)."""
    import jax

    from vlmjax.data.normalization import Normalization
    from vlmjax.errors import ConfigError
    from vlmjax.generation.coca_cache import generate_captions
    from vlmjax.models.registry import get_family
    from vlmjax.train.run import load_run

    model = config["model"]
    if "captions" not in get_family(model).capabilities:
        raise ConfigError(f"{workdir} holds a {model['name']!r} model, which does not caption; "
                          "captioning needs a captioning run (model.name = 'coca')")
    images = read_images(paths, model["image"]["image_size"], model["image"]["channels"])
    run = load_run(workdir, step, config=config, devices=jax.devices()[:1])
    normalized = Normalization.from_config(config["data"])(jax.numpy.asarray(images))
    return generate_captions(run.graphdef, run.weights, normalized, run.tokenizer,
                             method=method, num_beams=num_beams, max_len=max_len)


def _flags(parser) -> None:
    parser.add_argument("images", nargs="+", metavar="IMAGE", help="image files to caption")
    parser.add_argument("--step", type=int, default=None, help="checkpoint step (default: latest)")
    parser.add_argument("--method", choices=METHODS, default="greedy")
    parser.add_argument("--num_beams", type=int, default=4, help="beams of --method beam")
    parser.add_argument("--max_len", type=int, default=None,
                        help="most generated tokens (default and maximum: context_length - 1)")


def main(argv: Sequence[str] | None = None) -> int:
    args, overrides = parse_args(sys.argv[1:] if argv is None else argv,
                                 "Caption images with a trained CoCa run.", _flags,
                                 prog="python -m vlmjax.caption")
    initialize_processes(args)
    from vlmjax.config import config_from_args
    from vlmjax.train.workdir import load_saved_config
    config = config_from_args(args.config or "", overrides,
                              base=None if args.config else load_saved_config(args.workdir))
    captions = caption_images(config.to_dict(), args.workdir, args.images, step=args.step,
                              method=args.method, num_beams=args.num_beams, max_len=args.max_len)
    for path, caption in zip(args.images, captions, strict=True):
        print(f"{path}\t{caption}")
    return 0


if __name__ == "__main__":
    run_main(main)
