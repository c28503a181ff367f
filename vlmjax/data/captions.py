"""Captions for labelled images: class-name paraphrases x templates, tokenized once into a table."""

import dataclasses

import numpy as np

from vlmjax.tokenizers import Tokenizer


@dataclasses.dataclass(frozen=True)
class CaptionTable:
    """All captions of all classes; those of class k are rows offsets[k]:offsets[k + 1]."""

    texts: list[str]
    offsets: np.ndarray  # int64 [num_classes + 1]
    ids: np.ndarray  # int32 [num_captions, context_length]
    mask: np.ndarray  # bool [num_captions, context_length]


def caption_texts(caption_names: list[list[str]], templates: list[str]) -> tuple[list[str], np.ndarray]:
    """Every `template.format(c=name)` for every paraphrase of every class, grouped by class."""
    texts: list[str] = []
    offsets = [0]
    for names in caption_names:
        texts.extend(t.format(c=name) for name in names for t in templates)
        offsets.append(len(texts))
    return texts, np.asarray(offsets, np.int64)


def build_caption_table(caption_names: list[list[str]], templates: list[str],
                        tokenizer: Tokenizer, context_length: int) -> CaptionTable:
    """Tokenizes every distinct caption once, so the input pipeline only indexes a table."""
    texts, offsets = caption_texts(caption_names, templates)
    ids, mask = tokenizer.encode(texts, context_length)
    return CaptionTable(texts=texts, offsets=offsets, ids=ids, mask=mask)


def sample_image_captions(labels: np.ndarray, offsets: np.ndarray, per_image: int, seed: int
                          ) -> tuple[np.ndarray, np.ndarray]:
    """`per_image` distinct captions of each image's class, drawn without replacement.

    `offsets` are `caption_texts`' class offsets. Returns caption indices [N * per_image] and
    the image each one describes: a labelled dataset's stand-in for a captioned retrieval set
    (COCO has 5 captions per image).
    """
    rng = np.random.default_rng(seed)
    rows = []
    for label in labels:
        first, last = offsets[label], offsets[label + 1]
        rows.append(first + rng.choice(last - first, size=per_image, replace=False))
    return np.concatenate(rows), np.repeat(np.arange(len(labels)), per_image)
