"""The EMA of weights: the closed-form average, the decay ramp, buffers, DDP unwrapping and resume."""

from __future__ import annotations

import io
import math
from types import SimpleNamespace

import pytest
import torch

from segtune.engine.ema import EMAHook, ModelEMA
from segtune.engine.presets import configure
from segtune.errors import ConfigError


class _Net(torch.nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.lin = torch.nn.Linear(2, 1)
        self.bn = torch.nn.BatchNorm1d(1)


def _set(model: _Net, value: float, tracked: int = 0) -> None:
    """Every weight, bias and running mean of ``model`` to ``value``; the BatchNorm counter to ``tracked``."""
    with torch.no_grad():
        for t in [*model.parameters(), model.bn.running_mean]:
            t.fill_(value)
        model.bn.num_batches_tracked.fill_(tracked)


def test_fixed_decay_matches_the_closed_form() -> None:
    d, weights = 0.9, [1.0, 3.0, -2.0, 5.0, 0.5]
    model = _Net()
    ema = ModelEMA(model, decay=d, tau=None)
    for k, w in enumerate(weights):
        _set(model, w, tracked=k + 1)
        ema.update(model)
    # Worked by hand: the first update copies the model, each later one is 0.9 x average + 0.1 x model.
    #   1.0;  0.9 x 1.0 + 0.1 x 3.0 = 1.2;  0.9 x 1.2 + 0.1 x -2.0 = 0.88;  0.9 x 0.88 + 0.1 x 5.0 = 1.292;
    #   0.9 x 1.292 + 0.1 x 0.5 = 1.2128
    k, expected = len(weights), 1.2128
    avg = ema.module
    assert avg.lin.weight.detach() == pytest.approx(torch.full((1, 2), expected))
    assert float(avg.lin.bias) == pytest.approx(expected)
    assert float(avg.bn.weight) == pytest.approx(expected)
    assert float(avg.bn.running_mean) == pytest.approx(expected)  # buffers are averaged too
    assert int(avg.bn.num_batches_tracked) == k  # counters follow the model
    assert float(model.lin.bias.detach()) == weights[-1]  # the trained model is untouched
    assert not any(p.requires_grad for p in avg.parameters()) and not avg.training


def test_the_ramp_on_numbers_worked_by_hand() -> None:
    # With tau = 1 / ln 2, exp(-n / tau) = 2^-n, so the documented ramp decay * (1 - exp(-n / tau)) is
    # 0.8 x (1 - 2^-n) after n updates: 0 (the first update copies the model), 0.4, 0.6, 0.7, ... up to 0.8.
    model = _Net()
    ema = ModelEMA(model, decay=0.8, tau=1 / math.log(2))
    assert [ema.decay_at(n) for n in range(4)] == pytest.approx([0.0, 0.4, 0.6, 0.7])
    for w in [2.0, 4.0, 8.0, 16.0]:
        _set(model, w)
        ema.update(model)
    # 2.0;  0.4 x 2.0 + 0.6 x 4.0 = 3.2;  0.6 x 3.2 + 0.4 x 8.0 = 5.12;  0.7 x 5.12 + 0.3 x 16.0 = 8.384
    assert float(ema.module.lin.bias) == pytest.approx(8.384)
    assert ema.updates == 4
    assert ema.decay_at(60) == pytest.approx(0.8)  # 2^-60: the ramp is over


def test_ramp_follows_the_model_early() -> None:
    model = _Net()
    ema = ModelEMA(model, decay=0.9998, tau=2000.0)
    for w in [2.0, 4.0, 8.0]:
        _set(model, w)
        ema.update(model)
    # By hand, with 1 - exp(-x) = x - x^2/2 for small x: the first update copies 2.0;
    # d = 0.9998 x (0.0005 - 0.000000125) = 0.00049978, so 2.0 d + 4.0 (1 - d) = 4 - 2 d = 3.99900;
    # d = 0.9998 x (0.001 - 0.0000005) = 0.00099930, so 8 - d (8 - 3.99900) = 8 - 0.0039982 = 7.99600.
    # Close to the last weights, where a fixed 0.9998 would still be near 2 (2.0016).
    assert float(ema.module.lin.bias) == pytest.approx(7.99600, abs=1e-5)
    assert ema.decay_at(100000) == pytest.approx(0.9998)


def test_ddp_wrapper_is_unwrapped() -> None:
    model = _Net()
    ema = ModelEMA(torch.nn.DataParallel(model), decay=0.5, tau=None)
    _set(model, 1.0)
    ema.update(torch.nn.DataParallel(model))
    _set(model, 3.0)
    ema.update(model)
    assert float(ema.module.lin.bias) == pytest.approx(2.0)
    assert set(ema.module.state_dict()) == set(model.state_dict())  # loadable into the bare model


def test_state_dict_round_trip_continues_exactly() -> None:
    weights = [1.0, 2.0, 4.0, 8.0, 16.0]
    straight_model, resumed_model = _Net(), _Net()
    straight = ModelEMA(straight_model, decay=0.8, tau=3.0)
    for w in weights:
        _set(straight_model, w)
        straight.update(straight_model)

    first = ModelEMA(resumed_model, decay=0.8, tau=3.0)
    for w in weights[:2]:
        _set(resumed_model, w)
        first.update(resumed_model)
    buf = io.BytesIO()
    torch.save(first.state_dict(), buf)
    buf.seek(0)
    second = ModelEMA(_Net(), decay=0.8, tau=3.0)
    second.load_state_dict(torch.load(buf, weights_only=True))
    assert second.updates == 2
    for w in weights[2:]:
        _set(resumed_model, w)
        second.update(resumed_model)
    assert float(second.module.lin.bias) == pytest.approx(float(straight.module.lin.bias))
    assert float(second.module.lin.bias) != pytest.approx(16.0)


def test_bad_decay_is_refused() -> None:
    with pytest.raises(ValueError, match="decay"):
        ModelEMA(_Net(), decay=1.5)


@pytest.mark.parametrize(("tau", "decay_after_3600"),
                         [(2000.0, 0.834534), (200.0, 0.9998), (0.0, 0.9998)])
def test_the_ramp_is_set_from_the_config(tau: float, decay_after_3600: float) -> None:
    # An hour of cpu-scratch is about 3,600 steps: with the default ramp the "average" is of the last
    # few steps only (decay 0.83); train.ema_tau shortens the ramp, 0 removes it. By hand:
    # tau 2000: 3600 / 2000 = 1.8, e^-1.8 = 0.1652989, 0.9998 x (1 - 0.1652989) = 0.8347011 - 0.0001669 = 0.8345342;
    # tau 200: e^-18 = 1.5e-8, 0.9998 x (1 - 1.5e-8) is 0.9998 to within 1e-6.
    cfg = configure(("test", {"train.ema": True, "train.ema_decay": 0.9998, "train.ema_tau": tau}))
    hook = EMAHook.from_trainer(SimpleNamespace(cfg=cfg, model=_Net()))
    assert hook.ema.decay_at(3600) == pytest.approx(decay_after_3600, abs=1e-6)
    assert hook.ema.decay_at(0) == (0.9998 if tau == 0 else 0.0)


@pytest.mark.parametrize("key_value", [("train.ema_tau", -1.0), ("train.ema_decay", 1.5)])
def test_bad_ema_settings_are_refused_by_the_config(key_value: tuple[str, float]) -> None:
    key, value = key_value
    with pytest.raises(ConfigError, match=key):
        configure(("test", {key: value}))
