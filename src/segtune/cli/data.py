"""``segtune data``: data set utilities (download)."""

from __future__ import annotations

import argparse
from typing import Any

from segtune.data.download import SOURCES, download_dataset


def add_parser(sub: Any) -> None:
    p = sub.add_parser("data", help="data set utilities")
    data_sub = p.add_subparsers(dest="data_command", metavar="ACTION", required=True)
    d = data_sub.add_parser("download", help="download and unpack a public data set",
                            description="Download a public data set and unpack it (needs internet).")
    d.add_argument("name", choices=sorted(SOURCES), help="data set name")
    d.add_argument("--dest", default="data", help="folder to unpack into (default: data)")
    d.add_argument("--url", help="download from this address instead of the official one (a mirror)")
    d.set_defaults(run=run_download)


def run_download(args: argparse.Namespace) -> int:
    folder = download_dataset(args.name, args.dest, url=args.url)
    print(f"{args.name} is in {folder}; train on it with: segtune train --data {folder}")
    return 0
