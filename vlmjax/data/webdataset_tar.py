"""Reading webdataset tar shards (img2dataset's output) with the standard library's tarfile.

A sample is the run of consecutive members sharing a key: the member path up to the first dot
of its base name (`00012/000123.jpg` and `00012/000123.txt` are sample `00012/000123`, with
fields `jpg` and `txt`), the webdataset convention.
"""

import glob
import logging
import os
import tarfile
from collections.abc import Iterator

from vlmjax.errors import DataError

log = logging.getLogger(__name__)

IMAGE_EXTENSIONS = ("jpg", "jpeg", "png", "webp")


def split_key(name: str) -> tuple[str, str]:
    """(key, extension) of a member name: the extension starts at the base name's first dot."""
    directory, base = os.path.split(name)
    stem, dot, ext = base.partition(".")
    return (os.path.join(directory, stem) if directory else stem), ext.lower() if dot else ""


def iter_tar_samples(path: str, skip: int = 0) -> Iterator[dict]:
    """Samples `{"__key__": key, ext: bytes, ...}` of a tar file, the first `skip` passed over
    without reading their data. A damaged tar ends early with `{"__error__": message}`."""
    key, fields, index = None, {}, 0
    try:
        with tarfile.open(path, "r:*") as tar:
            for member in tar:
                if not member.isfile():
                    continue
                member_key, ext = split_key(member.name)
                if member_key != key:
                    if key is not None:
                        if index >= skip:
                            yield {"__key__": key, **fields}
                        index += 1
                    key, fields = member_key, {}
                if index >= skip and ext:
                    fields[ext] = tar.extractfile(member).read()
            if key is not None and index >= skip:
                yield {"__key__": key, **fields}
    except (tarfile.TarError, OSError, EOFError) as e:
        log.warning("tar shard %s is damaged after sample %d: %s", path, index, e)
        yield {"__key__": f"{path}#{index}", "__error__": str(e)}


def expand_shards(pattern: str) -> list[str]:
    """Tar paths from a glob or brace range (`dir/{00000..00099}.tar`), a directory or a file."""
    if os.path.isdir(pattern):
        paths = sorted(glob.glob(os.path.join(pattern, "*.tar")))
    elif "{" in pattern and ".." in pattern:
        head, rest = pattern.split("{", 1)
        span, tail = rest.split("}", 1)
        first, last = span.split("..")
        paths = [f"{head}{i:0{len(first)}d}{tail}" for i in range(int(first), int(last) + 1)]
        paths = [p for p in paths if os.path.isfile(p)]
    else:
        paths = sorted(glob.glob(pattern))
    if not paths:
        raise DataError(f"no tar shards match {pattern!r}; give a directory of .tar files, a glob "
                        "(dir/*.tar) or a brace range (dir/{00000..00099}.tar)")
    return paths
