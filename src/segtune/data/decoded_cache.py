"""Owns the decoded-image cache: each image and its masks decoded once, not on every pass over the data.

A small data set trained for many epochs decodes the same JPEGs and mask PNGs again every pass; on
large photos that is a third of a CPU step (1920x1080 JPEGs: 0.47 s of 1.7 s). The cache keeps the
sample as the data set gives it to its transforms (image, boxes, masks, keypoints), shrunk first for
training so its longer side is at most ``max_side`` (the largest size the model and its augmentation
use; never enlarged), so augmentation still draws new flips and crops from it every pass.

Modes (``data.cache``): ``ram`` (in this process, up to ``max_bytes``; images past the cap are
decoded as before), ``disk`` (one file per image in the user's cache, ``$SEGTUNE_CACHE_DIR/decoded``,
shared by loader workers and later runs; keyed by the image's and annotation's size and modification
time, so a changed file is decoded again), ``none``; ``auto`` picks ``ram`` when the loader runs
in this process (no workers), else ``none``.
"""

from __future__ import annotations

import hashlib
import logging
from pathlib import Path
from typing import Any

import torch
from torchvision import tv_tensors
from torchvision.transforms.v2 import functional as F

from segtune.fileio import cache_dir
from segtune.errors import ConfigError
from segtune.fileio import atomic_write
from segtune.version import __version__

logger = logging.getLogger(__name__)

MODES = ("auto", "ram", "disk", "none")


def default_max_bytes(meminfo: Path = Path("/proc/meminfo")) -> int:
    """A quarter of the memory available now, at most 4 GiB (2 GiB where the system does not say)."""
    try:
        for line in meminfo.read_text().splitlines():
            if line.startswith("MemAvailable:"):
                return min(4 * 2**30, int(line.split()[1]) * 1024 // 4)
    except (OSError, ValueError, IndexError):
        pass
    return 2 * 2**30


def resolve_mode(mode: str, workers: int) -> str:
    """``auto`` as ``ram`` without loader workers (each worker would hold its own copy), else ``none``."""
    if mode not in MODES:
        raise ConfigError(f"--cache {mode!r}: choose one of {', '.join(MODES)}")
    if mode == "auto":
        return "ram" if workers == 0 else "none"
    if mode == "ram" and workers > 0:
        logger.warning("--cache ram with %d loader workers: each worker keeps its own copy (use --cache disk to "
                       "share one)", workers)
    return mode


def _nbytes(sample: tuple[Any, dict[str, Any]]) -> int:
    image, target = sample
    return image.numel() * image.element_size() + sum(
        v.numel() * v.element_size() for v in target.values() if isinstance(v, torch.Tensor))


def shrink(image: tv_tensors.Image, target: dict[str, Any], max_side: int | None) -> tuple[Any, dict[str, Any]]:
    """The sample scaled down so its longer side is ``max_side`` (unchanged when it already fits)."""
    from segtune.data.transforms import resize_sample

    height, width = F.get_size(image)
    if not max_side or max(height, width) <= max_side:
        return image, target
    scale = max_side / max(height, width)
    return resize_sample(image, target, (max(1, round(height * scale)), max(1, round(width * scale))))


class DecodedCache:
    """Samples of one data set view, decoded once (see the module's docstring)."""

    def __init__(self, mode: str, *, max_side: int | None = None, max_bytes: int | None = None,
                 folder: Path | None = None) -> None:
        self.mode = mode
        self.max_side = max_side
        self.max_bytes = default_max_bytes() if max_bytes is None else max_bytes
        self.folder = folder or cache_dir() / "decoded"
        self._ram: dict[str, tuple[Any, dict[str, Any]]] = {}
        self.bytes = 0
        self.hits = self.misses = 0
        self._full_said = False

    def get(self, dataset: Any, index: int) -> tuple[Any, dict[str, Any]]:
        """Image ``index`` of ``dataset`` with its target, from the cache or decoded (and kept)."""
        key = self._key(dataset, index)
        if self.mode == "ram" and key in self._ram:
            self.hits += 1
            image, target = self._ram[key]
            return image, dict(target)  # transforms replace entries of the dict, never a tensor's contents
        if self.mode == "disk":
            found = self._read(key)
            if found is not None:
                self.hits += 1
                return found
        self.misses += 1
        image, target = shrink(*dataset.decode(index), self.max_side)
        if self.mode == "ram":
            size = _nbytes((image, target))
            if self.bytes + size <= self.max_bytes:
                self._ram[key] = (image, dict(target))
                self.bytes += size
            elif not self._full_said:
                self._full_said = True
                logger.info("decoded-image cache full at %.0f MB (%d images); the rest are decoded every time",
                            self.bytes / 2**20, len(self._ram))
        elif self.mode == "disk":
            self._write(key, image, target)
        return image, target

    def _key(self, dataset: Any, index: int) -> str:
        parts = [__version__, str(dataset.keep_crowd), str(self.max_side)]
        for path in dataset.source_files(index):
            try:
                stat = path.stat()
                parts.append(f"{path.resolve()}:{stat.st_size}:{stat.st_mtime_ns}")
            except OSError:
                parts.append(str(path))
        return hashlib.sha1("|".join(parts).encode()).hexdigest()

    def _read(self, key: str) -> tuple[Any, dict[str, Any]] | None:
        path = self.folder / f"{key}.pt"
        if not path.is_file():
            return None
        try:
            raw = torch.load(path, map_location="cpu", weights_only=True)
        except Exception:  # noqa: BLE001  (a truncated or foreign file: decode again and replace it)
            return None
        target = dict(raw["target"])
        height, width = raw["image"].shape[-2:]
        target["boxes"] = tv_tensors.BoundingBoxes(target["boxes"], format="XYXY", canvas_size=(height, width))
        if "masks" in target:
            target["masks"] = tv_tensors.Mask(target["masks"])
        return tv_tensors.Image(raw["image"]), target

    def _write(self, key: str, image: Any, target: dict[str, Any]) -> None:
        plain = {k: v.as_subclass(torch.Tensor) if isinstance(v, torch.Tensor) else v for k, v in target.items()}
        try:
            self.folder.mkdir(parents=True, exist_ok=True)
            atomic_write(self.folder / f"{key}.pt", lambda f: torch.save(
                {"image": image.as_subclass(torch.Tensor), "target": plain}, f), binary=True)
        except OSError as e:  # a full or read-only disk costs speed, never the run
            logger.warning("decoded-image cache: cannot write %s (%s); decoding as before", self.folder, e)
            self.mode = "none"

    def summary(self) -> str:
        where = f"{self.bytes / 2**20:.0f} MB in RAM" if self.mode == "ram" else f"files in {self.folder}"
        return f"{self.hits} from the cache, {self.misses} decoded ({where})"


def model_max_side(model_cfg: Any, augment: Any = (), lsj_scale: Any = None) -> int:
    """The longest image side training can use: the model's ``max_size``, or larger under ``lsj`` and
    ``multiscale``, which scale the image up before cropping."""
    min_size = model_cfg.min_size if isinstance(model_cfg.min_size, int) else max(model_cfg.min_size)
    side = float(model_cfg.max_size)
    if "lsj" in augment:
        side = max(side, min_size * float((lsj_scale or (0.1, 2.0))[1]))
    if "multiscale" in augment:
        side = max(side, model_cfg.max_size * 1333 / 800)
    return int(side) + 1


def make_cache(cfg: Any, workers: int) -> DecodedCache | None:
    """The training view's cache that ``cfg.data.cache`` asks for (None for ``none``)."""
    mode = resolve_mode(cfg.data.cache, workers)
    if mode == "none":
        return None
    max_bytes = None if cfg.data.cache_max_gb is None else int(cfg.data.cache_max_gb * 2**30)
    return DecodedCache(mode, max_side=model_max_side(cfg.model, cfg.train.augment, cfg.train.lsj_scale),
                        max_bytes=max_bytes)


def describe(cache: DecodedCache | None, asked: str) -> str:
    """One line for the run's log: the cache in use, or why none."""
    if cache is None:
        return "decoded-image cache: none" + (" (auto: loader workers in use)" if asked == "auto" else "")
    where = f"up to {cache.max_bytes / 2**30:.1f} GB" if cache.mode == "ram" else str(cache.folder)
    return (f"decoded-image cache: {cache.mode}, images shrunk to at most {cache.max_side} px on their longer "
            f"side, {where}")
