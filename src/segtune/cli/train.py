"""``segtune train``: flags are generated from the config dataclasses, so help and code cannot drift."""

from __future__ import annotations

import argparse
from typing import Any

from segtune.cli.options import add_section_flags, section_flags
from segtune.config import SECTIONS, parse_value
from segtune.configs import named_configs
from segtune.engine import configure, train
from segtune.errors import ConfigError
from segtune.run_files import CONFIG_FILE, LOG_FILE, METRICS_CSV, best_checkpoint


def add_parser(sub: Any) -> None:
    p = sub.add_parser(
        "train", help="train and evaluate every epoch",
        description="Train a model, evaluating COCO bbox/segm AP on the test split after every epoch. "
        "Defaults are the torchvision tutorial recipe (preset 'tutorial'); any value can be set by "
        "its flag, by a --config YAML file, or as section.key=value.",
    )
    p.add_argument("--config", help="YAML config file, e.g. a run's config.yaml to repeat it, or the name of a "
                   f"packaged config ({', '.join(named_configs())})")
    p.add_argument("overrides", nargs="*", metavar="section.key=value", help="more overrides, e.g. train.lr=0.01")
    p.add_argument("--resume", nargs="?", const="latest", dest="train.resume", default=argparse.SUPPRESS,
                   metavar="RUN", help="go on with an interrupted run exactly where it stopped: its folder or "
                   "weights/last.pt; alone: the newest run next to --out. Its config is used; flags given "
                   "here (e.g. --epochs) override it")
    for section in SECTIONS:
        add_section_flags(p, section, skip=("resume",) if section == "train" else ())
    p.set_defaults(run=run)


def user_layers(args: argparse.Namespace) -> list[tuple[str, dict[str, Any]]]:
    """The flags and ``section.key=value`` overrides, as :func:`segtune.engine.configure` layers."""
    layers = []
    flags = {k: v for section in SECTIONS for k, v in section_flags(args, section).items()}
    if flags:
        layers.append(("command line", flags))
    extra = {}
    for item in args.overrides:
        key, sep, value = item.partition("=")
        if not sep:
            raise ConfigError(f"override '{item}' must be written section.key=value")
        extra[key.strip()] = parse_value(value)
    if extra:
        layers.append(("command-line override", extra))
    return layers


def run(args: argparse.Namespace) -> int:
    cfg = configure(*user_layers(args), config=args.config)
    result = train(cfg)
    best = result.best_metrics
    segm = f", segm AP {best['segm']['AP']:.3f}" if "segm" in best else ""
    weights = best_checkpoint(result.run_dir)
    print(f"\nDone: best epoch {result.best_epoch}: bbox AP {best['bbox']['AP']:.3f}{segm}")
    print(f"Run folder: {result.run_dir}  (config {result.run_dir / CONFIG_FILE}, {METRICS_CSV}, {LOG_FILE})")
    print(f"Weights:    {weights}")
    print(f"Next:       segtune evaluate {weights}\n            segtune predict {weights} IMAGES... --out preds/")
    return 0
