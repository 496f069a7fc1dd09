"""The Predictor drops low scores inside the model (fewer masks computed and pasted) with the same answer."""

from __future__ import annotations

import numpy as np
import torch

from segtune.engine import configure
from segtune.models import build_from_config
from segtune.predict import Predictor
from tests.conftest import TINY_MODEL


def test_a_high_score_threshold_runs_the_mask_head_on_fewer_boxes_and_answers_the_same() -> None:
    torch.manual_seed(0)
    cfg = configure(("test", {"data.path": ".", **TINY_MODEL}))
    model = build_from_config(cfg.model, num_classes=3, classes=["a", "b"], load_weights=False).eval()
    model.roi_heads.score_thresh = 0.0
    rois: list[int] = []
    model.roi_heads.mask_roi_pool.register_forward_hook(lambda m, args, out: rois.append(out.shape[0]))
    rng = np.random.default_rng(0)
    image = rng.integers(0, 255, (90, 120, 3), dtype=np.uint8)
    everything = Predictor(model, ["a", "b"], score_threshold=0.0, amp="none")(image)
    scores = everything.scores.sort(descending=True).values
    assert len(scores) > 4
    threshold = float(scores[len(scores) // 2])  # a threshold that keeps half, the boundary score included
    kept = everything.scores >= threshold
    rois.clear()
    high = Predictor(model, ["a", "b"], score_threshold=threshold, amp="none")(image)
    assert rois == [int(kept.sum())]  # the mask head saw only what is kept
    assert model.roi_heads.score_thresh == 0.0  # the model is given back as it was
    order = everything.scores[kept].argsort(descending=True)
    torch.testing.assert_close(high.scores, everything.scores[kept][order])
    torch.testing.assert_close(high.boxes, everything.boxes[kept][order])
    assert torch.equal(high.masks, everything.masks[kept][order])
    assert high.labels.tolist() == everything.labels[kept][order].tolist()


def test_amp_bf16_answers_in_float32_close_to_float32() -> None:
    import copy

    torch.manual_seed(0)
    cfg = configure(("test", {"data.path": ".", **TINY_MODEL}))
    model = build_from_config(cfg.model, num_classes=3, classes=["a", "b"], load_weights=False).eval()
    model.roi_heads.score_thresh = 0.0
    image = np.random.default_rng(0).integers(0, 255, (90, 120, 3), dtype=np.uint8)
    fp32 = Predictor(copy.deepcopy(model), ["a", "b"], score_threshold=0.0, amp="none")(image)
    bf16_predictor = Predictor(model, ["a", "b"], score_threshold=0.0, amp="bf16")
    assert bf16_predictor.autocast_dtype == torch.bfloat16
    conv = next(m for m in model.modules() if isinstance(m, torch.nn.Conv2d))
    assert conv.weight.is_contiguous(memory_format=torch.channels_last)
    bf16 = bf16_predictor(image)
    assert len(fp32) > 0 and len(bf16) > 0
    assert bf16.scores.dtype == bf16.boxes.dtype == torch.float32
    # The same best detection, to bf16's precision (8 significant bits) carried through a random-weight
    # network: a few hundredths on the score, the exact figure depending on the CPU's bf16 kernels (native
    # or emulated: 0.027 on an AMD EPYC without AVX-512 BF16, 2026-12-07).
    a, b = fp32.scores.argmax(), bf16.scores.argmax()
    assert abs(float(fp32.scores[a]) - float(bf16.scores[b])) < 0.05
    torch.testing.assert_close(bf16.boxes[b], fp32.boxes[a], atol=2.0, rtol=0.0)
    assert Predictor(copy.deepcopy(model), ["a", "b"], amp="none").autocast_dtype is None


def test_an_unknown_amp_is_a_config_error() -> None:
    import pytest

    from segtune.errors import ConfigError

    with pytest.raises(ConfigError, match="--amp 'fp8'"):
        Predictor(torch.nn.Identity(), ["a"], amp="fp8")
