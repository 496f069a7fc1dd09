"""Mixed precision keeps box coordinates in float32: a thin box under bf16 autocast trains, not NaN."""

from __future__ import annotations

import pytest
import torch

from segtune.config import build_config, preset_layer
from segtune.engine.amp import resolve_amp, setup_amp
from segtune.models.torchvision_families import keep_boxes_float32
from segtune.models import build_from_config


@pytest.fixture(scope="module")
def model() -> torch.nn.Module:
    cfg = build_config(preset_layer("cpu-scratch"))  # 320-512 px: a 320 x 512 image is not resized
    return build_from_config(cfg.model, 2).train()


def thin_box_sample() -> tuple[torch.Tensor, dict[str, torch.Tensor]]:
    """A 320 x 512 image with a pedestrian and a one-pixel sliver at x 301.5-302.5 (as a crop leaves one):
    in bfloat16 both of its x edges round to 302."""
    boxes = torch.tensor([[50.0, 40.0, 150.0, 300.0], [301.5, 60.0, 302.5, 260.0]])
    masks = torch.zeros(2, 320, 512, dtype=torch.uint8)
    masks[0, 40:300, 50:150] = 1
    masks[1, 60:260, 302] = 1
    return torch.rand(3, 320, 512, generator=torch.Generator().manual_seed(0)), {
        "boxes": boxes, "labels": torch.tensor([1, 1]), "masks": masks}


def losses_under_bf16(model: torch.nn.Module) -> dict[str, float]:
    image, target = thin_box_sample()
    torch.manual_seed(0)  # the RoI sampler's draw
    with torch.autocast("cpu", dtype=torch.bfloat16):
        return {k: float(v.detach()) for k, v in model([image], [target]).items()}


def test_a_thin_box_under_bf16_gives_a_nan_box_loss_unless_the_boxes_stay_float32(model: torch.nn.Module) -> None:
    # torchvision as it is: bf16 proposals, the ground truth cast to them, the sliver of zero width
    plain = losses_under_bf16(model)
    assert torch.isnan(torch.tensor(plain["loss_box_reg"]))
    assert all(torch.isfinite(torch.tensor(v)) for k, v in plain.items() if k != "loss_box_reg")

    keys = list(model.state_dict())
    handle = keep_boxes_float32(model)
    try:
        fixed = losses_under_bf16(model)
        assert all(torch.isfinite(torch.tensor(v)) for v in fixed.values()), fixed
        assert list(model.state_dict()) == keys  # checkpoints load as before
        features = {"0": torch.rand(1, model.rpn.head.cls_logits.in_channels, 8, 8)}
        with torch.autocast("cpu", dtype=torch.bfloat16):
            objectness, deltas = model.rpn.head(list(features.values()))
        assert objectness[0].dtype == deltas[0].dtype == torch.float32
    finally:
        handle.remove()


def test_a_model_without_an_rpn_is_left_alone() -> None:
    assert keep_boxes_float32(torch.nn.Linear(2, 2)) is None


@pytest.mark.parametrize("native, expected", [(True, "bf16"), (False, "none")])
def test_amp_auto_is_bf16_only_on_a_cpu_with_native_bfloat16(monkeypatch: pytest.MonkeyPatch, native: bool,
                                                              expected: str) -> None:
    monkeypatch.setattr("segtune.models.precision.cpu_has_native_bf16", lambda: native)
    amp, why = resolve_amp("auto", torch.device("cpu"))
    assert amp == expected and "bfloat16" in why
    assert resolve_amp("none", torch.device("cpu"))[0] == "none"  # an explicit choice is kept


def test_channels_last_under_autocast_keeps_the_parameters_an_optimiser_holds(
        monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture) -> None:
    monkeypatch.setattr("segtune.models.precision.cpu_has_native_bf16", lambda: True)
    cfg = build_config(preset_layer("cpu-scratch"))
    net = build_from_config(cfg.model, 2).train()
    conv = net.backbone.body.conv1.weight
    optimizer = torch.optim.SGD(net.parameters(), lr=0.01)
    with caplog.at_level("INFO", logger="segtune.train"):
        dtype, _ = setup_amp("auto", torch.device("cpu"), net, "auto")
    assert dtype == torch.bfloat16
    assert net.backbone.body.conv1.weight is conv and conv.is_contiguous(memory_format=torch.channels_last)
    assert "bf16 autocast, channels-last weights" in caplog.text
    image, target = thin_box_sample()
    with torch.autocast("cpu", dtype=torch.bfloat16):
        loss = sum(net([image], [target]).values())
    loss.backward()
    before = conv.detach().clone()
    optimizer.step()  # the optimiser built before the move updates the weights the model uses
    assert not torch.equal(before, net.backbone.body.conv1.weight)


def test_contiguous_weights_stay_contiguous_without_autocast() -> None:
    net = torch.nn.Sequential(torch.nn.Conv2d(3, 4, 3))
    assert setup_amp("none", torch.device("cpu"), net, "auto")[0] is None
    assert net[0].weight.is_contiguous()
    setup_amp("none", torch.device("cpu"), net, "channels_last")
    assert net[0].weight.is_contiguous(memory_format=torch.channels_last)
