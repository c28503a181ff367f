"""Image-text sources behind one interface: prepared array_record shards and streamed tar shards.

Each source is an infinite grain `IterDataset` of samples `{"__key__", "image" (encoded),
"captions" (raw bytes), "__position__"}` for one host (jax.process_index of process_count):
- prepared shards: grain random access, a global shuffle reshuffled every epoch, exact resume;
  host p takes positions p, p + n, ... of the shuffled stream (disjoint and complete).
- tar shards: the shard list is shuffled every epoch and dealt to hosts (and, under
  `mp_prefetch`, to workers) round-robin; `cycle_length` shards are read at once, interleaved.
  The iterator state is (shard, samples read), so resume is exact at sample granularity. A
  damaged or missing shard becomes one skip marker carrying what it lost (`shard_loss_counts`).
"""

import dataclasses
import logging
from collections.abc import Sequence

import grain
from grain.experimental import InterleaveIterDataset

from vlmjax.data.image_text_records import decode_record, shard_paths
from vlmjax.data.webdataset_tar import (
    IMAGE_EXTENSIONS,
    MISSING_SHARDS,
    expand_shards,
    iter_tar_samples,
    shard_sample_count,
)
from vlmjax.errors import ConfigError, DataError

log = logging.getLogger(__name__)

SOURCE_KINDS = ("prepared", "tar")


@dataclasses.dataclass(frozen=True)
class SourceSpec:
    """One entry of data.web.sources: `prepared:DIR` or `tar:DIR|GLOB|BRACE-RANGE`."""

    kind: str
    path: str

    @classmethod
    def parse(cls, entry: str) -> "SourceSpec":
        kind, sep, path = entry.partition(":")
        if not sep or kind not in SOURCE_KINDS or not path:
            raise DataError(f"data source {entry!r} must be 'prepared:DIR' (shards written by "
                            "`python -m vlmjax.data.prepare`) or 'tar:PATTERN' (webdataset tars)")
        return cls(kind, path)

    def check(self, missing_shards: str = "error") -> None:
        """Raises DataError (with the fix) when the source has nothing to read, or (unless
        `missing_shards="count"`) when shards of its brace range are missing."""
        if self.kind == "prepared":
            shard_paths(self.path)
        else:
            expand_shards(self.path, missing_shards)


def check_missing_shards(value: str) -> None:
    """Raises ConfigError unless `value` is a valid data.web.missing_shards."""
    if value not in MISSING_SHARDS:
        raise ConfigError(f"config.data.web.missing_shards is {value!r}; choose 'error' (a tar "
                          "shard missing from a brace range stops the run) or 'count' (train "
                          "without it, counted in data/missing_shards)")


@dataclasses.dataclass(frozen=True)
class DecodeRecord(grain.transforms.MapWithIndex):
    """Prepared record bytes -> sample, tagged with its position in the global shuffled stream."""

    def map_with_index(self, index: int, record: bytes) -> dict:
        sample = decode_record(record)
        return {"__key__": sample["key"], "image": sample["image"], "captions": sample["captions"],
                "__position__": [index]}


def prepared_source(directory: str, seed: int, process_index: int = 0,
                    process_count: int = 1) -> grain.MapDataset:
    """This host's share of the globally shuffled, endlessly repeated records of `directory`."""
    source = grain.sources.ArrayRecordDataSource(shard_paths(directory))
    ds = grain.MapDataset.source(source).shuffle(seed=seed).repeat()
    return ds.map_with_index(DecodeRecord())[process_index::process_count]


def shard_loss_counts(marker: dict, path: str) -> dict[str, int]:
    """What the end marker of a damaged or missing shard (see `iter_tar_samples`) adds to the
    skip counts: the shard under damaged_shards / missing_shards, and its lost samples under
    damaged_tar / missing_tar: exactly when the shard's sample count is known, else those known
    lost (the sample cut short) plus the shard under unknown_loss_shards."""
    missing = bool(marker["__missing__"])
    reason = "missing_tar" if missing else "damaged_tar"
    counts = {"missing_shards" if missing else "damaged_shards": 1}
    expected, read = shard_sample_count(path), int(marker["__read__"])
    if expected is not None and expected >= read + int(marker["__dropped__"]):
        counts[reason] = expected - read
    else:
        counts[reason] = int(marker["__dropped__"])
        counts["unknown_loss_shards"] = 1
    return counts


def tar_fields_to_sample(fields: dict, position: list[int], path: str = "") -> dict:
    """A webdataset sample (`{"__key__", "jpg": ..., "txt": ...}`) in the common sample form;
    the end marker of a damaged or missing shard `path` becomes a skip carrying its counts."""
    key = fields["__key__"]
    if "__error__" in fields:
        counts = shard_loss_counts(fields, path)
        reason = "missing_tar" if fields["__missing__"] else "damaged_tar"
        return {"__skip__": reason, "__key__": key, "__counts__": counts}
    image = next((fields[e] for e in IMAGE_EXTENSIONS if e in fields), None)
    if image is None:
        return {"__skip__": "missing_image", "__key__": key}
    if "txt" not in fields:
        return {"__skip__": "missing_caption", "__key__": key}
    return {"__key__": key, "image": image, "captions": [fields["txt"]], "__position__": position}


class _TarShardIterator(grain.DatasetIterator):
    """Samples of one tar; its state is the number of samples read, so resume re-opens and skips."""

    def __init__(self, stream_index: int, path: str):
        super().__init__()
        self._stream_index, self._path, self._offset = stream_index, path, 0
        self._samples = iter_tar_samples(path)

    def __next__(self) -> dict:
        fields = next(self._samples)
        sample = tar_fields_to_sample(fields, [self._stream_index, self._offset], self._path)
        self._offset += 1
        return sample

    def get_state(self) -> dict:
        return {"offset": self._offset}

    def set_state(self, state: dict) -> None:
        self._offset = int(state["offset"])
        self._samples = iter_tar_samples(self._path, skip=self._offset)


class TarShard(grain.IterDataset):
    """One tar shard as an IterDataset; `stream_index` is its slot in the shuffled shard stream."""

    def __init__(self, stream_index: int, path: str):
        super().__init__()
        self.stream_index, self.path = stream_index, path

    def __iter__(self) -> grain.DatasetIterator:
        return _TarShardIterator(self.stream_index, self.path)


@dataclasses.dataclass(frozen=True)
class OpenShard(grain.transforms.MapWithIndex):
    def map_with_index(self, index: int, path: str) -> TarShard:
        return TarShard(index, path)


def tar_source(pattern: str, seed: int, process_index: int = 0, process_count: int = 1,
               cycle_length: int = 4, missing_shards: str = "error") -> grain.IterDataset:
    """This host's tar shards (reshuffled each epoch), `cycle_length` of them interleaved."""
    paths = expand_shards(pattern, missing_shards)
    shards = grain.MapDataset.source(paths).shuffle(seed=seed).repeat()
    shards = shards.map_with_index(OpenShard())[process_index::process_count]
    return InterleaveIterDataset(shards, cycle_length=cycle_length)


def open_sources(specs: Sequence[SourceSpec], seed: int, process_index: int, process_count: int,
                 cycle_length: int, missing_shards: str = "error") -> list[grain.IterDataset]:
    """Each source as this host's IterDataset of samples (seeded apart so they differ)."""
    out = []
    for i, spec in enumerate(specs):
        if spec.kind == "prepared":
            ds = prepared_source(spec.path, seed + 7919 * i, process_index, process_count)
            out.append(ds.to_iter_dataset())
        else:
            out.append(tar_source(spec.path, seed + 7919 * i, process_index, process_count,
                                  cycle_length, missing_shards))
    return out
