"""Per-sample decoding and augmentation of image-text pairs, run in the loader's worker processes.

A sample that cannot be used becomes `{"__skip__": reason}` instead of raising, so the loader
counts it and moves on (see `SKIP_REASONS`). Randomness is a function of (seed, the sample's
position in the stream), so a restored iterator reproduces the same crops and captions.
"""

import dataclasses
import io
import math

import numpy as np
from PIL import Image

SKIP_REASONS = (
    "missing_image",      # a tar sample without a jpg/jpeg/png/webp member
    "missing_caption",    # a tar sample without a txt member (prepared records: no caption)
    "undecodable_image",  # not an image PIL can identify or decode
    "truncated_image",    # the encoded data ends early
    "absurd_size",        # a side under min_size or over max_size, or aspect ratio over max_aspect
    "empty_caption",      # only whitespace
    "caption_not_utf8",   # the caption bytes are not UTF-8
    "damaged_tar",        # lost in a tar shard that is cut short or corrupt (see SHARD_COUNTS)
    "missing_tar",        # in a tar shard of a brace range that does not exist (missing_shards=count)
)
# Counted in shards, not samples. The samples a damaged or missing tar shard lost are counted
# under damaged_tar / missing_tar exactly when the shard's sample count is known (img2dataset's
# <shard>_stats.json); otherwise only those known lost are (the sample cut short), and the shard
# is counted in unknown_loss_shards: nothing is lost without a count.
SHARD_COUNTS = (
    "damaged_shards",       # tar shard reads that ended at damage (each epoch's read counts)
    "missing_shards",       # tar shard reads that found no file
    "unknown_loss_shards",  # of those, the reads whose number of lost samples is unknown
)


def random_resized_crop_box(rng: np.random.Generator, width: int, height: int,
                            scale: tuple[float, float], ratio: tuple[float, float]
                            ) -> tuple[int, int, int, int]:
    """(left, top, w, h) of torchvision's RandomResizedCrop: up to 10 draws of an area fraction in
    `scale` and a log-uniform aspect ratio in `ratio` that fit, else a centre crop at the ratio
    bound nearest the image's."""
    area = width * height
    log_lo, log_hi = math.log(ratio[0]), math.log(ratio[1])
    for _ in range(10):
        target = area * rng.uniform(scale[0], scale[1])
        aspect = math.exp(rng.uniform(log_lo, log_hi))
        w = int(round(math.sqrt(target * aspect)))
        h = int(round(math.sqrt(target / aspect)))
        if 0 < w <= width and 0 < h <= height:
            top = int(rng.integers(0, height - h + 1))
            left = int(rng.integers(0, width - w + 1))
            return left, top, w, h
    in_ratio = width / height
    if in_ratio < min(ratio):
        w, h = width, int(round(width / min(ratio)))
    elif in_ratio > max(ratio):
        w, h = int(round(height * max(ratio))), height
    else:
        w, h = width, height
    return (width - w) // 2, (height - h) // 2, w, h


def resize_centre_crop(pil: Image.Image, size: int) -> Image.Image:
    """Bicubic resize of the shorter side to `size`, then the central size x size square (CLIP's
    evaluation transform)."""
    w, h = pil.size
    scale = size / min(w, h)
    pil = pil.resize((max(size, round(w * scale)), max(size, round(h * scale))), Image.BICUBIC)
    w, h = pil.size
    left, top = (w - size) // 2, (h - size) // 2
    return pil.crop((left, top, left + size, top + size))


@dataclasses.dataclass(frozen=True)
class ImageTextTransform:
    """Sample `{"image": bytes, "captions": [bytes], "__position__": [ints]}` -> `{"image": uint8
    [size, size, channels], "caption": str}`, or `{"__skip__": reason}`."""

    size: int
    channels: int = 3
    crop: str = "random_resized"  # random_resized | center
    scale: tuple[float, float] = (0.9, 1.0)  # open_clip's training default
    ratio: tuple[float, float] = (3 / 4, 4 / 3)
    min_size: int = 8
    max_size: int = 16384
    max_aspect: float = 20.0
    seed: int = 0

    def __call__(self, sample: dict) -> dict:
        if "__skip__" in sample:
            return sample
        rng = np.random.default_rng([self.seed, *sample["__position__"]])
        captions = sample["captions"]
        if not captions:
            return {"__skip__": "missing_caption", "__key__": sample.get("__key__")}
        raw = captions[int(rng.integers(len(captions)))] if len(captions) > 1 else captions[0]
        try:
            caption = raw.decode("utf-8").strip()
        except UnicodeDecodeError:
            return {"__skip__": "caption_not_utf8", "__key__": sample.get("__key__")}
        if not caption:
            return {"__skip__": "empty_caption", "__key__": sample.get("__key__")}
        image = self.decode(sample["image"])
        if isinstance(image, str):
            return {"__skip__": image, "__key__": sample.get("__key__")}
        if self.crop == "center":
            image = resize_centre_crop(image, self.size)
        else:
            box = random_resized_crop_box(rng, *image.size, self.scale, self.ratio)
            left, top, w, h = box
            image = image.crop((left, top, left + w, top + h)).resize(
                (self.size, self.size), Image.BICUBIC)
        array = np.asarray(image, np.uint8)
        return {"image": array[..., None] if self.channels == 1 else array, "caption": caption}

    def absurd_size(self, width: int, height: int) -> bool:
        """A side under min_size or over max_size, or one side over max_aspect times the other."""
        short, long = min(width, height), max(width, height)
        return short < self.min_size or long > self.max_size or long > self.max_aspect * short

    def decode(self, data: bytes) -> Image.Image | str:
        """The decoded image in RGB (or L for one channel), or the reason it is unusable."""
        try:
            pil = Image.open(io.BytesIO(data))
        except Exception:  # noqa: BLE001 - untrusted bytes: any failure means "not an image"
            return "undecodable_image"
        if self.absurd_size(*pil.size):
            return "absurd_size"
        try:
            pil.load()
        except OSError as e:
            return "truncated_image" if "truncated" in str(e) else "undecodable_image"
        except Exception:  # noqa: BLE001 - PIL raises many types on corrupt data
            return "undecodable_image"
        # Grayscale, CMYK, palette and alpha images all go through PIL's own conversion, as
        # open_clip's `_convert_to_rgb` does (alpha is dropped, not composited).
        mode = "L" if self.channels == 1 else "RGB"
        return pil if pil.mode == mode else pil.convert(mode)
