"""``--amp auto`` (#39 item 3): the faster of float32 and bf16 for this model here, measured once with the
clock (a fake one in these tests, so the machine's speed decides nothing), remembered, and overridable."""

from __future__ import annotations

import json
import logging

import pytest
import torch
from torch import nn

from segtune.models import fastest
from segtune.models.precision import inference_precision
from tests.conftest import FakeClock

CPU = torch.device("cpu")


class Timed(nn.Module):
    """A model that "takes" ``fp32`` seconds of the fake clock per call in float32 and ``bf16`` under autocast."""

    def __init__(self, clock: FakeClock, fp32: float, bf16: float) -> None:
        super().__init__()
        self.conv = nn.Conv2d(3, 4, 3)
        self.clock, self.cost = clock, {False: fp32, True: bf16}
        self.calls = {False: 0, True: 0}
        self.memory_formats: list[bool] = []  # channels-last weights at each call

    def forward(self, images: list[torch.Tensor]) -> list[dict[str, torch.Tensor]]:
        low = torch.is_autocast_enabled("cpu")
        self.calls[low] += 1
        self.memory_formats.append(self.conv.weight.is_contiguous(memory_format=torch.channels_last)
                                   and not self.conv.weight.is_contiguous())
        self.clock.advance(self.cost[low])
        return [{"boxes": self.conv(image[None]).new_zeros((0, 4))} for image in images]


@pytest.fixture
def clock(monkeypatch: pytest.MonkeyPatch, tmp_path) -> FakeClock:
    monkeypatch.setenv("SEGTUNE_CACHE_DIR", str(tmp_path / "cache"))  # each test its own remembered choices
    fake = FakeClock(tick=0.0)
    monkeypatch.setattr(fastest, "now", fake)
    return fake


@pytest.mark.parametrize(("fp32", "bf16", "chosen"), [(0.25, 0.125, "bf16"), (0.125, 0.5, "none")])
def test_the_faster_format_is_chosen_and_remembered(clock: FakeClock, fp32: float, bf16: float, chosen: str,
                                                    caplog: pytest.LogCaptureFixture) -> None:
    model = Timed(clock, fp32, bf16)
    with caplog.at_level(logging.INFO, logger="segtune"):
        dtype = inference_precision(model, "auto", CPU)
    assert dtype == (torch.bfloat16 if chosen == "bf16" else None)
    assert model.calls == {False: 3, True: 3}  # one warm-up and two timed calls each
    assert "measuring float32 against bf16" in caplog.text
    assert f"float32 {fp32 * 1000} ms, bf16 {bf16 * 1000} ms" in caplog.text
    # bf16 was timed with channels-last weights; float32 keeps (or gets back) its contiguous ones.
    assert model.memory_formats == [False] * 3 + [True] * 3
    assert model.conv.weight.is_contiguous() == (chosen == "none")

    record = json.loads(fastest.cache_file().read_text())[f"{fastest.machine_key(CPU)}|{fastest.model_key(model)}"]
    assert record["amp"] == chosen and record["ms"] == {"none": fp32 * 1000, "bf16": bf16 * 1000}

    # The next run of the same model on this machine reads the choice and runs nothing to make it.
    again = Timed(clock, fp32, bf16)
    caplog.clear()
    with caplog.at_level(logging.INFO, logger="segtune"):
        assert inference_precision(again, "auto", CPU) == dtype
    assert again.calls == {False: 0, True: 0} and "remembered in" in caplog.text


def test_asking_for_a_format_measures_nothing(clock: FakeClock) -> None:
    for amp, dtype in (("none", None), ("bf16", torch.bfloat16)):
        model = Timed(clock, 0.125, 0.25)
        assert inference_precision(model, amp, CPU) is dtype and model.calls == {False: 0, True: 0}


def test_another_model_or_thread_count_is_measured_again(clock: FakeClock, monkeypatch: pytest.MonkeyPatch) -> None:
    first, wider = Timed(clock, 0.125, 0.25), Timed(clock, 0.25, 0.125)
    wider.conv = nn.Conv2d(3, 8, 3)  # another architecture: more parameters
    assert inference_precision(first, "auto", CPU) is None
    assert inference_precision(wider, "auto", CPU) is torch.bfloat16 and wider.calls[True] == 3
    monkeypatch.setattr(torch, "get_num_threads", lambda: 64)
    third = Timed(clock, 0.25, 0.125)
    assert inference_precision(third, "auto", CPU) is torch.bfloat16 and third.calls[True] == 3


def test_an_unreadable_cache_is_measured_again_and_rewritten(clock: FakeClock) -> None:
    fastest.cache_file().parent.mkdir(parents=True, exist_ok=True)
    fastest.cache_file().write_text("{not json")
    model = Timed(clock, 0.25, 0.125)
    assert inference_precision(model, "auto", CPU) is torch.bfloat16
    assert json.loads(fastest.cache_file().read_text())  # whole again


def test_time_runs_takes_the_median_after_a_warm_up(clock: FakeClock) -> None:
    costs = iter([9.0, 1.0, 3.0, 2.0])  # the warm-up (9 s) is not counted
    assert fastest.time_runs({"x": lambda: clock.advance(next(costs))}, repeats=3) == {"x": 2.0}
