"""CLIP's caption clean-up (ftfy, HTML unescape, whitespace, lower-case), matching open_clip."""

from __future__ import annotations

import html
import logging
import re
from collections.abc import Callable

logger = logging.getLogger(__name__)

# Text made only of these characters is left unchanged by ftfy.fix_text and html.unescape
# (no '&', no control/escape characters, no non-ASCII), so both can be skipped: ftfy costs
# ~45 us per caption, which dominates encoding 100k ASCII captions otherwise.
_PLAIN_ASCII = re.compile(r"[\t\n\r\x20-\x25\x27-\x7e]*")


def _load_fix_text() -> Callable[[str], str] | None:
    """Return ftfy.fix_text when ftfy is installed, else None (captions are then not repaired)."""
    try:
        import ftfy
    except ImportError:
        logger.warning(
            "ftfy is not installed: CLIP text clean-up skips mojibake repair (pip install ftfy)"
        )
        return None
    return ftfy.fix_text


_FIX_TEXT = _load_fix_text()


def clip_clean(text: str) -> str:
    """Normalise a caption exactly as open_clip's SimpleTokenizer does before BPE."""
    if not _PLAIN_ASCII.fullmatch(text):
        if _FIX_TEXT is not None:
            text = _FIX_TEXT(text)
        text = html.unescape(html.unescape(text))
    return " ".join(text.split()).lower()
