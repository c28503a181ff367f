"""Converts image-text data into array_record shards for `prepared:DIR` training sources.

    python -m vlmjax.data.prepare --output_dir OUT (--tar 'dir/{00000..00099}.tar' |
        --csv pairs.csv | --jsonl pairs.jsonl | --tfds coco_captions) [--num_workers 8]

- webdataset tars: one output shard per tar (image: jpg/jpeg/png/webp, caption: txt, metadata:
  json). CSV / JSONL: one row per pair, columns `--image_column` (a path, relative to the file's
  directory) and `--caption_column`. TFDS: a prepared dataset read without TensorFlow
  (`--tfds_image_key`, `--tfds_caption_key`, '/' for nested features; a list of captions is
  kept whole and the loader draws one per epoch). Tabular and TFDS inputs are cut into shards of
  `--shard_size` pairs.
- Images stay encoded; each is checked (header size limits; a full decode unless
  --no-decode_check) and captions must be non-empty UTF-8. Rejected samples are counted by reason
  (the loader's reasons) in OUT/prepare_report.json and the printed table.
- Every input sample is accounted for: a tar cut short or corrupt (no end-of-archive marker
  included) counts the samples it lost under damaged_tar, and a shard missing from a brace range
  (an error unless --missing_shards count) under missing_tar, exactly when the shard's sample
  count is known (img2dataset's `<shard>_stats.json`); shards whose loss is unknown are listed.
- Shards are written in `--num_workers` processes, each atomically, then marked done
  (`<shard>.done.json`). Re-running the same command after an interruption skips done shards and
  produces the same output.
"""

import argparse
import concurrent.futures
import csv
import dataclasses
import io
import json
import logging
import multiprocessing
import os
import sys
from collections.abc import Iterator

from PIL import Image

from vlmjax.data.image_text_records import SHARD_SUFFIX, encode_record, write_shard
from vlmjax.data.image_text_sources import shard_loss_counts
from vlmjax.data.image_text_transform import SHARD_COUNTS, SKIP_REASONS, ImageTextTransform
from vlmjax.data.webdataset_tar import (
    IMAGE_EXTENSIONS,
    MISSING_SHARDS,
    expand_shards,
    iter_tar_samples,
    shard_sample_count,
)
from vlmjax.errors import DataError, VlmjaxError

log = logging.getLogger(__name__)

SPEC_FILE, REPORT_FILE = "prepare_spec.json", "prepare_report.json"


@dataclasses.dataclass(frozen=True)
class ShardTask:
    """One output shard: which input it reads (a tar, rows of a table, a TFDS slice)."""

    output: str
    kind: str  # tar | table | tfds
    source: str  # tar path, table path, or TFDS name
    start: int = 0
    stop: int = 0
    options: tuple = ()  # (key, value) pairs: columns, TFDS split/keys, limits
    rows: tuple = ()  # table inputs: the (image path, caption) rows of this shard

    def spec(self) -> dict:
        """What identifies the task across runs (not the rows themselves)."""
        return {"output": self.output, "kind": self.kind, "source": self.source,
                "start": self.start, "stop": self.stop, "options": [list(o) for o in self.options]}

    def option(self, key: str) -> str:
        return dict(self.options)[key]


def _read_table(path: str, image_column: str, caption_column: str) -> list[tuple[str, bytes]]:
    """(image path, caption bytes) rows of a CSV (any delimiter csv.Sniffer finds) or JSONL file."""
    rows = []
    with open(path, newline="", encoding="utf-8", errors="surrogateescape") as f:
        if path.endswith(".jsonl"):
            records = (json.loads(line) for line in f if line.strip())
        else:
            sample = f.read(65536)
            f.seek(0)
            records = csv.DictReader(f, dialect=csv.Sniffer().sniff(sample, delimiters=",\t;|"))
        for record in records:
            if image_column not in record or caption_column not in record:
                raise DataError(f"{path} has no column {image_column!r} or {caption_column!r} "
                                f"(it has {', '.join(record)}); set --image_column/--caption_column")
            caption = record[caption_column]
            rows.append((record[image_column], str(caption or "").encode("utf-8", "surrogateescape")))
    return rows


def _tfds_source(task: ShardTask):
    import tensorflow_datasets as tfds

    image_key = task.option("tfds_image_key")
    decoders = {image_key.split("/")[0]: tfds.decode.SkipDecoding()}
    return tfds.data_source(task.source, split=task.option("tfds_split"), download=False,
                            data_dir=task.option("tfds_data_dir") or None, decoders=decoders)


def _nested(example: dict, key: str):
    for part in key.split("/"):
        example = example[part]
    return example


def _as_bytes_list(value) -> list[bytes]:
    values = value.tolist() if hasattr(value, "tolist") else value
    values = values if isinstance(values, (list, tuple)) else [values]
    return [v if isinstance(v, bytes) else str(v).encode("utf-8", "surrogateescape") for v in values]


def _task_samples(task: ShardTask) -> Iterator[tuple[str, bytes | None, list[bytes], dict]]:
    """(key, image bytes or None, captions, metadata) of every input sample of a task; a
    damaged or missing tar ends with its end marker as metadata `{"__damage__": marker}`."""
    if task.kind == "tar":
        for fields in iter_tar_samples(task.source):
            if "__error__" in fields:
                yield fields["__key__"], None, [], {"__damage__": fields}
                continue
            image = next((fields[e] for e in IMAGE_EXTENSIONS if e in fields), None)
            meta = {}
            if "json" in fields:
                try:
                    meta = json.loads(fields["json"])
                except ValueError:
                    log.warning("%s: %s.json is not JSON; metadata dropped", task.source, fields["__key__"])
            yield fields["__key__"], image, [fields["txt"]] if "txt" in fields else [], meta
    elif task.kind == "table":
        root = os.path.dirname(os.path.abspath(task.source))
        for i, (image_path, caption) in enumerate(task.rows, start=task.start):
            try:
                with open(os.path.join(root, image_path), "rb") as f:
                    image = f.read()
            except OSError:
                image = None
            yield f"{i:09d}", image, [caption], {"path": image_path}
    else:
        source = _tfds_source(task)
        for i in range(task.start, min(task.stop, len(source))):
            example = source[i]
            image = _nested(example, task.option("tfds_image_key"))
            captions = _as_bytes_list(_nested(example, task.option("tfds_caption_key")))
            yield f"{i:09d}", image, captions, {}


def check_sample(image: bytes | None, captions: list[bytes], checker: ImageTextTransform,
                 decode: bool) -> tuple[str | None, list[bytes], dict]:
    """(reason to skip or None, the usable stripped captions, image metadata)."""
    if image is None:
        return "missing_image", [], {}
    good, reason = [], "missing_caption"
    for caption in captions:
        try:
            text = caption.decode("utf-8").strip()
        except UnicodeDecodeError:
            reason = "caption_not_utf8"
            continue
        if text:
            good.append(text.encode("utf-8"))
        else:
            reason = "empty_caption"
    if not good:
        return reason, [], {}
    if decode:
        decoded = checker.decode(image)
        if isinstance(decoded, str):
            return decoded, [], {}
        return None, good, {"width": decoded.width, "height": decoded.height}
    try:
        with Image.open(io.BytesIO(image)) as pil:
            w, h = pil.size
    except Exception:  # noqa: BLE001 - untrusted bytes
        return "undecodable_image", [], {}
    if checker.absurd_size(w, h):
        return "absurd_size", [], {}
    return None, good, {"width": w, "height": h}


def run_task(task: ShardTask) -> dict:
    """Writes one shard and its done marker; returns the marker's content."""
    checker = ImageTextTransform(size=1, min_size=int(task.option("min_size")),
                                 max_size=int(task.option("max_size")),
                                 max_aspect=float(task.option("max_aspect")))
    decode = task.option("decode_check") == "1"
    records, skipped = [], dict.fromkeys(SKIP_REASONS, 0)
    shards, damage = dict.fromkeys(SHARD_COUNTS, 0), None
    for key, image, captions, meta in _task_samples(task):
        if "__damage__" in meta:
            marker = meta["__damage__"]
            for name, n in shard_loss_counts(marker, task.source).items():
                (skipped if name in skipped else shards)[name] += n
            damage = {"source": task.source, "error": marker["__error__"],
                      "missing": marker["__missing__"], "samples_read": marker["__read__"],
                      "expected": shard_sample_count(task.source)}
            continue
        reason, captions, image_meta = check_sample(image, captions, checker, decode)
        if reason is not None:
            skipped[reason] += 1
            log.info("skipping %s (%s): %s", key, task.source, reason)
            continue
        records.append(encode_record(key, image, captions, {**meta, **image_meta}))
    write_shard(task.output, records)
    done = {"records": len(records), "skipped": skipped, "shards": shards, "damage": damage,
            "source": task.source, "start": task.start, "stop": task.stop}
    with open(task.output + ".done.json.partial", "w") as f:
        json.dump(done, f)
    os.replace(task.output + ".done.json.partial", task.output + ".done.json")
    return done


def plan_tasks(args: argparse.Namespace) -> list[ShardTask]:
    """The output shards of this command: the same list every time it runs."""
    options = tuple(sorted({
        "image_column": args.image_column, "caption_column": args.caption_column,
        "tfds_split": args.tfds_split, "tfds_data_dir": args.tfds_data_dir,
        "tfds_image_key": args.tfds_image_key, "tfds_caption_key": args.tfds_caption_key,
        "min_size": str(args.min_size), "max_size": str(args.max_size),
        "max_aspect": str(args.max_aspect), "decode_check": "1" if args.decode_check else "0",
    }.items()))
    inputs: list[tuple[str, str, int, int]] = []
    rows: list = []
    if args.tar:
        inputs = [("tar", p, 0, 0) for p in expand_shards(args.tar, args.missing_shards)]
    elif args.csv or args.jsonl:
        path = args.csv or args.jsonl
        if not os.path.isfile(path):
            raise DataError(f"{path} does not exist")
        rows = _read_table(path, args.image_column, args.caption_column)
        n = len(rows)
        inputs = [("table", path, s, min(s + args.shard_size, n)) for s in range(0, n, args.shard_size)]
    else:
        probe = ShardTask("", "tfds", args.tfds, options=options)
        try:
            n = len(_tfds_source(probe))
        except Exception as e:  # tfds reports a missing dataset as several unrelated errors
            raise DataError(f"cannot open TFDS {args.tfds} split {args.tfds_split} in "
                            f"{args.tfds_data_dir or 'the default data_dir'} (prepare it first, as "
                            f"array_record): {type(e).__name__}: {str(e)[:200]}") from e
        inputs = [("tfds", args.tfds, s, min(s + args.shard_size, n)) for s in range(0, n, args.shard_size)]
    total = len(inputs)
    return [ShardTask(os.path.join(args.output_dir, f"{args.name}-{i:05d}-of-{total:05d}{SHARD_SUFFIX}"),
                      kind, source, start, stop, options,
                      tuple(rows[start:stop]) if kind == "table" else ())
            for i, (kind, source, start, stop) in enumerate(inputs)]


def prepare(args: argparse.Namespace) -> dict:
    """Writes every shard not yet done (in parallel), then the report; returns the report."""
    os.makedirs(args.output_dir, exist_ok=True)
    tasks = plan_tasks(args)
    spec = {"tasks": [t.spec() for t in tasks]}
    spec_path = os.path.join(args.output_dir, SPEC_FILE)
    if os.path.isfile(spec_path):
        with open(spec_path) as f:
            if json.load(f) != spec:
                raise DataError(f"{args.output_dir} holds shards of a different preparation "
                                f"({SPEC_FILE} differs); use a new --output_dir or delete it")
    else:
        with open(spec_path, "w") as f:
            json.dump(spec, f)
    todo = [t for t in tasks if not _is_done(t)]
    log.info("%d shards, %d already done, %d to write with %d workers", len(tasks),
             len(tasks) - len(todo), len(todo), args.num_workers)
    if args.num_workers <= 1:
        for task in todo:
            run_task(task)
    else:
        context = multiprocessing.get_context("spawn")
        with concurrent.futures.ProcessPoolExecutor(args.num_workers, mp_context=context) as pool:
            for task, done in zip(todo, pool.map(run_task, todo), strict=True):
                log.info("wrote %s: %d records", os.path.basename(task.output), done["records"])
    report = {"shards": len(tasks), "written_now": len(todo), "records": 0,
              "skipped": dict.fromkeys(SKIP_REASONS, 0), "input_samples": 0,
              "damaged_or_missing": dict.fromkeys(SHARD_COUNTS, 0), "damage": []}
    for task in tasks:
        with open(task.output + ".done.json") as f:
            done = json.load(f)
        report["records"] += done["records"]
        for reason, n in done["skipped"].items():
            report["skipped"][reason] += n
        for name, n in done.get("shards", {}).items():
            report["damaged_or_missing"][name] += n
        if done.get("damage"):
            report["damage"].append(done["damage"])
    # Every input sample is a record or a skip; exactly the input's size unless some damaged or
    # missing shard's sample count is unknown (damaged_or_missing.unknown_loss_shards).
    report["input_samples"] = report["records"] + sum(report["skipped"].values())
    with open(os.path.join(args.output_dir, REPORT_FILE), "w") as f:
        json.dump(report, f, indent=2)
    return report


def _is_done(task: ShardTask) -> bool:
    """Its done marker exists, and it is not that of a missing tar that has since appeared."""
    try:
        with open(task.output + ".done.json") as f:
            done = json.load(f)
    except FileNotFoundError:
        return False
    missing = (done.get("damage") or {}).get("missing", False)
    return not (missing and os.path.isfile(task.source))


def parse_args(argv: list[str]) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--output_dir", required=True)
    source = p.add_mutually_exclusive_group(required=True)
    source.add_argument("--tar", help="webdataset tars: directory, glob or brace range")
    source.add_argument("--csv", help="CSV/TSV of image path + caption")
    source.add_argument("--jsonl", help="JSON lines of image path + caption")
    source.add_argument("--tfds", help="name of a prepared (array_record) TFDS dataset")
    p.add_argument("--name", default="data", help="shard file name prefix")
    p.add_argument("--missing_shards", choices=MISSING_SHARDS, default="error",
                   help="tars of a --tar brace range that do not exist: stop (error) or go on "
                        "without them, counted in the report (count)")
    p.add_argument("--image_column", default="image")
    p.add_argument("--caption_column", default="caption")
    p.add_argument("--tfds_split", default="train")
    p.add_argument("--tfds_data_dir", default="")
    p.add_argument("--tfds_image_key", default="image")
    p.add_argument("--tfds_caption_key", default="captions/text")
    p.add_argument("--shard_size", type=int, default=10_000, help="pairs per shard (CSV/JSONL/TFDS)")
    p.add_argument("--num_workers", type=int, default=os.cpu_count() or 1)
    p.add_argument("--min_size", type=int, default=8, help="shortest accepted image side")
    p.add_argument("--max_size", type=int, default=16384, help="longest accepted image side")
    p.add_argument("--max_aspect", type=float, default=20.0, help="largest accepted side ratio")
    p.add_argument("--decode_check", action=argparse.BooleanOptionalAction, default=True,
                   help="decode every image fully (catches truncation); --no-decode_check reads headers only")
    args = p.parse_args(argv)
    if args.shard_size <= 0:
        p.error("--shard_size must be positive")
    return args


def main(argv: list[str] | None = None) -> int:
    logging.basicConfig(level=logging.INFO, format="%(levelname)s %(message)s")
    try:
        report = prepare(parse_args(sys.argv[1:] if argv is None else argv))
    except VlmjaxError as e:
        print(f"error: {e}", file=sys.stderr)
        return 2
    print(f"{report['records']} records in {report['shards']} shards "
          f"({report['written_now']} written now)")
    print("| skipped reason | samples |\n| --- | --- |")
    for reason, n in report["skipped"].items():
        print(f"| {reason} | {n} |")
    shards = report["damaged_or_missing"]
    if report["damage"]:
        print(f"WARNING: {shards['damaged_shards']} damaged and {shards['missing_shards']} missing "
              f"tar shards; the samples they lost are counted above as damaged_tar / missing_tar"
              + (f", except in {shards['unknown_loss_shards']} whose sample count is unknown "
                 "(no <shard>_stats.json)" if shards["unknown_loss_shards"] else ""), file=sys.stderr)
        for damage in report["damage"]:
            expected = "unknown" if damage["expected"] is None else damage["expected"]
            print(f"  {damage['source']}: {damage['error']} ({damage['samples_read']} complete "
                  f"samples of {expected})", file=sys.stderr)
    return 0


if __name__ == "__main__":
    sys.exit(main())
