"""One image-text sample as bytes in an array_record shard: encoded image, raw captions, metadata.

A record is `MAGIC | u32 n | n bytes of metadata JSON | u32 count | (u32 len | caption bytes)* |
image bytes`. Captions stay raw bytes (their UTF-8 is checked where they are used, so a bad
caption is counted like a bad image), the image stays encoded (decoded in the loader's workers).
"""

import json
import os
import struct

from vlmjax.errors import DataError

MAGIC = b"VLIT1"
SHARD_SUFFIX = ".array_record"
_U32 = struct.Struct("<I")


def encode_record(key: str, image: bytes, captions: list[bytes], meta: dict | None = None) -> bytes:
    """The record bytes of one sample (`meta`: any JSON-able dict, e.g. url, width, height)."""
    header = json.dumps({"key": key, **(meta or {})}, sort_keys=True).encode()
    parts = [MAGIC, _U32.pack(len(header)), header, _U32.pack(len(captions))]
    for caption in captions:
        parts += [_U32.pack(len(caption)), caption]
    parts.append(image)
    return b"".join(parts)


def decode_record(record: bytes) -> dict:
    """{"key", "image" (encoded bytes), "captions" (list of raw bytes), "meta" (dict)}."""
    if record[:len(MAGIC)] != MAGIC:
        raise DataError(f"not an image-text record (starts {record[:8]!r}); the shard was not "
                        "written by `python -m vlmjax.data.prepare`")
    pos = len(MAGIC)
    (n,) = _U32.unpack_from(record, pos)
    meta = json.loads(record[pos + 4: pos + 4 + n])
    pos += 4 + n
    (count,) = _U32.unpack_from(record, pos)
    pos += 4
    captions = []
    for _ in range(count):
        (length,) = _U32.unpack_from(record, pos)
        captions.append(bytes(record[pos + 4: pos + 4 + length]))
        pos += 4 + length
    return {"key": meta.pop("key"), "image": bytes(record[pos:]), "captions": captions,
            "meta": meta}


def write_shard(path: str, records: list[bytes]) -> None:
    """Writes records into an array_record file atomically (a temporary name, then a rename)."""
    from array_record.python.array_record_module import ArrayRecordWriter

    partial = path + ".partial"
    writer = ArrayRecordWriter(partial, "group_size:1")  # group_size 1: cheap random reads
    for record in records:
        writer.write(record)
    writer.close()
    os.replace(partial, path)


def shard_paths(directory: str) -> list[str]:
    """The prepared shards of a directory in name order, or a DataError saying how to make them."""
    if not os.path.isdir(directory):
        raise DataError(f"prepared data directory {directory} does not exist; build it with "
                        "`python -m vlmjax.data.prepare --output_dir DIR ...`")
    paths = sorted(os.path.join(directory, f) for f in os.listdir(directory)
                   if f.endswith(SHARD_SUFFIX))
    if not paths:
        raise DataError(f"{directory} holds no *{SHARD_SUFFIX} shards; build them with "
                        "`python -m vlmjax.data.prepare --output_dir DIR ...`")
    return paths
