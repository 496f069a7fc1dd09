"""Owns turning config dataclass fields into command-line flags and back, for every subcommand."""

from __future__ import annotations

import argparse
import dataclasses
from collections.abc import Iterable
from typing import Any

from segtune.config import SECTIONS, field_types, parse_value
from segtune.models.precision import INFERENCE_AMP


def flag_of(f: dataclasses.Field) -> str:
    return f.metadata.get("flag") or "--" + f.name.replace("_", "-")


def _is_plain_str(tp: Any) -> bool:
    return tp is str or (getattr(tp, "__args__", None) or ()) == (str, type(None))


def add_section_flags(parser: argparse.ArgumentParser, section: str, *, skip: Iterable[str] = ()) -> None:
    """One flag per field of config ``section`` (help and choices from the field), stored as ``section.key``."""
    group = parser.add_argument_group(f"{section} settings")
    for f in dataclasses.fields(SECTIONS[section]):
        if f.name in skip:
            continue
        default = f.default if f.default is not dataclasses.MISSING else f.default_factory()  # type: ignore[misc]
        if f.metadata.get("switch"):
            group.add_argument(flag_of(f), dest=f"{section}.{f.name}", default=argparse.SUPPRESS, action="store_const",
                               const="true", help=f.metadata.get("help", ""))
            continue
        group.add_argument(
            flag_of(f), dest=f"{section}.{f.name}", default=argparse.SUPPRESS, metavar=f.name.upper(),
            help=f"{f.metadata.get('help', '')} (default: {default})", choices=f.metadata.get("choices"),
        )


def section_flags(args: argparse.Namespace, section: str) -> dict[str, Any]:
    """The ``section.key: value`` pairs the user gave as flags, values parsed as their fields expect."""
    hints = field_types(SECTIONS[section])
    values = {}
    for f in dataclasses.fields(SECTIONS[section]):
        key = f"{section}.{f.name}"
        if key in vars(args):
            raw = getattr(args, key)
            values[key] = raw if _is_plain_str(hints[f.name]) else parse_value(raw)
    return values


def add_amp_argument(parser: argparse.ArgumentParser) -> None:
    """``--amp`` of the commands that run a checkpoint's model (predict, evaluate)."""
    parser.add_argument("--amp", choices=INFERENCE_AMP, default="auto",
                        help="number format of a checkpoint's model: none (float32), bf16 (autocast with channels-last "
                        "weights: about 3x on a ResNet-50 where the CPU runs bfloat16 natively, slower on a small "
                        "model, see docs/export.md), auto (whichever of the two this machine runs the model faster "
                        "in, measured once and remembered in the user's cache) (default: auto)")
