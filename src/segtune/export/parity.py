"""Owns comparing two models' detections on one image as sets, never by index.

Near-equal scores come out in another order from another backend, so the detections above the
score threshold are matched one to one by box IoU (greedy, best pair first); then the matched
boxes, scores and masks are compared. Tolerances: boxes within 1 px, scores within 1e-3, mask IoU
at least 0.99 (masks thresholded at 0.5).
"""

from __future__ import annotations

from dataclasses import dataclass, field

import torch
from torchvision.ops import box_iou

BOX_PX, SCORE, MASK_IOU = 1.0, 1e-3, 0.99


@dataclass
class Parity:
    """How one image's detections of a reference and a candidate compare."""

    reference: int = 0     # detections above the threshold
    candidate: int = 0
    matched: int = 0
    max_box_px: float = 0.0
    max_score: float = 0.0
    min_mask_iou: float = 1.0
    problems: list[str] = field(default_factory=list)

    @property
    def ok(self) -> bool:
        return not self.problems


def compare(reference: dict[str, torch.Tensor], candidate: dict[str, torch.Tensor], *,
            score_threshold: float = 0.5) -> Parity:
    """The detections of ``candidate`` against ``reference`` (torchvision output dicts of one image)."""
    keep_r = reference["scores"] >= score_threshold
    keep_c = candidate["scores"] >= score_threshold
    boxes_r, boxes_c = reference["boxes"][keep_r].double(), candidate["boxes"][keep_c].double()
    out = Parity(reference=len(boxes_r), candidate=len(boxes_c))
    pairs: list[tuple[int, int]] = []
    if len(boxes_r) and len(boxes_c):
        iou = box_iou(boxes_r, boxes_c)
        while True:
            best = float(iou.max())
            if best <= 0.5:
                break
            i, j = divmod(int(iou.argmax()), iou.shape[1])
            pairs.append((i, j))
            iou[i, :] = -1
            iou[:, j] = -1
    out.matched = len(pairs)
    if out.matched != out.reference or out.matched != out.candidate:
        out.problems.append(f"{out.reference} detections against {out.candidate}, {out.matched} matched")
    if pairs:
        ri = torch.tensor([p[0] for p in pairs])
        ci = torch.tensor([p[1] for p in pairs])
        out.max_box_px = float((boxes_r[ri] - boxes_c[ci]).abs().max())
        scores_r = reference["scores"][keep_r][ri].double()
        scores_c = candidate["scores"][keep_c][ci].double()
        out.max_score = float((scores_r - scores_c).abs().max())
        labels_differ = int((reference["labels"][keep_r][ri] != candidate["labels"][keep_c][ci]).sum())
        if labels_differ:
            out.problems.append(f"{labels_differ} matched detections of another class")
        if "masks" in reference and "masks" in candidate:
            mr = reference["masks"][keep_r][ri, 0] > 0.5
            mc = candidate["masks"][keep_c][ci, 0] > 0.5
            inter = (mr & mc).flatten(1).sum(1).double()
            union = (mr | mc).flatten(1).sum(1).double()
            ious = torch.where(union > 0, inter / union.clamp(min=1), torch.ones_like(union))
            out.min_mask_iou = float(ious.min())
        if out.max_box_px > BOX_PX:
            out.problems.append(f"boxes differ by up to {out.max_box_px:.3g} px (tolerance {BOX_PX:g})")
        if out.max_score > SCORE:
            out.problems.append(f"scores differ by up to {out.max_score:.3g} (tolerance {SCORE:g})")
        if out.min_mask_iou < MASK_IOU:
            out.problems.append(f"a mask IoU of {out.min_mask_iou:.3f} (at least {MASK_IOU} wanted)")
    return out
