"""Owns running a trained model on images: a checkpoint in, boxes / masks / keypoints / class names out."""

from __future__ import annotations

import glob
import os
from collections.abc import Iterable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch
from PIL import Image
from torch import nn

from segtune.data.images import IMAGE_EXTENSIONS, load_rgb
from segtune.predict.aspect import cut_to_image, pad_to_aspect
from segtune.errors import DatasetError
from segtune.evaluation.coco_eval import detections
from segtune.models.min_score import min_score_inside
from segtune.models.precision import autocast, float_outputs, inference_precision
from segtune.predict.video import VIDEO_EXTENSIONS
from segtune.predict.visualise import draw
from segtune.machine import resolve_device
from segtune.runtimes import LoadedModel, open_model

ImageInput = str | os.PathLike | Image.Image | np.ndarray


@dataclass
class Prediction:
    """One image's detections above the score threshold.

    ``boxes`` float32[N, 4] XYXY in pixels of the input image; ``scores`` float32[N]; ``labels``
    int64[N] (1-based); ``masks`` bool[N, H, W] or None for box-only models; ``names`` class names;
    ``keypoints`` float32[N, K, 3] (x, y, visibility; torchvision's models give visibility 1) and
    ``keypoint_scores`` float32[N, K] (the heat-map maxima, not probabilities) for keypoint models,
    else None; ``skeleton`` 0-based keypoint pairs to join when drawing, or None.
    """

    image: torch.Tensor  # uint8[3, H, W], as given
    boxes: torch.Tensor
    scores: torch.Tensor
    labels: torch.Tensor
    masks: torch.Tensor | None
    names: list[str]
    raw: dict[str, torch.Tensor]  # the model's output before thresholds (soft masks included)
    keypoints: torch.Tensor | None = None
    keypoint_scores: torch.Tensor | None = None
    skeleton: list[tuple[int, int]] | None = None

    def __len__(self) -> int:
        return len(self.boxes)

    def draw(self) -> torch.Tensor:
        """The image with masks, boxes, keypoints, class names and scores drawn over it (uint8[3, H, W])."""
        captions = [f"{n} {s:.2f}" for n, s in zip(self.names, self.scores.tolist())]
        return draw(self.image, self.boxes, captions, self.masks, keypoints=self.keypoints, skeleton=self.skeleton)

    def to_coco(self, image_id: int, mask_threshold: float = 0.5) -> list[dict[str, Any]]:
        """COCO results entries (bbox XYWH, score, category_id, RLE segmentation, keypoints)."""
        keep = {"boxes": self.boxes, "scores": self.scores, "labels": self.labels}
        if self.masks is not None:
            keep["masks"] = self.masks[:, None].float()
        if self.keypoints is not None:
            keep["keypoints"] = self.keypoints
        if self.keypoint_scores is not None:
            keep["keypoints_scores"] = self.keypoint_scores
        return detections(image_id, keep, mask_threshold=mask_threshold)


def to_uint8_chw(image: ImageInput | torch.Tensor) -> torch.Tensor:
    """``image`` (a file, PIL image, HWC array, or a uint8[3, H, W] tensor as is) as uint8[3, H, W]."""
    if isinstance(image, torch.Tensor):
        return image
    if isinstance(image, (str, os.PathLike)):
        array = load_rgb(image)
    elif isinstance(image, Image.Image):
        array = np.asarray(image.convert("RGB"))
    else:
        array = np.asarray(image)
        if array.ndim == 2:
            array = np.repeat(array[:, :, None], 3, axis=2)
    return torch.from_numpy(np.array(array[:, :, :3], dtype=np.uint8, copy=True)).permute(2, 0, 1).contiguous()


class Predictor:
    """Callable wrapper around a trained model.

    Example::

        predictor = Predictor.from_checkpoint("runs/pennfudan/weights/best.pt")
        pred = predictor("street.png")
        print(pred.names, pred.scores)
    """

    def __init__(self, model: nn.Module, classes: list[str], *, device: torch.device | str = "cpu",
                 score_threshold: float = 0.5, mask_threshold: float = 0.5,
                 category_ids: list[int] | None = None, keypoint_names: list[str] | None = None,
                 skeleton: list[list[int]] | None = None, amp: str = "auto") -> None:
        self.device = torch.device(device)
        self.model = model.to(self.device).eval()
        # --amp bf16: channels-last weights under autocast; auto (the default): float32 or that, whichever this
        # machine runs the model faster in, measured once (segtune.models.fastest)
        self.autocast_dtype = inference_precision(self.model, amp, self.device)
        self.classes = list(classes)
        # The data set's own class ids (COCO category ids need not be 1..C); results are written with them.
        self.category_ids = list(category_ids) if category_ids else list(range(1, len(self.classes) + 1))
        self.score_threshold = score_threshold
        self.mask_threshold = mask_threshold
        self.keypoint_names = list(keypoint_names) if keypoint_names else None
        # The checkpoint keeps COCO's 1-based skeleton pairs; drawing wants 0-based indices.
        k = len(self.keypoint_names) if self.keypoint_names else None
        pairs = [(int(a) - 1, int(b) - 1) for a, b in skeleton or []]
        self.skeleton = [(a, b) for a, b in pairs if k is None or (0 <= a < k and 0 <= b < k)] or None

    @classmethod
    def from_checkpoint(cls, path: str | os.PathLike, *, device: str = "auto", score_threshold: float = 0.5,
                        amp: str = "auto") -> Predictor:
        """Load a segtune checkpoint (a ``.pt`` file or a run folder), or a file written by ``segtune export``
        (``.onnx``: run by ONNX Runtime; ``.torchscript``; any registered runtime's suffix). ``amp``
        (none | bf16 | auto: the faster of the two here, measured once) is for a checkpoint's eager model; an
        exported file runs in the number format it was exported in. Raises ``CheckpointError``, or
        ``ConfigError`` for ``amp="bf16"`` with an exported file."""
        dev = resolve_device(device)
        return cls.from_loaded(open_model(path, device=dev, amp=amp), device=dev, score_threshold=score_threshold,
                               amp=amp)

    @classmethod
    def from_loaded(cls, loaded: LoadedModel, *, device: torch.device | str = "cpu", score_threshold: float = 0.5,
                    amp: str = "auto") -> Predictor:
        """A predictor of a model opened by :func:`segtune.runtimes.open_model`."""
        return cls(loaded.model, loaded.classes, device=device, score_threshold=score_threshold,
                   mask_threshold=loaded.mask_threshold, category_ids=loaded.category_ids,
                   keypoint_names=loaded.keypoint_names, skeleton=loaded.skeleton,
                   amp="none" if loaded.exported else amp)

    def name(self, label: int) -> str:
        return self.classes[label - 1] if 1 <= label <= len(self.classes) else f"class{label}"

    def category_id(self, label: int) -> int:
        """The data set's id of model label ``label`` (its COCO category id)."""
        return self.category_ids[label - 1] if 1 <= label <= len(self.category_ids) else label

    @torch.inference_mode()
    def __call__(self, image: ImageInput) -> Prediction:
        return self.predict_batch([image])[0]

    @torch.inference_mode()
    def predict_batch(self, images: Iterable[ImageInput]) -> list[Prediction]:
        tensors = [to_uint8_chw(img) for img in images]
        padded = [pad_to_aspect(t) for t in tensors]  # a 4 x 3000 image would be 0 px high inside the model
        with min_score_inside(self.model, self.score_threshold), autocast(self.device, self.autocast_dtype):
            outputs = self.model([t.to(self.device).float() / 255.0 for t in padded])
        outputs = float_outputs(outputs)
        preds = []
        for tensor, pad, out in zip(tensors, padded, outputs):
            out = {k: v.cpu() for k, v in out.items()}
            if pad.shape != tensor.shape:
                out = cut_to_image(out, *tensor.shape[-2:])
            keep = out["scores"] >= self.score_threshold
            masks = out["masks"][keep, 0] > self.mask_threshold if "masks" in out else None
            labels = out["labels"][keep]
            preds.append(Prediction(
                image=tensor, boxes=out["boxes"][keep], scores=out["scores"][keep], labels=labels, masks=masks,
                names=[self.name(int(k)) for k in labels], raw=out,
                keypoints=out["keypoints"][keep] if "keypoints" in out else None,
                keypoint_scores=out["keypoints_scores"][keep] if "keypoints_scores" in out else None,
                skeleton=self.skeleton,
            ))
        return preds


def expand_inputs(inputs: Iterable[str]) -> list[Path]:
    """Files as given, folders as the images inside them (sorted), globs as their matches."""
    paths: list[Path] = []
    for item in inputs:
        p = Path(item)
        if p.is_dir():
            found = sorted(q for q in p.iterdir() if q.is_file() and q.suffix.lower() in IMAGE_EXTENSIONS + VIDEO_EXTENSIONS)
            if not found:
                raise DatasetError(f"{p}: folder holds no images or videos ({', '.join(IMAGE_EXTENSIONS + VIDEO_EXTENSIONS)})")
            paths.extend(found)
        elif p.is_file():
            paths.append(p)
        elif any(ch in item for ch in "*?["):
            matches = sorted(Path(m) for m in glob.glob(item, recursive=True) if Path(m).is_file())
            if not matches:
                raise DatasetError(f"{item}: pattern matches no file")
            paths.extend(matches)
        else:
            raise DatasetError(f"{p}: no such file or folder")
    return paths
