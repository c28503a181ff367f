"""data.name="image_text": web-scale image-caption shards; its data.web.* keys, their checks,
and the training iterator built from them."""

from collections.abc import Mapping

from vlmjax.data.image_text_pipeline import ImageTextIterator, image_text_dataset
from vlmjax.data.image_text_sources import SourceSpec, check_missing_shards
from vlmjax.data.image_text_transform import ImageTextTransform
from vlmjax.data.train_source import TrainSource
from vlmjax.errors import ConfigError, DataError
from vlmjax.options import require_positive
from vlmjax.tokenizers import Tokenizer

CROPS = ("random_resized", "center")
OPTIONS = {"web": {
    # "prepared:DIR" (array_record shards of `python -m vlmjax.data.prepare`: global shuffle,
    # exact resume) or "tar:PATTERN" (webdataset tars streamed: a directory, glob or brace range).
    "sources": (),
    "weights": (),  # mixture weights, one per source; () mixes uniformly
    "num_workers": 2,  # decoding processes per host (0: in the training process)
    "worker_buffer": 2,  # batches each worker prepares ahead
    "cycle_length": 4,  # tar shards each worker reads at once (interleaved)
    # Tar shards of a brace range that are absent: "error" (stop before training) or "count"
    # (train on the others, counting each read of a missing shard in data/missing_shards).
    "missing_shards": "error",
    "crop": "random_resized",  # random_resized | center (resize shorter side + centre crop)
    "crop_scale": (0.9, 1.0),  # RandomResizedCrop area fraction (open_clip's default)
    "crop_ratio": (3 / 4, 4 / 3),  # RandomResizedCrop aspect ratio range
    # Samples outside these bounds are skipped (counted as absurd_size).
    "min_image_size": 8,
    "max_image_size": 16384,
    "max_aspect_ratio": 20.0,
}}


def _fail(key: str, problem: str, fix: str) -> None:
    separator = "" if problem.startswith("=") else " "
    raise ConfigError(f"config.data.web.{key}{separator}{problem}; {fix}")


def check_image_text_config(cfg: Mapping) -> None:
    """Raises ConfigError naming the data.web key (or DataError naming the missing source)."""
    require_positive(cfg["data"], "data", "prefetch")
    web = cfg["data"]["web"]
    if not web["sources"]:
        _fail("sources", "is empty but data.name='image_text'",
              "list sources, e.g. --config.data.web.sources=\"('prepared:/data/cc3m',)\"")
    specs = []
    for entry in web["sources"]:
        try:
            specs.append(SourceSpec.parse(str(entry)))
        except DataError as e:
            raise ConfigError(f"config.data.web.sources: {e}") from e
    weights = list(web["weights"])
    if weights and (len(weights) != len(specs) or min(weights) <= 0):
        _fail("weights", f"={tuple(weights)} must be one positive weight per source "
              f"({len(specs)} sources)", "or () for uniform mixing")
    if web["crop"] not in CROPS:
        _fail("crop", f"is {web['crop']!r}", f"choose one of {', '.join(map(repr, CROPS))}")
    for key, bounds, fix in (("crop_scale", (0.0, 1.0), "open_clip uses (0.9, 1.0)"),
                             ("crop_ratio", (0.0, float("inf")), "torchvision uses (0.75, 1.3333)")):
        lo, hi = (tuple(web[key]) + (None, None))[:2]
        if len(web[key]) != 2 or not (bounds[0] < lo <= hi <= bounds[1]):
            _fail(key, f"={tuple(web[key])} must be (low, high) with {bounds[0]} < low <= high"
                  f"{' <= 1' if bounds[1] == 1.0 else ''}", fix)
    for key in ("num_workers", "worker_buffer", "cycle_length", "min_image_size", "max_image_size"):
        if web[key] < (0 if key == "num_workers" else 1):
            _fail(key, f"is {web[key]}", "it must be >= 0" if key == "num_workers" else "it must be >= 1")
    if web["min_image_size"] > web["max_image_size"] or web["max_aspect_ratio"] < 1:
        _fail("min_image_size", "must not exceed max_image_size, and max_aspect_ratio must be >= 1",
              "e.g. 8, 16384 and 20")
    if cfg["tokenizer"]["kind"].startswith("trained_"):
        raise ConfigError(f"config.tokenizer.kind={cfg['tokenizer']['kind']!r} trains on a labelled "
                          "dataset's caption vocabulary, which image_text data has not; use a fixed "
                          "vocabulary, e.g. --config.tokenizer.kind=clip_bpe")
    check_missing_shards(web["missing_shards"])
    for spec in specs:
        spec.check(web["missing_shards"])


def image_text_iterator(cfg: Mapping, tokenizer: Tokenizer, rows: slice,
                        process_index: int, process_count: int) -> ImageTextIterator:
    """This host's checkpointable iterator of its `rows` of every global batch (uint8 images:
    the train step normalises them on device)."""
    batch_size = rows.stop - rows.start
    web, image = cfg["data"]["web"], cfg["model"]["image"]
    transform = ImageTextTransform(
        size=image["image_size"], channels=image["channels"], crop=web["crop"],
        scale=tuple(web["crop_scale"]), ratio=tuple(web["crop_ratio"]),
        min_size=web["min_image_size"], max_size=web["max_image_size"],
        max_aspect=web["max_aspect_ratio"], seed=cfg["seed"] + 1)
    if web["num_workers"] > 0:
        import absl.flags
        if not absl.flags.FLAGS.is_parsed():
            absl.flags.FLAGS.mark_as_parsed()  # grain 0.2.18's workers read absl flags
    return ImageTextIterator(image_text_dataset(
        [SourceSpec.parse(s) for s in web["sources"]], transform, tokenizer,
        cfg["tokenizer"]["context_length"], batch_size, seed=cfg["seed"],
        weights=tuple(web["weights"]), process_index=process_index, process_count=process_count,
        cycle_length=web["cycle_length"], num_workers=web["num_workers"],
        worker_buffer=web["worker_buffer"], missing_shards=web["missing_shards"]))


IMAGE_TEXT = TrainSource(options=OPTIONS, check=check_image_text_config, build=image_text_iterator)
