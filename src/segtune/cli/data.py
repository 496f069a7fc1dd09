"""``segtune data``: data set utilities: download, check (the data doctor), show, convert."""

from __future__ import annotations

import argparse
from typing import Any

from segtune.cli.options import add_section_flags, section_flags
from segtune.config import DataConfig, build_config
from segtune.data.download import SOURCES, download_dataset

#: DataConfig fields that describe how to read a data set (the rest are about splits and loading).
_SKIP = ("path", "val_path", "test_path", "test_size", "test_max", "split", "split_seed", "workers", "aspect_ratio_group_factor")


def add_parser(sub: Any) -> None:
    p = sub.add_parser("data", help="data set utilities: download, check, show, convert")
    data_sub = p.add_subparsers(dest="data_command", metavar="ACTION", required=True)
    d = data_sub.add_parser("download", help="download and unpack a public data set",
                            description="Download a public data set and unpack it (needs internet).")
    d.add_argument("name", choices=sorted(SOURCES), help="data set name")
    d.add_argument("--dest", default="data", help="folder to unpack into (default: data)")
    d.add_argument("--url", help="download from this address instead of the official one (a mirror)")
    d.set_defaults(run=run_download)

    c = data_sub.add_parser("check", help="report on a data set; exit 1 if it has errors",
                            description="The data doctor: read every image and annotation, print counts, "
                            "the class histogram and every defect found; exit non-zero on errors.")
    c.add_argument("path", help="data set folder or annotation file (any supported format)")
    add_section_flags(c, "data", skip=_SKIP)
    c.set_defaults(run=run_check)

    s = data_sub.add_parser("show", help="draw a grid of images with their ground truth",
                            description="Draw a grid of images with their ground-truth masks, boxes and labels.")
    s.add_argument("path", help="data set folder or annotation file (any supported format)")
    s.add_argument("--out", required=True, help="PNG file to write")
    s.add_argument("--count", type=int, default=16, help="how many images (default: 16)")
    s.add_argument("--columns", type=int, default=4, help="images per row (default: 4)")
    s.add_argument("--seed", type=int, default=0, help="which images: a seeded random choice; -1 = the first ones")
    add_section_flags(s, "data", skip=_SKIP)
    s.set_defaults(run=run_show)

    v = data_sub.add_parser("convert", help="write a data set as COCO instances JSON",
                            description="Convert a data set in any supported format to COCO instances JSON "
                            "(masks as compressed RLE, file names relative to the output file).")
    v.add_argument("path", help="data set folder or annotation file (any supported format)")
    v.add_argument("--to", choices=["coco"], default="coco", help="output format (default: coco)")
    v.add_argument("out", help="output JSON file")
    add_section_flags(v, "data", skip=_SKIP)
    v.set_defaults(run=run_convert)


def data_config(args: argparse.Namespace) -> DataConfig:
    """The data section the flags describe, validated like ``segtune train``'s."""
    flags = section_flags(args, "data")
    flags["data.path"] = args.path
    return build_config(("command line", flags)).data


def run_download(args: argparse.Namespace) -> int:
    folder = download_dataset(args.name, args.dest, url=args.url)
    print(f"{args.name} is in {folder}; train on it with: segtune train --data {folder}")
    return 0


def run_check(args: argparse.Namespace) -> int:
    from segtune.data.check import check_dataset

    report = check_dataset(data_config(args))
    print(report.format_text())
    return 0 if report.ok else 1


def run_show(args: argparse.Namespace) -> int:
    from segtune.data.show import save_grid

    path = save_grid(data_config(args), args.out, count=args.count, columns=args.columns, seed=args.seed)
    print(f"wrote {path}")
    return 0


def run_convert(args: argparse.Namespace) -> int:
    from segtune.data.convert import convert_to_coco

    summary = convert_to_coco(data_config(args), args.out)
    print(f"wrote {args.out}: {summary['images']} images, {summary['annotations']} annotations, "
          f"{summary['categories']} categories")
    return 0
