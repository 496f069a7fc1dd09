"""Hooks driven by a stand-in trainer: TensorBoard files, results.png, early stopping, rank 0 only, callbacks."""

from __future__ import annotations

from pathlib import Path
from types import SimpleNamespace

import pytest
import torch
from PIL import Image

from segtune.engine import hooks as hooks_mod
from segtune.engine.hooks import HOOKS, CallbackHook, EarlyStopping, Hook, HookList, flatten_record, select_metric
from segtune.engine.log_hooks import ResultsPlotHook, TensorBoardHook
from segtune.errors import ConfigError


def make_trainer(tmp_path: Path) -> SimpleNamespace:
    model = torch.nn.Linear(2, 1)
    optimizer = torch.optim.SGD(model.parameters(), lr=0.02)
    return SimpleNamespace(run_dir=tmp_path, cfg=None, model=model, optimizer=optimizer, epoch=0, step=0, history=[],
                           stop_training=False)


def make_record(epoch: int, ap: float, *, segm: bool = True, **extra) -> dict:
    """One epoch's entry of metrics.json."""
    metrics = {"bbox": {"AP": ap, "AP50": ap + 0.2, "AP75": ap - 0.05, "APs": -1.0}}
    if segm:
        metrics["segm"] = {"AP": ap - 0.1, "AP50": ap + 0.1, "AP75": ap - 0.1}
    return {"epoch": epoch, "step": 10 * (epoch + 1), "lr": 0.02,
            "train": {"loss": 2.0 - epoch * 0.3, "loss_classifier": 0.5, "loss_mask": 0.7 - epoch * 0.1,
                      "time_s": 12.0, "iters": 10},
            "metrics": metrics, "eval_time_s": 1.5, "detections": 40, **extra}


def run_epochs(hooks: HookList, trainer: SimpleNamespace, aps: list[float], **record_kwargs) -> None:
    """The trainer's order of calls, for len(aps) epochs of two steps each."""
    hooks.before_train(trainer)
    for epoch, ap in enumerate(aps):
        trainer.epoch = epoch
        hooks.before_epoch(trainer, epoch)
        for _ in range(2):
            trainer.step += 1
            hooks.after_step(trainer, trainer.step, {"loss": 1.0 / trainer.step, "loss_mask": 0.5})
        record = make_record(epoch, ap, **record_kwargs)
        hooks.after_eval(trainer, epoch, record["metrics"])
        trainer.history.append(record)
        hooks.after_epoch(trainer, epoch, record)
        if trainer.stop_training:
            break
    hooks.after_train(trainer, None)


def test_tensorboard_event_files_hold_step_and_epoch_scalars(tmp_path: Path) -> None:
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    trainer = make_trainer(tmp_path)
    hook = TensorBoardHook(tmp_path / "tb")
    run_epochs(HookList([hook]), trainer, [0.3, 0.5])
    assert hook.writer is None  # closed
    assert list((tmp_path / "tb").glob("events.out.tfevents.*"))
    acc = EventAccumulator(str(tmp_path / "tb"))
    acc.Reload()
    tags = set(acc.Tags()["scalars"])
    assert {"step/loss", "step/loss_mask", "step/lr", "train/loss", "train/loss_mask", "bbox/AP", "bbox/AP50",
            "segm/AP", "lr", "eval_time_s"} <= tags

    def values(tag: str) -> list[tuple[int, float]]:
        return [(e.step, e.value) for e in acc.Scalars(tag)]

    assert values("step/loss") == [(1, 1.0), (2, 0.5), (3, pytest.approx(1 / 3)), (4, 0.25)]
    assert values("step/lr") == [(s, pytest.approx(0.02)) for s in range(1, 5)]
    assert values("bbox/AP") == [(0, pytest.approx(0.3)), (1, pytest.approx(0.5))]
    assert values("train/loss") == [(0, pytest.approx(2.0)), (1, pytest.approx(1.7))]


def test_flatten_record_drops_the_metrics_level() -> None:
    flat = flatten_record(make_record(3, 0.4, ema={"bbox": {"AP": 0.45}}, val={"loss": 1.1}, note="text"))
    assert flat["bbox/AP"] == pytest.approx(0.4) and flat["segm/AP50"] == pytest.approx(0.5)
    assert flat["train/loss_mask"] == pytest.approx(0.4) and flat["lr"] == 0.02
    assert flat["ema/bbox/AP"] == 0.45 and flat["val/loss"] == 1.1
    assert "epoch" not in flat and "step" not in flat and "note" not in flat


def test_results_png_is_written_each_epoch(tmp_path: Path) -> None:
    trainer = make_trainer(tmp_path)
    hook = ResultsPlotHook(tmp_path)
    hooks = HookList([hook])
    hooks.before_train(trainer)
    record = make_record(0, 0.2)
    hooks.after_epoch(trainer, 0, record)  # not yet in history: drawn anyway
    first = (tmp_path / "results.png").read_bytes()
    assert first.startswith(b"\x89PNG\r\n\x1a\n")
    trainer.history = [record]
    run_epochs(hooks, trainer, [0.2, 0.35, 0.5], ema={"bbox": {"AP": 0.4, "AP50": 0.6}}, val={"loss": 1.0})
    data = (tmp_path / "results.png").read_bytes()
    assert data != first
    with Image.open(tmp_path / "results.png") as image:
        image.verify()
        assert image.format == "PNG" and image.size[0] > 300 and image.size[1] > 200
    assert [p.name for p in tmp_path.iterdir()] == ["results.png"]  # no temporary file left behind


def test_results_plot_of_boxes_only_and_empty_history(tmp_path: Path) -> None:
    hook = ResultsPlotHook(tmp_path, filename="plot.png")
    assert hook.write([]) is None and not (tmp_path / "plot.png").exists()
    path = hook.write([make_record(0, 0.1, segm=False), make_record(1, 0.2, segm=False)])
    assert path == tmp_path / "plot.png" and path.read_bytes().startswith(b"\x89PNG")


def test_early_stopping_after_patience_epochs_without_improvement(tmp_path: Path) -> None:
    trainer = make_trainer(tmp_path)
    stopper = EarlyStopping("auto", patience=3)
    hooks = HookList([stopper])
    hooks.before_train(trainer)
    # segm AP = AP - 0.1: best at epoch 1, then three epochs that do not beat it (equal is no better).
    stopped_after = None
    for epoch, ap in enumerate([0.3, 0.5, 0.4, 0.5, 0.45, 0.9]):
        record = make_record(epoch, ap)
        trainer.history.append(record)
        hooks.after_epoch(trainer, epoch, record)
        if trainer.stop_training:
            stopped_after = epoch
            break
    assert stopped_after == 4
    assert stopper.best == pytest.approx(0.4) and stopper.best_epoch == 1 and stopper.bad_epochs == 3


def test_early_stopping_resumes_its_count_from_history(tmp_path: Path) -> None:
    trainer = make_trainer(tmp_path)
    trainer.history = [make_record(0, 0.5, segm=False), make_record(1, 0.4, segm=False),
                       {"epoch": 2, "metrics": {}}]  # an epoch without evaluation does not count
    stopper = EarlyStopping("bbox/AP50", patience=2)
    stopper.before_train(trainer)
    assert (stopper.best, stopper.best_epoch, stopper.bad_epochs) == (pytest.approx(0.7), 0, 1)
    stopper.after_epoch(trainer, 3, make_record(3, 0.45, segm=False))
    assert trainer.stop_training is True


def test_select_metric_and_its_errors() -> None:
    both = make_record(0, 0.5)["metrics"]
    boxes = make_record(0, 0.5, segm=False)["metrics"]
    assert select_metric(both) == ("segm/AP", pytest.approx(0.4))
    assert select_metric(boxes, "auto") == ("bbox/AP", pytest.approx(0.5))
    assert select_metric(both, "bbox/AP75") == ("bbox/AP75", pytest.approx(0.45))
    with pytest.raises(ConfigError, match=r"'segm/AP' is not in the evaluation results; choose auto or one of: bbox/"):
        select_metric(boxes, "segm/AP")
    with pytest.raises(ConfigError, match="early_stop_patience"):
        EarlyStopping(patience=0)


class Recorder(Hook):
    def __init__(self, name: str, calls: list, main_only: bool) -> None:
        self.name, self.calls, self.main_process_only = name, calls, main_only

    def before_epoch(self, trainer, epoch):
        self.calls.append((self.name, "before_epoch", epoch))

    def after_step(self, trainer, step, losses):
        self.calls.append((self.name, "after_step", step))


@pytest.mark.parametrize("main", [True, False])
def test_main_process_only_hooks_skip_other_ranks(tmp_path: Path, monkeypatch: pytest.MonkeyPatch,
                                                  main: bool) -> None:
    monkeypatch.setattr(hooks_mod, "is_main_process", lambda: main)
    calls: list = []
    writer = TensorBoardHook(tmp_path / "tb")
    hooks = HookList([Recorder("all", calls, False), Recorder("rank0", calls, True), writer])
    hooks.before_epoch(make_trainer(tmp_path), 0)
    hooks.after_step(make_trainer(tmp_path), 1, {"loss": 1.0})
    hooks.after_train(make_trainer(tmp_path), None)
    if main:
        assert calls == [("all", "before_epoch", 0), ("rank0", "before_epoch", 0), ("all", "after_step", 1),
                         ("rank0", "after_step", 1)]
        assert (tmp_path / "tb").is_dir()
    else:
        assert calls == [("all", "before_epoch", 0), ("all", "after_step", 1)]
        assert not (tmp_path / "tb").exists()  # only rank 0 writes


def test_callback_hook_runs_user_functions(tmp_path: Path) -> None:
    seen: list = []
    hook = CallbackHook({
        "before_train": lambda t: seen.append("start"),
        "after_step": lambda t, step, losses: seen.append(("step", step, losses["loss"])),
        "after_eval": lambda t, epoch, metrics: seen.append(("eval", epoch, metrics["bbox"]["AP"])),
        "after_epoch": lambda t, epoch, record: seen.append(("epoch", epoch, record["epoch"])),
        "after_train": lambda t, result: seen.append(("end", result)),
    })
    assert hook.main_process_only is True
    run_epochs(HookList([hook]), make_trainer(tmp_path), [0.25])
    assert seen == ["start", ("step", 1, 1.0), ("step", 2, 0.5), ("eval", 0, 0.25), ("epoch", 0, 0), ("end", None)]
    with pytest.raises(ValueError, match="unknown event 'on_epoch_end'; choose from: before_train"):
        CallbackHook({"on_epoch_end": print})
    with pytest.raises(ValueError, match="not callable"):
        CallbackHook({"after_epoch": "print"})


def test_built_in_hooks_are_registered_and_built_from_the_registry_as_the_config_asks(tmp_path) -> None:
    from types import SimpleNamespace

    from segtune.config import build_config
    from segtune.engine.default_hooks import DEFAULT_HOOKS, build_hooks

    assert HOOKS.names() == ["callback", "checkpoints", "early_stopping", "ema", "evaluation", "metrics_files",
                             "report", "results_plot", "tensorboard", "test_set", "time_budget", "val_loss"]
    assert HOOKS.get("early_stopping") is EarlyStopping
    assert all(name in HOOKS for name, _ in DEFAULT_HOOKS)
    trainer = SimpleNamespace(cfg=build_config(), run_dir=tmp_path)
    assert [h.name for h in build_hooks(trainer)] == ["evaluation", "val_loss", "metrics_files", "checkpoints",
                                                      "results_plot", "tensorboard", "report"]
    trainer.cfg = build_config(("test", {"train.val_loss": False, "train.tensorboard": False, "train.report": False,
                                         "train.early_stop_patience": 2, "train.time_limit": 5.0}))
    trainer.dist = SimpleNamespace(world_size=1)
    hooks = build_hooks(trainer)
    assert [h.name for h in hooks] == ["time_budget", "evaluation", "metrics_files", "checkpoints", "results_plot",
                                       "early_stopping"]
    assert hooks[-1].patience == 2 and hooks[0].budget.limit_s == 300.0


def test_the_engine_reads_only_what_trainer_view_lists_of_the_trainer() -> None:
    """The hooks' surface is the documented one: every ``trainer.<name>`` in the engine is in TrainerView."""
    import re

    import segtune.engine
    from segtune.engine.hooks import TrainerView

    allowed = set(TrainerView.__annotations__) | {"max_steps", "end_training"}
    engine = Path(segtune.engine.__file__).parent
    read = {name for path in engine.glob("*.py") if path.name != "trainer.py"
            for name in re.findall(r"\btrainer\.([a-z_]+)", path.read_text(encoding="utf-8"))}
    assert read and read <= allowed, sorted(read - allowed)
