"""What our manual-download TFDS builders share: building from a folder, and their small CLI."""

import argparse
import os
from collections.abc import Callable, Iterable
from typing import Any

import tensorflow_datasets as tfds


def build_from_manual(builder: Any, manual_dir: str) -> str:
    """Writes `builder`'s array_record files from the downloads in `manual_dir`; returns where."""
    builder.download_and_prepare(download_config=tfds.download.DownloadConfig(manual_dir=manual_dir))
    return os.fspath(builder.data_dir)


def prepare_cli(doc: str, option: str, choices: Iterable[str],
                prepare: Callable[[str, str, str], str]) -> None:
    """`--<option> NAME --manual_dir DIR [--data_dir D]`: prepares NAME, prints where it went."""
    parser = argparse.ArgumentParser(description=doc,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument(f"--{option}", choices=sorted(choices), required=True)
    parser.add_argument("--manual_dir", required=True, help="the downloaded files (see above)")
    parser.add_argument("--data_dir", default="", help="TFDS data_dir (default: TFDS's)")
    args = parser.parse_args()
    print(prepare(getattr(args, option), args.manual_dir, args.data_dir))
