"""The training state: every key a checkpoint holds is saved and put back by one table, older files included."""

from __future__ import annotations

import random
from pathlib import Path
from types import SimpleNamespace

import torch

from segtune.checkpoint import RunState, load_checkpoint, save_checkpoint
from segtune.config import build_config
from segtune.engine.budget import Stopwatch
from segtune.engine.hooks import Hook, HookList
from segtune.engine.state import TrainingState

#: The keys a resumed run is built from rather than given back (parts.build_parts reads them).
BUILT_FROM = {"classes", "category_ids", "config", "run", "split", "num_keypoints", "keypoint_names", "skeleton"}


class Counter(Hook):
    """A named hook with state, as the EMA hook is."""

    name = "counter"

    def __init__(self, count: int = 0) -> None:
        self.count = count

    def state_dict(self) -> dict:
        return {"count": self.count}

    def load_state_dict(self, state: dict) -> None:
        self.count = state["count"]


def make_trainer(*, seed: int = 0, keypoints: dict | None = None, count: int = 0) -> SimpleNamespace:
    """What TrainingState reads and sets of a trainer, with a real model, optimiser, schedule and scaler."""
    torch.manual_seed(seed)
    model = torch.nn.Linear(3, 2)
    optimizer = torch.optim.SGD(model.parameters(), lr=0.1, momentum=0.9)
    scheduler = torch.optim.lr_scheduler.LambdaLR(optimizer, lambda it: 1.0 / (1 + it))
    run = RunState(data_path="data", data_format="masks", classes=["a", "b"], category_ids=[1, 2], epochs=5)
    scaler = torch.amp.GradScaler("cuda", enabled=False)
    return SimpleNamespace(model=model, optimizer=optimizer, scheduler=scheduler, scaler=scaler, run=run,
                           cfg=build_config(), split={"train": ["x.png"], "test": ["y.png"]},
                           keypoints=keypoints or {}, hooks=HookList([Counter(count)]), epoch=0, step=0,
                           start_iteration=0, history=[], clock=Stopwatch(), resumed_from=None)


def test_every_saved_key_is_restored_or_read_when_the_run_is_built() -> None:
    keys = {key.name: key for key in TrainingState.KEYS}
    unrestored = {name for name, key in keys.items() if key.restore is None}
    assert unrestored == BUILT_FROM | {"hooks"}  # hooks: load_hook_states, once the hooks are made
    assert {name for name, key in keys.items() if key.resume_only} == {
        "optimizer", "scheduler", "scaler", "iteration", "rng", "train_time_s", "history", "hooks"}


def test_last_pt_round_trip_puts_the_run_back_exactly(tmp_path: Path) -> None:
    trainer = make_trainer(count=4)
    loss = trainer.model(torch.ones(1, 3)).sum()
    loss.backward()
    trainer.optimizer.step()  # momentum buffers to keep
    trainer.scheduler.step()
    trainer.epoch, trainer.step, trainer.clock = 2, 7, Stopwatch(3.5)
    trainer.history = [{"epoch": 0, "metrics": {"bbox": {"AP": 0.1}}}, {"epoch": 1, "metrics": {"bbox": {"AP": 0.2}}}]
    path = save_checkpoint(tmp_path / "last.pt", TrainingState(trainer).state_dict(iteration=3))
    expected_draws = (torch.rand(3), random.random())  # what the random streams give right after saving

    torch.rand(5), random.random()  # the streams move on
    resumed = make_trainer(seed=1)
    state = TrainingState(resumed)
    ckpt = load_checkpoint(path)
    state.load_state_dict(ckpt)
    state.load_hook_states(ckpt)
    assert (resumed.epoch, resumed.step, resumed.start_iteration) == (2, 7, 3)
    assert resumed.history == trainer.history and resumed.clock.elapsed == 3.5
    assert resumed.resumed_from == str(path)
    weights = zip(resumed.model.state_dict().values(), trainer.model.state_dict().values())
    assert all(torch.equal(a, b) for a, b in weights)
    momentum = [s["momentum_buffer"] for s in trainer.optimizer.state.values()]
    assert all(torch.equal(a["momentum_buffer"], b) for a, b in zip(resumed.optimizer.state.values(), momentum))
    assert resumed.scheduler.last_epoch == 1 and resumed.optimizer.param_groups[0]["lr"] == 0.05
    assert resumed.hooks.get("counter").count == 4
    assert torch.equal(torch.rand(3), expected_draws[0]) and random.random() == expected_draws[1]


def test_checkpoints_for_use_hold_no_training_state_and_keypoints_only_where_there_are() -> None:
    plain = TrainingState(make_trainer()).checkpoint()
    assert set(plain) == {"model", "epoch", "step", "classes", "category_ids", "config", "run", "split"}
    keypoints = {"num_keypoints": 2, "keypoint_names": ["l", "r"], "skeleton": [[1, 2]]}
    with_keypoints = TrainingState(make_trainer(keypoints=keypoints)).checkpoint()
    assert {k: with_keypoints[k] for k in keypoints} == keypoints
    last = TrainingState(make_trainer()).state_dict()
    assert set(last) - set(plain) == {"optimizer", "scheduler", "scaler", "iteration", "rng", "train_time_s",
                                      "history", "hooks"} and last["iteration"] == 0


def test_an_older_last_pt_without_the_newer_keys_resumes_with_their_starting_values(tmp_path: Path) -> None:
    """A last.pt from before the scaler, RNG, clock and hook states: what it lacks keeps the trainer's start
    value, and the EMA's state at the top level goes to the hook named ``ema``."""
    trainer = make_trainer()
    full = TrainingState(trainer).state_dict()
    old = {k: v for k, v in full.items() if k not in ("scaler", "iteration", "rng", "train_time_s", "history", "hooks")}

    class EMA(Counter):
        name = "ema"

    path = save_checkpoint(tmp_path / "last.pt", {**old, "epoch": 1, "step": 4, "ema": {"count": 9}})
    resumed = make_trainer(seed=1)
    resumed.hooks = HookList([EMA()])
    state = TrainingState(resumed)
    ckpt = load_checkpoint(path)
    state.load_state_dict(ckpt)
    state.load_hook_states(ckpt)
    assert (resumed.epoch, resumed.step, resumed.start_iteration, resumed.history) == (1, 4, 0, [])
    assert resumed.clock.elapsed == 0.0 and resumed.hooks.get("ema").count == 9
