"""Which class a generated caption names, and the reference captions of labelled test images.

Labelled classification sets have no human captions; their references are captions of the
image's class written from the same paraphrases and templates the training captions use.
"""

import re
from collections.abc import Sequence

import numpy as np


def class_patterns(caption_names: Sequence[Sequence[str]]) -> list[tuple[re.Pattern, int, int]]:
    """(word-bounded pattern, class, name length) for every paraphrase, longest names first."""
    entries = [(name.lower(), k) for k, names in enumerate(caption_names) for name in names]
    entries.sort(key=lambda e: -len(e[0]))
    return [(re.compile(rf"(?<![\w-]){re.escape(name)}(?![\w-])"), k, len(name))
            for name, k in entries]


def named_class(caption: str, patterns: list[tuple[re.Pattern, int, int]]) -> int:
    """The one class the caption names, or -1 if it names none or several.

    A name inside a longer matched name does not count ("shirt" in "tee shirt", "boot" in
    "ankle boot"), so nested paraphrases resolve to the longer, more specific one.
    """
    text = caption.lower()
    spans: list[tuple[int, int]] = []
    classes = set()
    for pattern, k, _ in patterns:  # longest names first
        for match in pattern.finditer(text):
            if any(a <= match.start() and match.end() <= b for a, b in spans):
                continue
            spans.append(match.span())
            classes.add(k)
    return classes.pop() if len(classes) == 1 else -1


def reference_captions(labels: np.ndarray, texts: Sequence[str], offsets: np.ndarray,
                       per_image: int, seed: int = 0) -> list[list[str]]:
    """`per_image` distinct captions of each image's class, drawn reproducibly."""
    rng = np.random.default_rng(seed)
    out = []
    for label in labels:
        start, stop = int(offsets[label]), int(offsets[label + 1])
        rows = rng.choice(np.arange(start, stop), size=min(per_image, stop - start), replace=False)
        out.append([texts[r] for r in rows])
    return out
