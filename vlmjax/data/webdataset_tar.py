"""Reading webdataset tar shards (img2dataset's output) with the standard library's tarfile.

A sample is the run of consecutive members sharing a key: the member path up to the first dot
of its base name (`00012/000123.jpg` and `00012/000123.txt` are sample `00012/000123`, with
fields `jpg` and `txt`), the webdataset convention.

Damage is never silent. tarfile itself stops without a word at a file cut at a member
boundary, at a cut inside a header and at a garbage header, so after the last member the
reader checks that the end-of-archive marker (two 512-byte zero blocks) is there. A damaged
or missing shard ends with one marker item saying how many complete samples came before the
damage; how many were lost is known only where the shard's sample count is (img2dataset's
`<shard>_stats.json`, see `shard_sample_count`).
"""

import glob
import json
import logging
import os
import tarfile
from collections.abc import Iterator

from vlmjax.errors import DataError

log = logging.getLogger(__name__)

IMAGE_EXTENSIONS = ("jpg", "jpeg", "png", "webp")
MISSING_SHARDS = ("error", "count")  # what a brace range with absent shards does
_BLOCK = 512


def split_key(name: str) -> tuple[str, str]:
    """(key, extension) of a member name: the extension starts at the base name's first dot."""
    directory, base = os.path.split(name)
    stem, dot, ext = base.partition(".")
    return (os.path.join(directory, stem) if directory else stem), ext.lower() if dot else ""


def _end_problem(tar: tarfile.TarFile) -> tuple[str | None, bool]:
    """(None when the archive ends with its end-of-archive marker where the members stop, else
    what is there instead; whether the last member read is complete). tarfile itself takes a
    short or garbage header for the end."""
    tar.fileobj.seek(tar.offset)
    tail = tar.fileobj.read(2 * _BLOCK)
    if tail == bytes(2 * _BLOCK):
        return None, True
    if tail[:_BLOCK] == bytes(_BLOCK):  # the writer got as far as the first block of the marker
        return f"the end-of-archive marker at byte {tar.offset} is incomplete", True
    if not tail:
        return f"the file ends at byte {tar.offset} without the tar end-of-archive marker", False
    return f"no valid tar header at byte {tar.offset} (cut short or overwritten)", False


def iter_tar_samples(path: str, skip: int = 0) -> Iterator[dict]:
    """Samples `{"__key__": key, ext: bytes, ...}` of a tar file, the first `skip` passed over
    without reading their data.

    A damaged tar (cut short, corrupt, no end-of-archive marker) or a missing one ends with
    `{"__key__", "__error__": message, "__missing__": bool, "__read__": n, "__dropped__": 0|1}`,
    n being the complete samples before the damage. The sample in progress at the damage is
    dropped (`__dropped__`): after a cut at a member boundary its remaining members may be the
    ones lost. The marker is item n of the stream, so a reader resumed past it (`skip` > n)
    does not see it twice.
    """
    key, fields, index, problem, missing = None, {}, 0, None, False
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
            problem, last_complete = _end_problem(tar)
            if last_complete and key is not None:
                if index >= skip:
                    yield {"__key__": key, **fields}
                index, key = index + 1, None
    except FileNotFoundError as e:
        problem, missing = f"missing ({e.strerror})", True
    except (tarfile.TarError, OSError, EOFError) as e:
        problem = f"{type(e).__name__}: {e}"
    if problem is not None and index >= skip:
        log.warning("tar shard %s is %s after %d complete samples: %s", path,
                    "missing" if missing else "damaged", index, problem)
        yield {"__key__": f"{path}#{index}", "__error__": problem, "__missing__": missing,
               "__read__": index, "__dropped__": int(key is not None)}


def shard_sample_count(path: str) -> int | None:
    """The number of samples the writer put in a tar shard, when it recorded it: img2dataset
    writes `<shard>_stats.json` beside `<shard>.tar` with `successes` (samples written)."""
    stats = os.path.splitext(path)[0] + "_stats.json"
    try:
        with open(stats) as f:
            count = json.load(f).get("successes")
    except (OSError, ValueError, AttributeError):
        return None
    return count if isinstance(count, int) and count >= 0 else None


def expand_shards(pattern: str, missing: str = "error") -> list[str]:
    """Tar paths from a glob or brace range (`dir/{00000..00099}.tar`), a directory or a file.

    Shards of a brace range that do not exist raise DataError; with `missing="count"` they stay
    in the list (a loud warning here; the reader reports each as missing when it comes up).
    """
    if missing not in MISSING_SHARDS:
        raise DataError(f"missing shards option {missing!r}: choose one of {', '.join(MISSING_SHARDS)}")
    if os.path.isdir(pattern):
        paths = sorted(glob.glob(os.path.join(pattern, "*.tar")))
    elif "{" in pattern and ".." in pattern:
        head, rest = pattern.split("{", 1)
        span, tail = rest.split("}", 1)
        first, last = span.split("..")
        paths = [f"{head}{i:0{len(first)}d}{tail}" for i in range(int(first), int(last) + 1)]
        absent = [p for p in paths if not os.path.isfile(p)]
        if absent and len(absent) < len(paths):
            names = ", ".join(os.path.basename(p) for p in absent[:5])
            more = f" and {len(absent) - 5} more" if len(absent) > 5 else ""
            if missing == "error":
                raise DataError(
                    f"{len(absent)} of the {len(paths)} tar shards of {pattern!r} are missing "
                    f"({names}{more}); restore them, or go on without them, counted: "
                    "--config.data.web.missing_shards=count (training), --missing_shards count "
                    "(vlmjax.data.prepare)")
            log.warning("%d of the %d tar shards of %r are missing (%s%s): reading without them, "
                        "each counted in data/missing_shards when its turn comes",
                        len(absent), len(paths), pattern, names, more)
        elif absent:
            paths = []
    else:
        paths = sorted(glob.glob(pattern))
    if not paths:
        raise DataError(f"no tar shards match {pattern!r}; give a directory of .tar files, a glob "
                        "(dir/*.tar) or a brace range (dir/{00000..00099}.tar)")
    return paths
