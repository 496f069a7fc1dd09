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

# --- skips in CI -------------------------------------------------------------------------------------
# A test skips where something it needs is missing: Chromium (tests/report), Penn-Fudan at
# ../shared/data/PennFudanPed (the ``pennfudan`` fixture). CI provides all of them (.ci/run sets CI=true), so
# there a skip means CI lost something: with CI set, every skip fails the test instead, except the skips
# whose reason contains a key of CI_ALLOWED_SKIPS (legitimately machine-dependent; each says why).
# Today's skips, all of them CI failures: the ``pennfudan`` fixture below ("Penn-Fudan not found"), the
# ``browser`` fixture of tests/report/conftest.py (no selenium / chromium / chromedriver, or it fails to
# start). tests/engine/test_backward_compat.py skipped without git history; it ships the old code now.

#: Skip reasons (substrings) that CI accepts, each with why the skip depends on the machine, not on CI.
#: Empty today: no test skips for a machine's hardware (the bf16 tests emulate a CPU without bf16).
CI_ALLOWED_SKIPS: dict[str, str] = {}


def running_in_ci() -> bool:
    """True where the environment variable CI is set to anything but empty, 0, false or no."""
    return os.environ.get("CI", "").strip().lower() not in ("", "0", "false", "no")


def pytest_report_header(config: pytest.Config) -> list[str]:
    if not running_in_ci():
        return ["segtune skips: CI is not set, so a test whose data or browser is missing skips"]
    lines = ["segtune skips: CI is set, so a skipped test FAILS unless its reason is allowed:"]
    lines += [f"  allowed skip {key!r}: {why}" for key, why in CI_ALLOWED_SKIPS.items()] or ["  (none allowed)"]
    return lines


@pytest.hookimpl(hookwrapper=True)
def pytest_runtest_makereport(item: pytest.Item, call: pytest.CallInfo):
    """Under CI, turn a skip (in setup, as a fixture skips, or in the test) into a failure."""
    outcome = yield
    report = outcome.get_result()
    if not (report.skipped and running_in_ci()) or hasattr(report, "wasxfail"):
        return
    reason = report.longrepr[2] if isinstance(report.longrepr, tuple) else str(report.longrepr)
    if any(key in reason for key in CI_ALLOWED_SKIPS):
        return
    report.outcome = "failed"
    report.longrepr = (f"skipped under CI={os.environ.get('CI')!r}, where a skip is a failure: {reason}\n"
                       f"CI must provide what this test needs; a skip that depends on the machine and not on CI "
                       f"belongs in CI_ALLOWED_SKIPS (tests/conftest.py) with the reason why")


# Small model settings so a Mask R-CNN step runs in about a second on a CPU.
TINY_MODEL = {
    "model.weights": "none", "model.weights_backbone": "none", "model.min_size": 64, "model.max_size": 96,
    "model.rpn_pre_nms_top_n_train": 100, "model.rpn_post_nms_top_n_train": 50,
    "model.rpn_pre_nms_top_n_test": 50, "model.rpn_post_nms_top_n_test": 25,
    "model.box_batch_size_per_image": 32, "model.box_detections_per_img": 20,
}

#: A Mask R-CNN on a small ResNet-18 FPN with narrow heads, on TINY_MODEL's small images: about half the time
#: of TINY_MODEL's ResNet-50 per run, for the tests of the training loop, the CLI and the outputs (not of an
#: architecture: those use TINY_MODEL).
SMALL_MODEL = {**TINY_MODEL, "model.name": "maskrcnn", "model.backbone": "resnet18", "model.fpn_channels": 32,
               "model.fpn_levels": 3, "model.anchor_sizes": "32,64,128,256", "model.box_head_dim": 64,
               "model.mask_head_channels": 16, "model.mask_hidden": 16}


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
            "train.tensorboard": False, "train.val_loss": False, "train.augment": [], **SMALL_MODEL, **extra}


@pytest.fixture(autouse=True)
def _no_report_outside_its_tests(request: pytest.FixtureRequest, monkeypatch: pytest.MonkeyPatch) -> None:
    """Training runs in this process write no report.html except in tests/report (and test_hooks, which
    checks the list): drawing it takes seconds, paid by every short run of the suite otherwise."""
    if request.node.path.parent.name == "report" or request.node.path.name == "test_hooks.py":
        return
    from segtune.engine import default_hooks

    monkeypatch.setattr(default_hooks, "DEFAULT_HOOKS", [h for h in default_hooks.DEFAULT_HOOKS if h[0] != "report"])


class FakeClock:
    """A training clock that ignores the machine's speed: every reading is ``tick`` seconds after the last,
    and :meth:`advance` moves it on by hand (a test's model "takes" its seconds this way instead of sleeping).
    The readings per optimiser step are fixed by the code, so a run under a time limit takes the same steps
    on an idle laptop and on a loaded CI runner. With ``tick=0`` only :meth:`advance` moves time, so the
    training time after ``k`` steps of ``s`` seconds is exactly ``k * s`` (pick binary fractions for ``s``)."""

    def __init__(self, tick: float) -> None:
        self.now, self.tick = 0.0, tick

    def __call__(self) -> float:
        self.now += self.tick
        return self.now

    def advance(self, seconds: float) -> None:
        self.now += seconds


@pytest.fixture
def fake_training_clock(monkeypatch: pytest.MonkeyPatch):
    """``fake_training_clock(tick)`` puts a :class:`FakeClock` behind segtune's training clock
    (``segtune.engine.budget.now``); with ``progress=True`` also behind the progress lines' clock (the ETA
    and s/it of :class:`segtune.engine.logger.EpochReporter`, which reads ``time.perf_counter`` itself)."""
    from segtune.engine import budget

    def install(tick: float, *, progress: bool = False) -> FakeClock:
        clock = FakeClock(tick)
        monkeypatch.setattr(budget, "now", clock)
        if progress:
            import types

            from segtune.engine import logger as progress_logger

            monkeypatch.setattr(progress_logger, "time", types.SimpleNamespace(perf_counter=clock))
        return clock

    return install


@pytest.fixture(scope="session")
def detector(tmp_path_factory: pytest.TempPathFactory):
    """A Mask R-CNN run that finds what it should (tests/detector.py), trained once per session."""
    from tests.detector import train_detector

    return train_detector(tmp_path_factory.mktemp("detector"))


@pytest.fixture
def mask_folder(tmp_path: Path) -> Path:
    return make_mask_folder(tmp_path / "data")


@pytest.fixture
def pennfudan() -> Path:
    if not (PENNFUDAN / "PNGImages").is_dir():
        pytest.skip(f"Penn-Fudan not found at {PENNFUDAN}")
    return PENNFUDAN
