"""The training engine driven as a user drives it: exact resume, stops, seeds, hooks, optimisers, outputs."""

from __future__ import annotations

import json
import logging
import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch

from segtune.cli.main import main
from segtune.engine import configure, train
from segtune.engine.hooks import CallbackHook
from tests.conftest import SMALL_MODEL, make_mask_folder

ROOT = Path(__file__).resolve().parents[2]


@pytest.fixture(scope="module")
def data(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return make_mask_folder(tmp_path_factory.mktemp("engine") / "data", n=6)


def settings(data: Path, out: Path, **extra) -> dict:
    return {"data.path": str(data), "train.out": str(out), "train.epochs": 2, "train.max_iters_per_epoch": 3,
            "data.test_size": 2, "train.batch_size": 1, "train.print_freq": 1, "train.tensorboard": False,
            **SMALL_MODEL, **extra}


def weights(run: Path, name: str = "last.pt") -> dict[str, torch.Tensor]:
    return torch.load(run / "weights" / name, map_location="cpu", weights_only=True)["model"]


def test_interrupted_run_resumes_to_the_same_weights_bit_for_bit(data: Path, tmp_path: Path) -> None:
    whole = train(configure(("test", settings(data, tmp_path / "whole"))))
    assert [r["epoch"] for r in whole.history] == [0, 1]

    # Stop after 4 of the 6 optimiser steps (epoch 1, iteration 1), the way Ctrl-C does.
    stopper = CallbackHook({"after_step": lambda trainer, step, losses: setattr(trainer, "stop_training", step == 4)})
    part = train(configure(("test", settings(data, tmp_path / "part"))), hooks=[stopper])
    assert [r["epoch"] for r in part.history] == [0]
    state = torch.load(part.run_dir / "weights" / "last.pt", map_location="cpu", weights_only=True)
    assert (state["epoch"], state["iteration"], state["step"]) == (1, 1, 4)

    resumed = train(configure(("test", settings(data, tmp_path / "part", **{"train.resume": str(part.run_dir)}))))
    assert resumed.run_dir == part.run_dir
    assert [r["epoch"] for r in resumed.history] == [0, 1]
    a, b = weights(whole.run_dir), weights(part.run_dir)
    assert a.keys() == b.keys()
    assert all(torch.equal(a[k], b[k]) for k in a), "resumed weights differ from the uninterrupted run's"
    assert resumed.history[1]["metrics"] == whole.history[1]["metrics"]


def test_same_seed_gives_identical_losses_and_another_seed_does_not(data: Path, tmp_path: Path) -> None:
    runs = [train(configure(("test", settings(data, tmp_path / f"r{i}", **{"train.epochs": 1, "train.seed": s,
                                                                        "train.deterministic": True}))))
            for i, s in enumerate((3, 3, 4))]
    losses = [r.history[0]["train"]["loss"] for r in runs]
    assert losses[0] == losses[1] and losses[0] != losses[2]


#: ``python SCRIPT STEP ARGS...``: ``segtune ARGS...`` with one more built-in hook, which sends this process
#: SIGINT (Ctrl-C) right after optimiser step STEP: the stop comes at a known step, whatever the machine's speed.
_SIGINT_AT_STEP = """
import os, signal, sys

from segtune.cli.main import main
from segtune.engine import default_hooks
from segtune.engine.hooks import HOOKS, Hook

STEP = int(sys.argv[1])


@HOOKS.register("test_sigint_at_step")
class SigintAtStep(Hook):
    def after_step(self, trainer, step, losses):
        if step == STEP:
            os.kill(os.getpid(), signal.SIGINT)


default_hooks.DEFAULT_HOOKS.append(("test_sigint_at_step", lambda cfg: True))
raise SystemExit(main(sys.argv[2:]))
"""


def test_sigint_writes_last_pt_and_exits_with_a_resume_hint(data: Path, tmp_path: Path) -> None:
    run = tmp_path / "run"
    args = ["train", "--data", str(data), "--out", str(run), "--epochs", "1", "--batch-size", "1",
            "--test-size", "2", "--print-freq", "1", "--tensorboard", "false",
            *[f"{k}={v}" for k, v in SMALL_MODEL.items()]]
    script = tmp_path / "sigint_at_step.py"
    script.write_text(_SIGINT_AT_STEP)
    env = {**os.environ, "PYTHONPATH": os.pathsep.join([str(ROOT / "src"), os.environ.get("PYTHONPATH", "")])}
    # An epoch is 4 iterations (6 images, 2 for the test split, batch 1); Ctrl-C after step 2.
    done = subprocess.run([sys.executable, str(script), "2", *args], capture_output=True, text=True, env=env,
                          timeout=300)
    out = done.stdout + done.stderr
    assert done.returncode == 130, out
    assert "SIGINT received" in out and "stopped by signal SIGINT at epoch 0, iteration 2" in out
    assert f"resume with  segtune train --resume {run}" in out
    state = torch.load(run / "weights" / "last.pt", map_location="cpu", weights_only=True)
    assert (state["epoch"], state["iteration"], state["step"]) == (0, 2, 2)
    assert not (run / "metrics.json").exists() or json.loads((run / "metrics.json").read_text()) == []

    # Resuming takes the run's config and goes on from step 3: steps 3 and 4 end epoch 0.
    steps: list[int] = []
    recorder = CallbackHook({"after_step": lambda trainer, step, losses: steps.append(step)})
    resumed = train(configure(("resume", {"train.resume": str(run)})), hooks=[recorder])
    assert resumed.run_dir == run and steps == [3, 4]
    assert [r["epoch"] for r in resumed.history] == [0] and resumed.history[0]["step"] == 4
    history = json.loads((run / "metrics.json").read_text())
    assert [r["epoch"] for r in history] == [0]
    assert torch.load(run / "weights" / "last.pt", map_location="cpu", weights_only=True)["step"] == 4


def test_adamw_cosine_accumulation_ema_and_outputs(data: Path, tmp_path: Path) -> None:
    seen: list[str] = []
    hook = CallbackHook({"before_epoch": lambda t, e: seen.append(f"epoch{e}"),
                         "after_eval": lambda t, e, m: seen.append(f"eval{e}")})
    result = train(configure(("test", settings(data, tmp_path / "run", **{
        "train.optimizer": "adamw", "train.lr": 1e-4, "train.weight_decay": 0.05, "train.no_decay_norm": True,
        "train.schedule": "cosine", "train.accumulate": 2, "train.ema": True, "train.keep_last": 1,
        "train.tensorboard": True}))), hooks=[hook])
    run = result.run_dir
    assert seen == ["epoch0", "eval0", "epoch1", "eval1"]
    assert result.history[-1]["step"] == 4  # 2 epochs x ceil(3 batches / 2)
    assert set(result.history[-1]["ema"]) == {"bbox", "segm"}
    names = sorted(p.name for p in (run / "weights").iterdir())
    assert names == ["best.pt", "ema.pt", "epoch-1.pt", "last.pt"]
    assert (run / "results.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    assert any((run / "tb").iterdir())
    state = torch.load(run / "weights" / "last.pt", map_location="cpu", weights_only=True)
    assert state["optimizer"]["param_groups"][0]["weight_decay"] == 0.05
    assert state["optimizer"]["param_groups"][1]["weight_decay"] == 0.0
    # The EMA checkpoint is a normal checkpoint: evaluate takes it.
    assert main(["evaluate", str(run / "weights" / "ema.pt")]) == 0


def test_early_stopping_ends_the_run(data: Path, tmp_path: Path) -> None:
    result = train(configure(("test", settings(data, tmp_path / "run", **{
        "train.epochs": 6, "train.max_iters_per_epoch": 1, "train.early_stop_patience": 1,
        "train.early_stop_metric": "bbox/AR100", "train.lr": 1e-12}))))
    assert 2 <= len(result.history) < 6


def test_bf16_autocast_on_cpu_trains_and_warns_where_the_cpu_lacks_bf16(
        data: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture) -> None:
    from segtune.models import precision

    monkeypatch.setattr(precision, "cpu_has_native_bf16", lambda: False)  # as on a CPU without AVX-512 BF16
    seen = {}
    hook = CallbackHook({"before_epoch": lambda trainer, epoch: seen.setdefault("model", trainer.model)})
    with caplog.at_level(logging.WARNING, logger="segtune.train"):
        result = train(configure(("test", settings(data, tmp_path / "run", **{"train.amp": "bf16", "train.epochs": 1}))),
                       hooks=[hook])
    assert torch.isfinite(torch.tensor(result.history[0]["train"]["loss"]))
    assert "no native bfloat16 instructions" in caplog.text and "--amp none" in caplog.text
    # the proposals stay float32 (tests/engine/test_amp.py: else a thin box gives a NaN box loss)
    head = seen["model"].rpn.head
    with torch.autocast("cpu", dtype=torch.bfloat16):
        objectness, deltas = head([torch.rand(1, head.cls_logits.in_channels, 8, 8)])
    assert objectness[0].dtype == deltas[0].dtype == torch.float32


def test_fp16_on_cpu_is_a_clear_error(data: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["train", "--data", str(data), "--out", str(tmp_path / "run"), "--amp", "fp16", "--device", "cpu",
                 *[f"{k}={v}" for k, v in SMALL_MODEL.items()]]) == 2
    assert "fp16 needs a CUDA device" in capsys.readouterr().err


def test_resume_latest_finds_the_newest_run(tmp_path: Path) -> None:
    from segtune.engine.state import find_resume_checkpoint
    from segtune.errors import ConfigError

    with pytest.raises(ConfigError, match="no run with weights/last.pt"):
        find_resume_checkpoint("latest", tmp_path / "runs" / "train")
    for i, name in enumerate(("train", "train-2")):
        last = tmp_path / "runs" / name / "weights" / "last.pt"
        last.parent.mkdir(parents=True)
        last.write_bytes(b"x")
        os.utime(last, (1000 + i, 1000 + i))
    assert find_resume_checkpoint("latest", tmp_path / "runs" / "train") == tmp_path / "runs" / "train-2" / "weights" / "last.pt"
    assert find_resume_checkpoint(str(tmp_path / "runs" / "train"), "x") == tmp_path / "runs" / "train" / "weights" / "last.pt"
