"""Shared fixtures: tiny synthetic data sets written in tmp_path, and the real Penn-Fudan folder."""

from __future__ import annotations

import os
import tempfile
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

# The data checks of test data sets are remembered here, not in the user's ~/.cache (subprocesses inherit it).
os.environ["SEGTUNE_CACHE_DIR"] = tempfile.mkdtemp(prefix="segtune-test-cache-")

PENNFUDAN = Path(os.environ.get("SEGTUNE_DATA", Path(__file__).resolve().parents[1] / ".." / "shared" / "data" / "PennFudanPed"))

# Small model settings so a Mask R-CNN step runs in about a second on a CPU.
TINY_MODEL = {
    "model.weights": "none", "model.weights_backbone": "none", "model.min_size": 64, "model.max_size": 96,
    "model.rpn_pre_nms_top_n_train": 100, "model.rpn_post_nms_top_n_train": 50,
    "model.rpn_pre_nms_top_n_test": 50, "model.rpn_post_nms_top_n_test": 25,
    "model.box_batch_size_per_image": 32, "model.box_detections_per_img": 20,
}


def make_mask_folder(root: Path, n: int = 6, size: tuple[int, int] = (72, 96), empty: tuple[int, ...] = (0,),
                     seed: int = 0) -> Path:
    """Write ``n`` RGB images with 1-2 filled rectangles each and their instance masks (Penn-Fudan layout).

    Images listed in ``empty`` have no object. Returns ``root``.
    """
    rng = np.random.default_rng(seed)
    h, w = size
    (root / "PNGImages").mkdir(parents=True, exist_ok=True)
    (root / "PedMasks").mkdir(parents=True, exist_ok=True)
    for i in range(n):
        image = rng.integers(0, 60, size=(h, w, 3), dtype=np.uint8)
        mask = np.zeros((h, w), dtype=np.uint8)
        if i not in empty:
            for k in range(1, 1 + (i % 2) + 1):
                y0, x0 = int(rng.integers(0, h // 2)), int(rng.integers(0, w // 2))
                y1, x1 = y0 + int(rng.integers(12, h // 2)), x0 + int(rng.integers(12, w // 2))
                mask[y0:y1, x0:x1] = k
                image[y0:y1, x0:x1] = (200, 60 * k, 40)
        Image.fromarray(image).save(root / "PNGImages" / f"img{i:03d}.png")
        Image.fromarray(mask, mode="L").save(root / "PedMasks" / f"img{i:03d}_mask.png")
    return root


def short_run_settings(data: Path, out: Path, **extra) -> dict:
    """Settings of a few-step Mask R-CNN run on a synthetic data set (low lr and clipping: random weights)."""
    return {"data.path": str(data), "train.out": str(out), "train.device": "cpu", "train.epochs": 1,
            "train.max_iters_per_epoch": 2, "train.batch_size": 2, "train.lr": 0.002, "train.clip_grad_norm": 5.0,
            "train.tensorboard": False, "train.val_loss": False, "train.augment": [], **TINY_MODEL, **extra}


@pytest.fixture(autouse=True)
def _no_report_outside_its_tests(request: pytest.FixtureRequest, monkeypatch: pytest.MonkeyPatch) -> None:
    """Training runs in this process write no report.html except in tests/report (and test_hooks, which
    checks the list): drawing it takes seconds, paid by every short run of the suite otherwise."""
    if request.node.path.parent.name == "report" or request.node.path.name == "test_hooks.py":
        return
    from segtune.engine import default_hooks

    monkeypatch.setattr(default_hooks, "DEFAULT_HOOKS", [h for h in default_hooks.DEFAULT_HOOKS if h[0] != "report"])


class FakeClock:
    """A training clock that ignores the machine's speed: every reading is ``tick`` seconds after the last.
    The readings per optimiser step are fixed by the code, so a run under a time limit takes the same steps
    on an idle laptop and on a loaded CI runner."""

    def __init__(self, tick: float) -> None:
        self.now, self.tick = 0.0, tick

    def __call__(self) -> float:
        self.now += self.tick
        return self.now


@pytest.fixture
def fake_training_clock(monkeypatch: pytest.MonkeyPatch):
    """``fake_training_clock(tick)`` puts a :class:`FakeClock` behind segtune's training clock."""
    from segtune.engine import budget

    def install(tick: float) -> FakeClock:
        clock = FakeClock(tick)
        monkeypatch.setattr(budget, "now", clock)
        return clock

    return install


@pytest.fixture
def mask_folder(tmp_path: Path) -> Path:
    return make_mask_folder(tmp_path / "data")


@pytest.fixture
def pennfudan() -> Path:
    if not (PENNFUDAN / "PNGImages").is_dir():
        pytest.skip(f"Penn-Fudan not found at {PENNFUDAN}")
    return PENNFUDAN
