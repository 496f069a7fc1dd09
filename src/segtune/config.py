"""Owns the run configuration: one typed tree of dataclasses, presets, YAML and dotted overrides.

Precedence, lowest first: the dataclass defaults (which are the torchvision tutorial recipe), the
preset, a YAML file, then command-line flags / ``section.key=value`` overrides. The resolved tree is
what a run saves as ``config.yaml`` and what ``segtune train --config`` reads back.
"""

from __future__ import annotations

import dataclasses
import difflib
import os
import types
import typing
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import yaml

from segtune.errors import ConfigError
from segtune.recipes import PRESETS, preset_layer  # noqa: F401  (the presets are part of the config's API)

CONFIG_VERSION = 1
#: Where the README's main job finds Penn-Fudan when neither --data nor SEGTUNE_DATA is given.
DEFAULT_DATA_PATH = "../shared/data/PennFudanPed"


def _opt(default: Any, help: str, *, flag: str | None = None, choices: list[str] | None = None,
         switch: bool = False) -> Any:
    """A config field with its help; ``switch``: a boolean whose flag takes no value (given = true)."""
    meta = {"help": help, "flag": flag, "choices": choices, "switch": switch}
    if isinstance(default, list):
        return field(default_factory=lambda: list(default), metadata=meta)
    return field(default=default, metadata=meta)


#: What ``model.adapt_to_data`` may fit to the data (segtune.engine.adapt), and the settings of each.
ADAPT_GROUPS: dict[str, tuple[str, ...]] = {
    "input_size": ("model.min_size", "model.max_size"),
    "anchors": ("model.anchor_sizes", "model.aspect_ratios", "model.fpn_levels"),
    "detections": ("model.box_detections_per_img", "model.rpn_pre_nms_top_n_test", "model.rpn_post_nms_top_n_test"),
}


@dataclass(frozen=True)
class DataConfig:
    path: str | None = _opt(
        None, f"data set folder (default: $SEGTUNE_DATA, else {DEFAULT_DATA_PATH})", flag="--data"
    )
    val_path: str | None = _opt(None, "a validation set of its own (any format, the same classes), evaluated every "
                                "epoch while all of --data trains", flag="--val-data")
    test_path: str | None = _opt(None, "a test set of its own (any format, the same classes), scored once with the "
                                 "best checkpoint after training (test_metrics.json)", flag="--test-data")
    format: str = _opt("auto", "data format: auto (detect) | masks | coco | yolo | labelme | instance-pngs (one "
                       "binary PNG per instance)", choices=["auto", "masks", "coco", "yolo", "labelme", "instance-pngs"])
    images_dir: str = _opt("auto", "mask folders: folder of images inside the data set (auto: PNGImages, images, "
                           "imgs, img or JPEGImages)")
    masks_dir: str = _opt("auto", "mask folders: folder of instance masks inside the data set (auto: PedMasks, masks, "
                          "labels, annotations, instances or SegmentationObject)")
    mask_suffix: str = _opt("auto", "mask folders: mask file name = image stem + this suffix (+ any image "
                            "extension); auto: whichever of _mask, none, _label, _instances, _masks, -mask pairs most")
    class_map: str | None = _opt(None, "mask folders: YAML/JSON file with 'classes' and 'values' (mask value -> class)")
    image_root: str | None = _opt(None, "COCO: folder that file_name paths are relative to (default: found next to the JSON)")
    allow_outside_root: bool = _opt(False, "read images an annotation names outside the data set's folder (an "
                                    "absolute or ../ path, a symlink pointing elsewhere); by default such an entry "
                                    "is an error: see docs/data-formats.md", switch=True)
    classes: list[str] = _opt([], "class names, comma-separated, for mask folders without a class map (default: "
                              "pedestrian for Penn-Fudan's PedMasks, else object; other formats name their classes)")
    aspect_ratio_group_factor: int = _opt(3, "batch images of similar aspect ratio: this many log-spaced "
                                          "bins per side of ratio 1, between 1/2 and 2 (-1: off)")
    min_box_size: float = _opt(2.0, "data check: warn about boxes narrower or lower than this many pixels")
    test_size: float = _opt(0.2, "test split when the data set has none of its own: a count of images, or a "
                            "fraction if below 1 (default: a fifth of the images, at most --test-max)")
    test_max: int | None = _opt(500, "most test images a fractional --test-size gives (none: no cap)")
    split: str = _opt("auto", "train/test split: auto (the data set's own, e.g. a YOLO YAML's train/val or "
                      "Roboflow's split folders, else random) | random (always draw one)", choices=["auto", "random"])
    split_seed: int = _opt(0, "seed of the random train/test split")
    check_cache: bool = _opt(True, "reuse the data check of a data set whose files are unchanged (kept in "
                             "a .segtune folder beside the data, else ~/.cache/segtune/checks)")
    workers: int | None = _opt(None, "data-loader worker processes (default: 0 on CPU, 4 on GPU)")
    cache: str = _opt("auto", "decoded-image cache for training: ram (decode each image once, shrunk to the size "
                      "the model uses, up to --cache-max-gb) | disk (files in ~/.cache/segtune/decoded, shared by "
                      "workers and runs) | none | auto (ram without loader workers, else none)", flag="--cache",
                      choices=["auto", "ram", "disk", "none"])
    cache_max_gb: float | None = _opt(None, "most memory the ram cache takes (default: a quarter of the memory "
                                      "available, at most 4)")


@dataclass(frozen=True)
class ModelConfig:
    name: str = _opt("maskrcnn_resnet50_fpn", "model architecture (segtune models lists them)", flag="--model")
    weights: str = _opt("DEFAULT", "whole-model weights: DEFAULT | COCO_V1 | other torchvision entry | none | path")
    weights_backbone: str = _opt("DEFAULT", "backbone-only weights when --weights is none: DEFAULT | IMAGENET1K_V1 | "
                                 "none | path")
    backbone: str | None = _opt(None, "custom backbone (torchvision classification model, e.g. mobilenet_v2, "
                                "resnet18) under the detector family of --model")
    fpn: bool = _opt(True, "custom backbone: put a feature pyramid on it")
    norm: str = _opt("auto", "backbone normalisation: auto (frozen BN when pretrained, else BN) | frozen_bn | bn | gn",
                     choices=["auto", "frozen_bn", "bn", "gn"])
    anchor_sizes: list[int] | None = _opt(None, "custom backbone: anchor sizes in pixels (one per FPN level, or all "
                                          "on the single map without FPN)")
    aspect_ratios: list[float] | None = _opt(None, "custom backbone: anchor aspect ratios (height / width)")
    roi_output_size: int = _opt(7, "custom backbone: RoIAlign output size of the box head")
    roi_sampling_ratio: int = _opt(2, "custom backbone: RoIAlign sampling ratio")
    fpn_channels: int = _opt(256, "custom backbone: channels of every feature-pyramid level")
    fpn_levels: int = _opt(4, "custom backbone: trunk stages feeding the pyramid, from the deep end (4: strides "
                           "4-32; 3: strides 8-32, for objects that are not small)")
    head_norm: str = _opt("none", "custom backbone: box/mask head normalisation: none | gn (GroupNorm, trains "
                          "from scratch)", choices=["none", "gn"])
    box_head_convs: int = _opt(0, "custom backbone: 3x3 convs in the box head before its FC layer (0: two FC "
                               "layers, torchvision's)")
    box_head_dim: int = _opt(1024, "custom backbone: width of the box head's FC layers")
    mask_head_channels: int = _opt(256, "custom backbone: width of the mask head's four convs")
    init_head_from_coco: str | None = _opt(None, "start the new head rows from COCO classes: 'person', or "
                                           "'pedestrian=person,bike=bicycle'")
    min_size: int = _opt(800, "shorter image side after the model's resize")
    max_size: int = _opt(1333, "longer image side cap after the model's resize")
    trainable_backbone_layers: int | None = _opt(None, "ResNet stages to train, 0-5 (default: 3 when pretrained, 5 otherwise)")
    rpn_pre_nms_top_n_train: int = _opt(2000, "RPN proposals kept before NMS, training")
    rpn_post_nms_top_n_train: int = _opt(2000, "RPN proposals kept after NMS, training")
    rpn_pre_nms_top_n_test: int = _opt(1000, "RPN proposals kept before NMS, inference")
    rpn_post_nms_top_n_test: int = _opt(1000, "RPN proposals kept after NMS, inference")
    box_batch_size_per_image: int = _opt(512, "RoIs sampled per image for the box/mask heads in training")
    box_detections_per_img: int = _opt(100, "most detections returned per image")
    mask_hidden: int = _opt(256, "hidden channels of the new mask predictor")
    adapt_to_data: list[str] = _opt([], "fit these settings to the training images after the data check, "
                                    "comma-separated: input_size (min/max size from the object sizes), anchors "
                                    "(custom backbone: anchor sizes and aspect ratios from the box shapes, the "
                                    "stride-4 level for small objects), detections (detections and proposals per "
                                    "image at inference from the instance counts), or none; a group any of whose "
                                    "settings you give yourself is left as you give it")


@dataclass(frozen=True)
class TrainConfig:
    preset: str = _opt("tutorial", "named recipe applied under your settings: tutorial | cpu-quick | cpu-scratch | "
                       "auto", choices=["tutorial", "cpu-quick", "cpu-scratch", "auto"])
    out: str = _opt("runs/train", "run folder (a new numbered one is made if it already holds a run)")
    device: str = _opt("auto", "auto | cpu | cuda | cuda:N")
    epochs: int = _opt(10, "training epochs")
    batch_size: int = _opt(2, "images per batch")
    optimizer: str = _opt("sgd", "sgd | adamw", choices=["sgd", "adamw"])
    lr: float = _opt(0.005, "learning rate (for --batch-size; see --lr-scale-with-batch)")
    lr_scale_with_batch: int | None = _opt(None, "linear scaling rule: --lr is for this total batch; the rate used "
                                           "is lr x (batch size x processes) / this")
    momentum: float = _opt(0.9, "SGD momentum")
    nesterov: bool = _opt(False, "SGD with Nesterov momentum")
    weight_decay: float = _opt(5e-4, "weight decay")
    no_decay_norm: bool = _opt(False, "no weight decay on normalisation layers and biases")
    schedule: str = _opt("step", "learning-rate schedule after warm-up: step | multistep | cosine",
                         choices=["step", "multistep", "cosine"])
    warmup_iters: int | None = _opt(None, "linear warm-up iterations (default: the first epoch, at most 1000)")
    warmup_factor: float = _opt(0.001, "learning-rate factor at the first warm-up iteration")
    lr_step: int = _opt(3, "step: decay the learning rate every this many epochs")
    lr_milestones: list[int] = _opt([8, 11], "multistep: epochs at which the learning rate decays")
    lr_gamma: float = _opt(0.1, "step / multistep: decay factor")
    clip_grad_norm: float | None = _opt(None, "clip the gradient norm to this value (default: no clipping)")
    amp: str = _opt("auto", "mixed precision: auto (bf16 where the CPU or GPU runs it natively, fp16 on older GPUs, "
                    "else none) | none | fp16 (CUDA, with a grad scaler) | bf16 (CUDA or CPU autocast)",
                    choices=["none", "fp16", "bf16", "auto"])
    memory_format: str = _opt("auto", "weights' memory format in training: auto (channels-last under autocast) "
                              "| channels_last | contiguous", choices=["auto", "channels_last", "contiguous"])
    accumulate: int = _opt(1, "gradient accumulation: one optimiser step every this many batches")
    ema: bool = _opt(False, "keep an exponential moving average of the weights; evaluated and saved as ema.pt")
    ema_decay: float = _opt(0.9998, "EMA decay per optimiser step")
    ema_tau: float = _opt(2000.0, "steps over which the EMA decay ramps up: after n steps it is ema_decay * "
                          "(1 - exp(-n / ema_tau)), as in Ultralytics; 0 = ema_decay from the first step. The ramp "
                          "is slow: after 3,600 steps the decay is still 0.83 x ema_decay, an average of the last "
                          "few steps only; for runs of a few thousand steps use a few hundred, or 0")
    deterministic: bool = _opt(False, "deterministic algorithms (slower; same results run to run on one device)")
    keep_last: int = _opt(0, "also keep the checkpoints of the last N epochs (weights/epoch-N.pt) besides "
                          "last.pt and best.pt")
    early_stop_patience: int | None = _opt(None, "stop when the best metric has not improved for this many epochs")
    early_stop_metric: str = _opt("auto", "metric for best.pt and early stopping: auto (segm AP, else keypoints AP, else bbox AP) "
                                  "or type/stat, e.g. bbox/AP50")
    val_loss: bool = _opt(True, "after every epoch's evaluation, also compute the loss terms on the test split "
                          "(val/loss in metrics.csv and results.png)")
    tensorboard: bool = _opt(True, "write TensorBoard event files into the run folder (tb/)")
    report: bool = _opt(True, "write report.html into the run folder at the end: curves, PR/F1, confusion "
                        "matrix, label statistics, a worst-first gallery, COCO error analysis")
    sync_bn: bool = _opt(False, "distributed: convert BatchNorm to SyncBatchNorm")
    augment: list[str] = _opt(["hflip"], "augmentation presets, comma-separated: hflip, multiscale, lsj, "
                              "photometric, copypaste")
    hflip_prob: float = _opt(0.5, "probability of a random horizontal flip")
    lsj_scale: list[float] = _opt([0.1, 2.0], "lsj: range of the random scale, relative to fitting the image in "
                                  "the model's input square")
    repeat: int = _opt(1, "passes over the training images per epoch (small data: fewer evaluations and "
                       "checkpoints per pass)")
    time_limit: float | None = _opt(None, "stop training after this many minutes of training (evaluation not "
                                    "counted); the part-epoch is evaluated and saved")
    fit_to_time_limit: bool = _opt(False, "size the schedule to --time-limit: time the first steps, then set the "
                                   "epochs and the cosine schedule's end to the steps that fit")
    max_iters_per_epoch: int | None = _opt(None, "stop each epoch after this many iterations (short runs)")
    seed: int = _opt(0, "seeds Python, NumPy, torch and the data-loader workers")
    resume: str | None = _opt(None, "resume a run: its folder or last.pt ('latest' = the newest run under --out's parent)")
    print_freq: int = _opt(10, "log a line every this many iterations")


@dataclass(frozen=True)
class EvalConfig:
    mask_threshold: float = _opt(0.5, "a predicted mask pixel is foreground above this probability")
    batch_size: int = _opt(1, "images per batch in evaluation", flag="--eval-batch-size")


@dataclass(frozen=True)
class Config:
    version: int = CONFIG_VERSION
    data: DataConfig = field(default_factory=DataConfig)
    model: ModelConfig = field(default_factory=ModelConfig)
    train: TrainConfig = field(default_factory=TrainConfig)
    eval: EvalConfig = field(default_factory=EvalConfig)

    def to_dict(self) -> dict[str, Any]:
        return dataclasses.asdict(self)


SECTIONS: dict[str, type] = {"data": DataConfig, "model": ModelConfig, "train": TrainConfig, "eval": EvalConfig}

def field_types(cls: type) -> dict[str, Any]:
    return typing.get_type_hints(cls)


def _suggest(name: str, valid: list[str]) -> str:
    close = difflib.get_close_matches(name, valid, n=1)
    return f"; did you mean '{close[0]}'?" if close else f"; valid keys: {', '.join(valid)}"


def coerce(value: Any, tp: Any, where: str) -> Any:
    """Check ``value`` against the annotation ``tp`` and convert what is safe (int to float, str to list)."""
    origin = typing.get_origin(tp)
    if origin in (typing.Union, types.UnionType):
        args = typing.get_args(tp)
        if type(None) in args and (value is None or (isinstance(value, str) and value.lower() in ("none", "null"))):
            return None  # "--test-max none", "--resume none" on the command line mean no value
        inner = [a for a in args if a is not type(None)]
        return coerce(value, inner[0], where)
    if origin is list:
        (item_tp,) = typing.get_args(tp)
        if isinstance(value, str):
            value = [parse_value(v.strip()) for v in value.split(",") if v.strip()]
        if not isinstance(value, (list, tuple)):
            raise ConfigError(f"{where}: expected a list, got {value!r}")
        return [coerce(v, item_tp, where) for v in value]
    if tp is bool:
        if isinstance(value, bool):
            return value
        raise ConfigError(f"{where}: expected true or false, got {value!r}")
    if tp is int:
        if isinstance(value, int) and not isinstance(value, bool):
            return value
        raise ConfigError(f"{where}: expected an integer, got {value!r}")
    if tp is float:
        if isinstance(value, (int, float)) and not isinstance(value, bool):
            return float(value)
        raise ConfigError(f"{where}: expected a number, got {value!r}")
    if tp is str:
        if isinstance(value, (str, int, float)) and not isinstance(value, bool):
            return str(value)
        raise ConfigError(f"{where}: expected a string, got {value!r}")
    return value


def parse_value(text: str) -> Any:
    """Parse a command-line value the way YAML would (``0.01`` is a float, ``none`` stays a string)."""
    try:
        value = yaml.safe_load(text)
    except yaml.YAMLError:
        return text
    # YAML reads "none"/"None" as a string and "null"/"~" as None; keep ``none`` a string for weights.
    if isinstance(value, str):
        try:  # YAML 1.1 reads 1e-12 (no dot) as a string; a user means a number
            return float(value) if any(c in value for c in "eE") and value.strip()[0] in "0123456789.-+" else value
        except ValueError:
            return value
    return value


def set_dotted(tree: dict[str, Any], key: str, value: Any, *, source: str = "override") -> None:
    """Set ``section.key`` in a nested dict, checking that the key exists."""
    section, _, name = key.partition(".")
    if section not in SECTIONS or not name:
        raise ConfigError(f"{source}: '{key}' is not a config key (write section.key, sections: {', '.join(SECTIONS)})")
    valid = [f.name for f in dataclasses.fields(SECTIONS[section])]
    if name not in valid:
        raise ConfigError(f"{source}: '{key}' is not a config key" + _suggest(name, valid))
    tree.setdefault(section, {})[name] = value


def flatten(tree: dict[str, Any]) -> dict[str, Any]:
    out = {}
    for section, values in tree.items():
        if section == "version":
            continue
        if not isinstance(values, dict):
            raise ConfigError(f"config: section '{section}' must be a mapping, got {values!r}")
        for name, value in values.items():
            out[f"{section}.{name}"] = value
    return out


def load_yaml(path: str | os.PathLike) -> dict[str, Any]:
    """Read a config YAML file into a nested dict (not yet checked)."""
    path = Path(path)
    if not path.is_file():
        raise ConfigError(f"{path}: config file not found")
    try:
        tree = yaml.safe_load(path.read_text(encoding="utf-8")) or {}
    except yaml.YAMLError as e:
        raise ConfigError(f"{path}: not valid YAML: {e}") from None
    if not isinstance(tree, dict):
        raise ConfigError(f"{path}: a config file must be a mapping of sections, got {type(tree).__name__}")
    version = tree.get("version", CONFIG_VERSION)
    if version != CONFIG_VERSION:
        raise ConfigError(f"{path}: config version {version} is not supported (this segtune reads version {CONFIG_VERSION})")
    return tree


def build_config(*layers: tuple[str, dict[str, Any]]) -> Config:
    """Build a checked :class:`Config` from layers of dotted overrides, lowest precedence first.

    Each layer is ``(source, {"section.key": value})``; ``source`` names the file or flag in errors.
    """
    tree: dict[str, dict[str, Any]] = {}
    sources: dict[str, str] = {}
    for source, overrides in layers:
        for key, value in overrides.items():
            set_dotted(tree, key, value, source=source)
            sources[key] = source
    sections = {}
    for section, cls in SECTIONS.items():
        hints = field_types(cls)
        values = {
            name: coerce(value, hints[name], f"{sources[f'{section}.{name}']}: {section}.{name}")
            for name, value in tree.get(section, {}).items()
        }
        sections[section] = cls(**values)
    cfg = Config(**sections)
    if "none" in cfg.model.adapt_to_data:  # --adapt-to-data none: fit nothing
        cfg = dataclasses.replace(cfg, model=dataclasses.replace(cfg.model, adapt_to_data=[]))
    validate(cfg)
    return cfg


def validate(cfg: Config) -> None:
    """Check values that a type alone does not constrain."""
    for section, cls in SECTIONS.items():
        for f in dataclasses.fields(cls):
            choices = f.metadata.get("choices")
            value = getattr(getattr(cfg, section), f.name)
            if choices and value not in choices:
                raise ConfigError(f"{section}.{f.name} '{value}' is not one of: {', '.join(choices)}")
    unknown = sorted(set(cfg.model.adapt_to_data) - set(ADAPT_GROUPS))
    if unknown:
        raise ConfigError(f"model.adapt_to_data: {', '.join(unknown)} unknown; choose from: {', '.join(ADAPT_GROUPS)}")
    checks = [
        (cfg.train.epochs >= 1, "train.epochs must be at least 1"),
        (cfg.train.batch_size >= 1, "train.batch_size must be at least 1"),
        (cfg.train.repeat >= 1, "train.repeat must be at least 1"),
        (len(cfg.train.lsj_scale) == 2 and 0 < cfg.train.lsj_scale[0] <= cfg.train.lsj_scale[1],
         "train.lsj_scale must be two numbers, low and high, with 0 < low <= high"),
        (cfg.train.time_limit is None or cfg.train.time_limit > 0, "train.time_limit must be positive (minutes)"),
        (not cfg.train.fit_to_time_limit or cfg.train.time_limit is not None,
         "train.fit_to_time_limit needs train.time_limit (minutes)"),
        (cfg.train.lr > 0, "train.lr must be positive"),
        (0.0 <= cfg.train.ema_decay <= 1.0, "train.ema_decay must be between 0 and 1"),
        (cfg.train.ema_tau >= 0, "train.ema_tau must be 0 (no ramp) or positive (steps)"),
        (0.0 <= cfg.train.hflip_prob <= 1.0, "train.hflip_prob must be between 0 and 1"),
        (cfg.train.max_iters_per_epoch is None or cfg.train.max_iters_per_epoch >= 1,
         "train.max_iters_per_epoch must be at least 1"),
        (cfg.train.lr_step >= 1, "train.lr_step must be at least 1"),
        (cfg.data.test_size > 0, "data.test_size must be positive"),
        (cfg.model.min_size >= 32 and cfg.model.max_size >= cfg.model.min_size,
         "model.min_size must be at least 32 and model.max_size at least model.min_size"),
    ]
    for ok, message in checks:
        if not ok:
            raise ConfigError(message)


def dump_yaml(cfg: Config) -> str:
    return yaml.safe_dump(cfg.to_dict(), sort_keys=False)


def resolve_data_path(path: str | None) -> str:
    """The data folder: the given path, else ``$SEGTUNE_DATA``, else the shared Penn-Fudan copy."""
    return path or os.environ.get("SEGTUNE_DATA") or DEFAULT_DATA_PATH
