"""Owns fitting a recipe to the data (``model.adapt_to_data``): the input size from the objects' sizes,
the anchors from their shapes, the detections per image from the instance counts.

A recipe such as ``cpu-scratch`` fixes these for one kind of data (people standing upright, a few per
image, a 320-px input). With ``model.adapt_to_data`` naming groups of :data:`segtune.config.ADAPT_GROUPS`,
the trainer calls :func:`adapt_to_data` after the data check and before the model is built. It reads the
training images' rows of the data doctor's box sample (:mod:`segtune.data.shapes`) and their instance
counts, logs each choice and why, and returns the config with the chosen values (config.yaml keeps
them, so evaluating, resuming or replaying the run builds the same model). ``configure`` leaves out a
group any of whose settings the user gave, so every choice stays overridable.

The rules, each a small pure function below:

* **input size** (``model.min_size``, ``model.max_size``): the smallest of :data:`INPUT_SIZES`, from the
  recipe's own size up, at which the tenth-smallest object is at least :data:`SMALL_TARGET` px after
  the model's resize; at most twice the images' median shorter side, so no image is blown up further
  than that; the recipe's ratio of max to min size kept.
* **anchors** (``model.anchor_sizes``, ``model.aspect_ratios``, ``model.fpn_levels``; composed models
  with a feature pyramid): the stride-4 level is added when the tenth-smallest object is still under
  :data:`STRIDE4_BELOW` px at the input size; three aspect ratios (height / width) from k-means of the
  boxes' log aspect ratios; one size per pyramid level, doubling from a base chosen among a few
  multiples of the first level's stride to maximise the mean best IoU of every box with an anchor of
  its shape, as YOLOv5's autoanchor judges anchors by their fit to the boxes.
* **detections** (``model.box_detections_per_img``, the RPN's proposals at inference): detections per
  image at least 1.5 times the most instances in one training image (at most :data:`MAX_DETECTIONS`),
  proposals at least twice that, never below the recipe's own values. Training's RoI sample is left
  as the recipe has it (see :func:`fit_detections`).
"""

from __future__ import annotations

import dataclasses
import logging
import math
from dataclasses import dataclass
from typing import Any

import torch
from torchvision.ops import box_iou

from segtune.config import ADAPT_GROUPS, Config
from segtune.models.composed import DEFAULT_ANCHOR_SIZES, DEFAULT_ASPECT_RATIOS

logger = logging.getLogger("segtune.train")

#: Input sizes (shorter side) the fit chooses among, smallest first.
INPUT_SIZES = (320, 384, 448, 512, 640, 768, 896, 1024)
#: The tenth-smallest object should be at least this many pixels (square root of its box area) at the input.
SMALL_TARGET = 16.0
#: Below this size (same measure) at the input, the tenth-smallest object gets the stride-4 level.
STRIDE4_BELOW = 24.0
#: Anchor bases tried, as multiples of the first pyramid level's stride (torchvision: 32 at stride 4 = 8).
BASE_MULTIPLES = (2, 3, 4, 6, 8)
MAX_DETECTIONS = 1000


@dataclass(frozen=True)
class Choice:
    """One fitted setting: its dotted key, the value before and after, and why."""

    key: str
    before: Any
    after: Any
    why: str


@dataclass(frozen=True)
class Shapes:
    """The training images' boxes (width, height, their image's width and height: ``[N, 4]``, float)
    and instance counts (one per training image)."""

    boxes: torch.Tensor
    instances: list[int]

    @classmethod
    def of(cls, sample: list[list[Any]], instance_counts: dict[str, int], train: list[str]) -> Shapes:
        files = set(train)
        rows = [row[1:] for row in sample if row[0] in files]
        boxes = torch.tensor(rows, dtype=torch.float64).reshape(-1, 4)
        boxes = boxes[(boxes[:, 0] > 0) & (boxes[:, 1] > 0)]
        return cls(boxes, [instance_counts.get(name, 0) for name in train])


def quantile(values: torch.Tensor, q: float) -> float:
    return float(torch.quantile(values.double(), q))


def resize_scale(image_wh: torch.Tensor, min_size: int, max_size: int) -> torch.Tensor:
    """The scale torchvision's ``GeneralizedRCNNTransform`` resizes each image by (min and max size)."""
    short, long = image_wh.min(dim=1).values, image_wh.max(dim=1).values
    return torch.minimum(min_size / short, max_size / long)


def object_sides(shapes: Shapes, min_size: int, max_size: int) -> torch.Tensor:
    """Each object's side (square root of its box area) in pixels after the model's resize."""
    b = shapes.boxes
    return torch.sqrt(b[:, 0] * b[:, 1]) * resize_scale(b[:, 2:], min_size, max_size)


def fit_input_size(shapes: Shapes, min_size: int, max_size: int) -> tuple[int, int, str]:
    """``(min_size, max_size, why)``: see the module docstring."""
    ratio = max_size / min_size
    cap = 2 * quantile(shapes.boxes[:, 2:].min(dim=1).values, 0.5)
    sizes = [min_size] + [s for s in INPUT_SIZES if min_size < s <= cap]
    for size in sizes:
        small = quantile(object_sides(shapes, size, round(size * ratio)), 0.1)
        if small >= SMALL_TARGET:
            break
    why = f"the tenth-smallest object is {small:.0f} px at {size} px"
    if small < SMALL_TARGET:
        why += (f", under {SMALL_TARGET:g} px, but inputs stop at {min(cap, INPUT_SIZES[-1]):.0f} px (twice the "
                f"images' median shorter side, at most {INPUT_SIZES[-1]})")
    return size, max(size, round(size * ratio)), why


def kmeans_1d(values: torch.Tensor, k: int, iters: int = 50) -> torch.Tensor:
    """``k`` cluster centres of 1-D ``values`` (Lloyd's algorithm from the quantiles), sorted.

    Written here: torch has no k-means and neither scipy nor scikit-learn is a segtune dependency;
    for one dimension and three centres Lloyd's algorithm is these few lines.
    """
    values = values.double()
    centres = torch.quantile(values, torch.linspace(0.5 / k, 1 - 0.5 / k, k, dtype=torch.float64))
    for _ in range(iters):
        nearest = (values[:, None] - centres[None, :]).abs().argmin(dim=1)
        new = torch.stack([values[nearest == j].mean() if (nearest == j).any() else centres[j] for j in range(k)])
        if torch.allclose(new, centres):
            break
        centres = new
    return centres.sort().values


def anchor_fit(wh: torch.Tensor, sizes: list[float], ratios: list[float]) -> tuple[float, float]:
    """How well anchors of ``sizes`` x ``ratios`` (height / width, torchvision's meaning) fit boxes of
    widths and heights ``wh`` ``[N, 2]``, all centred at one point: the mean over boxes of the best
    IoU with any anchor, and the share of boxes whose best IoU is at least 0.5."""
    anchors = torch.tensor([[s / math.sqrt(r), s * math.sqrt(r)] for s in sizes for r in ratios], dtype=torch.float64)
    best = box_iou(_centred(wh.double()), _centred(anchors)).max(dim=1).values
    return float(best.mean()), float((best >= 0.5).double().mean())


def _centred(wh: torch.Tensor) -> torch.Tensor:
    return torch.cat([-wh / 2, wh / 2], dim=1)


def fit_anchors(shapes: Shapes, min_size: int, max_size: int, fpn_levels: int,
                sizes: list[int], ratios: list[float]) -> tuple[list[int], list[float], int, str]:
    """``(anchor sizes, aspect ratios, fpn_levels, why)`` for a composed model with a feature pyramid of
    ``fpn_levels`` trunk levels (plus the pooled one); ``sizes`` and ``ratios`` are the recipe's."""
    scale = resize_scale(shapes.boxes[:, 2:], min_size, max_size)
    wh = shapes.boxes[:, :2] * scale[:, None]
    small = quantile(torch.sqrt(wh[:, 0] * wh[:, 1]), 0.1)
    levels = fpn_levels
    notes = []
    if small < STRIDE4_BELOW and fpn_levels < 4:
        levels = 4
        notes.append(f"stride-4 level added: the tenth-smallest object is {small:.0f} px at the input")
    ratios_new = sorted({round(float(r), 2) for r in torch.exp(kmeans_1d(torch.log(wh[:, 1] / wh[:, 0]), 3))})
    stride = 2 ** (6 - levels)  # fpn_levels 4: strides 4..32 (+ the pooled 64); 3: 8..32 (+ 64)
    count = levels + 1
    best: tuple[float, float, list[int]] | None = None
    for multiple in BASE_MULTIPLES:
        candidate = [stride * multiple * 2 ** i for i in range(count)]
        fit = anchor_fit(wh, candidate, ratios_new)
        if best is None or fit[0] > best[0]:
            best = (*fit, candidate)
    assert best is not None
    old_iou, old_recall = anchor_fit(wh, sizes, ratios) if len(sizes) == fpn_levels + 1 else (float("nan"),) * 2
    notes.append(f"mean best IoU of a box with an anchor {old_iou:.2f} -> {best[0]:.2f}, boxes with an anchor at "
                 f"IoU >= 0.5 {old_recall:.0%} -> {best[1]:.0%}, over {len(wh)} training boxes")
    return best[2], ratios_new, levels, "; ".join(notes)


def fit_detections(shapes: Shapes, model: Any) -> tuple[dict[str, int], str]:
    """The detection-count settings (dotted keys) and why; see the module docstring.

    Only what inference keeps is raised. The RoIs sampled per training image stay the recipe's: raising
    them to about two positives per instance of a busy image (512 on DSB 2018's nuclei) made each step
    three times as costly (the mask head runs on every positive RoI) and lost at a 5-minute budget
    (docs/benchmarks.md, "The recipe fitted to the data")."""
    counts = torch.tensor(shapes.instances or [0], dtype=torch.float64)
    most = int(counts.max())
    detections = max(model.box_detections_per_img, min(MAX_DETECTIONS, math.ceil(1.5 * most)))
    post_test = max(model.rpn_post_nms_top_n_test, 2 * detections)
    values = {"model.box_detections_per_img": detections,
              "model.rpn_post_nms_top_n_test": post_test,
              "model.rpn_pre_nms_top_n_test": max(model.rpn_pre_nms_top_n_test, post_test)}
    return values, f"at most {most} instances in a training image"


def adapt_to_data(cfg: Config, report: Any, train: list[str], *, composed: bool) -> tuple[Config, list[Choice]]:
    """``cfg`` with the groups of ``cfg.model.adapt_to_data`` fitted to the training images ``train``
    of the data doctor's ``report``, and the choices made (each also logged). ``composed``: the model is
    built on a custom backbone (only then are its anchors and pyramid levels settings)."""
    groups = list(cfg.model.adapt_to_data)
    if not groups:
        return cfg, []
    shapes = Shapes.of(report.box_sample, report.instance_counts, train)
    if not len(shapes.boxes):
        logger.warning("model.adapt_to_data: the training images have no boxes to fit to; the recipe's settings "
                       "are kept")
        return cfg, []
    m = cfg.model
    values: dict[str, Any] = {}
    whys: dict[str, str] = {}
    min_size, max_size = m.min_size, m.max_size
    if "input_size" in groups:
        min_size, max_size, why = fit_input_size(shapes, m.min_size, m.max_size)
        values.update({"model.min_size": min_size, "model.max_size": max_size})
        whys.update(dict.fromkeys(ADAPT_GROUPS["input_size"], why))
    if "anchors" in groups:
        if composed and m.fpn:
            sizes, ratios, levels, why = fit_anchors(shapes, min_size, max_size, m.fpn_levels,
                                                     list(m.anchor_sizes or DEFAULT_ANCHOR_SIZES),
                                                     list(m.aspect_ratios or DEFAULT_ASPECT_RATIOS))
            values.update({"model.anchor_sizes": sizes, "model.aspect_ratios": ratios, "model.fpn_levels": levels})
            whys.update(dict.fromkeys(ADAPT_GROUPS["anchors"], why))
        else:
            logger.info("model.adapt_to_data: anchors not fitted: %s has its own fixed anchors (only a custom "
                        "backbone with a feature pyramid takes fitted ones)", m.name)
    if "detections" in groups:
        found, why = fit_detections(shapes, m)
        values.update(found)
        whys.update(dict.fromkeys(found, why))
    choices = []
    for key, value in values.items():
        before = getattr(m, key.split(".", 1)[1])
        if before != value:
            choices.append(Choice(key, before, value, whys[key]))
    logger.info("fitted to the data (model.adapt_to_data: %s; %d training images, %d boxes sampled):",
                ", ".join(groups), len(train), len(shapes.boxes))
    for group in groups:
        keys = ADAPT_GROUPS[group]
        changed = [c for c in choices if c.key in keys]
        reason = next((whys[k] for k in keys if k in whys), None)
        if reason is None:
            continue
        what = ", ".join(f"{c.key} {_show(c.before)} -> {_show(c.after)}" for c in changed) or "the recipe's values kept"
        logger.info("  %s: %s (%s)", group, what, reason)
    model = dataclasses.replace(m, **{c.key.split(".", 1)[1]: c.after for c in choices})
    return dataclasses.replace(cfg, model=model), choices


def _show(value: Any) -> str:
    return ",".join(f"{v:g}" for v in value) if isinstance(value, list) else str(value)
