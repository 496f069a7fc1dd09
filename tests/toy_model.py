"""A toy model family from outside segtune, registered through the public registries only: a one-stage
segmenter that is not an R-CNN (tests/models/test_family_plugin.py, tests/export/test_runtime_plugin.py)."""

from __future__ import annotations

import contextlib
import json
from collections.abc import Iterator
from pathlib import Path

import torch
from torch import nn
from torch.nn import functional as F

from segtune.cli.main import main
from segtune.models import FAMILIES, MODELS, ModelFamily, ModelSpec, register, register_family
from tests.conftest import make_mask_folder

class ToySegmenter(nn.Module):
    """Two convolutions giving one soft mask per class; each class's mask is one detection (its box the mask's
    extent, its score the mask's peak). Follows torchvision's detection contract: losses in training mode,
    a list of ``{boxes, labels, scores, masks}`` in eval mode.

    Initialised to see the test data's red objects on a dark background, so it detects from the first step.
    """

    def __init__(self, num_classes: int) -> None:
        super().__init__()
        self.features = nn.Conv2d(3, 4, 3, padding=1)
        self.logits = nn.Conv2d(4, num_classes - 1, 1)
        self.score_thresh = 0.05
        with torch.no_grad():
            self.features.weight.zero_()
            self.features.bias.zero_()
            self.features.weight[0, 0, 1, 1] = 1.0  # the red channel
            self.logits.weight.zero_()
            self.logits.weight[:, 0] = 20.0
            self.logits.bias.fill_(-10.0)

    def _logits(self, image: torch.Tensor) -> torch.Tensor:
        return self.logits(F.relu(self.features(image[None])))[0]  # float[C, H, W]

    def forward(self, images: list[torch.Tensor], targets: list[dict[str, torch.Tensor]] | None = None):
        if self.training:
            losses = []
            for image, target in zip(images, targets):
                logits = self._logits(image)
                classes = torch.arange(1, logits.shape[0] + 1)
                hit = target["labels"][:, None] == classes[None]  # [N, C]
                want = (target["masks"][:, None].float() * hit[:, :, None, None].float()).amax(0) if len(hit) else \
                    torch.zeros_like(logits)
                losses.append(F.binary_cross_entropy_with_logits(logits, want))
            return {"loss_mask": torch.stack(losses).mean()}
        out = []
        for image in images:
            probs = torch.sigmoid(self._logits(image))  # [C, H, W]
            inside = (probs > 0.5).float()
            cols, rows = inside.amax(1), inside.amax(2)  # [C, W], [C, H]
            width, height = cols.shape[1], rows.shape[1]
            x0, y0 = cols.argmax(1), rows.argmax(1)
            x1, y1 = width - cols.flip(1).argmax(1), height - rows.flip(1).argmax(1)
            boxes = torch.stack([x0, y0, x1, y1], 1).float()
            scores = probs.flatten(1).amax(1)
            labels = torch.arange(1, probs.shape[0] + 1)
            keep = scores >= self.score_thresh
            out.append({"boxes": boxes[keep], "labels": labels[keep], "scores": scores[keep],
                        "masks": probs[:, None][keep]})
        return out


class ToyFamily(ModelFamily):
    name = "toy"
    model_types = (ToySegmenter,)

    def outputs(self, model: nn.Module) -> tuple[str, ...]:
        return ("boxes", "labels", "scores", "masks")

    def min_score(self, model: nn.Module) -> float | None:
        return float(model.score_thresh)

    def set_min_score(self, model: nn.Module, value: float) -> None:
        model.score_thresh = value


def build_toy(*, num_classes: int, **_ignored) -> nn.Module:
    return ToySegmenter(num_classes)


@contextlib.contextmanager
def toy_registered() -> Iterator[None]:
    """The toy family and its model ``toy_segmenter`` registered while inside."""
    register_family(ToyFamily())
    register(ModelSpec(name="toy_segmenter", task="instance-segmentation", build=build_toy,
                       from_config=lambda model_cfg: {}, weights_name=None, description="a toy from a test"))
    try:
        yield
    finally:
        MODELS.unregister("toy_segmenter")
        FAMILIES.unregister("toy")


def train_toy(root: Path) -> tuple[Path, Path]:
    """``(data, run)``: a synthetic mask folder of 8 images and a toy run trained on it for two steps."""
    data = make_mask_folder(root / "data", n=8, empty=())
    run = root / "runs" / "toy"
    assert main(["train", "--data", str(data), "--out", str(run), "--model", "toy_segmenter", "--epochs", "1",
                 "--max-iters-per-epoch", "2", "--batch-size", "2", "--test-size", "3", "--classes", "box",
                 "--weights", "none", "--weights-backbone", "none", "--lr", "0.001", "--amp", "none",
                 "train.augment=[]", "train.tensorboard=false", "train.val_loss=false"]) == 0
    history = json.loads((run / "metrics.json").read_text())
    assert history[-1]["train"]["iters"] == 2 and history[-1]["train"]["loss_mask"] > 0
    return data, run
